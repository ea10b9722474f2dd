//! `kubesentiment-bench` against a real stack for a few seconds: every scenario name, both
//! ways of following a job, the kube API path and a rate-limited facade. The checks are
//! on the report's shape and its counts, never on timings.

use std::process::Command;

use kubesentiment_tests::stack::{Stack, facade, release_bin};
use serde_json::Value;

/// Runs the bench with `args` and returns its JSON report, after checking that it
/// printed the brief's result block.
fn bench(s: &Stack, args: &[&str]) -> Value {
    let json = std::env::temp_dir().join(format!("kubesentiment-bench-{}-{}.json", std::process::id(), rand_suffix()));
    let out = Command::new(release_bin("kubesentiment-bench"))
        .env("KUBECONFIG", &s.cluster.kubeconfig)
        .env_remove("KUBESENTIMENT_API_KEY")
        .args(["--base-url", &s.url, "--inference-url", &s.inference.url(), "--namespace", &s.ns.name, "--json"])
        .arg(&json)
        .args(["--operator-url", &s.operator_url().expect("the operator logged its address")])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "Test Duration:",
        "Requests Submitted:",
        "Requests Completed:",
        "Success Rate:",
        "Avg Response Time:",
        "Avg End-to-End Time:",
        "Baseline Sync Time:",
        "Improvement:",
        "Throughput Ratio:",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).unwrap();
    report
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn num(v: &Value, path: &str) -> f64 {
    let at = path.split('.').fold(v, |v, k| &v[k]);
    at.as_f64().unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

/// Every job submitted completed with all its results, and the counts agree.
fn all_completed(r: &Value) {
    let submitted = num(r, "requests_submitted");
    assert!(submitted >= 1.0, "{r:#}");
    assert_eq!(num(r, "requests_completed"), submitted, "{r:#}");
    assert_eq!((num(r, "requests_failed"), num(r, "requests_unfinished")), (0.0, 0.0), "{r:#}");
    assert_eq!(num(r, "success_rate"), 1.0);
    assert_eq!(num(r, "texts_completed"), num(r, "texts_submitted"));
    assert_eq!(num(r, "latency.submit.count"), submitted);
    assert_eq!(num(r, "latency.end_to_end.count"), submitted);
    assert!(num(r, "latency.results.count") >= submitted, "a results page per job at least: {r:#}");
    assert!(r["errors"].as_object().unwrap().is_empty(), "{r:#}");
    for (q, what) in [("p50", "p95"), ("p95", "p99"), ("p99", "max")] {
        assert!(num(r, &format!("latency.end_to_end.{q}")) <= num(r, &format!("latency.end_to_end.{what}")), "{r:#}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_reports_every_scenario_and_path() {
    let Some(s) = Stack::start("bench", true, &[], &[]).await else { return };

    // The brief's fields, with the baseline measured in the run and the servers' figures.
    let r = bench(
        &s,
        &["--scenario", "low_latency", "--duration", "3", "--concurrency", "2", "--baseline-batches", "2", "--poll-interval", "0.1"],
    );
    all_completed(&r);
    assert_eq!((r["scenario"].as_str(), r["via"].as_str(), r["follow"].as_str()), (Some("low_latency"), Some("rest"), Some("poll")));
    assert_eq!(r["batch_sizes"], serde_json::json!([10, 50]));
    assert_eq!(num(&r, "latency.sync_batch.count"), 2.0);
    let (baseline, response) = (num(&r, "baseline_sync_time_seconds"), num(&r, "avg_response_time_seconds"));
    assert!((num(&r, "throughput_ratio") - baseline / response).abs() < 1e-9 * baseline / response);
    assert!((num(&r, "improvement_percent") - (1.0 - response / baseline) * 100.0).abs() < 1e-6);
    assert!(num(&r, "latency.status.count") >= num(&r, "requests_submitted"));
    assert!(num(&r, "sync_texts_per_second") > 0.0 && num(&r, "texts_per_second_end_to_end") > 0.0);
    assert!(num(&r, "server.inference_texts_per_pass") >= 1.0, "{r:#}");
    assert!(num(&r, "server.operator_texts_per_chunk") >= 1.0, "{r:#}");
    assert!(num(&r, "server.operator_status_writes") >= num(&r, "requests_submitted"), "a write per job at least: {r:#}");
    assert_eq!(num(&r, "server.operator_cache_hits"), 0.0, "the built-in corpus repeats no text: {r:#}");
    assert!(num(&r, "server.operator_peak_rss_bytes") > 1e6, "{r:#}");
    assert_eq!(num(&r, "rejected.total_429"), 0.0);
    assert!(num(&r, "admission.time_to_admit_all_seconds") > 0.0);

    // A fixed number of jobs, followed over WebSockets, without a baseline.
    let r = bench(&s, &["--scenario", "standard", "--jobs", "3", "--batch-size", "20-40", "--follow", "ws", "--baseline-batches", "0"]);
    all_completed(&r);
    assert_eq!((num(&r, "requests_submitted"), r["follow"].as_str()), (3.0, Some("ws")));
    assert!(r["latency"]["status"].is_null() && r["baseline_sync_time_seconds"].is_null() && r["throughput_ratio"].is_null());

    // The CR path: objects created through the kube API (1,200 texts go to a ConfigMap),
    // followed by a watch, results read from the store, removed afterwards.
    let r = bench(
        &s,
        &[
            "--via",
            "kube",
            "--scenario",
            "high_throughput",
            "--jobs",
            "2",
            "--batch-size",
            "1200",
            "--baseline-batches",
            "1",
            "--page-size",
            "500",
        ],
    );
    all_completed(&r);
    assert_eq!((r["via"].as_str(), r["follow"].as_str()), (Some("kube"), Some("watch")));
    assert_eq!(num(&r, "latency.results.count"), 6.0, "three pages of 500 per job: {r:#}");
    let left =
        s.cluster.kubectl().args(["-n", &s.ns.name, "get", "sb", "-l", "kubesentiment.io/bench-run", "-o", "name"]).output().unwrap();
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty(), "the run's SentimentBatches were not deleted");

    // Stress against a facade that takes 6 requests a minute: the 429s are counted, the
    // first is located, and every accepted job still ends.
    let (_limited, url) = facade(s.cluster, &s.ns.name, &["--max-requests-per-minute", "6"], &[]).await.unwrap();
    let limited = Stack { url, ..s };
    let r = bench(
        &limited,
        &[
            "--scenario",
            "stress_test",
            "--duration",
            "3",
            "--concurrency",
            "4",
            "--batch-size",
            "10",
            "--baseline-batches",
            "0",
            "--follow",
            "ws",
        ],
    );
    assert!(num(&r, "rejected.total_429") >= 1.0, "{r:#}");
    let first = &r["rejected"]["first"];
    assert!(first["kind"].as_str().is_some_and(|k| k.ends_with(":rate_limited")), "{r:#}");
    assert!(num(first, "clients_active") >= 1.0 && num(first, "jobs_submitted") >= 1.0, "{r:#}");
    assert!(num(&r, "rejected.by_kind.submit:rate_limited") >= 1.0, "{r:#}");
    all_completed(&r);
}
