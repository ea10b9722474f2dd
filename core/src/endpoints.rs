//! Finding inference endpoints: the EndpointSlices of one Service, watched.
//!
//! The same code path runs in a cluster (pod IPs, filled in by the EndpointSlice
//! controller) and locally (`e2e/up.sh` registers `*.localhost` names). New endpoints
//! show up in the watch channel as they become ready: that is how autoscaling reaches
//! the dispatcher.

use std::collections::BTreeSet;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cli::ServiceRef;

/// Base URLs (`http://host:port`) of every ready endpoint, sorted.
pub type Endpoints = Vec<String>;

/// The ready endpoints of `service` in `namespace`, as URLs.
pub fn urls(slices: &[impl std::ops::Deref<Target = EndpointSlice>]) -> Endpoints {
    let mut out = BTreeSet::new();
    for slice in slices {
        let port = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("http"))
            .or_else(|| slice.ports.iter().flatten().next())
            .and_then(|p| p.port);
        let Some(port) = port else { continue };
        for ep in slice.endpoints.iter().flatten() {
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for addr in &ep.addresses {
                let host = if slice.address_type == "IPv6" { format!("[{addr}]") } else { addr.clone() };
                out.insert(format!("http://{host}:{port}"));
            }
        }
    }
    out.into_iter().collect()
}

/// The watched endpoints: their URLs as they change, and whether the first full list
/// has arrived (before it, no endpoints means "not known yet", not "none").
pub struct Watched {
    pub urls: watch::Receiver<Endpoints>,
    synced: watch::Receiver<bool>,
}

impl Watched {
    /// Returns once the first full list of EndpointSlices is in `urls`.
    pub async fn synced(&self) {
        let _ = self.synced.clone().wait_for(|s| *s).await;
    }
}

/// Watches the Service's EndpointSlices until `stop`, on a task of `tasks`, publishing
/// the URLs on change.
pub fn watch(client: Client, service: &ServiceRef, tasks: &TaskTracker, stop: CancellationToken) -> Watched {
    let (tx, urls_rx) = watch::channel(Vec::new());
    let (synced_tx, synced) = watch::channel(false);
    let api: Api<EndpointSlice> = Api::namespaced(client, &service.namespace);
    let cfg = watcher::Config::default().labels(&format!("kubernetes.io/service-name={}", service.name));
    let (reader, writer) = reflector::store();
    // Every event, not only touched objects: the store has the initial list at InitDone.
    let stream = reflector(writer, watcher(api, cfg)).default_backoff();
    tasks.spawn(crate::watch::drive(stream, "EndpointSlices", stop, move |event| {
        let now = urls(&reader.state());
        tx.send_if_modified(|cur| (*cur != now).then(|| *cur = now).is_some());
        if matches!(event, watcher::Event::InitDone) {
            synced_tx.send_replace(true);
        }
    }));
    Watched { urls: urls_rx, synced }
}
#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    fn slice(kind: &str, port: i32, eps: &[(&str, Option<bool>)]) -> Box<EndpointSlice> {
        Box::new(EndpointSlice {
            address_type: kind.into(),
            ports: Some(vec![EndpointPort { name: Some("http".into()), port: Some(port), ..Default::default() }]),
            endpoints: Some(
                eps.iter()
                    .map(|(a, ready)| Endpoint {
                        addresses: vec![a.to_string()],
                        conditions: Some(EndpointConditions { ready: *ready, ..Default::default() }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        })
    }

    #[test]
    fn ready_endpoints_become_urls() {
        let slices = [
            slice("IPv4", 8080, &[("10.0.0.1", Some(true)), ("10.0.0.2", Some(false)), ("10.0.0.3", None)]),
            slice("IPv6", 8080, &[("fd00::1", Some(true))]),
            slice("FQDN", 4000, &[("inference-0.localhost", Some(true))]),
        ];
        assert_eq!(
            urls(&slices),
            ["http://10.0.0.1:8080", "http://10.0.0.3:8080", "http://[fd00::1]:8080", "http://inference-0.localhost:4000"]
        );
    }
}
