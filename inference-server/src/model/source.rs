//! Where a model comes from: `--model` names a local directory, a built-in model, or a
//! hub id `org/name[@revision]` fetched over the hub's HTTP file layout into the
//! standard cache (`$HF_HOME/hub`).

use std::path::{Path, PathBuf};

use hf_hub::api::tokio::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use super::files::{HEAD_FILE, ModelFiles};
use super::onnx::RuntimeConfig;
use super::{Model, ModelError};

/// The offline default model, assembled by `scripts/setup.sh`.
pub const BUILTIN_MINILM: &str = "minilm-sentiment";

/// What `--model` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    Dir(PathBuf),
    Builtin(&'static str),
    Hub { repo: String, revision: String },
}

impl ModelRef {
    /// An existing directory wins over a hub id of the same spelling.
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        let s = s.trim();
        if s == BUILTIN_MINILM {
            return Ok(Self::Builtin(BUILTIN_MINILM));
        }
        let path = Path::new(s);
        if path.is_dir() || s.starts_with(['/', '.', '~']) {
            return Ok(Self::Dir(path.to_path_buf()));
        }
        let (repo, revision) = s.split_once('@').unwrap_or((s, "main"));
        let valid = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        match repo.split_once('/') {
            Some((org, name)) if valid(org) && valid(name) && !revision.is_empty() => {
                Ok(Self::Hub { repo: repo.to_string(), revision: revision.to_string() })
            }
            _ => Err(ModelError::NotFound(format!(
                "{s:?} is neither a directory, the built-in {BUILTIN_MINILM:?}, nor a hub id org/name[@revision]"
            ))),
        }
    }
}

/// `--model` and everything needed to load it: the command-line face of this module.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// A model directory, the built-in `minilm-sentiment`, or a hub id `org/name[@revision]`.
    #[arg(long, env = "INFERENCE_MODEL", default_value = BUILTIN_MINILM)]
    pub model: String,
    #[command(flatten)]
    pub source: SourceConfig,
    #[command(flatten)]
    pub runtime: RuntimeConfig,
}

impl ModelArgs {
    /// Resolves (fetching if need be) and loads the model.
    pub async fn load(&self) -> Result<Model, ModelError> {
        let reference = ModelRef::parse(&self.model)?;
        let (files, revision) = self.source.resolve(&reference).await?;
        Model::load(reference.name(), revision, files, &self.ort_dylib(), self.runtime.clone())
    }

    pub fn ort_dylib(&self) -> PathBuf {
        self.source.ort_dylib(&self.runtime)
    }
}

impl ModelRef {
    /// The `model_name` results carry: the built-in name, the hub id, or the directory's name.
    pub fn name(&self) -> String {
        match self {
            ModelRef::Builtin(name) => name.to_string(),
            ModelRef::Hub { repo, .. } => repo.clone(),
            ModelRef::Dir(dir) => dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned()),
        }
    }
}

/// Where models are looked for and fetched to.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceConfig {
    /// Root of the assets `scripts/setup.sh` installs [default: ~/.cache/kubesentiment].
    #[arg(long, env = "KUBESENTIMENT_HOME")]
    pub assets_dir: Option<PathBuf>,
    /// Hugging Face home; the hub cache is its `hub/` folder [default: ~/.cache/huggingface].
    #[arg(long, env = "HF_HOME")]
    pub hf_home: Option<PathBuf>,
    /// Base URL of the hub's file layout.
    #[arg(long, env = "HF_ENDPOINT", default_value = "https://huggingface.co")]
    pub hf_endpoint: String,
    /// Never touch the network; use the hub cache only.
    #[arg(long, env = "HF_HUB_OFFLINE", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    pub hf_offline: bool,
    #[arg(long, env = "HF_TOKEN", hide_env_values = true)]
    pub hf_token: Option<String>,
    /// The user's home, under which the default caches live.
    #[arg(long, env = "HOME", hide = true)]
    pub home: Option<PathBuf>,
}

impl SourceConfig {
    fn home(&self) -> PathBuf {
        self.home.clone().unwrap_or_else(|| PathBuf::from("/tmp"))
    }

    pub fn assets_dir(&self) -> PathBuf {
        self.assets_dir.clone().unwrap_or_else(|| self.home().join(".cache/kubesentiment"))
    }

    /// `--ort-dylib` / `ORT_DYLIB_PATH` when given, else the `libonnxruntime.so` that
    /// `scripts/setup.sh` installs.
    pub fn ort_dylib(&self, runtime: &RuntimeConfig) -> PathBuf {
        runtime.ort_dylib.clone().unwrap_or_else(|| self.assets_dir().join("onnxruntime/libonnxruntime.so.1.32.0"))
    }

    fn hub_cache(&self) -> PathBuf {
        self.hf_home.clone().unwrap_or_else(|| self.home().join(".cache/huggingface")).join("hub")
    }

    /// The model's directory, fetching it first for a hub id not yet cached.
    /// Returns the directory and, for hub models, the revision asked for.
    pub async fn resolve(&self, model: &ModelRef) -> Result<(ModelFiles, Option<String>), ModelError> {
        match model {
            ModelRef::Dir(dir) => Ok((ModelFiles::open(dir)?, None)),
            ModelRef::Builtin(name) => {
                let dir = self.assets_dir().join("models").join(name);
                if !dir.join("model.onnx").is_file() {
                    return Err(ModelError::NotFound(format!(
                        "the built-in model {name:?} is not installed at {}: run `bash scripts/setup.sh`",
                        dir.display()
                    )));
                }
                Ok((ModelFiles::open(&dir)?, None))
            }
            ModelRef::Hub { repo, revision } => {
                let dir = self.fetch_hub(repo, revision).await?;
                Ok((ModelFiles::open(&dir)?, Some(revision.clone())))
            }
        }
    }

    async fn fetch_hub(&self, repo: &str, revision: &str) -> Result<PathBuf, ModelError> {
        let hub_repo = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
        let fetcher = if self.hf_offline {
            Fetcher::Offline(Cache::new(self.hub_cache()).repo(hub_repo))
        } else {
            let api = ApiBuilder::new()
                .with_cache_dir(self.hub_cache())
                .with_endpoint(self.hf_endpoint.trim_end_matches('/').to_string())
                .with_token(self.hf_token.clone())
                .with_progress(false)
                .build()
                .map_err(|e| ModelError::Download(e.to_string()))?;
            Fetcher::Online(api.repo(hub_repo))
        };
        let where_ =
            if self.hf_offline { "in the hub cache (HF_HUB_OFFLINE is set)".to_string() } else { format!("at {}", self.hf_endpoint) };
        let missing = |file: &str| ModelError::NotFound(format!("{repo}@{revision} has no {file} {where_}"));
        let config = fetcher.fetch("config.json").await?.ok_or_else(|| missing("config.json"))?;
        fetcher.fetch("tokenizer.json").await?.ok_or_else(|| missing("tokenizer.json"))?;
        let mut onnx = None;
        for candidate in ["onnx/model.onnx", "model.onnx"] {
            onnx = fetcher.fetch(candidate).await?;
            if onnx.is_some() {
                break;
            }
        }
        onnx.ok_or_else(|| missing("onnx/model.onnx or model.onnx"))?;
        for optional in ["tokenizer_config.json", "sentence_bert_config.json", HEAD_FILE] {
            fetcher.fetch(optional).await?;
        }
        Ok(config.parent().expect("a cached file lives in a snapshot folder. This is a bug.").to_path_buf())
    }
}

/// The hub, or only its cache when offline.
enum Fetcher {
    Online(ApiRepo),
    Offline(hf_hub::CacheRepo),
}

impl Fetcher {
    /// One file of the repo: `Ok(None)` when the repo does not have it.
    async fn fetch(&self, file: &str) -> Result<Option<PathBuf>, ModelError> {
        match self {
            Fetcher::Offline(cache) => Ok(cache.get(file)),
            Fetcher::Online(api) => match api.get(file).await {
                Ok(p) => Ok(Some(p)),
                Err(ApiError::RequestError(e)) if e.status().is_some_and(|s| s.as_u16() == 404) => Ok(None),
                Err(e) => Err(ModelError::Download(format!("{file}: {e}"))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_of_model_reference() {
        let hub = |r: &str, v: &str| ModelRef::Hub { repo: r.into(), revision: v.into() };
        let cases: &[(&str, Result<ModelRef, ()>)] = &[
            ("minilm-sentiment", Ok(ModelRef::Builtin(BUILTIN_MINILM))),
            ("/opt/models/x", Ok(ModelRef::Dir("/opt/models/x".into()))),
            ("./x", Ok(ModelRef::Dir("./x".into()))),
            (
                "distilbert/distilbert-base-uncased-finetuned-sst-2-english",
                Ok(hub("distilbert/distilbert-base-uncased-finetuned-sst-2-english", "main")),
            ),
            ("org/name@v1.0", Ok(hub("org/name", "v1.0"))),
            ("org/name@", Err(())),
            ("justaname", Err(())),
            ("a/b/c", Err(())),
            ("org/na me", Err(())),
        ];
        for (input, want) in cases {
            assert_eq!(ModelRef::parse(input).map_err(|_| ()), *want, "{input}");
        }
    }
}
