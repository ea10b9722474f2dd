//! Completion callbacks (`spec.notify`): one CloudEvent per final phase, POSTed at least
//! once to a destination the operator's allow-list admits, signed as Standard Webhooks
//! sign.
//!
//! The controller drives delivery from status alone (`status.notification`: attempts,
//! the last one's time and outcome), so a restarted operator goes on where the last one
//! stopped, and a crash between a delivery and its status write only repeats the event
//! (same `id`; receivers drop repeats by it).
//!
//! What may be reached: the URL's host is resolved once, every address it resolves to
//! must be allowed ([`Allow`]), and the request goes to those addresses only (no second
//! lookup to rebind, no redirects, no proxy). Private, loopback and link-local addresses
//! are refused unless a CIDR of the allow-list holds them or the host is listed by name.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use ipnet::IpNet;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use kubesentiment_core::backoff::Backoff;
use kubesentiment_core::crd::{Notification, Notify, SentimentBatch};
use kubesentiment_core::rest;
use serde_json::json;
use sha2::Sha256;

/// Between a failed attempt and the next: 1 s doubling to 5 min.
const BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
/// How long one attempt may take, connection included.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where callbacks may go and how hard the operator tries.
#[derive(Clone, Debug)]
pub struct Policy {
    pub allow: Allow,
    /// Attempts before the delivery is `Failed`.
    pub max_attempts: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { allow: Allow::from_str("public").expect("a valid list. This is a bug."), max_attempts: 10 }
    }
}

/// The allow-list, from a comma-separated list of entries:
/// - `public`: any host whose addresses are all public (not private, loopback,
///   link-local, shared, documentation, multicast or reserved);
/// - a CIDR (`10.0.0.0/8`, `127.0.0.1/32`, `::1/128`): addresses in it;
/// - a host name (`hooks.example.com`) or a suffix (`*.example.com`): that host, at any
///   address.
///
/// Empty: no callbacks at all.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Allow {
    public: bool,
    nets: Vec<IpNet>,
    hosts: Vec<String>,
}

impl FromStr for Allow {
    type Err = String;

    fn from_str(list: &str) -> Result<Self, String> {
        let mut allow = Allow::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "public" {
                allow.public = true;
            } else if entry.contains('/') {
                allow.nets.push(entry.parse().map_err(|e| format!("{entry:?} is not a CIDR: {e}"))?);
            } else {
                let host = entry.strip_prefix("*.").unwrap_or(entry);
                if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
                    return Err(format!("{entry:?} is neither public, a CIDR, a host name nor *.suffix"));
                }
                allow.hosts.push(entry.to_ascii_lowercase());
            }
        }
        Ok(allow)
    }
}

impl Allow {
    fn names(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.hosts.iter().any(|h| match h.strip_prefix("*.") {
            Some(suffix) => host.strip_suffix(suffix).is_some_and(|head| head.ends_with('.')),
            None => *h == host,
        })
    }

    fn admits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip)) || (self.public && is_public(ip))
    }
}

/// Whether `ip` is a public unicast address (what `IpAddr::is_global` will say once it
/// is stable).
fn is_public(ip: IpAddr) -> bool {
    static NOT_PUBLIC: LazyLock<Vec<IpNet>> =
        LazyLock::new(|| NOT_PUBLIC_CIDRS.iter().map(|n| n.parse().expect("constant CIDRs parse. This is a bug.")).collect());
    !NOT_PUBLIC.iter().any(|n| n.contains(&ip))
}

/// The ranges that are not public unicast (IANA's special-purpose registries).
const NOT_PUBLIC_CIDRS: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/3",
    "::/127",
    "::ffff:0:0/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001::/23",
    "2001:db8::/32",
    "2002::/16",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
];

/// A delivery attempt's outcome, in the few words status keeps.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// A 2xx answer.
    Delivered(String),
    /// Worth another attempt: no answer, or a non-2xx one, or a signing key not there yet.
    Failed(String),
    /// Never deliverable: the destination is not allowed.
    Refused(String),
}

/// The destination `url` if the allow-list admits it: the URL and the addresses the
/// request may go to.
pub async fn destination(url: &str, allow: &Allow) -> Result<(url::Url, Vec<SocketAddr>), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a valid URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("only http and https callbacks are sent".into());
    }
    let port = parsed.port_or_known_default().ok_or("no port")?;
    let addrs: Vec<SocketAddr> = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => vec![SocketAddr::new(ip.into(), port)],
        Some(url::Host::Ipv6(ip)) => vec![SocketAddr::new(ip.into(), port)],
        Some(url::Host::Domain(host)) => match tokio::net::lookup_host((host, port)).await {
            Ok(found) => found.collect(),
            // Not an allow-list matter: the name may resolve later.
            Err(_) => Vec::new(),
        },
        None => return Err("no host".into()),
    };
    let named = parsed.host_str().is_some_and(|h| allow.names(h));
    if let Some(denied) = addrs.iter().find(|a| !named && !allow.admits(a.ip())) {
        return Err(format!("{} is not an address callbacks may go to", denied.ip()));
    }
    Ok((parsed, addrs))
}

/// The CloudEvent `id` of `batch`'s end: the same on every attempt, new for each end (a
/// retried batch ends again).
pub fn event_id(batch: &SentimentBatch) -> String {
    let ended = batch.status.as_ref().and_then(|s| s.completed_at.as_ref()).map_or(0, |t| t.0.as_second());
    format!("{}-{ended}", batch.uid().unwrap_or_default())
}

/// The CloudEvent (structured JSON) of `batch`'s end: its REST status as `data`.
pub fn event(batch: &SentimentBatch, id: &str) -> Vec<u8> {
    // The event is the news of the end; its own delivery is not part of it.
    let status = rest::BatchJobStatus { callback: None, ..rest::status_of(batch) };
    let time = batch.status.as_ref().and_then(|s| s.completed_at.as_ref()).map_or_else(Timestamp::now, |t| t.0);
    let namespace = batch.namespace().unwrap_or_default();
    let body = json!({
        "specversion": "1.0",
        "id": id,
        "source": format!("/apis/kubesentiment.io/v1alpha1/namespaces/{namespace}/sentimentbatches/{}", batch.name_any()),
        "type": format!("io.kubesentiment.batch.{}", status.status.as_str()),
        "subject": batch.name_any(),
        "time": time.to_string(),
        "datacontenttype": "application/json",
        "data": status,
    });
    serde_json::to_vec(&body).expect("JSON serializes. This is a bug.")
}

/// The Standard Webhooks signature of `body`: `v1,` and the base64 of
/// HMAC-SHA256(`key`, `id.timestamp.body`).
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length. This is a bug.");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// The signing key `notify` names, if any.
async fn signing_key(client: &Client, namespace: &str, notify: &Notify) -> Result<Option<Vec<u8>>, String> {
    let Some(r) = &notify.signing_secret_ref else { return Ok(None) };
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(&r.name)
        .await
        .map_err(|e| format!("reading Secret {}: {}", r.name, kubesentiment_core::remote::brief(&e)))?
        .ok_or_else(|| format!("no Secret {} for the signing key", r.name))?;
    let key = secret.data.and_then(|mut d| d.remove(&r.key)).map(|v| v.0).filter(|k| !k.is_empty());
    key.map(Some).ok_or_else(|| format!("Secret {} has no key {}", r.name, r.key))
}

/// One attempt at delivering `batch`'s end to `notify.url`.
pub async fn deliver(client: &Client, batch: &SentimentBatch, notify: &Notify, id: &str, allow: &Allow) -> Outcome {
    let (url, addrs) = match destination(&notify.url, allow).await {
        Ok(d) => d,
        Err(why) => return Outcome::Refused(format!("refused: {why}")),
    };
    if addrs.is_empty() {
        return Outcome::Failed(format!("could not resolve {}", url.host_str().unwrap_or_default()));
    }
    let key = match signing_key(client, &batch.namespace().unwrap_or_default(), notify).await {
        Ok(k) => k,
        Err(why) => return Outcome::Failed(why),
    };
    let mut http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(ATTEMPT_TIMEOUT)
        .user_agent(concat!("kubesentiment-operator/", env!("CARGO_PKG_VERSION")));
    if let Some(url::Host::Domain(host)) = url.host() {
        http = http.resolve_to_addrs(host, &addrs);
    }
    let http = match http.build() {
        Ok(h) => h,
        Err(e) => return Outcome::Failed(kubesentiment_core::remote::brief(&e)),
    };
    let body = event(batch, id);
    let now = Timestamp::now().as_second();
    let mut request = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/cloudevents+json")
        .header("webhook-id", id)
        .header("webhook-timestamp", now.to_string());
    if let Some(key) = key {
        request = request.header("webhook-signature", signature(&key, id, now, &body));
    }
    match request.body(body).send().await {
        Ok(r) if r.status().is_success() => Outcome::Delivered(kubesentiment_core::remote::http_status(r.status().as_u16())),
        Ok(r) => Outcome::Failed(kubesentiment_core::remote::http_status(r.status().as_u16())),
        Err(e) => {
            tracing::debug!(batch = %batch.name_any(), error = %e, "delivering a callback");
            Outcome::Failed(kubesentiment_core::remote::brief(&e))
        }
    }
}

/// How long until the next attempt of `n` is due; zero when it is.
pub fn due_in(n: &Notification, now: Timestamp) -> Duration {
    let Some(last) = &n.last_attempt_time else { return Duration::ZERO };
    let next = last.0 + BACKOFF.delay(n.attempts.max(1) as u32 - 1);
    Duration::try_from(next.duration_since(now)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(list: &str) -> Allow {
        list.parse().unwrap()
    }

    #[tokio::test]
    async fn private_and_loopback_addresses_are_refused_unless_allowed() {
        let public = allow("public");
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[fd00::1]/",
            "http://100.64.0.1/",
            "http://0.0.0.0/",
            "http://localhost:9/",
        ] {
            let refused = destination(url, &public).await;
            assert!(refused.is_err(), "{url} passed the public-only list: {refused:?}");
        }
        assert!(destination("https://93.184.215.14/hook", &public).await.is_ok());
        assert!(destination("https://[2606:2800:21f:cb07::1]/", &public).await.is_ok());
        let local = allow("public, 127.0.0.0/8, ::1/128");
        assert!(destination("http://127.0.0.1:8080/hook", &local).await.is_ok());
        assert!(destination("http://[::1]:9/", &local).await.is_ok());
        assert!(destination("http://[::ffff:127.0.0.1]/", &local).await.is_ok(), "a v4-mapped address is its v4 address");
        assert!(destination("http://10.1.2.3/", &local).await.is_err());
        assert!(destination("http://127.0.0.1/", &allow("")).await.is_err(), "an empty list allows nothing");
        assert!(destination("https://93.184.215.14/", &allow("")).await.is_err());
        assert!(destination("ftp://93.184.215.14/", &public).await.is_err());
        assert!(destination("http://localhost:9/", &allow("localhost")).await.is_ok(), "a host listed by name");
    }

    #[test]
    fn host_entries_match_whole_labels() {
        let a = allow("hooks.example.com, *.corp.example");
        assert!(a.names("hooks.example.com") && a.names("HOOKS.example.com"));
        assert!(a.names("ci.corp.example") && a.names("a.b.corp.example"));
        assert!(!a.names("corp.example") && !a.names("evilcorp.example") && !a.names("hooks.example.com.evil"));
        assert!("10.0.0.0/33".parse::<Allow>().is_err());
        assert!("http://x".parse::<Allow>().is_err());
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example of the Standard Webhooks specification: key whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw.
        let key = base64::engine::general_purpose::STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body), "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn attempts_back_off() {
        let t = Timestamp::from_second(1_000_000).unwrap();
        let mut n = Notification::default();
        assert_eq!(due_in(&n, t), Duration::ZERO);
        n.attempts = 3;
        n.last_attempt_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t));
        assert_eq!(due_in(&n, t), BACKOFF.delay(2));
        assert_eq!(due_in(&n, t + Duration::from_secs(3600)), Duration::ZERO);
    }
}
