//! Batching across requests for the encoder routes, in the manner of text-embeddings-inference's
//! queue (`router/src/queue.rs`): handlers tokenize their request on the blocking pool and
//! queue the encodings; one batching thread takes queued requests in arrival order, as many
//! as fit in `max_batch_tokens` padded tokens (the longest encoding × the encodings) and
//! `max_batch_requests`, runs one forward for all of them and sends each request its rows.
//!
//! The thread does the forward only: tokenizing and the postprocess (normalising, activations,
//! labels) run on each request's own thread, so that the forward, the one step that gains from
//! a larger batch, never waits for them.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use prometheus::{Histogram, IntCounter};
use tokenizers::Encoding;
use tokio::sync::oneshot;

use ferroformers::pipelines::AnyPipeline;
use ferroformers::Error;

/// What the forward computes for a request. Requests share a forward only when theirs is the
/// same; settings that change the postprocess alone (`normalize`, `raw_scores`, `return_text`,
/// `truncate`, which acts in the tokenizer) do not keep them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forward {
    /// Pooled sentence embeddings, the first `prompt_length` tokens of every encoding left out
    /// of the pooling (the prompt of a model whose pooling excludes it).
    Embeddings { prompt_length: usize },
    /// Every token's hidden state, flattened per encoding (`/embed_all`).
    TokenEmbeddings,
    /// SPLADE vectors, dense (vocabulary-sized) rows (`/embed_sparse`).
    SparseEmbeddings,
    /// The sequence-classification head's logits (classifiers and cross-encoders).
    Logits,
}

/// The rows of one request: one per encoding, in order; or why the forward failed (one
/// failure, shared by every request of the batch).
type Rows = Result<Vec<Vec<f32>>, Arc<Error>>;

/// One queued request.
struct Entry {
    encodings: Vec<Encoding>,
    /// Its longest encoding, in tokens.
    longest: usize,
    forward: Forward,
    answer: oneshot::Sender<Rows>,
}

impl Entry {
    /// Whether the client is still waiting: one that left (its handler dropped) costs no
    /// forward.
    fn wanted(&self) -> bool {
        !self.answer.is_closed()
    }
}

/// How large a batch may grow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Padded tokens per forward: the longest encoding × the encodings.
    pub max_batch_tokens: usize,
    /// Requests per batch.
    pub max_batch_requests: usize,
}

/// Requests per batch when `max_batch_requests` is not set. Fewer, smaller forwards serve
/// more: all-MiniLM-L6-v2 in f32 on 2 cores (AVX-512), 32 connections of one short sentence
/// each under wrk, paired runs of 10 s: a cap of 8 gave 427, 434 req/s (p99 93, 89 ms) where
/// no cap gave 382, 355 (p99 120, 115 ms), 4 gave 376, 420, 12 gave 389, 399. A forward that
/// takes every waiting request leaves none to tokenize and parse meanwhile, so the cores idle
/// between forwards; TEI's ONNX Runtime backend runs 8 at most too. A request of many inputs
/// still fills the tokens alone.
pub(crate) const DEFAULT_MAX_REQUESTS: usize = 8;

/// What the batching thread reports in `/metrics`.
#[derive(Clone)]
pub(crate) struct BatchMetrics {
    /// Requests per batch (TEI's `te_batch_next_size`); its count is the batches run.
    pub batch_requests: Histogram,
    /// Padded tokens per batch (TEI's `te_batch_next_tokens`).
    pub batch_tokens: Histogram,
    /// Seconds each batch takes in the model: set beside the requests' durations, it tells a
    /// slow forward from time spent around it.
    pub batch_seconds: Histogram,
    /// Forward passes run: one per batch, more for a request too large for one.
    pub forwards: IntCounter,
    /// Requests dropped from the queue because their client left.
    pub abandoned: IntCounter,
}

/// Requests waiting for the batching thread.
#[derive(Default)]
struct Waiting {
    entries: VecDeque<Entry>,
    /// No more requests are taken; the thread ends once the queue is empty.
    closed: bool,
}

/// The queue the handlers put their requests in.
pub(crate) struct Queue {
    waiting: Mutex<Waiting>,
    /// Wakes the batching thread when a request comes or the queue closes.
    arrived: Condvar,
    limits: Limits,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        // A thread that panicked while holding the lock left the queue in a consistent state
        // (every change is one push or pop): carry on with it.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queue `encodings` (one request's) and wait for their rows, one per encoding.
    pub(crate) async fn submit(
        &self,
        encodings: Vec<Encoding>,
        forward: Forward,
    ) -> ferroformers::Result<Vec<Vec<f32>>> {
        let (answer, rows) = oneshot::channel();
        {
            let mut waiting = self.lock();
            if waiting.closed {
                return Err(Error::ShuttingDown);
            }
            let longest = encodings.iter().map(Encoding::len).max().unwrap_or(0);
            waiting.entries.push_back(Entry {
                encodings,
                longest,
                forward,
                answer,
            });
        }
        self.arrived.notify_one();
        // The answer is dropped unsent only when the thread panicked with this request taken.
        rows.await
            .map_err(|_| Error::WorkerStopped { thread: "batching" })?
            .map_err(|source| Error::BatchFailed { source })
    }

    /// The next batch, waiting for one; `None` once the queue is closed and empty.
    fn next_batch(&self, abandoned: &IntCounter) -> Option<Vec<Entry>> {
        let mut waiting = self.lock();
        loop {
            let before = waiting.entries.len();
            waiting.entries.retain(Entry::wanted);
            abandoned.inc_by((before - waiting.entries.len()) as u64);
            if !waiting.entries.is_empty() {
                return Some(take_batch(&mut waiting.entries, self.limits));
            }
            if waiting.closed {
                return None;
            }
            waiting = self
                .arrived
                .wait(waiting)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.arrived.notify_all();
    }
}

/// Take the first entry, then those after it that share its forward, in arrival order, while
/// the batch stays within `limits`; stop at the first that would not fit, so that no request
/// is overtaken by smaller ones for long. The first entry is taken even when it alone exceeds
/// the tokens: it then runs alone, in several forwards.
fn take_batch(entries: &mut VecDeque<Entry>, limits: Limits) -> Vec<Entry> {
    let Some(first) = entries.pop_front() else {
        return Vec::new();
    };
    let forward = first.forward;
    let mut longest = first.longest;
    let mut sequences = first.encodings.len();
    let mut batch = vec![first];
    let mut index = 0;
    while index < entries.len() {
        if batch.len() >= limits.max_batch_requests {
            break;
        }
        let entry = &entries[index];
        if entry.forward != forward {
            index += 1;
            continue;
        }
        let grown_longest = longest.max(entry.longest);
        let grown_sequences = sequences + entry.encodings.len();
        if grown_longest * grown_sequences > limits.max_batch_tokens {
            break;
        }
        longest = grown_longest;
        sequences = grown_sequences;
        if let Some(entry) = entries.remove(index) {
            batch.push(entry);
        }
    }
    batch
}

/// The batching thread and the queue it serves.
pub(crate) struct Batcher {
    queue: Arc<Queue>,
    thread: Option<JoinHandle<()>>,
}

impl Batcher {
    /// Start the thread that runs `pipeline`'s forwards.
    pub(crate) fn start(
        pipeline: AnyPipeline,
        limits: Limits,
        metrics: BatchMetrics,
    ) -> std::io::Result<Self> {
        let queue = Arc::new(Queue {
            waiting: Mutex::new(Waiting::default()),
            arrived: Condvar::new(),
            limits,
        });
        let served = Arc::clone(&queue);
        let thread = std::thread::Builder::new()
            .name("ferroformers-batcher".to_string())
            .spawn(move || {
                while let Some(batch) = served.next_batch(&metrics.abandoned) {
                    run_batch(&pipeline, batch, limits, &metrics);
                }
            })?;
        Ok(Self {
            queue,
            thread: Some(thread),
        })
    }

    /// The queue, for the handlers.
    pub(crate) fn queue(&self) -> Arc<Queue> {
        Arc::clone(&self.queue)
    }

    /// Take no more requests, answer those queued, and wait for the thread to end.
    pub(crate) async fn stop(mut self) {
        self.queue.close();
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Batcher {
    /// A server dropped without [`Batcher::stop`] still ends its thread.
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// One forward for every encoding of `batch`, the rows sent back to each request.
fn run_batch(pipeline: &AnyPipeline, batch: Vec<Entry>, limits: Limits, metrics: &BatchMetrics) {
    let Some(forward) = batch.first().map(|entry| entry.forward) else {
        return;
    };
    let longest = batch.iter().map(|entry| entry.longest).max().unwrap_or(0);
    let mut answers = Vec::with_capacity(batch.len());
    let mut encodings = Vec::new();
    for entry in batch {
        answers.push((entry.answer, entry.encodings.len()));
        encodings.extend(entry.encodings);
    }
    // A request over the tokens alone runs in as many forwards as the tokens need.
    let per_forward = (limits.max_batch_tokens / longest.max(1)).max(1);
    metrics.batch_requests.observe(answers.len() as f64);
    metrics
        .batch_tokens
        .observe((longest * encodings.len()) as f64);
    metrics
        .forwards
        .inc_by(encodings.len().div_ceil(per_forward) as u64);
    let started = std::time::Instant::now();
    let rows = run_forward(pipeline, forward, &encodings, per_forward);
    metrics
        .batch_seconds
        .observe(started.elapsed().as_secs_f64());
    match rows {
        Ok(rows) => {
            let mut rows = rows.into_iter();
            for (answer, count) in answers {
                // A client that left meanwhile no longer listens: nothing to do.
                let _ = answer.send(Ok(rows.by_ref().take(count).collect()));
            }
        }
        Err(error) => {
            let failure = Arc::new(error);
            for (answer, _) in answers {
                let _ = answer.send(Err(Arc::clone(&failure)));
            }
        }
    }
}

fn run_forward(
    pipeline: &AnyPipeline,
    forward: Forward,
    encodings: &[Encoding],
    per_forward: usize,
) -> ferroformers::Result<Vec<Vec<f32>>> {
    match (pipeline, forward) {
        (AnyPipeline::Embeddings(pipeline), Forward::Embeddings { prompt_length }) => {
            pipeline.pooled(encodings, prompt_length, None, per_forward)
        }
        (AnyPipeline::Embeddings(pipeline), Forward::TokenEmbeddings) => {
            pipeline.token_embeddings(encodings, per_forward)
        }
        (AnyPipeline::TextClassification(pipeline), Forward::Logits) => {
            pipeline.logits(encodings, per_forward)
        }
        (AnyPipeline::Rerank(pipeline), Forward::Logits) => pipeline.logits(encodings, per_forward),
        (AnyPipeline::SparseEmbeddings(pipeline), Forward::SparseEmbeddings) => {
            pipeline.pooled(encodings, per_forward)
        }
        (other, forward) => Err(Error::InvalidInput(format!(
            "the server queued a {forward:?} forward for a {} model: a bug, please report it",
            other.task()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry of `sequences` encodings, the longest `longest` tokens, and the receiver its
    /// handler would await.
    fn entry(
        sequences: usize,
        longest: usize,
        forward: Forward,
    ) -> (Entry, oneshot::Receiver<Rows>) {
        let (answer, rows) = oneshot::channel();
        let entry = Entry {
            encodings: vec![Encoding::default(); sequences],
            longest,
            forward,
            answer,
        };
        (entry, rows)
    }

    fn limits(max_batch_tokens: usize, max_batch_requests: usize) -> Limits {
        Limits {
            max_batch_tokens,
            max_batch_requests,
        }
    }

    const EMBED: Forward = Forward::Embeddings { prompt_length: 0 };

    /// The sizes (encodings) of each batch `take_batch` makes until the queue is empty.
    fn batches(entries: Vec<Entry>, limits: Limits) -> Vec<Vec<usize>> {
        let mut queue: VecDeque<Entry> = entries.into();
        let mut batches = Vec::new();
        while !queue.is_empty() {
            let batch = take_batch(&mut queue, limits);
            batches.push(batch.iter().map(|entry| entry.encodings.len()).collect());
        }
        batches
    }

    #[test]
    fn batches_fill_up_to_the_padded_tokens() {
        // 10 tokens each: 4 requests of 1 text = 40 padded tokens fit in 40, the fifth waits.
        let (entries, _receivers): (Vec<_>, Vec<_>) = (0..5).map(|_| entry(1, 10, EMBED)).unzip();
        assert_eq!(
            batches(entries, limits(40, usize::MAX)),
            vec![vec![1; 4], vec![1]]
        );
    }

    #[test]
    fn padding_counts_the_longest_encoding() {
        // 2 × 10 fits in 30; a third of 15 tokens would pad all three to 45.
        let (entries, _receivers): (Vec<_>, Vec<_>) = [(1, 10), (1, 10), (1, 15), (1, 5)]
            .into_iter()
            .map(|(sequences, longest)| entry(sequences, longest, EMBED))
            .unzip();
        assert_eq!(
            batches(entries, limits(30, usize::MAX)),
            vec![vec![1, 1], vec![1, 1]]
        );
    }

    #[test]
    fn one_request_per_batch_when_capped_at_one() {
        let (entries, _receivers): (Vec<_>, Vec<_>) = (0..3).map(|_| entry(2, 4, EMBED)).unzip();
        assert_eq!(
            batches(entries, limits(16384, 1)),
            vec![vec![2], vec![2], vec![2]]
        );
    }

    #[test]
    fn the_default_cap_takes_eight_requests_at_a_time() {
        let (entries, _receivers): (Vec<_>, Vec<_>) = (0..20).map(|_| entry(1, 18, EMBED)).unzip();
        assert_eq!(
            batches(entries, limits(16384, DEFAULT_MAX_REQUESTS)),
            vec![vec![1; 8], vec![1; 8], vec![1; 4]]
        );
    }

    #[test]
    fn an_oversize_request_runs_alone() {
        let (entries, _receivers): (Vec<_>, Vec<_>) = [(1, 4), (100, 50), (1, 4)]
            .into_iter()
            .map(|(sequences, longest)| entry(sequences, longest, EMBED))
            .unzip();
        assert_eq!(
            batches(entries, limits(1000, usize::MAX)),
            vec![vec![1], vec![100], vec![1]]
        );
    }

    #[test]
    fn only_the_same_forward_shares_a_batch() {
        let prompted = Forward::Embeddings { prompt_length: 3 };
        let (entries, _receivers): (Vec<_>, Vec<_>) = [EMBED, prompted, EMBED, prompted]
            .into_iter()
            .enumerate()
            .map(|(i, forward)| entry(i + 1, 4, forward))
            .unzip();
        assert_eq!(
            batches(entries, limits(16384, usize::MAX)),
            vec![vec![1, 3], vec![2, 4]]
        );
    }

    #[test]
    fn requests_whose_client_left_are_dropped_unrun() {
        let queue = Queue {
            waiting: Mutex::new(Waiting::default()),
            arrived: Condvar::new(),
            limits: limits(16384, usize::MAX),
        };
        let (kept, _kept_rows) = entry(1, 4, EMBED);
        let (left, left_rows) = entry(2, 4, EMBED);
        drop(left_rows);
        queue.lock().entries.extend([left, kept]);
        let abandoned = IntCounter::new("abandoned", "test").expect("a counter");
        let batch = queue.next_batch(&abandoned).expect("a batch");
        assert_eq!(
            batch.iter().map(|e| e.encodings.len()).collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(abandoned.get(), 1);
        queue.close();
        assert!(queue.next_batch(&abandoned).is_none());
    }
}
