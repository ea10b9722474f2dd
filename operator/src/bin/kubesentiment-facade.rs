//! `kubesentiment-facade`: the brief's REST API, every job a `SentimentBatch`.
//! Stateless: run as many replicas as you like behind one Service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context as _, bail};
use clap::Parser;
use futures_util::StreamExt;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use kubesentiment_operator::config::{AsyncBatch, Overrides};
use kubesentiment_operator::crd::SentimentBatch;
use kubesentiment_operator::facade::auth::{Gate, Keys, RateLimits};
use kubesentiment_operator::facade::input::Limits;
use kubesentiment_operator::facade::{self, Facade};
use kubesentiment_operator::{endpoints, http};

#[derive(Parser)]
#[command(version, about = "The batch sentiment REST API; every job is a SentimentBatch resource")]
struct Cli {
    /// YAML file with the `async_batch` settings (queue limits, timeouts); env and flags override it.
    #[arg(long, env = "KUBESENTIMENT_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
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
    /// `spec.output` of submitted jobs (`s3://…`, `file:///…`); unset: ConfigMaps.
    #[arg(long, env = "KUBESENTIMENT_OUTPUT")]
    output: Option<String>,
    /// The inference Service, as NAMESPACE/NAME, for `POST /api/v1/predict`.
    #[arg(long, env = "KUBESENTIMENT_INFERENCE_SERVICE", default_value = "kubesentiment-system/inference-server")]
    inference_service: String,
    #[arg(long, env = "KUBESENTIMENT_HOST", default_value = "0.0.0.0")]
    host: String,
    /// 0 picks a free port; the address is logged.
    #[arg(long, env = "KUBESENTIMENT_PORT", default_value_t = 8000)]
    port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    http::init_tracing();
    let cli = Cli::parse();
    let cfg = AsyncBatch::load(cli.config.as_deref(), &cli.overrides).context("invalid configuration")?;
    let Some((svc_ns, svc_name)) = cli.inference_service.split_once('/') else {
        bail!("--inference-service must be NAMESPACE/NAME, not {:?}", cli.inference_service);
    };
    let keys = Keys::parse(&cli.api_keys, &cli.namespace).map_err(anyhow::Error::msg).context("KUBESENTIMENT_API_KEYS")?;
    if !keys.enabled() {
        tracing::warn!("no API keys configured: every request is accepted");
    }
    let client = Client::try_default().await.context("connecting to the Kubernetes API server")?;
    let stop = CancellationToken::new();

    // One watch cache over the namespaces the tenants use.
    let namespaces = keys.namespaces();
    let api: Api<SentimentBatch> = match namespaces.as_slice() {
        [one] => Api::namespaced(client.clone(), one),
        _ => Api::all(client.clone()),
    };
    api.list(&kube::api::ListParams::default().limit(1)).await.context("listing SentimentBatches: is the CRD installed (crds/)?")?;
    let (store, writer) = reflector::store();
    let cache = reflector(writer, watcher(api, watcher::Config::default())).default_backoff();

    let facade = Arc::new(Facade {
        client: client.clone(),
        jobs: store.clone(),
        cfg,
        limits: Limits {
            max_texts: cli.max_batch_size_per_request,
            max_text_length: cli.max_text_length,
            max_timeout_seconds: AsyncBatch::default().max_timeout_seconds,
        },
        max_page_size: cli.max_page_size.max(1),
        output: cli.output,
        endpoints: endpoints::watch(client, svc_ns, svc_name, stop.clone()),
        http: reqwest::Client::builder()
            // hickory resolves `*.localhost` to loopback (RFC 6761), as e2e/up.sh registers endpoints.
            .hickory_dns(true)
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?,
        next_endpoint: 0.into(),
        last_tps: 0.into(),
        metrics: Default::default(),
        ready: false.into(),
    });
    let gate = Arc::new(Gate::new(
        keys,
        RateLimits { max_requests_per_minute: cli.max_requests_per_minute, max_concurrent_users: cli.max_concurrent_users },
    ));

    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut cache = std::pin::pin!(cache);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    ev = cache.next() => match ev {
                        None => break,
                        Some(Err(e)) => tracing::warn!(error = %e, "watching SentimentBatches"),
                        Some(Ok(_)) => {}
                    },
                }
            }
        });
    }
    {
        let facade = facade.clone();
        tokio::spawn(async move {
            if store.wait_until_ready().await.is_ok() {
                facade.ready.store(true, Ordering::Relaxed);
            }
        });
    }

    let listener =
        tokio::net::TcpListener::bind((cli.host.as_str(), cli.port)).await.with_context(|| format!("binding {}:{}", cli.host, cli.port))?;
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    eprintln!("listening on {addr}");
    tokio::spawn(http::shutdown_on_signal(stop.clone()));
    axum::serve(listener, facade::router(facade, gate, cli.max_body_bytes)).with_graceful_shutdown(stop.cancelled_owned()).await?;
    Ok(())
}
