//! The facade's request metrics: one middleware records every request by route
//! template (never the raw URI), into its own registry with the process metrics.

use std::time::Duration;

use kubesentiment_core::cli::register_process_metrics;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// The REST facade's request metrics, labelled by route template.
#[derive(Clone)]
pub struct HttpMetrics {
    registry: Registry,
    requests: IntCounterVec,
    seconds: HistogramVec,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("kubesentiment_http_requests_total", "Requests answered, by method, route and status"),
            &["method", "route", "status"],
        )
        .expect("metric options are valid. This is a bug.");
        let seconds = HistogramVec::new(
            HistogramOpts::new("kubesentiment_http_request_seconds", "Time to answer, by route")
                .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]),
            &["route"],
        )
        .expect("metric options are valid. This is a bug.");
        registry.register(Box::new(requests.clone())).expect("metric names are unique. This is a bug.");
        registry.register(Box::new(seconds.clone())).expect("metric names are unique. This is a bug.");
        register_process_metrics(&registry);
        HttpMetrics { registry, requests, seconds }
    }
}

impl HttpMetrics {
    pub fn observe(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.requests.with_label_values(&[method, route, &status.to_string()]).inc();
        self.seconds.with_label_values(&[route]).observe(took.as_secs_f64());
    }

    pub fn render(&self) -> String {
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}
