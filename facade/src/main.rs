//! `kubesentiment-facade`: the brief's REST API, every job a `SentimentBatch`.
//! Stateless: run as many replicas as you like behind one Service.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use futures_util::TryStreamExt;
use inference_api::client::HttpPredictor;
use kube::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kubesentiment_core::cli::{Common, shutdown_on_signal};
use kubesentiment_core::config::ObjectStores;
use kubesentiment_core::crd::SentimentBatch;
use kubesentiment_core::endpoints;
use kubesentiment_facade::auth::{Gate, Keys, RateLimits};
use kubesentiment_facade::input::Limits;
use kubesentiment_facade::{self as facade, Facade};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Parser)]
#[command(version, about = "The batch sentiment REST API; every job is a SentimentBatch resource")]
struct Cli {
    #[command(flatten)]
    common: Common,
    /// Namespace of the jobs of keys that name none, and of every job without keys.
    #[arg(long, env = "KUBESENTIMENT_JOBS_NAMESPACE", default_value = "default")]
    namespace: String,
    /// API keys, `KEY[=NAMESPACE],…`. Unset: no authentication (local use only).
    #[arg(long, env = "KUBESENTIMENT_API_KEYS", hide_env_values = true, default_value = "")]
    api_keys: String,
    /// Requests per minute per API key (the brief's `max_requests_per_minute`).
    #[arg(long, env = "KUBESENTIMENT_RATE_LIMIT_PER_MINUTE", default_value_t = 1000)]
    max_requests_per_minute: u32,
    /// Requests in flight at once (the brief's `max_concurrent_users`).
    #[arg(long, env = "KUBESENTIMENT_MAX_CONCURRENT_USERS", default_value_t = 100)]
    max_concurrent_users: usize,
    /// Texts per request (the brief's `max_batch_size_per_request`).
    #[arg(long, env = "KUBESENTIMENT_MAX_BATCH_SIZE_PER_REQUEST", default_value_t = 1000)]
    max_batch_size_per_request: usize,
    /// Characters per text (the brief's `max_text_length`; at most 10,000).
    #[arg(long, env = "KUBESENTIMENT_MAX_TEXT_LENGTH", default_value_t = 10_000)]
    max_text_length: usize,
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    max_body_bytes: usize,
    #[arg(long, default_value_t = 1000)]
    max_page_size: usize,
    /// S3 buckets a job's `input_url` may name (`s3://BUCKET/KEY`), comma-separated; the
    /// operator reads them with its own store settings (`AWS_*`). Empty: no S3 input.
    #[arg(long, env = "KUBESENTIMENT_INPUT_BUCKETS", value_delimiter = ',')]
    input_buckets: Vec<String>,
    /// The S3 bucket uploads (`POST /api/v1/files`) go to, each tenant under its own
    /// prefix, with the `AWS_*` settings; the operator must read it with its own. Unset: no uploads.
    #[arg(long, env = "KUBESENTIMENT_FILES_BUCKET")]
    files_bucket: Option<String>,
    /// The largest upload, in bytes.
    #[arg(long, env = "KUBESENTIMENT_MAX_UPLOAD_BYTES", default_value_t = 1 << 30)]
    max_upload_bytes: u64,
    /// `spec.output` of submitted jobs (`s3://…`, `file:///…`); unset: ConfigMaps.
    #[arg(long, env = "KUBESENTIMENT_OUTPUT")]
    output: Option<String>,
    /// Seconds a finished job (and its results) is kept before the operator deletes it; 0 keeps jobs until deleted.
    #[arg(long, env = "KUBESENTIMENT_JOB_TTL_SECONDS", default_value_t = 86_400)]
    job_ttl_seconds: u32,
    /// 0 picks a free port; the address is logged.
    #[arg(long, env = "KUBESENTIMENT_PORT", default_value_t = 8000)]
    port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = cli.common.start().context("invalid configuration")?;
    let keys = Keys::parse(&cli.api_keys, &cli.namespace).map_err(anyhow::Error::msg).context("KUBESENTIMENT_API_KEYS")?;
    if !keys.enabled() {
        tracing::warn!("no API keys configured: every request is accepted");
    }
    let client = kubesentiment_core::client::infer().await.context("connecting to the Kubernetes API server")?;
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();

    // A watch cache per namespace the tenants use: each needs only a Role there.
    let mut caches = Vec::new();
    let mut watches = Vec::new();
    for namespace in keys.namespaces() {
        let api: Api<SentimentBatch> = Api::namespaced(client.clone(), &namespace);
        api.list(&kube::api::ListParams::default().limit(1)).await.with_context(|| {
            format!("listing SentimentBatches in {namespace}: is the CRD installed (crds/), and may the facade read them there?")
        })?;
        let (store, writer) = reflector::store();
        // The cache keeps jobs without their inline texts (a count stays).
        let jobs = watcher(api, watcher::Config::default()).map_ok(|ev| ev.modify(kubesentiment_core::status::strip_texts));
        watches.push(reflector(writer, jobs).default_backoff());
        caches.push((namespace, store));
    }
    let store = facade::Jobs::new(caches);
    for cache in watches {
        let jobs = store.clone();
        tasks.spawn(kubesentiment_core::watch::drive(cache, "SentimentBatches", stop.clone(), move |ev| jobs.delivered(ev)));
    }
    let endpoints = endpoints::watch(client.clone(), &cli.common.inference_service, &tasks, stop.clone());

    let facade = Arc::new(Facade {
        client: client.clone(),
        jobs: store.clone(),
        limits: Limits {
            max_texts: cli.max_batch_size_per_request,
            max_text_length: cli.max_text_length,
            max_timeout_seconds: cfg.max_timeout_seconds,
        },
        cfg,
        max_page_size: cli.max_page_size.max(1),
        output: cli.output,
        input_buckets: cli.input_buckets.into_iter().filter(|b| !b.is_empty()).collect(),
        files_bucket: cli.files_bucket.filter(|b| !b.is_empty()),
        max_upload_bytes: cli.max_upload_bytes,
        job_ttl_seconds: (cli.job_ttl_seconds > 0).then(|| cli.job_ttl_seconds.min(i32::MAX as u32) as i32),
        stores: ObjectStores::from_env(),
        endpoints: endpoints.urls.clone(),
        predictor: HttpPredictor::new(Duration::from_secs(30)),
        round_robin: Default::default(),
        last_tps: 0.into(),
        metrics: Default::default(),
        ready: false.into(),
        signing_secrets: Default::default(),
    });
    let gate = Arc::new(Gate::new(
        keys,
        RateLimits { max_requests_per_minute: cli.max_requests_per_minute, max_concurrent_users: cli.max_concurrent_users },
    ));
    {
        let (facade, stop) = (facade.clone(), stop.clone());
        tasks.spawn(async move {
            // Ready once both caches hold their first full list.
            let synced = async {
                let jobs = store.wait_until_ready().await;
                endpoints.synced().await;
                jobs
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                ok = synced => if ok { facade.ready.store(true, Ordering::Relaxed) },
            }
        });
    }

    let (listener, _) = cli.common.listen(cli.port).await.with_context(|| format!("binding {}:{}", cli.common.host, cli.port))?;
    tokio::spawn(shutdown_on_signal(stop.clone()));
    axum::serve(listener, facade::router(facade, gate, cli.max_body_bytes)).with_graceful_shutdown(stop.clone().cancelled_owned()).await?;
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}
