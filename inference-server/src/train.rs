//! `train`: fits the linear head of an encoder model (multinomial logistic regression on
//! pooled, normalised sentence embeddings) with class-balanced weights, L2 and Adam.
//! The fit is a pure function of embeddings and labels, so it is tested without a model.

use ndarray::{Array, Array1, Array2, Axis, Dimension, Zip};

use crate::batching::{PassLimits, plan_passes};
use crate::model::onnx::OrtBackend;
use crate::model::tokenize::TextEncoder;
use crate::model::{Encoded, ModelError};

#[derive(Debug, Clone, clap::Args)]
pub struct FitConfig {
    /// Full-batch Adam steps.
    #[arg(long, default_value_t = 1000)]
    pub epochs: usize,
    #[arg(long, default_value_t = 0.05)]
    pub learning_rate: f32,
    /// L2 penalty on the weights.
    #[arg(long, default_value_t = 1e-5)]
    pub l2: f32,
    /// Weight each class by the inverse of its frequency.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub balanced: bool,
}

impl Default for FitConfig {
    fn default() -> Self {
        Self { epochs: 1000, learning_rate: 0.05, l2: 1e-5, balanced: true }
    }
}

/// Pooled, normalised embeddings of every text, `[texts, dim]`.
pub fn embed_all(backend: &mut OrtBackend, encoder: &TextEncoder, texts: &[String], limits: PassLimits) -> Result<Array2<f32>, ModelError> {
    let encoded = encoder.encode_all(texts)?;
    let lengths: Vec<usize> = encoded.iter().map(Encoded::len).collect();
    let mut rows: Vec<Option<Array1<f32>>> = vec![None; texts.len()];
    for pass in plan_passes(&lengths, limits) {
        let batch: Vec<&Encoded> = pass.iter().map(|&i| &encoded[i]).collect();
        let emb = backend.embed(&batch)?;
        for (i, row) in pass.into_iter().zip(emb.outer_iter()) {
            rows[i] = Some(row.to_owned());
        }
    }
    let dim = rows.first().and_then(|r| r.as_ref()).map_or(0, |r| r.len());
    let mut out = Array2::zeros((texts.len(), dim));
    for (mut dst, src) in out.outer_iter_mut().zip(rows) {
        dst.assign(&src.expect("every text is planned into one pass. This is a bug."));
    }
    Ok(out)
}

/// Fits `logits = x · Wᵀ + b`. Returns `(W [classes, dim], b [classes])`.
pub fn fit(x: &Array2<f32>, y: &[usize], classes: usize, cfg: &FitConfig) -> (Array2<f32>, Array1<f32>) {
    let (n, d) = x.dim();
    assert_eq!(n, y.len(), "one label per row. This is a bug.");
    let mut counts = vec![0usize; classes];
    y.iter().for_each(|&c| counts[c] += 1);
    let sample_weight: Vec<f32> =
        y.iter().map(|&c| if cfg.balanced { n as f32 / (classes as f32 * counts[c].max(1) as f32) } else { 1.0 }).collect();
    let total_weight: f32 = sample_weight.iter().sum();
    let mut w = Array2::<f32>::zeros((classes, d));
    let mut b = Array1::<f32>::zeros(classes);
    let (mut mw, mut vw) = (w.clone(), w.clone());
    let (mut mb, mut vb) = (b.clone(), b.clone());
    for step in 1..=cfg.epochs as i32 {
        let mut grad = x.dot(&w.t()) + &b; // logits [n, c], turned into dLoss/dlogits in place
        for ((mut row, &label), &sw) in grad.outer_iter_mut().zip(y).zip(&sample_weight) {
            let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            row.mapv_inplace(|v| (v - max).exp());
            let sum = row.sum();
            row.mapv_inplace(|v| v / sum);
            row[label] -= 1.0;
            row *= sw / total_weight;
        }
        let gw = grad.t().dot(x) + &(&w * cfg.l2);
        let gb = grad.sum_axis(Axis(0));
        adam(&mut w, &gw, &mut mw, &mut vw, step, cfg.learning_rate);
        adam(&mut b, &gb, &mut mb, &mut vb, step, cfg.learning_rate);
    }
    (w, b)
}

/// One Adam update of `p` with gradient `g` and moments `m`, `v`.
fn adam<D: Dimension>(p: &mut Array<f32, D>, g: &Array<f32, D>, m: &mut Array<f32, D>, v: &mut Array<f32, D>, step: i32, lr: f32) {
    const B1: f32 = 0.9;
    const B2: f32 = 0.999;
    let (c1, c2) = (1.0 - B1.powi(step), 1.0 - B2.powi(step));
    Zip::from(p).and(g).and(m).and(v).for_each(|p, &g, m, v| {
        *m = B1 * *m + (1.0 - B1) * g;
        *v = B2 * *v + (1.0 - B2) * g * g;
        *p -= lr * (*m / c1) / ((*v / c2).sqrt() + 1e-8);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn separates_three_noisy_clusters_even_when_unbalanced() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let centres = [[1.0f32, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        let sizes = [400, 40, 200];
        let (mut rows, mut y) = (Vec::new(), Vec::new());
        for (c, (centre, &size)) in centres.iter().zip(&sizes).enumerate() {
            for _ in 0..size {
                rows.extend(centre.iter().map(|v| v + rng.random_range(-0.45..0.45)));
                y.push(c);
            }
        }
        let x = Array2::from_shape_vec((y.len(), 3), rows).unwrap();
        let (w, b) = fit(&x, &y, 3, &FitConfig { epochs: 300, ..Default::default() });
        let logits = x.dot(&w.t()) + &b;
        let mut correct = [0usize; 3];
        for (row, &label) in logits.outer_iter().zip(&y) {
            let best = crate::model::argmax(row.as_slice().unwrap());
            correct[label] += usize::from(best == label);
        }
        for c in 0..3 {
            let recall = correct[c] as f32 / sizes[c] as f32;
            assert!(recall > 0.9, "class {c} recall {recall}");
        }
    }
}
