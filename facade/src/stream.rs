//! Following a job: its changes as the facade's watch delivers them, as a WebSocket or
//! as Server-Sent Events.
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
use kube::runtime::reflector::ObjectRef;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::auth::Tenant;
use crate::error::ApiError;
use crate::{Change, Facade, Jobs};
use kubesentiment_core::crd::SentimentBatch;
use kubesentiment_core::rest::{self, BatchJobStatus};

/// The job's status documents, each different from the one before (the latest, for a
/// follower that fell behind), ending with the first final one, or when the job is
/// deleted. Each is read from the facade's cache as
/// its watch delivers the job, so every follower shares that one watch (none opens its
/// own on the API server), and a client that reads status or results after the stream
/// ends sees what the stream told it. `first` is the job as the handler found it, for a
/// job the cache does not hold yet.
fn follow(jobs: &Jobs, key: ObjectRef<SentimentBatch>, first: Arc<SentimentBatch>) -> impl Stream<Item = BatchJobStatus> + Send + 'static {
    let follower = Follower { changes: jobs.changes(), jobs: jobs.clone(), key, first: Some(first), seen: false, last: None };
    futures_util::stream::unfold(Some(follower), |follower| async move {
        let mut follower = follower?;
        let doc = follower.next().await?;
        let ended = doc.status.is_final();
        Some((doc, (!ended).then_some(follower)))
    })
}

struct Follower {
    jobs: Jobs,
    changes: broadcast::Receiver<Change>,
    key: ObjectRef<SentimentBatch>,
    first: Option<Arc<SentimentBatch>>,
    /// Whether the cache has held the job: once it has, its absence means deleted.
    seen: bool,
    last: Option<BatchJobStatus>,
}

impl Follower {
    /// The job's next document that differs from the last; `None` once it is deleted.
    async fn next(&mut self) -> Option<BatchJobStatus> {
        loop {
            let job = match self.jobs.cached(&self.key) {
                Some(job) => {
                    self.seen = true;
                    Some(job)
                }
                None if self.seen => return None,
                None => self.jobs.get(&self.key).or_else(|| self.first.take()),
            };
            if let Some(doc) = job.map(|j| rest::status_of(&j)).filter(|d| self.last.as_ref() != Some(d)) {
                self.last = Some(doc.clone());
                return Some(doc);
            }
            // Until this job changes, or any may have (a relist, or this follower fell behind).
            loop {
                match self.changes.recv().await {
                    Ok(Some(k)) if k != self.key => continue,
                    Ok(_) | Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    }
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
    let job = f.job(&tenant, &id).await?;
    let upgrade = upgrade?;
    let docs = follow(&f.jobs, ObjectRef::new(&id).within(&tenant.namespace), job);
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
    let job = f.job(&tenant, &id).await?;
    let docs = follow(&f.jobs, ObjectRef::new(&id).within(&tenant.namespace), job);
    let events =
        docs.map(|doc| Ok::<_, Infallible>(Event::default().event("status").json_data(doc).expect("a status serializes. This is a bug.")));
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector, watcher};
    use kubesentiment_core::rest::JobState;

    fn job(status: serde_json::Value) -> SentimentBatch {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kubesentiment.io/v1alpha1", "kind": "SentimentBatch",
            "metadata": {"name": "j", "namespace": "ns", "uid": "u"}, "spec": {"texts": ["a", "b"]},
            "status": status,
        }))
        .unwrap()
    }

    /// What the facade's watch does with an event: its cache first, then the followers.
    fn deliver(writer: &mut reflector::store::Writer<SentimentBatch>, jobs: &Jobs, ev: watcher::Event<SentimentBatch>) {
        writer.apply_watcher_event(&ev);
        jobs.delivered(&ev);
    }

    async fn states(docs: impl Stream<Item = BatchJobStatus>, n: usize) -> Vec<(JobState, i64)> {
        docs.take(n).map(|d| (d.status, d.processed_texts)).collect().await
    }

    /// A follower starts from the job as the handler found it (the cache has not got it
    /// yet), then sends each change the watch delivers, once, and ends at the final one.
    /// (One that falls behind sends the latest state, not every one in between.)
    #[tokio::test]
    async fn a_follower_sends_each_change_its_cache_gets_and_ends_at_the_final_one() {
        let (reader, mut writer) = reflector::store::<SentimentBatch>();
        let jobs = Jobs::new([("ns".to_string(), reader)]);
        let pending = job(serde_json::json!({"totalTexts": 2}));
        let mut docs = Box::pin(follow(&jobs, ObjectRef::from(&pending), Arc::new(pending.clone())));
        assert_eq!(states(&mut docs, 1).await, [(JobState::Pending, 0)]);
        let running = job(serde_json::json!({"phase": "Running", "totalTexts": 2, "processedTexts": 1}));
        deliver(&mut writer, &jobs, watcher::Event::Apply(pending));
        deliver(&mut writer, &jobs, watcher::Event::Apply(running.clone()));
        assert_eq!(states(&mut docs, 1).await, [(JobState::Processing, 1)]);
        // The same document again, and another job's change, send nothing.
        deliver(&mut writer, &jobs, watcher::Event::Apply(running.clone()));
        let mut other = running.clone();
        other.metadata.name = Some("other".into());
        deliver(&mut writer, &jobs, watcher::Event::Apply(other));
        deliver(
            &mut writer,
            &jobs,
            watcher::Event::Apply(job(serde_json::json!({"phase": "Succeeded", "totalTexts": 2, "processedTexts": 2}))),
        );
        assert_eq!(states(docs, 10).await, [(JobState::Completed, 2)], "ends at the final one");
    }

    /// A job deleted while followed ends its stream, also when the deletion is known only
    /// from a relist (no event of its own).
    #[tokio::test]
    async fn a_follower_ends_when_its_job_is_deleted() {
        for relisted in [false, true] {
            let (reader, mut writer) = reflector::store::<SentimentBatch>();
            let jobs = Jobs::new([("ns".to_string(), reader)]);
            let running = job(serde_json::json!({"phase": "Running", "totalTexts": 2}));
            deliver(&mut writer, &jobs, watcher::Event::Apply(running.clone()));
            let mut docs = Box::pin(follow(&jobs, ObjectRef::from(&running), Arc::new(running.clone())));
            assert_eq!(states(&mut docs, 1).await, [(JobState::Processing, 0)]);
            if relisted {
                deliver(&mut writer, &jobs, watcher::Event::Init);
                deliver(&mut writer, &jobs, watcher::Event::InitDone);
            } else {
                deliver(&mut writer, &jobs, watcher::Event::Delete(running));
            }
            let rest = tokio::time::timeout(Duration::from_secs(5), states(docs, 10)).await.expect("the stream ends");
            assert_eq!(rest, [], "relisted: {relisted}");
        }
    }
}
