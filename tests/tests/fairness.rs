//! Priorities under backlog, fair shares between tenants, and fencing between leaders
//! (#16), against the real control plane and inference servers.
//!
//! The backlogs are built while no inference endpoint is registered, so every batch is
//! admitted and waiting when the first endpoint appears: what goes first is then the
//! scheduler's choice alone, not the order the test happened to create batches in. What
//! went first is read from the operator's own metrics, polled as the endpoint appears.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, Patch, PatchParams};
use kubesentiment_core::crd::Phase;
use kubesentiment_core::names::{BATCH_UID_LABEL, RESULTS_KIND_LABEL, TENANT_LABEL};
use kubesentiment_tests::batches::{Env, condition, env, status};
use kubesentiment_tests::stack::{Inference, Proc, operator, register};
use kubesentiment_tests::{OUTLASTING, eventually, texts};
use serde_json::json;

/// Waits until `n` batches of `env` are admitted and waiting for an endpoint.
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

/// Polls the operator's metrics every 20 ms until `done(page)` gives a value.
async fn watch_metrics<T>(op: &Proc, done: impl Fn(&str) -> Option<T>) -> T {
    let addr = op.output().split("listening on ").nth(1).and_then(|a| a.split_whitespace().next()).unwrap().to_string();
    let began = Instant::now();
    loop {
        let page = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
        if let Some(v) = done(&page) {
            return v;
        }
        assert!(began.elapsed() < Duration::from_secs(120), "the awaited dispatch never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The index of every result line stored in the part ConfigMaps of batch `uid`, with
/// any duplicates that overlapping parts hold.
async fn stored_indices(env: &Env, uid: &str) -> Vec<u64> {
    let parts = ListParams::default().labels(&format!("{BATCH_UID_LABEL}={uid},{RESULTS_KIND_LABEL}=part"));
    let cms = env.ns.api::<ConfigMap>().list(&parts).await.unwrap().items;
    let bodies = cms.into_iter().filter_map(|cm| cm.data?.remove("results.jsonl"));
    bodies
        .flat_map(|b| {
            b.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["index"].as_u64().unwrap()).collect::<Vec<_>>()
        })
        .collect()
}

/// The value of one series (`name{labels}`) on a metrics page.
fn series(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

#[tokio::test]
async fn a_high_batch_overtakes_five_hundred_queued_low_ones() {
    let Some(env) = env("backlog").await else { return };
    let inf = Inference::start(&[]).unwrap();
    let op = operator(env.cluster, &env.ns.name, &["--workers", "1"], &[]).unwrap();
    let (lows, each) = (500, 40);
    let created = Instant::now();
    for i in 0..lows {
        env.create(&format!("low-{i}"), json!({"texts": texts(each, &format!("low-{i}")), "priority": "low", "maxBatchSize": 20}))
            .await
            .unwrap();
    }
    all_waiting(&env, lows).await;
    // The lows wait long enough for aging to lift them as far as it may (25 s is two and
    // a half aging periods: uncapped aging would put them level with a new high batch,
    // and ahead of it by their earlier deadlines); then the high batch arrives.
    tokio::time::sleep(Duration::from_secs(25).saturating_sub(created.elapsed())).await;
    env.create("urgent", json!({"texts": texts(10, "urgent"), "priority": "high"})).await.unwrap();
    all_waiting(&env, lows + 1).await;
    let began = Instant::now();
    register(&env.ns, &[inf.port]).await.unwrap();
    let lows_before = watch_metrics(&op, |page| {
        let high = series(page, "kubesentiment_queued_texts{priority=\"high\"}")?;
        let low = series(page, "kubesentiment_queued_texts{priority=\"low\"}")?;
        (high == 0.0).then(|| (lows * each) as f64 - low)
    })
    .await;
    let dispatched = began.elapsed();
    env.phase("urgent", Phase::Succeeded).await;
    eprintln!(
        "high batch behind {lows} lows: dispatched after {lows_before} low texts, {dispatched:?} after the endpoint appeared; Succeeded after {:?}",
        began.elapsed()
    );
    // Its chunk is the first or second dispatch; the rest went out while the metrics
    // were polled (every 20 ms). With aging uncapped, thousands would go first.
    assert!(lows_before <= 200.0, "{lows_before} low texts were dispatched before the high batch's");
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
    let dispatched = |tenant: &str| format!("kubesentiment_tenant_dispatched_texts_total{{tenant=\"{}/{tenant}\"}}", env.ns.name);
    let (a, b) = (dispatched("team-a"), dispatched("team-b"));
    let began = Instant::now();
    register(&env.ns, &[inf.port]).await.unwrap();
    let a_before_b = watch_metrics(&op, |page| (series(page, &b)? >= 20.0).then(|| series(page, &a).unwrap_or(0.0))).await;
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
    let stored = stored_indices(&env, b.metadata.uid.as_deref().unwrap()).await.len();
    assert!(stored > n, "both leaders committed overlapping parts ({stored} lines stored)");
    // Read through the manifest: one line per text, in order.
    let lines = env.results(&b).await;
    let indices: Vec<u64> = lines.iter().map(|l| l["index"].as_u64().unwrap()).collect();
    let wrong = indices.iter().enumerate().find(|(i, index)| *i as u64 != **index);
    assert!(indices.len() == n && wrong.is_none(), "{} lines; first out of place: {wrong:?}", indices.len());
}

/// A text that kills the inference server it is sent to: each attempt crashes a server
/// (the supervisor restarts it, as a kubelet would), the text is isolated by halving
/// and dead-lettered after `max_retries`, and every other text succeeds.
#[tokio::test]
async fn a_text_that_crashes_its_server_fails_alone() {
    let Some(env) = env("crash").await else { return };
    let servers = [
        Inference::supervised(&["--fail-on", "CRASH", "--fault", "abort"]).unwrap(),
        Inference::supervised(&["--fail-on", "CRASH", "--fault", "abort"]).unwrap(),
    ];
    register(&env.ns, &servers.iter().map(|s| s.port).collect::<Vec<_>>()).await.unwrap();
    let _op = operator(env.cluster, &env.ns.name, &["--max-retries", "2"], &[]).unwrap();
    let n = 2000;
    let mut items = texts(n, "crash");
    items[1234] = "this text will CRASH the server".into();
    env.configmap("src", json!({"lines": items.join("\n")})).await;
    env.create("crashy", json!({"source": {"configMapKeyRef": {"name": "src", "key": "lines"}}, "maxBatchSize": 100})).await.unwrap();
    let b = env.phase("crashy", Phase::Succeeded).await;
    let s = status(&b);
    assert_eq!((s.processed_texts, s.failed_texts), (n as i64, 1), "{s:#?}");
    let f = s.failures.as_ref().unwrap();
    assert_eq!(f.samples[0].index, 1234, "{f:?}");
    let restarts: usize = servers.iter().map(Inference::restarts).sum();
    eprintln!("{restarts} server restarts");
    assert!(restarts >= 2, "the text crashed a server on every attempt ({restarts} restarts)");
    let lines = env.results(&b).await;
    assert!(lines.len() == n && lines.iter().enumerate().all(|(i, l)| l["index"] == i && (i == 1234) == l.get("error").is_some()));
}

/// Cancel and expiry while chunks are in flight: nothing lands after the final status,
/// so the stored results agree with the counts in it, also a while later.
#[tokio::test]
async fn no_part_lands_after_a_cancel_or_an_expiry() {
    let Some(env) = env("fenced").await else { return };
    let inf = Inference::one_thread().unwrap();
    register(&env.ns, &[inf.port]).await.unwrap();
    let _op = operator(env.cluster, &env.ns.name, &["--workers", "4"], &[]).unwrap();
    env.configmap("src", json!({"lines": texts(OUTLASTING, "fenced").join("\n")})).await;
    let source = json!({"configMapKeyRef": {"name": "src", "key": "lines"}});
    env.create("cancelled", json!({"source": source, "maxBatchSize": 20})).await.unwrap();
    env.create("expired", json!({"source": source, "maxBatchSize": 20, "timeoutSeconds": 3})).await.unwrap();
    env.progressed("cancelled").await;
    env.batches().patch("cancelled", &PatchParams::default(), &Patch::Merge(json!({"spec": {"cancel": true}}))).await.unwrap();
    for (name, phase) in [("cancelled", Phase::Cancelled), ("expired", Phase::Expired)] {
        let b = env.phase(name, phase).await;
        let ok = status(&b).summary.as_ref().map_or(0, |s| s.successful_predictions);
        assert!(ok > 0 && ok < OUTLASTING as i64, "{name}: stopped mid-run with {ok} done");
        // Chunks that were in flight at the end had seconds to land, if they could.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut indices = stored_indices(&env, b.metadata.uid.as_deref().unwrap()).await;
        indices.sort();
        indices.dedup();
        assert_eq!(indices.len() as i64, ok, "{name}: the stored results are exactly those its final status counts");
    }
}
