//! The operator's own small HTTP server: `/metrics`, `/health/live` and `/health/ready`.
//! Ready means this replica reached the API server and found the CRD; a standby replica
//! (not the leader) is ready too, so a rollout does not wait on the lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

pub struct Health {
    pub metrics: Metrics,
    pub ready: AtomicBool,
    pub leader: AtomicBool,
}

pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(|State(h): State<Arc<Health>>| async move { h.metrics.render() }))
        .route("/health/live", get(|| async { "ok" }))
        .route(
            "/health/ready",
            get(|State(h): State<Arc<Health>>| async move {
                let role = if h.leader.load(Ordering::Relaxed) { "leader" } else { "standby" };
                if h.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, role).into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response()
                }
            }),
        )
        .with_state(health)
}
