//! The system as users deploy it: the chart's pods on a real node, from images built
//! here (e2e/up.sh --cluster, which the README's run command starts). The test command's
//! cluster lane runs these one at a time with e2e/.state/env in the environment; anywhere
//! else they skip (or fail, with KUBESENTIMENT_REQUIRE_NODE=1).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, EvictParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use kubesentiment_core::config::ObjectStores;
use kubesentiment_core::crd::{Phase, SentimentBatch};
use kubesentiment_core::store::Store;
use kubesentiment_tests::{TestNamespace, cluster, eventually, repo_root, texts};
use serde_json::json;

const LONG: Duration = Duration::from_secs(300);

/// The installed release, from e2e/.state/env.
struct Release {
    client: Client,
    namespace: String,
    api: String,
    key: String,
}

async fn release() -> Option<Release> {
    if std::env::var("KUBESENTIMENT_MODE").as_deref() != Ok("cluster") {
        assert!(
            std::env::var("KUBESENTIMENT_REQUIRE_NODE").as_deref() != Ok("1"),
            "KUBESENTIMENT_REQUIRE_NODE=1 but no node: source e2e/.state/env after e2e/up.sh --cluster"
        );
        eprintln!("skipping: no node (source e2e/.state/env after e2e/up.sh --cluster)");
        return None;
    }
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is set in e2e/.state/env"));
    let client = Client::try_default().await.expect("the node's kubeconfig");
    Some(Release { client, namespace: var("KUBESENTIMENT_NAMESPACE"), api: var("KUBESENTIMENT_API"), key: var("KUBESENTIMENT_API_KEY") })
}

impl Release {
    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn component(&self, name: &str) -> Result<Vec<Pod>> {
        let lp = ListParams::default().labels(&format!("app.kubernetes.io/name={name}"));
        Ok(self.pods().list(&lp).await?.items.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect())
    }

    /// Waits until `name` has `n` Ready pods.
    async fn ready(&self, name: &str, n: usize) -> Result<Vec<Pod>> {
        eventually(LONG, &format!("{n} ready {name} pods"), || async {
            let pods = self.component(name).await?;
            let ready = pods.iter().filter(|p| is_ready(p)).count();
            Ok((ready == n && pods.len() == n).then_some(pods))
        })
        .await
    }

    /// The pod holding the operator's Lease (waiting while it has none: a leader that
    /// shuts down, as another test makes one do, releases it until the standby takes it).
    async fn leader(&self) -> Result<String> {
        let leases = Api::<Lease>::namespaced(self.client.clone(), &self.namespace);
        eventually(LONG, "the Lease to have a holder", || {
            let leases = leases.clone();
            async move { Ok(leases.get("kubesentiment-operator").await?.spec.and_then(|s| s.holder_identity)) }
        })
        .await
    }
}

impl Release {
    /// `helm upgrade` of the release with the local values, its images, and `sets`
    /// (without them: back to how e2e/up.sh installed it); waits for it.
    async fn upgrade(&self, sets: &[&str]) -> Result<()> {
        let var = |k: &str| std::env::var(k).with_context(|| format!("{k} in e2e/.state/env"));
        let images = format!("image.registry={},image.tag={}", var("KUBESENTIMENT_REGISTRY")?, var("KUBESENTIMENT_IMAGE_TAG")?);
        let mut cmd = std::process::Command::new(var("HELM")?);
        cmd.args(["upgrade", "kubesentiment"])
            .arg(repo_root().join("charts/kubesentiment"))
            .args(["-n", &self.namespace, "-f"])
            .arg(repo_root().join("e2e/values-local.yaml"))
            .args(["--set", &images, "--wait", "--timeout", "5m"]);
        for s in sets {
            cmd.args(["--set", s]);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
        anyhow::ensure!(out.status.success(), "helm upgrade {sets:?}: {}", String::from_utf8_lossy(&out.stderr));
        self.ready("operator", 2).await?;
        Ok(())
    }

    fn deployment(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The inference Deployment's replicas, as set.
    async fn replicas(&self) -> Result<i32> {
        Ok(self.deployment().get("kubesentiment-inference").await?.spec.and_then(|s| s.replicas).unwrap_or(1))
    }

    /// Texts each ready inference pod has inferred (its own /metrics).
    async fn texts_per_pod(&self) -> Result<Vec<f64>> {
        let mut out = Vec::new();
        for pod in self.component("inference").await?.iter().filter(|p| is_ready(p)) {
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).context("a pod IP")?;
            let page = reqwest::get(format!("http://{ip}:8080/metrics")).await?.text().await?;
            out.push(inference_api::metric_sums(&page).get("inference_batch_size_sum").copied().unwrap_or(0.0));
        }
        Ok(out)
    }

    /// Whether `who` (a ServiceAccount of the release) may `verb` `resource` (and its
    /// `subresource`).
    fn can_i(&self, who: &str, verb: &str, resource: &str, subresource: Option<&str>) -> bool {
        let out = std::process::Command::new(std::env::var("KUBECTL").unwrap())
            .args(["auth", "can-i", verb, resource, "-n", &self.namespace])
            .args(subresource.map(|s| format!("--subresource={s}")))
            .arg(format!("--as=system:serviceaccount:{}:{who}", self.namespace))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    }
}

fn is_ready(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A batch of `n` distinct texts in a ConfigMap of a fresh namespace, with small chunks
/// so that it runs for a while.
async fn batch(prefix: &str, n: usize) -> Result<(TestNamespace, Api<SentimentBatch>)> {
    let ns = cluster().context("the node's API server")?.namespace(prefix).await?;
    let lines: String = texts(n, prefix).iter().map(|t| json!({"text": t}).to_string() + "\n").collect();
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "texts"}, "data": {"texts.jsonl": lines}}))?;
    ns.api::<ConfigMap>().create(&PostParams::default(), &cm).await?;
    let b: SentimentBatch = serde_json::from_value(json!({
        "apiVersion": "kubesentiment.io/v1alpha1", "kind": "SentimentBatch", "metadata": {"name": prefix},
        "spec": {"source": {"configMapKeyRef": {"name": "texts", "key": "texts.jsonl"}}, "maxBatchSize": 50, "timeoutSeconds": 600},
    }))?;
    let batches = ns.api::<SentimentBatch>();
    batches.create(&PostParams::default(), &b).await?;
    Ok((ns, batches))
}

async fn progressed(batches: &Api<SentimentBatch>, name: &str, at_least: i64) -> Result<()> {
    eventually(LONG, "progress", || async { Ok(batches.get(name).await?.status.filter(|s| s.processed_texts >= at_least).map(|_| ())) })
        .await
}

/// Waits for the batch to end Succeeded and checks exactly one good result per text.
async fn exactly_once(batches: &Api<SentimentBatch>, name: &str, n: usize) -> Result<()> {
    let b = eventually(LONG, "the batch to end", || async { Ok(Some(batches.get(name).await?).filter(|b| b.phase().is_final())) }).await?;
    assert_eq!(b.phase(), Phase::Succeeded, "{:#?}", b.status);
    let lines = Store::for_batch(&cluster().unwrap().client().await?, &b, &ObjectStores::default())?.read_range(0..usize::MAX).await?;
    let indices: Vec<usize> = lines.iter().map(|l| l.index).collect();
    assert_eq!(indices, (0..n).collect::<Vec<_>>(), "one line per text, in order, none twice");
    assert!(lines.iter().all(|l| l.prediction.is_some()), "every text predicted");
    let s = b.status.unwrap();
    assert_eq!((s.processed_texts, s.failed_texts), (n as i64, 0));
    Ok(())
}

#[tokio::test]
async fn the_chart_runs_in_pods_from_local_images() {
    let Some(r) = release().await else { return };
    r.ready("operator", 2).await.unwrap();
    r.ready("facade", 1).await.unwrap();
    let inference = r.ready("inference", 1).await.unwrap();
    let leader = r.leader().await.unwrap();
    let operators: BTreeSet<String> = r.component("operator").await.unwrap().iter().map(|p| p.name_any()).collect();
    assert!(operators.contains(&leader), "the leader {leader} is one of {operators:?}");
    for pod in r.pods().list(&ListParams::default()).await.unwrap() {
        let spec = pod.spec.unwrap();
        assert_eq!(spec.security_context.as_ref().and_then(|s| s.run_as_non_root), Some(true), "{}", pod.metadata.name.unwrap());
        for c in &spec.containers {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert!(c.image.as_deref().unwrap().starts_with("127.0.0.1:"), "{:?} comes from the local registry", c.image);
        }
    }
    // The API server reaches the kubelet: logs of a pod.
    let logs = r.pods().logs(&inference[0].name_any(), &Default::default()).await.unwrap();
    assert!(logs.contains("listening on"), "{logs}");
    // metrics-server serves pod metrics (pods only just started have none yet).
    eventually(LONG, "pod metrics of every pod", || async {
        let out =
            std::process::Command::new(std::env::var("KUBECTL")?).args(["top", "pods", "-n", &r.namespace, "--no-headers"]).output()?;
        Ok((out.status.success() && String::from_utf8_lossy(&out.stdout).lines().count() >= 4).then_some(()))
    })
    .await
    .unwrap();
    // CoreDNS answers for cluster names, at the kubelet's clusterDNS address.
    let ip = dns_a("kubernetes.default.svc.cluster.local", "198.19.0.10:53").await.unwrap();
    assert_eq!(ip, [198, 19, 0, 1]);
}

#[tokio::test]
async fn a_rest_job_is_computed_by_inference_pods() {
    let Some(r) = release().await else { return };
    let metrics = || async {
        let urls = std::env::var("INFERENCE_URLS").unwrap();
        let page = reqwest::get(format!("{}/metrics", urls.split_whitespace().next().unwrap())).await?.text().await?;
        anyhow::Ok(inference_api::metric_sums(&page).get("inference_batch_size_sum").copied().unwrap_or(0.0))
    };
    let before = metrics().await.unwrap();
    let http = reqwest::Client::new();
    let job: serde_json::Value = http
        .post(format!("{}/api/v1/batch/predict", r.api))
        .bearer_auth(&r.key)
        .json(&json!({"texts": texts(200, "rest-in-pods"), "priority": "high"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["job_id"].as_str().unwrap().to_string();
    let done = eventually(LONG, "the REST job", || async {
        let s: serde_json::Value = http.get(format!("{}/api/v1/batch/status/{id}", r.api)).bearer_auth(&r.key).send().await?.json().await?;
        Ok((s["status"] == "completed").then_some(s))
    })
    .await
    .unwrap();
    assert_eq!(done["processed_texts"], 200);
    let page: serde_json::Value = http
        .get(format!("{}/api/v1/batch/results/{id}?page_size=1000", r.api))
        .bearer_auth(&r.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["results"].as_array().unwrap().len(), 200);
    // Without a key the facade refuses.
    assert_eq!(http.get(format!("{}/api/v1/batch/status/{id}", r.api)).send().await.unwrap().status(), 401);
    // The texts went through the inference pods (the Service's metrics).
    assert!(metrics().await.unwrap() - before >= 200.0);
}

#[tokio::test]
async fn deleting_an_inference_pod_mid_batch_loses_and_duplicates_nothing() {
    let Some(r) = release().await else { return };
    // enough that the batch is still running when the pod goes, on a fast CPU too
    let n = 6000;
    let (ns, batches) = batch("inference-dies", n).await.unwrap();
    progressed(&batches, "inference-dies", 100).await.unwrap();
    let victim = r.ready("inference", 1).await.unwrap().remove(0);
    r.pods().delete(&victim.name_any(), &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.unwrap();
    let status = batches.get("inference-dies").await.unwrap().status.unwrap();
    assert!(status.processed_texts < n as i64, "the pod died mid-batch ({} of {n} done)", status.processed_texts);
    exactly_once(&batches, "inference-dies", n).await.unwrap();
    let replacement = r.ready("inference", 1).await.unwrap().remove(0);
    assert_ne!(replacement.name_any(), victim.name_any());
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn deleting_the_leader_hands_every_batch_to_the_other_replica() {
    let Some(r) = release().await else { return };
    let n = 6000;
    r.ready("operator", 2).await.unwrap();
    let (ns, batches) = batch("leader-dies", n).await.unwrap();
    progressed(&batches, "leader-dies", 100).await.unwrap();
    let leader = r.leader().await.unwrap();
    r.pods().delete(&leader, &DeleteParams::default()).await.unwrap();
    let next = eventually(LONG, "a new leader", || async { Ok(r.leader().await.ok().filter(|l| *l != leader)) }).await.unwrap();
    exactly_once(&batches, "leader-dies", n).await.unwrap();
    assert_ne!(next, leader);
    r.ready("operator", 2).await.unwrap();
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn eviction_is_refused_while_the_budget_forbids_it() {
    let Some(r) = release().await else { return };
    // The client's own retries would wait out each 429 the eviction answers.
    let mut config = kube::Config::infer().await.unwrap();
    config.default_retry = false;
    let r = Release { client: Client::try_from(config).unwrap(), ..r };
    // One facade pod with minAvailable 1: the budget never allows its eviction.
    let facade = r.ready("facade", 1).await.unwrap().remove(0);
    let refused = r.pods().evict(&facade.name_any(), &EvictParams::default()).await.unwrap_err();
    assert!(matches!(&refused, kube::Error::Api(s) if s.code == 429), "{refused:?}");
    assert!(r.pods().get(&facade.name_any()).await.unwrap().metadata.deletion_timestamp.is_none());
    // Two operator pods with minAvailable 1: one may go, and is replaced.
    let operators = r.ready("operator", 2).await.unwrap();
    eventually(LONG, "the budget to allow one disruption", || async {
        Ok(r.pods().evict(&operators[0].name_any(), &EvictParams::default()).await.ok().map(|_| ()))
    })
    .await
    .unwrap();
    let now = r.ready("operator", 2).await.unwrap();
    assert!(now.iter().all(|p| p.name_any() != operators[0].name_any()));
}

/// The operator's own autoscaling (#14): from zero when a batch arrives, back to zero
/// once idle, a second pod for a backlog with both pods given chunks, Events on the
/// Deployment and least-privilege RBAC.
#[tokio::test]
async fn the_operator_scales_inference_by_its_queue() {
    let Some(r) = release().await else { return };
    r.upgrade(&[
        "inference.autoscaling.mode=operator",
        "inference.autoscaling.minReplicas=0",
        "inference.autoscaling.maxReplicas=2",
        "inference.autoscaling.targetDrainSeconds=5",
        "inference.autoscaling.scaleDownIdleSeconds=15",
    ])
    .await
    .unwrap();
    let sa = "kubesentiment-operator";
    assert!(r.can_i(sa, "patch", "deployments.apps/kubesentiment-inference", Some("scale")));
    assert!(r.can_i(sa, "get", "deployments.apps/kubesentiment-inference", Some("scale")));
    assert!(!r.can_i(sa, "patch", "deployments.apps/kubesentiment-inference", None), "the Deployment itself stays out of reach");
    assert!(!r.can_i(sa, "patch", "deployments.apps/kubesentiment-facade", Some("scale")), "only the inference Deployment");

    // Idle: no inference pod at all.
    eventually(LONG, "inference at zero", || async {
        Ok((r.replicas().await? == 0 && r.component("inference").await?.is_empty()).then_some(()))
    })
    .await
    .unwrap();
    let n = 5000;
    let applied = std::time::Instant::now();
    let (ns, batches) = batch("from-zero", n).await.unwrap();
    let waiting = eventually(LONG, "a condition saying the batch waits for pods", || async {
        let b = batches.get("from-zero").await?;
        let s = b.status.as_ref();
        let waits = s.is_some_and(|s| s.conditions.iter().any(|c| c.reason == "WaitingForCapacity"));
        let started = s.is_some_and(|s| s.processed_texts > 0);
        Ok((waits || started).then_some(b))
    })
    .await
    .unwrap();
    assert!(
        waiting.status.as_ref().unwrap().conditions.iter().any(|c| c.reason == "WaitingForCapacity"),
        "seen waiting for pods before any text was done: {:#?}",
        waiting.status
    );
    progressed(&batches, "from-zero", 1).await.unwrap();
    eprintln!("scale from zero: first result {:.1} s after the batch was applied", applied.elapsed().as_secs_f64());
    // A 5,000-text backlog drained in 5 s needs more than one pod: the second comes.
    r.ready("inference", 2).await.unwrap();
    exactly_once(&batches, "from-zero", n).await.unwrap();
    let per_pod = r.texts_per_pod().await.unwrap();
    assert!(per_pod.len() == 2 && per_pod.iter().all(|t| *t > 0.0), "both pods computed texts: {per_pod:?}");
    // Idle again: back to zero.
    eventually(LONG, "inference back at zero", || async { Ok((r.replicas().await? == 0).then_some(())) }).await.unwrap();
    let events: Vec<String> = Api::<k8s_openapi::api::events::v1::Event>::namespaced(r.client.clone(), &r.namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|o| o.name.as_deref()) == Some("kubesentiment-inference"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(events.contains(&"ScaledUp".to_string()) && events.contains(&"ScaledDown".to_string()), "{events:?}");
    ns.delete().await.unwrap();
    r.upgrade(&[]).await.unwrap();
}

/// The chart's CPU HPA on the real node: sustained load scales inference 1 → 2, and it
/// comes back once idle.
#[tokio::test]
async fn the_cpu_hpa_scales_inference_under_load() {
    let Some(r) = release().await else { return };
    r.upgrade(&[]).await.unwrap();
    r.ready("inference", 1).await.unwrap();
    // Sustained load: four batches of 8,000 texts (a ConfigMap holds at most 1 MiB).
    let began = std::time::Instant::now();
    let mut load = Vec::new();
    for i in 0..4 {
        load.push(batch(&format!("hpa-load-{i}"), 8000).await.unwrap());
    }
    eventually(LONG, "the HPA to ask for a second pod", || async { Ok((r.replicas().await? == 2).then_some(())) }).await.unwrap();
    eprintln!("hpa: 1 → 2 replicas {:.1} s into the load", began.elapsed().as_secs_f64());
    r.ready("inference", 2).await.unwrap();
    for (i, (ns, batches)) in load.into_iter().enumerate() {
        exactly_once(&batches, &format!("hpa-load-{i}"), 8000).await.unwrap();
        ns.delete().await.unwrap();
    }
    eventually(LONG, "the HPA to go back to one pod", || async { Ok((r.replicas().await? == 1).then_some(())) }).await.unwrap();
}

/// Fewer pods mid-batch (a scale-down, as an HPA or a person makes it) loses and
/// duplicates nothing: the leaving pod finishes what it holds.
#[tokio::test]
async fn a_scale_down_during_a_batch_loses_nothing() {
    let Some(r) = release().await else { return };
    r.upgrade(&["inference.autoscaling.mode=none", "inference.replicas=2"]).await.unwrap();
    // The HPA of the mode before may sync between helm raising the replicas and helm
    // deleting it, and set them back to its minimum; it is gone once helm returns.
    let two = kube::api::Patch::Merge(json!({"spec": {"replicas": 2}}));
    r.deployment().patch_scale("kubesentiment-inference", &Default::default(), &two).await.unwrap();
    r.ready("inference", 2).await.unwrap();
    let n = 6000;
    let (ns, batches) = batch("scale-down", n).await.unwrap();
    progressed(&batches, "scale-down", 500).await.unwrap();
    let patch = kube::api::Patch::Merge(json!({"spec": {"replicas": 1}}));
    r.deployment().patch_scale("kubesentiment-inference", &Default::default(), &patch).await.unwrap();
    let status = batches.get("scale-down").await.unwrap().status.unwrap();
    assert!(status.processed_texts < n as i64, "scaled down mid-batch");
    exactly_once(&batches, "scale-down", n).await.unwrap();
    ns.delete().await.unwrap();
    r.upgrade(&[]).await.unwrap();
}

/// The IPv4 address of `name` from the DNS server at `server`, over UDP.
async fn dns_a(name: &str, server: &str) -> Result<[u8; 4]> {
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
    sock.send_to(&q, server).await?;
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf)).await??;
    let answer = &buf[..n];
    anyhow::ensure!(answer[3] & 0x0f == 0 && u16::from_be_bytes([answer[6], answer[7]]) > 0, "no answer: {answer:?}");
    // The answer's last record is an A record ending in its four address bytes.
    Ok(answer[n - 4..n].try_into()?)
}
