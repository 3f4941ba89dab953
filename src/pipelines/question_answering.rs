//! Extractive question answering: transformers' `QuestionAnsweringPipeline` (as of 4.57, the
//! last line that ships it). Long contexts are cut into overlapping windows; spans are scored
//! as start × end probabilities and mapped back to whole words of the context.
//! <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/pipelines/question_answering.py>

use serde::Serialize;
use tokenizers::Encoding;

use crate::error::{Error, Result};
use crate::models::auto::AutoModelForQuestionAnswering;
use crate::models::pretrained::LoadOptions;
use crate::pipelines::{
    rows_to_host, BatchOptions, Pipeline, PipelineBase, QaInput, QuestionContext,
    DEFAULT_BATCH_SIZE,
};

/// An answer: a span of the context, with character offsets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    /// Start × end probability (summed over windows that find the same text).
    pub score: f32,
    /// First character of the answer in the context.
    pub start: usize,
    /// One past its last character.
    pub end: usize,
    /// The answer's text.
    pub answer: String,
}

/// Settings of one call, as transformers' pipeline takes them.
#[derive(Debug, Clone)]
pub struct QuestionAnsweringOptions {
    /// Answers to return, best first.
    pub top_k: usize,
    /// Longest answer, in tokens.
    pub max_answer_len: usize,
    /// Also consider "no answer" (an empty answer at 0..0).
    pub handle_impossible_answer: bool,
    /// Tokens shared by consecutive windows; default min(max_seq_len / 2, 128).
    pub doc_stride: Option<usize>,
    /// Tokens per window; default min(model_max_length, 384).
    pub max_seq_len: Option<usize>,
    /// Windows per forward pass.
    pub batch_size: usize,
}

impl Default for QuestionAnsweringOptions {
    fn default() -> Self {
        Self {
            top_k: 1,
            max_answer_len: 15,
            handle_impossible_answer: false,
            doc_stride: None,
            max_seq_len: None,
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }
}

impl QuestionAnsweringOptions {
    /// Answers to return per question, best first.
    pub fn with_top_k(mut self, top_k: usize) -> Self {
        self.top_k = top_k;
        self
    }

    /// Longest answer, in tokens.
    pub fn with_max_answer_len(mut self, max_answer_len: usize) -> Self {
        self.max_answer_len = max_answer_len;
        self
    }

    /// Also consider "no answer".
    pub fn with_handle_impossible_answer(mut self, handle: bool) -> Self {
        self.handle_impossible_answer = handle;
        self
    }

    /// Tokens shared by consecutive windows.
    pub fn with_doc_stride(mut self, doc_stride: usize) -> Self {
        self.doc_stride = Some(doc_stride);
        self
    }

    /// Tokens per window.
    pub fn with_max_seq_len(mut self, max_seq_len: usize) -> Self {
        self.max_seq_len = Some(max_seq_len);
        self
    }
}

impl BatchOptions for QuestionAnsweringOptions {
    fn batch_size_mut(&mut self) -> &mut usize {
        &mut self.batch_size
    }
}

/// transformers' `QuestionAnsweringPipeline`: answers taken from the context.
#[derive(Debug, Clone)]
pub struct QuestionAnsweringPipeline {
    base: PipelineBase<AutoModelForQuestionAnswering>,
    cls_id: Option<u32>,
}

/// A window's start and end logits, on the host.
struct WindowLogits {
    start: Vec<f32>,
    end: Vec<f32>,
}

impl QuestionAnsweringPipeline {
    /// Load `model` (a Hub id or a local folder).
    pub fn from_pretrained(model: &str, options: &LoadOptions) -> Result<Self> {
        Self::from_parts(PipelineBase::from_pretrained(model, options)?)
    }

    /// Wrap a model already loaded.
    pub fn from_parts(base: PipelineBase<AutoModelForQuestionAnswering>) -> Result<Self> {
        let cls_id = ["[CLS]", "<s>"]
            .iter()
            .find_map(|t| base.tokenizer().token_to_id(t));
        Ok(Self { base, cls_id })
    }

    /// Preprocess one pair: its windows over the context.
    fn encode(&self, input: &QaInput, options: &QuestionAnsweringOptions) -> Result<Vec<Encoding>> {
        if input.question.trim().is_empty() || input.context.trim().is_empty() {
            return Err(Error::InvalidInput(
                "question and context must not be empty".to_string(),
            ));
        }
        let tokenizer = self.base.tokenizer();
        let max_seq_len = options
            .max_seq_len
            .unwrap_or_else(|| tokenizer.model_max_length().unwrap_or(384).min(384));
        let doc_stride = options.doc_stride.unwrap_or((max_seq_len / 2).min(128));
        if doc_stride > max_seq_len {
            return Err(Error::InvalidInput(format!(
                "doc_stride ({doc_stride}) is larger than max_seq_len ({max_seq_len})"
            )));
        }
        tokenizer.encode_windows((input.question, input.context), max_seq_len, doc_stride)
    }

    fn postprocess(
        &self,
        context: &str,
        windows: &[Encoding],
        logits: &[WindowLogits],
        options: &QuestionAnsweringOptions,
    ) -> Result<Vec<Answer>> {
        let context_chars: Vec<char> = context.chars().collect();
        // Candidates may be dropped when aligned to words, so look at more than asked.
        let pre_top_k = options.top_k * 2 + 10;
        let mut min_null_score = 1_000_000f32;
        let mut answers: Vec<Answer> = Vec::new();
        for (window, logits) in windows.iter().zip(logits) {
            // Only context tokens (and the CLS token) may be part of an answer.
            let mut allowed: Vec<bool> = window
                .get_sequence_ids()
                .iter()
                .map(|s| *s == Some(1))
                .collect();
            if let Some(cls) = self.cls_id {
                for (i, &id) in window.get_ids().iter().enumerate() {
                    if id == cls {
                        allowed[i] = true;
                    }
                }
            }
            let start = masked_probabilities(&logits.start, &allowed);
            let end = masked_probabilities(&logits.end, &allowed);
            if options.handle_impossible_answer {
                min_null_score = min_null_score.min(start[0] * end[0]);
            }
            for (s, e, score) in
                decode_spans(&start, &end, pre_top_k, options.max_answer_len, &allowed)
            {
                let (start_char, end_char) = word_span(window, s, e);
                // As Python slices: an empty answer when the span is reversed or out of range.
                let text: String = context_chars
                    .get(start_char..end_char)
                    .map(|chars| chars.iter().collect())
                    .unwrap_or_default();
                match answers
                    .iter_mut()
                    .find(|a| a.answer.to_lowercase() == text.to_lowercase())
                {
                    Some(existing) => existing.score += score,
                    None => answers.push(Answer {
                        score,
                        start: start_char,
                        end: end_char,
                        answer: text,
                    }),
                }
            }
        }
        if options.handle_impossible_answer {
            answers.push(Answer {
                score: min_null_score,
                start: 0,
                end: 0,
                answer: String::new(),
            });
        }
        answers.sort_by(|a, b| b.score.total_cmp(&a.score));
        answers.truncate(options.top_k);
        Ok(answers)
    }
}

impl Pipeline for QuestionAnsweringPipeline {
    type Kind = QuestionContext;
    type Options = QuestionAnsweringOptions;
    /// The best answers to one question, best first.
    type Output = Vec<Answer>;
    type Model = AutoModelForQuestionAnswering;

    fn run_inputs(
        &self,
        inputs: &[QaInput<'_>],
        options: &QuestionAnsweringOptions,
    ) -> Result<Vec<Vec<Answer>>> {
        // Preprocess: every pair's windows, in one list.
        let mut windows: Vec<Encoding> = Vec::new();
        let mut first_window = Vec::with_capacity(inputs.len() + 1);
        for input in inputs {
            first_window.push(windows.len());
            windows.extend(self.encode(input, options)?);
        }
        first_window.push(windows.len());
        // Forward.
        let logits =
            self.base
                .forward_in_buckets(&windows, options.batch_size, |indices, input| {
                    let output = self.base.model().forward(&input)?;
                    let starts = rows_to_host(&output.start_logits)?;
                    let ends = rows_to_host(&output.end_logits)?;
                    Ok(starts
                        .into_iter()
                        .zip(ends)
                        .zip(indices)
                        .map(|((start, end), &i)| WindowLogits {
                            // Drop the batch's padding: the window's own length.
                            start: start[..windows[i].len()].to_vec(),
                            end: end[..windows[i].len()].to_vec(),
                        })
                        .collect())
                })?;
        // Postprocess, pair by pair.
        inputs
            .iter()
            .zip(first_window.windows(2))
            .map(|(input, range)| {
                let (from, to) = (range[0], range[1]);
                self.postprocess(
                    input.context,
                    &windows[from..to],
                    &logits[from..to],
                    options,
                )
            })
            .collect()
    }

    fn base(&self) -> &PipelineBase<AutoModelForQuestionAnswering> {
        &self.base
    }
}

/// Softmax over the allowed positions (the others get -10000 first, as transformers does),
/// with the CLS position's probability zeroed afterwards.
fn masked_probabilities(logits: &[f32], allowed: &[bool]) -> Vec<f32> {
    let masked: Vec<f32> = logits
        .iter()
        .zip(allowed)
        .map(|(&l, &ok)| if ok { l } else { -10000.0 })
        .collect();
    let max = masked.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = masked.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// transformers' `decode_spans`: the `top_k` (start, end) pairs by start × end probability,
/// with start <= end < start + max_answer_len, both positions allowed. The CLS position
/// (0) never starts or ends a span.
fn decode_spans(
    start: &[f32],
    end: &[f32],
    top_k: usize,
    max_answer_len: usize,
    allowed: &[bool],
) -> Vec<(usize, usize, f32)> {
    let mut candidates: Vec<(usize, usize, f32)> = Vec::with_capacity(start.len() * end.len());
    for (s, &start_p) in start.iter().enumerate() {
        for (e, &end_p) in end.iter().enumerate() {
            // Scores outside the band are 0 in transformers' matrix; they still rank.
            let in_band = e >= s && e < s + max_answer_len;
            let score = if in_band && s != 0 && e != 0 {
                start_p * end_p
            } else {
                0.0
            };
            candidates.push((s, e, score));
        }
    }
    // Best first; ties (zeros) in row-major order.
    candidates.sort_by(|a, b| b.2.total_cmp(&a.2));
    candidates.truncate(top_k);
    candidates
        .into_iter()
        .filter(|&(s, e, _)| allowed[s] && allowed[e])
        .collect()
}

/// Character span of the context covering the words of tokens `s` to `e`, falling back to the
/// tokens' own offsets when a token belongs to no word.
fn word_span(window: &Encoding, s: usize, e: usize) -> (usize, usize) {
    let chars_of_word = |token: usize| -> Option<(usize, usize)> {
        let (_, word) = window.token_to_word(token)?;
        window.word_to_chars(word, 1)
    };
    match (chars_of_word(s), chars_of_word(e)) {
        (Some((start, _)), Some((_, end))) => (start, end),
        _ => (window.get_offsets()[s].0, window.get_offsets()[e].1),
    }
}
