//! TEI 1.x's routes, with its request fields, defaults and response shapes:
//! <https://github.com/huggingface/text-embeddings-inference/blob/v1.8.3/router/src/http/types.rs>

use std::collections::BTreeMap;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tokenizers::Encoding;

use crate::batching::queue::Forward;
use crate::http::error::{ServeError, TeiError};
use crate::state::{run_blocking, too_long, AppState, Shared};
use ferroformers::models::pooling::Pooling;
use ferroformers::pipelines::rerank::ranked;
use ferroformers::pipelines::{
    AnyPipeline, CrossEncoderActivation, EmbeddingsOptions, EmbeddingsPipeline, EncodedTexts,
    Pipeline, Prompt, RerankOptions, ScoreFunction, SparseEmbeddingsOptions,
    SparseEmbeddingsPipeline, SparseValue, TextClassificationOptions,
};
use ferroformers::tokenizer::{EncodeOptions, TextInput};

/// One text or several: `"inputs": "a"` or `"inputs": ["a", "b"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Inputs {
    One(String),
    Many(Vec<String>),
}

impl Inputs {
    pub(crate) fn texts(&self) -> Vec<&str> {
        match self {
            Inputs::One(text) => vec![text.as_str()],
            Inputs::Many(texts) => texts.iter().map(String::as_str).collect(),
        }
    }
}

/// The side TEI cuts long inputs on.
#[derive(Debug, Default, Deserialize)]
pub(crate) enum TruncationDirection {
    #[serde(alias = "left")]
    Left,
    #[default]
    #[serde(alias = "right")]
    Right,
}

/// Only the right side is cut (transformers' and sentence-transformers' default).
fn right_only(direction: &TruncationDirection) -> Result<(), ServeError> {
    match direction {
        TruncationDirection::Right => Ok(()),
        TruncationDirection::Left => Err(ServeError::invalid(
            "truncation_direction `Left` is not supported: inputs are cut on the right; \
             send `Right` or leave it out",
        )),
    }
}

/// TEI's 400 for an empty batch.
pub(crate) fn not_empty(texts: &[&str]) -> Result<(), ServeError> {
    if texts.is_empty() {
        return Err(ServeError::Validation(
            StatusCode::BAD_REQUEST,
            "`inputs` cannot be empty: send at least one text".to_string(),
        ));
    }
    Ok(())
}

fn wrong_task(state: &Shared, route: &str, wanted: &str) -> ServeError {
    ServeError::WrongTask(format!(
        "{route} needs a {wanted} model; this server runs {} ({}): see /info",
        state.config.model_id,
        state.pipeline.task()
    ))
}

/// `POST /embed`'s body.
#[derive(Debug, Deserialize)]
pub(crate) struct EmbedRequest {
    inputs: Inputs,
    /// Cut inputs over `max_input_length` instead of refusing them (TEI: off by default).
    #[serde(default)]
    truncate: bool,
    #[serde(default)]
    truncation_direction: TruncationDirection,
    /// Unit-length embeddings, TEI's default.
    #[serde(default = "yes")]
    normalize: bool,
    /// One of the model's sentence-transformers prompts.
    prompt_name: Option<String>,
    /// Keep the first this many values of each embedding (Matryoshka models), normalised
    /// again when `normalize` is on, as TEI does.
    dimensions: Option<usize>,
}

fn yes() -> bool {
    true
}

pub(crate) async fn embed(
    State(state): State<AppState>,
    body: Result<Json<EmbedRequest>, JsonRejection>,
) -> Result<Json<Vec<Vec<f32>>>, TeiError> {
    let Json(request) = body?;
    right_only(&request.truncation_direction)?;
    if let AnyPipeline::SparseEmbeddings(_) = &state.pipeline {
        return Ok(Json(embed_splade_dense(&state, request).await?));
    }
    let prompt = request
        .prompt_name
        .map_or(Prompt::ModelDefault, Prompt::Named);
    let options = EmbeddingsOptions {
        truncation: state.truncation(request.truncate),
        prompt,
        normalize_embeddings: request.normalize,
        truncate_dim: request.dimensions,
        ..EmbeddingsOptions::default()
    };
    let (embeddings, _) = embed_texts(&state, request.inputs, options).await?;
    Ok(Json(embeddings))
}

/// A SPLADE model's `/embed`: the whole vocabulary-sized vectors, as TEI gives them, which
/// refuses `normalize` for them (its default, so a plain request fails: TEI's 424).
/// <https://github.com/huggingface/text-embeddings-inference/blob/v1.8.3/core/src/infer.rs>
/// (`embed_pooled`: "`normalize` is not available for SPLADE models").
async fn embed_splade_dense(
    state: &AppState,
    request: EmbedRequest,
) -> Result<Vec<Vec<f32>>, ServeError> {
    if request.normalize {
        return Err(ServeError::Validation(
            StatusCode::FAILED_DEPENDENCY,
            "`normalize` is not available for SPLADE models: send `normalize: false` for the \
             vocabulary-sized vectors, or use /embed_sparse"
                .to_string(),
        ));
    }
    if request.dimensions.is_some() {
        return Err(ServeError::field(
            "dimensions",
            "`dimensions` does not apply to SPLADE vectors: their values are vocabulary entries",
        ));
    }
    let request = EmbedAllRequest {
        inputs: request.inputs,
        truncate: request.truncate,
        truncation_direction: request.truncation_direction,
        prompt_name: request.prompt_name,
    };
    let encodings = encode_for_splade(state, request).await?;
    Ok(state
        .queue
        .submit(encodings, Forward::SparseEmbeddings)
        .await?)
}

/// `POST /embed_all`'s and `/embed_sparse`'s body: `/embed`'s, less what acts on a pooled
/// vector.
#[derive(Debug, Deserialize)]
pub(crate) struct EmbedAllRequest {
    inputs: Inputs,
    #[serde(default)]
    truncate: bool,
    #[serde(default)]
    truncation_direction: TruncationDirection,
    prompt_name: Option<String>,
}

/// Every token's vector of every input (TEI's `/embed_all`): the model's last hidden state,
/// special and prompt tokens included, as sentence-transformers' `token_embeddings`.
pub(crate) async fn embed_all(
    State(state): State<AppState>,
    body: Result<Json<EmbedAllRequest>, JsonRejection>,
) -> Result<Json<Vec<Vec<Vec<f32>>>>, TeiError> {
    let Json(request) = body?;
    right_only(&request.truncation_direction)?;
    if let AnyPipeline::SparseEmbeddings(_) = &state.pipeline {
        // TEI's answer: a SPLADE model's token vectors are vocabulary logits, not embeddings.
        return Err(ServeError::Validation(
            StatusCode::FAILED_DEPENDENCY,
            "`embed_all` is not available for SPLADE models".to_string(),
        )
        .into());
    }
    let options = EmbeddingsOptions {
        truncation: state.truncation(request.truncate),
        prompt: request
            .prompt_name
            .map_or(Prompt::ModelDefault, Prompt::Named),
        ..EmbeddingsOptions::default()
    };
    let (encoded, _) = encode_texts(&state, request.inputs, options).await?;
    let flat = state
        .queue
        .submit(encoded.encodings, Forward::TokenEmbeddings)
        .await?;
    Ok(Json(embeddings_pipeline(&state)?.token_rows(flat)))
}

/// Every input's SPLADE vector as its non-zero entries, by ascending index (TEI's
/// `/embed_sparse`), batched with other requests as `/embed` is. A model without SPLADE pooling
/// gets TEI's 424.
pub(crate) async fn embed_sparse(
    State(state): State<AppState>,
    body: Result<Json<EmbedAllRequest>, JsonRejection>,
) -> Result<Json<Vec<Vec<SparseValue>>>, TeiError> {
    let Json(request) = body?;
    right_only(&request.truncation_direction)?;
    let encodings = encode_for_splade(&state, request).await?;
    let pooled = state
        .queue
        .submit(encodings, Forward::SparseEmbeddings)
        .await?;
    Ok(Json(sparse_pipeline(&state)?.postprocess(pooled)))
}

/// The SPLADE pipeline this server runs, or TEI's 424 for any other model:
/// <https://github.com/huggingface/text-embeddings-inference/blob/v1.8.3/core/src/infer.rs>
/// (`embed_sparse`: "Model is not an embedding model with SPLADE pooling", a backend error).
fn sparse_pipeline(state: &Shared) -> Result<&SparseEmbeddingsPipeline, ServeError> {
    match &state.pipeline {
        AnyPipeline::SparseEmbeddings(pipeline) => Ok(pipeline),
        other => Err(ServeError::Validation(
            StatusCode::FAILED_DEPENDENCY,
            format!(
                "Model is not an embedding model with SPLADE pooling: this server runs {} ({}); \
                 serve a SparseEncoder, or a masked LM with --pooling splade",
                state.config.model_id,
                other.task()
            ),
        )),
    }
}

/// Preprocess of a SPLADE request on the blocking pool, checked as `/embed`'s is (TEI's 424
/// first, for a model without SPLADE pooling).
async fn encode_for_splade(
    state: &AppState,
    request: EmbedAllRequest,
) -> Result<Vec<Encoding>, ServeError> {
    let options = SparseEmbeddingsOptions {
        truncation: state.truncation(request.truncate),
        prompt: request
            .prompt_name
            .map_or(Prompt::ModelDefault, Prompt::Named),
        ..SparseEmbeddingsOptions::default()
    };
    run_blocking(state, move |state| {
        let pipeline = sparse_pipeline(state)?;
        let texts = request.inputs.texts();
        not_empty(&texts)?;
        state.check_client_batch(texts.len())?;
        state.count_tokens(&texts, options.truncation.enabled)?;
        Ok(pipeline.encode(&texts, &options)?)
    })
    .await
}

/// The embeddings pipeline this server runs, or the error for a model of another task.
fn embeddings_pipeline(state: &Shared) -> Result<&EmbeddingsPipeline, ServeError> {
    match &state.pipeline {
        AnyPipeline::Embeddings(pipeline) => Ok(pipeline),
        _ => Err(wrong_task(state, "embedding", "feature-extraction")),
    }
}

/// Preprocess on the blocking pool: `inputs` checked (not empty, within the client batch,
/// within the length limit unless `options` truncate) and encoded with `options`; with their
/// token counts.
async fn encode_texts(
    state: &AppState,
    inputs: Inputs,
    options: EmbeddingsOptions,
) -> Result<(EncodedTexts, Vec<usize>), ServeError> {
    run_blocking(state, move |state| {
        let pipeline = embeddings_pipeline(state)?;
        let texts = inputs.texts();
        not_empty(&texts)?;
        state.check_client_batch(texts.len())?;
        let counts = state.count_tokens(&texts, options.truncation.enabled)?;
        Ok((pipeline.encode(&texts, &options)?, counts))
    })
    .await
}

/// The embeddings of `inputs` and their token counts, shared with `/v1/embeddings`: tokenized
/// on the blocking pool, pooled in a batch with other requests, postprocessed here as
/// `options` say (`truncate_dim` is the request's `dimensions`).
pub(crate) async fn embed_texts(
    state: &AppState,
    inputs: Inputs,
    options: EmbeddingsOptions,
) -> Result<(Vec<Vec<f32>>, Vec<usize>), ServeError> {
    if options.truncate_dim == Some(0) {
        return Err(ServeError::field(
            "dimensions",
            "`dimensions` must be at least 1",
        ));
    }
    let (encoded, counts) = encode_texts(state, inputs, options.clone()).await?;
    let forward = Forward::Embeddings {
        prompt_length: encoded.prompt_length,
    };
    let pooled = state.queue.submit(encoded.encodings, forward).await?;
    let pipeline = embeddings_pipeline(state)?;
    let width = pooled.first().map_or(0, Vec::len);
    if let Some(dimensions) = options.truncate_dim.filter(|&d| d > width) {
        return Err(ServeError::field(
            "dimensions",
            format!("`dimensions` is {dimensions}, more than the model's {width}"),
        ));
    }
    Ok((pipeline.postprocess(pooled, &options)?, counts))
}

/// `POST /rerank`'s body.
#[derive(Debug, Deserialize)]
pub(crate) struct RerankRequest {
    query: String,
    texts: Vec<String>,
    #[serde(default)]
    truncate: bool,
    #[serde(default)]
    truncation_direction: TruncationDirection,
    /// The logits, without the model's activation.
    #[serde(default)]
    raw_scores: bool,
    /// Send each text back with its score.
    #[serde(default)]
    return_text: bool,
}

/// One text of a ranking.
#[derive(Debug, Serialize)]
pub(crate) struct Rank {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    score: f32,
}

pub(crate) async fn rerank(
    State(state): State<AppState>,
    body: Result<Json<RerankRequest>, JsonRejection>,
) -> Result<Json<Vec<Rank>>, TeiError> {
    let Json(request) = body?;
    right_only(&request.truncation_direction)?;
    let options = RerankOptions {
        return_documents: request.return_text,
        truncation: state.truncation(request.truncate),
        activation: request
            .raw_scores
            .then_some(CrossEncoderActivation::Identity),
        ..RerankOptions::default()
    };
    let (request, options, encodings) = run_blocking(&state, move |state| {
        let AnyPipeline::Rerank(pipeline) = &state.pipeline else {
            return Err(wrong_task(state, "/rerank", "text-ranking (cross-encoder)"));
        };
        pipeline.check_ranks()?;
        if request.texts.is_empty() {
            not_empty(&[])?;
        }
        state.check_client_batch(request.texts.len())?;
        let pairs: Vec<(&str, &str)> = request
            .texts
            .iter()
            .map(|text| (request.query.as_str(), text.as_str()))
            .collect();
        if !request.truncate {
            let tokenizer = pipeline.tokenizer();
            for &(query, text) in &pairs {
                let length = tokenizer
                    .encode(TextInput::Pair(query, text), &EncodeOptions::default())?
                    .len();
                if length > state.max_input_length {
                    return Err(too_long(length, state.max_input_length));
                }
            }
        }
        let encodings = pipeline.encode_pairs(&pairs, &options)?;
        Ok((request, options, encodings))
    })
    .await?;
    let logits = state.queue.submit(encodings, Forward::Logits).await?;
    let AnyPipeline::Rerank(pipeline) = &state.pipeline else {
        return Err(wrong_task(&state, "/rerank", "text-ranking (cross-encoder)").into());
    };
    let scores = pipeline.scores(logits, &options);
    let ranks = ranked(&scores, &request.texts, &options)?
        .into_iter()
        .map(|document| Rank {
            index: document.corpus_id,
            text: document.text,
            score: document.score,
        })
        .collect();
    Ok(Json(ranks))
}

/// A text or a pair of texts to classify.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Sequence {
    Single(String),
    Pair(String, String),
}

/// One sequence or a batch of them: TEI's `PredictInput`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum PredictInputs {
    One(Sequence),
    Many(Vec<Sequence>),
}

/// `POST /predict`'s body.
#[derive(Debug, Deserialize)]
pub(crate) struct PredictRequest {
    inputs: PredictInputs,
    #[serde(default)]
    truncate: bool,
    #[serde(default)]
    truncation_direction: TruncationDirection,
    /// The logits, without softmax or sigmoid.
    #[serde(default)]
    raw_scores: bool,
}

/// One label and its score.
#[derive(Debug, Serialize)]
pub(crate) struct Prediction {
    score: f32,
    label: String,
}

/// A single input's labels, or a batch's: TEI answers in the shape it was asked.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum PredictResponse {
    One(Vec<Prediction>),
    Many(Vec<Vec<Prediction>>),
}

pub(crate) async fn predict(
    State(state): State<AppState>,
    body: Result<Json<PredictRequest>, JsonRejection>,
) -> Result<Json<PredictResponse>, TeiError> {
    let Json(request) = body?;
    right_only(&request.truncation_direction)?;
    let mut options = TextClassificationOptions {
        truncation: state.truncation(request.truncate),
        ..TextClassificationOptions::default()
    }
    .with_top_k(None);
    if request.raw_scores {
        options = options.with_function_to_apply(ScoreFunction::None);
    }
    let batch = matches!(request.inputs, PredictInputs::Many(_));
    let encode_options = options.clone();
    let encodings = run_blocking(&state, move |state| {
        let AnyPipeline::TextClassification(pipeline) = &state.pipeline else {
            return Err(wrong_task(state, "/predict", "text-classification"));
        };
        let sequences = match &request.inputs {
            PredictInputs::One(sequence) => std::slice::from_ref(sequence),
            PredictInputs::Many(sequences) => sequences.as_slice(),
        };
        if sequences.is_empty() {
            not_empty(&[])?;
        }
        state.check_client_batch(sequences.len())?;
        let inputs: Vec<TextInput<'_>> = sequences
            .iter()
            .map(|sequence| match sequence {
                Sequence::Single(text) => TextInput::Single(text),
                Sequence::Pair(first, second) => TextInput::Pair(first, second),
            })
            .collect();
        if !request.truncate {
            for input in &inputs {
                let length = pipeline
                    .tokenizer()
                    .encode(*input, &EncodeOptions::default())?
                    .len();
                if length > state.max_input_length {
                    return Err(too_long(length, state.max_input_length));
                }
            }
        }
        Ok(pipeline.encode(&inputs, &encode_options)?)
    })
    .await?;
    let logits = state.queue.submit(encodings, Forward::Logits).await?;
    let AnyPipeline::TextClassification(pipeline) = &state.pipeline else {
        return Err(wrong_task(&state, "/predict", "text-classification").into());
    };
    let mut labels: Vec<Vec<Prediction>> = pipeline
        .labels(&logits, &options)
        .into_iter()
        .map(|scores| {
            scores
                .into_iter()
                .map(|label| Prediction {
                    score: label.score,
                    label: label.label,
                })
                .collect()
        })
        .collect();
    Ok(Json(match (batch, labels.pop()) {
        (false, Some(one)) => PredictResponse::One(one),
        (_, last) => {
            labels.extend(last);
            PredictResponse::Many(labels)
        }
    }))
}

/// `POST /tokenize`'s body.
#[derive(Debug, Deserialize)]
pub(crate) struct TokenizeRequest {
    inputs: Inputs,
    #[serde(default = "yes")]
    add_special_tokens: bool,
}

/// One token: its id, its text (the input's characters it covers, or the special token),
/// and where it lies in the input (characters; none for special tokens).
#[derive(Debug, Serialize)]
pub(crate) struct SimpleToken {
    id: u32,
    text: String,
    special: bool,
    start: Option<usize>,
    stop: Option<usize>,
}

pub(crate) async fn tokenize(
    State(state): State<AppState>,
    body: Result<Json<TokenizeRequest>, JsonRejection>,
) -> Result<Json<Vec<Vec<SimpleToken>>>, TeiError> {
    let Json(request) = body?;
    let tokens = run_blocking(&state, move |state| {
        let options = EncodeOptions {
            add_special_tokens: request.add_special_tokens,
            ..EncodeOptions::default()
        };
        request
            .inputs
            .texts()
            .into_iter()
            .map(|text| {
                let encoding = state.pipeline.tokenizer().encode(text, &options)?;
                let chars: Vec<char> = text.chars().collect();
                Ok(encoding
                    .get_ids()
                    .iter()
                    .zip(encoding.get_tokens())
                    .zip(encoding.get_offsets())
                    .zip(encoding.get_special_tokens_mask())
                    .map(|(((&id, token), &(start, stop)), &special)| {
                        let special = special == 1;
                        SimpleToken {
                            id,
                            text: match special {
                                true => token.clone(),
                                false => {
                                    chars.get(start..stop).unwrap_or_default().iter().collect()
                                }
                            },
                            special,
                            start: (!special).then_some(start),
                            stop: (!special).then_some(stop),
                        }
                    })
                    .collect())
            })
            .collect::<Result<Vec<_>, ServeError>>()
    })
    .await?;
    Ok(Json(tokens))
}

/// Token ids of one text or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Ids {
    One(Vec<u32>),
    Many(Vec<Vec<u32>>),
}

/// `POST /decode`'s body.
#[derive(Debug, Deserialize)]
pub(crate) struct DecodeRequest {
    ids: Ids,
    #[serde(default = "yes")]
    skip_special_tokens: bool,
}

pub(crate) async fn decode(
    State(state): State<AppState>,
    body: Result<Json<DecodeRequest>, JsonRejection>,
) -> Result<Json<Vec<String>>, TeiError> {
    let Json(request) = body?;
    let texts = run_blocking(&state, move |state| {
        let batch = match request.ids {
            Ids::One(ids) => vec![ids],
            Ids::Many(batch) => batch,
        };
        let tokenizer = state.pipeline.tokenizer();
        let vocabulary = tokenizer.inner().get_vocab_size(true);
        batch
            .iter()
            .map(|ids| {
                if let Some(id) = ids.iter().find(|&&id| id as usize >= vocabulary) {
                    return Err(ServeError::invalid(format!(
                        "`ids`: token id {id} is not in the vocabulary (size {vocabulary})"
                    )));
                }
                Ok(tokenizer.decode(ids, request.skip_special_tokens)?)
            })
            .collect::<Result<Vec<_>, ServeError>>()
    })
    .await?;
    Ok(Json(texts))
}

/// `GET /info`: TEI's `Info`, with the task this server runs.
#[derive(Debug, Serialize)]
pub(crate) struct Info {
    model_id: String,
    model_sha: Option<String>,
    model_dtype: &'static str,
    model_type: ModelType,
    /// transformers' name of the pipeline task.
    task: &'static str,
    max_concurrent_requests: usize,
    max_input_length: usize,
    /// Padded tokens per batched forward.
    max_batch_tokens: usize,
    /// Requests per batched forward; `null`: as many as fit in the tokens.
    max_batch_requests: Option<usize>,
    /// Inputs one request may send.
    max_client_batch_size: usize,
    auto_truncate: bool,
    version: &'static str,
}

/// TEI's `model_type`, plus the Inference API tasks TEI does not serve.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ModelType {
    Embedding { pooling: &'static str },
    Classifier(Labels),
    Reranker(Labels),
    FillMask {},
    TokenClassification(Labels),
    QuestionAnswering {},
    TextGeneration {},
}

/// A head's labels both ways.
#[derive(Debug, Serialize)]
pub(crate) struct Labels {
    id2label: BTreeMap<String, String>,
    label2id: BTreeMap<String, usize>,
}

fn labels(state: &Shared) -> Labels {
    let names = state.pipeline.config().id2label();
    let id2label = (0..names.len())
        .map(|id| (id.to_string(), names.name(id)))
        .collect();
    let label2id = (0..names.len()).map(|id| (names.name(id), id)).collect();
    Labels { id2label, label2id }
}

pub(crate) async fn info(State(state): State<AppState>) -> Json<Info> {
    let model_type = match &state.pipeline {
        AnyPipeline::Embeddings(pipeline) => ModelType::Embedding {
            pooling: match pipeline.pooling() {
                Pooling::Mean => "mean",
                Pooling::Cls => "cls",
                Pooling::Max => "max",
                Pooling::LastToken => "last_token",
            },
        },
        // TEI's name for a model served with `--pooling splade`.
        AnyPipeline::SparseEmbeddings(_) => ModelType::Embedding { pooling: "splade" },
        AnyPipeline::TextClassification(_) => ModelType::Classifier(labels(&state)),
        AnyPipeline::Rerank(_) => ModelType::Reranker(labels(&state)),
        AnyPipeline::TokenClassification(_) => ModelType::TokenClassification(labels(&state)),
        AnyPipeline::QuestionAnswering(_) => ModelType::QuestionAnswering {},
        AnyPipeline::FillMask(_) => ModelType::FillMask {},
        AnyPipeline::TextGeneration(_) => ModelType::TextGeneration {},
    };
    Json(Info {
        model_id: state.config.model_id.clone(),
        model_sha: None,
        model_dtype: state.config.model_dtype.name(),
        model_type,
        task: state.pipeline.task().name(),
        max_concurrent_requests: state.config.max_concurrent_requests,
        max_input_length: state.max_input_length,
        max_batch_tokens: state.config.max_batch_tokens,
        max_batch_requests: state.config.max_batch_requests,
        max_client_batch_size: state.config.max_client_batch_size,
        auto_truncate: false,
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// `GET /health`: 200 once the model is loaded (the server binds only after loading).
pub(crate) async fn health() -> StatusCode {
    StatusCode::OK
}
