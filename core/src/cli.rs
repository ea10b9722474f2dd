//! What every binary does at startup and shutdown: logging, the layered settings, the
//! inference Service, binding its HTTP port, process metrics and the one shutdown signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{AsyncBatch, ConfigError, Overrides};

/// A Service, as `NAMESPACE/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl FromStr for ServiceRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(ServiceRef { namespace: ns.into(), name: name.into() })
            }
            _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
        }
    }
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The options the operator and the facade share.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// YAML file with the `async_batch` settings; `ASYNC_BATCH_<KEY>` variables and flags override it.
    #[arg(long, env = "KUBESENTIMENT_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: Overrides,
    /// The inference Service, as NAMESPACE/NAME, whose EndpointSlices list the endpoints.
    #[arg(long, env = "KUBESENTIMENT_INFERENCE_SERVICE", default_value = "kubesentiment-system/inference-server")]
    pub inference_service: ServiceRef,
    #[arg(long, env = "KUBESENTIMENT_HOST", default_value = "0.0.0.0")]
    pub host: String,
}

impl Common {
    /// Starts logging and loads the settings.
    pub fn start(&self) -> Result<AsyncBatch, ConfigError> {
        init_tracing();
        AsyncBatch::load(self.config.as_deref(), &self.overrides)
    }

    /// Binds `host:port` (0 picks a free port) and says where, on stderr, as the tests
    /// and scripts read it.
    pub async fn listen(&self, port: u16) -> std::io::Result<(TcpListener, SocketAddr)> {
        let listener = TcpListener::bind((self.host.as_str(), port)).await?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "listening");
        eprintln!("listening on {addr}");
        Ok((listener, addr))
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Cancels `stop` on SIGTERM or Ctrl-C: the one shutdown signal of every binary.
pub async fn shutdown_on_signal(stop: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = stop.cancelled() => return,
    }
    tracing::info!("shutting down");
    stop.cancel();
}

/// `process_resident_memory_bytes`, CPU seconds and open files of this process, in `registry`.
pub fn register_process_metrics(registry: &prometheus::Registry) {
    registry
        .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
        .expect("metric names are unique. This is a bug.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_namespace_slash_name() {
        let s: ServiceRef = "ks/inference".parse().unwrap();
        assert_eq!((s.namespace.as_str(), s.name.as_str(), s.to_string().as_str()), ("ks", "inference", "ks/inference"));
        for bad in ["inference", "/x", "x/", "a/b/c", ""] {
            assert!(bad.parse::<ServiceRef>().is_err(), "{bad}");
        }
    }
}
