//! `eval`: accuracy, macro-F1 and a confusion matrix of a model on labelled sentences.
//! On data labelled only POSITIVE/NEGATIVE the model's decision is the larger of its
//! POSITIVE and NEGATIVE scores, so a 3-class model is judged on the binary task.

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
}

/// The label each prediction stands for on this data set.
pub fn decisions(examples: &[Example], predictions: &[Prediction], model_labels: &[String]) -> Vec<String> {
    let binary = examples.iter().all(|e| e.label == POSITIVE || e.label == NEGATIVE);
    let index = |name: &str| model_labels.iter().position(|l| l.eq_ignore_ascii_case(name));
    match (binary, index(POSITIVE), index(NEGATIVE)) {
        (true, Some(pos), Some(neg)) => {
            predictions.iter().map(|p| if p.scores[pos] >= p.scores[neg] { POSITIVE } else { NEGATIVE }.to_string()).collect()
        }
        _ => predictions.iter().map(|p| p.label.to_uppercase()).collect(),
    }
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
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}: {} examples, accuracy {:.4}, macro-F1 {:.4}", self.name, self.examples, self.accuracy, self.macro_f1)?;
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
        let three = vec![Example { text: "c".into(), label: "NEUTRAL".into() }];
        assert_eq!(decisions(&three, &preds[..1], &labels), s(&["NEUTRAL"]));
    }
}
