//! The model runtime: text in, label scores out. It knows nothing of HTTP or batching
//! policy; callers hand it already-formed batches.
//!
//! # Layout
//! - [`files`]: what an HF-style model directory holds (`config.json`, `tokenizer.json`,
//!   an `.onnx` file and an optional classification head), and the labels it declares.
//! - [`source`]: where a model comes from: a directory, a built-in name or a hub id.
//! - [`tokenize`]: one text to token ids, truncated at the model's maximum length.
//! - [`onnx`]: the ONNX Runtime [`Backend`], one session per instance.
//! - [`head`]: mean pooling, L2 normalisation and the linear head of encoder models.
//! - [`classifier`]: [`Classifier`], the one interface: texts in, [`Prediction`]s out.

pub mod classifier;
pub mod files;
pub mod head;
pub mod kernels;
pub mod onnx;
pub mod source;
pub mod tokenize;

use std::path::PathBuf;

pub use classifier::{Classifier, Model, Prediction};
pub use files::{Activation, ModelConfig};
pub use tokenize::Encoded;

/// Every failure of the model runtime. `Clone`, so one failed forward pass can answer
/// every request that waited on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    #[error("model not found: {0}")]
    NotFound(String),
    #[error("invalid model at {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("onnx runtime: {0}")]
    Runtime(String),
    #[error("model download: {0}")]
    Download(String),
}

impl ModelError {
    pub(crate) fn invalid(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Self::Invalid { path: path.into(), reason: reason.to_string() }
    }
}

impl<R> From<ort::Error<R>> for ModelError {
    fn from(e: ort::Error<R>) -> Self {
        Self::Runtime(e.to_string())
    }
}

/// Index of the largest score (the first, on ties).
pub fn argmax(scores: &[f32]) -> usize {
    scores.iter().enumerate().fold(0, |best, (i, s)| if *s > scores[best] { i } else { best })
}

/// One padded batch of encoded texts, as the model's inputs want it.
pub trait Backend: Send {
    /// Label logits, one row per text, for texts of any lengths.
    fn logits(&mut self, batch: &[&Encoded]) -> Result<ndarray::Array2<f32>, ModelError>;
}
