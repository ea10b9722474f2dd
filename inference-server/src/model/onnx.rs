//! The ONNX Runtime backend. One [`OrtBackend`] owns one session and is driven by one
//! thread; ONNX Runtime itself is loaded once per process from `libonnxruntime.so`.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ndarray::{Array2, Ix2, Ix3};
use ort::environment::Environment;
use ort::session::{Session, SessionInputValue, builder::GraphOptimizationLevel};
use ort::value::Tensor;

use super::files::ModelFiles;
use super::head::{LinearHead, mean_pool_normalised};
use super::{Backend, Encoded, ModelError};

/// How ONNX Runtime runs.
#[derive(Debug, Clone, clap::Args)]
pub struct RuntimeConfig {
    /// Path of `libonnxruntime.so` [default: the one scripts/setup.sh installs].
    #[arg(long = "ort-dylib", env = "ORT_DYLIB_PATH")]
    pub ort_dylib: Option<PathBuf>,
    /// Intra-op threads of each session.
    #[arg(long, env = "INFERENCE_INTRA_THREADS", default_value_t = 2)]
    pub intra_threads: usize,
    /// Let ONNX Runtime's threads spin while waiting for work (burns CPU when idle).
    #[arg(long, env = "INFERENCE_SPIN", default_value_t = false)]
    pub spin: bool,
    /// Write ONNX Runtime's per-operator profile of each session, as JSON, to files named
    /// `<PREFIX>_<date>.json` (when the session ends); `scripts/int8_peak.py --profile`
    /// sums it by operator.
    #[arg(long, env = "INFERENCE_ORT_PROFILE")]
    pub ort_profile: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self { ort_dylib: None, intra_threads: 2, spin: false, ort_profile: None }
    }
}

static ENVIRONMENT: OnceLock<Result<Environment, String>> = OnceLock::new();

/// Held while a session is built. A session that registers the server's operators
/// ([`super::kernels::domain`]) adds their domain to ONNX Runtime's process-wide schema
/// registry, and two doing it at once fail ("the domain is already exist"): inference
/// threads each build their session at start, together.
static BUILDING: Mutex<()> = Mutex::new(());

/// Loads ONNX Runtime once per process; later calls reuse the first library loaded.
pub fn environment(dylib: &Path) -> Result<Environment, ModelError> {
    ENVIRONMENT
        .get_or_init(|| {
            if !dylib.is_file() {
                return Err(format!(
                    "{} does not exist: run `bash scripts/setup.sh`, or point --ort-dylib / ORT_DYLIB_PATH at libonnxruntime.so",
                    dylib.display()
                ));
            }
            ort::init_from(dylib)
                .map_err(|e| format!("loading {}: {e}", dylib.display()))?
                .with_name("inference-server")
                .build()
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(ModelError::Runtime)
}

enum Output {
    /// A `*ForSequenceClassification` graph: `logits [b, labels]`.
    Logits(String),
    /// An encoder graph: `last_hidden_state [b, s, d]`, pooled then fed to a head.
    Hidden(String),
}

/// One ONNX Runtime session and what it needs fed.
pub struct OrtBackend {
    session: Session,
    wants_mask: bool,
    wants_type_ids: bool,
    output: Output,
    head: Option<Arc<LinearHead>>,
}

impl OrtBackend {
    pub fn new(env: &Environment, files: &ModelFiles, head: Option<Arc<LinearHead>>, cfg: &RuntimeConfig) -> Result<Self, ModelError> {
        let building = BUILDING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut builder = Session::builder(env)?;
        if let Some(prefix) = &cfg.ort_profile {
            builder = builder.with_profiling(prefix)?;
        }
        let session = builder
            .with_optimization_level(GraphOptimizationLevel::Level3)?
            .with_intra_threads(cfg.intra_threads.max(1))?
            .with_inter_threads(1)?
            .with_intra_op_spinning(cfg.spin)?
            .with_inter_op_spinning(cfg.spin)?
            .with_operators(super::kernels::domain()?)?
            .commit_from_file(&files.onnx)?;
        drop(building);
        let mut wants_mask = false;
        let mut wants_type_ids = false;
        let mut has_ids = false;
        for input in session.inputs() {
            match input.name() {
                "input_ids" => has_ids = true,
                "attention_mask" => wants_mask = true,
                "token_type_ids" => wants_type_ids = true,
                other => return Err(ModelError::invalid(&files.onnx, format!("unsupported model input {other:?}"))),
            }
        }
        if !has_ids {
            return Err(ModelError::invalid(&files.onnx, "the model has no input_ids input"));
        }
        let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let pick = |wanted: &str| names.iter().find(|n| **n == wanted).or(names.first()).map(|n| n.to_string());
        let encoder = head.is_some() || files.config.labels.is_empty();
        let output = match encoder {
            true => Output::Hidden(pick("last_hidden_state").ok_or_else(|| ModelError::invalid(&files.onnx, "no outputs"))?),
            false => Output::Logits(pick("logits").ok_or_else(|| ModelError::invalid(&files.onnx, "no outputs"))?),
        };
        Ok(Self { session, wants_mask, wants_type_ids, output, head })
    }

    /// Pooled, normalised sentence embeddings `[b, d]`; only for encoder models.
    pub fn embed(&mut self, batch: &[&Encoded]) -> Result<Array2<f32>, ModelError> {
        let Output::Hidden(name) = &self.output else {
            return Err(ModelError::Runtime("embeddings need an encoder model with a head".into()));
        };
        let name = name.clone();
        let (ids, mask, type_ids) = pad(batch);
        let inputs = self.inputs(ids, mask.clone(), type_ids)?;
        let outputs = self.session.run(inputs)?;
        let hidden = outputs[name.as_str()].try_extract_array::<f32>()?;
        let hidden = hidden.into_dimensionality::<Ix3>().map_err(|e| ModelError::Runtime(format!("{name}: {e}")))?;
        Ok(mean_pool_normalised(hidden, &mask))
    }

    fn inputs(
        &self,
        ids: Array2<i64>,
        mask: Array2<i64>,
        type_ids: Array2<i64>,
    ) -> Result<Vec<(Cow<'static, str>, SessionInputValue<'static>)>, ModelError> {
        let mut inputs: Vec<(Cow<'static, str>, SessionInputValue<'static>)> = vec![("input_ids".into(), Tensor::from_array(ids)?.into())];
        if self.wants_mask {
            inputs.push(("attention_mask".into(), Tensor::from_array(mask)?.into()));
        }
        if self.wants_type_ids {
            inputs.push(("token_type_ids".into(), Tensor::from_array(type_ids)?.into()));
        }
        Ok(inputs)
    }
}

impl Backend for OrtBackend {
    fn logits(&mut self, batch: &[&Encoded]) -> Result<Array2<f32>, ModelError> {
        let name = match (&self.output, self.head.clone()) {
            (Output::Hidden(_), Some(head)) => return Ok(head.logits(&self.embed(batch)?)),
            (Output::Hidden(_), None) => return Err(ModelError::Runtime("a bare encoder has no labels to score".into())),
            (Output::Logits(name), _) => name,
        };
        let name = name.clone();
        let (ids, mask, type_ids) = pad(batch);
        let inputs = self.inputs(ids, mask, type_ids)?;
        let outputs = self.session.run(inputs)?;
        let logits = outputs[name.as_str()].try_extract_array::<f32>()?;
        Ok(logits.into_dimensionality::<Ix2>().map_err(|e| ModelError::Runtime(format!("{name}: {e}")))?.to_owned())
    }
}

/// Right-pads a batch to its longest text: `(input_ids, attention_mask, token_type_ids)`.
pub fn pad(batch: &[&Encoded]) -> (Array2<i64>, Array2<i64>, Array2<i64>) {
    let width = batch.iter().map(|e| e.len()).max().unwrap_or(0);
    let mut ids = Array2::<i64>::zeros((batch.len(), width));
    let mut mask = Array2::<i64>::zeros((batch.len(), width));
    let mut types = Array2::<i64>::zeros((batch.len(), width));
    for (i, e) in batch.iter().enumerate() {
        for (j, (&id, &ty)) in e.ids.iter().zip(&e.type_ids).enumerate() {
            ids[[i, j]] = id;
            mask[[i, j]] = 1;
            types[[i, j]] = ty;
        }
    }
    (ids, mask, types)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_to_the_longest_text_in_the_batch() {
        let a = Encoded { ids: vec![101, 7, 102], type_ids: vec![0; 3], truncated: false };
        let b = Encoded { ids: vec![101, 102], type_ids: vec![0; 2], truncated: false };
        let (ids, mask, _) = pad(&[&a, &b]);
        assert_eq!(ids.dim(), (2, 3));
        assert_eq!(ids.row(1).to_vec(), vec![101, 102, 0]);
        assert_eq!(mask.row(1).to_vec(), vec![1, 1, 0]);
    }
}
