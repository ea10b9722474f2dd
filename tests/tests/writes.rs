//! The API writes of a batch that fits in one chunk, as the API server counts them
//! (`apiserver_request_total`), so that a change that adds writes fails here (#17). This
//! binary holds this one test, so no other test writes while it counts (test binaries run
//! one after another); of three batches the fewest writes count, so a stray write of the
//! control plane's own controllers (namespace cleanup of earlier tests) does not.

use std::time::Duration;

use kube::ResourceExt;
use kubesentiment_core::crd::{Phase, Priority};
use kubesentiment_core::jobs::{self, NewJob, Origin};
use kubesentiment_tests::apiserver::{delta, metrics, writes};
use kubesentiment_tests::batches::env;
use kubesentiment_tests::stack::{Inference, operator, register};
use kubesentiment_tests::texts;
use serde_json::json;

/// The writes a 10-text batch costs, in all, whether kubectl or the facade
/// (`jobs::create`) creates it: its create, its results (part and manifest in one
/// ConfigMap) and its final status. No finalizer is added (its results are owned
/// ConfigMaps), a batch that ends within a status period has its Running status held
/// back, and it has no Event (no `Started`, no `Succeeded`).
const MOST_WRITES: f64 = 3.0;
/// The operator's reads of such a batch: one GET of it with its texts as it starts (the
/// controller's cache keeps none). Its end reads nothing back: not the batch, not the
/// results it wrote itself.
const MOST_READS: f64 = 1.0;

#[tokio::test(flavor = "multi_thread")]
async fn a_single_chunk_batch_costs_at_most_its_writes() {
    let Some(env) = env("writes").await else { return };
    let inference = Inference::start(&[]).unwrap();
    register(&env.ns, &[inference.port]).await.unwrap();
    let op = operator(env.cluster, &env.ns.name, &[], &[]).unwrap();
    let op_metrics = format!("{}/metrics", op.url().unwrap());
    let own = || async { inference_api::metric_sums(&reqwest::get(&op_metrics).await.unwrap().text().await.unwrap()) };
    // The namespace's own ConfigMap (kube-root-ca.crt) is written before the count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Three batches as kubectl creates them, then three jobs as the facade and the bench
    // create them (`jobs::create`).
    let (mut counts, mut reads) = ([Vec::new(), Vec::new()], Vec::new());
    let origin = Origin { namespace: env.ns.name.clone(), submitted_by: "rest", ..Default::default() };
    for i in 0..6 {
        let (before, own_before) = (writes(&metrics(env.cluster)), own().await);
        let name = if i < 3 {
            let name = format!("one-chunk-{i}");
            env.create(&name, json!({"texts": texts(10, &name)})).await.unwrap();
            name
        } else {
            jobs::create(&env.ns.client, &origin, NewJob::texts(texts(10, &format!("job-{i}")), Priority::Medium)).await.unwrap().name_any()
        };
        env.phase(&name, Phase::Succeeded).await;
        // The last Events are written after the final status.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let by_kind = delta(&before, &writes(&metrics(env.cluster)));
        let own_after = own().await;
        let counted = |k: &str| own_after.get(k).copied().unwrap_or(0.0) - own_before.get(k).copied().unwrap_or(0.0);
        let all = by_kind.values().sum::<f64>();
        let (own_writes, bytes) = (counted("kubesentiment_api_writes_total"), counted("kubesentiment_api_write_bytes_total"));
        let own_reads = counted("kubesentiment_api_reads_total");
        println!("batch {i}: {all} writes ({by_kind:?}); the operator's: {own_writes} writes, {bytes} bytes, {own_reads} reads");
        counts[i / 3].push((all, by_kind, own_writes));
        reads.push(own_reads);
    }
    // The fewest: the first batch also reads its namespace's weight.
    let least_reads = reads.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(least_reads <= MOST_READS, "the operator read {reads:?} times a batch, over {MOST_READS}");
    let fewest =
        |counts: &[(f64, std::collections::BTreeMap<String, f64>, f64)]| counts.iter().min_by(|a, b| a.0.total_cmp(&b.0)).unwrap().clone();
    let (least, by_kind, own_writes) = fewest(&counts[0]);
    // The operator's own count (`kubesentiment_api_writes_total`) is the API server's but
    // for the test's create (in a batch no stray write of another controller landed in).
    assert_eq!(own_writes, least - 1.0, "the operator counted {own_writes} writes, the API server {least} with the create: {by_kind:?}");
    println!("writes of a single-chunk batch: {least} ({by_kind:?}); all three: {:?}", counts[0]);
    assert!(least >= 3.0, "the create, the results and the final status at least: {counts:?}");
    assert!(least <= MOST_WRITES, "a single-chunk batch costs {least} writes, over {MOST_WRITES}: {by_kind:?}");
    assert_eq!(by_kind.get("sentimentbatches/PATCH"), None, "no finalizer patch: {by_kind:?}");
    let (job_least, job_by_kind, job_own) = fewest(&counts[1]);
    println!("writes of a single-chunk REST job: {job_least} ({job_by_kind:?}); all three: {:?}", counts[1]);
    assert_eq!(job_own, job_least - 1.0, "{job_by_kind:?}");
    assert!(job_least <= MOST_WRITES, "a single-chunk REST job costs {job_least} writes, over {MOST_WRITES}: {job_by_kind:?}");
    assert_eq!(job_by_kind.get("sentimentbatches/PATCH"), None, "no finalizer patch: {job_by_kind:?}");
    assert_eq!(job_by_kind.get("sentimentbatches/status/PATCH"), Some(&1.0), "one status write: {job_by_kind:?}");
    assert_eq!(job_by_kind.get("configmaps/POST"), Some(&1.0), "part and manifest in one: {job_by_kind:?}");

    // A small job that outlives a status period, but not QUIET (its endpoint stopped for
    // 2.5 s under it), writes no Running status and no Event either.
    let before = writes(&metrics(env.cluster));
    inference.proc.signal("STOP");
    let slow = jobs::create(&env.ns.client, &origin, NewJob::texts(texts(10, "slow"), Priority::Medium)).await.unwrap().name_any();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    inference.proc.signal("CONT");
    env.phase(&slow, Phase::Succeeded).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let slow_by_kind = delta(&before, &writes(&metrics(env.cluster)));
    assert_eq!(slow_by_kind.get("sentimentbatches/status/PATCH"), Some(&1.0), "the final status alone: {slow_by_kind:?}");
    let slow_events = reasons_of(&env, &slow);
    assert!(slow_events.is_empty(), "no Event: {slow_events:?}");

    // A batch that runs for longer than a status period is announced as Started.
    env.configmap("longer", json!({"texts": texts(10_000, "longer").join("\n")})).await;
    env.create("longer", json!({"source": {"configMapKeyRef": {"name": "longer", "key": "texts"}}})).await.unwrap();
    env.phase("longer", Phase::Succeeded).await;
    let longer = kubesentiment_tests::eventually(Duration::from_secs(30), "the longer batch's Events", || async {
        let r = reasons_of(&env, "longer");
        Ok(r.contains(&"Succeeded".to_string()).then_some(r))
    })
    .await
    .unwrap();
    assert!(longer.contains(&"Started".to_string()), "{longer:?}");
    // The batches of the fewest writes were not announced, their success neither.
    assert_eq!(by_kind.get("events/POST"), None, "{by_kind:?}");
}

/// The reasons of the Events about batch `name`.
fn reasons_of(env: &kubesentiment_tests::batches::Env, name: &str) -> Vec<String> {
    let (_, out, _) = env.kubectl(&["get", "events", "--field-selector", &format!("involvedObject.name={name}"), "-o", "json"]);
    let events: serde_json::Value = serde_json::from_str(&out).unwrap();
    events["items"].as_array().unwrap().iter().map(|e| e["reason"].as_str().unwrap_or_default().to_string()).collect()
}
