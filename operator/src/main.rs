//! `kubesentiment-operator`: loads settings, serves health and metrics, waits to lead,
//! then runs the engine and the controller until SIGTERM or the lease is lost.
//!
//! One shutdown tree: the signal (or a lost lease) cancels `stop`; the controller, the
//! engine, every chunk task, the endpoint watch and the HTTP server all hang off it and
//! are tracked, and `main` returns only once every one of them has ended (bounded).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use kubesentiment_core::cli::{Common, shutdown_on_signal};
use kubesentiment_core::config::{AsyncBatch, ObjectStores};
use kubesentiment_core::crd::SentimentBatch;
use kubesentiment_core::endpoints;
use kubesentiment_operator::autoscaler::{self, AutoscaleArgs, Capacity, Scaler};
use kubesentiment_operator::controller::{self, Context};
use kubesentiment_operator::engine::{self, Engine, Wiring};
use kubesentiment_operator::fence;
use kubesentiment_operator::http::{self, Health};
use kubesentiment_operator::metrics::Metrics;
use kubesentiment_operator::notify;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long shutdown waits for tasks to end.
const DRAIN: Duration = Duration::from_secs(20);

#[derive(Parser)]
#[command(version, about = "Reconciles SentimentBatch resources: schedules their texts onto inference endpoints and writes results")]
struct Cli {
    #[command(flatten)]
    common: Common,
    /// Only reconcile batches in this namespace (default: all namespaces).
    #[arg(long, env = "KUBESENTIMENT_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Port of /metrics and /health (0 picks a free one; the address is logged).
    #[arg(long, env = "KUBESENTIMENT_PORT", default_value_t = 8081)]
    port: u16,
    /// Namespace of the leader-election Lease (default: the watch namespace, else POD_NAMESPACE, else kubesentiment-system).
    #[arg(long, env = "KUBESENTIMENT_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    #[arg(long, env = "POD_NAMESPACE", hide = true)]
    pod_namespace: Option<String>,
    #[arg(long, default_value = "kubesentiment-operator")]
    lease_name: String,
    /// Seconds a leader's lease lasts without renewal; a standby takes over after it.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// This replica's identity in the Lease (default: POD_NAME, else a random id).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Where completion callbacks (`spec.notify.url`) may go: `public` (any public
    /// address), CIDRs (`10.0.0.0/8`), host names (`hooks.example.com`, `*.example.com`),
    /// comma-separated. Private and loopback addresses only where a CIDR or name allows
    /// them; empty: no callbacks.
    #[arg(long, env = "KUBESENTIMENT_CALLBACK_ALLOW", default_value = "public", value_parser = clap::value_parser!(notify::Allow))]
    callback_allow: notify::Allow,
    /// Attempts at one callback before it is `Failed` (backoff from 1 s doubling to 5 min).
    #[arg(long, env = "KUBESENTIMENT_CALLBACK_MAX_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    callback_max_attempts: u32,
    #[command(flatten)]
    autoscale: AutoscaleArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = cli.common.start().context("invalid configuration")?;
    let stores = ObjectStores::from_env();
    let metrics = Metrics::new(&cfg);
    let kubeconfig = kube::Config::infer().await.context("finding the Kubernetes API server")?;
    let client = kubesentiment_core::client::builder(kubeconfig)
        .context("connecting to the Kubernetes API server")?
        .with_layer(&metrics.api_layer())
        .build();
    let health = Arc::new(Health { metrics: metrics.clone(), ready: false.into(), leader: false.into() });

    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let (listener, _) = cli.common.listen(cli.port).await.with_context(|| format!("binding {}:{}", cli.common.host, cli.port))?;
    let server = axum::serve(listener, http::router(health.clone())).with_graceful_shutdown(stop.clone().cancelled_owned());
    tasks.spawn(async move { server.await });
    tokio::spawn(shutdown_on_signal(stop.clone()));

    let operator = Operator { cli, cfg, stores, client, metrics, health, tasks: tasks.clone(), stop: stop.clone() };
    let lost = operator.lead_and_run().await;
    stop.cancel();
    tasks.close();
    if tokio::time::timeout(DRAIN, tasks.wait()).await.is_err() {
        tracing::warn!(left = tasks.len(), "tasks still running after {DRAIN:?}; exiting anyway");
    }
    if lost? {
        bail!("lost the leader lease");
    }
    Ok(())
}

/// What leading needs, made at startup.
struct Operator {
    cli: Cli,
    cfg: AsyncBatch,
    stores: ObjectStores,
    client: Client,
    metrics: Metrics,
    health: Arc<Health>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Operator {
    /// Waits to lead, then runs the engine and the controller until `stop` or until the
    /// lease is lost (`Ok(true)`).
    async fn lead_and_run(self) -> anyhow::Result<bool> {
        let Operator { cli, cfg, stores, client, metrics, health, tasks, stop } = self;
        let batches: Api<SentimentBatch> = match &cli.watch_namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        batches
            .list(&kube::api::ListParams::default().limit(1))
            .await
            .context("listing SentimentBatches: is the CRD installed (crds/)?")?;
        health.ready.store(true, Ordering::Relaxed);
        if !cfg.enabled {
            tracing::warn!("async_batch.enabled is false: not reconciling");
            stop.cancelled().await;
            return Ok(false);
        }

        let lease_ns = cli
            .lease_namespace
            .clone()
            .or_else(|| cli.watch_namespace.clone())
            .or_else(|| cli.pod_namespace.clone())
            .unwrap_or_else(|| "kubesentiment-system".into());
        let identity = cli.identity.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
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
            _ = stop.cancelled() => return Ok(false),
            r = leading.wait_for(|l| *l) => { r.context("leader election stopped")?; }
        }
        health.leader.store(true, Ordering::Relaxed);
        tracing::info!(%identity, "leading");
        eprintln!("leading as {identity}");

        let endpoints = endpoints::watch(client.clone(), &cli.common.inference_service, &tasks, stop.clone()).urls;
        let (notify, notify_rx) = mpsc::channel(1024);
        let wiring = Wiring {
            predictor: engine::http_predictor(),
            metrics: metrics.clone(),
            endpoints,
            notify: notify.clone(),
            tasks: tasks.clone(),
            stop: stop.clone(),
        };
        let engine = Engine::start(&cfg, wiring);
        let capacity = Capacity::default();
        // The leader alone scales; it starts from the Deployment's replicas as they are.
        if let Some(deployment) = &cli.autoscale.autoscale_deployment {
            let scaler = Scaler {
                client: client.clone(),
                namespace: cli.common.inference_service.namespace.clone(),
                deployment: deployment.clone(),
                policy: (&cli.autoscale).into(),
                engine: engine.clone(),
                metrics: metrics.clone(),
                recorder: controller::recorder(&client, identity.clone()),
                capacity: capacity.clone(),
            };
            tasks.spawn(autoscaler::run(scaler, stop.clone()));
        }
        let client_for_fence = client.clone();
        // Every batch there is now: any other is created while this replica leads.
        let older = batches.list_metadata(&Default::default()).await.context("listing SentimentBatches")?;
        let older = older.items.into_iter().filter_map(|b| b.metadata.uid).collect();
        let mut ctx = Context::new(client, engine, cfg, stores, metrics, identity.clone(), older, notify);
        ctx.capacity = capacity;
        ctx.callbacks = notify::Policy { allow: cli.callback_allow.clone(), max_attempts: cli.callback_max_attempts };
        tasks.spawn(controller::run(Arc::new(ctx), batches, notify_rx, stop.clone()));

        // Leadership lost (another holder, or no renewal seen within the lease's duration):
        // stop dispatching at once and exit, so the pod restarts as a standby.
        let duration = Duration::from_secs(cli.lease_duration_seconds.max(2));
        let fence = fence::Fence::new(&identity, duration, std::time::Instant::now());
        let fenced = fence::watch(Api::namespaced(client_for_fence, &lease_ns), &cli.lease_name, fence, stop.clone());
        let lost = tokio::select! {
            _ = stop.cancelled() => false,
            _ = leading.wait_for(|l| !*l) => true,
            why = fenced => {
                if let Some(why) = &why { tracing::error!(%why, "leadership lost"); }
                why.is_some()
            }
        };
        stop.cancel();
        drop(leading);
        let _ = lease_task.await;
        Ok(lost)
    }
}
