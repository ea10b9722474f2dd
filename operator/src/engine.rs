//! The engine: one task that owns the [`Scheduler`], the endpoints' state and the running
//! jobs, fed by a bounded command channel.
//!
//! Whenever an endpoint has room it takes the next chunk and spawns a request for it. A
//! chunk task answers from the result cache where it can, asks the endpoint for the
//! rest, writes the chunk's part to the results store and only then reports back, so a
//! chunk counts as done exactly when its results are durable. Failures come back as
//! [`Outcome`]s and the engine decides: try another endpoint, back off, split the chunk
//! to isolate a failing text, or give the text up with its error.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use inference_api::{ErrorBody, PredictRequest, PredictResponse, PredictionResult};
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::AsyncBatch;
use crate::crd::{FailureSample, Priority, SentimentBatch};
use crate::metrics::Metrics;
use crate::scheduler::{Chunk, JobId, Limits, QueueFull, Scheduler};
use crate::source::Item;
use crate::store::{Part, ResultLine, Store};

/// How long a chunk should take on one endpoint; chunk sizes adapt toward it.
const TARGET_CHUNK_SECONDS: f64 = 1.0;
const MIN_CHUNK: usize = 8;
const FIRST_CHUNK: usize = 64;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Failure samples kept in a batch's status.
const SAMPLES: usize = 5;

/// What a batch's committed results add up to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    pub ok: usize,
    pub failed: usize,
    pub labels: BTreeMap<String, i64>,
    pub confidence_sum: f64,
    pub samples: Vec<FailureSample>,
}

impl Tally {
    pub fn add(&mut self, line: &ResultLine) {
        match (&line.prediction, &line.error) {
            (Some(p), None) => {
                self.ok += 1;
                *self.labels.entry(p.label.clone()).or_default() += 1;
                self.confidence_sum += f64::from(p.score);
            }
            (_, error) => {
                self.failed += 1;
                if self.samples.len() < SAMPLES {
                    self.samples.push(FailureSample { index: line.index as i64, error: error.clone().unwrap_or_default() });
                }
            }
        }
    }

    pub fn of<'a>(lines: impl IntoIterator<Item = &'a ResultLine>) -> Self {
        let mut t = Tally::default();
        lines.into_iter().for_each(|l| t.add(l));
        t
    }

    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        for (k, v) in other.labels {
            *self.labels.entry(k).or_default() += v;
        }
        self.confidence_sum += other.confidence_sum;
        let room = SAMPLES.saturating_sub(self.samples.len());
        self.samples.extend(other.samples.into_iter().take(room));
    }

    pub fn done(&self) -> usize {
        self.ok + self.failed
    }
}

/// A batch ready to run: its texts, what is already committed, and where results go.
pub struct JobStart {
    pub id: JobId,
    pub object: ObjectRef<SentimentBatch>,
    pub items: Arc<Vec<Item>>,
    pub remaining: Vec<Range<usize>>,
    pub committed: Tally,
    pub store: Store,
    pub max_batch: usize,
    pub model: Option<String>,
}

/// A running batch as the engine sees it.
#[derive(Clone, Debug)]
pub struct Progress {
    pub total: usize,
    pub tally: Tally,
    /// Every text has a committed result.
    pub done: bool,
    /// A problem that fails the whole batch (a model mismatch).
    pub fatal: Option<String>,
    pub eta_seconds: Option<i64>,
}

/// How one chunk's attempt ended.
#[derive(Debug)]
pub enum Outcome {
    /// Results (or give-up errors) are in the store.
    Committed(Tally),
    /// The endpoint could not be reached or did not answer.
    Unreachable(String),
    /// The endpoint shed load (429/503).
    Busy,
    /// The endpoint answered with an error: possibly a text it cannot take.
    Rejected(String),
    /// Results could not be stored.
    Store(String),
    /// The batch cannot succeed on this pool.
    Fatal(String),
}

enum Command {
    Admit {
        id: JobId,
        priority: Priority,
        deadline: Instant,
        reply: oneshot::Sender<Result<(), QueueFull>>,
    },
    Start(Box<JobStart>),
    Progress {
        id: JobId,
        reply: oneshot::Sender<Option<Progress>>,
    },
    Remove {
        id: JobId,
    },
    /// An endpoint answered a chunk: its slot is free while the chunk's part is written.
    Answered {
        endpoint: String,
        texts: usize,
        elapsed: Duration,
    },
    /// A chunk's attempt ended; `endpoint` is set when it ended without an answer.
    Returned {
        chunk: Chunk,
        endpoint: Option<String>,
        outcome: Outcome,
    },
}

/// The handle the controller talks to the engine through.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Command>,
}

impl Engine {
    /// Starts the engine task. It reports batches that need a reconcile (finished or
    /// failed) on `notify`, and stops with `stop`.
    pub fn start(
        cfg: AsyncBatch,
        metrics: Metrics,
        endpoints: watch::Receiver<Vec<String>>,
        notify: mpsc::Sender<ObjectRef<SentimentBatch>>,
        stop: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        let limits = Limits {
            per_priority: Priority::ALL.map(|p| cfg.limit(p)),
            max_jobs: cfg.max_jobs,
            aging: Duration::from_secs(cfg.aging_seconds),
        };
        let cache = moka::sync::Cache::builder()
            .max_capacity(cfg.result_cache_max_size)
            .time_to_live(Duration::from_secs(cfg.cache_ttl_seconds.max(1)))
            .build();
        let http = reqwest::Client::builder()
            // hickory resolves `*.localhost` to loopback (RFC 6761), as e2e/up.sh registers endpoints.
            .hickory_dns(true)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("the HTTP client builds. This is a bug.");
        let state = State {
            sched: Scheduler::new(limits),
            jobs: HashMap::new(),
            endpoints: HashMap::new(),
            shared: Arc::new(Shared { http, cache, served_model: std::sync::RwLock::new(None), metrics }),
            cfg,
            tx: tx.clone(),
            notify,
            committed: VecDeque::new(),
        };
        tokio::spawn(state.run(rx, endpoints, stop));
        Engine { tx }
    }

    async fn ask<T>(&self, cmd: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(cmd(reply)).await.ok()?;
        rx.await.ok()
    }

    /// Reserves an admission slot; `Err(QueueFull)` when the batch's level or the total is full.
    pub async fn admit(&self, id: &str, priority: Priority, deadline: Instant) -> Result<(), QueueFull> {
        self.ask(|reply| Command::Admit { id: id.to_string(), priority, deadline, reply }).await.unwrap_or(Err(QueueFull))
    }

    pub async fn start_job(&self, job: JobStart) {
        let _ = self.tx.send(Command::Start(Box::new(job))).await;
    }

    /// The batch's progress, if it runs in this engine.
    pub async fn progress(&self, id: &str) -> Option<Progress> {
        self.ask(|reply| Command::Progress { id: id.to_string(), reply }).await.flatten()
    }

    /// Stops a batch's work and frees its slot. Results already committed stay.
    pub async fn remove(&self, id: &str) {
        let _ = self.tx.send(Command::Remove { id: id.to_string() }).await;
    }
}

struct Job {
    start: JobStart,
    tally: Tally,
    began: Instant,
    done_here: usize,
    fatal: Option<String>,
}

#[derive(Default)]
struct EndpointState {
    in_flight: usize,
    dead_until: Option<Instant>,
    failures: u32,
    secs_per_text: Option<f64>,
}

/// What chunk tasks share.
struct Shared {
    http: reqwest::Client,
    cache: moka::sync::Cache<String, PredictionResult>,
    /// The model name the pool last answered with: the cache's key space.
    served_model: std::sync::RwLock<Option<String>>,
    metrics: Metrics,
}

struct State {
    cfg: AsyncBatch,
    sched: Scheduler,
    jobs: HashMap<JobId, Job>,
    endpoints: HashMap<String, EndpointState>,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Command>,
    notify: mpsc::Sender<ObjectRef<SentimentBatch>>,
    /// (when, texts) of recent commits, for the throughput gauge.
    committed: VecDeque<(Instant, usize)>,
}

impl State {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, mut endpoints: watch::Receiver<Vec<String>>, stop: CancellationToken) {
        self.set_endpoints(&endpoints.borrow_and_update().clone());
        loop {
            self.pump();
            self.export();
            let now = Instant::now();
            let wake = self
                .sched
                .next_ready_after(now)
                .into_iter()
                .chain(self.endpoints.values().filter_map(|e| e.dead_until).filter(|t| *t > now))
                .min()
                .unwrap_or(now + Duration::from_secs(1));
            tokio::select! {
                _ = stop.cancelled() => break,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => break,
                },
                changed = endpoints.changed() => {
                    if changed.is_err() { break; }
                    let urls = endpoints.borrow_and_update().clone();
                    self.set_endpoints(&urls);
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    fn set_endpoints(&mut self, urls: &[String]) {
        tracing::info!(?urls, "inference endpoints");
        self.endpoints.retain(|u, e| urls.contains(u) || e.in_flight > 0);
        for u in urls {
            self.endpoints.entry(u.clone()).or_default();
        }
        let gone: Vec<_> = self.endpoints.keys().filter(|u| !urls.contains(u)).cloned().collect();
        for u in gone {
            // Still answering in-flight chunks; no new work goes there.
            self.endpoints.get_mut(&u).expect("listed just above. This is a bug.").dead_until =
                Some(Instant::now() + Duration::from_secs(3600));
        }
    }

    fn handle(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Admit { id, priority, deadline, reply } => {
                let _ = reply.send(self.sched.admit(&id, priority, deadline, now));
            }
            Command::Start(job) => {
                if !self.sched.contains(&job.id) || self.jobs.contains_key(&job.id) {
                    return;
                }
                self.sched.enqueue(&job.id, job.remaining.clone(), now);
                let id = job.id.clone();
                let tally = job.committed.clone();
                self.jobs.insert(id.clone(), Job { start: *job, tally, began: now, done_here: 0, fatal: None });
                self.notify_if_done(&id);
            }
            Command::Progress { id, reply } => {
                let _ = reply.send(self.jobs.get(&id).map(|j| Progress {
                    total: j.start.items.len(),
                    tally: j.tally.clone(),
                    done: j.fatal.is_none() && self.sched.is_drained(&id),
                    fatal: j.fatal.clone(),
                    eta_seconds: eta(j, now),
                }));
            }
            Command::Remove { id } => {
                self.sched.remove(&id);
                self.jobs.remove(&id);
            }
            Command::Answered { endpoint, texts, elapsed } => self.release(&endpoint, Some((texts, elapsed))),
            Command::Returned { chunk, endpoint, outcome } => self.returned(chunk, endpoint, outcome, now),
        }
    }

    /// Frees an endpoint slot; `answered` (texts, wall time) when it answered, which
    /// also feeds its measured speed.
    fn release(&mut self, url: &str, answered: Option<(usize, Duration)>) {
        let Some(ep) = self.endpoints.get_mut(url) else { return };
        // Chunks that shared the endpoint with this one (itself included).
        let sharing = ep.in_flight.max(1);
        ep.in_flight = ep.in_flight.saturating_sub(1);
        if let Some((texts, elapsed)) = answered {
            self.shared.metrics.dispatch_seconds.observe(elapsed.as_secs_f64());
            ep.failures = 0;
            ep.dead_until = None;
            if texts > 0 {
                // The endpoint served `sharing` chunks at once, so each text cost it only
                // a share of this chunk's wall time.
                let per_text = elapsed.as_secs_f64() / (texts * sharing) as f64;
                ep.secs_per_text = Some(ep.secs_per_text.map_or(per_text, |old| 0.7 * old + 0.3 * per_text));
            }
        }
    }

    fn returned(&mut self, chunk: Chunk, endpoint: Option<String>, outcome: Outcome, now: Instant) {
        if let Some(url) = &endpoint {
            self.release(url, None);
        }
        // The attempt is over whatever happens next (a give-up holds the chunk again).
        self.sched.returned(&chunk.job);
        if !self.jobs.contains_key(&chunk.job) {
            return;
        }
        let backoff = |attempts: u32| Duration::from_millis(100 * 2u64.saturating_pow(attempts.min(6)));
        match outcome {
            Outcome::Committed(tally) => {
                self.committed.push_back((now, tally.done()));
                let job = self.jobs.get_mut(&chunk.job).expect("checked above. This is a bug.");
                job.done_here += tally.done();
                job.tally.merge(tally);
                self.notify_if_done(&chunk.job);
            }
            Outcome::Unreachable(why) => {
                // The endpoint, not the texts: skip it for a while and try elsewhere, without
                // spending the chunk's attempts (the batch's deadline bounds the waiting).
                let url = endpoint.clone().unwrap_or_default();
                tracing::warn!(endpoint = %url, %why, "endpoint unreachable");
                if let Some(ep) = self.endpoints.get_mut(&url) {
                    ep.failures += 1;
                    ep.dead_until = Some(now + (backoff(ep.failures)).min(Duration::from_secs(10)));
                }
                self.shared.metrics.retries.inc();
                self.sched.retry(Chunk { avoid: endpoint, ..chunk }, now);
            }
            Outcome::Busy => {
                self.shared.metrics.retries.inc();
                self.sched.retry(chunk, now + Duration::from_millis(200));
            }
            Outcome::Store(why) => {
                tracing::warn!(%why, "writing results");
                self.shared.metrics.retries.inc();
                let at = now + backoff(chunk.attempts);
                self.sched.retry(Chunk { attempts: chunk.attempts + 1, ..chunk }, at);
            }
            Outcome::Rejected(why) => {
                self.shared.metrics.retries.inc();
                if let Some((left, right)) = chunk.split() {
                    // Halve until the failing text is alone; the others go through.
                    self.sched.retry(right, now);
                    self.sched.retry(left, now);
                } else if chunk.attempts + 1 < self.cfg.max_retries {
                    let at = now + backoff(chunk.attempts);
                    self.sched.retry(Chunk { attempts: chunk.attempts + 1, avoid: endpoint, ..chunk }, at);
                } else {
                    // Dead-lettered: the failure is committed like a result, so it is
                    // counted once and survives a restart. The chunk stays in flight
                    // until then.
                    self.sched.hold(&chunk.job);
                    self.give_up(chunk, why, "inference_error");
                }
            }
            Outcome::Fatal(why) => {
                self.sched.remove(&chunk.job);
                let job = self.jobs.get_mut(&chunk.job).expect("checked above. This is a bug.");
                job.fatal = Some(why);
                let _ = self.notify.try_send(job.start.object.clone());
            }
        }
    }

    fn give_up(&mut self, chunk: Chunk, why: String, reason: &str) {
        let job = &self.jobs[&chunk.job];
        let lines: Vec<ResultLine> = chunk
            .range
            .clone()
            .map(|index| ResultLine { index, id: job.start.items[index].id.clone(), prediction: None, error: Some(why.clone()) })
            .collect();
        self.shared.metrics.item_failures.with_label_values(&[reason]).inc_by(lines.len() as u64);
        let (store, tx) = (job.start.store.clone(), self.tx.clone());
        tokio::spawn(async move {
            let outcome = commit(&store, Part { start: chunk.range.start, lines }).await;
            let _ = tx.send(Command::Returned { chunk, endpoint: None, outcome }).await;
        });
    }

    fn notify_if_done(&self, id: &str) {
        if self.sched.is_drained(id)
            && let Some(job) = self.jobs.get(id)
        {
            let _ = self.notify.try_send(job.start.object.clone());
        }
    }

    /// Dispatches chunks while an endpoint has room and work is ready.
    fn pump(&mut self) {
        let workers = self.cfg.workers;
        loop {
            let now = Instant::now();
            let open = |e: &EndpointState| e.in_flight < workers && e.dead_until.is_none_or(|t| t <= now);
            let Some((url, size)) = self
                .endpoints
                .iter()
                .filter(|(_, e)| open(e))
                .min_by_key(|(u, e)| (e.in_flight, *u))
                .map(|(u, e)| (u.clone(), chunk_size(e.secs_per_text, self.cfg.max_batch_size)))
            else {
                return;
            };
            let jobs = &self.jobs;
            let Some(chunk) = self.sched.next(now, |id| jobs.get(id).map_or(size, |j| size.min(j.start.max_batch))) else {
                return;
            };
            // A retry goes to another open endpoint when there is one.
            let url = match &chunk.avoid {
                Some(bad) if *bad == url => {
                    self.endpoints.iter().filter(|(u, e)| *u != bad && open(e)).map(|(u, _)| u.clone()).next().unwrap_or(url)
                }
                _ => url,
            };
            let job = self.jobs.get(&chunk.job).expect("the scheduler only holds work of started jobs. This is a bug.");
            self.endpoints.get_mut(&url).expect("chosen from the map. This is a bug.").in_flight += 1;
            self.shared.metrics.chunk_texts.observe(chunk.len() as f64);
            let (items, store, model) = (job.start.items.clone(), job.start.store.clone(), job.start.model.clone());
            let (shared, tx) = (self.shared.clone(), self.tx.clone());
            tokio::spawn(async move {
                let (outcome, answered) = run_chunk(&shared, &tx, &url, &items, &store, model.as_deref(), chunk.range.clone()).await;
                let endpoint = (!answered).then_some(url);
                let _ = tx.send(Command::Returned { chunk, endpoint, outcome }).await;
            });
        }
    }

    fn export(&mut self) {
        let m = &self.shared.metrics;
        for (p, (jobs, texts)) in Priority::ALL.iter().zip(self.sched.queue_sizes()) {
            m.queue_size.with_label_values(&[p.as_str()]).set(jobs as i64);
            m.queued_texts.with_label_values(&[p.as_str()]).set(texts as i64);
        }
        m.jobs_active.set(self.sched.admitted() as i64);
        for (u, e) in &self.endpoints {
            m.in_flight.with_label_values(&[u.as_str()]).set(e.in_flight as i64);
        }
        let now = Instant::now();
        let window = Duration::from_secs(10);
        while self.committed.front().is_some_and(|(t, _)| now.duration_since(*t) > window) {
            self.committed.pop_front();
        }
        m.throughput.set(self.committed.iter().map(|(_, n)| *n).sum::<usize>() as f64 / window.as_secs_f64());
    }
}

fn chunk_size(secs_per_text: Option<f64>, max: usize) -> usize {
    match secs_per_text {
        None => FIRST_CHUNK.min(max),
        Some(s) => ((TARGET_CHUNK_SECONDS / s.max(1e-6)) as usize).clamp(MIN_CHUNK, max.max(MIN_CHUNK)).min(max),
    }
}

fn eta(job: &Job, now: Instant) -> Option<i64> {
    let left = job.start.items.len().saturating_sub(job.tally.done());
    let secs = now.duration_since(job.began).as_secs_f64();
    (job.done_here > 0 && secs > 0.0).then(|| (left as f64 / (job.done_here as f64 / secs)).ceil() as i64)
}

/// One attempt at one chunk: cache, request, store. Returns whether the endpoint
/// answered (and its slot was already released with [`Command::Answered`]).
async fn run_chunk(
    shared: &Shared,
    tx: &mpsc::Sender<Command>,
    url: &str,
    items: &[Item],
    store: &Store,
    model: Option<&str>,
    range: Range<usize>,
) -> (Outcome, bool) {
    let began = Instant::now();
    let m = &shared.metrics;
    let served = shared.served_model.read().expect("the lock is never poisoned. This is a bug.").clone();
    let key = |model: &str, text: &str| format!("{model}\u{0}{text}");
    // Each distinct text once: from the cache, or in the request.
    let mut known: HashMap<&str, (PredictionResult, bool)> = HashMap::new();
    let mut ask: Vec<&str> = Vec::new();
    for item in &items[range.clone()] {
        let text = item.text.as_str();
        if known.contains_key(text) || ask.contains(&text) {
            continue;
        }
        match served.as_deref().and_then(|s| shared.cache.get(&key(s, text))) {
            Some(hit) => {
                known.insert(text, (hit, true));
            }
            None => ask.push(text),
        }
    }
    m.cache_hits.inc_by((range.len() - ask.len()) as u64);
    m.cache_misses.inc_by(ask.len() as u64);
    if !ask.is_empty() {
        let body = PredictRequest { texts: ask.iter().map(|t| t.to_string()).collect(), options: Default::default() };
        let resp = match shared.http.post(format!("{url}/v1/predict")).json(&body).send().await {
            Ok(r) => r,
            Err(e) => return (Outcome::Unreachable(e.to_string()), false),
        };
        let status = resp.status();
        if status.as_u16() == 429 || status.as_u16() == 503 {
            return (Outcome::Busy, false);
        }
        if !status.is_success() {
            let msg = match resp.json::<ErrorBody>().await {
                Ok(b) => b.message,
                Err(_) => format!("inference server answered {status}"),
            };
            return (Outcome::Rejected(msg), false);
        }
        let results = match resp.json::<PredictResponse>().await {
            Ok(r) if r.results.len() == ask.len() => r.results,
            Ok(r) => return (Outcome::Rejected(format!("{} results for {} texts", r.results.len(), ask.len())), false),
            Err(e) => return (Outcome::Unreachable(format!("reading the answer: {e}")), false),
        };
        let _ = tx.send(Command::Answered { endpoint: url.to_string(), texts: ask.len(), elapsed: began.elapsed() }).await;
        if let Some(want) = model
            && let Some(got) = results.first().map(|r| r.model_name.as_str())
            && got != want
        {
            return (Outcome::Fatal(format!("the inference pool serves model {got:?}, but the batch asks for {want:?}")), true);
        }
        if let Some(first) = results.first() {
            let mut s = shared.served_model.write().expect("the lock is never poisoned. This is a bug.");
            if s.as_deref() != Some(first.model_name.as_str()) {
                *s = Some(first.model_name.clone());
            }
        }
        for (text, r) in ask.iter().zip(results) {
            shared.cache.insert(key(&r.model_name, text), r.clone());
            known.insert(text, (r, false));
        }
    } else {
        // All from the cache: the endpoint was never asked.
        let _ = tx.send(Command::Answered { endpoint: url.to_string(), texts: 0, elapsed: Duration::ZERO }).await;
    }
    // Later duplicates of a text inside the chunk were computed once: they are hits too.
    let mut seen = std::collections::HashSet::new();
    let lines: Vec<ResultLine> = range
        .map(|index| {
            let item = &items[index];
            let (r, hit) = &known[item.text.as_str()];
            let cached = *hit || !seen.insert(item.text.as_str());
            ResultLine { index, id: item.id.clone(), prediction: Some(PredictionResult { cached, ..r.clone() }), error: None }
        })
        .collect();
    (commit(store, Part { start: lines[0].index, lines }).await, true)
}

/// Writes a chunk's part; the chunk is done only if this succeeds.
async fn commit(store: &Store, part: Part) -> Outcome {
    match store.write_part(&part).await {
        Ok(()) => Outcome::Committed(Tally::of(&part.lines)),
        Err(e) => Outcome::Store(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_follow_measured_latency() {
        assert_eq!(chunk_size(None, 1000), FIRST_CHUNK);
        assert_eq!(chunk_size(None, 10), 10);
        assert_eq!(chunk_size(Some(0.002), 1000), 500);
        assert_eq!(chunk_size(Some(0.001), 100), 100);
        assert_eq!(chunk_size(Some(10.0), 1000), MIN_CHUNK);
        assert_eq!(chunk_size(Some(10.0), 3), 3);
    }

    #[test]
    fn tallies_count_labels_confidence_and_samples() {
        let ok = |index, label: &str, score| ResultLine {
            index,
            id: None,
            prediction: Some(PredictionResult {
                label: label.into(),
                score,
                inference_time_ms: 1.0,
                model_name: "m".into(),
                text_length: 1,
                backend: "onnx".into(),
                cached: false,
                scores: Default::default(),
                tokens: 3,
                truncated: false,
            }),
            error: None,
        };
        let bad = |index| ResultLine { index, id: None, prediction: None, error: Some("boom".into()) };
        let mut t = Tally::of(&[ok(0, "POSITIVE", 0.5), ok(1, "POSITIVE", 1.0), bad(2)]);
        t.merge(Tally::of(&(3..10).map(bad).collect::<Vec<_>>()));
        assert_eq!((t.ok, t.failed, t.labels["POSITIVE"], t.confidence_sum), (2, 8, 2, 1.5));
        assert_eq!(t.samples.len(), SAMPLES);
        assert_eq!(t.samples[0].index, 2);
    }
}
