//! Errors of the HTTP routes, each with its status code and, depending on the route, TEI's
//! body `{"error", "error_type"}` or OpenAI's `{"error": {"message", "type", "param", "code"}}`.
//!
//! Status codes follow TEI 1.x (`router/src/http/server.rs`): validation errors (an input too
//! long) are 413, tokenizer errors 422, an overloaded server 429, a failed model 424. Two
//! are ours (TEI has neither): 408 for a request body that stops arriving, and 503
//! (`error_type` `unhealthy`) for a request that comes while the server shuts down.
//!
//! The batching threads answer with the library's errors, knowing nothing of HTTP: their
//! status codes are chosen here, with the others.
//! <https://github.com/huggingface/text-embeddings-inference/blob/v1.8.3/router/src/http/server.rs>

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use ferroformers::error::Error;

/// What went wrong with a request.
#[derive(Debug)]
pub(crate) enum ServeError {
    /// An API key is set and the request did not bring it.
    Unauthorized,
    /// More requests are in flight than `max_concurrent_requests`.
    Overloaded,
    /// The body is too large, is not JSON, or a field is missing or of the wrong type.
    Body(JsonRejection),
    /// A field has a value this server does not accept (kept with its status: TEI answers
    /// 413 for an input too long, 400 for an empty batch, 422 for the rest).
    Validation(StatusCode, String),
    /// A field has a value this server does not accept, named for OpenAI's `param` (and its
    /// `code`, where OpenAI has one for the case).
    Field {
        status: StatusCode,
        param: String,
        code: Option<&'static str>,
        message: String,
    },
    /// The route serves another task than the model's.
    WrongTask(String),
    /// No route at this path.
    NotFound(String),
    /// The pipeline, or the batching that runs it, failed; or the server is shutting down
    /// ([`Error::ShuttingDown`]).
    Library(Error),
    /// The blocking task that ran the pipeline did not finish (it panicked).
    Internal(String),
}

/// The two error body shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    Tei,
    OpenAi,
}

impl Flavor {
    /// OpenAI's shape under `/v1`, TEI's elsewhere.
    pub(crate) fn of_path(path: &str) -> Self {
        if path == "/v1" || path.starts_with("/v1/") {
            Flavor::OpenAi
        } else {
            Flavor::Tei
        }
    }
}

impl From<Error> for ServeError {
    fn from(error: Error) -> Self {
        ServeError::Library(error)
    }
}

impl From<JsonRejection> for ServeError {
    fn from(rejection: JsonRejection) -> Self {
        ServeError::Body(rejection)
    }
}

impl ServeError {
    /// A 422 about a field's value.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        ServeError::Validation(StatusCode::UNPROCESSABLE_ENTITY, message.into())
    }

    /// A 422 about the value of field `param`.
    pub(crate) fn field(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::field_with_status(StatusCode::UNPROCESSABLE_ENTITY, param, message)
    }

    /// An error of `status` about field `param`.
    pub(crate) fn field_with_status(
        status: StatusCode,
        param: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ServeError::Field {
            status,
            param: param.into(),
            code: None,
            message: message.into(),
        }
    }

    /// OpenAI's 400 for a prompt (`param`) that leaves no room for the completion.
    pub(crate) fn context_length_exceeded(param: &str, message: String) -> Self {
        ServeError::Field {
            status: StatusCode::BAD_REQUEST,
            param: param.to_string(),
            code: Some("context_length_exceeded"),
            message,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ServeError::Unauthorized => StatusCode::UNAUTHORIZED,
            ServeError::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ServeError::Body(rejection) if body_timed_out(rejection) => StatusCode::REQUEST_TIMEOUT,
            // axum answers 400 for JSON that does not parse; the issue (and TEI's clients)
            // expect 422 for every body that is not the request the route takes.
            ServeError::Body(JsonRejection::JsonSyntaxError(_)) => StatusCode::UNPROCESSABLE_ENTITY,
            ServeError::Body(rejection) => rejection.status(),
            ServeError::Validation(status, _) | ServeError::Field { status, .. } => *status,
            ServeError::WrongTask(_) => StatusCode::BAD_REQUEST,
            ServeError::NotFound(_) => StatusCode::NOT_FOUND,
            ServeError::Library(error) => match error {
                Error::InputTooLong { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                Error::InvalidInput(_)
                | Error::InvalidGeneration(_)
                | Error::ChatTemplate(_)
                | Error::Tokenizer { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                // Another replica can take it: TEI's `unhealthy`.
                Error::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
                // The server's own threads failed, not the model.
                Error::WorkerStopped { .. } | Error::WorkerSpawn { .. } => {
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                // The model failed (alone or in a batch, `BatchFailed`): TEI's backend error.
                _ => StatusCode::FAILED_DEPENDENCY,
            },
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            ServeError::Unauthorized => {
                "missing or wrong API key: send `Authorization: Bearer KEY`".to_string()
            }
            ServeError::Overloaded => {
                "Model is overloaded: too many requests in flight, retry later".to_string()
            }
            ServeError::Body(rejection) if body_timed_out(rejection) => {
                "the request body stopped arriving (body read timeout): send it without pauses"
                    .to_string()
            }
            ServeError::Body(rejection) => rejection.body_text(),
            ServeError::Validation(_, message)
            | ServeError::Field { message, .. }
            | ServeError::WrongTask(message)
            | ServeError::NotFound(message)
            | ServeError::Internal(message) => message.clone(),
            ServeError::Library(error) => error.to_string(),
        }
    }

    /// TEI's `error_type`.
    fn tei_type(&self) -> &'static str {
        match self.status() {
            StatusCode::TOO_MANY_REQUESTS => "overloaded",
            StatusCode::SERVICE_UNAVAILABLE => "unhealthy",
            StatusCode::PAYLOAD_TOO_LARGE => "validation",
            StatusCode::FAILED_DEPENDENCY | StatusCode::INTERNAL_SERVER_ERROR => "backend",
            StatusCode::BAD_REQUEST if matches!(self, ServeError::Validation(..)) => "empty",
            _ if matches!(self, ServeError::Library(Error::Tokenizer { .. })) => "tokenizer",
            _ => "validation",
        }
    }

    /// OpenAI's `type` and `code`.
    fn openai_type_and_code(&self) -> (&'static str, Option<&'static str>) {
        if let ServeError::Field {
            code: Some(code), ..
        } = self
        {
            return ("invalid_request_error", Some(code));
        }
        match self.status() {
            StatusCode::UNAUTHORIZED => ("invalid_request_error", Some("invalid_api_key")),
            StatusCode::TOO_MANY_REQUESTS => ("rate_limit_error", Some("rate_limit_exceeded")),
            StatusCode::NOT_FOUND => ("invalid_request_error", Some("unknown_url")),
            status if status.is_server_error() || status == StatusCode::FAILED_DEPENDENCY => {
                ("server_error", None)
            }
            _ => ("invalid_request_error", None),
        }
    }

    /// OpenAI's body: `{"error": {"message", "type", "param", "code"}}`.
    pub(crate) fn openai_body(&self) -> serde_json::Value {
        let message = self.message();
        let (kind, code) = self.openai_type_and_code();
        let param = match self {
            ServeError::Body(JsonRejection::JsonDataError(_)) => field_of(&message),
            ServeError::Field { param, .. } => Some(param.clone()),
            _ => None,
        };
        json!({ "error": { "message": message, "type": kind, "param": param, "code": code } })
    }

    /// The response in the body shape of `flavor`.
    pub(crate) fn into_response_as(self, flavor: Flavor) -> Response {
        let status = self.status();
        let body = match flavor {
            Flavor::Tei => json!({ "error": self.message(), "error_type": self.tei_type() }),
            Flavor::OpenAi => self.openai_body(),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Whether the body stopped arriving for longer than the body read timeout (tower-http's
/// `TimeoutError`, somewhere down the rejection's sources).
fn body_timed_out(rejection: &JsonRejection) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = source {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// The field a serde error names: axum reports `path: message` (serde_path_to_error) or
/// serde's ``missing field `name` ``.
fn field_of(message: &str) -> Option<String> {
    let detail = message.rsplit("target type: ").next()?;
    if let Some(rest) = detail.split("missing field `").nth(1) {
        return rest.split('`').next().map(str::to_string);
    }
    detail
        .split_once(": ")
        .map(|(path, _)| path.to_string())
        .filter(|path| !path.contains(' '))
}

/// An error of a TEI route (and of `POST /`, the Inference API's).
pub(crate) struct TeiError(pub(crate) ServeError);

/// An error of an OpenAI route.
pub(crate) struct OpenAiError(pub(crate) ServeError);

impl<E: Into<ServeError>> From<E> for TeiError {
    fn from(error: E) -> Self {
        TeiError(error.into())
    }
}

impl<E: Into<ServeError>> From<E> for OpenAiError {
    fn from(error: E) -> Self {
        OpenAiError(error.into())
    }
}

impl IntoResponse for TeiError {
    fn into_response(self) -> Response {
        self.0.into_response_as(Flavor::Tei)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        self.0.into_response_as(Flavor::OpenAi)
    }
}
