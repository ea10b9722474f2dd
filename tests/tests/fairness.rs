//! Priorities under backlog, fair shares between tenants, and fencing between leaders
//! (#16), against the real control plane and inference servers.
//!
//! The backlogs are built while no inference endpoint is registered, so every batch is
//! admitted and waiting when the first endpoint appears: what goes first is then the
//! scheduler's choice alone, not the order the test happened to create batches in.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ListParams;
use kubesentiment_core::crd::Phase;
use kubesentiment_core::names::{BATCH_UID_LABEL, RESULTS_KIND_LABEL, TENANT_LABEL};
use kubesentiment_tests::batches::{Env, condition, env, status};
use kubesentiment_tests::stack::{Inference, operator, register};
use kubesentiment_tests::{eventually, texts};
use serde_json::json;

/// Batches of `env` in phase Succeeded whose name starts with `prefix`.
async fn succeeded(env: &Env, prefix: &str) -> usize {
    let all = env.batches().list(&ListParams::default()).await.unwrap().items;
    all.iter().filter(|b| b.metadata.name.as_deref().is_some_and(|n| n.starts_with(prefix)) && b.phase() == Phase::Succeeded).count()
}

/// Waits until every batch of `env` is admitted and waiting for an endpoint.
async fn all_waiting(env: &Env, n: usize) {
    eventually(Duration::from_secs(180), "every batch admitted and waiting for capacity", || {
        let api = env.batches();
        async move {
            let all = api.list(&ListParams::default()).await?.items;
            let waiting = all.iter().filter(|b| condition(b, "Running").is_some_and(|c| c.reason == "WaitingForCapacity")).count();
            Ok((waiting >= n).then_some(()))
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_high_batch_overtakes_five_hundred_queued_low_ones() {
    let Some(env) = env("backlog").await else { return };
    let inf = Inference::start(&[]).unwrap();
    let _op = operator(env.cluster, &env.ns.name, &["--workers", "1"], &[]).unwrap();
    let lows = 500;
    for i in 0..lows {
        env.create(&format!("low-{i}"), json!({"texts": texts(40, &format!("low-{i}")), "priority": "low", "maxBatchSize": 20}))
            .await
            .unwrap();
    }
    env.create("urgent", json!({"texts": texts(10, "urgent"), "priority": "high"})).await.unwrap();
    all_waiting(&env, lows + 1).await;
    let began = Instant::now();
    register(&env.ns, &[inf.port]).await.unwrap();
    env.phase("urgent", Phase::Succeeded).await;
    let took = began.elapsed();
    let lows_done = succeeded(&env, "low-").await;
    eprintln!("high batch behind {lows} lows: Succeeded {took:?} after the endpoint appeared, {lows_done} lows done by then");
    // Its chunk is the first or second dispatch. The lows finish meanwhile only while its
    // end is written (about 100 lows a second here); ahead of it, all 500 would.
    assert!(lows_done < lows / 5, "{lows_done} low batches finished first");
}

#[tokio::test]
async fn one_tenants_three_hundred_batches_do_not_hold_back_anothers_one() {
    let Some(env) = env("tenants").await else { return };
    let inf = Inference::start(&[]).unwrap();
    let op = operator(env.cluster, &env.ns.name, &["--workers", "1"], &[]).unwrap();
    for i in 0..300 {
        let labels = json!({TENANT_LABEL: "team-a"});
        env.create_labelled(&format!("a-{i}"), labels, json!({"texts": texts(20, &format!("a-{i}")), "maxBatchSize": 20})).await.unwrap();
    }
    env.create_labelled("b-0", json!({TENANT_LABEL: "team-b"}), json!({"texts": texts(20, "b"), "maxBatchSize": 20})).await.unwrap();
    all_waiting(&env, 301).await;
    let addr = op.output().split("listening on ").nth(1).and_then(|a| a.split_whitespace().next()).unwrap().to_string();
    let dispatched = |tenant: &str| format!("kubesentiment_tenant_dispatched_texts_total{{tenant=\"{}/{tenant}\"}}", env.ns.name);
    let (a, b) = (dispatched("team-a"), dispatched("team-b"));
    register(&env.ns, &[inf.port]).await.unwrap();
    // The operator's own count of texts dispatched per tenant, read as soon as team b's
    // 20 went out.
    let value = |page: &str, series: &str| page.lines().find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok()).unwrap_or(0.0);
    let began = Instant::now();
    let a_before_b = loop {
        let page = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
        if value(&page, &b) >= 20.0 {
            break value(&page, &a);
        }
        assert!(began.elapsed() < Duration::from_secs(120), "team b's batch was never dispatched");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("team b's 20 texts dispatched after {a_before_b} of team a's ({:?} after the endpoint appeared)", began.elapsed());
    // Within one round: team b's chunk is the first or second dispatch; the rest is what
    // went out while the metrics were polled (every 20 ms). Behind the backlog it would
    // be all 6,000.
    assert!(a_before_b <= 200.0, "{a_before_b} of team a's texts went out before team b's 20");
    env.phase("b-0", Phase::Succeeded).await;
}

/// Two operators leading at once (each with its own lease, as after a partition) with
/// different chunk sizes: the parts overlap, and still every text has exactly one line
/// and the counts add up.
#[tokio::test]
async fn two_overlapping_leaders_leave_exactly_one_line_per_text() {
    let Some(env) = env("twoleaders").await else { return };
    let inf = Inference::start(&[]).unwrap();
    register(&env.ns, &[inf.port]).await.unwrap();
    let n = 2000;
    env.configmap("src", json!({"lines": texts(n, "two").join("\n")})).await;
    let _a = operator(env.cluster, &env.ns.name, &["--workers", "1", "--lease-name", "leader-a"], &[("ASYNC_BATCH_MAX_BATCH_SIZE", "30")])
        .unwrap();
    let _b = operator(env.cluster, &env.ns.name, &["--workers", "1", "--lease-name", "leader-b"], &[("ASYNC_BATCH_MAX_BATCH_SIZE", "40")])
        .unwrap();
    env.create("both", json!({"source": {"configMapKeyRef": {"name": "src", "key": "lines"}}})).await.unwrap();
    let b = env.phase("both", Phase::Succeeded).await;
    let s = status(&b);
    assert_eq!((s.total_texts, s.processed_texts, s.failed_texts), (n as i64, n as i64, 0), "{s:#?}");
    // The overlap happened: the stored parts hold more lines than there are texts.
    let uid = b.metadata.uid.clone().unwrap();
    let parts = ListParams::default().labels(&format!("{BATCH_UID_LABEL}={uid},{RESULTS_KIND_LABEL}=part"));
    let stored: usize = env
        .ns
        .api::<ConfigMap>()
        .list(&parts)
        .await
        .unwrap()
        .items
        .iter()
        .map(|cm| cm.data.as_ref().and_then(|d| d.get("results.jsonl")).map_or(0, |b| b.lines().count()))
        .sum();
    assert!(stored > n, "both leaders committed overlapping parts ({stored} lines stored)");
    // Read through the manifest: one line per text, in order.
    let lines = env.results(&b).await;
    let indices: Vec<u64> = lines.iter().map(|l| l["index"].as_u64().unwrap()).collect();
    let wrong = indices.iter().enumerate().find(|(i, index)| *i as u64 != **index);
    assert!(indices.len() == n && wrong.is_none(), "{} lines; first out of place: {wrong:?}", indices.len());
}
