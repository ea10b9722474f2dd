//! The local control plane is real Kubernetes: kubectl talks to it, CRDs are served and
//! watched, status is patched by server-side apply, and the controller manager turns
//! Deployments into ReplicaSets and garbage-collects owned objects.

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, CustomResource, CustomResourceExt, Resource, ResourceExt};
use kubesentiment_tests::{cluster, eventually};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(CustomResource, Clone, Debug, Serialize, Deserialize, JsonSchema)]
#[kube(group = "smoke.kubesentiment.io", version = "v1", kind = "Widget", namespaced, status = "WidgetStatus")]
struct WidgetSpec {
    size: i32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
struct WidgetStatus {
    phase: Option<String>,
}

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn kubectl_talks_to_the_api_server() {
    let Some(cluster) = cluster() else { return };
    let out = cluster.kubectl().args(["version", "-o", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["serverVersion"]["gitVersion"], "v1.36.3");
    assert_eq!(v["clientVersion"]["gitVersion"], v["serverVersion"]["gitVersion"]);
}

#[tokio::test]
async fn a_crd_is_served_watched_and_its_status_applied_server_side() {
    let Some(cluster) = cluster() else { return };
    let ns = cluster.namespace("smoke-crd").await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(ns.client.clone());
    crds.patch("widgets.smoke.kubesentiment.io", &PatchParams::apply("smoke-test").force(), &Patch::Apply(Widget::crd())).await.unwrap();
    tokio::time::timeout(WAIT, await_condition(crds, "widgets.smoke.kubesentiment.io", conditions::is_crd_established()))
        .await
        .expect("the CRD is established")
        .unwrap();

    let widgets: Api<Widget> = ns.api();
    let mut events = watcher(widgets.clone(), watcher::Config::default()).applied_objects().boxed();
    widgets.create(&PostParams::default(), &Widget::new("w1", WidgetSpec { size: 3 })).await.unwrap();
    let seen = tokio::time::timeout(WAIT, events.next()).await.expect("the watch delivers the new widget").unwrap().unwrap();
    assert_eq!(seen.name_any(), "w1");
    assert_eq!(seen.spec.size, 3);

    let status = json!({ "apiVersion": "smoke.kubesentiment.io/v1", "kind": "Widget", "status": { "phase": "Done" } });
    widgets.patch_status("w1", &PatchParams::apply("smoke-status").force(), &Patch::Apply(status)).await.unwrap();
    let w = widgets.get("w1").await.unwrap();
    assert_eq!(w.status.unwrap().phase.as_deref(), Some("Done"));
    let managers: Vec<(String, Option<String>)> =
        w.metadata.managed_fields.unwrap_or_default().into_iter().map(|m| (m.manager.unwrap_or_default(), m.subresource)).collect();
    assert!(managers.contains(&("smoke-status".into(), Some("status".into()))), "{managers:?}");
    ns.delete().await.unwrap();
}

#[tokio::test]
async fn the_controller_manager_creates_replicasets_and_collects_garbage() {
    let Some(cluster) = cluster() else { return };
    let ns = cluster.namespace("smoke-kcm").await.unwrap();

    let deployments: Api<Deployment> = ns.api();
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "web" } },
            "template": { "metadata": { "labels": { "app": "web" } }, "spec": { "containers": [{ "name": "c", "image": "example.invalid/web:1" }] } }
        }
    }))
    .unwrap();
    deployments.create(&PostParams::default(), &deployment).await.unwrap();
    let replicasets: Api<ReplicaSet> = ns.api();
    let rs = eventually(WAIT, "the deployment's ReplicaSet", || async {
        Ok(replicasets.list(&ListParams::default().labels("app=web")).await?.items.into_iter().next())
    })
    .await
    .unwrap();
    assert_eq!(rs.owner_references()[0].name, "web");

    let configmaps: Api<ConfigMap> = ns.api();
    let parent = configmaps.create(&PostParams::default(), &configmap("parent", None)).await.unwrap();
    let owner = OwnerReference {
        api_version: ConfigMap::api_version(&()).into(),
        kind: ConfigMap::kind(&()).into(),
        name: parent.name_any(),
        uid: parent.uid().unwrap(),
        ..Default::default()
    };
    let child = configmaps.create(&PostParams::default(), &configmap("child", Some(owner))).await.unwrap();
    configmaps.delete("parent", &DeleteParams::background()).await.unwrap();
    tokio::time::timeout(WAIT, await_condition(configmaps, "child", conditions::is_deleted(&child.uid().unwrap())))
        .await
        .expect("the garbage collector deletes the owned child")
        .unwrap();
    ns.delete().await.unwrap();
}

fn configmap(name: &str, owner: Option<OwnerReference>) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.into());
    cm.metadata.owner_references = owner.map(|o| vec![o]);
    cm
}
