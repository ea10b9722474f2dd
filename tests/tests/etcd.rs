//! What batches cost the API server and etcd (#15): the bytes each batch size writes, and
//! etcd's size under thousands of small jobs with a TTL. Benchmarks, not part of
//! `cargo test` (they need the control plane to themselves, and minutes); run by hand on
//! a fresh control plane and record the figures in docs/BENCHMARKS.md:
//!
//! ```sh
//! cargo test -p kubesentiment-tests --release --test etcd -- --ignored --nocapture --test-threads 1
//! ```

use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ListParams;
use kubesentiment_core::crd::Phase;
use kubesentiment_core::names::BATCH_UID_LABEL;
use kubesentiment_tests::apiserver::{by_resource, metrics};
use kubesentiment_tests::batches::{Env, env};
use kubesentiment_tests::stack::{Inference, Proc, operator, register};
use kubesentiment_tests::{eventually, texts};
use serde_json::json;

fn storage_bytes(env: &Env) -> f64 {
    let page = metrics(env.cluster);
    page.lines().find_map(|l| l.strip_prefix("apiserver_storage_size_bytes{")?.rsplit(' ').next()?.parse().ok()).unwrap()
}

fn start(env: &Env) -> (Inference, Proc) {
    let inf = Inference::start(&[]).unwrap();
    let op = operator(env.cluster, &env.ns.name, &["--lease-duration-seconds", "15"], &[]).unwrap();
    (inf, op)
}

/// One batch of each size, alone on the API server: the writes (requests and body
/// bytes, by resource and verb) from its create to its final status and Events.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: needs the control plane to itself"]
async fn api_writes_per_batch_size() {
    let Some(env) = env("writes").await else { return };
    let (inf, _op) = start(&env);
    register(&env.ns, &[inf.port]).await.unwrap();
    for n in [1, 10, 100, 1_000, 10_000] {
        let name = format!("size-{n}");
        let spec = if n <= 1_000 {
            json!({"texts": texts(n, &name)})
        } else {
            // Over an inline batch's 256 KiB: from a ConfigMap (whose own create is the
            // user's, before the count starts).
            env.configmap(&name, json!({"lines": texts(n, &name).join("\n")})).await;
            json!({"source": {"configMapKeyRef": {"name": name, "key": "lines"}}})
        };
        let page = metrics(env.cluster);
        let (bytes0, writes0) =
            (by_resource(&page, "apiserver_request_body_size_bytes_sum"), by_resource(&page, "apiserver_request_body_size_bytes_count"));
        env.create(&name, spec).await.unwrap();
        env.phase(&name, Phase::Succeeded).await;
        // The last Events are written after the final status.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let page = metrics(env.cluster);
        let (bytes1, writes1) =
            (by_resource(&page, "apiserver_request_body_size_bytes_sum"), by_resource(&page, "apiserver_request_body_size_bytes_count"));
        let mut rows = Vec::new();
        for (key, b) in &bytes1 {
            let (db, dw) = (b - bytes0.get(key).unwrap_or(&0.0), writes1[key] - writes0.get(key).unwrap_or(&0.0));
            if dw > 0.0 {
                rows.push(format!("{key} {dw} ({:.1} KB)", db / 1e3));
            }
        }
        let total_writes: f64 = writes1.iter().map(|(k, w)| w - writes0.get(k).unwrap_or(&0.0)).sum();
        let total_bytes: f64 = bytes1.iter().map(|(k, b)| b - bytes0.get(k).unwrap_or(&0.0)).sum();
        println!("{n} texts: {total_writes} writes, {:.1} KB: {}", total_bytes / 1e3, rows.join(", "));
    }
}

/// 5,000 jobs of 10 texts with a 30 s TTL, twice, with an etcd compaction (the API
/// server compacts every 5 minutes) between: the second round reuses the space the
/// first one freed, so the database stops growing.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: about fifteen minutes"]
async fn etcd_stops_growing_with_a_ttl() {
    const JOBS: usize = 5_000;
    let Some(env) = env("ttl-etcd").await else { return };
    let (inf, _op) = start(&env);
    register(&env.ns, &[inf.port]).await.unwrap();
    let before = storage_bytes(&env);
    println!("etcd before: {:.1} MB", before / 1e6);
    for round in 1..=2 {
        let began = Instant::now();
        stream::iter(0..JOBS)
            .map(|i| {
                let env = &env;
                let spec = json!({"texts": texts(10, &format!("r{round}-{i}")), "ttlSecondsAfterFinished": 30});
                async move { env.create(&format!("r{round}-{i}"), spec).await }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        let grown = storage_bytes(&env);
        eventually(Duration::from_secs(1800), "every job done and deleted after its TTL, with its results", || {
            let (batches, results) = (env.batches(), env.ns.api::<ConfigMap>());
            async move {
                let batches = batches.list_metadata(&ListParams::default()).await?.items;
                let results = results.list_metadata(&ListParams::default().labels(BATCH_UID_LABEL)).await?.items;
                Ok((batches.is_empty() && results.is_empty()).then_some(()))
            }
        })
        .await
        .unwrap();
        println!(
            "round {round}: {JOBS} jobs done and deleted with their results {:?} after the first create; etcd {:.1} MB when all were created, {:.1} MB now",
            began.elapsed(),
            grown / 1e6,
            storage_bytes(&env) / 1e6
        );
        if round == 1 {
            // Past the API server's next compaction of the deleted revisions.
            tokio::time::sleep(Duration::from_secs(330)).await;
            println!("after a compaction: {:.1} MB", storage_bytes(&env) / 1e6);
        }
    }
    println!("etcd after two rounds: {:.1} MB (before: {:.1} MB)", storage_bytes(&env) / 1e6, before / 1e6);
}
