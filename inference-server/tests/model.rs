//! The model runtime on real ONNX files: the tiny generated models for every layout, and
//! the real default model for its labels.

mod common;

use common::{builtin_dir, load, test_model_dir};
use inference_server::batching::PassLimits;
use inference_server::data::{self, Split};
use inference_server::eval;
use inference_server::model::files::ModelFiles;
use inference_server::model::head::LinearHead;
use ndarray::Array2;

#[test]
fn bert_with_token_type_ids_gives_softmax_scores_in_order() {
    let model = load(&test_model_dir("tiny-bert"));
    assert_eq!(model.labels(), ["NEGATIVE", "POSITIVE"]);
    let mut c = model.classifier().unwrap();
    let texts = ["short", "a somewhat longer sentence with more tokens in it", "short"];
    let out = c.predict(&texts, PassLimits::default()).unwrap();
    assert_eq!(out.len(), 3);
    for p in &out {
        assert!((p.scores.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert_eq!(p.score, p.scores.iter().copied().fold(f32::MIN, f32::max));
        assert!(model.labels().contains(&p.label));
    }
    assert_eq!(out[0].scores, out[2].scores, "the same text scores the same wherever it sits");
    assert_eq!(out[0].tokens, 3); // [CLS] short [SEP]
    assert_ne!(out[0].scores, out[1].scores);
}

#[test]
fn padding_never_changes_a_texts_scores() {
    let model = load(&test_model_dir("tiny-bert"));
    let mut c = model.classifier().unwrap();
    let alone = c.predict(&["fine"], PassLimits::default()).unwrap();
    let padded = c
        .predict(&["fine", "a much longer text that forces padding of the first one"], PassLimits { max_texts: 64, max_tokens: 1 << 20 })
        .unwrap();
    for (a, b) in alone[0].scores.iter().zip(&padded[0].scores) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

#[test]
fn distilbert_without_token_types_uses_sigmoid_for_multi_label() {
    let model = load(&test_model_dir("tiny-distilbert"));
    assert_eq!(model.labels(), ["anger", "joy", "surprise"]);
    let out = model.classifier().unwrap().predict(&["what a day", "oh no"], PassLimits::default()).unwrap();
    for p in &out {
        assert_eq!(p.scores.len(), 3);
        assert!(p.scores.iter().all(|s| (0.0..=1.0).contains(s)));
        assert!((p.scores.iter().sum::<f32>() - 1.0).abs() > 1e-3, "sigmoid scores do not sum to one: {:?}", p.scores);
    }
}

#[test]
fn over_long_texts_are_truncated_and_flagged() {
    let model = load(&test_model_dir("tiny-bert"));
    assert_eq!(model.max_length(), 32);
    let long = "word ".repeat(100);
    let out = model.classifier().unwrap().predict(&[long.as_str(), "short"], PassLimits::default()).unwrap();
    assert!(out[0].truncated);
    assert_eq!(out[0].tokens, 32);
    assert!(!out[1].truncated);
}

#[test]
fn encoder_with_a_safetensors_head_loads_and_uses_the_heads_labels() {
    let src = test_model_dir("tiny-encoder");
    let dir = std::env::temp_dir().join(format!("ks-encoder-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "model.onnx"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    assert!(ModelFiles::open(&dir).is_err(), "an encoder without a head has no labels");
    let weight = Array2::from_shape_fn((2, 8), |(r, c)| if r == 0 { c as f32 } else { -(c as f32) });
    LinearHead { labels: vec!["LOW".into(), "HIGH".into()], weight, bias: ndarray::arr1(&[0.0, 0.1]) }
        .save(&dir.join("head.safetensors"))
        .unwrap();
    let model = load(&dir);
    assert_eq!(model.labels(), ["LOW", "HIGH"]);
    let out = model.classifier().unwrap().predict(&["hello there"], PassLimits::default()).unwrap();
    assert!((out[0].scores.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_directory_without_a_model_says_what_is_missing() {
    let dir = std::env::temp_dir().join(format!("ks-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = ModelFiles::open(&dir).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");
    std::fs::write(dir.join("config.json"), r#"{"id2label":{"0":"A"}}"#).unwrap();
    std::fs::copy(test_model_dir("tiny-bert").join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let err = ModelFiles::open(&dir).unwrap_err().to_string();
    assert!(err.contains("no .onnx file"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_default_model_reads_the_briefs_three_texts() {
    let model = load(&builtin_dir());
    assert_eq!(model.labels(), ["NEGATIVE", "NEUTRAL", "POSITIVE"]);
    let texts = ["I love this product! It is amazing.", "This is terrible and disappointing.", "It is okay, nothing special."];
    let out = model.classifier().unwrap().predict(&texts, PassLimits::default()).unwrap();
    let labels: Vec<&str> = out.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(labels, ["POSITIVE", "NEGATIVE", "NEUTRAL"]);
    assert!(out[0].score > 0.8 && out[1].score > 0.8, "{out:?}");
}

/// The default model's accuracy and calibration on labelled sentences.
fn judge(model: &inference_server::model::Model, examples: Vec<data::Example>) -> eval::Report {
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let predictions = model.classifier().unwrap().predict(&texts, PassLimits::default()).unwrap();
    eval::judge("", examples, &predictions, model.labels())
}

#[test]
fn the_default_model_holds_its_accuracy_floors() {
    // docs/MODELS.md records UCI 0.924 and Hutto held-out 0.758 (ECE 0.015) for the
    // fine-tuned model; the floors leave room for a rebuild on another CPU.
    let model = load(&builtin_dir());
    let mut accuracies = Vec::new();
    for set in ["amazon", "imdb", "yelp"] {
        let report = judge(&model, data::load(&common::assets().join(format!("data/uci/{set}.json")), Split::All).unwrap());
        assert_eq!(report.examples, 1000, "{set}");
        accuracies.push(report.accuracy);
    }
    let mean = accuracies.iter().sum::<f64>() / 3.0;
    assert!(mean >= 0.91, "mean UCI accuracy {mean:.4} ({accuracies:?})");

    // Hutto's held-out sentences, the four files as one set: 3-class, and calibrated.
    let mut hutto = Vec::new();
    for file in ["amazonReviewSnippets", "movieReviewSnippets", "nytEditorialSnippets", "tweets"] {
        hutto.extend(data::load(&common::assets().join(format!("data/hutto/{file}_GroundTruth.txt")), Split::Heldout).unwrap());
    }
    let report = judge(&model, hutto);
    assert_eq!(report.labels.len(), 3, "{report}");
    assert!(report.accuracy >= 0.74, "Hutto held-out 3-class accuracy: {report}");
    assert!(report.ece.unwrap() <= 0.04, "Hutto held-out calibration error: are the scores still probabilities? {report}");
}

/// The UCI sentences, 3,000 of them.
fn uci_texts() -> Vec<String> {
    let mut texts = Vec::new();
    for set in ["amazon", "imdb", "yelp"] {
        texts.extend(data::load(&common::assets().join(format!("data/uci/{set}.json")), Split::All).unwrap().into_iter().map(|e| e.text));
    }
    texts
}

/// Predictions of the model in `dir` on `texts`.
fn predict_all(dir: &std::path::Path, texts: &[String]) -> Vec<inference_server::model::Prediction> {
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    load(dir).classifier().unwrap().predict(&texts, PassLimits::default()).unwrap()
}

/// Share of equal labels, share of equal POSITIVE-vs-NEGATIVE decisions (the larger of
/// those two scores, labels in `NEGATIVE, NEUTRAL, POSITIVE` order), and the largest
/// difference of any score.
fn agreement(a: &[inference_server::model::Prediction], b: &[inference_server::model::Prediction]) -> (f64, f64, f32) {
    let share = |n: usize| n as f64 / a.len() as f64;
    let same = share(a.iter().zip(b).filter(|(a, b)| a.label == b.label).count());
    let positive = |p: &inference_server::model::Prediction| p.scores[2] > p.scores[0];
    let decided = share(a.iter().zip(b).filter(|(a, b)| positive(a) == positive(b)).count());
    let worst = a.iter().zip(b).flat_map(|(a, b)| a.scores.iter().zip(&b.scores).map(|(x, y)| (x - y).abs())).fold(0f32, f32::max);
    (same, decided, worst)
}

#[test]
fn the_int8_encoder_stays_within_its_tolerance_of_the_fp32_model() {
    // docs/MODELS.md: the int8 graph against the same fused graph in fp32 (the model's
    // own outputs), on the 3,000 UCI sentences.
    let texts = uci_texts();
    assert_eq!(texts.len(), 3000);
    let exact = predict_all(&common::assets().join("models/reference/minilm-fp32"), &texts);
    let (agree, decided, worst) = agreement(&predict_all(&builtin_dir(), &texts), &exact);
    eprintln!("labels equal to fp32's: {agree:.4}; decisions {decided:.4}; largest score difference {worst:.3}");
    assert!(agree >= 0.975, "labels agree with the fp32 model on {agree:.4} of the UCI sentences");
    // 0.9953 measured (the issue's 99.5%); held at 0.99, as the fine-tuned weights may
    // differ a little when setup.sh rebuilds them on another CPU.
    assert!(decided >= 0.99, "POSITIVE-vs-NEGATIVE decisions agree with the fp32 model on {decided:.4}");
    assert!(worst <= 0.20, "a score moved by {worst:.3} from the fp32 model's");
}
