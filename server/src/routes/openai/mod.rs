//! OpenAI's `/v1/models` and `/v1/embeddings`, as the `openai` clients call them:
//! <https://platform.openai.com/docs/api-reference/embeddings/create>

pub(crate) mod completions;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::http::error::OpenAiError;
use crate::routes::tei::{embed_texts, Inputs};
use crate::state::AppState;
use ferroformers::pipelines::EmbeddingsOptions;

/// `GET /v1/models`'s answer: the one model this server runs.
#[derive(Debug, Serialize)]
pub(crate) struct ModelList {
    object: &'static str,
    data: Vec<Model>,
}

/// One model of the list.
#[derive(Debug, Serialize)]
pub(crate) struct Model {
    id: String,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

pub(crate) async fn models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![Model {
            id: state.config.model_id.clone(),
            object: "model",
            created: 0,
            owned_by: "ferroformers",
        }],
    })
}

/// How embeddings come back.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EncodingFormat {
    #[default]
    Float,
    /// The little-endian bytes of the f32 values, base64-encoded (what the `openai` Python
    /// client asks for by default, to decode with numpy).
    Base64,
}

/// `POST /v1/embeddings`'s body. `model` and `user` are accepted and ignored: the server
/// runs one model.
#[derive(Debug, Deserialize)]
pub(crate) struct EmbeddingsRequest {
    input: Inputs,
    #[serde(default)]
    encoding_format: EncodingFormat,
    /// Keep the first this many values of each embedding, unit length again (OpenAI's
    /// `text-embedding-3` parameter; for Matryoshka models).
    dimensions: Option<usize>,
}

/// An embedding as a list of floats or as base64.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

/// One embedding of the answer.
#[derive(Debug, Serialize)]
pub(crate) struct Embedding {
    object: &'static str,
    embedding: Vector,
    index: usize,
}

/// Tokens the request used.
#[derive(Debug, Serialize)]
pub(crate) struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// `POST /v1/embeddings`'s answer.
#[derive(Debug, Serialize)]
pub(crate) struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<Embedding>,
    model: String,
    usage: Usage,
}

/// Unit-length embeddings as TEI's OpenAI route gives them; inputs over the limit are
/// refused (413), as on `/embed` without `truncate`.
pub(crate) async fn embeddings(
    State(state): State<AppState>,
    body: Result<Json<EmbeddingsRequest>, JsonRejection>,
) -> Result<Json<EmbeddingsResponse>, OpenAiError> {
    let Json(request) = body?;
    let format = request.encoding_format;
    let options = EmbeddingsOptions {
        truncation: state.truncation(false),
        normalize_embeddings: true,
        truncate_dim: request.dimensions,
        ..EmbeddingsOptions::default()
    };
    let (vectors, counts) = embed_texts(&state, request.input, options).await?;
    let tokens = counts.iter().sum();
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| Embedding {
            object: "embedding",
            embedding: match format {
                EncodingFormat::Float => Vector::Float(vector),
                EncodingFormat::Base64 => Vector::Base64(base64_of(&vector)),
            },
            index,
        })
        .collect();
    Ok(Json(EmbeddingsResponse {
        object: "list",
        data,
        model: state.config.model_id.clone(),
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    }))
}

fn base64_of(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
