//! What a pipeline accepts as one input, and the string-like values that can stand for it.
//!
//! [`Pipeline::run`](super::Pipeline::run) collects the caller's items first and then borrows
//! each one as the pipeline's input, so owned `String`s work as well as `&str`.

use crate::pipelines::rerank::RerankInput;
use crate::tokenizer::TextInput;

/// A kind of pipeline input; `Input<'a>` is one input, borrowed.
pub trait InputKind {
    /// One input, borrowed from the caller's value.
    type Input<'a>: Copy;
}

/// One text (fill-mask, token classification, embeddings).
#[derive(Debug, Clone, Copy)]
pub enum Text {}

/// One text or a pair of texts (text classification).
#[derive(Debug, Clone, Copy)]
pub enum TextOrPair {}

/// A question and the context to answer it from (question answering).
#[derive(Debug, Clone, Copy)]
pub enum QuestionContext {}

/// A query and the documents to rank for it (reranking).
#[derive(Debug, Clone, Copy)]
pub enum QueryDocuments {}

/// A question and its context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QaInput<'a> {
    /// The question.
    pub question: &'a str,
    /// The text the answer is taken from.
    pub context: &'a str,
}

impl InputKind for Text {
    type Input<'a> = &'a str;
}

impl InputKind for TextOrPair {
    type Input<'a> = TextInput<'a>;
}

impl InputKind for QuestionContext {
    type Input<'a> = QaInput<'a>;
}

impl InputKind for QueryDocuments {
    type Input<'a> = RerankInput<'a>;
}

/// A value that can be borrowed as one input of kind `K`: `&str`, `String`, `&String` for
/// texts; also `(first, second)` tuples of those and [`TextInput`] for [`TextOrPair`];
/// `(question, context)` tuples and [`QaInput`] for [`QuestionContext`]; `(query, &[&str])`
/// tuples and [`RerankInput`] for [`QueryDocuments`].
pub trait AsInput<K: InputKind> {
    /// Borrow `self` as one input.
    fn as_input(&self) -> K::Input<'_>;
}

impl<K: InputKind, T: AsInput<K> + ?Sized> AsInput<K> for &T {
    fn as_input(&self) -> K::Input<'_> {
        (**self).as_input()
    }
}

impl AsInput<Text> for str {
    fn as_input(&self) -> &str {
        self
    }
}

impl AsInput<Text> for String {
    fn as_input(&self) -> &str {
        self
    }
}

impl AsInput<TextOrPair> for str {
    fn as_input(&self) -> TextInput<'_> {
        TextInput::Single(self)
    }
}

impl AsInput<TextOrPair> for String {
    fn as_input(&self) -> TextInput<'_> {
        TextInput::Single(self)
    }
}

impl AsInput<TextOrPair> for TextInput<'_> {
    fn as_input(&self) -> TextInput<'_> {
        *self
    }
}

impl<A: AsRef<str>, B: AsRef<str>> AsInput<TextOrPair> for (A, B) {
    fn as_input(&self) -> TextInput<'_> {
        TextInput::Pair(self.0.as_ref(), self.1.as_ref())
    }
}

impl AsInput<QuestionContext> for QaInput<'_> {
    fn as_input(&self) -> QaInput<'_> {
        *self
    }
}

impl<A: AsRef<str>, B: AsRef<str>> AsInput<QuestionContext> for (A, B) {
    fn as_input(&self) -> QaInput<'_> {
        QaInput {
            question: self.0.as_ref(),
            context: self.1.as_ref(),
        }
    }
}

impl AsInput<QueryDocuments> for RerankInput<'_> {
    fn as_input(&self) -> RerankInput<'_> {
        *self
    }
}

impl<A: AsRef<str>> AsInput<QueryDocuments> for (A, &[&str]) {
    fn as_input(&self) -> RerankInput<'_> {
        RerankInput {
            query: self.0.as_ref(),
            documents: self.1,
        }
    }
}
