//! Settings, layered (with `figment`): the built-in defaults, then the YAML file
//! (`configs/async_batch.yaml`, the brief's keys under `async_batch:`), then one
//! `ASYNC_BATCH_<KEY>` environment variable for every key, then flags. [`AsyncBatch::load`]
//! refuses invalid values with a message naming the key, so a bad deployment stops at
//! startup.
//!
//! This module and the binaries' `main` are the only places that read the environment:
//! [`ObjectStores::from_env`] reads the `AWS_*` variables once, and everything else is
//! handed these structs.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use serde::{Deserialize, Serialize};
use serde_saphyr::figment::Yaml;

use crate::admission;
use crate::crd::Priority;

/// The prefix of the environment variable of every `async_batch` key.
pub const ENV_PREFIX: &str = "ASYNC_BATCH_";

/// The brief's `async_batch` block.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AsyncBatch {
    pub enabled: bool,
    pub max_jobs: usize,
    pub max_batch_size: usize,
    pub default_timeout_seconds: u64,
    pub max_timeout_seconds: u64,
    pub priority_high_limit: usize,
    pub priority_medium_limit: usize,
    pub priority_low_limit: usize,
    /// Of `max_jobs`, slots only high (then medium) batches may take.
    pub reserved_high_slots: usize,
    pub reserved_medium_slots: usize,
    /// Dispatches per round for each level when several have work.
    pub priority_high_weight: u32,
    pub priority_medium_weight: u32,
    pub priority_low_weight: u32,
    pub aging_seconds: u64,
    pub cache_ttl_seconds: u64,
    pub result_cache_max_size: u64,
    pub workers: usize,
    pub max_retries: u32,
    /// Seconds after a batch ends until the operator deletes it (and what it owns), for
    /// batches without `spec.ttlSecondsAfterFinished`. Unset: kept until deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_ttl_seconds: Option<u64>,
}

impl Default for AsyncBatch {
    fn default() -> Self {
        AsyncBatch {
            enabled: true,
            max_jobs: 1000,
            max_batch_size: 1000,
            default_timeout_seconds: 300,
            max_timeout_seconds: 86_400,
            priority_high_limit: 100,
            priority_medium_limit: 500,
            priority_low_limit: 1000,
            reserved_high_slots: 100,
            reserved_medium_slots: 50,
            priority_high_weight: 6,
            priority_medium_weight: 3,
            priority_low_weight: 1,
            aging_seconds: 10,
            cache_ttl_seconds: 3600,
            result_cache_max_size: 1000,
            workers: 2,
            max_retries: 3,
            finished_ttl_seconds: None,
        }
    }
}

/// Flags over the file and the environment (clap fills these; `None` keeps the value below).
#[derive(Clone, Debug, Default, Serialize, clap::Args)]
pub struct Overrides {
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_jobs: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_timeout_seconds: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority_high_limit: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority_medium_limit: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority_low_limit: Option<usize>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aging_seconds: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {why}")]
    File { path: String, why: String },
    /// A value of the wrong type, or an unknown key; the message names the key and where
    /// it came from (the file, an environment variable, a flag).
    #[error("{0}")]
    Layer(Box<figment::Error>),
    #[error("async_batch.{key}: {why}")]
    Invalid { key: &'static str, why: String },
}

impl AsyncBatch {
    /// Defaults, then the file (if any), then `ASYNC_BATCH_*`, then `overrides`, validated.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut layers = Figment::from(Serialized::defaults(AsyncBatch::default()));
        if let Some(path) = file {
            let name = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: name.clone(), source })?;
            // The file holds one block, `async_batch:`; anything beside it is a mistake.
            let top: std::collections::BTreeMap<String, serde::de::IgnoredAny> =
                serde_saphyr::from_str(&text).map_err(|e| ConfigError::File { path: name.clone(), why: e.to_string() })?;
            if let Some(other) = top.keys().find(|k| *k != "async_batch") {
                return Err(ConfigError::File { path: name, why: format!("unknown key {other:?}; the settings go under async_batch:") });
            }
            layers = layers.merge(Figment::from(Yaml::string(&text)).focus("async_batch"));
        }
        let s: AsyncBatch = layers
            .merge(Env::prefixed(ENV_PREFIX))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| ConfigError::Layer(Box::new(e)))?;
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_jobs", self.max_jobs as u64),
            ("max_batch_size", self.max_batch_size as u64),
            ("default_timeout_seconds", self.default_timeout_seconds),
            ("max_timeout_seconds", self.max_timeout_seconds),
            ("priority_high_limit", self.priority_high_limit as u64),
            ("priority_medium_limit", self.priority_medium_limit as u64),
            ("priority_low_limit", self.priority_low_limit as u64),
            ("aging_seconds", self.aging_seconds),
            ("workers", self.workers as u64),
            ("priority_high_weight", u64::from(self.priority_high_weight)),
            ("priority_medium_weight", u64::from(self.priority_medium_weight)),
            ("priority_low_weight", u64::from(self.priority_low_weight)),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid { key, why: "must be at least 1".into() });
        }
        if self.reserved_high_slots + self.reserved_medium_slots >= self.max_jobs {
            return Err(ConfigError::Invalid {
                key: "reserved_high_slots",
                why: format!("with reserved_medium_slots it reserves all {} slots of max_jobs", self.max_jobs),
            });
        }
        if self.default_timeout_seconds > self.max_timeout_seconds {
            return Err(ConfigError::Invalid {
                key: "default_timeout_seconds",
                why: format!("{} exceeds max_timeout_seconds {}", self.default_timeout_seconds, self.max_timeout_seconds),
            });
        }
        Ok(())
    }

    pub fn limit(&self, p: Priority) -> usize {
        match p {
            Priority::High => self.priority_high_limit,
            Priority::Medium => self.priority_medium_limit,
            Priority::Low => self.priority_low_limit,
        }
    }

    /// The admission limits: per priority and in all.
    pub fn admission(&self) -> admission::Limits {
        admission::Limits {
            per_priority: Priority::ALL.map(|p| self.limit(p)),
            max_jobs: self.max_jobs,
            reserved: [self.reserved_high_slots, self.reserved_medium_slots],
        }
    }

    /// The levels' shares of dispatches (high, medium, low).
    pub fn level_weights(&self) -> [u32; 3] {
        [self.priority_high_weight, self.priority_medium_weight, self.priority_low_weight]
    }

    /// A batch's timeout: its own, capped, or the default.
    pub fn timeout(&self, requested: Option<i32>) -> Duration {
        let secs = requested.map_or(self.default_timeout_seconds, |t| (t.max(1) as u64).min(self.max_timeout_seconds));
        Duration::from_secs(secs)
    }
}

/// Settings of the object store behind `s3://` outputs and sources without their own
/// endpoint: the `AWS_*` variables `object_store` knows (endpoint, region, credentials,
/// `AWS_ALLOW_HTTP`), read once at startup. `Debug` names the keys, never the values.
#[derive(Clone, Default)]
pub struct ObjectStores {
    s3: Vec<(AmazonS3ConfigKey, String)>,
    /// Endpoints besides `AWS_ENDPOINT` that may receive the operator's own credentials
    /// ([`AMBIENT_ENDPOINTS_VAR`]).
    ambient: Vec<String>,
}

/// The variable listing, comma-separated, further S3 endpoints that a source without its
/// own `credentialsSecretRef` may name: each gets the operator's own credentials.
pub const AMBIENT_ENDPOINTS_VAR: &str = "KUBESENTIMENT_AMBIENT_S3_ENDPOINTS";

impl ObjectStores {
    /// Every `AWS_*` variable `object_store` has a key for, as `AmazonS3Builder::from_env`
    /// would read them.
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars())
    }

    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut stores = ObjectStores::default();
        for (k, v) in vars {
            if k == AMBIENT_ENDPOINTS_VAR {
                stores.ambient = v.split(',').map(|e| e.trim().trim_end_matches('/').to_string()).filter(|e| !e.is_empty()).collect();
            } else if let Some(key) = k.strip_prefix("AWS_").and_then(|_| AmazonS3ConfigKey::from_str(&k.to_ascii_lowercase()).ok()) {
                stores.s3.push((key, v));
            }
        }
        stores
    }

    /// A builder holding these settings; the caller adds the bucket or URL.
    pub fn s3(&self) -> AmazonS3Builder {
        self.s3.iter().fold(AmazonS3Builder::new(), |b, (k, v)| b.with_config(*k, v))
    }

    /// The S3 endpoint the operator's own credentials are for (`AWS_ENDPOINT`), if not AWS.
    pub fn endpoint(&self) -> Option<&str> {
        self.s3.iter().find(|(k, _)| *k == AmazonS3ConfigKey::Endpoint).map(|(_, v)| v.as_str())
    }

    /// Whether a source naming `endpoint` may use the operator's own credentials: it is
    /// `AWS_ENDPOINT` or listed in [`AMBIENT_ENDPOINTS_VAR`] (a trailing `/` aside).
    pub fn lends_credentials_to(&self, endpoint: &str) -> bool {
        let endpoint = endpoint.trim_end_matches('/');
        self.endpoint().is_some_and(|own| own.trim_end_matches('/') == endpoint) || self.ambient.iter().any(|e| e == endpoint)
    }
}

impl std::fmt::Debug for ObjectStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStores")
            .field("keys", &self.s3.iter().map(|(k, _)| k.as_ref()).collect::<Vec<_>>())
            .field("ambient", &self.ambient)
            .finish()
    }
}

#[cfg(test)]
// figment's `Jail` closures return its (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    fn load_in(jail: &mut figment::Jail, yaml: Option<&str>, overrides: &Overrides) -> Result<AsyncBatch, ConfigError> {
        let file = yaml.map(|y| {
            jail.create_file("async_batch.yaml", y).unwrap();
            jail.directory().join("async_batch.yaml")
        });
        AsyncBatch::load(file.as_deref(), overrides)
    }

    #[test]
    fn the_shipped_file_is_the_default() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/async_batch.yaml");
        figment::Jail::expect_with(|_| {
            assert_eq!(AsyncBatch::load(Some(&shipped), &Overrides::default()).unwrap(), AsyncBatch::default());
            Ok(())
        });
    }

    #[test]
    fn layers_file_then_env_then_flags() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("ASYNC_BATCH_MAX_JOBS", "8");
            jail.set_env("ASYNC_BATCH_PRIORITY_LOW_LIMIT", "4");
            let yaml = "async_batch:\n  max_jobs: 7\n  priority_low_limit: 3\n  aging_seconds: 2\n  reserved_high_slots: 2\n  reserved_medium_slots: 1\n";
            let s = load_in(jail, Some(yaml), &Overrides { max_jobs: Some(9), ..Default::default() }).unwrap();
            assert_eq!((s.max_jobs, s.priority_low_limit, s.aging_seconds, s.priority_high_limit), (9, 4, 2, 100));
            Ok(())
        });
    }

    /// Every key has an environment variable, including those without a flag.
    #[test]
    fn every_key_has_an_environment_override() {
        figment::Jail::expect_with(|jail| {
            let defaults = serde_json::to_value(AsyncBatch::default()).unwrap();
            for key in defaults.as_object().unwrap().keys() {
                let value = match key.as_str() {
                    "enabled" => "false",
                    "reserved_high_slots" | "reserved_medium_slots" => "1",
                    _ => "42",
                };
                jail.set_env(format!("{ENV_PREFIX}{}", key.to_uppercase()), value);
            }
            let s = load_in(jail, None, &Overrides::default()).unwrap();
            assert_eq!(
                (s.enabled, s.cache_ttl_seconds, s.result_cache_max_size, s.max_timeout_seconds, s.max_retries),
                (false, 42, 42, 42, 42)
            );
            Ok(())
        });
    }

    #[test]
    fn invalid_values_name_the_key() {
        for (yaml, env, key) in [
            ("async_batch:\n  max_jobs: 0\n", None, "async_batch.max_jobs"),
            ("async_batch:\n  default_timeout_seconds: 99\n  max_timeout_seconds: 10\n", None, "async_batch.default_timeout_seconds"),
            ("async_batch:\n  max_jobz: 1\n", None, "max_jobz"),
            ("async_batch:\n  max_jobs: 150\n", None, "reserved_high_slots"),
            ("async_batch:\n  workers: -1\n", None, "workers"),
            ("async_batch: {}\n", Some(("ASYNC_BATCH_CACHE_TTL_SECONDS", "soon")), "cache_ttl_seconds"),
            ("async_batch: {}\n", Some(("ASYNC_BATCH_MAX_JOBZ", "1")), "max_jobz"),
            ("asyncbatch:\n  max_jobs: 3\n", None, "asyncbatch"),
        ] {
            figment::Jail::expect_with(|jail| {
                if let Some((k, v)) = env {
                    jail.set_env(k, v);
                }
                let e = load_in(jail, Some(yaml), &Overrides::default()).unwrap_err().to_string();
                assert!(e.to_lowercase().contains(key), "{yaml:?} {env:?} gave {e:?}");
                Ok(())
            });
        }
    }

    #[test]
    fn timeouts_default_and_cap() {
        let s = AsyncBatch::default();
        assert_eq!(s.timeout(None), Duration::from_secs(300));
        assert_eq!(s.timeout(Some(5)), Duration::from_secs(5));
        assert_eq!(s.timeout(Some(i32::MAX)), Duration::from_secs(86_400));
    }

    #[test]
    fn credentials_go_only_to_listed_endpoints() {
        let stores =
            ObjectStores::from_vars([(AMBIENT_ENDPOINTS_VAR.to_string(), " https://s3.corp.example/, http://minio:9000 ,".to_string())]);
        assert!(stores.lends_credentials_to("https://s3.corp.example"));
        assert!(stores.lends_credentials_to("http://minio:9000/"));
        assert!(!stores.lends_credentials_to("http://minio:9000.evil.example"));
        assert!(!stores.lends_credentials_to("https://s3.corp.example.evil"));
        assert!(!ObjectStores::default().lends_credentials_to("http://169.254.169.254"));
    }

    #[test]
    fn object_store_settings_come_from_aws_variables_and_stay_secret() {
        let stores = ObjectStores::from_vars([
            ("AWS_ENDPOINT".to_string(), "http://127.0.0.1:9000".to_string()),
            ("AWS_ACCESS_KEY_ID".to_string(), "me".to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), "hunter2".to_string()),
            ("AWS_NOT_A_KEY".to_string(), "x".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ]);
        assert_eq!(stores.s3.len(), 3);
        assert!(!format!("{stores:?}").contains("hunter2"));
        assert!(stores.lends_credentials_to("http://127.0.0.1:9000/"));
        assert!(!stores.lends_credentials_to("http://127.0.0.1:9001"));
        let built = stores.s3().with_bucket_name("b").with_allow_http(true).build().unwrap();
        assert!(format!("{built}").contains("b"));
    }
}
