//! The generation worker: what the OpenAI completion routes submit a prompt to, and get its
//! tokens back from, one [`StreamToken`] at a time over a channel.
//!
//! Submitted sequences are decoded together by one thread, with continuous batching
//! ([`ContinuousBatcher`]): one forward pass per step for all running sequences, each getting
//! exactly the tokens it would get alone. Between two steps the thread lets waiting sequences
//! join (up to `max_batch_requests` running at once, [`DEFAULT_MAX_SEQUENCES`] by default;
//! more wait in a queue, in order) and drops every sequence whose client left (its receiver
//! closed), so that a departed client costs at most the step under way.
//!
//! The thread is started by the first submission and ends when it has nothing left to
//! decode, so a server holds none while idle, and a stopped server (whose connections, and
//! with them the receivers, are dropped) leaves none behind.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use prometheus::IntGauge;
use tokio::sync::mpsc;
use tracing::Span;

use crate::state::Shared;
use ferroformers::generation::{
    ContinuousBatcher, GenerationConfig, SequenceId, SequenceToken, StreamToken,
};
use ferroformers::models::auto::AutoModelForCausalLM;
use ferroformers::pipelines::{AnyPipeline, Pipeline, TextGenerationPipeline};
use ferroformers::Error;

/// Sequences decoded together when `max_batch_requests` is not set: past a few dozen, a step
/// of GPT-2 small on a CPU spends more on the per-sequence attention than the shared weight
/// reads save, and each client waits longer for its next token.
const DEFAULT_MAX_SEQUENCES: usize = 32;

/// A prompt and the settings to continue it with.
#[derive(Debug, Clone)]
pub(crate) struct GenerationRequest {
    /// The token ids the model continues: a prompt encoded as the pipeline encodes prompts,
    /// or a chat rendered by its template (or joined as DialoGPT's turns) and encoded.
    pub prompt: Vec<u32>,
    /// Sampling, length and stop settings, validated.
    pub config: GenerationConfig,
}

/// The tokens of one submitted sequence, in order; the last one carries its finish reason.
/// Dropping it cancels the sequence.
pub(crate) type TokenReceiver = mpsc::Receiver<ferroformers::Result<StreamToken>>;

type TokenSender = mpsc::Sender<ferroformers::Result<StreamToken>>;

/// The sequences waiting to join the decoding thread's batch, and whether that thread runs.
#[derive(Debug, Default)]
pub(crate) struct DecodeQueue {
    state: Mutex<QueueState>,
    /// Signalled each time the decoding thread ends, for whoever waits for that (the tests).
    ended: Condvar,
}

#[derive(Debug, Default)]
struct QueueState {
    /// Each with the span of its request, so that what is logged for it carries its id.
    waiting: VecDeque<(GenerationRequest, TokenSender, Span)>,
    /// A decoding thread is running and will take `waiting` before it ends.
    thread_running: bool,
}

impl DecodeQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // The state stays consistent across a panic (each change is one assignment).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Mark the decoding thread as ended, under the queue's lock (`state`), and wake whoever
    /// waits for that.
    fn end_thread(&self, mut state: MutexGuard<'_, QueueState>) {
        state.thread_running = false;
        self.ended.notify_all();
    }

    /// Wait (at most `limit`) until no decoding thread runs; whether none does.
    #[cfg(test)]
    fn wait_until_idle(&self, limit: std::time::Duration) -> bool {
        let (state, _) = self
            .ended
            .wait_timeout_while(self.lock(), limit, |state| state.thread_running)
            .unwrap_or_else(PoisonError::into_inner);
        !state.thread_running
    }
}

/// The text-generation pipeline of `shared`. The routes refuse a request for another task
/// before they submit it; this is the decoding thread's own guard.
fn text_generation(shared: &Shared) -> ferroformers::Result<&TextGenerationPipeline> {
    match &shared.pipeline {
        AnyPipeline::TextGeneration(pipeline) => Ok(pipeline),
        other => Err(Error::UnsupportedTask {
            model_type: other.config().model_type(),
            task: "text generation",
        }),
    }
}

/// Start generating `request` and return its tokens as they come. An invalid prompt or
/// setting comes back as the receiver's first (and only) item.
pub(crate) fn submit(
    shared: &Arc<Shared>,
    request: GenerationRequest,
) -> ferroformers::Result<TokenReceiver> {
    let pipeline = text_generation(shared)?;
    // Room for every token a sequence can make (no more than the model's positions) and an
    // error, so that the decoding thread never waits on a slow client; tokio allocates the
    // slots as they fill.
    let (sender, receiver) = mpsc::channel(pipeline.model().max_positions() + 1);
    let mut queue = shared.decode_queue.lock();
    queue.waiting.push_back((request, sender, Span::current()));
    if !queue.thread_running {
        let decoding = Arc::clone(shared);
        let started = std::thread::Builder::new()
            .name("ferroformers-decode".to_string())
            .spawn(move || decode(&decoding));
        if let Err(source) = started {
            queue.waiting.pop_back();
            return Err(Error::WorkerSpawn {
                thread: "decoding",
                source,
            });
        }
        queue.thread_running = true;
    }
    Ok(receiver)
}

/// A client of the decoding thread: where its tokens go, counted in the active-sequences
/// gauge while it is held.
struct Client {
    /// Declared (so dropped) before `sender`: a receiver that sees its channel closed knows
    /// that its sequence has left the gauge.
    _active: ActiveSequence,
    sender: TokenSender,
    /// The request's span: what the thread logs about this sequence goes in it.
    span: Span,
}

/// The decoding thread: step the batch until no sequence runs or waits.
fn decode(shared: &Shared) {
    let _cleared = ClearOnPanic(&shared.decode_queue);
    let Ok(pipeline) = text_generation(shared) else {
        shared.decode_queue.end_thread(shared.decode_queue.lock());
        return;
    };
    let mut batcher = ContinuousBatcher::new(pipeline.model(), pipeline.tokenizer());
    let mut clients: HashMap<SequenceId, Client> = HashMap::new();
    let limit = shared
        .config
        .max_batch_requests
        .unwrap_or(DEFAULT_MAX_SEQUENCES)
        .max(1);
    loop {
        // Sequences whose client left go before the next step.
        clients.retain(|&id, client| {
            let open = !client.sender.is_closed();
            if !open {
                batcher.cancel(id);
            }
            open
        });
        if !admit(shared, &mut batcher, &mut clients, limit) {
            return;
        }
        match batcher.step() {
            Ok(tokens) => {
                for SequenceToken { id, token } in tokens {
                    let ended = token
                        .as_ref()
                        .map_or(true, |token| token.finish_reason.is_some());
                    let delivered = clients
                        .get(&id)
                        .is_some_and(|client| client.sender.try_send(token).is_ok());
                    if ended || !delivered {
                        batcher.cancel(id);
                        clients.remove(&id);
                    }
                }
            }
            Err(error) => {
                // The shared forward pass failed: every running sequence has left the batch.
                let failure = Arc::new(error);
                clients.retain(|&id, client| {
                    let running = batcher.contains(id);
                    if !running {
                        client
                            .span
                            .in_scope(|| tracing::error!("generation failed: {failure}"));
                        let _ = client.sender.try_send(Err(Error::BatchFailed {
                            source: Arc::clone(&failure),
                        }));
                    }
                    running
                });
            }
        }
    }
}

/// Let waiting sequences join until `limit` run; false, with the thread marked as ended, when
/// nothing runs nor waits (decided under the queue's lock, so that a submission either sees
/// the thread running and is taken by it, or starts a new one).
fn admit(
    shared: &Shared,
    batcher: &mut ContinuousBatcher<'_, AutoModelForCausalLM>,
    clients: &mut HashMap<SequenceId, Client>,
    limit: usize,
) -> bool {
    loop {
        let joining: Vec<_> = {
            let mut queue = shared.decode_queue.lock();
            if batcher.is_empty() && queue.waiting.is_empty() {
                shared.decode_queue.end_thread(queue);
                return false;
            }
            let room = limit.saturating_sub(batcher.len()).min(queue.waiting.len());
            queue.waiting.drain(..room).collect()
        };
        // Outside the lock: reading a prompt (tokenizing, checking) must not hold up
        // submissions.
        for (request, sender, span) in joining {
            if sender.is_closed() {
                continue;
            }
            // Reading the prompt is this request's own work.
            let added = span.in_scope(|| batcher.add(&request.prompt, &request.config));
            match added {
                Ok(id) => {
                    let active = ActiveSequence::start(&shared.metrics.active_sequences);
                    clients.insert(
                        id,
                        Client {
                            _active: active,
                            sender,
                            span,
                        },
                    );
                }
                Err(error) => {
                    let _ = sender.try_send(Err(error));
                }
            }
        }
        if !batcher.is_empty() {
            return true;
        }
    }
}

/// Marks the decoding thread as ended if it panics, so that the next submission starts
/// another instead of waiting on it forever.
struct ClearOnPanic<'a>(&'a DecodeQueue);

impl Drop for ClearOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.end_thread(self.0.lock());
        }
    }
}

/// Counts a sequence in the active-sequences gauge while it decodes.
struct ActiveSequence(IntGauge);

impl ActiveSequence {
    fn start(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for ActiveSequence {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    //! The decoding thread as the completion routes use it: concurrent submissions each get
    //! their solo stream (token for token), at most `max_batch_requests` decode at once, a
    //! client that leaves is dropped at once, and the thread ends when idle.

    use std::time::{Duration, Instant};

    use tokio::sync::Semaphore;

    use super::*;
    use crate::batching::queue::{Batcher, Limits};
    use crate::config::ServerConfig;
    use crate::http::metrics::Metrics;
    use ferroformers::generation::Generator;
    use ferroformers::pipelines::{Pipeline, TextGenerationOptions};
    use ferroformers::{EncodeOptions, HubOptions, LoadOptions};

    fn shared(max_batch_requests: usize) -> Arc<Shared> {
        // The workspace's fixtures, one folder up from this package.
        let folder = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/gpt2/lm-head"
        );
        let options = LoadOptions::default().with_hub(HubOptions::default().with_offline(true));
        let pipeline = AnyPipeline::TextGeneration(
            TextGenerationPipeline::from_pretrained(folder, &options).expect("the fixture loads"),
        );
        let config = ServerConfig {
            max_batch_requests: Some(max_batch_requests),
            ..ServerConfig::new(folder)
        };
        let metrics = Metrics::new().expect("metrics");
        // The encoder routes' queue, unused here: its thread ends when the batcher drops.
        let limits = Limits {
            max_batch_tokens: config.max_batch_tokens,
            max_batch_requests,
        };
        let queue = Batcher::start(pipeline.clone(), limits, metrics.batch.clone())
            .expect("the batching thread starts")
            .queue();
        Arc::new(Shared {
            pipeline,
            config,
            max_input_length: 128,
            in_flight: Arc::new(Semaphore::new(8)),
            metrics,
            queue,
            decode_queue: DecodeQueue::default(),
        })
    }

    fn requests(shared: &Shared) -> Vec<GenerationRequest> {
        let base = text_generation(shared)
            .expect("generates")
            .settings(&TextGenerationOptions::default());
        let greedy = base.clone().greedy().with_max_new_tokens(30);
        let mut sampled = base.clone().sampling(5).with_max_new_tokens(20);
        sampled.top_p = 0.9;
        let request = |prompt: &str, config: &GenerationConfig| GenerationRequest {
            prompt: ids(shared, prompt),
            config: config.clone(),
        };
        vec![
            request("The quick brown fox", &greedy.clone().with_logprobs(2)),
            request("Once upon a time", &sampled),
            request("Hello there", &greedy),
            request("The lazy dog", &sampled.clone().sampling(9)),
            request("A fox jumps", &greedy.clone().with_max_new_tokens(12)),
        ]
    }

    /// `prompt`'s ids, as the completion route encodes a prompt.
    fn ids(shared: &Shared, prompt: &str) -> Vec<u32> {
        shared
            .pipeline
            .tokenizer()
            .encode(prompt, &EncodeOptions::default())
            .expect("encodes")
            .get_ids()
            .to_vec()
    }

    fn solo(shared: &Shared, request: &GenerationRequest) -> Vec<StreamToken> {
        let pipeline = text_generation(shared).expect("generates");
        Generator::new(pipeline.model(), pipeline.tokenizer())
            .stream(&request.prompt, &request.config)
            .expect("streams")
            .map(|token| token.expect("decodes"))
            .collect()
    }

    /// Read `receiver` to its end: its sequence has then left the decoding thread, and the
    /// active-sequences gauge (`Client` drops its gauge count before its sender).
    fn rest(receiver: &mut TokenReceiver) -> Vec<StreamToken> {
        std::iter::from_fn(|| receiver.blocking_recv())
            .map(|token| token.expect("no error"))
            .collect()
    }

    /// The tokens `receiver` holds now, without waiting.
    fn buffered(receiver: &mut TokenReceiver) -> Vec<StreamToken> {
        std::iter::from_fn(|| receiver.try_recv().ok())
            .map(|token| token.expect("no error"))
            .collect()
    }

    /// How long the decoding thread may take to notice it has nothing left.
    const IDLE: Duration = Duration::from_secs(10);

    /// Five submissions, at most two decoding at once: each gets its solo stream token for
    /// token (ids, text, finish reason, log-probabilities equal), the gauge never shows more
    /// than two sequences and shows two at some point, and returns to 0, and the thread ends.
    #[test]
    fn concurrent_submissions_each_get_their_solo_stream() {
        let shared = shared(2);
        let requests = requests(&shared);
        let expected: Vec<_> = requests.iter().map(|r| solo(&shared, r)).collect();
        let mut receivers: Vec<_> = requests
            .iter()
            .map(|request| submit(&shared, request.clone()).expect("submits"))
            .collect();
        let mut got = vec![Vec::new(); requests.len()];
        let mut busiest = 0;
        let start = Instant::now();
        while got
            .iter()
            .zip(&expected)
            .any(|(got, exp)| got.len() < exp.len())
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "streams stalled: {got:?}"
            );
            std::thread::yield_now();
            busiest = busiest.max(shared.metrics.active_sequences.get());
            for (receiver, got) in receivers.iter_mut().zip(&mut got) {
                while let Ok(token) = receiver.try_recv() {
                    got.push(token.expect("no error"));
                }
            }
        }
        assert_eq!(got, expected, "each stream as alone");
        assert!(
            busiest <= 2,
            "{busiest} sequences decoded at once, 2 allowed"
        );
        assert_eq!(busiest, 2, "two sequences shared the batch");
        for receiver in &mut receivers {
            assert_eq!(rest(receiver), [], "nothing after the last token");
        }
        assert_eq!(
            shared.metrics.active_sequences.get(),
            0,
            "the gauge back to 0"
        );
        assert!(shared.decode_queue.wait_until_idle(IDLE), "the thread ends");
        // The thread comes back for the next submission.
        let mut receiver = submit(&shared, requests[4].clone()).expect("submits");
        assert_eq!(rest(&mut receiver), expected[4]);
    }

    /// A client that leaves after two tokens, while its sequence still has many to go: its
    /// sequence is dropped before the next step (the gauge falls to the one other sequence,
    /// which still gets its solo stream), and the thread ends once that finishes. An invalid
    /// request gets its error as the only item.
    ///
    /// The test pauses the decoding thread by holding the queue's lock, which the thread takes
    /// before each step (in `admit`): while held, the thread does at most the step under way.
    #[test]
    fn a_client_that_leaves_is_dropped_at_once() {
        let shared = shared(4);
        let base = text_generation(&shared)
            .expect("generates")
            .settings(&TextGenerationOptions::default());
        let long = GenerationRequest {
            prompt: ids(&shared, "The quick brown fox"),
            config: base.clone().greedy().with_max_new_tokens(100),
        };
        let other = GenerationRequest {
            prompt: ids(&shared, "Once upon a time"),
            config: base.clone().sampling(3).with_max_new_tokens(100),
        };
        let leaving_alone = solo(&shared, &long).len();
        let expected = solo(&shared, &other);
        let mut leaving = submit(&shared, long).expect("submits");
        let mut staying = submit(&shared, other).expect("submits");
        for _ in 0..2 {
            leaving.blocking_recv().expect("a token").expect("no error");
        }
        let mut got = vec![staying.blocking_recv().expect("a token").expect("no error")];

        let paused = shared.decode_queue.lock();
        let made = 2 + buffered(&mut leaving).len();
        // The step under way gives it one more token at most, and its last is further off:
        // it can only end because its client left.
        assert!(
            made + 2 < leaving_alone,
            "the leaving sequence has {made} of its {leaving_alone} tokens: too near its end \
             to tell a departure from its own end"
        );
        got.extend(buffered(&mut staying));
        drop(leaving);
        drop(paused);
        // The thread drops the departed sequence before its next step, or in it (its token
        // cannot be delivered): the second token the other gets from now on comes after that.
        for _ in 0..2 {
            got.push(staying.blocking_recv().expect("a token").expect("no error"));
        }
        let paused = shared.decode_queue.lock();
        got.extend(buffered(&mut staying));
        // Not over, even with the step under way: the other sequence is still in the gauge.
        assert!(
            got.len() + 2 <= expected.len(),
            "the other sequence has {} of its {} tokens: too near its end to count on it",
            got.len(),
            expected.len()
        );
        assert_eq!(
            shared.metrics.active_sequences.get(),
            1,
            "the departed client's sequence is dropped"
        );
        drop(paused);
        got.extend(rest(&mut staying));
        assert_eq!(got, expected);
        assert_eq!(shared.metrics.active_sequences.get(), 0);
        assert!(shared.decode_queue.wait_until_idle(IDLE), "the thread ends");

        let too_long = GenerationRequest {
            prompt: ids(&shared, "The quick brown fox"),
            config: base.with_max_new_tokens(10_000),
        };
        let mut refused = submit(&shared, too_long).expect("submits");
        let error = refused.blocking_recv().expect("an item");
        assert!(
            matches!(&error, Err(Error::InvalidGeneration(_))),
            "{error:?}"
        );
        assert!(refused.blocking_recv().is_none(), "nothing after the error");
    }
}
