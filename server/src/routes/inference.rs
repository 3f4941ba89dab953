//! `POST /` in the style of Hugging Face's Inference API (`{"inputs": ..., "parameters":
//! {...}}`), for the pipelines TEI and OpenAI have no route for: fill-mask, token
//! classification and question answering. Each answers what `ferroformers <task> --json`
//! prints: for one input, its predictions; for a list, a list of them.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::http::error::{ServeError, TeiError};
use crate::routes::tei::{not_empty, Inputs};
use crate::state::{run_blocking, AppState, Shared};
use ferroformers::pipelines::{
    AggregationStrategy, AnyPipeline, FillMaskOptions, Pipeline, QaInput, QuestionAnsweringOptions,
    TokenClassificationOptions,
};

/// The body: the task's inputs and its parameters, checked once the task is known.
#[derive(Debug, Deserialize)]
pub(crate) struct InferenceRequest {
    inputs: Value,
    #[serde(default)]
    parameters: Option<Value>,
}

/// `fill-mask`'s parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FillMaskParameters {
    top_k: Option<usize>,
    targets: Option<Vec<String>>,
}

/// `token-classification`'s parameters; the aggregation is `simple` unless set, as the CLI's
/// and the Inference API's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NerParameters {
    aggregation_strategy: Option<String>,
    ignore_labels: Option<Vec<String>>,
}

/// `question-answering`'s parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QaParameters {
    top_k: Option<usize>,
    max_answer_len: Option<usize>,
    handle_impossible_answer: Option<bool>,
    doc_stride: Option<usize>,
    max_seq_len: Option<usize>,
}

/// A question and the text to find its answer in.
#[derive(Debug, Deserialize)]
struct QuestionContext {
    question: String,
    context: String,
}

/// One question or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum QaInputs {
    One(QuestionContext),
    Many(Vec<QuestionContext>),
}

/// `field` of the body as `T`, or a 422 that names it (as axum names the fields it rejects).
fn field<T: DeserializeOwned>(name: &str, value: Value) -> Result<T, ServeError> {
    serde_json::from_value(value).map_err(|e| {
        ServeError::invalid(format!(
            "Failed to deserialize the JSON body into the target type: {name}: {e}"
        ))
    })
}

fn parameters<T: DeserializeOwned + Default>(value: Option<Value>) -> Result<T, ServeError> {
    value.map_or_else(|| Ok(T::default()), |value| field("parameters", value))
}

/// One input's output, or a list of them in the shape the inputs came.
fn shaped<T: serde::Serialize>(mut outputs: Vec<T>, one: bool) -> Result<Value, ServeError> {
    let value = match (one, outputs.pop()) {
        (true, Some(output)) => serde_json::to_value(output),
        (_, last) => {
            outputs.extend(last);
            serde_json::to_value(outputs)
        }
    };
    value.map_err(|e| ServeError::Internal(format!("cannot write the answer as JSON: {e}")))
}

pub(crate) async fn run(
    State(state): State<AppState>,
    body: Result<Json<InferenceRequest>, JsonRejection>,
) -> Result<Json<Value>, TeiError> {
    let Json(request) = body?;
    let answer = run_blocking(&state, move |state| answer(state, request)).await?;
    Ok(Json(answer))
}

fn answer(state: &Shared, request: InferenceRequest) -> Result<Value, ServeError> {
    match &state.pipeline {
        AnyPipeline::FillMask(pipeline) => {
            let inputs: Inputs = field("inputs", request.inputs)?;
            let parameters: FillMaskParameters = parameters(request.parameters)?;
            let texts = inputs.texts();
            not_empty(&texts)?;
            let mut options = FillMaskOptions {
                targets: parameters.targets,
                ..FillMaskOptions::default()
            };
            if let Some(top_k) = parameters.top_k {
                options.top_k = top_k;
            }
            shaped(
                pipeline.run(&texts, &options)?,
                matches!(inputs, Inputs::One(_)),
            )
        }
        AnyPipeline::TokenClassification(pipeline) => {
            let inputs: Inputs = field("inputs", request.inputs)?;
            let parameters: NerParameters = parameters(request.parameters)?;
            let texts = inputs.texts();
            not_empty(&texts)?;
            let strategy: AggregationStrategy = match parameters.aggregation_strategy {
                Some(name) => name.parse().map_err(|e: ferroformers::Error| {
                    ServeError::invalid(format!("parameters.aggregation_strategy: {e}"))
                })?,
                None => AggregationStrategy::Simple,
            };
            let mut options = TokenClassificationOptions {
                aggregation_strategy: strategy,
                ..TokenClassificationOptions::default()
            };
            if let Some(labels) = parameters.ignore_labels {
                options.ignore_labels = labels;
            }
            shaped(
                pipeline.run(&texts, &options)?,
                matches!(inputs, Inputs::One(_)),
            )
        }
        AnyPipeline::QuestionAnswering(pipeline) => {
            let inputs: QaInputs = field("inputs", request.inputs)?;
            let parameters: QaParameters = parameters(request.parameters)?;
            let (questions, one) = match &inputs {
                QaInputs::One(question) => (std::slice::from_ref(question), true),
                QaInputs::Many(questions) => (questions.as_slice(), false),
            };
            if questions.is_empty() {
                not_empty(&[])?;
            }
            let mut options = QuestionAnsweringOptions {
                doc_stride: parameters.doc_stride,
                max_seq_len: parameters.max_seq_len,
                ..QuestionAnsweringOptions::default()
            };
            if let Some(top_k) = parameters.top_k {
                options.top_k = top_k;
            }
            if let Some(length) = parameters.max_answer_len {
                options.max_answer_len = length;
            }
            if let Some(handle) = parameters.handle_impossible_answer {
                options.handle_impossible_answer = handle;
            }
            let pairs: Vec<QaInput<'_>> = questions
                .iter()
                .map(|q| QaInput {
                    question: &q.question,
                    context: &q.context,
                })
                .collect();
            let answers = pipeline.run(&pairs, &options)?;
            // Without top_k the best answer alone, as the CLI and transformers (top_k=1) give it.
            if parameters.top_k.is_none() {
                let best: Vec<_> = answers.into_iter().map(|a| a.into_iter().next()).collect();
                return shaped(best, one);
            }
            shaped(answers, one)
        }
        other => Err(ServeError::WrongTask(format!(
            "POST / serves fill-mask, token-classification and question-answering models; this \
             server runs {}: use {}",
            other.task(),
            match other {
                AnyPipeline::Embeddings(_) => "/embed or /v1/embeddings",
                AnyPipeline::TextClassification(_) => "/predict",
                AnyPipeline::Rerank(_) => "/rerank",
                AnyPipeline::SparseEmbeddings(_) => "/embed_sparse",
                _ => "/info to see what it serves",
            }
        ))),
    }
}
