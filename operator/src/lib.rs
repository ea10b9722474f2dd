//! The KubeSentiment operator: `SentimentBatch` resources in, results out.
//!
//! # Layout
//! - [`controller`]: reconcile (with a finalizer where results are outside the cluster); status through `kubesentiment_core::status`,
//!   Events on transitions.
//! - [`engine`]: the task that owns the scheduler and the endpoint pool and dispatches
//!   chunks; it reaches inference and the results store only through two traits.
//! - [`scheduler`]: pure ordering logic: admission with reserves, weighted shares between
//!   priority levels and tenants, deadlines, bounded aging.
//! - [`fence`]: the leader stops once it has not seen its lease renewed within its duration.
//! - [`autoscaler`]: queue-aware scaling of the inference Deployment (pure decisions).
//! - [`source`]: reading texts (inline, ConfigMap, S3).
//! - [`notify`]: completion callbacks: the allow-list, the CloudEvent, its signature.
//! - [`metrics`], [`http`]: Prometheus metrics and the health/metrics server.
//!
//! The resource, settings, results store and status live in `kubesentiment-core`.
pub mod autoscaler;
pub mod controller;
pub mod engine;
pub mod fence;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod scheduler;
pub mod source;
