//! The engine: one task that owns the [`Scheduler`], the endpoint [`pool::Pool`] and the
//! running jobs, fed by a bounded command channel.
//!
//! Whenever an endpoint has room it takes the next chunk and spawns an attempt at it
//! ([`chunk`]). An attempt commits the chunk's part before it reports back, so a chunk
//! counts as done exactly when its results are durable. Failures come back as
//! [`Outcome`]s and the engine decides: try another endpoint, back off, split the chunk
//! to isolate a failing text, or give the text up with its error.
//!
//! The engine reaches the world through three small traits, so its tests drive it with
//! in-memory fakes: [`Predict`] (predict these texts on that endpoint), [`TextSource`]
//! (read these of a job's texts) and [`ResultSink`] (commit this part of a job's results).

mod chunk;
pub mod pool;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use inference_api::client::Predict;
use kube::runtime::reflector::ObjectRef;
use kubesentiment_core::backoff::Backoff;
use kubesentiment_core::config::AsyncBatch;
use kubesentiment_core::crd::{Priority, SentimentBatch};
use kubesentiment_core::endpoints::Endpoints;
use kubesentiment_core::status::Tally;
use kubesentiment_core::store::{Part, ResultLine, Store};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::chunk::Outcome;
use self::chunk::{Attempt, Shared};
use self::pool::Pool;
use crate::metrics::Metrics;
use crate::scheduler::{Chunk, JobId, QueueFull, Scheduler, Shares, Tenant};
use crate::source::{Item, SourceError};

/// How long one request to an inference endpoint may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Between attempts at a chunk that failed for its texts or its store.
const RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(6400));
/// Attempts at writing a chunk's results before the batch fails with `ResultsUnwritable`.
const STORE_ATTEMPTS: u32 = 6;
/// Before retrying a chunk an endpoint refused for load (429) without a `Retry-After`.
const BUSY_RETRY: Duration = Duration::from_millis(200);
/// The longest `Retry-After` the engine honours.
const BUSY_RETRY_MAX: Duration = Duration::from_secs(5);
/// Transient error answers (500/502/503/504), and losses beside other chunks, that a chunk
/// may meet, each retried after [`RETRY`]'s backoff on another endpoint, before they count
/// as one failed attempt.
const TRANSIENT_BUDGET: u32 = 6;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where a job's results go: one part at a time, each written whole and idempotently.
#[async_trait::async_trait]
pub trait ResultSink: Send + Sync {
    async fn commit(&self, part: &Part) -> Result<(), BoxError>;
}

#[async_trait::async_trait]
impl ResultSink for Store {
    async fn commit(&self, part: &Part) -> Result<(), BoxError> {
        self.write_part(part).await?;
        Ok(())
    }
}

/// Where a job's texts come from, a range at a time: a chunk reads its texts when it
/// runs, so the engine holds only the texts of chunks in flight (and what the source
/// keeps to read them).
#[async_trait::async_trait]
pub trait TextSource: Send + Sync {
    /// How many texts the job has.
    fn len(&self) -> usize;
    /// Never true of an admitted batch's texts (a source without texts is invalid).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Texts `range` (within `0..len()`), in order.
    async fn read(&self, range: Range<usize>) -> Result<Vec<Item>, SourceError>;
}

/// The HTTP client the engine uses in production.
pub fn http_predictor() -> Arc<dyn Predict> {
    Arc::new(inference_api::client::HttpPredictor::new(REQUEST_TIMEOUT))
}

/// A batch ready to run: its texts, what is already committed, and where results go.
pub struct JobStart {
    pub id: JobId,
    pub object: ObjectRef<SentimentBatch>,
    pub texts: Arc<dyn TextSource>,
    pub remaining: Vec<Range<usize>>,
    pub committed: Tally,
    pub sink: Arc<dyn ResultSink>,
    pub max_batch: usize,
    pub model: Option<String>,
    /// Past it the job stops and reports itself expired.
    pub deadline: Instant,
}

/// A running batch as the engine sees it.
#[derive(Clone, Debug)]
pub struct Progress {
    pub total: usize,
    pub tally: Tally,
    /// Every text has a committed result.
    pub done: bool,
    /// A problem that fails the whole batch: (reason, message), such as a model mismatch
    /// or results that cannot be written.
    pub fatal: Option<(&'static str, String)>,
    /// Suspended: no new chunk goes out; these are still in flight.
    pub suspended: bool,
    /// Its chunk tasks not yet returned (after a halt, until each has seen the stop).
    pub in_flight: usize,
    /// Its deadline passed before every text had a result; its work has stopped.
    pub expired: bool,
    /// Work is left and no inference endpoint is ready to take it.
    pub waiting_for_capacity: bool,
    pub eta_seconds: Option<i64>,
}

/// The work the engine holds and what the pool can do with it: what the autoscaler
/// decides on.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    /// Texts admitted and not yet dispatched.
    pub queued_texts: usize,
    /// Texts of chunks awaiting an answer.
    pub in_flight_texts: usize,
    /// Ready endpoints (pods).
    pub endpoints: usize,
    /// Texts per second one endpoint serves, as measured (mean over endpoints).
    pub texts_per_second_per_endpoint: Option<f64>,
}

pub(crate) enum Command {
    Admit {
        id: JobId,
        priority: Priority,
        tenant: Tenant,
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
    /// Removes every job not in `ids`.
    Retain {
        ids: HashSet<JobId>,
    },
    Suspend {
        id: JobId,
    },
    Halt {
        id: JobId,
    },
    Load {
        reply: oneshot::Sender<Load>,
    },
    /// An endpoint answered a chunk of `chunk` texts (`asked` of them not from the
    /// cache): its slot is free while the chunk's part is written.
    Answered {
        endpoint: String,
        chunk: usize,
        asked: usize,
        elapsed: Duration,
    },
    /// A chunk's attempt ended; `endpoint` is set when it ended without an answer.
    Returned {
        chunk: Chunk,
        endpoint: Option<String>,
        /// Its place at the endpoint it was sent to.
        sent: pool::Sent,
        outcome: Outcome,
    },
}

/// The handle the controller talks to the engine through.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Command>,
}

/// What the engine is given to run with.
pub struct Wiring {
    pub predictor: Arc<dyn Predict>,
    pub metrics: Metrics,
    pub endpoints: watch::Receiver<Endpoints>,
    /// Batches that need a reconcile now (finished, failed, expired).
    pub notify: mpsc::Sender<ObjectRef<SentimentBatch>>,
    /// The engine task and every chunk task run on it, so shutdown can wait for them.
    pub tasks: TaskTracker,
    pub stop: CancellationToken,
}

/// The engine's clock: tokio's, so tests can pause and step it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Engine {
    /// Starts the engine task; it stops with `w.stop`, and every job's work with it.
    pub fn start(cfg: &AsyncBatch, w: Wiring) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        let cache = moka::sync::Cache::builder()
            .max_capacity(cfg.result_cache_max_size)
            .time_to_live(Duration::from_secs(cfg.cache_ttl_seconds.max(1)))
            .build();
        let state = State {
            sched: Scheduler::new(
                cfg.admission(),
                Shares { level_weights: cfg.level_weights(), aging: Duration::from_secs(cfg.aging_seconds) },
            ),
            pool: Pool::new(cfg.workers),
            jobs: HashMap::new(),
            shared: Arc::new(Shared { predictor: w.predictor, cache, served_model: RwLock::new(None), metrics: w.metrics }),
            max_batch_size: cfg.max_batch_size,
            max_retries: cfg.max_retries,
            tx: tx.clone(),
            notify: w.notify,
            committed: VecDeque::new(),
            tasks: w.tasks.clone(),
            stop: w.stop.clone(),
        };
        w.tasks.spawn(state.run(rx, w.endpoints));
        Engine { tx }
    }

    async fn ask<T>(&self, cmd: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(cmd(reply)).await.ok()?;
        rx.await.ok()
    }

    /// Reserves an admission slot for a batch of `tenant`; `Err(QueueFull)` when the
    /// batch's level or the total is full.
    pub async fn admit(&self, id: &str, priority: Priority, tenant: Tenant, deadline: Instant) -> Result<(), QueueFull> {
        self.ask(|reply| Command::Admit { id: id.to_string(), priority, tenant, deadline, reply }).await.unwrap_or(Err(QueueFull))
    }

    pub async fn start_job(&self, job: JobStart) {
        let _ = self.tx.send(Command::Start(Box::new(job))).await;
    }

    /// The batch's progress, if it runs in this engine.
    pub async fn progress(&self, id: &str) -> Option<Progress> {
        self.ask(|reply| Command::Progress { id: id.to_string(), reply }).await.flatten()
    }

    /// Stops a batch's work, in flight too, and frees its slot. Results already committed stay.
    pub async fn remove(&self, id: &str) {
        let _ = self.tx.send(Command::Remove { id: id.to_string() }).await;
    }

    /// Removes every batch but `ids` (those that still exist), admitted or started: a
    /// batch deleted without a finalizer between its reconcile's read and its admission
    /// is not told apart otherwise.
    pub async fn retain(&self, ids: HashSet<String>) {
        let _ = self.tx.send(Command::Retain { ids }).await;
    }

    /// Stops dispatching a batch's chunks; those in flight finish and commit. Its
    /// progress then shows `suspended`, and `in_flight` counting down to zero.
    pub async fn suspend(&self, id: &str) {
        let _ = self.tx.send(Command::Suspend { id: id.to_string() }).await;
    }

    /// Stops a batch's work, in flight too, but keeps what the engine knows of it (its
    /// progress, why it failed) until [`Engine::remove`]: the controller halts a batch it
    /// is ending and removes it once the end is written.
    pub async fn halt(&self, id: &str) {
        let _ = self.tx.send(Command::Halt { id: id.to_string() }).await;
    }

    /// The work held now, and the endpoints' measured speed.
    pub async fn load(&self) -> Option<Load> {
        self.ask(|reply| Command::Load { reply }).await
    }
}

struct Job {
    start: JobStart,
    tally: Tally,
    began: Instant,
    done_here: usize,
    fatal: Option<(&'static str, String)>,
    expired: bool,
    suspended: bool,
    /// Cancelled when the job stops; its chunks commit nothing after that.
    stop: CancellationToken,
    /// Its chunk tasks not yet returned, whether or not the scheduler still holds it:
    /// the controller writes a final status only once this is zero, so no part lands
    /// after it.
    outstanding: usize,
}

struct State {
    sched: Scheduler,
    pool: Pool,
    jobs: HashMap<JobId, Job>,
    shared: Arc<Shared>,
    max_batch_size: usize,
    max_retries: u32,
    tx: mpsc::Sender<Command>,
    notify: mpsc::Sender<ObjectRef<SentimentBatch>>,
    /// (when, texts) of recent commits, for the throughput gauge.
    committed: VecDeque<(Instant, usize)>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl State {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, mut endpoints: watch::Receiver<Endpoints>) {
        self.pool.set(&endpoints.borrow_and_update().clone());
        loop {
            self.expire();
            self.pump();
            self.export();
            let now = now();
            let deadlines = self.jobs.values().filter(|j| !j.expired && !j.suspended).map(|j| j.start.deadline);
            let wake = self
                .sched
                .next_ready_after(now)
                .into_iter()
                .chain(self.pool.next_open_after(now))
                .chain(deadlines)
                .min()
                .unwrap_or(now + Duration::from_secs(1))
                .max(now);
            tokio::select! {
                _ = self.stop.cancelled() => break,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => break,
                },
                changed = endpoints.changed() => {
                    if changed.is_err() { break; }
                    let urls = endpoints.borrow_and_update().clone();
                    tracing::info!(?urls, "inference endpoints");
                    self.pool.set(&urls);
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
            }
        }
    }

    /// Forgets a job: its admission slot, its queued chunks, and its work in flight.
    fn remove(&mut self, id: &str) {
        self.sched.remove(id);
        if let Some(job) = self.jobs.remove(id) {
            job.stop.cancel();
        }
    }

    fn handle(&mut self, cmd: Command) {
        let now = now();
        match cmd {
            Command::Admit { id, priority, tenant, deadline, reply } => {
                let _ = reply.send(self.sched.admit(&id, priority, tenant, deadline, now));
            }
            Command::Start(job) => {
                if !self.sched.contains(&job.id) || self.jobs.contains_key(&job.id) {
                    return;
                }
                self.sched.enqueue(&job.id, job.remaining.clone(), now);
                let id = job.id.clone();
                let tally = job.committed.clone();
                let stop = self.stop.child_token();
                let job = Job {
                    start: *job,
                    tally,
                    began: now,
                    done_here: 0,
                    fatal: None,
                    expired: false,
                    suspended: false,
                    stop,
                    outstanding: 0,
                };
                self.jobs.insert(id.clone(), job);
                self.notify_if_done(&id);
            }
            Command::Progress { id, reply } => {
                let _ = reply.send(self.jobs.get(&id).map(|j| Progress {
                    total: j.start.texts.len(),
                    tally: j.tally.clone(),
                    done: j.fatal.is_none() && !j.expired && !j.suspended && self.sched.is_drained(&id),
                    fatal: j.fatal.clone(),
                    expired: j.expired,
                    suspended: j.suspended,
                    in_flight: j.outstanding,
                    waiting_for_capacity: self.pool.ready() == 0 && !self.sched.is_drained(&id),
                    eta_seconds: eta(j, now),
                }));
            }
            Command::Remove { id } => self.remove(&id),
            Command::Retain { ids } => {
                let gone: HashSet<JobId> = self.sched.ids().chain(self.jobs.keys()).filter(|id| !ids.contains(*id)).cloned().collect();
                for id in gone {
                    self.remove(&id);
                }
            }
            Command::Halt { id } => {
                if let Some(job) = self.jobs.get(&id) {
                    job.stop.cancel();
                    self.sched.drop_pending(&id);
                }
            }
            Command::Suspend { id } => {
                if let Some(job) = self.jobs.get_mut(&id) {
                    job.suspended = true;
                    self.sched.drop_pending(&id);
                }
            }
            Command::Load { reply } => {
                let _ = reply.send(Load {
                    queued_texts: self.sched.queue_sizes().iter().map(|(_, texts)| texts).sum(),
                    in_flight_texts: self.pool.in_flight_texts(),
                    endpoints: self.pool.ready(),
                    texts_per_second_per_endpoint: self.pool.texts_per_second(),
                });
            }
            Command::Answered { endpoint, chunk, asked, elapsed } => {
                self.shared.metrics.dispatch_seconds.observe(elapsed.as_secs_f64());
                self.pool.release(&endpoint, chunk, Some((asked, elapsed)), now);
            }
            Command::Returned { chunk, endpoint, sent, outcome } => self.returned(chunk, endpoint, sent, outcome, now),
        }
    }

    fn returned(&mut self, chunk: Chunk, endpoint: Option<String>, sent: pool::Sent, outcome: Outcome, now: Instant) {
        let alone = endpoint.as_deref().is_some_and(|url| self.pool.lost_alone(url, sent));
        if let Some(url) = &endpoint {
            self.pool.release(url, chunk.len(), None, now);
        }
        // The attempt is over whatever happens next (a give-up holds the chunk again).
        self.sched.returned(&chunk.job);
        let Some(job) = self.jobs.get_mut(&chunk.job) else { return };
        job.outstanding -= 1;
        let retries = self.shared.metrics.retries.clone();
        match outcome {
            Outcome::Committed(tally) => {
                self.committed.push_back((now, tally.done()));
                let job = self.jobs.get_mut(&chunk.job).expect("checked above. This is a bug.");
                job.done_here += tally.done();
                job.tally.merge(tally);
                self.notify_if_done(&chunk.job);
            }
            Outcome::Cancelled => {}
            Outcome::Unreachable(why) => {
                // The endpoint, not the texts: skip it for a while and try elsewhere, without
                // spending the chunk's attempts (the batch's deadline bounds the waiting).
                self.rest(endpoint.as_deref(), &why, "endpoint unreachable", now);
                retries.inc();
                self.sched.retry(Chunk { avoid: endpoint, ..chunk }, now);
            }
            Outcome::Busy(retry_after) => {
                retries.inc();
                self.sched.retry(chunk, now + retry_after.map_or(BUSY_RETRY, |d| d.min(BUSY_RETRY_MAX)));
            }
            Outcome::Transient(why, retry_after) if chunk.transient < TRANSIENT_BUDGET => {
                // The endpoint is failing for now (not ready, restarting, timed out): it
                // rests, and the chunk goes elsewhere after a backoff, without spending an
                // attempt. Such answers alone never dead-letter a text.
                self.rest(endpoint.as_deref(), &why, "transient error answer", now);
                retries.inc();
                let at = now + RETRY.delay(chunk.transient).max(retry_after.unwrap_or_default().min(BUSY_RETRY_MAX));
                self.sched.retry(Chunk { transient: chunk.transient + 1, avoid: endpoint, ..chunk }, at);
            }
            Outcome::Transient(why, _) => {
                // The budget is spent: the chunk's texts may be what the endpoints fail on.
                // The failure now counts as an attempt, halving to find the text.
                self.isolate(Chunk { transient: 0, ..chunk }, endpoint, why, now);
            }
            Outcome::Source(e @ SourceError::Changed(_)) => self.fail(&chunk.job, e.reason(), e.to_string()),
            Outcome::Source(e) => self.retry_or_fail(chunk, e.reason(), "reading texts", e.to_string(), now),
            Outcome::Store(why) => self.retry_or_fail(chunk, "ResultsUnwritable", "writing results", why, now),
            Outcome::Lost(why) => {
                // Sent, then the answer was lost: the server may have died on one of
                // these texts. The endpoint rests, and the texts pay an attempt as for an
                // error answer, so a text that kills servers is isolated by halving and
                // dead-lettered after `max_retries`, while the rest of the pool works on.
                // A text lost beside other chunks pays as for a transient answer: any of
                // them may have been the cause. The endpoint now takes one chunk at a time
                // for a while (`pool::CALM`), so the text that is the cause soon runs alone.
                self.rest(endpoint.as_deref(), &why, "answer lost", now);
                if chunk.len() == 1 && !alone && chunk.transient < TRANSIENT_BUDGET {
                    retries.inc();
                    let at = now + RETRY.delay(chunk.transient);
                    self.sched.retry(Chunk { transient: chunk.transient + 1, avoid: endpoint, ..chunk }, at);
                } else {
                    self.isolate(Chunk { transient: 0, ..chunk }, endpoint, why, now);
                }
            }
            Outcome::Rejected(why) => self.isolate(chunk, endpoint, why, now),
            Outcome::Fatal(why) => self.fail(&chunk.job, "ModelMismatch", why),
        }
    }

    /// A chunk whose texts could not be read or whose results could not be written: tried
    /// again after a backoff, and after `STORE_ATTEMPTS` the batch fails with `reason`.
    fn retry_or_fail(&mut self, chunk: Chunk, reason: &'static str, doing: &str, why: String, now: Instant) {
        if chunk.attempts + 1 >= STORE_ATTEMPTS {
            tracing::warn!(%why, "{doing} failed {STORE_ATTEMPTS} times; failing the batch");
            self.fail(&chunk.job, reason, format!("{doing} failed {STORE_ATTEMPTS} times: {why}"));
        } else {
            tracing::warn!(%why, "{doing}");
            self.shared.metrics.retries.inc();
            let at = now + RETRY.delay(chunk.attempts);
            self.sched.retry(Chunk { attempts: chunk.attempts + 1, ..chunk }, at);
        }
    }

    /// Skips `endpoint` for a while: it did not answer, or answered that it is failing.
    fn rest(&mut self, endpoint: Option<&str>, why: &str, what: &str, now: Instant) {
        let url = endpoint.unwrap_or_default();
        tracing::warn!(endpoint = %url, %why, "{what}");
        self.pool.unreachable(url, now);
    }

    /// A chunk that failed in a way that may be its texts' fault: halved until the
    /// failing text is alone, which is retried `max_retries` times and then committed as
    /// a failed line.
    fn isolate(&mut self, chunk: Chunk, endpoint: Option<String>, why: String, now: Instant) {
        self.shared.metrics.retries.inc();
        if let Some((left, right)) = chunk.split() {
            // Halve until the failing text is alone; the others go through.
            self.sched.retry(right, now);
            self.sched.retry(left, now);
        } else if chunk.attempts + 1 < self.max_retries {
            let at = now + RETRY.delay(chunk.attempts);
            self.sched.retry(Chunk { attempts: chunk.attempts + 1, avoid: endpoint, ..chunk }, at);
        } else {
            // Dead-lettered: the failure is committed like a result, so it is counted
            // once and survives a restart. The chunk stays in flight until then.
            self.sched.hold(&chunk.job);
            self.give_up(chunk, why);
        }
    }

    /// Stops `id` for good; the controller ends it with `reason`.
    fn fail(&mut self, id: &str, reason: &'static str, why: String) {
        self.sched.remove(id);
        if let Some(job) = self.jobs.get_mut(id) {
            job.fatal = Some((reason, why));
            job.stop.cancel();
            let _ = self.notify.try_send(job.start.object.clone());
        }
    }

    /// Commits `chunk`'s texts as failed with `why` (each with its id, read again).
    fn give_up(&mut self, chunk: Chunk, why: String) {
        let job = self.jobs.get_mut(&chunk.job).expect("a job's chunk came back. This is a bug.");
        job.outstanding += 1;
        let (texts, sink, stop, tx) = (job.start.texts.clone(), job.start.sink.clone(), job.stop.clone(), self.tx.clone());
        let failures = self.shared.metrics.item_failures.with_label_values(&["inference_error"]);
        self.tasks.spawn(async move {
            let outcome = match texts.read(chunk.range.clone()).await {
                Ok(items) => {
                    let lines: Vec<ResultLine> = (chunk.range.clone().zip(items))
                        .map(|(index, item)| ResultLine { index, id: item.id, prediction: None, error: Some(why.clone()) })
                        .collect();
                    let outcome = chunk::commit(sink.as_ref(), &stop, Part::new(chunk.range.start, lines)).await;
                    if let Outcome::Committed(_) = outcome {
                        failures.inc_by(chunk.len() as u64);
                    }
                    outcome
                }
                Err(e) => Outcome::Source(e),
            };
            let _ = tx.send(Command::Returned { chunk, endpoint: None, sent: pool::Sent::default(), outcome }).await;
        });
    }

    /// Stops every job whose deadline has passed with work left, and asks for its reconcile.
    fn expire(&mut self) {
        let now = now();
        for (id, job) in self.jobs.iter_mut().filter(|(_, j)| !j.expired && !j.suspended && j.start.deadline <= now) {
            if self.sched.is_drained(id) {
                continue;
            }
            job.expired = true;
            job.stop.cancel();
            self.sched.remove(id);
            let _ = self.notify.try_send(job.start.object.clone());
        }
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
        loop {
            let now = now();
            let Some((url, size)) = self.pool.pick(now, self.max_batch_size) else { return };
            let jobs = &self.jobs;
            let Some(chunk) = self.sched.next(now, |id| jobs.get(id).map_or(size, |j| size.min(j.start.max_batch))) else {
                return;
            };
            // A retry goes to another open endpoint when there is one.
            let url = match &chunk.avoid {
                Some(bad) if *bad == url => self.pool.other_than(bad, now).unwrap_or(url),
                _ => url,
            };
            let job = self.jobs.get_mut(&chunk.job).expect("the scheduler only holds work of started jobs. This is a bug.");
            job.outstanding += 1;
            let sent = self.pool.take(&url, chunk.len());
            self.shared.metrics.chunk_texts.observe(chunk.len() as f64);
            if let Some(tenant) = self.sched.tenant(&chunk.job) {
                self.shared.metrics.tenant_dispatched.with_label_values(&[tenant]).inc_by(chunk.len() as u64);
            }
            let attempt = Attempt {
                url,
                range: chunk.range.clone(),
                texts: job.start.texts.clone(),
                sink: job.start.sink.clone(),
                model: job.start.model.clone(),
                stop: job.stop.clone(),
            };
            let (shared, tx) = (self.shared.clone(), self.tx.clone());
            self.tasks.spawn(async move {
                let (outcome, answered) = chunk::run(&shared, &tx, &attempt).await;
                let endpoint = (!answered).then_some(attempt.url);
                let _ = tx.send(Command::Returned { chunk, endpoint, sent, outcome }).await;
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
        m.tenant_queued.reset();
        for (tenant, texts) in self.sched.queued_by_tenant() {
            m.tenant_queued.with_label_values(&[tenant]).set(texts as i64);
        }
        for (u, n) in self.pool.in_flight() {
            m.in_flight.with_label_values(&[u]).set(n as i64);
        }
        let now = now();
        let window = Duration::from_secs(10);
        while self.committed.front().is_some_and(|(t, _)| now.duration_since(*t) > window) {
            self.committed.pop_front();
        }
        m.throughput.set(self.committed.iter().map(|(_, n)| *n).sum::<usize>() as f64 / window.as_secs_f64());
    }
}

fn eta(job: &Job, now: Instant) -> Option<i64> {
    let left = job.start.texts.len().saturating_sub(job.tally.done());
    let secs = now.duration_since(job.began).as_secs_f64();
    (job.done_here > 0 && secs > 0.0).then(|| (left as f64 / (job.done_here as f64 / secs)).ceil() as i64)
}
