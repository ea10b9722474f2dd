//! Following a job: a watch on its resource, as a WebSocket or as Server-Sent Events.
//! Both send the status document on connect, again whenever it changes, and last the
//! final state; then they close.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Extension, Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use kube::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};

use crate::Facade;
use crate::auth::Tenant;
use crate::error::ApiError;
use kubesentiment_core::crd::SentimentBatch;
use kubesentiment_core::rest::{self, BatchJobStatus, JobState};

/// The job's status documents, each different from the one before, ending with the
/// first final one. That one is held back until the facade's cache also has the job
/// final, so a client that reads status or results after the stream ends sees what the
/// stream told it.
fn follow(f: &Facade, tenant: &Tenant, id: &str) -> impl Stream<Item = BatchJobStatus> + Send + 'static {
    let api = Api::<SentimentBatch>::namespaced(f.client.clone(), &tenant.namespace);
    let (cache, key) = (f.jobs.clone(), ObjectRef::new(id).within(&tenant.namespace));
    let cfg = watcher::Config::default().fields(&format!("metadata.name={id}"));
    let docs = watcher(api, cfg).default_backoff().applied_objects().filter_map(|ev| async move { ev.ok().map(|b| rest::status_of(&b)) });
    let mut last: Option<BatchJobStatus> = None;
    let changed = docs.filter(move |doc| {
        let new = last.as_ref() != Some(doc);
        last = Some(doc.clone());
        async move { new }
    });
    // Pass the final document, then end at once (not on the next change, which never comes).
    futures_util::stream::unfold((changed.boxed(), false), move |(mut docs, ended)| {
        let (cache, key) = (cache.clone(), key.clone());
        async move {
            if ended {
                return None;
            }
            let doc = docs.next().await?;
            let ended = doc.status.is_final();
            if ended {
                let cached_final = || cache.get(&key).is_some_and(|j| JobState::of(j.phase()).is_final());
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    while !cached_final() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
                .await;
            }
            Some((doc, (docs, ended)))
        }
    })
}

/// A job's status over a WebSocket.
#[utoipa::path(get, path = "/api/v1/batch/ws/{job_id}", tag = "batch",
    params(("job_id" = String, Path),
        ("Connection" = String, Header, pattern = "^[Uu]pgrade$", description = "`Upgrade`, as for every WebSocket handshake"),
        ("Upgrade" = String, Header, pattern = "^websocket$", description = "`websocket`"),
        ("Sec-WebSocket-Version" = String, Header, pattern = "^13$", description = "`13`"),
        ("Sec-WebSocket-Key" = String, Header, pattern = "^[A-Za-z0-9+/]{22}==$", description = "16 random bytes in base64")),
    responses((status = 101, description = "WebSocket of BatchJobStatus documents, as text frames"),
        (status = 400, description = "not a WebSocket upgrade request", body = inference_api::ErrorBody),
        (status = 401, body = inference_api::ErrorBody), (status = 404, body = inference_api::ErrorBody),
        (status = 426, description = "the connection cannot be upgraded", body = inference_api::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn ws(
    State(f): State<Arc<Facade>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    f.job(&tenant, &id).await?;
    let upgrade = upgrade?;
    let docs = follow(&f, &tenant, &id);
    Ok(upgrade.on_upgrade(move |socket| send_all(socket, docs)).into_response())
}

async fn send_all(mut socket: WebSocket, docs: impl Stream<Item = BatchJobStatus>) {
    let mut docs = std::pin::pin!(docs);
    loop {
        tokio::select! {
            doc = docs.next() => match doc {
                Some(doc) => {
                    let text = serde_json::to_string(&doc).expect("a status serializes. This is a bug.");
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
            // The client hung up (or sent something we ignore).
            msg = socket.recv() => if matches!(msg, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) { return },
        }
    }
    let close = CloseFrame { code: close_code::NORMAL, reason: "job finished".into() };
    let _ = socket.send(Message::Close(Some(close))).await;
    // Wait briefly for the client's close, so the closing handshake completes.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// A job's status as Server-Sent Events (`event: status`).
#[utoipa::path(get, path = "/api/v1/batch/events/{job_id}", tag = "batch", params(("job_id" = String, Path)),
    responses((status = 200, description = "text/event-stream of `status` events, each a BatchJobStatus", content_type = "text/event-stream"),
        (status = 404, body = inference_api::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn sse(State(f): State<Arc<Facade>>, Extension(tenant): Extension<Tenant>, Path(id): Path<String>) -> Result<Response, ApiError> {
    f.job(&tenant, &id).await?;
    let docs = follow(&f, &tenant, &id);
    let events =
        docs.map(|doc| Ok::<_, Infallible>(Event::default().event("status").json_data(doc).expect("a status serializes. This is a bug.")));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}
