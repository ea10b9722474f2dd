//! Who is asking, and whether they may ask now.
//!
//! An API key maps to a [`Tenant`]: a namespace, and unless the key names its own
//! namespace, a label value that marks its jobs. A tenant only ever sees resources in
//! its namespace carrying its label, so another key's job answers 404. Keys are compared
//! by their SHA-256, never stored or logged in clear. Rate limits apply per tenant.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use kubesentiment_core::names::TENANT_LABEL;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Whose jobs a request may touch.
#[derive(Clone, Debug, PartialEq)]
pub struct Tenant {
    pub namespace: String,
    /// The value of [`TENANT_LABEL`] on its jobs; `None` sees the whole namespace.
    pub label: Option<String>,
    /// What signs its jobs' completion callbacks; `None` (no API keys): unsigned.
    pub signing: Option<Signing>,
}

/// A tenant's callback signing key and the Secret (in its namespace) that holds it for the
/// operator: HMAC-SHA256(API key, [`SIGNING_CONTEXT`]), so a client that holds the API key
/// can compute it, and the Secret reveals nothing of the key.
#[derive(Clone, PartialEq)]
pub struct Signing {
    pub secret: String,
    pub key: [u8; 32],
}

impl std::fmt::Debug for Signing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signing").field("secret", &self.secret).finish_non_exhaustive()
    }
}

/// The message an API key signs to make its tenant's callback signing key.
pub const SIGNING_CONTEXT: &[u8] = b"kubesentiment-callback-v1";
/// The key, in each tenant's signing Secret, of the signing key.
pub const SIGNING_SECRET_KEY: &str = "signing-key";

impl Signing {
    pub fn of(api_key: &str) -> Signing {
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(api_key.as_bytes()).expect("HMAC takes a key of any length. This is a bug.");
        mac.update(SIGNING_CONTEXT);
        Signing { secret: format!("kubesentiment-callback-{}", key_id(api_key)), key: mac.finalize().into_bytes().into() }
    }
}

impl Tenant {
    /// The label selector of its jobs, if any.
    pub fn selector(&self) -> Option<String> {
        self.label.as_ref().map(|l| format!("{TENANT_LABEL}={l}"))
    }

    pub fn owns(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.label.as_ref().is_none_or(|l| labels.get(TENANT_LABEL) == Some(l))
    }

    fn limiter_key(&self) -> String {
        format!("{}/{}", self.namespace, self.label.as_deref().unwrap_or(""))
    }
}

/// The configured keys. Without any, every request is the one anonymous tenant.
pub struct Keys {
    by_digest: HashMap<[u8; 32], Tenant>,
    anonymous: Tenant,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} configured)", self.by_digest.len())
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The first `bytes` bytes of `text`'s SHA-256, in hex.
pub fn hex_digest(text: &str, bytes: usize) -> String {
    digest(text)[..bytes].iter().map(|b| format!("{b:02x}")).collect()
}

/// The tenant label of `key`.
pub fn key_id(key: &str) -> String {
    hex_digest(key, 8)
}

impl Keys {
    /// `spec` is `KEY[=NAMESPACE],…`: a key with a namespace owns that namespace; a key
    /// without one shares `default_namespace`, its jobs told apart by label.
    pub fn parse(spec: &str, default_namespace: &str) -> Result<Self, String> {
        let mut by_digest = HashMap::new();
        for entry in spec.split([',', '\n']).map(str::trim).filter(|e| !e.is_empty()) {
            let (key, ns) = match entry.split_once('=') {
                Some((k, ns)) => (k.trim(), Some(ns.trim())),
                None => (entry, None),
            };
            if key.len() < 8 {
                return Err("every API key must have at least 8 characters".into());
            }
            let signing = Some(Signing::of(key));
            let tenant = match ns {
                Some(ns) if !ns.is_empty() => Tenant { namespace: ns.to_string(), label: None, signing },
                Some(_) => return Err("an API key's namespace is empty".into()),
                None => Tenant { namespace: default_namespace.to_string(), label: Some(key_id(key)), signing },
            };
            by_digest.insert(digest(key), tenant);
        }
        Ok(Keys { by_digest, anonymous: Tenant { namespace: default_namespace.to_string(), label: None, signing: None } })
    }

    pub fn enabled(&self) -> bool {
        !self.by_digest.is_empty()
    }

    /// Every namespace a tenant may use.
    pub fn namespaces(&self) -> Vec<String> {
        let mut ns: Vec<String> = self.by_digest.values().map(|t| t.namespace.clone()).chain([self.anonymous.namespace.clone()]).collect();
        if self.enabled() {
            ns.retain(|n| self.by_digest.values().any(|t| &t.namespace == n));
        }
        ns.sort();
        ns.dedup();
        ns
    }

    /// The tenant of a request, from `Authorization: Bearer KEY` or `X-API-Key: KEY`.
    pub fn tenant(&self, headers: &HeaderMap) -> Result<Tenant, ApiError> {
        if !self.enabled() {
            return Ok(self.anonymous.clone());
        }
        let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        let key = bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok())).ok_or(ApiError::Unauthorized)?;
        self.by_digest.get(&digest(key.trim())).cloned().ok_or(ApiError::Unauthorized)
    }
}

/// The brief's rate limits.
#[derive(Clone, Copy, Debug)]
pub struct RateLimits {
    /// Per tenant.
    pub max_requests_per_minute: u32,
    /// Requests in flight at once, over all tenants.
    pub max_concurrent_users: usize,
}

/// Authentication and rate limiting, as one middleware in front of the API routes.
pub struct Gate {
    pub keys: Keys,
    per_minute: DefaultKeyedRateLimiter<String>,
    in_flight: Arc<Semaphore>,
}

impl Gate {
    pub fn new(keys: Keys, limits: RateLimits) -> Self {
        let per_minute = NonZeroU32::new(limits.max_requests_per_minute.max(1)).expect("max(1) is non-zero. This is a bug.");
        Gate {
            keys,
            per_minute: RateLimiter::keyed(Quota::per_minute(per_minute)),
            in_flight: Arc::new(Semaphore::new(limits.max_concurrent_users.max(1))),
        }
    }

    fn admit(&self, headers: &HeaderMap) -> Result<(Tenant, tokio::sync::OwnedSemaphorePermit), ApiError> {
        let tenant = self.keys.tenant(headers)?;
        if let Err(not_until) = self.per_minute.check_key(&tenant.limiter_key()) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(ApiError::Busy { code: "rate_limited", message: "too many requests for this API key".into(), retry_after: wait });
        }
        let permit = self.in_flight.clone().try_acquire_owned().map_err(|_| ApiError::Busy {
            code: "too_many_requests",
            message: "too many requests in flight; retry shortly".into(),
            retry_after: Duration::from_secs(1),
        })?;
        Ok((tenant, permit))
    }
}

/// Puts the request's [`Tenant`] in its extensions, or answers 401 or 429.
pub async fn gate(State(gate): State<Arc<Gate>>, mut req: Request, next: Next) -> Response {
    match gate.admit(req.headers()) {
        Ok((tenant, permit)) => {
            req.extensions_mut().insert(tenant);
            let resp = next.run(req).await;
            drop(permit);
            resp
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn keys_map_to_namespaces_or_labels() {
        let keys = Keys::parse("alpha-key-1, beta-key-22=team-b", "jobs").unwrap();
        let a = keys.tenant(&headers("authorization", "Bearer alpha-key-1")).unwrap();
        let signing = |k: &str| Some(Signing::of(k));
        assert_eq!(a, Tenant { namespace: "jobs".into(), label: Some(key_id("alpha-key-1")), signing: signing("alpha-key-1") });
        let b = keys.tenant(&headers("x-api-key", "beta-key-22")).unwrap();
        assert_eq!(b, Tenant { namespace: "team-b".into(), label: None, signing: signing("beta-key-22") });
        assert!(matches!(keys.tenant(&headers("x-api-key", "nope-nope-nope")), Err(ApiError::Unauthorized)));
        assert!(matches!(keys.tenant(&HeaderMap::new()), Err(ApiError::Unauthorized)));
        assert_eq!(keys.namespaces(), ["jobs", "team-b"]);
        assert_ne!(key_id("alpha-key-1"), key_id("alpha-key-2"));
        assert!(!format!("{keys:?}").contains("alpha"));
    }

    #[test]
    fn signing_keys_are_an_hmac_of_the_api_key() {
        let s = Signing::of("alpha-key-1");
        assert_eq!(s.secret, format!("kubesentiment-callback-{}", key_id("alpha-key-1")));
        // What the Python client computes: hmac.new(b"alpha-key-1", b"kubesentiment-callback-v1", "sha256").hexdigest().
        let hex: String = s.key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "0bf367298c2ff541babdd579ae24f41620ffd6c5c84d37495bde017984fd1253");
        assert_ne!(Signing::of("alpha-key-2").key, s.key);
        assert_eq!(format!("{s:?}"), format!("Signing {{ secret: {:?}, .. }}", s.secret), "the key is never printed");
    }

    #[test]
    fn no_keys_means_one_anonymous_tenant() {
        let keys = Keys::parse("", "jobs").unwrap();
        assert_eq!(keys.tenant(&HeaderMap::new()).unwrap(), Tenant { namespace: "jobs".into(), label: None, signing: None });
        assert!(Keys::parse("short", "jobs").is_err());
    }

    #[test]
    fn the_minute_quota_is_per_tenant() {
        let keys = Keys::parse("alpha-key-1,beta-key-22", "jobs").unwrap();
        let gate = Gate::new(keys, RateLimits { max_requests_per_minute: 2, max_concurrent_users: 10 });
        let a = headers("x-api-key", "alpha-key-1");
        assert!(gate.admit(&a).is_ok() && gate.admit(&a).is_ok());
        match gate.admit(&a) {
            Err(ApiError::Busy { code: "rate_limited", retry_after, .. }) => assert!(retry_after > Duration::ZERO),
            other => panic!("{other:?}"),
        }
        assert!(gate.admit(&headers("x-api-key", "beta-key-22")).is_ok());
    }

    #[test]
    fn requests_in_flight_are_bounded() {
        let gate = Gate::new(Keys::parse("", "jobs").unwrap(), RateLimits { max_requests_per_minute: 100, max_concurrent_users: 1 });
        let held = gate.admit(&HeaderMap::new()).unwrap();
        assert!(matches!(gate.admit(&HeaderMap::new()), Err(ApiError::Busy { code: "too_many_requests", .. })));
        drop(held);
        assert!(gate.admit(&HeaderMap::new()).is_ok());
    }
}
