//! `eval`: accuracy, macro-F1, calibration error and a confusion matrix of a model on labelled sentences.
//! On data labelled only POSITIVE/NEGATIVE the model's decision is the larger of its
//! POSITIVE and NEGATIVE scores, so a 3-class model is judged on the binary task.
//! Calibration is the expected calibration error (ECE) of each decision's confidence:
//! the top score, or on binary data the larger of POSITIVE and NEGATIVE renormalised
//! over those two.

use serde::Serialize;

use crate::data::{Example, NEGATIVE, POSITIVE};
use crate::model::Prediction;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub name: String,
    pub examples: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    /// Row and column labels of `confusion`.
    pub labels: Vec<String>,
    /// `confusion[gold][predicted]`.
    pub confusion: Vec<Vec<usize>>,
    /// Expected calibration error over `ECE_BINS` equal-width bins, when confidences are known.
    pub ece: Option<f64>,
}

pub const ECE_BINS: usize = 15;

/// POSITIVE's and NEGATIVE's score columns when the data is labelled only with those two
/// and the model has both: it is then judged on that binary decision.
fn binary_columns(examples: &[Example], model_labels: &[String]) -> Option<(usize, usize)> {
    let index = |name: &str| model_labels.iter().position(|l| l.eq_ignore_ascii_case(name));
    let binary = examples.iter().all(|e| e.label == POSITIVE || e.label == NEGATIVE);
    binary.then(|| index(POSITIVE).zip(index(NEGATIVE))).flatten()
}

/// The label each prediction stands for on this data set.
fn decisions(examples: &[Example], predictions: &[Prediction], model_labels: &[String]) -> Vec<String> {
    match binary_columns(examples, model_labels) {
        Some((pos, neg)) => {
            predictions.iter().map(|p| if p.scores[pos] >= p.scores[neg] { POSITIVE } else { NEGATIVE }.to_string()).collect()
        }
        None => predictions.iter().map(|p| p.label.to_uppercase()).collect(),
    }
}

/// How sure the model is of each of `decisions`' labels, as a probability.
fn confidences(examples: &[Example], predictions: &[Prediction], model_labels: &[String]) -> Vec<f64> {
    match binary_columns(examples, model_labels) {
        Some((pos, neg)) => predictions
            .iter()
            .map(|p| {
                let (a, b) = (f64::from(p.scores[pos]), f64::from(p.scores[neg]));
                if a + b > 0.0 { a.max(b) / (a + b) } else { 0.5 }
            })
            .collect(),
        None => predictions.iter().map(|p| f64::from(p.score)).collect(),
    }
}

/// A model's report on labelled `examples` from its `predictions`: the decisions scored
/// against the labels, classes in the model's order, with their calibration error.
pub fn judge(name: &str, examples: Vec<Example>, predictions: &[Prediction], model_labels: &[String]) -> Report {
    let decided = decisions(&examples, predictions, model_labels);
    let confidence = confidences(&examples, predictions, model_labels);
    let gold: Vec<String> = examples.into_iter().map(|e| e.label).collect();
    let order: Vec<&str> = model_labels.iter().map(String::as_str).collect();
    Report { ece: Some(calibration_error(&gold, &decided, &confidence, ECE_BINS)), ..score(name, &gold, &decided, &order) }
}

/// Expected calibration error: over equal-width confidence bins, the share of decisions
/// in the bin times the gap between their accuracy and their mean confidence.
pub fn calibration_error(gold: &[String], decided: &[String], confidence: &[f64], bins: usize) -> f64 {
    let mut sums = vec![(0usize, 0usize, 0.0f64); bins];
    for ((g, d), c) in gold.iter().zip(decided).zip(confidence) {
        let bin = ((c * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        sums[bin].0 += 1;
        sums[bin].1 += usize::from(g == d);
        sums[bin].2 += c;
    }
    let n = gold.len().max(1) as f64;
    sums.iter().filter(|(k, _, _)| *k > 0).map(|&(_, right, c)| (right as f64 - c).abs() / n).sum()
}

/// Scores decisions against gold labels. Classes are the gold labels seen, in `order`
/// where listed there; macro-F1 averages over the gold classes.
pub fn score(name: &str, gold: &[String], predicted: &[String], order: &[&str]) -> Report {
    let mut labels: Vec<String> = order.iter().filter(|l| gold.iter().any(|g| g == *l)).map(|l| l.to_string()).collect();
    for g in gold.iter().chain(predicted) {
        if !labels.contains(g) {
            labels.push(g.clone());
        }
    }
    let at = |l: &String| labels.iter().position(|x| x == l).expect("every label was collected above. This is a bug.");
    let mut confusion = vec![vec![0usize; labels.len()]; labels.len()];
    for (g, p) in gold.iter().zip(predicted) {
        confusion[at(g)][at(p)] += 1;
    }
    let correct: usize = (0..labels.len()).map(|i| confusion[i][i]).sum();
    let gold_classes: Vec<usize> = (0..labels.len()).filter(|&i| confusion[i].iter().sum::<usize>() > 0).collect();
    let f1s: Vec<f64> = gold_classes
        .iter()
        .map(|&i| {
            let tp = confusion[i][i] as f64;
            let predicted_i: usize = confusion.iter().map(|row| row[i]).sum();
            let gold_i: usize = confusion[i].iter().sum();
            if tp == 0.0 { 0.0 } else { 2.0 * tp / (predicted_i as f64 + gold_i as f64) }
        })
        .collect();
    Report {
        name: name.to_string(),
        examples: gold.len(),
        accuracy: if gold.is_empty() { 0.0 } else { correct as f64 / gold.len() as f64 },
        macro_f1: if f1s.is_empty() { 0.0 } else { f1s.iter().sum::<f64>() / f1s.len() as f64 },
        labels,
        confusion,
        ece: None,
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} examples, accuracy {:.4}, macro-F1 {:.4}", self.name, self.examples, self.accuracy, self.macro_f1)?;
        match self.ece {
            Some(ece) => writeln!(f, ", ECE {ece:.4}")?,
            None => writeln!(f)?,
        }
        write!(f, "  {:>12}", "gold \\ pred")?;
        for l in &self.labels {
            write!(f, " {l:>9}")?;
        }
        writeln!(f)?;
        for (l, row) in self.labels.iter().zip(&self.confusion) {
            write!(f, "  {l:>12}")?;
            for n in row {
                write!(f, " {n:>9}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn scores_a_known_confusion() {
        let gold = s(&["POSITIVE", "POSITIVE", "NEGATIVE", "NEGATIVE", "NEUTRAL"]);
        let pred = s(&["POSITIVE", "NEGATIVE", "NEGATIVE", "NEGATIVE", "POSITIVE"]);
        let r = score("t", &gold, &pred, &["NEGATIVE", "NEUTRAL", "POSITIVE"]);
        assert_eq!(r.labels, s(&["NEGATIVE", "NEUTRAL", "POSITIVE"]));
        assert_eq!(r.confusion, vec![vec![2, 0, 0], vec![0, 0, 1], vec![1, 0, 1]]);
        assert!((r.accuracy - 0.6).abs() < 1e-12);
        // F1: NEGATIVE 2·2/(3+2)=0.8, NEUTRAL 0, POSITIVE 2·1/(2+2)=0.5
        assert!((r.macro_f1 - 1.3 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn calibration_error_is_the_weighted_gap_between_confidence_and_accuracy() {
        let gold = s(&["A", "A", "A", "A"]);
        // Two at 0.95 both right (gap 0.05), two at 0.55 of which one right (gap 0.05).
        let decided = s(&["A", "A", "A", "B"]);
        let ece = calibration_error(&gold, &decided, &[0.95, 0.95, 0.55, 0.55], 10);
        assert!((ece - 0.05).abs() < 1e-12, "{ece}");
        // Sure and always wrong is as bad as it gets; a confidence of exactly 1 lands in the last bin.
        assert!((calibration_error(&gold[..2], &s(&["B", "B"]), &[1.0, 1.0], 10) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn binary_data_judges_positive_against_negative_only() {
        let labels = s(&["NEGATIVE", "NEUTRAL", "POSITIVE"]);
        let p = |scores: [f32; 3]| Prediction {
            label: "NEUTRAL".into(),
            score: scores[1],
            scores: scores.to_vec(),
            tokens: 3,
            truncated: false,
            inference_time: Duration::ZERO,
        };
        let examples = vec![Example { text: "a".into(), label: POSITIVE.into() }, Example { text: "b".into(), label: NEGATIVE.into() }];
        let preds = vec![p([0.1, 0.6, 0.3]), p([0.3, 0.6, 0.1])];
        assert_eq!(decisions(&examples, &preds, &labels), s(&["POSITIVE", "NEGATIVE"]));
        let sure = confidences(&examples, &preds, &labels);
        assert!((sure[0] - 0.75).abs() < 1e-6 && (sure[1] - 0.75).abs() < 1e-6, "{sure:?}");
        let three = vec![Example { text: "c".into(), label: "NEUTRAL".into() }];
        assert_eq!(decisions(&three, &preds[..1], &labels), s(&["NEUTRAL"]));
        assert!((confidences(&three, &preds[..1], &labels)[0] - 0.6).abs() < 1e-6);
    }
}
