//! The one place HTTP errors are mapped to status codes and JSON bodies.
//! 5xx bodies hide internals; the detail goes to the log.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use inference_api::ErrorBody;

use crate::infer::InferError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 422: a well-formed request with a bad value.
    #[error("{message}")]
    Validation { field: Option<String>, message: String },
    /// 422: the model failed on this text (alone, when retried by itself).
    #[error("{message}")]
    TextFailed { field: String, message: String },
    /// 413: more than the server takes at once.
    #[error("{message}")]
    TooLarge { field: Option<String>, message: String },
    /// 400: not JSON at all.
    #[error("{0}")]
    Malformed(String),
    /// 429: the queue is full.
    #[error("the inference queue is full; retry shortly")]
    Overloaded,
    /// 503: not ready or shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// 500: something broke inside.
    #[error(transparent)]
    Internal(anyhow::Error),
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation { field: Some(field.into()), message: message.into() }
    }

    pub fn too_large(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::TooLarge { field: Some(field.into()), message: message.into() }
    }

    /// The status code and the stable `error` code of the body.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Validation { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"),
            ApiError::TextFailed { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "inference_failed"),
            ApiError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::Malformed(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "queue_full"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }

    /// The request field at fault, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            ApiError::Validation { field, .. } | ApiError::TooLarge { field, .. } => field.as_deref(),
            ApiError::TextFailed { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        match e {
            InferError::QueueFull => ApiError::Overloaded,
            InferError::TooLong { index, .. } => ApiError::validation(format!("texts[{index}]"), e.to_string()),
            InferError::ShuttingDown => ApiError::Unavailable(e.to_string()),
            InferError::Failed { index, error } => {
                tracing::warn!(%error, index, "the model failed on one text");
                ApiError::TextFailed { field: format!("texts[{index}]"), message: "the model failed on this text".into() }
            }
            InferError::Model(m) => ApiError::Internal(m.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        let field = self.field().map(String::from);
        let message = match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = ?e, "internal error");
                "internal error; see the server log".to_string()
            }
            other => other.to_string(),
        };
        let mut response = (status, Json(ErrorBody { error: code.to_string(), message, field })).into_response();
        if matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
