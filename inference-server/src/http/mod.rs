//! The HTTP face of the server (axum). Handlers validate at the edge and hand texts to
//! [`Infer`]; they never touch the model.
//!
//! - `POST /v1/predict`, `GET /v1/model`
//! - `GET /health/live`, `GET /health/ready` (ready once every session is warm)
//! - `GET /metrics`

pub mod error;
pub mod predict;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use inference_api::ModelInfo;
use tokio::net::TcpListener;
use tower_http::timeout::TimeoutLayer;

use crate::infer::{BatcherConfig, Infer, Workers};
use crate::metrics::Metrics;
use crate::model::{Model, ModelError};
pub use predict::RequestLimits;

pub struct AppState {
    pub infer: Infer,
    pub info: ModelInfo,
    pub limits: RequestLimits,
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
}

/// Starts the batcher and inference threads for `model` and builds the router over them.
/// Must be called inside a Tokio runtime. Once the router is dropped, `Workers::join`
/// returns when the last batch is done.
pub fn app(
    model: &Model,
    batcher: &BatcherConfig,
    limits: RequestLimits,
    request_timeout: Duration,
) -> Result<(Router, Workers), ModelError> {
    let metrics = Arc::new(Metrics::new());
    let (infer, workers) = Infer::start(model, batcher, metrics.clone())?;
    let state = Arc::new(AppState { infer, info: model_info(model), limits, metrics, ready: workers.ready() });
    Ok((router(state, request_timeout), workers))
}

pub fn router(state: Arc<AppState>, request_timeout: Duration) -> Router {
    let body_limit = state.limits.max_body_bytes;
    Router::new()
        .route("/v1/predict", post(predict::predict))
        .route("/v1/model", get(|State(s): State<Arc<AppState>>| async move { Json(s.info.clone()) }))
        .route("/health/live", get(|| async { "ok" }))
        .route("/health/ready", get(ready))
        .route("/metrics", get(|State(s): State<Arc<AppState>>| async move { s.metrics.render() }))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(StatusCode::GATEWAY_TIMEOUT, request_timeout))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

async fn ready(State(s): State<Arc<AppState>>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        "ready".into_response()
    } else {
        error::ApiError::Unavailable("warming up".into()).into_response()
    }
}

/// Request metrics, labelled by the matched route, never the raw URI.
async fn track(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = req.method().to_string();
    let start = Instant::now();
    s.metrics.in_flight.inc();
    let response = next.run(req).await;
    s.metrics.in_flight.dec();
    let status = response.status();
    s.metrics.http_duration.with_label_values(&[&method, &path]).observe(start.elapsed().as_secs_f64());
    s.metrics.http_requests.with_label_values(&[&method, &path, status.as_str()]).inc();
    if status.is_client_error() || status.is_server_error() {
        s.metrics.errors.with_label_values(&[status.as_str()]).inc();
    }
    response
}

/// What `GET /v1/model` says of a loaded model.
pub fn model_info(model: &Model) -> ModelInfo {
    ModelInfo {
        name: model.name.clone(),
        labels: model.labels().to_vec(),
        max_length: model.max_length(),
        revision: model.revision.clone(),
        backend: "onnxruntime".into(),
    }
}

/// Serves until `shutdown` resolves, then stops accepting and finishes what is in flight.
pub async fn serve(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
