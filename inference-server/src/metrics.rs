//! Every Prometheus metric of the server, with its name and buckets, in one place.
//! Whoever owns the state records: the batcher its queue, the inference threads their
//! passes, the HTTP middleware its requests.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    /// Texts waiting in the batcher's queue.
    pub queue_depth: IntGauge,
    /// Time from enqueue to the start of the text's forward pass.
    pub queue_wait: Histogram,
    /// Wall time of one forward pass.
    pub forward: Histogram,
    /// Texts per forward pass.
    pub batch_size: Histogram,
    /// Padded tokens (texts × longest) per forward pass.
    pub batch_tokens: Histogram,
    /// Requests being served.
    pub in_flight: IntGauge,
    /// Failures by kind: `forward`, `validation`, `queue_full`, …
    pub errors: IntCounterVec,
    /// HTTP requests by method, matched route and status.
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
}

const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
const TOKEN_BUCKETS: &[f64] = &[16.0, 64.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                .expect("metric options are static. This is a bug.");
            registry.register(Box::new(h.clone())).expect("metric names are unique. This is a bug.");
            h
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric options are static. This is a bug.");
            registry.register(Box::new(g.clone())).expect("metric names are unique. This is a bug.");
            g
        };
        let metrics = Self {
            queue_depth: gauge("inference_queue_depth", "Texts waiting in the batcher queue"),
            queue_wait: hist("inference_queue_wait_seconds", "Time a text waits before its forward pass", LATENCY_BUCKETS),
            forward: hist("inference_forward_seconds", "Wall time of one forward pass", LATENCY_BUCKETS),
            batch_size: hist("inference_batch_size", "Texts per forward pass", SIZE_BUCKETS),
            batch_tokens: hist("inference_batch_tokens", "Padded tokens per forward pass", TOKEN_BUCKETS),
            in_flight: gauge("inference_requests_in_flight", "HTTP requests being served"),
            errors: IntCounterVec::new(Opts::new("inference_errors_total", "Failures by kind"), &["kind"]).expect("static. This is a bug."),
            http_requests: IntCounterVec::new(Opts::new("http_requests_total", "HTTP requests"), &["method", "path", "status"])
                .expect("static. This is a bug."),
            http_duration: HistogramVec::new(
                HistogramOpts::new("http_request_duration_seconds", "HTTP request latency").buckets(LATENCY_BUCKETS.to_vec()),
                &["method", "path"],
            )
            .expect("static. This is a bug."),
            registry,
        };
        for c in [&metrics.errors, &metrics.http_requests] {
            metrics.registry.register(Box::new(c.clone())).expect("metric names are unique. This is a bug.");
        }
        metrics.registry.register(Box::new(metrics.http_duration.clone())).expect("metric names are unique. This is a bug.");
        metrics
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("text encoding of gathered metrics cannot fail. This is a bug.")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
