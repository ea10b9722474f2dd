//! The operator against a real API server, real inference servers and a real S3 server:
//! every source and output, every phase, validation, priorities, admission limits,
//! cancel and delete, timeouts, poison texts, dead endpoints, kill -9 and failover.
//!
//! Each test has its own namespace and its own operator watching only that namespace.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use kubesentiment_core::crd::{Phase, SentimentBatch};
use kubesentiment_core::names::BATCH_UID_LABEL;
use kubesentiment_core::store::Manifest;
use kubesentiment_tests::batches::{Env, LONG, condition, env, status};
use kubesentiment_tests::stack::{Inference, Proc, S3, operator, register};
use kubesentiment_tests::{OUTLASTING, eventually, texts};
use serde_json::{Value, json};

#[tokio::test]
async fn every_source_and_output_reaches_succeeded() {
    let Some(env) = env("op-sources").await else { return };
    let inf = Inference::start(&[]).unwrap();
    register(&env.ns, &[inf.port]).await.unwrap();
    let s3 = S3::start().await.unwrap();
    s3.put("ks-in", "").await.unwrap();
    s3.put("ks-out", "").await.unwrap();
    s3.put("ks-in/texts.jsonl", "{\"text\": \"I love it\", \"id\": \"a\"}\n{\"text\": \"I hate it\", \"id\": \"b\"}\n").await.unwrap();
    let s3_env = s3.env();
    let op_env: Vec<(&str, &str)> = s3_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _op = operator(env.cluster, &env.ns.name, &[], &op_env).unwrap();

    let brief = ["I love this product! It is amazing.", "This is terrible and disappointing.", "It is okay, nothing special."];
    env.create("inline", json!({"texts": brief, "priority": "high"})).await.unwrap();
    env.configmap("texts", json!({"lines": "good value\nawful support\n", "json": "[\"fine\", {\"text\": \"great\", \"id\": 7}]"})).await;
    env.create("from-configmap", json!({"source": {"configMapKeyRef": {"name": "texts", "key": "lines"}}})).await.unwrap();
    let out_dir = std::env::temp_dir().join(format!("ks-file-out-{}", std::process::id()));
    env.create(
        "to-file",
        json!({"source": {"configMapKeyRef": {"name": "texts", "key": "json"}}, "output": format!("file://{}", out_dir.display())}),
    )
    .await
    .unwrap();
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "s3"}, "stringData": {"accessKeyId": "test", "secretAccessKey": "test"}}))
            .unwrap();
    env.ns.api::<Secret>().create(&PostParams::default(), &secret).await.unwrap();
    env.create(
        "from-s3",
        json!({"source": {"s3": {"bucket": "ks-in", "key": "texts.jsonl", "endpoint": s3.endpoint, "region": "us-east-1", "credentialsSecretRef": {"name": "s3"}}},
               "output": "s3://ks-out/results"}),
    )
    .await
    .unwrap();

    // Inline: the brief's three texts, with the brief's summary fields.
    let b = env.phase("inline", Phase::Succeeded).await;
    let s = status(&b);
    assert_eq!((s.total_texts, s.processed_texts, s.failed_texts, s.progress_percentage), (3, 3, 0, 100.0));
    let summary = s.summary.as_ref().unwrap();
    assert_eq!(summary.sentiment_distribution, BTreeMap::from([("NEGATIVE".into(), 1), ("NEUTRAL".into(), 1), ("POSITIVE".into(), 1)]));
    assert_eq!((summary.successful_predictions, summary.success_rate), (3, 1.0));
    assert!(summary.average_confidence > 0.5 && summary.average_confidence <= 1.0);
    assert!(s.started_at.is_some() && s.completed_at.is_some());
    assert_eq!(condition(&b, "Complete").unwrap().status, "True");
    let lines = env.results(&b).await;
    let labels: Vec<_> = lines.iter().map(|l| (l["index"].as_u64().unwrap(), l["label"].as_str().unwrap().to_string())).collect();
    assert_eq!(labels, [(0, "POSITIVE".into()), (1, "NEGATIVE".into()), (2, "NEUTRAL".into())]);
    for field in ["score", "inference_time_ms", "model_name", "text_length", "backend", "cached"] {
        assert!(lines[0].get(field).is_some(), "result field {field}: {}", lines[0]);
    }

    // ConfigMap lines.
    let b = env.phase("from-configmap", Phase::Succeeded).await;
    let lines = env.results(&b).await;
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["label"], "NEGATIVE");

    // A JSON array with ids, written to a mounted directory.
    let b = env.phase("to-file", Phase::Succeeded).await;
    let location = status(&b).results_location.clone().unwrap();
    let manifest_path = location.strip_prefix("file://").expect("a file:// location");
    let manifest: Manifest = serde_json::from_str(&std::fs::read_to_string(manifest_path).unwrap()).unwrap();
    let part = std::fs::read_to_string(manifest.parts[0].location.strip_prefix("file://").unwrap()).unwrap();
    assert!(part.lines().nth(1).unwrap().contains("\"id\":\"7\""), "{part}");

    // S3 in, S3 out.
    let b = env.phase("from-s3", Phase::Succeeded).await;
    let location = status(&b).results_location.clone().unwrap();
    let key = location.strip_prefix("s3://").unwrap();
    let manifest: Manifest = serde_json::from_str(&s3.get_signed(key).await.unwrap()).unwrap();
    let part = s3.get_signed(manifest.parts[0].location.strip_prefix("s3://").unwrap()).await.unwrap();
    assert!(part.contains("\"id\":\"a\"") && part.contains("\"id\":\"b\""), "{part}");

    // kubectl get reads like the brief's status.
    let (ok, out, err) = env.kubectl(&["get", "sentimentbatches"]);
    assert!(ok, "{err}");
    let header: Vec<_> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "PRIORITY", "PHASE", "REASON", "SUSPEND", "PROGRESS", "TEXTS", "FAILED", "AGE"]);
    let inline_row: Vec<_> = out.lines().find(|l| l.starts_with("inline")).unwrap().split_whitespace().collect();
    assert_eq!(&inline_row[1..8], ["high", "Succeeded", "Succeeded", "false", "100%", "3", "0"]);

    // Deleting a file-output batch removes its files (the finalizer's cleanup).
    env.batches().delete("to-file", &Default::default()).await.unwrap();
    eventually(LONG, "to-file deleted with its files", || {
        let (api, path) = (env.batches(), manifest_path.to_string());
        async move { Ok((api.get_opt("to-file").await?.is_none() && !std::path::Path::new(&path).exists()).then_some(())) }
    })
    .await
    .unwrap();
    env.ns.delete().await.unwrap();
}

/// What a store's error body says, which must stay out of status and Events.
const LEAKED: &str = "internal-host-10-0-0-7";

/// An "S3 endpoint" on port 0 that answers every request 403 with an S3 error body.
async fn leaky_store() -> String {
    let body = format!("<Error><Code>AccessDenied</Code><Message>denied by {LEAKED}</Message></Error>");
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move { (axum::http::StatusCode::FORBIDDEN, [("content-type", "application/xml")], body) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn bad_sources_and_models_fail_with_a_reason_and_an_event() {
    let Some(env) = env("op-bad").await else { return };
    let inf = Inference::start(&[]).unwrap();
    register(&env.ns, &[inf.port]).await.unwrap();
    let _op = operator(env.cluster, &env.ns.name, &[], &[]).unwrap();
    env.configmap("bad", json!({"k": "{\"text\": \"fine\"}\n{\"txt\": 1}\n"})).await;
    env.create("missing", json!({"source": {"configMapKeyRef": {"name": "nope", "key": "k"}}})).await.unwrap();
    env.create("invalid", json!({"source": {"configMapKeyRef": {"name": "bad", "key": "k"}}})).await.unwrap();
    env.create("wrong-model", json!({"texts": ["hello there"], "model": "distilbert-base-uncased-finetuned-sst-2-english"})).await.unwrap();
    // An endpoint of the batch's choosing gets no credentials but the batch's own.
    let elsewhere = json!({"s3": {"bucket": "b", "key": "k", "endpoint": "http://169.254.169.254"}});
    env.create("ambient", json!({"source": elsewhere})).await.unwrap();
    // A store that answers 403 with a body: status and Events get the code, never the body.
    let leaky = leaky_store().await;
    let creds: Secret =
        serde_json::from_value(json!({"metadata": {"name": "creds"}, "stringData": {"accessKeyId": "a", "secretAccessKey": "b"}})).unwrap();
    env.ns.api::<Secret>().create(&PostParams::default(), &creds).await.unwrap();
    let leaks =
        json!({"s3": {"bucket": "b", "key": "k", "endpoint": leaky, "region": "us-east-1", "credentialsSecretRef": {"name": "creds"}}});
    env.create("leaky", json!({"source": leaks})).await.unwrap();
    for (name, reason, says) in [
        ("ambient", "SourceInvalid", "set source.s3.credentialsSecretRef"),
        ("leaky", "SourceUnreadable", "access denied (HTTP 403)"),
        ("missing", "SourceUnreadable", "does not exist"),
        ("invalid", "SourceInvalid", "line 2"),
        ("wrong-model", "ModelMismatch", "minilm"),
    ] {
        let b = env.phase(name, Phase::Failed).await;
        let c = condition(&b, "Failed").unwrap_or_else(|| panic!("{name}: a Failed condition"));
        assert_eq!((c.status.as_str(), c.reason.as_str(), status(&b).reason.as_deref()), ("True", "Failed", Some(reason)), "{name}");
        assert!(c.message.contains(says), "{name}: {}", c.message);
        assert!(!c.message.contains(LEAKED), "{name}: {}", c.message);
        assert!(condition(&b, "Complete").is_none(), "{name}: Complete is for a success only");
        let events = eventually(Duration::from_secs(30), "a Failed event", || {
            let env = &env;
            async move {
                let (_, out, _) = env.kubectl(&["get", "events", "--field-selector", &format!("involvedObject.name={name}"), "-o", "json"]);
                Ok(out.contains("\"Failed\"").then_some(out))
            }
        })
        .await
        .unwrap();
        assert!(events.contains(reason), "{name}: {events}");
        assert!(!events.contains(LEAKED), "{name}: {events}");
    }
    env.ns.delete().await.unwrap();
}

#[tokio::test]
async fn the_api_server_rejects_invalid_batches() {
    let Some(env) = env("op-validation").await else { return };
    let apply = |yaml: String| {
        let mut child = env
            .cluster
            .kubectl()
            .args(["-n", &env.ns.name, "apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), yaml.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let batch = |spec: &str| format!("apiVersion: kubesentiment.io/v1alpha1\nkind: SentimentBatch\nmetadata: {{name: b}}\nspec: {spec}\n");
    let too_many = serde_json::to_string(&vec!["x"; 1001]).unwrap();
    for (spec, says) in [
        ("{texts: [a], source: {configMapKeyRef: {name: x, key: k}}}", "set exactly one of spec.texts and spec.source"),
        ("{priority: low}", "set exactly one of spec.texts and spec.source"),
        (
            "{source: {configMapKeyRef: {name: x, key: k}, s3: {bucket: b, key: k}}}",
            "set exactly one of source.configMapKeyRef and source.s3",
        ),
        ("{texts: [a], priority: urgent}", "Unsupported value: \"urgent\""),
        ("{texts: [a], timeoutSeconds: 0}", "timeoutSeconds"),
        ("{texts: [a], timeoutSeconds: 999999999}", "timeoutSeconds"),
        ("{texts: [\"\"]}", "spec.texts[0]"),
        (&format!("{{texts: {too_many}}}"), "must have at most 1000 items"),
        ("{texts: [a], output: \"http://x\"}", "output must start with s3:// or file:///"),
    ] {
        let (ok, err) = apply(batch(spec));
        assert!(!ok, "{spec} was accepted");
        assert!(err.contains(says), "{spec}: {err}");
    }

    // Once started, the spec is frozen except for cancel.
    assert!(apply(batch("{texts: [a]}")).0);
    let (ok, _, err) =
        env.kubectl(&["patch", "sb", "b", "--subresource=status", "--type=merge", "-p", r#"{"status":{"phase":"Running"}}"#]);
    assert!(ok, "{err}");
    let (ok, _, err) = env.kubectl(&["patch", "sb", "b", "--type=merge", "-p", r#"{"spec":{"priority":"high"}}"#]);
    assert!(!ok && err.contains("spec is immutable once the batch has started"), "{err}");
    let (ok, _, err) = env.kubectl(&["patch", "sb", "b", "--type=merge", "-p", r#"{"spec":{"cancel":true}}"#]);
    assert!(ok, "{err}");
    env.ns.delete().await.unwrap();
}

#[tokio::test]
async fn admission_limits_queue_batches_until_there_is_room() {
    let Some(env) = env("op-admission").await else { return };
    let inf = Inference::start(&[]).unwrap();
    register(&env.ns, &[inf.port]).await.unwrap();
    // One low batch admitted at a time: the rest wait as QueueFull.
    let _op = operator(env.cluster, &env.ns.name, &["--priority-low-limit", "1"], &[]).unwrap();
    let low = 3;
    for i in 0..low {
        env.create(&format!("low-{i}"), json!({"texts": texts(600, &format!("adm{i}")), "priority": "low", "maxBatchSize": 100}))
            .await
            .unwrap();
    }
    let queue_full = |b: &SentimentBatch| {
        b.phase() == Phase::Pending && condition(b, "Queued").is_some_and(|c| c.status == "True" && c.reason == "QueueFull")
    };
    let api = env.batches();
    let queued = eventually(LONG, "two low batches QueueFull and one running", || {
        let api = api.clone();
        async move {
            let all = api.list(&ListParams::default()).await?.items;
            let running = all.iter().filter(|b| b.status.as_ref().is_some_and(|s| s.processed_texts > 0)).count();
            let full: Vec<_> = all.into_iter().filter(queue_full).collect();
            Ok((full.len() == low - 1 && running == 1).then_some(full))
        }
    })
    .await
    .unwrap();
    assert!(condition(&queued[0], "Queued").unwrap().message.contains("low priority admits 1"));
    // Queued batches are admitted as room frees up.
    for i in 0..low {
        env.phase(&format!("low-{i}"), Phase::Succeeded).await;
    }
    env.ns.delete().await.unwrap();
}

#[tokio::test]
async fn aging_lets_low_priority_work_through_a_steady_high_load() {
    let Some(env) = env("op-aging").await else { return };
    let inf = Inference::start(&[]).unwrap();
    register(&env.ns, &[inf.port]).await.unwrap();
    let _op = operator(env.cluster, &env.ns.name, &["--aging-seconds", "1", "--workers", "1"], &[]).unwrap();
    env.configmap("load", json!({"lines": texts(5000, "load").join("\n")})).await;
    env.create("high", json!({"source": {"configMapKeyRef": {"name": "load", "key": "lines"}}, "priority": "high", "maxBatchSize": 50}))
        .await
        .unwrap();
    env.progressed("high").await;
    env.create("low", json!({"texts": texts(20, "aged"), "priority": "low"})).await.unwrap();
    env.phase("low", Phase::Succeeded).await;
    let high = env.batches().get("high").await.unwrap();
    assert_eq!(high.phase(), Phase::Running, "the low batch only ran after the high one: {:?}", high.status);
    env.ns.delete().await.unwrap();
}

#[tokio::test]
async fn cancel_delete_and_timeout_keep_what_was_done() {
    let Some(env) = env("op-stop").await else { return };
    let inf = Inference::one_thread().unwrap();
    register(&env.ns, &[inf.port]).await.unwrap();
    let _op = operator(env.cluster, &env.ns.name, &["--workers", "1"], &[]).unwrap();
    let n = OUTLASTING as i64;
    let big = texts(OUTLASTING, "t").join("\n");
    env.configmap("big", json!({"lines": big})).await;
    let src = json!({"configMapKeyRef": {"name": "big", "key": "lines"}});

    // Timeout: Expired, unfinished items fail with "timeout", finished results stay.
    env.create("expires", json!({"source": src, "timeoutSeconds": 3, "maxBatchSize": 50})).await.unwrap();
    let b = env.phase("expires", Phase::Expired).await;
    let s = status(&b);
    let ok = s.summary.as_ref().unwrap().successful_predictions;
    assert!(ok > 0 && ok < n, "{s:?}");
    assert_eq!(s.failed_texts, n - ok);
    let failures = s.failures.as_ref().unwrap();
    assert_eq!(failures.count, n - ok);
    assert!(failures.samples.iter().all(|f| f.error == "timeout"));
    assert_eq!(condition(&b, "Failed").unwrap().reason, "DeadlineExceeded");
    assert_eq!(status(&b).reason.as_deref(), Some("DeadlineExceeded"));
    let kept: usize = env.results(&b).await.iter().filter(|l| l.get("label").is_some()).count();
    assert_eq!(kept as i64, ok);

    // Cancel mid-run.
    env.create("cancelled", json!({"source": src, "maxBatchSize": 50})).await.unwrap();
    env.progressed("cancelled").await;
    env.batches().patch("cancelled", &PatchParams::default(), &Patch::Merge(json!({"spec": {"cancel": true}}))).await.unwrap();
    let b = env.phase("cancelled", Phase::Cancelled).await;
    let done = status(&b).processed_texts;
    assert!(done > 0 && done < n, "{done}");
    // No more work happens for it.
    let inferred = inf.texts_inferred().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(inf.texts_inferred().await.unwrap() - inferred < 200.0, "work continued after the cancel");

    // Delete mid-run: the batch goes at once (no finalizer: its results are ConfigMaps
    // it owns), its work stops, and its result ConfigMaps are garbage-collected.
    // Texts of its own, so none comes from the cache, and enough to outlast the checks.
    env.configmap("other", json!({"lines": texts(10_000, "d").join("\n")})).await;
    let other = json!({"configMapKeyRef": {"name": "other", "key": "lines"}});
    let b = env.create("deleted", json!({"source": other, "maxBatchSize": 50})).await.unwrap();
    let uid = b.metadata.uid.clone().unwrap();
    env.progressed("deleted").await;
    env.batches().delete("deleted", &Default::default()).await.unwrap();
    assert!(env.batches().get_opt("deleted").await.unwrap().is_none(), "no finalizer holds it");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let inferred = inf.texts_inferred().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(inf.texts_inferred().await.unwrap() - inferred < 200.0, "work continued after the delete");
    let cms: Api<ConfigMap> = env.ns.api();
    eventually(LONG, "the deleted batch's ConfigMaps collected", || {
        let (cms, api, uid) = (cms.clone(), env.batches(), uid.clone());
        async move {
            let left = cms.list(&ListParams::default().labels(&format!("{BATCH_UID_LABEL}={uid}"))).await?.items.len();
            Ok((left == 0 && api.get_opt("deleted").await?.is_none()).then_some(()))
        }
    })
    .await
    .unwrap();
    env.ns.delete().await.unwrap();
}

#[tokio::test]
async fn a_poison_text_fails_alone_and_a_dead_endpoint_is_skipped() {
    let Some(env) = env("op-faults").await else { return };
    let good = Inference::start(&["--fail-on", "POISON"]).unwrap();
    let mut doomed = Inference::start(&["--fail-on", "POISON"]).unwrap();
    register(&env.ns, &[good.port, doomed.port]).await.unwrap();
    let _op = operator(env.cluster, &env.ns.name, &["--max-retries", "2"], &[]).unwrap();

    let mut items = texts(1200, "f");
    items[777] = "this one is POISON for the model".into();
    env.create("faults", json!({"texts": items[..1000], "maxBatchSize": 40})).await.unwrap();
    env.create("more", json!({"texts": items[1000..], "maxBatchSize": 40})).await.unwrap();
    env.progressed("faults").await;
    doomed.proc.kill9();

    let b = env.phase("faults", Phase::Succeeded).await;
    let s = status(&b);
    assert_eq!((s.processed_texts, s.failed_texts), (1000, 1), "{s:?}");
    let f = s.failures.as_ref().unwrap();
    assert_eq!(f.samples[0].index, 777);
    assert!(!f.samples[0].error.is_empty());
    let lines = env.results(&b).await;
    assert_eq!(lines.len(), 1000);
    assert!(lines.iter().enumerate().all(|(i, l)| l["index"] == i && (i == 777) == l.get("error").is_some()));
    // The dead-letter list holds exactly the poison text.
    let failures_cm = f.location.as_ref().unwrap().rsplit('/').next().unwrap().to_string();
    let dead = env.ns.api::<ConfigMap>().get(&failures_cm).await.unwrap().data.unwrap().remove("results.jsonl").unwrap();
    assert_eq!(dead.lines().count(), 1);
    assert!(dead.contains("\"index\":777"));
    let b = env.phase("more", Phase::Succeeded).await;
    assert_eq!(status(&b).failed_texts, 0);

    // The fault is fixed (a new, healthy endpoint appears in the Service); retry-failed
    // computes the dead-lettered text again.
    let healthy = Inference::start(&[]).unwrap();
    register(&env.ns, &[healthy.port]).await.unwrap();
    drop(good);
    env.batches()
        .patch(
            "faults",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"kubesentiment.io/retry-failed": "true"}}})),
        )
        .await
        .unwrap();
    let b = env
        .wait("faults", "a clean retry", |b| {
            b.phase() == Phase::Succeeded && !b.annotations().contains_key("kubesentiment.io/retry-failed") && status(b).failed_texts == 0
        })
        .await
        .unwrap();
    assert_eq!(status(&b).processed_texts, 1000);
    let lines = env.results(&b).await;
    assert_eq!(lines.len(), 1000);
    assert!(lines[777].get("label").is_some(), "{}", lines[777]);
    env.ns.delete().await.unwrap();
}

/// Labels per index, read from the parts of a ConfigMap-output batch.
async fn labels(env: &Env, name: &str) -> Vec<String> {
    let b = env.batches().get(name).await.unwrap();
    let lines = env.results(&b).await;
    assert!(lines.iter().enumerate().all(|(i, l)| l["index"] == i), "one line per text, in order");
    lines.iter().map(|l| l["label"].as_str().unwrap_or("ERROR").to_string()).collect()
}

#[tokio::test]
async fn kill_dash_nine_resumes_without_redoing_committed_work_and_a_standby_takes_over() {
    let Some(env) = env("op-crash").await else { return };
    let inf = Inference::start(&[]).unwrap();
    register(&env.ns, &[inf.port]).await.unwrap();
    let n = 2000;
    let body = texts(n, "c").join("\n");
    env.configmap("texts", json!({"lines": body})).await;
    let src = json!({"configMapKeyRef": {"name": "texts", "key": "lines"}});

    let mut leader = operator(env.cluster, &env.ns.name, &["--workers", "1"], &[]).unwrap();
    leader.wait_for("leading as", Duration::from_secs(30)).unwrap();
    let mut standby: Proc = operator(env.cluster, &env.ns.name, &["--workers", "1"], &[]).unwrap();

    env.create("warmup", json!({"texts": texts(5, "warmup")})).await.unwrap();
    env.phase("warmup", Phase::Succeeded).await;
    assert!(!standby.output().contains("leading as"), "two replicas dispatched");

    // Crash mid-run.
    let before = inf.texts_inferred().await.unwrap();
    env.create("crashed", json!({"source": src, "maxBatchSize": 100})).await.unwrap();
    env.wait("crashed", "progress", |b| b.status.as_ref().is_some_and(|s| s.processed_texts >= 300)).await.unwrap();
    leader.kill9();
    // The standby takes the lease once it expires and resumes the batch from its parts.
    standby.wait_for("leading as", Duration::from_secs(60)).unwrap();
    let b = env.phase("crashed", Phase::Succeeded).await;
    assert_eq!((status(&b).processed_texts, status(&b).failed_texts), (n as i64, 0));
    // Committed chunks were not inferred again: at most the chunks uncommitted at the
    // kill were computed twice — one on the endpoint (one worker) and one answered but
    // still being written, 100 texts each.
    let inferred = inf.texts_inferred().await.unwrap() - before;
    assert!(inferred <= (n + 200) as f64, "{inferred} texts inferred for {n}");
    assert!(inferred >= n as f64, "{inferred} texts inferred for {n}");

    // The results match an uninterrupted run of the same texts wherever the model is
    // sure. (Dynamic int8 quantization scales activations per forward pass, so a
    // borderline text can flip with a different batch composition.)
    let resumed = labels(&env, "crashed").await;
    let mut reference = Vec::new();
    for chunk in texts(n, "c").chunks(500) {
        let r: Value = reqwest::Client::new()
            .post(format!("{}/v1/predict", inf.url()))
            .json(&json!({"texts": chunk}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        reference.extend(
            r["results"].as_array().unwrap().iter().map(|x| (x["label"].as_str().unwrap().to_string(), x["score"].as_f64().unwrap())),
        );
    }
    let sure: Vec<usize> = (0..n).filter(|i| reference[*i].1 >= 0.75).collect();
    assert!(sure.len() >= n / 4, "only {} confident texts", sure.len());
    let differ: Vec<usize> = sure.iter().copied().filter(|i| resumed[*i] != reference[*i].0).collect();
    assert!(differ.is_empty(), "labels differ from the uninterrupted run at {differ:?}");

    // And a restarted replica (now the standby) stays out of the way.
    let restarted = operator(env.cluster, &env.ns.name, &[], &[]).unwrap();
    env.create("after", json!({"texts": texts(5, "after")})).await.unwrap();
    env.phase("after", Phase::Succeeded).await;
    assert!(!restarted.output().contains("leading as"));
    drop(standby);
    env.ns.delete().await.unwrap();
}

/// A callback receiver that accepts and never answers holds a delivery slot, not the
/// controller: while 40 batches' callbacks hang (an attempt gives up after 10 s), a new
/// batch still runs to its end, before any of those attempts has ended. (With the
/// attempts inside the reconciles, the 32 reconcile slots were all waiting on them.)
#[tokio::test(flavor = "multi_thread")]
async fn callbacks_that_hang_do_not_hold_up_other_batches() {
    let Some(env) = env("op-tarpit").await else { return };
    let inf = Inference::start(&[]).unwrap();
    register(&env.ns, &[inf.port]).await.unwrap();
    let tarpit = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hooks = format!("http://{}/hook", tarpit.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = tarpit.accept().await {
            held.push(socket);
        }
    });
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "hook"}, "stringData": {"k": "s3cret"}})).unwrap();
    env.ns.api::<Secret>().create(&PostParams::default(), &secret).await.unwrap();
    let notify = json!({"url": hooks, "signingSecretRef": {"name": "hook", "key": "k"}});
    for i in 0..40 {
        env.create(&format!("hung-{i}"), json!({"texts": texts(2, &format!("h{i}")), "notify": notify})).await.unwrap();
    }
    let _op = operator(env.cluster, &env.ns.name, &[], &[]).unwrap();
    for i in 0..40 {
        env.phase(&format!("hung-{i}"), Phase::Succeeded).await;
    }
    env.create("free", json!({"texts": texts(2, "free")})).await.unwrap();
    env.phase("free", Phase::Succeeded).await;
    let hung = env.batches().list(&ListParams::default()).await.unwrap().items;
    let attempts: Vec<i32> = hung
        .iter()
        .filter(|b| b.name_any().starts_with("hung-"))
        .map(|b| b.status.as_ref().and_then(|s| s.notification.as_ref()).map_or(0, |n| n.attempts))
        .collect();
    assert_eq!(attempts, vec![0; 40], "the free batch ended only after hung attempts did");
    env.ns.delete().await.unwrap();
}
