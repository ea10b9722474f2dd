//! Settings, layered: `configs/async_batch.yaml` (the brief's keys), then `ASYNC_BATCH_*`
//! environment variables, then flags. [`Settings::load`] refuses invalid values with a
//! message naming the key, so a bad deployment stops at startup.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::crd::Priority;

/// The brief's `async_batch` block.
#[derive(Clone, Debug, Deserialize, PartialEq)]
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
    pub aging_seconds: u64,
    pub cache_ttl_seconds: u64,
    pub result_cache_max_size: u64,
    pub workers: usize,
    pub max_retries: u32,
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
            aging_seconds: 10,
            cache_ttl_seconds: 3600,
            result_cache_max_size: 1000,
            workers: 2,
            max_retries: 3,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    async_batch: AsyncBatch,
}

/// Overrides from the environment and flags (clap fills these; `None` keeps the file's value).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    #[arg(long, env = "ASYNC_BATCH_ENABLED")]
    pub enabled: Option<bool>,
    #[arg(long, env = "ASYNC_BATCH_MAX_JOBS")]
    pub max_jobs: Option<usize>,
    #[arg(long, env = "ASYNC_BATCH_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,
    #[arg(long, env = "ASYNC_BATCH_DEFAULT_TIMEOUT_SECONDS")]
    pub default_timeout_seconds: Option<u64>,
    #[arg(long, env = "ASYNC_BATCH_WORKERS")]
    pub workers: Option<usize>,
    #[arg(long)]
    pub priority_high_limit: Option<usize>,
    #[arg(long)]
    pub priority_medium_limit: Option<usize>,
    #[arg(long)]
    pub priority_low_limit: Option<usize>,
    #[arg(long)]
    pub aging_seconds: Option<u64>,
    #[arg(long)]
    pub max_retries: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: String, source: serde_yaml::Error },
    #[error("async_batch.{key}: {why}")]
    Invalid { key: &'static str, why: String },
}

impl AsyncBatch {
    /// The file (if any), then `overrides`, validated.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut s = match file {
            Some(path) => {
                let p = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
                serde_yaml::from_str::<File>(&text).map_err(|source| ConfigError::Parse { path: p, source })?.async_batch
            }
            None => AsyncBatch::default(),
        };
        let o = overrides.clone();
        macro_rules! over {
            ($($f:ident),*) => { $(if let Some(v) = o.$f { s.$f = v; })* };
        }
        over!(
            enabled,
            max_jobs,
            max_batch_size,
            default_timeout_seconds,
            workers,
            priority_high_limit,
            priority_medium_limit,
            priority_low_limit,
            aging_seconds,
            max_retries
        );
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
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid { key, why: "must be at least 1".into() });
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

    /// A batch's timeout: its own, capped, or the default.
    pub fn timeout(&self, requested: Option<i32>) -> Duration {
        let secs = requested.map_or(self.default_timeout_seconds, |t| (t.max(1) as u64).min(self.max_timeout_seconds));
        Duration::from_secs(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A YAML file in the temp directory, removed on drop.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(text: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!("ks-config-{}-{}.yaml", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
            std::fs::write(&p, text).unwrap();
            TempFile(p)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn the_shipped_file_is_the_default() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/async_batch.yaml");
        assert_eq!(AsyncBatch::load(Some(&shipped), &Overrides::default()).unwrap(), AsyncBatch::default());
    }

    #[test]
    fn layers_file_then_overrides() {
        let f = TempFile::new("async_batch:\n  max_jobs: 7\n  priority_low_limit: 3\n");
        let s = AsyncBatch::load(Some(&f.0), &Overrides { max_jobs: Some(9), ..Default::default() }).unwrap();
        assert_eq!((s.max_jobs, s.priority_low_limit, s.priority_high_limit), (9, 3, 100));
    }

    #[test]
    fn invalid_values_name_the_key() {
        for (yaml, key) in [
            ("async_batch:\n  max_jobs: 0\n", "async_batch.max_jobs"),
            ("async_batch:\n  default_timeout_seconds: 99\n  max_timeout_seconds: 10\n", "async_batch.default_timeout_seconds"),
            ("async_batch:\n  max_jobz: 1\n", "max_jobz"),
            ("async_batch:\n  workers: -1\n", "workers"),
        ] {
            let f = TempFile::new(yaml);
            let e = AsyncBatch::load(Some(&f.0), &Overrides::default()).unwrap_err().to_string();
            assert!(e.contains(key), "{yaml:?} gave {e:?}");
        }
    }

    #[test]
    fn timeouts_default_and_cap() {
        let s = AsyncBatch::default();
        assert_eq!(s.timeout(None), Duration::from_secs(300));
        assert_eq!(s.timeout(Some(5)), Duration::from_secs(5));
        assert_eq!(s.timeout(Some(i32::MAX)), Duration::from_secs(86_400));
    }
}
