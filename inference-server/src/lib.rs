//! `inference-server`: a sentiment classifier on ONNX Runtime behind an HTTP API with
//! dynamic batching. The operator sends it chunks of texts; it answers in input order.
//!
//! # Layout
//! - [`model`]: the model runtime (files, tokenizer, ONNX session, head, classifier).
//!   It knows nothing of HTTP or of the batching policy.
//! - [`batching`]: how texts are packed into forward passes, as pure functions.
//! - [`infer`]: the dynamic batcher task and the inference threads behind it.
//! - [`http`]: axum routes, the one error map, and graceful shutdown.
//! - [`metrics`]: every Prometheus metric, in one registry.
//! - [`data`], [`train`], [`eval`], [`bench`]: the `train`, `eval` and `bench` commands.
//!
//! The wire types live in the `inference-api` crate, so clients need not build ORT.

pub mod batching;
pub mod bench;
pub mod data;
pub mod eval;
pub mod http;
pub mod infer;
pub mod metrics;
pub mod model;
pub mod train;
