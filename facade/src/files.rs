//! `POST /api/v1/files`: a file of texts (JSONL with `text` and an optional `id`, or one
//! text per line) streamed into the configured bucket under the caller's own prefix, at
//! any size up to the configured limit. A job reads it by the `input_url` the answer gives.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use futures_util::StreamExt;
use object_store::{ObjectStoreExt, WriteMultipart};
use serde::Serialize;
use utoipa::ToSchema;

use crate::Facade;
use crate::auth::Tenant;
use crate::error::ApiError;

/// The content types an upload may declare.
const FILE_TYPES: [&str; 3] = ["application/x-ndjson", "application/jsonl", "text/plain"];

/// Bytes per part of the multipart upload (S3's minimum is 5 MiB).
const PART_BYTES: usize = 8 << 20;

/// An uploaded file.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileObject {
    /// `file-` and a UUID.
    pub file_id: String,
    /// What to pass as `input_url` on submit.
    pub input_url: String,
    pub bytes: u64,
    /// Epoch seconds.
    pub created_at: f64,
}

/// The prefix of a tenant's uploads in the files bucket: its key's id, or its namespace.
pub fn prefix(tenant: &Tenant) -> String {
    match &tenant.label {
        Some(key_id) => format!("files/key-{key_id}/"),
        None => format!("files/ns-{}/", tenant.namespace),
    }
}

/// The 503 of a failed object-store request while `doing` something; the error itself
/// goes to the log only.
fn unreachable(doing: &'static str) -> impl Fn(object_store::Error) -> ApiError + Copy {
    move |e| {
        tracing::warn!(error = %e, "{doing} failed");
        ApiError::Unavailable("the object store is unreachable".into())
    }
}

/// Upload a file of texts, streamed; answers where it is.
#[utoipa::path(post, path = "/api/v1/files", tag = "batch",
    request_body(content((String = "application/x-ndjson"), (String = "text/plain")),
        description = "JSONL (`{\"text\": …, \"id\": …}` a line) or one text per line"),
    responses((status = 201, body = FileObject), (status = 401, body = inference_api::ErrorBody),
        (status = 403, body = inference_api::ErrorBody, description = "uploads are not enabled on this server"),
        (status = 413, body = inference_api::ErrorBody), (status = 415, body = inference_api::ErrorBody),
        (status = 400, body = inference_api::ErrorBody, description = "the upload was cut off"),
        (status = 503, body = inference_api::ErrorBody, description = "the object store is unreachable")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn upload(
    State(f): State<Arc<Facade>>,
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<FileObject>), ApiError> {
    let kind = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = kind.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if !FILE_TYPES.contains(&essence.as_str()) {
        return Err(ApiError::UnsupportedMediaType(format!("Content-Type {kind:?}; upload one of {}", FILE_TYPES.join(", "))));
    }
    let Some(bucket) = &f.files_bucket else {
        return Err(ApiError::Forbidden { field: "body".into(), message: "uploads are not enabled on this server".into() });
    };
    let unreachable = unreachable("an upload");
    let store = f.stores.s3().with_bucket_name(bucket).build().map_err(unreachable)?;
    let id = uuid::Uuid::new_v4();
    let key = format!("{}{id}.jsonl", prefix(&tenant));
    let mut file = WriteMultipart::new_with_chunk_size(store.put_multipart(&key.as_str().into()).await.map_err(unreachable)?, PART_BYTES);
    let mut bytes = 0u64;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let refused = match chunk {
            Err(e) => Some(ApiError::Malformed(format!("the upload was cut off: {e}"))),
            Ok(chunk) => {
                bytes += chunk.len() as u64;
                if bytes > f.max_upload_bytes {
                    Some(ApiError::TooLarge { field: None, message: format!("the file is over the {}-byte limit", f.max_upload_bytes) })
                } else {
                    file.wait_for_capacity(2).await.map_err(unreachable)?;
                    file.put(chunk);
                    None
                }
            }
        };
        if let Some(e) = refused {
            file.abort().await.ok();
            return Err(e);
        }
    }
    file.finish().await.map_err(unreachable)?;
    let created_at = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
    let answer = FileObject { file_id: format!("file-{id}"), input_url: format!("s3://{bucket}/{key}"), bytes, created_at };
    Ok((StatusCode::CREATED, Json(answer)))
}

/// The answer to a delete.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileDeleted {
    pub file_id: String,
    pub deleted: bool,
}

/// Delete an uploaded file of yours. A job still reading it fails with `SourceChanged`, so
/// delete a file once its jobs have ended.
#[utoipa::path(delete, path = "/api/v1/files/{file_id}", tag = "batch", params(("file_id" = String, Path)),
    responses((status = 200, body = FileDeleted), (status = 401, body = inference_api::ErrorBody),
        (status = 404, body = inference_api::ErrorBody, description = "no such file of yours"),
        (status = 503, body = inference_api::ErrorBody, description = "the object store is unreachable")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn delete(
    State(f): State<Arc<Facade>>,
    Extension(tenant): Extension<Tenant>,
    axum::extract::Path(file_id): axum::extract::Path<String>,
) -> Result<Json<FileDeleted>, ApiError> {
    let missing = || ApiError::NotFound(format!("no file {file_id}"));
    let id = file_id.strip_prefix("file-").and_then(|u| uuid::Uuid::try_parse(u).ok()).ok_or_else(missing)?;
    let bucket = f.files_bucket.as_ref().ok_or_else(missing)?;
    let unreachable = unreachable("deleting an upload");
    let store = f.stores.s3().with_bucket_name(bucket).build().map_err(unreachable)?;
    // The canonical spelling of the id: another spelling names the same file.
    let key: object_store::path::Path = format!("{}{}.jsonl", prefix(&tenant), id.hyphenated()).as_str().into();
    match store.head(&key).await {
        Ok(_) => {}
        Err(object_store::Error::NotFound { .. }) => return Err(missing()),
        Err(e) => return Err(unreachable(e)),
    }
    store.delete(&key).await.map_err(unreachable)?;
    Ok(Json(FileDeleted { file_id: format!("file-{}", id.hyphenated()), deleted: true }))
}
