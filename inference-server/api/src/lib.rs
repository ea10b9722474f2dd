//! Wire types of the `inference-server` HTTP API.
//!
//! This crate exists so that clients (the operator, the benchmark tool) can speak to
//! inference pods without compiling ONNX Runtime or tokenizers. It holds only serde
//! types; the server and its clients agree on the JSON by sharing them.
//!
//! # Routes
//! - `POST /v1/predict`: [`PredictRequest`] → [`PredictResponse`]
//! - `GET /v1/model`: [`ModelInfo`]
//! - `GET /health/live`, `GET /health/ready`, `GET /metrics`
//!
//! Every error answers with [`ErrorBody`].
//!
//! Behind the `client` feature, [`client`] is the one client of `POST /v1/predict`.

#[cfg(feature = "client")]
pub mod client;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Whether a text holds nothing to classify: every character is white space as
/// ECMA-262 defines it, which is what `\S` means in the patterns of the JSON Schemas
/// and OpenAPI documents that clients validate against. Every program refuses a blank
/// text by this one rule, so a text the documents allow is never refused further on.
pub fn is_blank(text: &str) -> bool {
    text.chars().all(|c| {
        matches!(c, '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'..='\u{200a}')
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}' | '\u{feff}')
    })
}

/// The body of `POST /v1/predict`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    pub texts: Vec<String>,
    #[serde(default)]
    pub options: PredictOptions,
}

/// Per-request options of `POST /v1/predict`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictOptions {
    /// Cut texts longer than the model's maximum length (and flag them `truncated`).
    /// When false, such a text is rejected with 422 instead.
    #[serde(default = "default_true")]
    pub truncate: bool,
}

impl Default for PredictOptions {
    fn default() -> Self {
        Self { truncate: true }
    }
}

fn default_true() -> bool {
    true
}

/// The answer of `POST /v1/predict`: one result per input text, in input order.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictResponse {
    pub results: Vec<PredictionResult>,
}

/// One text's prediction, in the feature brief's per-result schema plus
/// `scores`, `tokens` and `truncated`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionResult {
    pub label: String,
    pub score: f32,
    /// Wall time of the forward pass that computed this text, in milliseconds.
    pub inference_time_ms: f64,
    pub model_name: String,
    /// Length of the input text in characters.
    pub text_length: usize,
    pub backend: String,
    pub cached: bool,
    /// Every label's score.
    pub scores: BTreeMap<String, f32>,
    /// Tokens fed to the model, special tokens included.
    pub tokens: usize,
    pub truncated: bool,
}

/// The answer of `GET /v1/model`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub labels: Vec<String>,
    pub max_length: usize,
    pub revision: Option<String>,
    pub backend: String,
}

/// The one error shape of every route.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable, machine-readable code such as `validation_error` or `queue_full`.
    pub error: String,
    pub message: String,
    /// The request field at fault, as a path such as `texts[3]`, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Sums of each metric family in a Prometheus text page, over all its label sets
/// (`inference_batch_size_sum` → the texts inferred). For reading servers' `/metrics`
/// in benchmarks and tests.
pub fn metric_sums(page: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let name = series.split('{').next().unwrap_or(series);
        if let Ok(v) = value.parse::<f64>() {
            *sums.entry(name.to_string()).or_default() += v;
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    #[test]
    fn blank_is_ecma_white_space() {
        for blank in ["", " ", "\t\n\r", "\u{a0}\u{3000}", "\u{feff}", "\u{2028}"] {
            assert!(super::is_blank(blank), "{blank:?}");
        }
        // U+0085 and U+001C–U+001F are white space to Rust or Python, not to ECMA-262.
        for text in ["a", " a ", "\u{85}", "\u{1d}", "\u{0}"] {
            assert!(!super::is_blank(text), "{text:?}");
        }
    }

    use super::*;

    #[test]
    fn metric_families_are_summed_over_labels() {
        let page = "# HELP x y\n# TYPE a counter\na{k=\"1\"} 2\na{k=\"2\"} 3.5\nb 7\nc{q=\"a b\"} 1\nbroken\n";
        let sums = metric_sums(page);
        assert_eq!(sums.get("a"), Some(&5.5));
        assert_eq!(sums.get("b"), Some(&7.0));
        assert_eq!(sums.get("c"), Some(&1.0));
        assert_eq!(sums.len(), 3);
    }
}
