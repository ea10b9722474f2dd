//! `kubesentiment-operator`: loads settings, serves health and metrics, waits to lead,
//! then runs the engine and the controller until SIGTERM or the lease is lost.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context as _, bail};
use clap::Parser;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use kubesentiment_operator::config::{AsyncBatch, Overrides};
use kubesentiment_operator::controller::{self, Context};
use kubesentiment_operator::crd::SentimentBatch;
use kubesentiment_operator::endpoints;
use kubesentiment_operator::engine::Engine;
use kubesentiment_operator::http::{self, Health};
use kubesentiment_operator::metrics::Metrics;

#[derive(Parser)]
#[command(version, about = "Reconciles SentimentBatch resources: schedules their texts onto inference endpoints and writes results")]
struct Cli {
    /// YAML file with the `async_batch` settings; env and flags override it.
    #[arg(long, env = "KUBESENTIMENT_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
    /// Only reconcile batches in this namespace (default: all namespaces).
    #[arg(long, env = "KUBESENTIMENT_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// The inference Service, as NAMESPACE/NAME, whose EndpointSlices list the endpoints.
    #[arg(long, env = "KUBESENTIMENT_INFERENCE_SERVICE", default_value = "kubesentiment-system/inference-server")]
    inference_service: String,
    #[arg(long, env = "KUBESENTIMENT_HOST", default_value = "0.0.0.0")]
    host: String,
    /// Port of /metrics and /health (0 picks a free one; the address is logged).
    #[arg(long, env = "KUBESENTIMENT_PORT", default_value_t = 8081)]
    port: u16,
    /// Namespace of the leader-election Lease (default: the watch namespace, else POD_NAMESPACE, else kubesentiment-system).
    #[arg(long, env = "KUBESENTIMENT_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    #[arg(long, default_value = "kubesentiment-operator")]
    lease_name: String,
    /// Seconds a leader's lease lasts without renewal; a standby takes over after it.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// This replica's identity in the Lease (default: POD_NAME, else a random id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    http::init_tracing();
    let cli = Cli::parse();
    let cfg = AsyncBatch::load(cli.config.as_deref(), &cli.overrides).context("invalid configuration")?;
    let Some((svc_ns, svc_name)) = cli.inference_service.split_once('/') else {
        bail!("--inference-service must be NAMESPACE/NAME, not {:?}", cli.inference_service);
    };
    let client = Client::try_default().await.context("connecting to the Kubernetes API server")?;
    let metrics = Metrics::new(&cfg);
    let health = Arc::new(Health { metrics: metrics.clone(), ready: false.into(), leader: false.into() });

    let stop = CancellationToken::new();
    let listener =
        tokio::net::TcpListener::bind((cli.host.as_str(), cli.port)).await.with_context(|| format!("binding {}:{}", cli.host, cli.port))?;
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    eprintln!("listening on {addr}");
    let server = axum::serve(listener, http::router(health.clone())).with_graceful_shutdown(stop.clone().cancelled_owned());
    tokio::spawn(async move { server.await });
    tokio::spawn(http::shutdown_on_signal(stop.clone()));

    let batches: Api<SentimentBatch> = match &cli.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    batches.list(&kube::api::ListParams::default().limit(1)).await.context("listing SentimentBatches: is the CRD installed (crds/)?")?;
    health.ready.store(true, Ordering::Relaxed);
    if !cfg.enabled {
        tracing::warn!("async_batch.enabled is false: not reconciling");
        stop.cancelled().await;
        return Ok(());
    }

    let lease_ns = cli
        .lease_namespace
        .or_else(|| cli.watch_namespace.clone())
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "kubesentiment-system".into());
    let identity = cli.identity.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let lease = LeaseManagerBuilder::new(client.clone(), &cli.lease_name)
        .with_namespace(&lease_ns)
        .with_identity(&identity)
        .with_duration(cli.lease_duration_seconds.max(2))
        .with_grace((cli.lease_duration_seconds / 3).max(1))
        .build()
        .await
        .context("setting up leader election")?;
    let (mut leading, lease_task) = lease.watch().await;
    tracing::info!(%identity, lease = %format!("{lease_ns}/{}", cli.lease_name), "waiting to lead");
    tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        r = leading.wait_for(|l| *l) => { r.context("leader election stopped")?; }
    }
    health.leader.store(true, Ordering::Relaxed);
    tracing::info!(%identity, "leading");
    eprintln!("leading as {identity}");

    let eps = endpoints::watch(client.clone(), svc_ns, svc_name, stop.clone());
    let (notify_tx, notify_rx) = mpsc::channel(1024);
    let engine = Engine::start(cfg.clone(), metrics.clone(), eps, notify_tx, stop.clone());
    let ctx = Arc::new(Context::new(client, engine, cfg, metrics, identity));
    let controller = tokio::spawn(controller::run(ctx, batches, notify_rx, stop.clone()));

    // Leadership lost: stop dispatching at once and exit, so the pod restarts as a standby.
    let lost = tokio::select! {
        _ = stop.cancelled() => false,
        _ = leading.wait_for(|l| !*l) => true,
    };
    stop.cancel();
    let _ = controller.await;
    drop(leading);
    let _ = lease_task.await;
    if lost {
        bail!("lost the leader lease");
    }
    Ok(())
}
