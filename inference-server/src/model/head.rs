//! The classification head of the encoder layout: masked mean pooling over the encoder's
//! `last_hidden_state`, L2 normalisation, then `logits = W · x + b`.
//!
//! The head is stored as safetensors with tensors `weight` `[labels, dim]` and `bias`
//! `[labels]`, and its `id2label` as JSON in the file's metadata.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use ndarray::{Array1, Array2, ArrayView3};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::ModelError;
use super::files::labels_from_id2label;

#[derive(Debug, Clone, PartialEq)]
pub struct LinearHead {
    pub labels: Vec<String>,
    /// `[labels, dim]`
    pub weight: Array2<f32>,
    pub bias: Array1<f32>,
}

impl LinearHead {
    pub fn dim(&self) -> usize {
        self.weight.ncols()
    }

    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::invalid(path, e))?;
        Self::from_bytes(&bytes).map_err(|e| ModelError::invalid(path, e))
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
        let id2label: BTreeMap<String, String> = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("id2label"))
            .ok_or("no id2label in the safetensors metadata")
            .and_then(|s| serde_json::from_str(s).map_err(|_| "id2label metadata is not a JSON object"))?;
        let labels = labels_from_id2label(&id2label)?;
        let st = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let weight = f32_tensor(&st, "weight")?;
        let bias = f32_tensor(&st, "bias")?;
        let (rows, cols) = match weight.0.as_slice() {
            [r, c] => (*r, *c),
            s => return Err(format!("weight must be 2-d, is {s:?}")),
        };
        if rows != labels.len() || bias.0 != [rows] {
            return Err(format!("weight {:?} and bias {:?} do not fit {} labels", weight.0, bias.0, labels.len()));
        }
        let weight = Array2::from_shape_vec((rows, cols), weight.1).map_err(|e| e.to_string())?;
        Ok(Self { labels, weight, bias: Array1::from(bias.1) })
    }

    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let id2label: BTreeMap<String, String> = self.labels.iter().enumerate().map(|(i, l)| (i.to_string(), l.clone())).collect();
        let meta =
            HashMap::from([("id2label".to_string(), serde_json::to_string(&id2label).expect("a string map serialises. This is a bug."))]);
        let w: Vec<u8> = self.weight.iter().flat_map(|x| x.to_le_bytes()).collect();
        let b: Vec<u8> = self.bias.iter().flat_map(|x| x.to_le_bytes()).collect();
        let tensors = [
            ("weight", TensorView::new(Dtype::F32, self.weight.shape().to_vec(), &w).map_err(|e| ModelError::invalid(path, e))?),
            ("bias", TensorView::new(Dtype::F32, vec![self.bias.len()], &b).map_err(|e| ModelError::invalid(path, e))?),
        ];
        safetensors::serialize_to_file(tensors, Some(meta), path).map_err(|e| ModelError::invalid(path, e))
    }

    /// Logits for pooled, normalised embeddings `[batch, dim]`.
    pub fn logits(&self, pooled: &Array2<f32>) -> Array2<f32> {
        pooled.dot(&self.weight.t()) + &self.bias
    }
}

fn f32_tensor(st: &SafeTensors, name: &str) -> Result<(Vec<usize>, Vec<f32>), String> {
    let t = st.tensor(name).map_err(|_| format!("no tensor {name:?}"))?;
    if t.dtype() != Dtype::F32 {
        return Err(format!("tensor {name:?} must be F32, is {:?}", t.dtype()));
    }
    let data = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    Ok((t.shape().to_vec(), data))
}

/// Masked mean over the sequence axis, then L2 normalisation: `[b, s, d]` → `[b, d]`.
pub fn mean_pool_normalised(hidden: ArrayView3<f32>, mask: &Array2<i64>) -> Array2<f32> {
    let (b, _, d) = hidden.dim();
    let mut out = Array2::<f32>::zeros((b, d));
    for (i, (seq, mut row)) in hidden.outer_iter().zip(out.outer_iter_mut()).enumerate() {
        let mut count = 0.0f32;
        for (tok, m) in seq.outer_iter().zip(mask.row(i)) {
            if *m != 0 {
                row += &tok;
                count += 1.0;
            }
        }
        row /= count.max(1e-9);
        let norm = row.dot(&row).sqrt().max(1e-12);
        row /= norm;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, array};

    #[test]
    fn pooling_ignores_padding_and_normalises() {
        let mut h = Array3::<f32>::zeros((1, 3, 2));
        h[[0, 0, 0]] = 3.0;
        h[[0, 1, 1]] = 4.0;
        h[[0, 2, 0]] = 100.0; // padding
        let pooled = mean_pool_normalised(h.view(), &array![[1, 1, 0]]);
        assert!((pooled[[0, 0]] - 0.6).abs() < 1e-6 && (pooled[[0, 1]] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn head_round_trips_through_safetensors() {
        let head = LinearHead {
            labels: vec!["NEGATIVE".into(), "POSITIVE".into()],
            weight: array![[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]],
            bias: array![0.25, -0.25],
        };
        let path = std::env::temp_dir().join(format!("ks-head-{}.safetensors", std::process::id()));
        head.save(&path).unwrap();
        assert_eq!(LinearHead::load(&path).unwrap(), head);
        let logits = head.logits(&array![[1.0, 1.0, 1.0]]);
        assert_eq!(logits, array![[-0.25, 1.75]]);
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(LinearHead::load(&path), Err(ModelError::Invalid { .. })));
        std::fs::remove_file(&path).unwrap();
    }
}
