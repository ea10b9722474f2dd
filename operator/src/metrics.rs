//! Every metric the operator exports, named and bucketed in one place. The brief's
//! `async_batch_*` names come first; the rest are the operator's own.

use kubesentiment_core::cli::register_process_metrics;
use kubesentiment_core::config::AsyncBatch;
use kubesentiment_core::crd::Priority;
use prometheus::{Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tower::util::MapRequestLayer;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub jobs_total: IntCounterVec,
    pub jobs_active: IntGauge,
    pub processing_time: HistogramVec,
    pub throughput: Gauge,
    pub queue_size: IntGaugeVec,
    pub queued_texts: IntGaugeVec,
    pub dispatch_seconds: Histogram,
    pub chunk_texts: Histogram,
    pub retries: IntCounter,
    pub item_failures: IntCounterVec,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub in_flight: IntGaugeVec,
    pub reconcile_errors: IntCounterVec,
    pub status_writes: IntCounter,
    pub callbacks: IntCounterVec,
    /// Requests to the API server, by kind: reads (get, list), watches, writes.
    pub api_reads: IntCounter,
    pub api_watches: IntCounter,
    pub api_writes: IntCounter,
    /// Leader election's own requests (its Lease), apart: they are not any batch's.
    pub api_lease_requests: IntCounter,
    pub api_write_bytes: IntCounter,
    pub autoscaler_desired: IntGauge,
    pub autoscaler_current: IntGauge,
    pub autoscaler_decisions: IntCounterVec,
    pub tenant_queued: IntGaugeVec,
    pub tenant_dispatched: IntCounterVec,
}

impl Metrics {
    pub fn new(cfg: &AsyncBatch) -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric options are valid. This is a bug.");
                registry.register(Box::new(m.clone())).expect("metric names are unique. This is a bug.");
                m
            }};
        }
        let time_buckets = vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];
        let m = Metrics {
            jobs_total: reg!(IntCounterVec::new(
                Opts::new("async_batch_jobs_total", "Batches that reached a final phase"),
                &["priority", "status"]
            )),
            jobs_active: reg!(IntGauge::new("async_batch_jobs_active", "Batches admitted and not yet final")),
            processing_time: reg!(HistogramVec::new(
                HistogramOpts::new("async_batch_processing_time_seconds", "Start to final phase, per batch").buckets(time_buckets),
                &["priority"]
            )),
            throughput: reg!(Gauge::new("async_batch_throughput_tps", "Texts committed per second, over the last few seconds")),
            queue_size: reg!(IntGaugeVec::new(Opts::new("async_batch_queue_size", "Admitted batches with work left"), &["priority"])),
            queued_texts: reg!(IntGaugeVec::new(Opts::new("kubesentiment_queued_texts", "Texts waiting to be dispatched"), &["priority"])),
            dispatch_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new("kubesentiment_chunk_dispatch_seconds", "One chunk's request to an inference endpoint")
                    .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
            )),
            chunk_texts: reg!(Histogram::with_opts(
                HistogramOpts::new("kubesentiment_chunk_texts", "Texts per dispatched chunk")
                    .buckets(vec![1.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1000.0])
            )),
            retries: reg!(IntCounter::new("kubesentiment_chunk_retries_total", "Chunks put back after a failed attempt")),
            item_failures: reg!(IntCounterVec::new(
                Opts::new("kubesentiment_item_failures_total", "Texts that failed, by reason"),
                &["reason"]
            )),
            cache_hits: reg!(IntCounter::new("kubesentiment_cache_hits_total", "Texts answered from the result cache")),
            cache_misses: reg!(IntCounter::new("kubesentiment_cache_misses_total", "Texts sent for inference")),
            in_flight: reg!(IntGaugeVec::new(
                Opts::new("kubesentiment_chunks_in_flight", "Chunks awaiting an answer, per endpoint"),
                &["endpoint"]
            )),
            api_reads: reg!(IntCounter::new("kubesentiment_api_reads_total", "GETs and LISTs sent to the Kubernetes API server")),
            api_watches: reg!(IntCounter::new("kubesentiment_api_watches_total", "Watches opened on the Kubernetes API server")),
            api_lease_requests: reg!(IntCounter::new(
                "kubesentiment_api_lease_requests_total",
                "Requests of leader election (its Lease) to the Kubernetes API server, counted apart from the rest"
            )),
            api_writes: reg!(IntCounter::new(
                "kubesentiment_api_writes_total",
                "Creates, updates, patches and deletes sent to the Kubernetes API server"
            )),
            api_write_bytes: reg!(IntCounter::new(
                "kubesentiment_api_write_bytes_total",
                "Bytes of request bodies written to the API server"
            )),
            callbacks: reg!(IntCounterVec::new(
                Opts::new("kubesentiment_callback_attempts_total", "Completion callback attempts, by outcome"),
                &["outcome"]
            )),
            reconcile_errors: reg!(IntCounterVec::new(
                Opts::new("kubesentiment_reconcile_errors_total", "Failed reconciles, by error"),
                &["reason"]
            )),
            status_writes: reg!(IntCounter::new("kubesentiment_status_writes_total", "Status patches sent to the API server")),
            autoscaler_desired: reg!(IntGauge::new(
                "kubesentiment_autoscaler_desired_replicas",
                "Inference replicas the operator last asked for"
            )),
            autoscaler_current: reg!(IntGauge::new("kubesentiment_autoscaler_current_replicas", "Inference replicas the Deployment has")),
            tenant_queued: reg!(IntGaugeVec::new(
                Opts::new("kubesentiment_tenant_queued_texts", "Texts waiting to be dispatched, per tenant (namespace[/API key])"),
                &["tenant"]
            )),
            tenant_dispatched: reg!(IntCounterVec::new(
                Opts::new("kubesentiment_tenant_dispatched_texts_total", "Texts sent to inference, per tenant"),
                &["tenant"]
            )),
            autoscaler_decisions: reg!(IntCounterVec::new(
                Opts::new("kubesentiment_autoscaler_decisions_total", "Changes of the inference replicas, by reason (queue, idle, bound)"),
                &["reason"]
            )),
            registry,
        };
        register_process_metrics(&m.registry);
        for (p, name) in [(Priority::High, "high"), (Priority::Medium, "medium"), (Priority::Low, "low")] {
            let g = IntGauge::new(format!("async_batch_priority_{name}_limit"), format!("Admission limit of {name}-priority batches"))
                .expect("metric options are valid. This is a bug.");
            g.set(cfg.limit(p) as i64);
            m.registry.register(Box::new(g)).expect("metric names are unique. This is a bug.");
        }
        m
    }

    pub fn render(&self) -> String {
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }

    /// A layer of the API client that counts every request it sends, as the API server
    /// would: reads (get, list), watches and writes, and the bytes of what is written.
    pub fn api_layer(&self) -> MapRequestLayer<impl Fn(ApiRequest) -> ApiRequest + Clone + use<>> {
        let m = self.clone();
        MapRequestLayer::new(move |req: ApiRequest| {
            match api_request_kind(req.method(), req.uri().path(), req.uri().query()) {
                "lease" => m.api_lease_requests.inc(),
                "watch" => m.api_watches.inc(),
                "read" => m.api_reads.inc(),
                _ => {
                    m.api_writes.inc();
                    m.api_write_bytes.inc_by(http_body::Body::size_hint(req.body()).lower());
                }
            }
            req
        })
    }
}

/// A request of the API client.
pub type ApiRequest = http::Request<kube::client::Body>;

/// `lease` (leader election's), else `read`, `watch` or `write`.
fn api_request_kind(method: &http::Method, path: &str, query: Option<&str>) -> &'static str {
    if path.starts_with("/apis/coordination.k8s.io/") {
        return "lease";
    }
    match *method {
        http::Method::GET if query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1")) => "watch",
        http::Method::GET | http::Method::HEAD => "read",
        _ => "write",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_read_watch_or_write() {
        let cms = "/api/v1/namespaces/a/configmaps";
        assert_eq!(api_request_kind(&http::Method::GET, cms, Some("labelSelector=a&watch=true")), "watch");
        assert_eq!(api_request_kind(&http::Method::GET, cms, Some("limit=500")), "read");
        assert_eq!(api_request_kind(&http::Method::GET, cms, None), "read");
        for m in [http::Method::POST, http::Method::PATCH, http::Method::PUT, http::Method::DELETE] {
            assert_eq!(api_request_kind(&m, cms, None), "write");
        }
        assert_eq!(api_request_kind(&http::Method::PATCH, "/apis/coordination.k8s.io/v1/namespaces/a/leases/op", None), "lease");
    }
}
