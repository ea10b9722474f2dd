//! The two ways into the stack: the REST facade, or SentimentBatch objects through the
//! Kubernetes API. Each submits a job, reports its states to the end, reads its results
//! and runs the synchronous baseline.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use futures_util::{SinkExt, StreamExt};
use kube::api::{DeleteParams, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use reqwest::StatusCode;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use inference_api::client::{HttpPredictor, PredictError, RoundRobin};
use kubesentiment_core::config::ObjectStores;
use kubesentiment_core::crd::{Priority, SentimentBatch};
use kubesentiment_core::jobs::{self, CreateError, NewJob, Origin};
use kubesentiment_core::names::BENCH_RUN_LABEL as RUN_LABEL;
use kubesentiment_core::rest::{BatchJobResponse, BatchJobStatus, JobState, ResultsPage};
use kubesentiment_core::status::total_texts;
use kubesentiment_core::store::Store;

/// Why a call did not succeed.
#[derive(Debug)]
pub enum Fail {
    /// 429 or 503: `kind` is the error code (`rate_limited`, `queue_full`, …).
    Busy {
        kind: String,
        retry_after: Duration,
    },
    Other(anyhow::Error),
}

impl Fail {
    /// A 429 or 503 of `kind`, to retry after the server's `Retry-After` (1 s if none).
    fn busy(kind: &str, retry_after: Option<Duration>) -> Self {
        Fail::Busy { kind: kind.into(), retry_after: retry_after.unwrap_or(Duration::from_secs(1)) }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail::Other(e.into())
    }
}

/// Timings a call hands back to the run.
pub trait Timings: Send + Sync {
    fn status(&self, took: Duration);
    fn results(&self, took: Duration);
    fn rejected(&self, endpoint: &str, kind: &str);
    /// The job was first seen out of `pending`.
    fn admitted(&self);
}

pub enum Target {
    Rest(Rest),
    Kube(Kube),
}

/// How a job ended, as far as the run could tell.
pub struct Outcome {
    pub state: JobState,
    pub results: usize,
    pub total: usize,
    /// How long the job was seen running.
    pub running: Duration,
}

impl Target {
    pub fn describe(&self) -> String {
        match self {
            Target::Rest(r) => r.base.clone(),
            Target::Kube(k) => format!("namespace {} (kubeconfig)", k.namespace),
        }
    }

    pub async fn submit(&self, texts: Vec<String>, priority: Priority) -> Result<String, Fail> {
        match self {
            Target::Rest(r) => r.submit(texts, priority).await,
            Target::Kube(k) => k.submit(texts, priority).await,
        }
    }

    /// Follows job `id` to its final state, then reads every result page.
    pub async fn finish(&self, id: &str, t: &dyn Timings) -> Result<Outcome, Fail> {
        match self {
            Target::Rest(r) => r.finish(id, t).await,
            Target::Kube(k) => k.finish(id, t).await,
        }
    }

    /// One synchronous prediction request: the facade's `/api/v1/predict`, or the next
    /// inference server in turn.
    pub async fn predict(&self, texts: &[String]) -> Result<(), Fail> {
        let got = match self {
            Target::Rest(r) => {
                let mut req = r.http.post(format!("{}/api/v1/predict", r.base)).json(&serde_json::json!({"texts": texts}));
                if let Some(key) = &r.key {
                    req = req.bearer_auth(key);
                }
                json::<inference_api::PredictResponse>(req.send().await?).await?.results.len()
            }
            Target::Kube(k) => {
                if k.inference.is_empty() {
                    return Err(anyhow!("--via kube needs --inference-url for the sync baseline").into());
                }
                match k.round_robin.predict(&k.predictor, &k.inference, texts).await {
                    Ok(results) => results.len(),
                    // Load shed or an endpoint failing for now: both are retried.
                    Err(PredictError::Busy { retry_after }) => return Err(Fail::busy("inference_busy", retry_after)),
                    Err(PredictError::Transient { retry_after, .. }) => return Err(Fail::busy("inference_unavailable", retry_after)),
                    Err(e) => return Err(anyhow!("sync predict: {e}").into()),
                }
            }
        };
        if got != texts.len() {
            return Err(anyhow!("sync predict answered {got} results for {} texts", texts.len()).into());
        }
        Ok(())
    }

    /// Cancels job `id` (at the end of a run that could not wait for it).
    pub async fn cancel(&self, id: &str) -> anyhow::Result<()> {
        match self {
            Target::Rest(r) => {
                let mut req = r.http.delete(format!("{}/api/v1/batch/jobs/{id}", r.base));
                if let Some(k) = &r.key {
                    req = req.bearer_auth(k);
                }
                req.send().await?;
            }
            Target::Kube(k) => {
                let patch = kube::api::Patch::Merge(serde_json::json!({"spec": {"cancel": true}}));
                Api::<SentimentBatch>::namespaced(k.client.clone(), &k.namespace).patch(id, &Default::default(), &patch).await?;
            }
        }
        Ok(())
    }

    /// Removes what the run created, where the target can, and waits (up to a minute)
    /// until the operator has let the batches go (its finalizer deletes their results).
    pub async fn clean_up(&self) -> anyhow::Result<()> {
        if let Target::Kube(k) = self {
            let lp = ListParams::default().labels(&format!("{RUN_LABEL}={}", k.run));
            let api = Api::<SentimentBatch>::namespaced(k.client.clone(), &k.namespace);
            api.delete_collection(&DeleteParams::background(), &lp).await?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !api.list_metadata(&lp).await?.items.is_empty() {
                if Instant::now() > deadline {
                    anyhow::bail!("the run's batches were still there a minute after their deletion");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}

/// The body of a 2xx answer, or the failure a non-2xx one stands for.
async fn json<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> Result<T, Fail> {
    let status = resp.status();
    if status == StatusCode::TOO_MANY_REQUESTS {
        let headers = resp.headers().clone();
        return Err(busy(&headers, &resp.bytes().await.unwrap_or_default()));
    }
    let text = resp.text().await?;
    if !status.is_success() {
        return Err(anyhow!("HTTP {status}: {}", text.chars().take(300).collect::<String>()).into());
    }
    Ok(serde_json::from_str(&text).with_context(|| format!("unexpected answer: {}", text.chars().take(300).collect::<String>()))?)
}

/// A 429 answer: its `Retry-After` and the facade's error code.
fn busy(headers: &reqwest::header::HeaderMap, body: &[u8]) -> Fail {
    let retry_after = headers.get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1);
    let body: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let kind = body["error"].as_str().unwrap_or("too_many_requests").to_string();
    Fail::Busy { kind, retry_after: Duration::from_secs(retry_after) }
}

/// Retries `call` after each 429, recording it against `endpoint`.
async fn patiently<T, F, Fut>(t: &dyn Timings, endpoint: &str, mut call: F) -> Result<T, Fail>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Fail>>,
{
    loop {
        match call().await {
            Err(Fail::Busy { kind, retry_after }) => {
                t.rejected(endpoint, &kind);
                tokio::time::sleep(retry_after.min(Duration::from_secs(5))).await;
            }
            other => return other,
        }
    }
}

/// How a REST client learns of progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Follow {
    /// `GET /api/v1/batch/status/{id}` every `--poll-interval` seconds.
    Poll,
    /// `GET /api/v1/batch/ws/{id}`: one WebSocket per job.
    Ws,
}

pub struct Rest {
    pub http: reqwest::Client,
    pub base: String,
    pub key: Option<String>,
    pub follow: Follow,
    pub poll_interval: Duration,
    pub page_size: usize,
}

impl Rest {
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.get(format!("{}{path}", self.base));
        match &self.key {
            Some(k) => req.bearer_auth(k),
            None => req,
        }
    }

    async fn submit(&self, texts: Vec<String>, priority: Priority) -> Result<String, Fail> {
        let mut req =
            self.http.post(format!("{}/api/v1/batch/predict", self.base)).json(&serde_json::json!({"texts": texts, "priority": priority}));
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let job: BatchJobResponse = json(req.send().await?).await?;
        Ok(job.job_id)
    }

    async fn connect(&self, id: &str) -> Result<WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>, Fail> {
        let url = format!("{}/api/v1/batch/ws/{id}", self.base.replacen("http", "ws", 1));
        let mut req = url.into_client_request()?;
        if let Some(k) = &self.key {
            req.headers_mut().insert("authorization", format!("Bearer {k}").parse()?);
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((socket, _)) => Ok(socket),
            Err(WsError::Http(resp)) if resp.status() == StatusCode::TOO_MANY_REQUESTS => {
                Err(busy(resp.headers(), resp.body().as_deref().unwrap_or_default()))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn finish(&self, id: &str, t: &dyn Timings) -> Result<Outcome, Fail> {
        let mut seen = Seen::default();
        let last = match self.follow {
            Follow::Poll => loop {
                let start = Instant::now();
                let doc: BatchJobStatus =
                    patiently(t, "status", || async { json(self.get(&format!("/api/v1/batch/status/{id}")).send().await?).await }).await?;
                t.status(start.elapsed());
                if seen.saw(doc.status, t) {
                    break doc;
                }
                tokio::time::sleep(self.poll_interval).await;
            },
            Follow::Ws => {
                let mut socket = patiently(t, "ws", || self.connect(id)).await?;
                let mut last = None;
                while let Some(msg) = socket.next().await {
                    match msg? {
                        Message::Text(text) => {
                            let doc: BatchJobStatus = serde_json::from_str(&text)?;
                            let done = seen.saw(doc.status, t);
                            last = Some(doc);
                            if done {
                                break;
                            }
                        }
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
                let _ = socket.close(None).await;
                let _ = socket.flush().await;
                last.filter(|d| d.status.is_final()).context("the WebSocket closed before the job was final")?
            }
        };
        let mut results = 0;
        for page in 1.. {
            let start = Instant::now();
            let path = format!("/api/v1/batch/results/{id}?page={page}&page_size={}", self.page_size);
            let got: ResultsPage = patiently(t, "results", || async { json(self.get(&path).send().await?).await }).await?;
            t.results(start.elapsed());
            results += got.results.iter().filter(|r| r.error.is_none()).count();
            if !got.has_more {
                break;
            }
        }
        Ok(Outcome { state: last.status, results, total: last.total_texts as usize, running: seen.running() })
    }
}

/// What following a job has seen so far.
#[derive(Default)]
struct Seen {
    running_since: Option<Instant>,
    ended: Option<Instant>,
}

impl Seen {
    /// Notes `state`; true once it is final.
    fn saw(&mut self, state: JobState, t: &dyn Timings) -> bool {
        if state != JobState::Pending && self.running_since.is_none() {
            self.running_since = Some(Instant::now());
            t.admitted();
        }
        if state.is_final() {
            self.ended = Some(Instant::now());
        }
        state.is_final()
    }

    fn running(&self) -> Duration {
        match (self.running_since, self.ended) {
            (Some(a), Some(b)) => b - a,
            _ => Duration::ZERO,
        }
    }
}

/// SentimentBatch objects, created as the facade creates them and followed through one
/// watch over all of the run's objects.
pub struct Kube {
    pub client: Client,
    pub namespace: String,
    pub run: String,
    /// Settings of the object store behind `s3://` results.
    pub stores: ObjectStores,
    pub inference: Vec<String>,
    pub page_size: usize,
    predictor: HttpPredictor,
    round_robin: RoundRobin,
    jobs: std::sync::Arc<Mutex<HashMap<String, watch::Sender<Option<SentimentBatch>>>>>,
}

fn channel(jobs: &Mutex<HashMap<String, watch::Sender<Option<SentimentBatch>>>>, name: &str) -> watch::Sender<Option<SentimentBatch>> {
    jobs.lock()
        .expect("the lock is never poisoned. This is a bug.")
        .entry(name.to_string())
        .or_insert_with(|| watch::channel(None).0)
        .clone()
}

impl Kube {
    /// Starts the watch; it ends with the runtime.
    pub fn new(client: Client, namespace: String, run: String, stores: ObjectStores, inference: Vec<String>, page_size: usize) -> Kube {
        let jobs: std::sync::Arc<Mutex<HashMap<_, watch::Sender<_>>>> = Default::default();
        let api = Api::<SentimentBatch>::namespaced(client.clone(), &namespace);
        let events = watcher(api, watcher::Config::default().labels(&format!("{RUN_LABEL}={run}"))).default_backoff().applied_objects();
        let sink = jobs.clone();
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(ev) = events.next().await {
                if let Ok(batch) = ev {
                    channel(&sink, &batch.name_any()).send_replace(Some(batch));
                }
            }
        });
        let predictor = HttpPredictor::new(Duration::from_secs(120));
        Kube { client, namespace, run, stores, inference, page_size, predictor, round_robin: RoundRobin::default(), jobs }
    }

    async fn submit(&self, texts: Vec<String>, priority: Priority) -> Result<String, Fail> {
        let origin = Origin {
            namespace: self.namespace.clone(),
            labels: BTreeMap::from([(RUN_LABEL.to_string(), self.run.clone())]),
            submitted_by: "bench",
            output: None,
            ttl_seconds_after_finished: None,
        };
        match jobs::create(&self.client, &origin, NewJob::texts(texts, priority)).await {
            Ok(batch) => Ok(batch.name_any()),
            Err(CreateError::Kube(kube::Error::Api(s))) if s.code == 429 => Err(Fail::busy("api_server_busy", None)),
            Err(e) => Err(Fail::Other(e.into())),
        }
    }

    async fn finish(&self, id: &str, t: &dyn Timings) -> Result<Outcome, Fail> {
        let mut rx = channel(&self.jobs, id).subscribe();
        let mut seen = Seen::default();
        let batch = loop {
            let current = rx.borrow_and_update().clone();
            if let Some(b) = current.filter(|b| seen.saw(JobState::of(b.phase()), t)) {
                break b;
            }
            rx.changed().await.map_err(|_| anyhow!("the watch of the run's jobs ended"))?;
        };
        let total = total_texts(&batch) as usize;
        let store = Store::for_batch(&self.client, &batch, &self.stores)?;
        let mut results = 0;
        for start in (0..total).step_by(self.page_size.max(1)) {
            let began = Instant::now();
            results +=
                store.read_range(start..(start + self.page_size).min(total)).await?.iter().filter(|l| l.prediction.is_some()).count();
            t.results(began.elapsed());
        }
        Ok(Outcome { state: JobState::of(batch.phase()), results, total, running: seen.running() })
    }
}
