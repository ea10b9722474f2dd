//! Batches that behave like Kubernetes Jobs (#15): `kubectl wait` on Complete and
//! Failed, deletion after `ttlSecondsAfterFinished`, suspend and resume, a batch of
//! 100,000 texts that expires with most undone, results that cannot be written, a delete
//! whose S3 results cannot be reached, a source edited under a running batch, and the
//! part of a start no status records.
//!
//! Each test has its own namespace and operator, against the real control plane,
//! inference servers and (where S3) moto's server.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use kubesentiment_core::config::ObjectStores;
use kubesentiment_core::crd::Phase;
use kubesentiment_core::names::{BATCH_UID_LABEL, RESULTS_KIND_LABEL};
use kubesentiment_core::store::Store;
use kubesentiment_tests::batches::{Env, LONG, condition, env, status};
use kubesentiment_tests::stack::{Inference, S3, facade, operator, register};
use kubesentiment_tests::{OUTLASTING, eventually, texts};
use serde_json::json;

async fn with_inference(prefix: &str) -> Option<(Env, Inference)> {
    let env = env(prefix).await?;
    let inf = Inference::one_thread().unwrap();
    register(&env.ns, &[inf.port]).await.unwrap();
    Some((env, inf))
}

/// Deletes batch `name` and waits until the operator has let it go.
async fn delete(env: &Env, name: &str) {
    env.batches().delete(name, &Default::default()).await.unwrap();
    eventually(LONG, "the batch gone", || {
        let batches = env.batches();
        async move { Ok(batches.get_opt(name).await?.is_none().then_some(())) }
    })
    .await
    .unwrap();
}

/// `kubectl wait --for=condition=…` on batch `name`, for at most `secs`.
fn wait(env: &Env, name: &str, condition: &str, secs: u32) -> bool {
    env.kubectl(&["wait", &format!("--for=condition={condition}"), &format!("sb/{name}"), &format!("--timeout={secs}s")]).0
}

#[tokio::test]
async fn kubectl_wait_works_as_for_a_job() {
    let Some((env, _inf)) = with_inference("wait").await else { return };
    let _op = operator(env.cluster, &env.ns.name, &[], &[]).unwrap();
    let big = texts(OUTLASTING, "w").join("\n");
    env.configmap("big", json!({"lines": big})).await;
    env.create("ok", json!({"texts": ["a fine day", "a terrible day"]})).await.unwrap();
    env.create("wrong-model", json!({"texts": ["hello"], "model": "not-the-served-model"})).await.unwrap();
    env.create("expires", json!({"source": {"configMapKeyRef": {"name": "big", "key": "lines"}}, "timeoutSeconds": 2, "maxBatchSize": 20}))
        .await
        .unwrap();
    env.create("cancelled", json!({"source": {"configMapKeyRef": {"name": "big", "key": "lines"}}, "maxBatchSize": 20})).await.unwrap();
    env.progressed("cancelled").await;
    env.batches().patch("cancelled", &PatchParams::default(), &Patch::Merge(json!({"spec": {"cancel": true}}))).await.unwrap();

    assert!(wait(&env, "ok", "Complete", 120));
    for (name, reason) in [("wrong-model", "Failed"), ("expires", "DeadlineExceeded"), ("cancelled", "Cancelled")] {
        assert!(wait(&env, name, "Failed", 120), "{name}");
        let b = env.batches().get(name).await.unwrap();
        assert_eq!(condition(&b, "Failed").unwrap().reason, reason, "{name}");
        // Complete is for a success only: waiting for it on a failed batch times out.
        assert!(!wait(&env, name, "Complete", 2), "{name}");
    }
    assert!(!wait(&env, "ok", "Failed", 2));
    let (_, out, _) = env.kubectl(&["get", "sb", "wrong-model", "-o", "jsonpath={.status.reason}"]);
    assert_eq!(out, "ModelMismatch");
}

#[tokio::test]
async fn a_finished_batch_is_deleted_after_its_ttl_with_what_it_owns() {
    let Some((env, _inf)) = with_inference("ttl").await else { return };
    let _op = operator(env.cluster, &env.ns.name, &[], &[]).unwrap();
    env.create("short", json!({"texts": texts(20, "ttl"), "ttlSecondsAfterFinished": 3})).await.unwrap();
    env.create("kept", json!({"texts": texts(5, "kept")})).await.unwrap();
    let b = env.phase("short", Phase::Succeeded).await;
    let uid = b.metadata.uid.clone().unwrap();
    let owned = ListParams::default().labels(&format!("{BATCH_UID_LABEL}={uid}"));
    assert!(!env.ns.api::<ConfigMap>().list(&owned).await.unwrap().items.is_empty(), "results are stored");
    let ended = Instant::now();
    eventually(LONG, "the batch and its results deleted", || {
        let (batches, cms, owned) = (env.batches(), env.ns.api::<ConfigMap>(), owned.clone());
        async move { Ok((batches.get_opt("short").await?.is_none() && cms.list(&owned).await?.items.is_empty()).then_some(())) }
    })
    .await
    .unwrap();
    assert!(ended.elapsed() >= Duration::from_secs(2), "not before its TTL ({:?})", ended.elapsed());
    // Without a TTL (and none configured) a batch stays.
    env.phase("kept", Phase::Succeeded).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(env.batches().get_opt("kept").await.unwrap().is_some());
}

#[tokio::test]
async fn suspend_and_resume_mid_run_compute_each_text_once() {
    let Some((env, inf)) = with_inference("suspend").await else { return };
    let _op = operator(env.cluster, &env.ns.name, &["--workers", "1"], &[]).unwrap();
    let n = 3000;
    env.configmap("big", json!({"lines": texts(n, "s").join("\n")})).await;
    env.create("held", json!({"source": {"configMapKeyRef": {"name": "big", "key": "lines"}}, "maxBatchSize": 50})).await.unwrap();
    env.progressed("held").await;
    env.batches().patch("held", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": true}}))).await.unwrap();
    let b = env.phase("held", Phase::Suspended).await;
    assert_eq!(condition(&b, "Suspended").unwrap().status, "True");
    let at_suspend = status(&b).processed_texts;
    assert!(at_suspend > 0 && at_suspend < n as i64, "{at_suspend}");
    // Nothing runs while suspended.
    let inferred = inf.texts_inferred().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(inf.texts_inferred().await.unwrap(), inferred);
    assert_eq!(status(&env.batches().get("held").await.unwrap()).processed_texts, at_suspend);
    let (_, out, _) = env.kubectl(&["get", "sb", "held"]);
    assert!(out.contains("Suspended") && out.contains("true"), "{out}");
    // Resume: the rest, each text once.
    env.batches().patch("held", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": false}}))).await.unwrap();
    let b = env.phase("held", Phase::Succeeded).await;
    assert!(condition(&b, "Suspended").is_none());
    let lines = env.results(&b).await;
    let indices: Vec<u64> = lines.iter().map(|l| l["index"].as_u64().unwrap()).collect();
    assert_eq!(indices, (0..n as u64).collect::<Vec<_>>());
    let total = inf.texts_inferred().await.unwrap();
    assert!(total <= n as f64 + 100.0, "committed work was not redone ({total} inferred)");
    // A batch created suspended is never admitted until resumed.
    env.create("born-held", json!({"texts": ["held from the start"], "suspend": true})).await.unwrap();
    env.phase("born-held", Phase::Suspended).await;
    env.batches().patch("born-held", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": false}}))).await.unwrap();
    env.phase("born-held", Phase::Succeeded).await;
}

#[tokio::test]
async fn a_hundred_thousand_texts_expire_with_a_complete_failures_list() {
    let Some((env, _inf)) = with_inference("huge").await else { return };
    let s3 = S3::start().await.unwrap();
    let n = 100_000;
    let body: String =
        (0..n).map(|i| json!({"text": format!("review {i} of the huge batch"), "id": format!("r{i}")}).to_string() + "\n").collect();
    s3.put("ks-huge", "").await.unwrap();
    s3.put("ks-huge/texts.jsonl", body).await.unwrap();
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "s3"}, "stringData": {"accessKeyId": "test", "secretAccessKey": "test"}}))
            .unwrap();
    env.ns.api::<Secret>().create(&PostParams::default(), &secret).await.unwrap();
    let _op = operator(env.cluster, &env.ns.name, &["--workers", "1"], &[]).unwrap();
    env.create(
        "huge",
        json!({"source": {"s3": {"bucket": "ks-huge", "key": "texts.jsonl", "endpoint": s3.endpoint, "region": "us-east-1",
               "credentialsSecretRef": {"name": "s3"}}}, "timeoutSeconds": 5, "maxBatchSize": 100}),
    )
    .await
    .unwrap();
    let b = env.phase("huge", Phase::Expired).await;
    let s = status(&b);
    let ok = s.summary.as_ref().unwrap().successful_predictions;
    assert!(ok < n / 2, "most texts undone: {ok} of {n}");
    assert_eq!((s.total_texts, s.failed_texts), (n, n - ok));
    // The dead-letter list holds every unfinished text, in shards the manifest names.
    let store = Store::for_batch(&env.ns.client, &b, &ObjectStores::default()).unwrap();
    let failures = store.read_failures().await.unwrap();
    assert_eq!(failures.len() as i64, n - ok);
    assert!(failures.windows(2).all(|w| w[0].index < w[1].index) && failures.iter().all(|f| f.error.as_deref() == Some("timeout")));
    assert_eq!(failures[0].id.as_deref(), None, "timeouts carry no id: the texts were never read back");
    let lines = store.read_range(0..n as usize).await.unwrap();
    assert_eq!(lines.len() as i64, ok);

    // The same as one JSONL download from the facade, parts and failure shards merged a
    // part at a time: every index once, in input order.
    let (_facade, url) = facade(env.cluster, &env.ns.name, &[], &[]).await.unwrap();
    let download = |query: &str| {
        let url = format!("{url}/api/v1/batch/results/huge/download{query}");
        async move {
            let got = reqwest::get(url).await.unwrap();
            assert_eq!(got.headers()["content-type"], "application/x-ndjson");
            let body = got.error_for_status().unwrap().text().await.unwrap();
            body.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).collect::<Vec<_>>()
        }
    };
    let items = download("").await;
    assert_eq!(items.iter().map(|i| i["index"].as_i64().unwrap()).collect::<Vec<_>>(), (0..n).collect::<Vec<_>>());
    let done: Vec<_> = items.iter().filter(|i| i["label"].is_string()).collect();
    assert_eq!(done.len() as i64, ok);
    assert!(done.iter().all(|i| i["custom_id"] == format!("r{}", i["index"])), "a computed line keeps its id");
    assert_eq!(items.iter().filter(|i| i["error"] == "timeout").count() as i64, n - ok);
    let errors = download("?errors=true").await;
    assert_eq!(errors.len() as i64, n - ok);
    assert!(errors.windows(2).all(|w| w[0]["index"].as_i64() < w[1]["index"].as_i64()));
}

#[tokio::test]
async fn results_that_cannot_be_written_fail_the_batch_in_bounded_time() {
    let Some((env, _inf)) = with_inference("unwritable").await else { return };
    let _op = operator(env.cluster, &env.ns.name, &[], &[]).unwrap();
    // /proc takes no files, whoever writes.
    env.create("nowhere", json!({"texts": texts(30, "u"), "output": "file:///proc/kubesentiment-results"})).await.unwrap();
    let began = Instant::now();
    let b = env.phase("nowhere", Phase::Failed).await;
    assert_eq!(status(&b).reason.as_deref(), Some("ResultsUnwritable"), "{:#?}", b.status);
    assert!(began.elapsed() < Duration::from_secs(90), "bounded: {:?}", began.elapsed());
    let events = env.kubectl(&["get", "events", "--field-selector", "involvedObject.name=nowhere", "-o", "json"]).1;
    assert!(events.contains("ResultsUnwritable"), "{events}");
}

/// A ConfigMap that happens to have the name of a batch's results is someone else's: it
/// is neither overwritten nor deleted, and the batch fails saying so.
#[tokio::test]
async fn a_configmap_that_is_not_the_batchs_is_never_overwritten() {
    let Some((env, _inf)) = with_inference("clash").await else { return };
    let _op = operator(env.cluster, &env.ns.name, &[], &[]).unwrap();
    env.configmap("theirs-results", json!({"manifest.json": "not yours"})).await;
    env.create("theirs", json!({"texts": texts(10, "c")})).await.unwrap();
    let b = env.phase("theirs", Phase::Failed).await;
    assert_eq!(status(&b).reason.as_deref(), Some("ResultsUnwritable"), "{:#?}", b.status);
    let message = &condition(&b, "Failed").unwrap().message;
    assert!(message.contains("theirs-results already exists and is not this batch's"), "{message}");
    let untouched = |cm: ConfigMap| cm.data.unwrap()["manifest.json"] == "not yours" && cm.metadata.owner_references.is_none();
    assert!(untouched(env.ns.api::<ConfigMap>().get("theirs-results").await.unwrap()));
    delete(&env, "theirs").await;
    assert!(untouched(env.ns.api::<ConfigMap>().get("theirs-results").await.unwrap()), "kept after the batch's deletion");
}

#[tokio::test]
async fn deleting_a_batch_whose_s3_results_are_unreachable_completes() {
    let Some((env, _inf)) = with_inference("s3gone").await else { return };
    let mut s3 = S3::start().await.unwrap();
    s3.put("ks-out", "").await.unwrap();
    let s3_env = s3.env();
    let op_env: Vec<(&str, &str)> = s3_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _op = operator(env.cluster, &env.ns.name, &[], &op_env).unwrap();
    env.create("stranded", json!({"texts": texts(10, "g"), "output": "s3://ks-out/results"})).await.unwrap();
    env.phase("stranded", Phase::Succeeded).await;
    s3.proc.kill9();
    let began = Instant::now();
    delete(&env, "stranded").await;
    assert!(began.elapsed() < Duration::from_secs(90), "{:?}", began.elapsed());
    let events = env.kubectl(&["get", "events", "-o", "json"]).1;
    assert!(events.contains("CleanupFailed"), "the results left behind are reported: {events}");
    env.ns.delete().await.unwrap();
}

#[tokio::test]
async fn an_edited_source_fails_the_batch_rather_than_mix_results() {
    let Some((env, _inf)) = with_inference("edited").await else { return };
    let mut op = operator(env.cluster, &env.ns.name, &["--workers", "1"], &[]).unwrap();
    env.configmap("src", json!({"lines": texts(3000, "e").join("\n")})).await;
    env.create("pinned", json!({"source": {"configMapKeyRef": {"name": "src", "key": "lines"}}, "maxBatchSize": 50})).await.unwrap();
    env.progressed("pinned").await;
    let pinned = status(&env.batches().get("pinned").await.unwrap()).source.clone().expect("the source is pinned at admission");
    assert_eq!(pinned.sha256.len(), 64);
    // The operator dies; the source is edited; a new operator resumes the batch.
    op.kill9();
    let edited = json!({"data": {"lines": texts(3000, "other").join("\n")}});
    env.ns.api::<ConfigMap>().patch("src", &PatchParams::default(), &Patch::Merge(edited)).await.unwrap();
    let _op = operator(env.cluster, &env.ns.name, &[], &[]).unwrap();
    let b = env.phase("pinned", Phase::Failed).await;
    assert_eq!(status(&b).reason.as_deref(), Some("SourceChanged"), "{:#?}", b.status);
    assert!(condition(&b, "Failed").unwrap().message.contains("changed"));
}

/// An operator that dies within a small batch's first status period has put no start on
/// record (its Running status is held back, #17): a part it committed is of texts nothing
/// names, so the next operator deletes it and computes the batch afresh.
#[tokio::test]
async fn a_part_of_an_unrecorded_start_is_computed_again() {
    let Some((env, _inf)) = with_inference("unrecorded").await else { return };
    let b = env.create("small", json!({"texts": texts(10, "s")})).await.unwrap();
    // What the dead operator left: half the batch, of other texts, and no status.
    let stale: Vec<String> = (0..5).map(|index| json!({"index": index, "id": "stale", "error": "stale"}).to_string()).collect();
    let part: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": "small-part-0000000-0000005",
            "labels": {BATCH_UID_LABEL: b.uid().unwrap(), RESULTS_KIND_LABEL: "part"},
            "ownerReferences": [b.controller_owner_ref(&()).unwrap()],
        },
        "data": {"results.jsonl": stale.join("\n")},
    }))
    .unwrap();
    env.ns.api::<ConfigMap>().create(&PostParams::default(), &part).await.unwrap();
    let _op = operator(env.cluster, &env.ns.name, &[], &[]).unwrap();
    let b = env.phase("small", Phase::Succeeded).await;
    assert_eq!(status(&b).failed_texts, 0, "{:#?}", b.status);
    let lines = env.results(&b).await;
    assert_eq!(lines.iter().map(|l| l["index"].as_u64().unwrap()).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    assert!(lines.iter().all(|l| l["id"] != "stale" && l["label"].is_string()), "{lines:?}");
    assert!(env.ns.api::<ConfigMap>().get_opt("small-part-0000000-0000005").await.unwrap().is_none(), "the stale part is deleted");
}

/// Two leaders with different chunk sizes: one committed texts 0–4 as a part, the other
/// the whole batch with its manifest. The whole part keeps every text, whichever was
/// written first; the manifest it was written with stands, and each text is read once.
#[tokio::test]
async fn a_part_another_leader_overlaps_leaves_the_whole_batch_as_written() {
    use kubesentiment_core::store::{Part, ResultLine};
    let Some(env) = env("overlap").await else { return };
    let lines = |by: &str, range: std::ops::Range<usize>| {
        range.map(|index| ResultLine { index, id: Some(by.to_string()), prediction: None, error: None }).collect::<Vec<_>>()
    };
    for (i, whole_first) in [true, false].into_iter().enumerate() {
        let b = env.create(&format!("both-{i}"), json!({"texts": texts(10, "o")})).await.unwrap();
        let store = Store::for_batch(&env.ns.client, &b, &ObjectStores::default()).unwrap().of_texts(10);
        let (whole, part) = (Part::new(0, lines("whole", 0..10)), Part::new(0, lines("part", 0..5)));
        for p in if whole_first { [&whole, &part] } else { [&part, &whole] } {
            store.write_part(p).await.unwrap();
        }
        let parts = store.read_parts().await.unwrap();
        assert_eq!(parts.iter().map(|p| (p.stem.as_str(), p.start, p.end())).collect::<Vec<_>>(), [("results", 0, 10)]);
        assert_eq!(store.finish(10, &parts, &[]).await.unwrap(), format!("configmap://{}/both-{i}-results", env.ns.name));
        let got = store.read_range(0..10).await.unwrap();
        assert_eq!(
            got.iter().map(|l| (l.index, l.id.as_deref().unwrap())).collect::<Vec<_>>(),
            (0..10).map(|i| (i, "whole")).collect::<Vec<_>>()
        );
    }
}
