//! The operator's memory under many large running batches (#15): bounded by the work in
//! flight, not by the work queued. These hold millions of texts in flight, so they are
//! benchmarks, not part of `cargo test`; run them by hand and record the figures in
//! docs/BENCHMARKS.md:
//!
//! ```sh
//! cargo test -p kubesentiment-tests --release --test memory -- --ignored --nocapture --test-threads 1
//! ```
//!
//! Each creates its batches, waits until the operator has admitted every one (Running,
//! with no inference endpoint yet, so that none can finish first), adds an inference
//! server, samples the operator's resident memory for [`SAMPLE`] while the batches run,
//! and fails if its peak passed [`LIMIT`].

use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, PostParams};
use kubesentiment_core::crd::Phase;
use kubesentiment_tests::batches::{Env, env};
use kubesentiment_tests::stack::{Inference, S3, operator, register};
use kubesentiment_tests::texts;
use serde_json::{Value, json};

/// The issue's goal for the operator's resident memory.
const LIMIT: u64 = 300 << 20;
/// How long memory is sampled once every batch runs.
const SAMPLE: Duration = Duration::from_secs(30);

/// 100 running batches of 100,000 texts each, every one from its own S3 object.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: 10 million texts in flight"]
async fn a_hundred_batches_of_a_hundred_thousand_texts_from_s3() {
    let Some(env) = env("mem-s3").await else { return };
    let s3 = S3::start().await.unwrap();
    s3.put("ks-mem", "").await.unwrap();
    let began = Instant::now();
    stream::iter(0..100)
        .map(|i| {
            let s3 = &s3;
            async move { s3.put(&format!("ks-mem/texts-{i}.txt"), texts(100_000, &format!("m{i}")).join("\n")).await }
        })
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    println!("uploaded 100 objects in {:?}", began.elapsed());
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "s3"}, "stringData": {"accessKeyId": "test", "secretAccessKey": "test"}}))
            .unwrap();
    env.ns.api::<Secret>().create(&PostParams::default(), &secret).await.unwrap();
    let specs = (0..100).map(|i| {
        json!({"source": {"s3": {"bucket": "ks-mem", "key": format!("texts-{i}.txt"), "endpoint": s3.endpoint, "region": "us-east-1",
               "credentialsSecretRef": {"name": "s3"}}}, "timeoutSeconds": 3600})
    });
    measure(env, specs.collect(), &[]).await;
}

/// 1,000 running batches of 1,000 inline texts each (admission limits raised to admit
/// them all at once).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: a million texts in flight"]
async fn a_thousand_batches_of_a_thousand_inline_texts() {
    let Some(env) = env("mem-inline").await else { return };
    let specs = (0..1000).map(|i| json!({"texts": texts(1000, &format!("b{i}")), "priority": "low", "timeoutSeconds": 3600}));
    let limits = [
        ("ASYNC_BATCH_MAX_JOBS", "1000"),
        ("ASYNC_BATCH_RESERVED_HIGH_SLOTS", "0"),
        ("ASYNC_BATCH_RESERVED_MEDIUM_SLOTS", "0"),
        ("ASYNC_BATCH_PRIORITY_LOW_LIMIT", "1000"),
    ];
    measure(env, specs.collect(), &limits).await;
}

/// Starts an operator, creates a batch per spec, waits until all run, adds an inference
/// server, and reports the operator's memory.
async fn measure(env: Env, specs: Vec<Value>, op_env: &[(&str, &str)]) {
    // The chart's lease, not the failover tests' 4 s: a thousand admissions at once on a
    // two-core machine can delay a renewal past 4 s.
    let op = operator(env.cluster, &env.ns.name, &["--lease-duration-seconds", "15"], op_env).unwrap();
    let n = specs.len();
    let began = Instant::now();
    stream::iter(specs.into_iter().enumerate())
        .map(|(i, spec)| {
            let env = &env;
            async move { env.create(&format!("b{i}"), spec).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    println!("created {n} batches in {:?}", began.elapsed());
    let mut peak_rss = 0;
    loop {
        let batches = env.batches().list(&ListParams::default()).await.unwrap().items;
        let running = batches.iter().filter(|b| b.phase() == Phase::Running).count();
        let ended: Vec<_> = batches.iter().filter(|b| b.phase().is_final()).map(|b| (b.phase(), b.status.clone())).collect();
        assert!(ended.is_empty(), "batches ended early: {:?}", &ended[..ended.len().min(2)]);
        peak_rss = peak_rss.max(op.memory().unwrap().0);
        if running == n {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(900), "{running} of {n} running after {:?}", began.elapsed());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("all {n} running after {:?}", began.elapsed());
    let inf = Inference::start(&[]).unwrap();
    register(&env.ns, &[inf.port]).await.unwrap();
    let sampling = Instant::now();
    while sampling.elapsed() < SAMPLE {
        peak_rss = peak_rss.max(op.memory().unwrap().0);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (rss, hwm) = op.memory().unwrap();
    let done: i64 = env
        .batches()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|b| Some(b.status.as_ref()?.processed_texts))
        .sum();
    println!(
        "operator memory with {n} batches running: now {} MiB, peak sampled {} MiB, peak (VmHWM) {} MiB; {done} texts done",
        rss >> 20,
        peak_rss >> 20,
        hwm >> 20
    );
    drop((op, inf));
    env.ns.delete().await.unwrap();
    assert!(hwm <= LIMIT, "the operator's peak resident memory was {} MiB, over {} MiB", hwm >> 20, LIMIT >> 20);
}
