//! What a run found: the brief's result fields, then latency quantiles, rejections and
//! what the servers saw.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The whole report, as `--json` writes it. Times are in seconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub via: String,
    pub follow: String,
    pub target: String,
    pub started_at: String,
    pub concurrency: usize,
    pub batch_sizes: [usize; 2],
    // The brief's fields.
    pub test_duration_seconds: f64,
    pub requests_submitted: usize,
    pub requests_completed: usize,
    /// `requests_completed / requests_submitted`.
    pub success_rate: f64,
    /// Mean time to an accepted submit (the async API's response time).
    pub avg_response_time_seconds: f64,
    /// Mean time from submit to the last result page read, over completed jobs.
    pub avg_end_to_end_seconds: f64,
    /// Mean time to run one batch of the same sizes through the synchronous endpoint,
    /// one request after another, measured in this run.
    pub baseline_sync_time_seconds: Option<f64>,
    /// `1 - avg_response_time / baseline_sync_time`, in percent (the brief's definition).
    pub improvement_percent: Option<f64>,
    /// `baseline_sync_time / avg_response_time` (the brief's definition).
    pub throughput_ratio: Option<f64>,
    // Added.
    /// Jobs that ended in another state, or whose results were incomplete.
    pub requests_failed: usize,
    /// Jobs still running when the drain timeout ended the run.
    pub requests_unfinished: usize,
    pub texts_submitted: usize,
    pub texts_completed: usize,
    /// Texts of completed jobs over the run's wall time.
    pub texts_per_second_end_to_end: f64,
    /// Texts per second of the baseline: batches through the synchronous endpoint one by one.
    pub sync_texts_per_second: Option<f64>,
    /// `texts_per_second_end_to_end / sync_texts_per_second`.
    pub speedup_over_sync: Option<f64>,
    pub latency: Latencies,
    pub rejected: Rejections,
    pub errors: BTreeMap<String, usize>,
    /// When jobs left the queue, as the run observed it.
    pub admission: Option<Admission>,
    pub server: ServerSide,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latencies {
    pub submit: Option<Quantiles>,
    pub status: Option<Quantiles>,
    pub results: Option<Quantiles>,
    pub end_to_end: Option<Quantiles>,
    pub sync_batch: Option<Quantiles>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Quantiles {
    /// Nearest-rank quantiles of `samples`; `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Quantiles> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let rank = |q: f64| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
        Some(Quantiles {
            count: s.len(),
            mean: s.iter().sum::<f64>() / s.len() as f64,
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            max: s[s.len() - 1],
        })
    }
}

/// 429 answers, and the first one: where the stack stopped taking more.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Rejections {
    pub total_429: usize,
    /// By `endpoint:code`, e.g. `submit:rate_limited`, `submit:queue_full`.
    pub by_kind: BTreeMap<String, usize>,
    pub first: Option<Saturation>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saturation {
    pub after_seconds: f64,
    pub kind: String,
    pub clients_active: usize,
    pub jobs_in_flight: usize,
    pub jobs_submitted: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Admission {
    /// From the start of the run until the last job was seen out of `pending`.
    pub time_to_admit_all_seconds: f64,
    /// Per job, submit to first seen running (or final).
    pub wait: Option<Quantiles>,
    /// Sum over jobs of the time each was seen running.
    pub running_job_seconds: f64,
}

/// Read from the servers' Prometheus endpoints before and after the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerSide {
    /// Mean texts per forward pass over the run (`inference_batch_size`).
    pub inference_texts_per_pass: Option<f64>,
    /// Mean padded tokens per forward pass (`inference_batch_tokens`).
    pub inference_padded_tokens_per_pass: Option<f64>,
    /// Mean texts per chunk the operator dispatched (`kubesentiment_chunk_texts`).
    pub operator_texts_per_chunk: Option<f64>,
    /// Status writes the operator sent during the run (`kubesentiment_status_writes_total`).
    pub operator_status_writes: Option<f64>,
    /// `operator_status_writes / admission.running_job_seconds`.
    pub status_writes_per_running_job_second: Option<f64>,
    /// The operator's requests to the API server during the run, per job completed
    /// (`kubesentiment_api_{reads,writes,write_bytes}_total`; leader election apart).
    pub operator_api_reads_per_job: Option<f64>,
    pub operator_api_writes_per_job: Option<f64>,
    pub operator_api_write_bytes_per_job: Option<f64>,
    /// Texts the operator answered from its result cache during the run.
    pub operator_cache_hits: Option<f64>,
    /// Highest `process_resident_memory_bytes` of the operator, sampled every second.
    pub operator_peak_rss_bytes: Option<f64>,
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "n/a".into(), f)
}

fn ms(q: &Option<Quantiles>) -> String {
    match q {
        Some(q) => format!("p50 {:8.1} ms  p95 {:8.1} ms  p99 {:8.1} ms  (n = {})", q.p50 * 1e3, q.p95 * 1e3, q.p99 * 1e3, q.count),
        None => "n/a".into(),
    }
}

impl Report {
    /// The brief's block, then ours.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "🎉 Async Batch Performance Test Results");
        let _ = writeln!(o, "==================================================");
        let _ = writeln!(o, "⏱️  Test Duration: {:.2} seconds", self.test_duration_seconds);
        let _ = writeln!(o, "📤 Requests Submitted: {}", self.requests_submitted);
        let _ = writeln!(o, "📥 Requests Completed: {}", self.requests_completed);
        let _ = writeln!(o, "✅ Success Rate: {:.1}%", self.success_rate * 100.0);
        let _ = writeln!(o, "⚡ Avg Response Time: {:.3} seconds", self.avg_response_time_seconds);
        let _ = writeln!(o, "🔄 Avg End-to-End Time: {:.3} seconds", self.avg_end_to_end_seconds);
        let _ = writeln!(o, "📊 Baseline Sync Time: {} seconds", opt(self.baseline_sync_time_seconds, |v| format!("{v:.3}")));
        let _ = writeln!(o, "🚀 Improvement: {}", opt(self.improvement_percent, |v| format!("{v:.1}%")));
        let _ = writeln!(o, "📈 Throughput Ratio: {}", opt(self.throughput_ratio, |v| format!("{v:.1}x")));
        let _ = writeln!(o, "--------------------------------------------------");
        let _ = writeln!(
            o,
            "scenario {} via {} ({}), {} clients, {}–{} texts per job, against {}",
            self.scenario, self.via, self.follow, self.concurrency, self.batch_sizes[0], self.batch_sizes[1], self.target
        );
        let _ = writeln!(o, "submit      {}", ms(&self.latency.submit));
        let _ = writeln!(o, "status      {}", ms(&self.latency.status));
        let _ = writeln!(o, "results     {}", ms(&self.latency.results));
        let _ = writeln!(o, "end to end  {}", ms(&self.latency.end_to_end));
        let _ = writeln!(o, "sync batch  {}", ms(&self.latency.sync_batch));
        let _ = writeln!(
            o,
            "texts/s end to end {:.1} ({} of {} texts); sync one by one {}; speedup {}",
            self.texts_per_second_end_to_end,
            self.texts_completed,
            self.texts_submitted,
            opt(self.sync_texts_per_second, |v| format!("{v:.1}")),
            opt(self.speedup_over_sync, |v| format!("{v:.2}x")),
        );
        let _ = writeln!(o, "failed {}, unfinished {}", self.requests_failed, self.requests_unfinished);
        let kinds: Vec<String> = self.rejected.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(
            o,
            "429 answers: {} {}",
            self.rejected.total_429,
            if kinds.is_empty() { String::new() } else { format!("({})", kinds.join(", ")) }
        );
        if let Some(s) = &self.rejected.first {
            let _ = writeln!(
                o,
                "first 429 ({}) after {:.1} s with {} clients active, {} jobs in flight, {} submitted",
                s.kind, s.after_seconds, s.clients_active, s.jobs_in_flight, s.jobs_submitted
            );
        }
        for (e, n) in &self.errors {
            let _ = writeln!(o, "error ×{n}: {e}");
        }
        if let Some(a) = &self.admission {
            let _ = writeln!(
                o,
                "admission: all jobs out of pending {:.1} s after the start; wait {}",
                a.time_to_admit_all_seconds,
                ms(&a.wait)
            );
        }
        let s = &self.server;
        let _ = writeln!(
            o,
            "server: {} texts ({} padded tokens) per forward pass; {} texts per operator chunk",
            opt(s.inference_texts_per_pass, |v| format!("{v:.1}")),
            opt(s.inference_padded_tokens_per_pass, |v| format!("{v:.0}")),
            opt(s.operator_texts_per_chunk, |v| format!("{v:.1}")),
        );
        let _ = writeln!(
            o,
            "operator API requests per job: {} writes ({} bytes), {} reads",
            opt(s.operator_api_writes_per_job, |v| format!("{v:.1}")),
            opt(s.operator_api_write_bytes_per_job, |v| format!("{v:.0}")),
            opt(s.operator_api_reads_per_job, |v| format!("{v:.1}")),
        );
        let _ = writeln!(
            o,
            "operator: {} status writes ({} per running job per second), {} cache hits, peak RSS {}",
            opt(s.operator_status_writes, |v| format!("{v:.0}")),
            opt(s.status_writes_per_running_job_second, |v| format!("{v:.2}")),
            opt(s.operator_cache_hits, |v| format!("{v:.0}")),
            opt(s.operator_peak_rss_bytes, |v| format!("{:.1} MB", v / 1e6)),
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let q = Quantiles::of(&samples).unwrap();
        assert_eq!((q.count, q.p50, q.p95, q.p99, q.max), (100, 50.0, 95.0, 99.0, 100.0));
        assert_eq!(q.mean, 50.5);
        let one = Quantiles::of(&[0.25]).unwrap();
        assert_eq!((one.p50, one.p99), (0.25, 0.25));
        assert_eq!(Quantiles::of(&[]), None);
    }
}
