//! What an HF-style model directory holds, and what its `config.json` declares.
//!
//! Two layouts load:
//! - a `*ForSequenceClassification` export whose ONNX graph outputs `logits`;
//! - a sentence encoder (output `last_hidden_state`) plus `head.safetensors`, a linear
//!   head with its own `id2label`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ModelError;

/// The classification head file of the encoder layout.
pub const HEAD_FILE: &str = "head.safetensors";

/// How logits become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Single-label classification: scores sum to one.
    Softmax,
    /// `problem_type: multi_label_classification`: each label scored on its own.
    Sigmoid,
}

impl Activation {
    pub fn apply(self, logits: &[f32]) -> Vec<f32> {
        match self {
            Activation::Sigmoid => logits.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect(),
            Activation::Softmax => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exps: Vec<f32> = logits.iter().map(|x| (x - max).exp()).collect();
                let sum: f32 = exps.iter().sum();
                exps.into_iter().map(|e| e / sum).collect()
            }
        }
    }
}

/// The fields of `config.json` (and its neighbours) that inference needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Labels by class index; empty for a bare encoder.
    pub labels: Vec<String>,
    pub activation: Activation,
    /// Longest input in tokens, special tokens included.
    pub max_length: usize,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    id2label: BTreeMap<String, String>,
    #[serde(default)]
    problem_type: Option<String>,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    model_type: Option<String>,
}

#[derive(Deserialize)]
struct TokenizerConfig {
    model_max_length: Option<f64>,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// Labels ordered by their integer ids; ids must be exactly `0..n`.
pub fn labels_from_id2label(id2label: &BTreeMap<String, String>) -> Result<Vec<String>, String> {
    let mut pairs = Vec::with_capacity(id2label.len());
    for (id, label) in id2label {
        let id: usize = id.parse().map_err(|_| format!("id2label key {id:?} is not an integer"))?;
        pairs.push((id, label.clone()));
    }
    pairs.sort();
    if pairs.iter().enumerate().any(|(i, (id, _))| i != *id) {
        return Err("id2label ids must be 0..n with no gaps".into());
    }
    Ok(pairs.into_iter().map(|(_, l)| l).collect())
}

impl ModelConfig {
    /// Reads `config.json`, `tokenizer_config.json` and `sentence_bert_config.json`
    /// from `dir`; the maximum length is the smallest limit any of them sets.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("config.json");
        let raw: RawConfig = read_json(&path)?.ok_or_else(|| ModelError::invalid(&path, "missing"))?;
        let labels = labels_from_id2label(&raw.id2label).map_err(|e| ModelError::invalid(&path, e))?;
        let activation = match raw.problem_type.as_deref() {
            Some("multi_label_classification") => Activation::Sigmoid,
            _ => Activation::Softmax,
        };
        // RoBERTa-family position tables carry two extra slots for the padding offset.
        let offset = match raw.model_type.as_deref() {
            Some("roberta" | "xlm-roberta" | "camembert") => 2,
            _ => 0,
        };
        let mut limits = vec![raw.max_position_embeddings.map(|n| n.saturating_sub(offset)).unwrap_or(512)];
        let tok: Option<TokenizerConfig> = read_json(&dir.join("tokenizer_config.json"))?;
        if let Some(n) = tok.and_then(|t| t.model_max_length).filter(|n| *n >= 8.0 && *n < 1e6) {
            limits.push(n as usize);
        }
        let sbert: Option<SentenceBertConfig> = read_json(&dir.join("sentence_bert_config.json"))?;
        if let Some(n) = sbert.and_then(|s| s.max_seq_length) {
            limits.push(n);
        }
        let max_length = limits.into_iter().min().expect("at least one limit is always pushed. This is a bug.");
        Ok(Self { labels, activation, max_length })
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, ModelError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| ModelError::invalid(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ModelError::invalid(path, e)),
    }
}

/// The files of one model directory.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub tokenizer: PathBuf,
    pub onnx: PathBuf,
    /// Present for the encoder-plus-head layout. A model with neither a head nor labels
    /// is a bare encoder.
    pub head: Option<PathBuf>,
}

impl ModelFiles {
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let files = Self::open_encoder(dir)?;
        let head = Some(dir.join(HEAD_FILE)).filter(|p| p.is_file());
        if head.is_none() && files.config.labels.is_empty() {
            return Err(ModelError::invalid(dir, format!("config.json has no id2label and there is no {HEAD_FILE}")));
        }
        Ok(Self { head, ..files })
    }

    /// A bare sentence encoder: no labels or head needed (for `train`).
    pub fn open_encoder(dir: &Path) -> Result<Self, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::NotFound(format!("{} is not a directory", dir.display())));
        }
        let config = ModelConfig::load(dir)?;
        let tokenizer = dir.join("tokenizer.json");
        if !tokenizer.is_file() {
            return Err(ModelError::invalid(dir, "no tokenizer.json"));
        }
        let onnx = find_onnx(dir)?;
        Ok(Self { dir: dir.to_path_buf(), config, tokenizer, onnx, head: None })
    }
}

/// `model.onnx`, then `onnx/model.onnx` (the hub's layout), then the only `.onnx` file.
fn find_onnx(dir: &Path) -> Result<PathBuf, ModelError> {
    for candidate in ["model.onnx", "onnx/model.onnx"] {
        let p = dir.join(candidate);
        if p.is_file() {
            return Ok(p);
        }
    }
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::invalid(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ModelError::invalid(dir, "no .onnx file (looked for model.onnx and onnx/model.onnx)")),
        _ => Err(ModelError::invalid(dir, "several .onnx files; name the one to use model.onnx")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_sigmoid_is_independent() {
        let s = Activation::Softmax.apply(&[1.0, 2.0, 3.0]);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(s[2] > s[1] && s[1] > s[0]);
        let g = Activation::Sigmoid.apply(&[0.0, 100.0]);
        assert_eq!(g, vec![0.5, 1.0]);
    }

    #[test]
    fn id2label_is_ordered_by_integer_id() {
        let m: BTreeMap<String, String> =
            [("10", "K"), ("2", "C"), ("0", "A"), ("1", "B")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert!(labels_from_id2label(&m).unwrap_err().contains("0..n"));
        let m: BTreeMap<String, String> = (0..11).map(|i| (i.to_string(), format!("L{i}"))).collect();
        let labels = labels_from_id2label(&m).unwrap();
        assert_eq!(labels[2], "L2");
        assert_eq!(labels[10], "L10");
    }

    #[test]
    fn max_length_is_the_smallest_declared_limit() {
        let dir = std::env::temp_dir().join(format!("ks-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.json"),
            r#"{"model_type":"roberta","max_position_embeddings":514,"id2label":{"0":"NEG","1":"POS"}}"#,
        )
        .unwrap();
        assert_eq!(ModelConfig::load(&dir).unwrap().max_length, 512);
        std::fs::write(dir.join("sentence_bert_config.json"), r#"{"max_seq_length":256}"#).unwrap();
        std::fs::write(dir.join("tokenizer_config.json"), r#"{"model_max_length":1e30}"#).unwrap();
        let cfg = ModelConfig::load(&dir).unwrap();
        assert_eq!(cfg.max_length, 256);
        assert_eq!(cfg.labels, vec!["NEG", "POS"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
