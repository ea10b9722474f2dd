//! The API writes of a batch that fits in one chunk, as the API server counts them
//! (`apiserver_request_total`), so that a change that adds writes fails here (#17). This
//! binary holds this one test, so no other test writes while it counts (test binaries run
//! one after another); of three batches the fewest writes count, so a stray write of the
//! control plane's own controllers (namespace cleanup of earlier tests) does not.

use std::time::Duration;

use kubesentiment_core::crd::Phase;
use kubesentiment_tests::apiserver::{delta, metrics, writes};
use kubesentiment_tests::batches::env;
use kubesentiment_tests::stack::{Inference, operator, register};
use kubesentiment_tests::texts;
use serde_json::json;

/// The writes a 10-text batch costs today, in all: its create, its Running and final
/// status, its results part and manifest, and its Events. #17 aims at 3.
const MOST_WRITES: f64 = 8.0;

#[tokio::test(flavor = "multi_thread")]
async fn a_single_chunk_batch_costs_at_most_its_writes() {
    let Some(env) = env("writes").await else { return };
    let inference = Inference::start(&[]).unwrap();
    register(&env.ns, &[inference.port]).await.unwrap();
    let _op = operator(env.cluster, &env.ns.name, &[], &[]).unwrap();
    // The namespace's own ConfigMap (kube-root-ca.crt) is written before the count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut counts = Vec::new();
    for i in 0..3 {
        let name = format!("one-chunk-{i}");
        let before = writes(&metrics(env.cluster));
        env.create(&name, json!({"texts": texts(10, &name)})).await.unwrap();
        env.phase(&name, Phase::Succeeded).await;
        // The last Events are written after the final status.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let by_kind = delta(&before, &writes(&metrics(env.cluster)));
        counts.push((by_kind.values().sum::<f64>(), by_kind));
    }
    let (least, by_kind) = counts.iter().min_by(|a, b| a.0.total_cmp(&b.0)).unwrap();
    println!("writes of a single-chunk batch: {least} ({by_kind:?}); all three: {counts:?}");
    assert!(*least >= 3.0, "the create, the results and the final status at least: {counts:?}");
    assert!(*least <= MOST_WRITES, "a single-chunk batch costs {least} writes, over {MOST_WRITES}: {by_kind:?}");
}
