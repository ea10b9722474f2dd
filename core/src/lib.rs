//! What KubeSentiment's programs share: the operator (`kubesentiment-operator`), the
//! REST facade (`kubesentiment-facade`) and the load tool (`kubesentiment-bench`) each
//! link this library and nothing of one another.
//!
//! # Layout
//! - [`crd`]: the `SentimentBatch` resource, its schema and CEL rules.
//! - [`status`]: counts, progress, conditions and every status transition.
//! - [`admission`]: how many batches each priority may hold at once.
//! - [`store`]: where results go (result parts, manifest, failures) and how they are read.
//! - [`jobs`]: creating a job as a resource, as the facade and the bench do.
//! - [`rest`]: the REST API's documents, read off a resource.
//! - [`remote`]: a remote server's error, cut to what status and Events may say.
//! - [`endpoints`]: inference endpoints from a Service's EndpointSlices.
//! - [`config`]: the brief's `async_batch` settings, layered, and object-store settings.
//! - [`cli`]: the startup and shutdown every binary shares.
//! - [`client`]: the Kubernetes client, with `TCP_NODELAY` on its connections.
//! - [`names`], [`backoff`], [`watch`]: names on the API server, the backoff policy, and
//!   the loop that drives a watch stream.
pub mod admission;
pub mod backoff;
pub mod cli;
pub mod client;
pub mod config;
pub mod crd;
pub mod endpoints;
pub mod jobs;
pub mod names;
pub mod remote;
pub mod rest;
pub mod status;
pub mod store;
pub mod watch;
