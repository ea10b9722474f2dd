//! The command line, run as a user runs it: the built binary with no extra flags.

mod common;

use std::process::Command;

use common::{assets, test_model_dir};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_inference-server"));
    c.env("KUBESENTIMENT_HOME", assets()).env_remove("ORT_DYLIB_PATH").env_remove("INFERENCE_MODEL");
    c
}

#[test]
fn predict_reads_the_briefs_texts_with_the_default_model() {
    let out = bin()
        .args(["predict", "I love this product! It is amazing.", "This is terrible and disappointing.", "It is okay, nothing special."])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let labels: Vec<&str> = lines.iter().map(|l| l["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["POSITIVE", "NEGATIVE", "NEUTRAL"]);
    assert_eq!(lines[0]["model_name"], "minilm-sentiment");
    assert_eq!(lines[2]["text"], "It is okay, nothing special.");
}

#[test]
fn a_missing_model_fails_with_one_clear_line() {
    let out = bin().args(["predict", "--model", "./no/such/model", "text"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model not found") && err.contains("no/such/model"), "{err}");
}

#[test]
fn eval_scores_labelled_jsonl() {
    let dir = std::env::temp_dir().join(format!("ks-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("d.jsonl");
    std::fs::write(&data, "{\"text\":\"I love it, wonderful\",\"label\":\"POSITIVE\"}\n{\"text\":\"awful, I hate it\",\"label\":0}\n")
        .unwrap();
    let json = dir.join("report.json");
    let out = bin().args(["eval", "--data"]).arg(&data).arg("--json").arg(&json).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report[0]["examples"], 2);
    assert_eq!(report[0]["accuracy"], 1.0);
    assert_eq!(report[0]["labels"], serde_json::json!(["NEGATIVE", "POSITIVE"]));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_reports_bare_and_served_rates() {
    let dir = std::env::temp_dir().join(format!("ks-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let out = bin()
        .args(["bench", "--batch-sizes", "1,4", "--tokens", "8", "--seconds", "0.2", "--rounds", "1", "--concurrency", "4", "--model"])
        .arg(test_model_dir("tiny-bert"))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let points = report["points"].as_array().unwrap();
    let whats: Vec<&str> = points.iter().map(|p| p["what"].as_str().unwrap()).collect();
    assert_eq!(whats, ["bare", "bare", "bare-sentences"]);
    assert!(points.iter().all(|p| p["texts_per_s"].as_f64().unwrap() > 0.0));
    assert!(report["served"]["texts_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["served_over_bare"].as_f64().unwrap() > 0.0);
    std::fs::remove_dir_all(&dir).unwrap();
}
