//! The one error type of the REST facade and its one status map. Every error answers
//! with the same JSON shape, [`ErrorBody`]; 5xx bodies say only that something failed
//! on our side, and the cause is logged here, once.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use inference_api::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not JSON at all.
    #[error("{0}")]
    Malformed(String),
    /// 401: no API key, or one we do not know.
    #[error("a valid API key is required (Authorization: Bearer KEY or X-API-Key: KEY)")]
    Unauthorized,
    /// 403: a location the request names that this key may not read (an `input_url`).
    #[error("{message}")]
    Forbidden { field: String, message: String },
    /// 404: no such job, or not one this key may see.
    #[error("{0}")]
    NotFound(String),
    /// 409: the transition is not allowed from the job's state.
    #[error("{0}")]
    Conflict(String),
    /// 400 or 426: a WebSocket route asked without a valid WebSocket upgrade.
    #[error("{message}")]
    NotWebSocket { status: StatusCode, message: String },
    /// 413: more than the configured size.
    #[error("{message}")]
    TooLarge { field: Option<String>, message: String },
    /// 415: an upload of a content type the route does not take.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: a field holds a bad value.
    #[error("{message}")]
    Invalid { field: String, message: String },
    /// 429: over the key's rate, too many requests at once, or the priority's queue is full.
    #[error("{message}")]
    Busy { code: &'static str, message: String, retry_after: Duration },
    /// 503: no inference endpoint, or the API server is unreachable.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a failure on our side; the cause is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn no_job(id: &str) -> Self {
        ApiError::NotFound(format!("no job {id:?}"))
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid { field: field.into(), message: message.into() }
    }

    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Malformed(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::NotWebSocket { status, .. } => (*status, "websocket_required"),
            ApiError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "validation_error"),
            ApiError::Busy { code, .. } => (StatusCode::TOO_MANY_REQUESTS, code),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<axum::extract::ws::rejection::WebSocketUpgradeRejection> for ApiError {
    fn from(e: axum::extract::ws::rejection::WebSocketUpgradeRejection) -> Self {
        // The route takes only GET, so this is a 400 or a 426.
        ApiError::NotWebSocket { status: e.status(), message: format!("a WebSocket upgrade is required: {}", e.body_text()) }
    }
}

impl From<kube::Error> for ApiError {
    fn from(e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(s) if s.code == 422 => ApiError::invalid("spec", s.message.clone()),
            kube::Error::Api(s) if s.code == 429 => {
                ApiError::Busy { code: "api_server_busy", message: s.message.clone(), retry_after: Duration::from_secs(1) }
            }
            kube::Error::Api(_) => ApiError::Internal(e.to_string()),
            _ => ApiError::Unavailable("the Kubernetes API server is unreachable".into()),
        }
    }
}

impl From<kubesentiment_core::store::StoreError> for ApiError {
    fn from(e: kubesentiment_core::store::StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<kubesentiment_core::jobs::CreateError> for ApiError {
    fn from(e: kubesentiment_core::jobs::CreateError) -> Self {
        match e {
            kubesentiment_core::jobs::CreateError::TooLarge { .. } => {
                ApiError::TooLarge { field: Some("texts".into()), message: e.to_string() }
            }
            kubesentiment_core::jobs::CreateError::Kube(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        let (message, field) = match &self {
            ApiError::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                ("internal error; see the facade's log".to_string(), None)
            }
            ApiError::Invalid { field, .. } | ApiError::Forbidden { field, .. } => (self.to_string(), Some(field.clone())),
            ApiError::TooLarge { field, .. } => (self.to_string(), field.clone()),
            _ => (self.to_string(), None),
        };
        let mut resp = (status, axum::Json(ErrorBody { error: code.into(), message, field })).into_response();
        if let ApiError::Busy { retry_after, .. } = &self {
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
