//! OpenAI's `POST /v1/completions` and `POST /v1/chat/completions`, as the `openai` clients
//! call them: <https://platform.openai.com/docs/api-reference/completions/create>,
//! <https://platform.openai.com/docs/api-reference/chat/create>.
//!
//! A request is checked ([`request`]); its prompts are rendered (chat: with the model's chat
//! template) and counted; each of its choices (`n` per prompt) goes to the generation worker
//! as one sequence. The choices' tokens are read together ([`choice`]), each choice's text
//! cut before its first stop string, and gathered into one answer or sent as server-sent
//! events as they come ([`stream`]).

mod choice;
mod request;
mod response;
mod stream;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::batching::generation::{submit, GenerationRequest};
use crate::http::error::{OpenAiError, ServeError};
use crate::state::{run_blocking, AppState, Shared};
use choice::Running;
use ferroformers::pipelines::{AnyPipeline, Message, Pipeline, TextGenerationPipeline};
use ferroformers::tokenizer::EncodeOptions;
use request::{ChatRequest, CompletionRequest, Settings};
use response::{Answer, Api, Usage};

/// A prompt ready to generate from.
struct Prepared {
    /// The text the model continues (for stop strings that begin in it).
    text: String,
    /// Its token ids.
    ids: Vec<u32>,
    /// New tokens per choice.
    max_new_tokens: usize,
}

/// The text-generation pipeline of `shared`, or the 400 a server of another task answers.
fn generation_pipeline(shared: &Shared) -> Result<&TextGenerationPipeline, ServeError> {
    match &shared.pipeline {
        AnyPipeline::TextGeneration(pipeline) => Ok(pipeline),
        other => Err(ServeError::WrongTask(format!(
            "this server runs a {} model, which does not generate text: completions need a \
             text-generation model (serve one with --task generate)",
            other.task()
        ))),
    }
}

/// `POST /v1/completions`: a choice set per prompt.
pub(crate) async fn completions(
    State(state): State<AppState>,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Result<Response, OpenAiError> {
    let Json(request) = body?;
    generation_pipeline(&state)?;
    let (prompts, settings) = request.checked()?;
    let max_tokens = settings.max_tokens;
    let prepared = run_blocking(&state, move |state| {
        prompts
            .into_iter()
            .map(|prompt| {
                let ids = encode(state, &prompt, &EncodeOptions::default())?;
                prepare(state, prompt, ids, max_tokens, "prompt")
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    Ok(generate(&state, Api::Completions, prepared, settings).await?)
}

/// `POST /v1/chat/completions`: the assistant's reply to `messages`.
pub(crate) async fn chat_completions(
    State(state): State<AppState>,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, OpenAiError> {
    let Json(request) = body?;
    generation_pipeline(&state)?;
    let (messages, settings) = request.checked()?;
    let max_tokens = settings.max_tokens;
    let prepared = run_blocking(&state, move |state| {
        let (prompt, ids) = render(state, &messages)?;
        prepare(state, prompt, ids, max_tokens, "messages")
    })
    .await?;
    Ok(generate(&state, Api::Chat, vec![prepared], settings).await?)
}

/// The messages as the model reads a chat, text and token ids: rendered by its chat template
/// with the assistant's turn opened, and encoded without special tokens (the template writes
/// them), as transformers' `apply_chat_template` does; or, for a model without a template,
/// joined as DialoGPT's turns, each message's tokens and the end-of-text token, as
/// `ferroformers chat` joins them.
fn render(state: &Shared, messages: &[Message]) -> Result<(String, Vec<u32>), ServeError> {
    let pipeline = generation_pipeline(state)?;
    let template = pipeline.chat_template().map_err(|error| {
        ServeError::field_with_status(
            StatusCode::BAD_REQUEST,
            "messages",
            format!(
                "this model's chat template cannot be used ({error}): use /v1/completions with \
                 a prompt you write"
            ),
        )
    })?;
    let Some(template) = template else {
        let end = pipeline.generation_config().eos_token_id.first().copied();
        let end = end.ok_or_else(|| {
            ServeError::field_with_status(
                StatusCode::BAD_REQUEST,
                "messages",
                "this model has neither a chat template nor an end-of-text token to join turns \
                 with: use /v1/completions with a prompt you write"
                    .to_string(),
            )
        })?;
        let mut ids = Vec::new();
        for message in messages {
            ids.extend(pipeline.encode_turn(&message.content, &[end])?);
        }
        let text = pipeline.tokenizer().decode(&ids, false)?;
        return Ok((text, ids));
    };
    pipeline
        .encode_chat(template, messages)
        .map_err(|error| match error {
            // What the template raised, or could not render.
            error @ ferroformers::Error::ChatTemplate(_) => {
                ServeError::field("messages", error.to_string())
            }
            other => other.into(),
        })
}

/// `text`'s token ids, as the generation pipeline's tokenizer encodes it with `options`.
fn encode(state: &Shared, text: &str, options: &EncodeOptions) -> Result<Vec<u32>, ServeError> {
    Ok(generation_pipeline(state)?
        .tokenizer()
        .encode(text, options)?
        .get_ids()
        .to_vec())
}

/// Check `prompt`'s token ids (`ids`, as the generator reads them) and fit the new tokens
/// into the model's context: `max_tokens`, or all the room left when it is not set. `field`
/// is where the prompt came from, for OpenAI's `context_length_exceeded`.
fn prepare(
    state: &Shared,
    prompt: String,
    ids: Vec<u32>,
    max_tokens: Option<usize>,
    field: &'static str,
) -> Result<Prepared, ServeError> {
    let pipeline = generation_pipeline(state)?;
    let tokens = ids.len();
    let too_long = |message: String| ServeError::context_length_exceeded(field, message);
    let context = pipeline.model().max_positions();
    let max_new_tokens = max_tokens.unwrap_or(context.saturating_sub(tokens));
    if max_new_tokens == 0 || tokens + max_new_tokens > context {
        return Err(too_long(format!(
            "This model's maximum context length is {context} tokens. However, you requested \
             {} tokens ({tokens} in the {field}, {max_new_tokens} in the completion). Please \
             reduce the length of the {field} or completion.",
            tokens + max_new_tokens
        )));
    }
    if tokens > state.max_input_length {
        return Err(too_long(format!(
            "{tokens} tokens in the {field}, over this server's limit of {} \
             (--max-input-length): shorten the {field}",
            state.max_input_length
        )));
    }
    Ok(Prepared {
        text: prompt,
        ids,
        max_new_tokens,
    })
}

/// Submit every choice and answer: whole, or streamed.
async fn generate(
    state: &AppState,
    api: Api,
    prompts: Vec<Prepared>,
    settings: Settings,
) -> Result<Response, ServeError> {
    let model_config = generation_pipeline(state)?.generation_config().clone();
    let mut running = Running::new(&settings.stop);
    for prompt in &prompts {
        for _ in 0..settings.n {
            let choice = running.choices.len();
            let config = settings.generation_config(&model_config, prompt.max_new_tokens, choice);
            let request = GenerationRequest {
                prompt: prompt.ids.clone(),
                config,
            };
            // On an error the choices submitted so far are dropped, which stops them.
            running.add(submit(state, request)?, &prompt.text);
        }
    }
    let prompt_tokens = prompts.iter().map(|prompt| prompt.ids.len()).sum();
    let answer = Answer::new(api, &state.config.model_id);
    if settings.stream {
        return Ok(stream::respond(
            state.clone(),
            answer,
            running,
            prompt_tokens,
            settings.include_usage,
        ));
    }
    let choices = running.finish().await?;
    let completion_tokens = choices.iter().map(|c| c.completion_tokens).sum();
    let usage = Usage::new(prompt_tokens, completion_tokens);
    let body = answer.whole(&choices, usage, state.pipeline.tokenizer());
    Ok(Json(body).into_response())
}
