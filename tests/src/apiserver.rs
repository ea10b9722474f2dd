//! What the API server itself counts: its `/metrics` page, read through `kubectl`, and the
//! requests that write the resources a batch touches.

use std::collections::BTreeMap;

use crate::Cluster;

/// The resources a batch writes: itself (and its status), its ConfigMaps, its Events.
pub const BATCH_RESOURCES: [&str; 3] = ["configmaps", "events", "sentimentbatches"];

/// The API server's own metrics page.
pub fn metrics(cluster: &Cluster) -> String {
    let out = cluster.kubectl().args(["get", "--raw", "/metrics"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn label(line: &str, key: &str) -> Option<String> {
    line.split(&format!("{key}=\"")).nth(1).and_then(|r| r.split('"').next()).map(String::from)
}

/// Of `family` (a counter, or a histogram's `_sum` or `_count`), the value per
/// `resource/verb` of the [`BATCH_RESOURCES`], or `resource/subresource/verb`
/// (`sentimentbatches/status/PATCH`).
pub fn by_resource(page: &str, family: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for l in page.lines().filter(|l| l.starts_with(&format!("{family}{{"))) {
        let (Some(resource), Some(verb)) = (label(l, "resource"), label(l, "verb")) else { continue };
        if !BATCH_RESOURCES.contains(&resource.as_str()) {
            continue;
        }
        let Some(value) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else { continue };
        let key = match label(l, "subresource").filter(|s| !s.is_empty()) {
            Some(sub) => format!("{resource}/{sub}/{verb}"),
            None => format!("{resource}/{verb}"),
        };
        *out.entry(key).or_insert(0.0) += value;
    }
    out
}

/// Creates, updates and patches of the [`BATCH_RESOURCES`] so far, by `resource/verb`,
/// from `apiserver_request_total`. Deletes are left out: a batch that runs deletes
/// nothing, and the namespace controller's cleanup of other tests' namespaces deletes a lot.
pub fn writes(page: &str) -> BTreeMap<String, f64> {
    let write = |key: &String| ["POST", "PUT", "PATCH", "APPLY"].iter().any(|v| key.ends_with(&format!("/{v}")));
    by_resource(page, "apiserver_request_total").into_iter().filter(|(k, _)| write(k)).collect()
}

/// `after` less `before`, key by key, without the keys that did not change.
pub fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after.iter().map(|(k, a)| (k.clone(), a - before.get(k).unwrap_or(&0.0))).filter(|(_, d)| *d > 0.0).collect()
}
