//! [`Classifier`]: the one interface of the model runtime. A batch of texts goes in; each
//! text gets its label, score, every label's score, token count and truncation flag.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ort::environment::Environment;

use super::files::{Activation, ModelFiles};
use super::head::LinearHead;
use super::onnx::{OrtBackend, RuntimeConfig, environment};
use super::tokenize::TextEncoder;
use super::{Backend, Encoded, ModelError, argmax};
use crate::batching::{PassLimits, plan_passes};

/// One text's prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub label: String,
    pub score: f32,
    /// Scores of every label, in [`Model::labels`] order.
    pub scores: Vec<f32>,
    pub tokens: usize,
    pub truncated: bool,
    /// Wall time of the forward pass that computed this text.
    pub inference_time: Duration,
}

/// A loaded model: everything but the ONNX sessions, which [`Model::classifier`] makes,
/// one per inference thread.
pub struct Model {
    pub name: String,
    pub revision: Option<String>,
    pub files: ModelFiles,
    pub encoder: Arc<TextEncoder>,
    pub head: Option<Arc<LinearHead>>,
    labels: Arc<[String]>,
    activation: Activation,
    env: Environment,
    runtime: RuntimeConfig,
}

impl Model {
    pub fn load(
        name: String,
        revision: Option<String>,
        files: ModelFiles,
        dylib: &std::path::Path,
        runtime: RuntimeConfig,
    ) -> Result<Self, ModelError> {
        let env = environment(dylib)?;
        let encoder = Arc::new(TextEncoder::from_file(&files.tokenizer, files.config.max_length)?);
        let head = files.head.as_deref().map(LinearHead::load).transpose()?.map(Arc::new);
        let labels: Arc<[String]> = match &head {
            Some(h) => h.labels.clone().into(),
            None => files.config.labels.clone().into(),
        };
        let activation = files.config.activation;
        Ok(Self { name, revision, files, encoder, head, labels, activation, env, runtime })
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn max_length(&self) -> usize {
        self.encoder.max_length()
    }

    /// A fresh ONNX session over this model's files.
    pub fn backend(&self) -> Result<OrtBackend, ModelError> {
        OrtBackend::new(&self.env, &self.files, self.head.clone(), &self.runtime)
    }

    /// A classifier with its own session, for one inference thread.
    pub fn classifier(&self) -> Result<Classifier, ModelError> {
        Ok(Classifier {
            backend: Box::new(self.backend()?),
            encoder: self.encoder.clone(),
            labels: self.labels.clone(),
            activation: self.activation,
        })
    }
}

pub struct Classifier {
    backend: Box<dyn Backend>,
    encoder: Arc<TextEncoder>,
    labels: Arc<[String]>,
    activation: Activation,
}

impl Classifier {
    /// Tokenizes `texts`, groups texts of similar length into forward passes within
    /// `limits`, and answers in input order.
    pub fn predict<S: AsRef<str>>(&mut self, texts: &[S], limits: PassLimits) -> Result<Vec<Prediction>, ModelError> {
        let encoded = self.encoder.encode_all(texts)?;
        let lengths: Vec<usize> = encoded.iter().map(Encoded::len).collect();
        let mut out: Vec<Option<Prediction>> = vec![None; texts.len()];
        for pass in plan_passes(&lengths, limits) {
            let batch: Vec<&Encoded> = pass.iter().map(|&i| &encoded[i]).collect();
            for (i, p) in pass.into_iter().zip(self.predict_encoded(&batch)?) {
                out[i] = Some(p);
            }
        }
        Ok(out.into_iter().map(|p| p.expect("every text is planned into exactly one pass. This is a bug.")).collect())
    }

    /// One forward pass over an already-formed batch.
    pub fn predict_encoded(&mut self, batch: &[&Encoded]) -> Result<Vec<Prediction>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let start = Instant::now();
        let logits = self.backend.logits(batch)?;
        let inference_time = start.elapsed();
        if logits.dim() != (batch.len(), self.labels.len()) {
            return Err(ModelError::Runtime(format!(
                "model returned logits {:?}, expected [{}, {}]",
                logits.dim(),
                batch.len(),
                self.labels.len()
            )));
        }
        Ok(logits
            .outer_iter()
            .zip(batch)
            .map(|(row, enc)| {
                let scores = self.activation.apply(row.as_slice().expect("logits rows are contiguous. This is a bug."));
                let best = argmax(&scores);
                Prediction {
                    label: self.labels[best].clone(),
                    score: scores[best],
                    scores,
                    tokens: enc.len(),
                    truncated: enc.truncated,
                    inference_time,
                }
            })
            .collect())
    }
}
