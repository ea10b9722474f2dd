//! The KubeSentiment operator: `SentimentBatch` resources in, results out.
//!
//! # Layout
//! - [`crd`]: the resource, its schema and CEL rules (`crdgen` prints the CRD).
//! - [`config`]: the brief's `async_batch` settings, layered file → env → flags.
//! - [`controller`]: reconcile with a finalizer; status, conditions and Events.
//! - [`engine`]: the task that owns the scheduler and dispatches chunks to endpoints.
//! - [`scheduler`]: pure ordering logic: admission, priority with aging, deadlines.
//! - [`source`]: reading texts (inline, ConfigMap, S3).
//! - [`store`]: result parts, manifest and failures (ConfigMaps or `object_store`).
//! - [`endpoints`]: inference endpoints from a Service's EndpointSlices.
//! - [`metrics`], [`http`]: Prometheus metrics and the health/metrics server.
//! - [`facade`]: the REST API over `SentimentBatch` resources (`kubesentiment-facade`).
pub mod bench;
pub mod config;
pub mod controller;
pub mod crd;
pub mod endpoints;
pub mod engine;
pub mod facade;
pub mod http;
pub mod metrics;
pub mod scheduler;
pub mod source;
pub mod store;
