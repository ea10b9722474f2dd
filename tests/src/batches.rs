//! Batches in a test's namespace: creating them, waiting for phases, reading their
//! results through their manifest, and kubectl against the namespace.

use std::time::Duration;

use anyhow::Result;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;
use kubesentiment_core::crd::{Phase, SentimentBatch};
use kubesentiment_core::store::Manifest;
use serde_json::{Value, json};

use crate::stack::install_crds;
use crate::{Cluster, TestNamespace, cluster, eventually};

/// How long a batch may take to reach a phase in these tests.
pub const LONG: Duration = Duration::from_secs(180);

/// A test's namespace on the shared control plane, and what its tests do with batches.
pub struct Env {
    pub cluster: &'static Cluster,
    pub ns: TestNamespace,
}

/// A fresh namespace with the CRD installed; `None` (skip) without a control plane.
pub async fn env(prefix: &str) -> Option<Env> {
    let cluster = cluster()?;
    install_crds(cluster).unwrap();
    let ns = cluster.namespace(prefix).await.unwrap();
    Some(Env { cluster, ns })
}

impl Env {
    pub fn batches(&self) -> Api<SentimentBatch> {
        self.ns.api()
    }

    pub async fn create(&self, name: &str, spec: Value) -> Result<SentimentBatch> {
        self.create_labelled(name, json!({}), spec).await
    }

    pub async fn create_labelled(&self, name: &str, labels: Value, spec: Value) -> Result<SentimentBatch> {
        let b: SentimentBatch = serde_json::from_value(json!({
            "apiVersion": "kubesentiment.io/v1alpha1", "kind": "SentimentBatch",
            "metadata": {"name": name, "labels": labels}, "spec": spec,
        }))?;
        Ok(self.batches().create(&PostParams::default(), &b).await?)
    }

    /// Creates ConfigMap `name` holding `data` in this namespace.
    pub async fn configmap(&self, name: &str, data: Value) {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap();
        self.ns.api::<ConfigMap>().create(&PostParams::default(), &cm).await.unwrap();
    }

    /// Waits until batch `name` has committed some texts.
    pub async fn progressed(&self, name: &str) {
        self.wait(name, "progress", |b| b.status.as_ref().is_some_and(|s| s.processed_texts > 0)).await.unwrap();
    }

    pub async fn wait(&self, name: &str, what: &str, ok: impl Fn(&SentimentBatch) -> bool) -> Result<SentimentBatch> {
        let api = self.batches();
        eventually(LONG, &format!("{name}: {what}"), || {
            let api = api.clone();
            let ok = &ok;
            async move { Ok(api.get_opt(name).await?.filter(|b| ok(b))) }
        })
        .await
    }

    pub async fn phase(&self, name: &str, phase: Phase) -> SentimentBatch {
        match self.wait(name, &format!("phase {phase:?}"), |b| b.phase() == phase || (phase != b.phase() && b.phase().is_final())).await {
            Ok(b) if b.phase() == phase => b,
            Ok(b) => panic!("{name} ended {:?}, not {phase:?}: {:#?}", b.phase(), b.status),
            Err(e) => panic!("{e:#}"),
        }
    }

    pub fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.cluster.kubectl().args(["-n", &self.ns.name]).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// The result lines of a finished batch with ConfigMap output, read through its
    /// manifest: of each part, the lines in its `start..end` (a part's file can hold more
    /// when two leaders overlapped).
    pub async fn results(&self, batch: &SentimentBatch) -> Vec<Value> {
        let location = batch.status.as_ref().and_then(|s| s.results_location.clone()).expect("a results location");
        let cms: Api<ConfigMap> = self.ns.api();
        let cm_data = |loc: &str, key: &str| {
            let name = loc.rsplit('/').next().unwrap().to_string();
            let (cms, key) = (cms.clone(), key.to_string());
            async move { cms.get(&name).await.unwrap().data.unwrap().remove(&key).unwrap() }
        };
        let manifest: Manifest = serde_json::from_str(&cm_data(&location, "manifest.json").await).unwrap();
        let mut lines = Vec::new();
        for part in &manifest.parts {
            for l in cm_data(&part.location, "results.jsonl").await.lines() {
                let line = serde_json::from_str::<Value>(l).unwrap();
                if (part.start..part.end).contains(&(line["index"].as_u64().unwrap() as usize)) {
                    lines.push(line);
                }
            }
        }
        lines
    }
}

pub fn status(b: &SentimentBatch) -> &kubesentiment_core::crd::SentimentBatchStatus {
    b.status.as_ref().expect("a status")
}

pub fn condition<'a>(b: &'a SentimentBatch, type_: &str) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    b.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}
