//! The SentimentBatch controller: reconcile (in a finalizer where results are outside
//! the cluster), deletions seen on the watch, status written whole
//! (a JSON patch of `/status`) under one field manager, Events on transitions, and an
//! `error_policy` that counts failures and backs off.
//!
//! Reconcile is idempotent and keeps no state of its own: what a batch has done is read
//! from the results store, and what it is doing is asked of the [`Engine`]. A restarted
//! operator therefore resumes every Running batch from its committed parts.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use kubesentiment_core::backoff::Backoff;
use kubesentiment_core::config::{AsyncBatch, ObjectStores};
use kubesentiment_core::crd::{Notification, NotificationState, Notify, Phase, SentimentBatch, SentimentBatchStatus};
use kubesentiment_core::names::{FINALIZER, MANAGER, RETRY_FAILED, TENANT_LABEL, WEIGHT_ANNOTATION};
use kubesentiment_core::status::{self, QUEUED, Tally};
use kubesentiment_core::store::{self, Part, ResultLine, Store, StoreError};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::autoscaler::Capacity;
use crate::engine::{BoxError, Engine, JobStart, ResultSink};
use crate::metrics::Metrics;
use crate::notify::{self, Outcome};
use crate::scheduler::Tenant;
use crate::source;

/// How often a Running batch's status is refreshed: at most one write per second each.
const STATUS_PERIOD: Duration = Duration::from_secs(1);
/// How long a small batch (see [`Small`]) runs before its Running status is written,
/// unless it waits for capacity: a batch of one chunk has no progress to show between
/// none and all, so a Running write says only that it was admitted.
const QUIET: Duration = Duration::from_secs(5);
/// Batches reconciled at once. A starting batch briefly holds its spec and texts twice
/// (as read and as packed): this bounds that to a few dozen batches, not every batch
/// created at once.
const RECONCILE_CONCURRENCY: u16 = 32;
/// How often a batch refused admission asks again.
const QUEUED_RETRY: Duration = Duration::from_secs(2);
/// Between failed reconciles of one batch.
const ERROR_BACKOFF: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(64));
/// Attempts, in a row, at a batch's final writes (its failures list and manifest) or at
/// deleting its results before the operator gives up: the batch then fails with
/// `ResultsUnwritable`, or the finalizer is released with an Event saying what is left.
/// About 15 s with the backoff above.
const FINAL_ATTEMPTS: u32 = 5;
/// How often the engine is told which batches still exist (see [`sweep`]).
const SWEEP_PERIOD: Duration = Duration::from_secs(30);
/// How long a namespace's weight is trusted before it is read again.
const WEIGHT_REFRESH: Duration = Duration::from_secs(60);
/// Completion callbacks delivered at once. Each attempt runs beside the reconciles, so a
/// receiver that answers slowly (up to 10 s an attempt) holds one of these, never one of
/// the controller's reconcile slots.
const DELIVERY_SLOTS: usize = 16;
/// When a batch whose callback is under way is looked at again if its attempt's end
/// has not woken it (it does, through the controller's trigger channel).
const DELIVERY_CHECK: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    #[error("results store: {0}")]
    Store(#[from] StoreError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Store(_) => "store",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

/// What reconciles share.
pub struct Context {
    pub client: Client,
    pub engine: Engine,
    pub cfg: AsyncBatch,
    pub stores: ObjectStores,
    pub metrics: Metrics,
    pub recorder: Recorder,
    /// What a batch waiting for pods is told about the scale-up.
    pub capacity: Capacity,
    /// Where completion callbacks may go, and how many attempts each gets.
    pub callbacks: notify::Policy,
    /// Consecutive failures per batch, for error backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Each namespace's fair-share weight, and when it was read.
    weights: Mutex<HashMap<String, (f64, Instant)>>,
    /// When each running batch's progress was last written, to write at most once per
    /// STATUS_PERIOD (our own writes come back as watch events and trigger reconciles).
    progress_written: Mutex<HashMap<String, Instant>>,
    /// Batches started here from Pending that have not yet run for a status period.
    fresh: Mutex<HashMap<String, Fresh>>,
    /// The UIDs of the batches that existed when this replica began to lead: only these
    /// can have run under another replica (one that leads no more).
    older: HashSet<String>,
    deliveries: Arc<Mutex<Deliveries>>,
    delivery_slots: Arc<tokio::sync::Semaphore>,
    /// Asks the controller to look at a batch now (the channel the engine uses too).
    wake: mpsc::Sender<ObjectRef<SentimentBatch>>,
}

/// Completion callbacks under way, by batch UID: `None` while the attempt runs, then
/// what it came to and when it began, until `tell` puts that on record.
type Deliveries = HashMap<String, Option<(Outcome, Timestamp)>>;

/// A batch started here from Pending, until it has run for a status period (#17), or to
/// its end if it is small. Its `Started` Event waits until then.
struct Fresh {
    at: Instant,
    small: Option<Small>,
}

/// A batch of at most one chunk's texts started here from Pending (#17): it holds back
/// its Running status for [`QUIET`], has no Normal Event (a failure still has its
/// Warning), and keeps the parts its chunks commit, so that its end reads nothing back.
/// One that ends within `QUIET` costs its results and its final status, and one read.
struct Small {
    /// The Running status (with `startedAt` and the source's pin) not written yet.
    unwritten: Option<SentimentBatchStatus>,
    /// Every part committed to its store: this replica's, since nothing of the batch can
    /// have been committed before it started (see `start`).
    parts: Arc<Mutex<Vec<Part>>>,
}

/// A small batch's store, keeping a copy of each part it commits.
struct Keeping {
    store: Store,
    parts: Arc<Mutex<Vec<Part>>>,
}

#[async_trait::async_trait]
impl ResultSink for Keeping {
    async fn commit(&self, part: &Part) -> Result<(), BoxError> {
        let stem = self.store.write_part(part).await?;
        self.parts.lock().expect("the lock is never poisoned. This is a bug.").push(Part { stem, ..part.clone() });
        Ok(())
    }
}

impl Context {
    /// `older`: the UIDs of the batches there were when this replica began to lead;
    /// `wake`: the sender of the channel [`run`] takes batches to look at now from.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        engine: Engine,
        cfg: AsyncBatch,
        stores: ObjectStores,
        metrics: Metrics,
        instance: String,
        older: HashSet<String>,
        wake: mpsc::Sender<ObjectRef<SentimentBatch>>,
    ) -> Self {
        Context {
            recorder: recorder(&client, instance),
            client,
            engine,
            cfg,
            stores,
            metrics,
            capacity: Capacity::default(),
            callbacks: notify::Policy::default(),
            failures: Mutex::default(),
            weights: Mutex::default(),
            progress_written: Mutex::default(),
            fresh: Mutex::default(),
            older,
            deliveries: Arc::default(),
            delivery_slots: Arc::new(tokio::sync::Semaphore::new(DELIVERY_SLOTS)),
            wake,
        }
    }
}

/// The operator's Event recorder, as replica `instance`.
pub fn recorder(client: &Client, instance: String) -> Recorder {
    Recorder::new(client.clone(), Reporter { controller: MANAGER.into(), instance: Some(instance) })
}

/// Runs the controller over `api` until `stop`. `notify` carries batches the engine wants
/// looked at now (finished or failed) instead of at their next periodic reconcile.
/// Its cache keeps batches without their inline texts, which `start` reads afresh.
pub async fn run(ctx: Arc<Context>, api: Api<SentimentBatch>, notify: mpsc::Receiver<ObjectRef<SentimentBatch>>, stop: CancellationToken) {
    let triggers = futures_util::stream::unfold(notify, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
    let (reader, writer) = reflector::store();
    let on_delete = ctx.clone();
    let batches = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .map_ok(|ev| ev.modify(status::strip_texts))
        .reflect(writer)
        .and_then(move |ev| {
            let ctx = on_delete.clone();
            async move {
                if let watcher::Event::Delete(b) = &ev {
                    let uid = b.uid().unwrap_or_default();
                    gone(&ctx, &uid).await;
                    ctx.failures.lock().expect("the lock is never poisoned. This is a bug.").remove(&uid);
                }
                Ok(ev)
            }
        })
        .touched_objects();
    tokio::spawn(sweep(ctx.clone(), reader.clone(), stop.clone()));
    Controller::for_stream(batches, reader)
        .with_config(controller::Config::default().concurrency(RECONCILE_CONCURRENCY))
        .reconcile_on(triggers)
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

/// Every `SWEEP_PERIOD`, once the cache is whole, drops what this replica holds of the
/// batches no longer in it: a delete missed while the watch was down, or one that came
/// between a reconcile's read of a batch and its admission (which would otherwise run
/// for a batch that is gone).
async fn sweep(ctx: Arc<Context>, reader: reflector::Store<SentimentBatch>, stop: CancellationToken) {
    if stop.run_until_cancelled(reader.wait_until_ready()).await.is_none() {
        return;
    }
    while stop.run_until_cancelled(tokio::time::sleep(SWEEP_PERIOD)).await.is_some() {
        let ids: HashSet<String> = reader.state().iter().filter_map(|b| b.uid()).collect();
        ctx.engine.retain(ids.clone()).await;
        keep_only(&ctx.progress_written, &ids);
        keep_only(&ctx.fresh, &ids);
        keep_only(&ctx.failures, &ids);
        keep_only(&ctx.deliveries, &ids);
    }
}

/// Drops the entries of a map by batch UID but those of `ids`.
fn keep_only<V>(map: &Mutex<HashMap<String, V>>, ids: &HashSet<String>) {
    map.lock().expect("the lock is never poisoned. This is a bug.").retain(|uid, _| ids.contains(uid));
}

/// Whether `batch` needs the finalizer: results outside the cluster (`s3://`, `file://`)
/// are deleted by it, and a batch that has it keeps it until its cleanup. Results in
/// ConfigMaps are owned by their batch and garbage-collected with it, and a deletion is
/// seen on the watch (and by [`sweep`]), so such a batch is never patched to add one
/// (#17: a write fewer for every batch created without it).
fn finalized(batch: &SentimentBatch) -> bool {
    batch.spec.output.is_some() || batch.finalizers().iter().any(|f| f == FINALIZER)
}

async fn reconcile(batch: Arc<SentimentBatch>, ctx: Arc<Context>) -> Result<Action, Error> {
    let uid = batch.uid().unwrap_or_default();
    let action = if finalized(&batch) {
        finalizer(&api(&ctx, &batch), FINALIZER, batch, |event| async {
            match event {
                Finalizer::Apply(b) => apply(&b, &ctx).await,
                Finalizer::Cleanup(b) => cleanup(&b, &ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))?
    } else if batch.meta().deletion_timestamp.is_some() {
        // Deleted, waiting on another's finalizer: its work stops now.
        gone(&ctx, &uid).await;
        Action::await_change()
    } else {
        apply(&batch, &ctx).await?
    };
    // Failures count while they come in a row.
    ctx.failures.lock().expect("the lock is never poisoned. This is a bug.").remove(&uid);
    Ok(action)
}

/// Drops what this replica holds of a deleted batch but its count of failures (which
/// a cleanup still counts): its work stops.
async fn gone(ctx: &Context, uid: &str) {
    forget(ctx, uid).await;
    ctx.deliveries.lock().expect("the lock is never poisoned. This is a bug.").remove(uid);
}

/// Failed reconciles of `uid` in a row so far.
fn failures_in_a_row(ctx: &Context, uid: &str) -> u32 {
    ctx.failures.lock().expect("the lock is never poisoned. This is a bug.").get(uid).copied().unwrap_or(0)
}

/// Stops a batch's work in the engine and drops what this replica remembers of it.
async fn forget(ctx: &Context, uid: &str) {
    ctx.engine.remove(uid).await;
    ctx.progress_written.lock().expect("the lock is never poisoned. This is a bug.").remove(uid);
    ctx.fresh.lock().expect("the lock is never poisoned. This is a bug.").remove(uid);
}

/// The batch's status as this replica last made it: the Running status it holds back
/// (see [`Small`]), else the one on record.
fn status_of(ctx: &Context, batch: &SentimentBatch) -> SentimentBatchStatus {
    held(ctx, &batch.uid().unwrap_or_default())
        .filter(|_| batch.status.as_ref().is_none_or(|s| s.started_at.is_none()))
        .unwrap_or_else(|| batch.status.clone().unwrap_or_default())
}

/// The Running status a small batch holds back, while it does.
fn held(ctx: &Context, uid: &str) -> Option<SentimentBatchStatus> {
    let fresh = ctx.fresh.lock().expect("the lock is never poisoned. This is a bug.");
    fresh.get(uid)?.small.as_ref()?.unwritten.clone()
}

/// The parts a small batch has committed, if it is one.
fn kept_parts(ctx: &Context, uid: &str) -> Option<Vec<Part>> {
    let fresh = ctx.fresh.lock().expect("the lock is never poisoned. This is a bug.");
    let parts = fresh.get(uid)?.small.as_ref()?.parts.lock().expect("the lock is never poisoned. This is a bug.").clone();
    Some(store::one_per_index(parts))
}

fn error_policy(batch: Arc<SentimentBatch>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_errors.with_label_values(&[error.reason()]).inc();
    tracing::warn!(batch = %batch.name_any(), %error, "reconcile failed");
    let mut failures = ctx.failures.lock().expect("the lock is never poisoned. This is a bug.");
    let n = failures.entry(batch.uid().unwrap_or_default()).or_default();
    *n = n.saturating_add(1);
    Action::requeue(ERROR_BACKOFF.delay(*n - 1))
}

async fn apply(batch: &SentimentBatch, ctx: &Context) -> Result<Action, Error> {
    let uid = batch.uid().unwrap_or_default();
    let store = Store::for_batch(&ctx.client, batch, &ctx.stores);
    if batch.phase().is_final() {
        forget(ctx, &uid).await;
        if batch.annotations().contains_key(RETRY_FAILED) {
            retry_failed(batch, ctx, store.ok()).await?;
            return Ok(Action::await_change());
        }
        if let Some(wait) = tell(batch, ctx).await? {
            return Ok(wait);
        }
        return delete_after_ttl(batch, ctx).await;
    }
    let store = match store {
        Ok(s) => s,
        Err(e) => return finalize_without_store(batch, ctx, Phase::Failed, "OutputInvalid", &e.to_string()).await,
    };
    if batch.spec.cancel {
        return finalize(batch, ctx, &store, Phase::Cancelled, "Cancelled", "spec.cancel is set").await;
    }
    if batch.spec.suspend {
        return suspend(batch, ctx).await;
    }
    // The clock starts at creation, or at the last start (a retry or a resume restarts it).
    let now = Timestamp::now();
    let created = batch.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    let resuming = batch.phase() == Phase::Suspended;
    let old = status_of(ctx, batch);
    let since = if resuming { now } else { old.started_at.as_ref().map_or(created, |t| t.0) };
    let timeout = ctx.cfg.timeout(batch.spec.timeout_seconds);
    let expired = format!("not finished within {} s", timeout.as_secs());
    let left = (since + jiff::SignedDuration::try_from(timeout).expect("timeouts are capped. This is a bug.")).duration_since(now);
    if left.is_negative() || left.is_zero() {
        return finalize(batch, ctx, &store, Phase::Expired, "DeadlineExceeded", &expired).await;
    }
    let left = Duration::try_from(left).expect("checked positive above. This is a bug.");
    let every = STATUS_PERIOD.min(left + Duration::from_millis(10));

    let progress = match ctx.engine.progress(&uid).await {
        Some(p) => p,
        None => return start(batch, ctx, store, Instant::now() + left, left).await,
    };
    if let Some((reason, why)) = progress.fatal {
        return finalize(batch, ctx, &store, Phase::Failed, reason, &why).await;
    }
    if progress.expired {
        return finalize(batch, ctx, &store, Phase::Expired, "DeadlineExceeded", &expired).await;
    }
    if progress.done {
        return finalize(batch, ctx, &store, Phase::Succeeded, "Succeeded", "every text has a result").await;
    }
    let since_write = ctx.progress_written.lock().expect("the lock is never poisoned. This is a bug.").get(&uid).map(Instant::elapsed);
    if let Some(since) = since_write.filter(|s| *s < STATUS_PERIOD) {
        return Ok(Action::requeue(STATUS_PERIOD - since));
    }
    // A small batch's Running waits QUIET, unless it waits for capacity.
    let quiet = {
        let fresh = ctx.fresh.lock().expect("the lock is never poisoned. This is a bug.");
        fresh.get(&uid).is_some_and(|f| f.small.as_ref().is_some_and(|s| s.unwritten.is_some()) && f.at.elapsed() < QUIET)
    };
    if quiet && !progress.waiting_for_capacity {
        return Ok(Action::requeue(every));
    }
    let left = progress.total.saturating_sub(progress.tally.done());
    // Waiting for pods, the estimate counts the scale-up (when this operator scales).
    let eta = if progress.waiting_for_capacity { ctx.capacity.eta_from_zero(left) } else { progress.eta_seconds };
    let counts = SentimentBatchStatus {
        estimated_completion_seconds: eta.or(old.estimated_completion_seconds),
        ..status::counts(&old, progress.total, &progress.tally)
    };
    let status = if progress.waiting_for_capacity {
        status::waiting_for_capacity(batch, counts, store.manifest_location())
    } else {
        status::running(batch, counts, store.manifest_location())
    };
    write_status(batch, ctx, status).await?;
    let started = {
        let mut fresh = ctx.fresh.lock().expect("the lock is never poisoned. This is a bug.");
        let due = match fresh.get_mut(&uid) {
            Some(Fresh { small: Some(small), .. }) => {
                small.unwritten = None;
                false
            }
            Some(f) => f.at.elapsed() >= STATUS_PERIOD,
            None => false,
        };
        due && fresh.remove(&uid).is_some()
    };
    if started {
        publish(ctx, batch, EventType::Normal, "Started", &format!("admitted; {} texts", progress.total)).await;
    }
    ctx.progress_written.lock().expect("the lock is never poisoned. This is a bug.").insert(uid, Instant::now());
    Ok(Action::requeue(every))
}

/// Holds a batch: nothing new is dispatched; once its chunks in flight have come back
/// (committed), it is Suspended.
async fn suspend(batch: &SentimentBatch, ctx: &Context) -> Result<Action, Error> {
    let uid = batch.uid().unwrap_or_default();
    let old = status_of(ctx, batch);
    let counts = match ctx.engine.progress(&uid).await {
        Some(p) => {
            ctx.engine.suspend(&uid).await;
            if p.in_flight > 0 {
                return Ok(Action::requeue(Duration::from_millis(200)));
            }
            forget(ctx, &uid).await;
            status::counts(&old, p.total, &p.tally)
        }
        None => old,
    };
    if batch.phase() != Phase::Suspended {
        publish(ctx, batch, EventType::Normal, "Suspended", "spec.suspend is set: nothing more is dispatched").await;
    }
    write_status(batch, ctx, status::suspended(batch, counts)).await?;
    Ok(Action::await_change())
}

/// Delivers a final batch's completion callback (`spec.notify`) if an attempt is due:
/// `Some(requeue)` while attempts remain, `None` once it is delivered, failed for good, or
/// not asked for. An attempt runs beside the reconciles (`deliver_aside`), and the
/// batch's next reconcile puts it on record in `status.notification` (at least once: a
/// crash before the record repeats the delivery, with the same event id).
async fn tell(batch: &SentimentBatch, ctx: &Context) -> Result<Option<Action>, Error> {
    let Some(spec) = &batch.spec.notify else { return Ok(None) };
    let old = batch.status.clone().unwrap_or_default();
    let mut n = old.notification.clone().unwrap_or_else(|| Notification { event_id: notify::event_id(batch), ..Default::default() });
    if n.state != NotificationState::Pending {
        return Ok(None);
    }
    let uid = batch.uid().unwrap_or_default();
    let ended = {
        let mut deliveries = ctx.deliveries.lock().expect("the lock is never poisoned. This is a bug.");
        match deliveries.get(&uid) {
            Some(None) => return Ok(Some(Action::requeue(DELIVERY_CHECK))),
            Some(Some(_)) => deliveries.remove(&uid).flatten(),
            None => None,
        }
    };
    let Some((outcome, began)) = ended else {
        let wait = notify::due_in(&n, Timestamp::now());
        if wait.is_zero() {
            deliver_aside(batch, spec, &n.event_id, ctx);
            return Ok(Some(Action::requeue(DELIVERY_CHECK)));
        }
        return Ok(Some(Action::requeue(wait)));
    };
    n.attempts += 1;
    n.last_attempt_time = Some(Time(began));
    let (state, label, said) = match outcome {
        Outcome::Delivered(s) => (NotificationState::Delivered, "delivered", s),
        Outcome::Refused(s) => (NotificationState::Failed, "refused", s),
        Outcome::Failed(s) if n.attempts as u32 >= ctx.callbacks.max_attempts => (NotificationState::Failed, "failed", s),
        Outcome::Failed(s) => (NotificationState::Pending, "retried", s),
    };
    ctx.metrics.callbacks.with_label_values(&[label]).inc();
    n.state = state;
    if state == NotificationState::Failed {
        let note = format!("the completion callback was not delivered ({} attempts): {said}", n.attempts);
        publish(ctx, batch, EventType::Warning, "CallbackFailed", &note).await;
    }
    n.last_result = Some(said);
    let next = notify::due_in(&n, Timestamp::now());
    write_status(batch, ctx, SentimentBatchStatus { notification: Some(n), ..old }).await?;
    Ok((state == NotificationState::Pending).then(|| Action::requeue(next)))
}

/// Starts an attempt at `batch`'s callback on a task of its own, which waits for one of
/// the `DELIVERY_SLOTS`, leaves its outcome in `ctx.deliveries` and wakes the batch.
fn deliver_aside(batch: &SentimentBatch, spec: &Notify, event_id: &str, ctx: &Context) {
    let uid = batch.uid().unwrap_or_default();
    ctx.deliveries.lock().expect("the lock is never poisoned. This is a bug.").insert(uid.clone(), None);
    let (client, allow, batch, spec, id) =
        (ctx.client.clone(), ctx.callbacks.allow.clone(), batch.clone(), spec.clone(), event_id.to_string());
    let (deliveries, slots, wake) = (ctx.deliveries.clone(), ctx.delivery_slots.clone(), ctx.wake.clone());
    tokio::spawn(async move {
        let Ok(_slot) = slots.acquire_owned().await else { return };
        let began = Timestamp::now();
        let outcome = notify::deliver(&client, &batch, &spec, &id, &allow).await;
        // Unless the batch was deleted meanwhile.
        if let Some(ended) = deliveries.lock().expect("the lock is never poisoned. This is a bug.").get_mut(&uid) {
            *ended = Some((outcome, began));
        }
        let _ = wake.send(ObjectRef::from(&batch)).await;
    });
}

/// Deletes a finished batch once its `ttlSecondsAfterFinished` (or the configured
/// default) has passed; what it owns goes with it.
async fn delete_after_ttl(batch: &SentimentBatch, ctx: &Context) -> Result<Action, Error> {
    let Some(ttl) = status::ttl_after_finished(batch, ctx.cfg.finished_ttl_seconds) else {
        return Ok(Action::await_change());
    };
    let now = Timestamp::now();
    let ended = batch.status.as_ref().and_then(|s| s.completed_at.as_ref()).map_or(now, |t| t.0);
    let left = (ended + jiff::SignedDuration::try_from(ttl).expect("a TTL fits. This is a bug.")).duration_since(now);
    if let Ok(left) = Duration::try_from(left).map(|d| d.max(Duration::ZERO))
        && !left.is_zero()
    {
        return Ok(Action::requeue(left));
    }
    match api(ctx, batch).delete(&batch.name_any(), &DeleteParams::background()).await {
        Ok(_) => tracing::info!(batch = %batch.name_any(), ttl = ttl.as_secs(), "deleted after its TTL"),
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    // Its ConfigMaps in one request, as its finalizer would: the garbage collector (20
    // deletes a second) falls behind thousands of batches expiring together.
    if !finalized(batch)
        && let Ok(store) = Store::for_batch(&ctx.client, batch, &ctx.stores)
        && let Err(e) = store.delete_all().await
    {
        tracing::debug!(batch = %batch.name_any(), error = %e, "its results are left to the garbage collector");
    }
    Ok(Action::await_change())
}

/// Admits, reads the source and the committed parts, and hands the batch to the engine.
async fn start(batch: &SentimentBatch, ctx: &Context, store: Store, deadline: Instant, left: Duration) -> Result<Action, Error> {
    let uid = batch.uid().unwrap_or_default();
    let namespace = batch.namespace().unwrap_or_default();
    let old = batch.status.clone().unwrap_or_default();
    let tenant = tenant_of(batch, ctx).await;
    if ctx.engine.admit(&uid, batch.spec.priority, tenant, deadline).await.is_err() {
        let limit = ctx.cfg.limit(batch.spec.priority);
        let msg = format!(
            "{} priority admits {limit} batches at once (max_jobs {}); waiting for room",
            batch.spec.priority.as_str(),
            ctx.cfg.max_jobs
        );
        if !status::has_condition(batch, QUEUED, true, "QueueFull") {
            publish(ctx, batch, EventType::Normal, "QueueFull", &msg).await;
        }
        write_status(batch, ctx, status::queue_full(batch, &msg)).await?;
        return Ok(Action::requeue(QUEUED_RETRY.min(left)));
    }
    // The batch as the API server has it: the controller's cache holds no inline texts,
    // and may not yet hold the end this operator wrote a moment ago.
    let spec = match api(ctx, batch).get_opt(&batch.name_any()).await?.filter(|b| b.uid() == batch.uid()) {
        Some(fresh) if !fresh.phase().is_final() => fresh.spec,
        _ => {
            forget(ctx, &uid).await;
            return Ok(Action::await_change());
        }
    };
    let (texts, identity) = match source::read(&ctx.client, &namespace, spec, &ctx.stores).await {
        Ok(read) => read,
        Err(e) => return finalize(batch, ctx, &store, Phase::Failed, e.reason(), &e.to_string()).await,
    };
    // Results already committed belong to the texts admitted: never mix in others.
    if let Some(pinned) = old.source.as_ref().filter(|p| p.sha256 != identity.sha256) {
        let msg = format!(
            "the source changed after the batch was admitted (sha256 {} → {}, {} → {} bytes); its committed results are of other texts",
            &pinned.sha256[..12.min(pinned.sha256.len())],
            &identity.sha256[..12],
            pinned.bytes,
            identity.bytes
        );
        return finalize(batch, ctx, &store, Phase::Failed, "SourceChanged", &msg).await;
    }
    // A batch never started (no startedAt on record) that only this replica can have run
    // (created since it leads) has no parts: nothing to list. One an earlier leader may
    // have started has parts only if that leader died or handed over within the batch's
    // first status period, before it put the source's pin on record: nothing says which
    // texts those are of, so they go and the batch starts over.
    let may_have_run = ctx.older.contains(&uid);
    let parts = match (old.started_at.is_some(), may_have_run) {
        (true, _) => store.read_parts().await?,
        (false, false) => Vec::new(),
        (false, true) => {
            for part in store.read_parts().await? {
                tracing::info!(batch = %batch.name_any(), part = part.stem, "deleting a part of an unrecorded start");
                store.delete_part(&part.stem).await?;
            }
            Vec::new()
        }
    };
    let committed = Tally::of(parts.iter().flat_map(|p| &p.lines));
    let total = texts.len();
    let max_batch = batch
        .spec
        .max_batch_size
        .map_or(ctx.cfg.max_batch_size, |n| (n.max(1) as usize).min(ctx.cfg.max_batch_size))
        .min(store.max_part_texts());
    tracing::info!(batch = %batch.name_any(), total, committed = committed.done(), "starting");
    let resumed = batch.phase() == Phase::Suspended;
    let counts = SentimentBatchStatus {
        source: Some(identity),
        // A resumed batch's clock starts again.
        started_at: if resumed { Some(Time(Timestamp::now())) } else { old.started_at.clone() },
        ..status::counts(&old, total, &committed)
    };
    let running = status::running(batch, counts.clone(), store.manifest_location());
    // Running (startedAt, the source's pin) is on record before any chunk can commit a
    // part; but for a batch of one chunk's texts starting from Pending, whose parts the
    // paragraph above deletes after a crash, it is held back (`Small`).
    let pending = batch.phase() == Phase::Pending;
    let small = if pending && total <= max_batch {
        Some(Small { unwritten: Some(running), parts: Arc::default() })
    } else {
        write_status(batch, ctx, running).await?;
        None
    };
    let store = store.of_texts(total);
    let sink: Arc<dyn ResultSink> = match &small {
        Some(s) => Arc::new(Keeping { store: store.clone(), parts: s.parts.clone() }),
        None => Arc::new(store),
    };
    if pending {
        ctx.fresh.lock().expect("the lock is never poisoned. This is a bug.").insert(uid.clone(), Fresh { at: Instant::now(), small });
    }
    ctx.engine
        .start_job(JobStart {
            id: uid,
            object: ObjectRef::from(batch),
            texts,
            remaining: store::remaining(total, &parts),
            committed,
            sink,
            max_batch,
            model: batch.spec.model.clone(),
            deadline,
        })
        .await;
    if resumed {
        let left = total - counts.processed_texts as usize;
        publish(ctx, batch, EventType::Normal, "Resumed", &format!("spec.suspend is unset; {left} texts left")).await;
    }
    Ok(Action::requeue(STATUS_PERIOD.min(left)))
}

/// Ends a batch: stops its work, writes the failures list and manifest from what the
/// store holds, and sets the final phase.
///
/// It reads the batch afresh first: the controller's cache may not hold yet the status
/// this operator wrote moments before (the total, the start time), and another reconcile
/// may have ended the batch meanwhile. A small batch still holding back its Running
/// status had nothing written since `start` read it, and it ends from the parts it kept:
/// it reads nothing.
///
/// Its work stops at once; the engine forgets the batch only once the end is written, so
/// a failed write is retried with the same outcome (and bounded by `FINAL_ATTEMPTS`).
async fn finalize(cached: &SentimentBatch, ctx: &Context, store: &Store, phase: Phase, reason: &str, msg: &str) -> Result<Action, Error> {
    let uid = cached.uid().unwrap_or_default();
    if !halted(ctx, &uid).await {
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    let batch = if held(ctx, &uid).is_some() {
        cached.clone()
    } else {
        match api(ctx, cached).get_opt(&cached.name_any()).await?.filter(|b| b.uid() == cached.uid()) {
            Some(batch) => batch,
            None => {
                forget(ctx, &uid).await;
                return Ok(Action::await_change());
            }
        }
    };
    if batch.phase().is_final() {
        forget(ctx, &uid).await;
        return Ok(Action::await_change());
    }
    let old = status_of(ctx, &batch);
    match write_results(ctx, store, &old, phase, kept_parts(ctx, &uid)).await {
        Ok((status, tally)) => {
            let (phase, reason, msg) = if phase == Phase::Succeeded && tally.ok == 0 && tally.failed > 0 {
                (Phase::Failed, "AllItemsFailed", format!("all {} texts failed; see {}", tally.failed, store.failures_location()))
            } else {
                (phase, reason, msg.to_string())
            };
            end(&batch, ctx, status, phase, reason, &msg).await
        }
        Err(e) if failures_in_a_row(ctx, &uid) + 1 >= FINAL_ATTEMPTS => {
            let msg = format!("results could not be written ({FINAL_ATTEMPTS} attempts): {e}");
            end(&batch, ctx, old, Phase::Failed, "ResultsUnwritable", &msg).await
        }
        Err(e) => Err(e),
    }
}

/// Writes a final batch's failures list and manifest from what the store holds, or from
/// the parts a small batch `kept` (an Expired batch's unfinished texts fail with
/// `timeout`); returns its counts.
async fn write_results(
    ctx: &Context,
    store: &Store,
    old: &SentimentBatchStatus,
    phase: Phase,
    kept: Option<Vec<Part>>,
) -> Result<(SentimentBatchStatus, Tally), Error> {
    let total = old.total_texts.max(0) as usize;
    // A batch written whole is read with one GET rather than a LIST.
    let parts = match kept {
        Some(parts) => parts,
        None => match store.clone().of_texts(total).read_whole().await? {
            Some(whole) => vec![whole],
            None => store.read_parts().await?,
        },
    };
    let mut failures: Vec<ResultLine> = parts.iter().flat_map(|p| &p.lines).filter(|l| l.error.is_some()).cloned().collect();
    if phase == Phase::Expired {
        let before = failures.len();
        for range in store::remaining(total, &parts) {
            failures.extend(range.map(|index| ResultLine { index, id: None, prediction: None, error: Some("timeout".into()) }));
        }
        ctx.metrics.item_failures.with_label_values(&["timeout"]).inc_by((failures.len() - before) as u64);
        failures.sort_by_key(|l| l.index);
    }
    let location = store.finish(total, &parts, &failures).await?;
    let tally = Tally::of(parts.iter().flat_map(|p| &p.lines).filter(|l| l.error.is_none()).chain(&failures));
    let mut status = status::counts(old, total, &tally);
    if let Some(f) = status.failures.as_mut() {
        f.location = Some(store.failures_location());
    }
    status.results_location = Some(location);
    Ok((status, tally))
}

/// Stops a batch's work and says whether all of it has stopped. Its chunks see the stop
/// at once; one already writing its part finishes first, so a final status written (or
/// results deleted) after this returns true has no part landing after it.
async fn halted(ctx: &Context, uid: &str) -> bool {
    ctx.engine.halt(uid).await;
    ctx.engine.progress(uid).await.is_none_or(|p| p.in_flight == 0)
}

/// Ends a batch whose results store cannot even be named.
async fn finalize_without_store(batch: &SentimentBatch, ctx: &Context, phase: Phase, reason: &str, msg: &str) -> Result<Action, Error> {
    ctx.engine.halt(&batch.uid().unwrap_or_default()).await;
    end(batch, ctx, status_of(ctx, batch), phase, reason, msg).await
}

async fn end(
    batch: &SentimentBatch,
    ctx: &Context,
    counts: SentimentBatchStatus,
    phase: Phase,
    reason: &str,
    msg: &str,
) -> Result<Action, Error> {
    let status = status::ended(batch, counts, phase, reason, msg);
    let priority = batch.spec.priority.as_str();
    let label = match phase {
        Phase::Succeeded => "completed",
        Phase::Failed => "failed",
        Phase::Cancelled => "cancelled",
        _ => "expired",
    };
    ctx.metrics.jobs_total.with_label_values(&[priority, label]).inc();
    if let (Some(started), Some(ended)) = (&status.started_at, &status.completed_at) {
        ctx.metrics.processing_time.with_label_values(&[priority]).observe(ended.0.duration_since(started.0).as_secs_f64().max(0.0));
    }
    // A success within a batch's first status period, or of a small batch, is told by its
    // status alone.
    let unannounced = ctx.fresh.lock().expect("the lock is never poisoned. This is a bug.").contains_key(&batch.uid().unwrap_or_default());
    match phase {
        Phase::Succeeded if unannounced => {}
        Phase::Succeeded => publish(ctx, batch, EventType::Normal, "Succeeded", &format!("{reason}: {msg}")).await,
        _ => publish(ctx, batch, EventType::Warning, &format!("{phase:?}"), &format!("{reason}: {msg}")).await,
    }
    write_status(batch, ctx, status).await?;
    forget(ctx, &batch.uid().unwrap_or_default()).await;
    Ok(Action::await_change())
}

/// Requeues a finished batch's failed items: its status goes back to Pending with a
/// fresh clock, the parts holding failures are deleted (their good lines come back from
/// the cache), and the annotation is removed last. Each step is safe to repeat if the
/// operator dies between them.
async fn retry_failed(batch: &SentimentBatch, ctx: &Context, store: Option<Store>) -> Result<(), Error> {
    let old = batch.status.clone().unwrap_or_default();
    let retry = matches!(batch.phase(), Phase::Succeeded | Phase::Failed) && old.failed_texts > 0 && !batch.spec.cancel;
    if let (true, Some(store)) = (retry, store) {
        let failed: Vec<String> =
            store.read_parts().await?.into_iter().filter(|p| p.lines.iter().any(|l| l.error.is_some())).map(|p| p.stem).collect();
        write_status(batch, ctx, status::retry_requested(batch, &format!("{RETRY_FAILED} is set"))).await?;
        for stem in &failed {
            store.delete_part(stem).await?;
        }
        publish(
            ctx,
            batch,
            EventType::Normal,
            "RetryFailed",
            &format!("requeued {} failed texts", batch.status.as_ref().map_or(0, |s| s.failed_texts)),
        )
        .await;
    }
    let patch = json!({"metadata": {"annotations": {RETRY_FAILED: null}}});
    api(ctx, batch).patch(&batch.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

/// The batch is being deleted: stop its work and delete its results outside the cluster
/// (ConfigMaps go with it through their owner reference). A store that keeps failing is
/// reported in an Event and left, so the deletion (and a namespace's) never hangs.
async fn cleanup(batch: &SentimentBatch, ctx: &Context) -> Result<Action, Error> {
    let uid = batch.uid().unwrap_or_default();
    if !halted(ctx, &uid).await {
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    gone(ctx, &uid).await;
    if let Ok(store) = Store::for_batch(&ctx.client, batch, &ctx.stores)
        && let Err(e) = store.delete_all().await
    {
        if failures_in_a_row(ctx, &uid) + 1 < FINAL_ATTEMPTS {
            return Err(e.into());
        }
        let note = format!("results at {} could not be deleted ({FINAL_ATTEMPTS} attempts) and are left: {e}", store.manifest_location());
        publish(ctx, batch, EventType::Warning, "CleanupFailed", &note).await;
    }
    Ok(Action::await_change())
}

/// Whose batch this is, for fair shares: its namespace, and within a namespace the REST
/// facade shares, its API key's tenant. The namespace's `kubesentiment.io/weight`
/// annotation weighs it (read at most once a minute per namespace; 1 when unset or
/// unreadable).
async fn tenant_of(batch: &SentimentBatch, ctx: &Context) -> Tenant {
    let namespace = batch.namespace().unwrap_or_default();
    let name = match batch.labels().get(TENANT_LABEL) {
        Some(key) => format!("{namespace}/{key}"),
        None => namespace.clone(),
    };
    let cached = ctx.weights.lock().expect("the lock is never poisoned. This is a bug.").get(&namespace).copied();
    let weight = match cached.filter(|(_, at)| at.elapsed() < WEIGHT_REFRESH) {
        Some((w, _)) => w,
        None => {
            let read = Api::<Namespace>::all(ctx.client.clone()).get_opt(&namespace).await;
            let w = match read {
                Ok(ns) => {
                    ns.and_then(|ns| ns.annotations().get(WEIGHT_ANNOTATION)?.parse::<f64>().ok()).filter(|w| *w > 0.0).unwrap_or(1.0)
                }
                Err(e) => {
                    tracing::debug!(%namespace, error = %e, "reading the namespace's weight; using 1");
                    1.0
                }
            };
            ctx.weights.lock().expect("the lock is never poisoned. This is a bug.").insert(namespace, (w, Instant::now()));
            w
        }
    };
    Tenant { name, weight }
}

/// The batches of `batch`'s namespace.
fn api(ctx: &Context, batch: &SentimentBatch) -> Api<SentimentBatch> {
    Api::namespaced(ctx.client.clone(), &batch.namespace().unwrap_or_default())
}

/// Writes `status` whole, unless it equals what is already there: a JSON patch that
/// replaces `/status`, with no precondition (the operator alone writes status). Not
/// server-side apply, which costs the API server twice the CPU for the same write
/// (11.7 against 5.4–6.7 ms a status, measured, #17); the status is always whole, so
/// apply's merging of fields has nothing to do.
async fn write_status(batch: &SentimentBatch, ctx: &Context, status: SentimentBatchStatus) -> Result<(), Error> {
    if batch.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let patch: json_patch::Patch = serde_json::from_value(json!([{"op": "add", "path": "/status", "value": status}]))
        .expect("a status is a JSON patch's value. This is a bug.");
    ctx.metrics.status_writes.inc();
    let params = PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() };
    api(ctx, batch).patch_status(&batch.name_any(), &params, &Patch::Json::<()>(patch)).await?;
    Ok(())
}

async fn publish(ctx: &Context, batch: &SentimentBatch, type_: EventType, reason: &str, note: &str) {
    let ev = Event { type_, reason: reason.into(), note: Some(note.chars().take(1000).collect()), action: reason.into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&ev, &batch.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing an event");
    }
}
