//! `kubesentiment-bench`: the feature brief's load test (`async_batch_performance_test.py`)
//! against a running stack. Clients submit jobs, follow each to its end and read every
//! result page; a synchronous baseline runs in the same process just before. The report
//! carries the brief's fields, latency quantiles, 429s and what the servers measured.

pub mod corpus;
pub mod report;
pub mod target;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use inference_api::metric_sums;
use kubesentiment_core::config::ObjectStores;
use kubesentiment_core::crd::Priority;
use kubesentiment_core::rest::JobState;

use self::corpus::Corpus;
use self::report::{Admission, Latencies, Quantiles, Rejections, Report, Saturation, ServerSide};
use self::target::{Fail, Follow, Kube, Rest, Target, Timings};

/// The brief's load-test scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Scenario {
    /// Mixed batches of 10–500 texts, 10 clients, 60 s.
    Standard,
    /// Batches of 100–1,000 texts, 50 clients, 60 s.
    HighThroughput,
    /// Batches of 10–50 texts, 4 clients, 30 s.
    LowLatency,
    /// Batches of 500–1,000 texts; 200 clients joining one by one over the first half of
    /// the run, to find where the stack answers 429.
    StressTest,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Standard => "standard",
            Scenario::HighThroughput => "high_throughput",
            Scenario::LowLatency => "low_latency",
            Scenario::StressTest => "stress_test",
        }
    }

    /// Batch sizes, clients and seconds of submitting.
    fn defaults(self) -> ((usize, usize), usize, f64) {
        match self {
            Scenario::Standard => ((10, 500), 10, 60.0),
            Scenario::HighThroughput => ((100, 1000), 50, 60.0),
            Scenario::LowLatency => ((10, 50), 4, 30.0),
            Scenario::StressTest => ((500, 1000), 200, 60.0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// The REST facade at `--base-url`.
    Rest,
    /// SentimentBatch objects through the Kubernetes API (KUBECONFIG), as `kubectl apply` would.
    Kube,
}

#[derive(Debug, Parser)]
#[command(name = "kubesentiment-bench", version, about = "Load-tests a running KubeSentiment stack with the brief's scenarios")]
pub struct Args {
    /// The REST facade.
    #[arg(long, env = "KUBESENTIMENT_API", default_value = "http://127.0.0.1:8000")]
    pub base_url: String,
    #[arg(long, env = "KUBESENTIMENT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    #[arg(long, value_enum, default_value = "rest")]
    pub via: Via,
    /// Where `--via kube` creates its SentimentBatches.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    #[arg(long, value_enum, default_value = "standard")]
    pub scenario: Scenario,
    /// Seconds during which clients submit new jobs (the scenario's default); jobs still
    /// running then are followed to their end.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Clients, each submitting one job at a time (the scenario's default).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Submit exactly this many jobs, however long it takes, instead of for `--duration`.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Texts per job: `N`, or `MIN-MAX` drawn uniformly (the scenario's default).
    #[arg(long, value_parser = parse_sizes)]
    pub batch_size: Option<(usize, usize)>,
    #[arg(long, value_parser = parse_priority, default_value = "medium")]
    pub priority: Priority,
    #[arg(long, value_enum, default_value = "poll")]
    pub follow: Follow,
    /// Seconds between status reads with `--follow poll`.
    #[arg(long, default_value_t = 0.5)]
    pub poll_interval: f64,
    /// Results per page read.
    #[arg(long, default_value_t = 1000)]
    pub page_size: usize,
    /// Texts to send: JSON Lines, CSV (a `text` column) or one per line. Default: built-in
    /// review sentences, none repeated within a run.
    #[arg(long)]
    pub texts: Option<PathBuf>,
    /// Batches sent one by one through the synchronous endpoint for the baseline (0: no baseline).
    #[arg(long, default_value_t = 5)]
    pub baseline_batches: usize,
    /// Most texts per synchronous request; larger baseline batches are split.
    #[arg(long, default_value_t = 1000)]
    pub sync_request_texts: usize,
    /// Inference servers whose /metrics give the server-side batch size (space-separated
    /// in the variable); `--via kube` also sends its baseline there.
    #[arg(long, env = "INFERENCE_URLS", value_delimiter = ' ')]
    pub inference_url: Vec<String>,
    /// The operator's HTTP endpoint, for chunk sizes, status writes and memory.
    #[arg(long, env = "OPERATOR_URL")]
    pub operator_url: Option<String>,
    /// Seconds to wait, after submitting stops, for jobs still running.
    #[arg(long, default_value_t = 600.0)]
    pub drain_timeout: f64,
    /// Write the whole report here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// With `--via kube`, leave the run's SentimentBatches in place (default: delete them).
    #[arg(long)]
    pub keep: bool,
}

fn parse_sizes(s: &str) -> Result<(usize, usize), String> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let parse = |v: &str| v.trim().parse::<usize>().map_err(|e| format!("{v:?}: {e}"));
    let (lo, hi) = (parse(lo)?, parse(hi)?);
    if lo == 0 || lo > hi {
        return Err(format!("{s:?}: need 1 <= MIN <= MAX"));
    }
    Ok((lo, hi))
}

fn parse_priority(s: &str) -> Result<Priority, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| format!("{s:?}: use high, medium or low"))
}

/// Everything the clients share and record into.
struct Run {
    target: Target,
    corpus: Corpus,
    args: Args,
    sizes: (usize, usize),
    start: Instant,
    /// Submitting stops here.
    submit_until: Option<Instant>,
    claimed: AtomicUsize,
    submitted: AtomicUsize,
    completed: AtomicUsize,
    failed: AtomicUsize,
    in_flight: AtomicUsize,
    clients_active: AtomicUsize,
    texts_submitted: AtomicUsize,
    texts_completed: AtomicUsize,
    samples: Mutex<Samples>,
    /// Jobs submitted and not yet followed to their end.
    live: Mutex<std::collections::HashSet<String>>,
}

#[derive(Default)]
struct Samples {
    submit: Vec<f64>,
    status: Vec<f64>,
    results: Vec<f64>,
    end_to_end: Vec<f64>,
    admitted_at: Vec<f64>,
    admission_wait: Vec<f64>,
    running: f64,
    rejected: BTreeMap<String, usize>,
    first_429: Option<Saturation>,
    errors: BTreeMap<String, usize>,
}

impl Run {
    fn samples(&self) -> std::sync::MutexGuard<'_, Samples> {
        self.samples.lock().expect("the lock is never poisoned. This is a bug.")
    }

    fn live(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.live.lock().expect("the lock is never poisoned. This is a bug.")
    }

    /// Claims the next job, if the run still submits.
    fn may_submit(&self) -> bool {
        if self.submit_until.is_some_and(|t| Instant::now() >= t) {
            return false;
        }
        match self.args.jobs {
            Some(n) => self.claimed.fetch_add(1, Ordering::Relaxed) < n,
            None => true,
        }
    }

    fn unclaim(&self) {
        self.claimed.fetch_sub(1, Ordering::Relaxed);
    }

    fn error(&self, what: &str, e: &anyhow::Error) {
        *self.samples().errors.entry(format!("{what}: {e:#}")).or_default() += 1;
    }
}

/// Per-job recorder handed to the target: admission is timed from this job's submit.
struct JobTimings<'a> {
    run: &'a Run,
    submitted: Instant,
}

impl Timings for JobTimings<'_> {
    fn status(&self, took: Duration) {
        self.run.samples().status.push(took.as_secs_f64());
    }
    fn results(&self, took: Duration) {
        self.run.samples().results.push(took.as_secs_f64());
    }
    fn rejected(&self, endpoint: &str, kind: &str) {
        let run = self.run;
        let mut s = run.samples();
        *s.rejected.entry(format!("{endpoint}:{kind}")).or_default() += 1;
        if s.first_429.is_none() {
            s.first_429 = Some(Saturation {
                after_seconds: run.start.elapsed().as_secs_f64(),
                kind: format!("{endpoint}:{kind}"),
                clients_active: run.clients_active.load(Ordering::Relaxed),
                jobs_in_flight: run.in_flight.load(Ordering::Relaxed),
                jobs_submitted: run.submitted.load(Ordering::Relaxed),
            });
        }
    }
    fn admitted(&self) {
        let mut s = self.run.samples();
        s.admitted_at.push(self.run.start.elapsed().as_secs_f64());
        s.admission_wait.push(self.submitted.elapsed().as_secs_f64());
    }
}

/// One client: submit a job, follow it to its end, read its results; again until the
/// run stops submitting.
async fn client(run: Arc<Run>, n: usize, join_after: Duration) {
    tokio::time::sleep(join_after).await;
    run.clients_active.fetch_add(1, Ordering::Relaxed);
    let mut rng = StdRng::seed_from_u64(run.args.seed.wrapping_mul(1_000_003).wrapping_add(n as u64));
    // A client gives up after this many submits in a row fail for a reason other than 429.
    let mut failures_left = 5;
    while failures_left > 0 && run.may_submit() {
        let size = rng.random_range(run.sizes.0..=run.sizes.1);
        let texts = run.corpus.take(size);
        let began = Instant::now();
        let timings = JobTimings { run: &run, submitted: began };
        let id = match run.target.submit(texts, run.args.priority).await {
            Ok(id) => id,
            Err(Fail::Busy { kind, retry_after }) => {
                timings.rejected("submit", &kind);
                run.unclaim();
                tokio::time::sleep(retry_after.min(Duration::from_secs(5))).await;
                continue;
            }
            Err(Fail::Other(e)) => {
                run.error("submit", &e);
                run.unclaim();
                failures_left -= 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        failures_left = 5;
        run.samples().submit.push(began.elapsed().as_secs_f64());
        run.submitted.fetch_add(1, Ordering::Relaxed);
        run.texts_submitted.fetch_add(size, Ordering::Relaxed);
        run.in_flight.fetch_add(1, Ordering::Relaxed);
        run.live().insert(id.clone());
        let outcome = run.target.finish(&id, &timings).await;
        run.live().remove(&id);
        run.in_flight.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Ok(o) if o.state == JobState::Completed && o.results == o.total && o.total == size => {
                let mut s = run.samples();
                s.end_to_end.push(began.elapsed().as_secs_f64());
                s.running += o.running.as_secs_f64();
                drop(s);
                run.completed.fetch_add(1, Ordering::Relaxed);
                run.texts_completed.fetch_add(size, Ordering::Relaxed);
            }
            Ok(o) => {
                run.samples().running += o.running.as_secs_f64();
                let why = anyhow::anyhow!("job ended {} with {} of {} results ({} sent)", o.state.as_str(), o.results, o.total, size);
                run.error("job", &why);
                run.failed.fetch_add(1, Ordering::Relaxed);
            }
            Err(Fail::Other(e)) => {
                run.error("following a job", &e);
                run.failed.fetch_add(1, Ordering::Relaxed);
            }
            Err(Fail::Busy { .. }) => unreachable!("busy answers are retried"),
        }
    }
    run.clients_active.fetch_sub(1, Ordering::Relaxed);
}

/// Seconds per batch through the synchronous endpoint, one request after another.
async fn baseline(run: &Run) -> Result<(Vec<f64>, usize)> {
    let mut rng = StdRng::seed_from_u64(run.args.seed ^ 0x5eed);
    let (mut times, mut texts_sent) = (Vec::new(), 0);
    for _ in 0..run.args.baseline_batches {
        let texts = run.corpus.take(rng.random_range(run.sizes.0..=run.sizes.1));
        let began = Instant::now();
        for chunk in texts.chunks(run.args.sync_request_texts.max(1)) {
            loop {
                match run.target.predict(chunk).await {
                    Ok(()) => break,
                    Err(Fail::Busy { retry_after, .. }) => tokio::time::sleep(retry_after.min(Duration::from_secs(5))).await,
                    Err(Fail::Other(e)) => return Err(e.context("the synchronous baseline")),
                }
            }
        }
        times.push(began.elapsed().as_secs_f64());
        texts_sent += texts.len();
    }
    Ok((times, texts_sent))
}

async fn scrape(http: &reqwest::Client, urls: &[String]) -> BTreeMap<String, f64> {
    let mut total = BTreeMap::new();
    for url in urls {
        let Ok(resp) = http.get(format!("{url}/metrics")).send().await else { continue };
        for (k, v) in metric_sums(&resp.text().await.unwrap_or_default()) {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

/// `name` grew by this much between the two scrapes; `None` if it was never seen.
fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, name: &str) -> Option<f64> {
    Some(after.get(name)? - before.get(name).copied().unwrap_or(0.0))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

pub async fn run(args: Args) -> Result<Report> {
    let (default_sizes, default_concurrency, default_duration) = args.scenario.defaults();
    let sizes = args.batch_size.unwrap_or(default_sizes);
    let concurrency = args.concurrency.unwrap_or(default_concurrency).max(1);
    let duration = args.duration.unwrap_or(default_duration);
    if !(duration > 0.0 && args.poll_interval >= 0.0 && args.drain_timeout >= 0.0) {
        bail!("--duration must be positive, --poll-interval and --drain-timeout not negative");
    }
    let corpus = match &args.texts {
        Some(path) => Corpus::load(path)?,
        None => Corpus::built_in(rand::rng().random_range(0..corpus::BUILT_IN_SIZE)),
    };
    let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(120)).build()?;
    let base = args.base_url.trim_end_matches('/').to_string();
    let inference: Vec<String> = args.inference_url.iter().filter(|u| !u.is_empty()).map(|u| u.trim_end_matches('/').to_string()).collect();
    let target = match args.via {
        Via::Rest => Target::Rest(Rest {
            http: http.clone(),
            base: base.clone(),
            key: args.api_key.clone(),
            follow: args.follow,
            poll_interval: Duration::from_secs_f64(args.poll_interval),
            page_size: args.page_size,
        }),
        Via::Kube => {
            let client = kubesentiment_core::client::infer().await.context("--via kube needs a kubeconfig (KUBECONFIG)")?;
            let run = uuid::Uuid::new_v4().simple().to_string()[..12].to_string();
            Target::Kube(Kube::new(client, args.namespace.clone(), run, ObjectStores::from_env(), inference.clone(), args.page_size))
        }
    };
    let operator: Vec<String> = args.operator_url.iter().map(|u| u.trim_end_matches('/').to_string()).collect();

    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").expect("a valid template. This is a bug."));
    bar.enable_steady_tick(Duration::from_millis(200));

    let mut run = Run {
        target,
        corpus,
        sizes,
        start: Instant::now(),
        submit_until: None,
        claimed: AtomicUsize::new(0),
        submitted: AtomicUsize::new(0),
        completed: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        clients_active: AtomicUsize::new(0),
        texts_submitted: AtomicUsize::new(0),
        texts_completed: AtomicUsize::new(0),
        samples: Mutex::default(),
        live: Mutex::default(),
        args,
    };
    bar.set_message(format!("synchronous baseline: {} batches", run.args.baseline_batches));
    let (sync_times, sync_texts) = baseline(&run).await?;

    let before_inference = scrape(&http, &inference).await;
    let before_operator = scrape(&http, &operator).await;
    let started_at = jiff::Timestamp::now().to_string();
    run.start = Instant::now();
    run.submit_until = run.args.jobs.is_none().then(|| run.start + Duration::from_secs_f64(duration));
    let hard_stop = run.start + Duration::from_secs_f64(if run.args.jobs.is_some() { 0.0 } else { duration } + run.args.drain_timeout);
    let ramp = if run.args.scenario == Scenario::StressTest { duration / 2.0 / concurrency as f64 } else { 0.0 };
    let run = Arc::new(run);
    let mut clients = tokio::task::JoinSet::new();
    for n in 0..concurrency {
        clients.spawn(client(run.clone(), n, Duration::from_secs_f64(ramp * n as f64)));
    }

    let mut peak_rss: Option<f64> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let all_done = async { while clients.join_next().await.is_some() {} };
    let mut all_done = std::pin::pin!(all_done);
    let finished = loop {
        tokio::select! {
            _ = &mut all_done => break true,
            _ = tokio::time::sleep_until(hard_stop.into()) => break false,
            _ = tick.tick() => {
                if let Some(rss) = scrape(&http, &operator).await.get("process_resident_memory_bytes") {
                    peak_rss = Some(peak_rss.map_or(*rss, |p: f64| p.max(*rss)));
                }
                let rejected: usize = run.samples().rejected.values().sum();
                bar.set_message(format!(
                    "{} clients · submitted {} · completed {} · in flight {} · failed {} · 429 {}",
                    run.clients_active.load(Ordering::Relaxed),
                    run.submitted.load(Ordering::Relaxed),
                    run.completed.load(Ordering::Relaxed),
                    run.in_flight.load(Ordering::Relaxed),
                    run.failed.load(Ordering::Relaxed),
                    rejected,
                ));
            }
        }
    };
    let wall = run.start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let unfinished = if finished { 0 } else { run.in_flight.load(Ordering::Relaxed) };
    // Jobs the drain timeout cut off are cancelled, so they stop loading the stack.
    let live: Vec<String> = run.live().drain().collect();
    for id in &live {
        if let Err(e) = run.target.cancel(id).await {
            eprintln!("could not cancel job {id}: {e:#}");
        }
    }
    let after_inference = scrape(&http, &inference).await;
    let after_operator = scrape(&http, &operator).await;

    let s = std::mem::take(&mut *run.samples());
    let submitted = run.submitted.load(Ordering::Relaxed);
    let completed = run.completed.load(Ordering::Relaxed);
    let texts_completed = run.texts_completed.load(Ordering::Relaxed);
    let mean = |v: &[f64]| if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
    let avg_response = mean(&s.submit);
    let baseline_sync = (!sync_times.is_empty()).then(|| mean(&sync_times));
    let sync_tps = (!sync_times.is_empty()).then(|| sync_texts as f64 / sync_times.iter().sum::<f64>());
    let tps = texts_completed as f64 / wall;
    let admission = (!s.admitted_at.is_empty()).then(|| Admission {
        time_to_admit_all_seconds: s.admitted_at.iter().copied().fold(0.0, f64::max),
        wait: Quantiles::of(&s.admission_wait),
        running_job_seconds: s.running,
    });
    let passes = delta(&before_inference, &after_inference, "inference_batch_size_count");
    let chunks = delta(&before_operator, &after_operator, "kubesentiment_chunk_texts_count");
    let writes = delta(&before_operator, &after_operator, "kubesentiment_status_writes_total");
    let report = Report {
        scenario: run.args.scenario.name().into(),
        via: format!("{:?}", run.args.via).to_lowercase(),
        follow: match (run.args.via, run.args.follow) {
            (Via::Kube, _) => "watch".into(),
            (_, Follow::Poll) => "poll".into(),
            (_, Follow::Ws) => "ws".into(),
        },
        target: run.target.describe(),
        started_at,
        concurrency,
        batch_sizes: [sizes.0, sizes.1],
        test_duration_seconds: wall,
        requests_submitted: submitted,
        requests_completed: completed,
        success_rate: if submitted == 0 { 0.0 } else { completed as f64 / submitted as f64 },
        avg_response_time_seconds: avg_response,
        avg_end_to_end_seconds: mean(&s.end_to_end),
        baseline_sync_time_seconds: baseline_sync,
        improvement_percent: baseline_sync.filter(|_| avg_response > 0.0).map(|b| (1.0 - avg_response / b) * 100.0),
        throughput_ratio: baseline_sync.filter(|_| avg_response > 0.0).map(|b| b / avg_response),
        requests_failed: run.failed.load(Ordering::Relaxed),
        requests_unfinished: unfinished,
        texts_submitted: run.texts_submitted.load(Ordering::Relaxed),
        texts_completed,
        texts_per_second_end_to_end: tps,
        sync_texts_per_second: sync_tps,
        speedup_over_sync: sync_tps.filter(|v| *v > 0.0).map(|v| tps / v),
        latency: Latencies {
            submit: Quantiles::of(&s.submit),
            status: Quantiles::of(&s.status),
            results: Quantiles::of(&s.results),
            end_to_end: Quantiles::of(&s.end_to_end),
            sync_batch: Quantiles::of(&sync_times),
        },
        rejected: Rejections { total_429: s.rejected.values().sum(), by_kind: s.rejected.clone(), first: s.first_429.clone() },
        errors: s.errors.clone(),
        admission,
        server: ServerSide {
            inference_texts_per_pass: ratio(delta(&before_inference, &after_inference, "inference_batch_size_sum"), passes),
            inference_padded_tokens_per_pass: ratio(delta(&before_inference, &after_inference, "inference_batch_tokens_sum"), passes),
            operator_texts_per_chunk: ratio(delta(&before_operator, &after_operator, "kubesentiment_chunk_texts_sum"), chunks),
            operator_status_writes: writes,
            status_writes_per_running_job_second: ratio(writes, Some(s.running)),
            operator_api_reads_per_job: ratio(
                delta(&before_operator, &after_operator, "kubesentiment_api_reads_total"),
                Some(completed as f64),
            ),
            operator_api_writes_per_job: ratio(
                delta(&before_operator, &after_operator, "kubesentiment_api_writes_total"),
                Some(completed as f64),
            ),
            operator_api_write_bytes_per_job: ratio(
                delta(&before_operator, &after_operator, "kubesentiment_api_write_bytes_total"),
                Some(completed as f64),
            ),
            operator_cache_hits: delta(&before_operator, &after_operator, "kubesentiment_cache_hits_total"),
            operator_peak_rss_bytes: peak_rss,
        },
    };
    if !run.args.keep
        && let Err(e) = run.target.clean_up().await
    {
        eprintln!("could not delete the run's SentimentBatches: {e:#}");
    }
    if let Some(path) = &run.args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_parse_as_one_or_a_range() {
        assert_eq!(parse_sizes("10"), Ok((10, 10)));
        assert_eq!(parse_sizes("100-1000"), Ok((100, 1000)));
        for bad in ["0", "50-10", "x", "1-", ""] {
            assert!(parse_sizes(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_priority("high"), Ok(Priority::High));
        assert!(parse_priority("urgent").is_err());
    }

    #[test]
    fn deltas_between_scrapes() {
        let m = metric_sums("h_sum 10\nh_count 4\n");
        assert_eq!(delta(&BTreeMap::from([("h_sum".into(), 4.0)]), &m, "h_sum"), Some(6.0));
        assert_eq!(delta(&m, &m, "absent"), None);
    }

    #[test]
    fn every_scenario_parses_under_the_briefs_name() {
        for (name, s) in [
            ("standard", Scenario::Standard),
            ("high_throughput", Scenario::HighThroughput),
            ("low_latency", Scenario::LowLatency),
            ("stress_test", Scenario::StressTest),
        ] {
            let args = Args::try_parse_from(["bench", "--scenario", name]).unwrap();
            assert_eq!((args.scenario, args.scenario.name()), (s, name));
        }
    }
}
