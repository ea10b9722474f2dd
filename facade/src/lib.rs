//! The REST facade: the brief's batch API for clients outside Kubernetes.
//!
//! Every job is a `SentimentBatch`; the facade keeps no job state of its own, so its
//! replicas are interchangeable and `kubectl` and REST show the same jobs. It reads
//! through a watch cache of the resources and writes with create and patch.
//!
//! # Layout
//! - [`input`]: request bodies parsed into valid submissions, or errors naming the field.
//! - [`jobs`]: the job routes and the synchronous `/api/v1/predict`.
//! - [`stream`]: WebSocket and Server-Sent Events, from a watch on one job.
//! - [`download`]: a job's results as one JSONL file, streamed a part at a time.
//! - [`files`]: uploads of texts, streamed into the object store.
//! - [`auth`]: API keys → tenants (namespace and label), rate limits.
//! - [`error`]: the one error type and its status map.
//! - [`metrics`]: request count and latency by route template.
//!
//! The response documents are `kubesentiment_core::rest`, shared with the bench.

pub mod auth;
pub mod download;
pub mod error;
pub mod files;
pub mod input;
pub mod jobs;
pub mod metrics;
pub mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use kube::Client;
use kube::runtime::{reflector, watcher};
use tokio::sync::watch;
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_swagger_ui::SwaggerUi;

use inference_api::client::{HttpPredictor, RoundRobin};
use kubesentiment_core::config::{AsyncBatch, ObjectStores};
use kubesentiment_core::crd::SentimentBatch;
use kubesentiment_core::endpoints::Endpoints;

use self::auth::Gate;
use self::input::Limits;
use self::metrics::HttpMetrics;

/// Everything the routes share.
pub struct Facade {
    pub client: Client,
    /// The watch caches of every job in the tenants' namespaces.
    pub jobs: Jobs,
    pub cfg: AsyncBatch,
    pub limits: Limits,
    pub max_page_size: usize,
    /// The S3 buckets an `input_url` may name.
    pub input_buckets: Vec<String>,
    /// Where uploads go (each tenant under its own prefix); `None`: no uploads.
    pub files_bucket: Option<String>,
    pub max_upload_bytes: u64,
    /// `spec.output` of jobs submitted here; `None` keeps results in ConfigMaps.
    pub output: Option<String>,
    /// `spec.ttlSecondsAfterFinished` of jobs submitted here; `None` keeps them.
    pub job_ttl_seconds: Option<i32>,
    /// Settings of the object store behind `s3://` results.
    pub stores: ObjectStores,
    pub endpoints: watch::Receiver<Endpoints>,
    /// The synchronous predict's client, and its turn among the endpoints.
    pub predictor: HttpPredictor,
    pub round_robin: RoundRobin,
    /// The last non-zero throughput seen, as f64 bits.
    pub last_tps: AtomicU64,
    pub metrics: HttpMetrics,
    /// The job cache and the endpoint list both hold their first full list.
    pub ready: AtomicBool,
    /// The tenants' callback signing Secrets known to exist (`namespace/name`).
    pub signing_secrets: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// The watch caches of jobs, one per namespace the tenants use: a namespaced watch needs
/// only a Role in that namespace, where one watch over every namespace would need a
/// ClusterRole. Jobs this replica created that its watch has not delivered yet are kept
/// aside for a while, so that the status poll right after a submit is answered here
/// rather than by a GET to the API server (which, under load, was the slow tail of
/// status: #17). What the watches deliver is also told to the jobs' followers
/// (WebSocket and SSE), which read each change from here rather than each opening a
/// watch of its own on the API server.
#[derive(Clone)]
pub struct Jobs {
    caches: Arc<std::collections::BTreeMap<String, reflector::Store<SentimentBatch>>>,
    created: Arc<std::sync::Mutex<Created>>,
    changes: tokio::sync::broadcast::Sender<Change>,
}

/// A job the watches delivered anew (applied or deleted), or `None`: any job may have
/// changed (a watch listed afresh, and a deletion in between has no event of its own).
pub type Change = Option<reflector::ObjectRef<SentimentBatch>>;

/// Changes a follower may fall behind by before it is told to read its job afresh.
const CHANGES_BUFFERED: usize = 4096;

/// Jobs created here that the watch has not delivered yet, with when each was created.
type Created = std::collections::HashMap<reflector::ObjectRef<SentimentBatch>, (Instant, Arc<SentimentBatch>)>;

/// How long a job this replica created is kept aside for its watch to deliver it.
const CREATED_KEPT: Duration = Duration::from_secs(10);

impl Jobs {
    pub fn new(caches: impl IntoIterator<Item = (String, reflector::Store<SentimentBatch>)>) -> Jobs {
        Jobs {
            caches: Arc::new(caches.into_iter().collect()),
            created: Arc::default(),
            changes: tokio::sync::broadcast::channel(CHANGES_BUFFERED).0,
        }
    }

    /// Tells the followers what a watch delivered, once its cache holds it.
    pub fn delivered(&self, event: &watcher::Event<SentimentBatch>) {
        let change = match event {
            watcher::Event::Apply(job) | watcher::Event::Delete(job) | watcher::Event::InitApply(job) => {
                Some(reflector::ObjectRef::from(job))
            }
            watcher::Event::InitDone => None,
            watcher::Event::Init => return,
        };
        // No follower: nothing to tell.
        let _ = self.changes.send(change);
    }

    /// The changes from now on.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    pub fn get(&self, key: &reflector::ObjectRef<SentimentBatch>) -> Option<Arc<SentimentBatch>> {
        let cached = self.cached(key);
        let mut created = self.created.lock().expect("the lock is never poisoned. This is a bug.");
        match cached {
            // Delivered: from now on the watch alone says what became of it (deleted too).
            Some(job) => {
                created.remove(key);
                Some(job)
            }
            None => created.get(key).filter(|(at, _)| at.elapsed() < CREATED_KEPT).map(|(_, job)| job.clone()),
        }
    }

    /// The job as its watch delivered it, if it has.
    pub fn cached(&self, key: &reflector::ObjectRef<SentimentBatch>) -> Option<Arc<SentimentBatch>> {
        self.caches.get(key.namespace.as_deref()?)?.get(key)
    }

    /// Keeps `job`, just created here, until the watch delivers it (without its texts, as
    /// the watch caches keep jobs), for at most `CREATED_KEPT`.
    pub fn created(&self, mut job: SentimentBatch) {
        kubesentiment_core::status::strip_texts(&mut job);
        let key = reflector::ObjectRef::from(&job);
        let mut created = self.created.lock().expect("the lock is never poisoned. This is a bug.");
        created.retain(|_, (at, _)| at.elapsed() < CREATED_KEPT);
        created.insert(key, (Instant::now(), Arc::new(job)));
    }

    /// Every cached job of `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<SentimentBatch>> {
        self.caches.get(namespace).map(|c| c.state()).unwrap_or_default()
    }

    /// Every cached job.
    pub fn state(&self) -> Vec<Arc<SentimentBatch>> {
        self.caches.values().flat_map(|c| c.state()).collect()
    }

    /// Whether every cache holds its first full list (false if one's writer went away).
    pub async fn wait_until_ready(&self) -> bool {
        for cache in self.caches.values() {
            if cache.wait_until_ready().await.is_err() {
                return false;
            }
        }
        true
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "KubeSentiment batch API", description = "Asynchronous batch sentiment analysis; every job is a SentimentBatch resource."),
    paths(jobs::submit, jobs::status, jobs::results, jobs::list, jobs::cancel, jobs::queue, jobs::metrics, jobs::predict, stream::ws, stream::sse, download::download, files::upload, files::delete),
    modifiers(&Security),
    tags((name = "batch", description = "Batch jobs"), (name = "predict", description = "Synchronous prediction"))
)]
pub struct ApiDoc;

/// The OpenAPI document with this server's configured limits in place of the defaults
/// that the types declare, so that every request the document allows is one the server
/// accepts.
/// Served as JSON, not as utoipa's types, which cannot hold `oneOf` beside `properties`.
pub fn api_doc(limits: &Limits) -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes. This is a bug.");
    let schemas = &mut doc["components"]["schemas"];
    schemas["Text"]["maxLength"] = limits.max_text_length.min(kubesentiment_core::crd::MAX_TEXT_CHARS).into();
    for body in ["BatchRequest", "PredictRequest"] {
        schemas[body]["properties"]["texts"]["maxItems"] = limits.max_texts.into();
    }
    schemas["BatchRequest"]["properties"]["timeout_seconds"]["maximum"] = limits.max_timeout_seconds.min(input::MAX_TIMEOUT_SECONDS).into();
    // Exactly one of the two, which utoipa cannot say.
    schemas["BatchRequest"]["oneOf"] = serde_json::json!([{"required": ["texts"]}, {"required": ["input_url"]}]);
    // The gate in front of every /api route answers 429 for a key over its rate.
    let limited = serde_json::json!({
        "description": "over the API key's rate limit or the concurrent-users limit",
        "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    });
    for (path, item) in doc["paths"].as_object_mut().into_iter().flatten() {
        for op in item.as_object_mut().into_iter().flat_map(|m| m.values_mut()).filter(|_| path.starts_with("/api/")) {
            if let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut()) {
                responses.insert("429".into(), limited.clone());
            }
        }
    }
    doc
}

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
        components.add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))));
    }
}

/// The whole HTTP surface.
pub fn router(facade: Arc<Facade>, gate: Arc<Gate>, max_body_bytes: usize) -> Router {
    let api = Router::new()
        .route("/api/v1/batch/predict", post(jobs::submit))
        .route("/api/v1/batch/status/{job_id}", get(jobs::status))
        .route("/api/v1/batch/results/{job_id}", get(jobs::results))
        .route("/api/v1/batch/results/{job_id}/download", get(download::download))
        .route("/api/v1/batch/jobs", get(jobs::list))
        .route("/api/v1/batch/jobs/{job_id}", delete(jobs::cancel))
        .route("/api/v1/batch/queue/status", get(jobs::queue))
        .route("/api/v1/batch/metrics", get(jobs::metrics))
        .route("/api/v1/batch/ws/{job_id}", get(stream::ws))
        .route("/api/v1/batch/events/{job_id}", get(stream::sse))
        .route("/api/v1/predict", post(jobs::predict))
        .route("/api/v1/files", post(files::upload).layer(DefaultBodyLimit::disable()))
        .route("/api/v1/files/{file_id}", delete(files::delete))
        .layer(middleware::from_fn_with_state(gate, auth::gate))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(TimeoutLayer::with_status_code(StatusCode::GATEWAY_TIMEOUT, Duration::from_secs(30)));
    Router::new()
        .merge(api)
        .route("/metrics", get(|State(f): State<Arc<Facade>>| async move { f.metrics.render() }))
        .route("/health/live", get(|| async { "ok" }))
        .route("/health/ready", get(ready))
        .merge(SwaggerUi::new("/docs").external_url_unchecked("/openapi.json", api_doc(&facade.limits)))
        .fallback(|| async { error::ApiError::NotFound("no such route".into()) })
        .layer(middleware::from_fn_with_state(facade.clone(), record))
        .with_state(facade)
}

async fn ready(State(f): State<Arc<Facade>>) -> Response {
    if f.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": "unavailable", "message": "not yet synced with the API server"})),
        )
            .into_response()
    }
}

/// Request count and latency by route template (never the raw URI).
async fn record(State(f): State<Arc<Facade>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();
    let method = req.method().to_string();
    let t = Instant::now();
    let resp = next.run(req).await;
    f.metrics.observe(&method, &route, resp.status().as_u16(), t.elapsed());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job created here is found before its watch delivers it; once delivered, the
    /// watch alone answers, so a deleted job is gone (not "pending" from the aside copy).
    #[test]
    fn a_created_job_is_found_until_its_watch_has_it() {
        let (reader, mut writer) = reflector::store::<SentimentBatch>();
        let jobs = Jobs::new([("ns".to_string(), reader)]);
        let job: SentimentBatch = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubesentiment.io/v1alpha1", "kind": "SentimentBatch",
            "metadata": {"name": "j", "namespace": "ns", "uid": "u"}, "spec": {"texts": ["a", "b"]},
        }))
        .unwrap();
        let key = reflector::ObjectRef::from(&job);
        assert!(jobs.get(&key).is_none());
        jobs.created(job.clone());
        let aside = jobs.get(&key).expect("kept aside");
        assert!(aside.spec.texts.is_none(), "without its texts, as the watch caches keep jobs");
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(job.clone()));
        assert!(jobs.get(&key).is_some());
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Delete(job));
        assert!(jobs.get(&key).is_none(), "deleted after its watch had it");
    }

    /// The served document carries the configured limits, not the types' defaults.
    #[test]
    fn the_document_states_the_configured_limits() {
        let limits = Limits { max_texts: 7, max_text_length: 30, max_timeout_seconds: 3600 };
        let doc = api_doc(&limits);
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["Text"]["maxLength"], 30);
        assert_eq!(schemas["BatchRequest"]["properties"]["texts"]["maxItems"], 7);
        assert_eq!(schemas["PredictRequest"]["properties"]["texts"]["maxItems"], 7);
        assert_eq!(schemas["BatchRequest"]["properties"]["timeout_seconds"]["maximum"], 3600);
        assert_eq!(schemas["BatchRequest"]["oneOf"][1]["required"][0], "input_url");
        let huge = Limits { max_texts: 7, max_text_length: 1 << 20, max_timeout_seconds: u64::MAX };
        let doc = api_doc(&huge);
        assert_eq!(doc["components"]["schemas"]["Text"]["maxLength"], 10_000);
        assert_eq!(doc["components"]["schemas"]["BatchRequest"]["properties"]["timeout_seconds"]["maximum"], 604_800);
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                assert!(op["responses"].get("429").is_some(), "{method} {path} does not document 429");
            }
        }
    }
}
