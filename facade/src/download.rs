//! `GET /api/v1/batch/results/{job_id}/download`: a job's results as one JSONL file, in
//! input order, streamed a part at a time so that a job of any size costs the facade one
//! part's memory.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use kubesentiment_core::crd::Phase;
use kubesentiment_core::rest::ResultItem;
use kubesentiment_core::store::Store;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::Facade;
use crate::auth::Tenant;
use crate::error::ApiError;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DownloadQuery {
    /// Only the texts that failed (the failures list, with timeouts once a job expired).
    #[serde(default)]
    pub errors: bool,
}

/// Every result of a job as JSONL, one `ResultItem` a line, in input order: what the
/// pages hold, in one response. While the job runs, the lines computed so far.
#[utoipa::path(get, path = "/api/v1/batch/results/{job_id}/download", tag = "batch", params(("job_id" = String, Path), DownloadQuery),
    responses((status = 200, description = "JSONL: one ResultItem a line, in input order", content_type = "application/x-ndjson", body = String,
            headers(("Content-Disposition" = String, description = "attachment; filename=\"JOB_ID.jsonl\""))),
        (status = 401, body = inference_api::ErrorBody), (status = 404, body = inference_api::ErrorBody),
        (status = 422, body = inference_api::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn download(
    State(f): State<Arc<Facade>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
    query: Result<Query<DownloadQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let job = f.job(&tenant, &id).await?;
    let store = Store::for_batch(&f.client, &job, &f.stores)?;
    // Listed before the answer starts: a store that cannot be read is an error status,
    // not a body cut short.
    let parts = if job.phase() == Phase::Pending { Vec::new() } else { store.part_names().await? };
    let body = store.lines_in_order(parts).map_ok(move |lines| {
        let mut out = Vec::with_capacity(lines.len() * 128);
        for line in lines.into_iter().filter(|l| !q.errors || l.error.is_some()) {
            serde_json::to_writer(&mut out, &ResultItem::from(line)).expect("a result serializes. This is a bug.");
            out.push(b'\n');
        }
        Bytes::from(out)
    });
    // A store error mid-way ends the body early; the client sees an incomplete transfer.
    let body = Body::from_stream(body.map_err(|e| std::io::Error::other(e.to_string())));
    let disposition = format!("attachment; filename=\"{id}.jsonl\"");
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson".to_string()), (header::CONTENT_DISPOSITION, disposition)], body).into_response())
}
