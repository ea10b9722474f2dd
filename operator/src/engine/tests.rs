//! The engine driven through every fault with in-memory fakes of its two edges, on
//! tokio's paused clock: no cluster, no HTTP, no sleeps in real time.
// A batch's work is often one whole range.
#![allow(clippy::single_range_in_vec_init)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use inference_api::PredictionResult;
use inference_api::client::PredictError;
use kubesentiment_core::store::Part;

use super::*;
use crate::source::Packed;

/// An inference pool in memory: endpoints that answer, are unreachable, shed load,
/// refuse a poison text or die on a crashing one; every call is recorded.
struct FakePool {
    model: String,
    calls: Mutex<Vec<(String, Vec<String>)>>,
    dead: Mutex<HashSet<String>>,
    /// Answers this many calls with 429 first.
    busy_first: AtomicUsize,
    /// Then answers this many calls with 503 (an endpoint failing for now).
    failing_first: AtomicUsize,
    /// Virtual time each call takes.
    delay: Duration,
    /// While false, calls wait.
    open: watch::Receiver<bool>,
    /// How long a server that crashed takes to come back.
    restart: Duration,
    /// Per endpoint, its server: a crash takes every call in flight there with it.
    servers: Mutex<HashMap<String, Server>>,
    /// Calls of one text that crashed a server serving nothing else.
    lone_crashes: AtomicUsize,
}

/// One endpoint's server in the fake pool.
struct Server {
    /// How many times it died.
    died: usize,
    /// Down until then, restarting.
    back: Instant,
    /// Calls it is serving now.
    serving: usize,
}

impl FakePool {
    fn new() -> (Arc<FakePool>, watch::Sender<bool>) {
        let (gate, open) = watch::channel(true);
        let pool = FakePool {
            model: "fake".into(),
            calls: Mutex::default(),
            dead: Mutex::default(),
            busy_first: AtomicUsize::new(0),
            failing_first: AtomicUsize::new(0),
            delay: Duration::from_millis(10),
            open,
            restart: Duration::from_secs(2),
            servers: Mutex::default(),
            lone_crashes: AtomicUsize::new(0),
        };
        (Arc::new(pool), gate)
    }

    fn calls(&self) -> Vec<(String, Vec<String>)> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Predict for FakePool {
    async fn predict(&self, endpoint: &str, texts: &[String]) -> Result<Vec<PredictionResult>, PredictError> {
        self.calls.lock().unwrap().push((endpoint.to_string(), texts.to_vec()));
        let mut open = self.open.clone();
        let _ = open.wait_for(|o| *o).await;
        let life = {
            let mut servers = self.servers.lock().unwrap();
            let s = servers.entry(endpoint.to_string()).or_insert(Server { died: 0, back: now(), serving: 0 });
            if now() < s.back {
                return Err(PredictError::Unreachable("connection refused".into()));
            }
            if texts.iter().any(|t| t.contains("CRASH")) {
                // The server dies on this text: the request was sent, the answer never
                // comes, nor do those of the other requests it was serving.
                if texts.len() == 1 && s.serving == 0 {
                    self.lone_crashes.fetch_add(1, Ordering::Relaxed);
                }
                (s.died, s.back) = (s.died + 1, now() + self.restart);
                return Err(PredictError::Lost("connection reset by peer".into()));
            }
            s.serving += 1;
            s.died
        };
        tokio::time::sleep(self.delay).await;
        let survived = {
            let mut servers = self.servers.lock().unwrap();
            let s = servers.get_mut(endpoint).expect("entered above");
            s.serving -= 1;
            s.died == life
        };
        if !survived {
            return Err(PredictError::Lost("connection reset by peer".into()));
        }
        if self.dead.lock().unwrap().contains(endpoint) {
            return Err(PredictError::Unreachable("connection refused".into()));
        }
        if self.busy_first.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
            return Err(PredictError::Busy { retry_after: None });
        }
        if self.failing_first.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
            return Err(PredictError::Transient { status: 503, message: "not ready".into(), retry_after: None });
        }
        if texts.iter().any(|t| t.contains("POISON")) {
            return Err(PredictError::Rejected { status: 422, message: "injected failure".into(), field: None });
        }
        if texts.iter().any(|t| t.contains("BROKEN")) {
            // A server bug on this text: an internal error, every time.
            return Err(PredictError::Transient { status: 500, message: "internal error".into(), retry_after: None });
        }
        Ok(texts
            .iter()
            .map(|t| PredictionResult {
                label: if t.contains("good") { "POSITIVE" } else { "NEGATIVE" }.into(),
                score: 0.9,
                inference_time_ms: 1.0,
                model_name: self.model.clone(),
                text_length: t.len(),
                backend: "fake".into(),
                cached: false,
                scores: BTreeMap::new(),
                tokens: 4,
                truncated: false,
            })
            .collect())
    }
}

/// A results store in memory, which can fail its first commits.
#[derive(Default)]
struct FakeSink {
    parts: Mutex<Vec<Part>>,
    fail_first: AtomicUsize,
    /// While it holds false, commits wait (a slow store).
    gate: Option<watch::Receiver<bool>>,
}

#[async_trait::async_trait]
impl ResultSink for FakeSink {
    async fn commit(&self, part: &Part) -> Result<(), BoxError> {
        if self.fail_first.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
            return Err("the store is unwritable".into());
        }
        if let Some(mut gate) = self.gate.clone() {
            let _ = gate.wait_for(|open| *open).await;
        }
        self.parts.lock().unwrap().push(part.clone());
        Ok(())
    }
}

impl FakeSink {
    /// Every committed line's index, in commit order.
    fn indices(&self) -> Vec<usize> {
        self.parts.lock().unwrap().iter().flat_map(|p| p.lines.iter().map(|l| l.index)).collect()
    }

    fn failed(&self) -> Vec<(usize, String)> {
        let parts = self.parts.lock().unwrap();
        parts.iter().flat_map(|p| &p.lines).filter_map(|l| Some((l.index, l.error.clone()?))).collect()
    }
}

struct Harness {
    engine: Engine,
    endpoints: watch::Sender<Endpoints>,
    notified: mpsc::Receiver<ObjectRef<SentimentBatch>>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

fn harness(cfg: AsyncBatch, pool: Arc<FakePool>, endpoints: &[&str]) -> Harness {
    let (endpoints_tx, endpoints_rx) = watch::channel(endpoints.iter().map(|e| e.to_string()).collect());
    let (notify, notified) = mpsc::channel(64);
    let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
    let wiring =
        Wiring { predictor: pool, metrics: Metrics::new(&cfg), endpoints: endpoints_rx, notify, tasks: tasks.clone(), stop: stop.clone() };
    Harness { engine: Engine::start(&cfg, wiring), endpoints: endpoints_tx, notified, stop, tasks }
}

fn cfg() -> AsyncBatch {
    AsyncBatch { max_batch_size: 50, max_retries: 3, ..Default::default() }
}

/// Chunks of a first chunk's size (64 texts): `workers` of them fill an endpoint, as
/// small chunks do not (`pool::SMALL_TEXTS_PER_WORKER`).
fn full_chunks(workers: usize) -> AsyncBatch {
    AsyncBatch { workers, max_batch_size: pool::FIRST_CHUNK, ..cfg() }
}

fn items(texts: impl IntoIterator<Item = String>) -> Arc<dyn TextSource> {
    Arc::new(Packed::from(texts.into_iter().map(|text| Item { id: None, text }).collect::<Vec<_>>()))
}

/// Texts read a range at a time, as from an S3 source: the first reads can fail, and
/// from some read on the source can be "changed".
struct FlakyTexts {
    items: Vec<Item>,
    fail_first: AtomicUsize,
    changed_from: usize,
    reads: AtomicUsize,
}

#[async_trait::async_trait]
impl TextSource for FlakyTexts {
    fn len(&self) -> usize {
        self.items.len()
    }

    async fn read(&self, range: Range<usize>) -> Result<Vec<Item>, SourceError> {
        if self.reads.fetch_add(1, Ordering::Relaxed) >= self.changed_from {
            return Err(SourceError::Changed("replaced".into()));
        }
        if self.fail_first.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
            return Err(SourceError::Unreadable("connection reset".into()));
        }
        Ok(self.items[range].to_vec())
    }
}

fn distinct(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("text {i} is {}", if i % 2 == 0 { "good" } else { "bad" })).collect()
}

impl Harness {
    /// Admits and starts a job over `texts`, due within `within`.
    async fn start(&self, id: &str, texts: Arc<dyn TextSource>, sink: Arc<FakeSink>, within: Duration) {
        let deadline = now() + within;
        self.engine.admit(id, Priority::Medium, Tenant::new("t"), deadline).await.unwrap();
        self.begin(id, texts, sink, deadline).await;
    }

    /// Starts job `id` over `texts`; the engine ignores it unless admitted.
    async fn begin(&self, id: &str, texts: Arc<dyn TextSource>, sink: Arc<FakeSink>, deadline: Instant) {
        let job = JobStart {
            id: id.into(),
            object: ObjectRef::new(id).within("test"),
            remaining: vec![0..texts.len()],
            texts,
            committed: Tally::default(),
            sink,
            max_batch: 1000,
            model: None,
            deadline,
        };
        self.engine.start_job(job).await;
    }

    /// Waits (in virtual time) until `id` is done, failed or expired.
    async fn settle(&self, id: &str) -> Progress {
        loop {
            let p = self.engine.progress(id).await.expect("the job runs");
            if p.done || p.fatal.is_some() || p.expired {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn shut_down(self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// A job of 500 texts whose first two chunks hang on the endpoint until `gate` opens.
async fn hanging(cfg: AsyncBatch) -> (Harness, Arc<FakePool>, watch::Sender<bool>, Arc<FakeSink>) {
    let (pool, gate) = FakePool::new();
    gate.send_replace(false);
    let h = harness(cfg, pool.clone(), &["http://a"]);
    let sink = Arc::new(FakeSink::default());
    h.start("job", items(distinct(500)), sink.clone(), Duration::from_secs(600)).await;
    while pool.calls().len() < 2 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (h, pool, gate, sink)
}

fn exactly_once(sink: &FakeSink, n: usize) {
    let mut got = sink.indices();
    got.sort();
    assert_eq!(got, (0..n).collect::<Vec<_>>(), "every index committed exactly once");
}

#[tokio::test(start_paused = true)]
async fn every_index_is_committed_once_and_duplicates_are_asked_once() {
    let (pool, _gate) = FakePool::new();
    let h = harness(cfg(), pool.clone(), &["http://a", "http://b"]);
    let sink = Arc::new(FakeSink::default());
    let mut texts = distinct(1000);
    texts[999] = texts[0].clone();
    h.start("job", items(texts), sink.clone(), Duration::from_secs(600)).await;
    let p = h.settle("job").await;
    assert!(p.done && p.tally.ok == 1000 && p.tally.failed == 0, "{p:?}");
    exactly_once(&sink, 1000);
    let asked: usize = pool.calls().iter().map(|(_, t)| t.len()).sum();
    assert_eq!(asked, 999, "the repeated text is answered from the cache");
    let endpoints: HashSet<String> = pool.calls().into_iter().map(|(e, _)| e).collect();
    assert_eq!(endpoints.len(), 2, "both endpoints get chunks");
    h.shut_down().await;
}

/// A text the endpoint refuses (an error answer), a text that kills the server it is
/// sent to (the answer is lost; it pays only when it was alone there) and a text the
/// server always fails on with a 500 (once its transient budget is spent) all cost
/// attempts: each is isolated by halving and dead-lettered after `max_retries`, and every
/// other text succeeds, rather than the batch retrying it on every endpoint until its
/// deadline.
#[tokio::test(start_paused = true)]
async fn a_failing_or_crashing_text_is_isolated_by_halving_and_dead_lettered() {
    // (marker, texts, where, error, answers the text alone gets per attempt)
    let cases = [
        ("POISON", 200, 77, "injected failure", 1),
        ("CRASH", 2000, 1234, "connection reset", 1),
        ("BROKEN", 500, 321, "(500)", TRANSIENT_BUDGET as usize + 1),
    ];
    for (marker, n, at, error, per_attempt) in cases {
        let (pool, _gate) = FakePool::new();
        let h = harness(cfg(), pool.clone(), &["http://a", "http://b"]);
        let sink = Arc::new(FakeSink::default());
        let mut texts = distinct(n);
        texts[at] = format!("{marker} pill");
        h.start("job", items(texts), sink.clone(), Duration::from_secs(600)).await;
        let p = h.settle("job").await;
        assert!(p.done && !p.expired && p.tally.ok == n - 1 && p.tally.failed == 1, "{marker}: {p:?}");
        exactly_once(&sink, n);
        let failed = sink.failed();
        assert!(failed.len() == 1 && failed[0].0 == at && failed[0].1.contains(error), "{marker}: {failed:?}");
        let alone = match marker {
            // The crashes it caused on its own: its calls with others in flight were free.
            "CRASH" => pool.lone_crashes.load(Ordering::Relaxed),
            _ => pool.calls().iter().filter(|(_, t)| t.len() == 1 && t[0].contains(marker)).count(),
        };
        assert_eq!(alone, 3 * per_attempt, "{marker}: the text alone is tried max_retries times");
        h.shut_down().await;
    }
}

/// A text that kills its server takes every chunk in flight there with it. Those texts
/// are not at fault: wherever the text sits, however many chunks an endpoint takes and
/// however long a server takes to come back (Kubernetes restarts a crashing container
/// after 10 s, then 20 s, ...), only it is dead-lettered.
#[tokio::test(start_paused = true)]
async fn a_crash_fails_only_the_text_that_causes_it() {
    let endpoints: Vec<String> = (0..8).map(|i| format!("http://{i}")).collect();
    let endpoints: Vec<&str> = endpoints.iter().map(String::as_str).collect();
    for (workers, pods, restart) in [(1, 2, 2), (2, 2, 2), (4, 2, 2), (2, 4, 2), (2, 2, 12), (4, 4, 20), (2, 8, 2)] {
        for at in [0, 1, 99, 100, 1234, 1235, 1999] {
            let (mut pool, _gate) = FakePool::new();
            Arc::get_mut(&mut pool).expect("not shared yet").restart = Duration::from_secs(restart);
            let cfg = AsyncBatch { workers, max_batch_size: 100, max_retries: 2, ..cfg() };
            let h = harness(cfg, pool.clone(), &endpoints[..pods]);
            let sink = Arc::new(FakeSink::default());
            let mut texts = distinct(2000);
            texts[at] = "CRASH pill".into();
            h.start("job", items(texts), sink.clone(), Duration::from_secs(600)).await;
            let p = h.settle("job").await;
            assert!(
                p.done && p.tally.ok == 1999 && p.tally.failed == 1,
                "workers {workers}, {pods} endpoints, restart {restart} s, at {at}: {p:?} {:?}",
                sink.failed()
            );
            exactly_once(&sink, 2000);
            assert_eq!(sink.failed()[0].0, at);
            h.shut_down().await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_endpoint_is_skipped_and_its_chunks_move() {
    let (pool, _gate) = FakePool::new();
    pool.dead.lock().unwrap().insert("http://dead".into());
    let h = harness(cfg(), pool.clone(), &["http://dead", "http://live"]);
    let sink = Arc::new(FakeSink::default());
    let began = now();
    h.start("job", items(distinct(2000)), sink.clone(), Duration::from_secs(600)).await;
    let p = h.settle("job").await;
    assert!(p.done && p.tally.ok == 2000, "{p:?}");
    exactly_once(&sink, 2000);
    let calls = pool.calls();
    let to_dead = calls.iter().filter(|(e, _)| e == "http://dead").count();
    let to_live = calls.iter().filter(|(e, _)| e == "http://live").count();
    // The dead endpoint is skipped with a growing backoff, so it sees few attempts
    // while the live one does the work.
    let secs = now().duration_since(began).as_secs_f64();
    assert!(to_dead <= 2 * (secs.log2().max(1.0) as usize + 2), "{to_dead} attempts at the dead endpoint in {secs} s");
    assert!(to_live > to_dead, "{to_live} vs {to_dead}");
    h.shut_down().await;
}

/// Runs ten texts (one worker, `max_retries` 1) through `pool` until every one has its
/// result, none failed; returns how long that took.
async fn ten_texts_succeed(pool: Arc<FakePool>, endpoints: &[&str]) -> Duration {
    let h = harness(AsyncBatch { workers: 1, max_retries: 1, ..cfg() }, pool, endpoints);
    let sink = Arc::new(FakeSink::default());
    let began = now();
    h.start("job", items(distinct(10)), sink.clone(), Duration::from_secs(600)).await;
    let p = h.settle("job").await;
    assert!(p.done && p.tally.ok == 10 && p.tally.failed == 0, "{p:?}");
    exactly_once(&sink, 10);
    h.shut_down().await;
    now().duration_since(began)
}

#[tokio::test(start_paused = true)]
async fn busy_answers_back_off_then_succeed_without_spending_attempts() {
    let (pool, _gate) = FakePool::new();
    pool.busy_first.store(5, Ordering::Relaxed);
    let took = ten_texts_succeed(pool.clone(), &["http://a"]).await;
    assert_eq!(pool.calls().len(), 6, "five 429s, then the answer");
    assert!(took >= 5 * BUSY_RETRY, "each 429 waits before the retry");
}

/// 503s (a pod not ready, restarting or shutting down) back off on another endpoint
/// and spend no attempt: with `max_retries` 1, five in a row still fail no text.
#[tokio::test(start_paused = true)]
async fn transient_answers_back_off_and_never_dead_letter_on_their_own() {
    let (pool, _gate) = FakePool::new();
    pool.failing_first.store(TRANSIENT_BUDGET as usize - 1, Ordering::Relaxed);
    let took = ten_texts_succeed(pool.clone(), &["http://a", "http://b"]).await;
    let calls = pool.calls();
    assert_eq!(calls.len(), TRANSIENT_BUDGET as usize, "five 503s, then the answer");
    assert!(calls.windows(2).all(|w| w[0].0 != w[1].0), "each retry goes to the other endpoint: {calls:?}");
    let backoff: Duration = (0..TRANSIENT_BUDGET - 1).map(|n| RETRY.delay(n)).sum();
    assert!(took >= backoff, "each 503 backs off longer");
}

/// A chunk reads its texts when it runs: a failed read is retried (the texts are not
/// at fault), and a source that changed under the batch fails it with `SourceChanged`.
#[tokio::test(start_paused = true)]
async fn texts_are_read_per_chunk_and_a_changed_source_fails_the_batch() {
    for (fail_first, changed_from, want) in [(4, usize::MAX, None), (0, 3, Some("SourceChanged"))] {
        let (pool, _gate) = FakePool::new();
        let h = harness(cfg(), pool, &["http://a"]);
        let sink = Arc::new(FakeSink::default());
        let items = distinct(500).into_iter().map(|text| Item { id: None, text }).collect();
        let texts = FlakyTexts { items, fail_first: AtomicUsize::new(fail_first), changed_from, reads: AtomicUsize::new(0) };
        h.start("job", Arc::new(texts), sink.clone(), Duration::from_secs(600)).await;
        let p = h.settle("job").await;
        assert_eq!(p.fatal.as_ref().map(|f| f.0), want, "{p:?}");
        if want.is_none() {
            assert!(p.done && p.tally.ok == 500, "{p:?}");
            exactly_once(&sink, 500);
        } else {
            assert!(sink.indices().len() < 500, "the batch stopped");
        }
        h.shut_down().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_failure_is_retried_and_commits_once() {
    let (pool, _gate) = FakePool::new();
    let h = harness(cfg(), pool, &["http://a"]);
    let sink = Arc::new(FakeSink { fail_first: AtomicUsize::new(4), ..Default::default() });
    h.start("job", items(distinct(120)), sink.clone(), Duration::from_secs(600)).await;
    let p = h.settle("job").await;
    assert!(p.done && p.tally.ok == 120, "{p:?}");
    exactly_once(&sink, 120);
    h.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn a_store_that_keeps_failing_fails_the_batch() {
    let (pool, _gate) = FakePool::new();
    let h = harness(cfg(), pool, &["http://a"]);
    let sink = Arc::new(FakeSink { fail_first: AtomicUsize::new(usize::MAX), ..Default::default() });
    h.start("job", items(distinct(10)), sink.clone(), Duration::from_secs(600)).await;
    let p = h.settle("job").await;
    let (reason, why) = p.fatal.clone().expect("the batch fails");
    assert!(reason == "ResultsUnwritable" && why.contains("unwritable"), "{p:?}");
    assert!(sink.indices().is_empty());
    h.shut_down().await;
}

/// A suspended batch sends nothing new; its chunks in flight finish and are committed.
#[tokio::test(start_paused = true)]
async fn a_suspended_batch_finishes_what_is_in_flight_and_sends_nothing_more() {
    let (h, pool, gate, sink) = hanging(full_chunks(2)).await;
    h.engine.suspend("job").await;
    let p = h.engine.progress("job").await.unwrap();
    assert!(p.suspended && p.in_flight == 2 && !p.done, "{p:?}");
    gate.send_replace(true);
    loop {
        let p = h.engine.progress("job").await.unwrap();
        if p.in_flight == 0 {
            assert_eq!(p.tally.done(), 2 * pool::FIRST_CHUNK, "the two chunks in flight were committed");
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!((pool.calls().len(), sink.indices().len()), (2, 2 * pool::FIRST_CHUNK), "nothing more was sent");
    h.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn a_removed_batch_stops_its_chunks_in_flight() {
    let (h, pool, gate, sink) = hanging(full_chunks(2)).await;
    h.engine.remove("job").await;
    assert!(h.engine.progress("job").await.is_none());
    gate.send_replace(true);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(sink.indices().is_empty(), "nothing is committed after the batch stopped");
    assert_eq!(pool.calls().len(), 2, "no new chunk is sent");
    h.shut_down().await;
}

/// Retaining the batches that still exist removes the others: one running (its chunks in
/// flight stop, nothing more is committed), one only admitted (its slot is freed, so a
/// start that comes after is ignored); the one kept runs on.
#[tokio::test(start_paused = true)]
async fn retain_removes_every_batch_but_those_named() {
    let (h, pool, gate, sink) = hanging(AsyncBatch { priority_medium_limit: 2, ..full_chunks(2) }).await;
    let kept = Arc::new(FakeSink::default());
    h.start("kept", items((0..10).map(|i| format!("kept {i}"))), kept.clone(), Duration::from_secs(600)).await;
    let later = now() + Duration::from_secs(600);
    assert_eq!(h.engine.admit("admitted", Priority::Medium, Tenant::new("t"), later).await, Err(QueueFull), "two slots taken");
    h.engine.retain(HashSet::from(["kept".to_string()])).await;
    assert!(h.engine.progress("job").await.is_none());
    assert_eq!(h.engine.admit("admitted", Priority::Medium, Tenant::new("t"), later).await, Ok(()), "the removed batch's slot is free");
    h.engine.retain(HashSet::from(["kept".to_string()])).await;
    h.begin("admitted", items(distinct(10)), Arc::new(FakeSink::default()), later).await;
    assert!(h.engine.progress("admitted").await.is_none(), "a start after its removal is ignored");
    gate.send_replace(true);
    assert!(h.settle("kept").await.done);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(sink.indices().is_empty(), "nothing is committed after the batch was removed");
    assert_eq!(kept.indices().len(), 10);
    assert_eq!(pool.calls().len(), 3, "the removed batch's two chunks in flight, then the kept batch's one");
    h.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn a_batch_past_its_deadline_expires_and_commits_nothing_more() {
    let (mut pool, _gate) = FakePool::new();
    Arc::get_mut(&mut pool).unwrap().delay = Duration::from_secs(1);
    let mut h = harness(full_chunks(1), pool.clone(), &["http://a"]);
    let sink = Arc::new(FakeSink::default());
    h.start("job", items(distinct(1000)), sink.clone(), Duration::from_millis(3500)).await;
    let p = h.settle("job").await;
    assert!(p.expired && !p.done, "{p:?}");
    assert_eq!(h.notified.recv().await.map(|o| o.name), Some("job".to_string()), "the controller is asked to reconcile");
    let committed = sink.indices().len();
    assert!((128..=256).contains(&committed), "about three chunks of 64 in 3.5 s: {committed}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(sink.indices().len(), committed, "nothing after the deadline");
    let p = h.engine.progress("job").await.unwrap();
    assert!(p.expired && p.tally.done() == committed);
    h.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn a_model_other_than_the_batch_asks_for_fails_it() {
    let (pool, _gate) = FakePool::new();
    let h = harness(cfg(), pool, &["http://a"]);
    let sink = Arc::new(FakeSink::default());
    h.engine.admit("job", Priority::High, Tenant::new("t"), now() + Duration::from_secs(60)).await.unwrap();
    let texts = items(distinct(10));
    let job = JobStart {
        id: "job".into(),
        object: ObjectRef::new("job").within("test"),
        remaining: vec![0..10],
        texts,
        committed: Tally::default(),
        sink: sink.clone(),
        max_batch: 1000,
        model: Some("distilbert".into()),
        deadline: now() + Duration::from_secs(60),
    };
    h.engine.start_job(job).await;
    let p = h.settle("job").await;
    let (reason, why) = p.fatal.clone().unwrap();
    assert!(reason == "ModelMismatch" && why.contains("\"fake\"") && why.contains("\"distilbert\""), "{p:?}");
    assert!(sink.indices().is_empty());
    h.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn new_endpoints_get_work_as_they_appear() {
    let (pool, _gate) = FakePool::new();
    let h = harness(full_chunks(1), pool.clone(), &[]);
    let sink = Arc::new(FakeSink::default());
    h.start("job", items(distinct(3000)), sink.clone(), Duration::from_secs(600)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(pool.calls().is_empty(), "no endpoint, no dispatch");
    h.endpoints.send_replace(vec!["http://a".into()]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.endpoints.send_replace(vec!["http://a".into(), "http://b".into()]);
    let p = h.settle("job").await;
    assert!(p.done);
    exactly_once(&sink, 3000);
    assert!(pool.calls().iter().any(|(e, _)| e == "http://b"), "the new endpoint was used");
    h.shut_down().await;
}

#[tokio::test(start_paused = true)]
async fn admission_is_limited_per_priority_and_freed_on_remove() {
    let (pool, _gate) = FakePool::new();
    let h = harness(AsyncBatch { priority_high_limit: 1, ..cfg() }, pool, &["http://a"]);
    let later = now() + Duration::from_secs(60);
    let t = || Tenant::new("t");
    assert_eq!(h.engine.admit("a", Priority::High, t(), later).await, Ok(()));
    assert_eq!(h.engine.admit("b", Priority::High, t(), later).await, Err(QueueFull));
    assert_eq!(h.engine.admit("c", Priority::Low, t(), later).await, Ok(()));
    h.engine.remove("a").await;
    assert_eq!(h.engine.admit("b", Priority::High, t(), later).await, Ok(()));
    h.shut_down().await;
}

/// The engine and every chunk task end on shutdown, even with requests hanging.
#[tokio::test(start_paused = true)]
async fn shutdown_drains_every_task() {
    let (pool, gate) = FakePool::new();
    gate.send_replace(false);
    let h = harness(cfg(), pool.clone(), &["http://a"]);
    h.start("job", items(distinct(100)), Arc::new(FakeSink::default()), Duration::from_secs(600)).await;
    while pool.calls().is_empty() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let tasks = h.tasks.clone();
    assert!(tasks.len() >= 2, "the engine and a chunk task");
    h.shut_down().await;
    assert!(tasks.is_empty());
}

/// A halted batch (cancel, expiry, delete) counts its chunks in flight until each has
/// seen the stop, so the controller's final write comes after every part; a chunk
/// hanging on its endpoint is abandoned at once and commits nothing.
#[tokio::test(start_paused = true)]
async fn a_halted_batch_reports_its_chunks_until_they_return_and_commits_nothing() {
    let (h, pool, gate, sink) = hanging(full_chunks(2)).await;
    assert_eq!(h.engine.progress("job").await.unwrap().in_flight, 2);
    h.engine.halt("job").await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let p = h.engine.progress("job").await.unwrap();
    assert_eq!(p.in_flight, 0, "the hanging chunks returned on the stop: {p:?}");
    gate.send_replace(true);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(sink.indices().is_empty(), "nothing is committed after the halt");
    assert_eq!(pool.calls().len(), 2, "no new chunk is sent");
    h.shut_down().await;
}

/// A part already being written when its batch expires still counts as in flight until
/// the write returns: the final status, written after, sees it.
#[tokio::test(start_paused = true)]
async fn a_part_being_written_at_expiry_is_waited_for() {
    let (pool, _gate) = FakePool::new();
    let h = harness(AsyncBatch { workers: 1, max_batch_size: 10, ..cfg() }, pool.clone(), &["http://a"]);
    let (store_gate, held) = watch::channel(false);
    let sink = Arc::new(FakeSink { gate: Some(held), ..FakeSink::default() });
    h.start("job", items(distinct(100)), sink.clone(), Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p = h.engine.progress("job").await.unwrap();
    // The endpoint is free once it answered, so several parts wait on the store.
    let writing = p.in_flight;
    assert!(p.expired && writing > 0, "the commits are still under way: {p:?}");
    store_gate.send_replace(true);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let p = h.engine.progress("job").await.unwrap();
    assert_eq!((p.in_flight, sink.indices().len()), (0, 10 * writing), "{p:?}");
    h.shut_down().await;
}
