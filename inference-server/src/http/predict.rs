//! `POST /v1/predict`: decode and validate at the edge, then hand the texts to the batcher.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use inference_api::{ModelInfo, PredictRequest, PredictResponse, PredictionResult};

use super::AppState;
use super::error::ApiError;
use crate::model::Prediction;

/// Request limits enforced before anything is queued.
#[derive(Debug, Clone, clap::Args)]
pub struct RequestLimits {
    /// Most texts in one request.
    #[arg(long, env = "INFERENCE_MAX_TEXTS", default_value_t = 1000)]
    pub max_texts: usize,
    /// Longest text, in characters.
    #[arg(long, env = "INFERENCE_MAX_TEXT_LENGTH", default_value_t = 10_000)]
    pub max_text_length: usize,
    /// Largest request body, in bytes.
    #[arg(long, env = "INFERENCE_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self { max_texts: 1000, max_text_length: 10_000, max_body_bytes: 16 * 1024 * 1024 }
    }
}

/// Decodes a body, naming the JSON path of the first bad field.
pub fn decode(body: &[u8]) -> Result<PredictRequest, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::Malformed(format!("invalid JSON: {inner}"))
        } else {
            let field = if path == "." { "body".to_string() } else { path };
            ApiError::validation(field, inner.to_string())
        }
    })
}

/// Checks counts and lengths; the first fault found is reported.
pub fn validate(req: &PredictRequest, limits: &RequestLimits) -> Result<(), ApiError> {
    if req.texts.is_empty() {
        return Err(ApiError::validation("texts", "texts must hold at least one text"));
    }
    if req.texts.len() > limits.max_texts {
        return Err(ApiError::too_large(
            "texts",
            format!("{} texts exceed the maximum of {} per request", req.texts.len(), limits.max_texts),
        ));
    }
    for (i, text) in req.texts.iter().enumerate() {
        if inference_api::is_blank(text) {
            return Err(ApiError::validation(format!("texts[{i}]"), "text must not be empty"));
        }
        let chars = text.chars().count();
        if chars > limits.max_text_length {
            return Err(ApiError::too_large(
                format!("texts[{i}]"),
                format!("text has {chars} characters, over the maximum of {}", limits.max_text_length),
            ));
        }
    }
    Ok(())
}

pub async fn predict(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Result<Json<PredictResponse>, ApiError> {
    let body = body.map_err(|e| match e.status() {
        axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::too_large("body", format!("body exceeds {} bytes", state.limits.max_body_bytes))
        }
        _ => ApiError::Malformed(e.body_text()),
    })?;
    let req = decode(&body)?;
    validate(&req, &state.limits)?;
    let lengths: Vec<usize> = req.texts.iter().map(|t| t.chars().count()).collect();
    let predictions = state.infer.predict(req.texts, req.options.truncate).await?;
    let results = predictions.into_iter().zip(lengths).map(|(p, text_length)| to_wire(p, text_length, &state.info)).collect();
    Ok(Json(PredictResponse { results }))
}

/// A prediction in the brief's per-result schema.
pub fn to_wire(p: Prediction, text_length: usize, info: &ModelInfo) -> PredictionResult {
    PredictionResult {
        label: p.label,
        score: p.score,
        inference_time_ms: p.inference_time.as_secs_f64() * 1000.0,
        model_name: info.name.clone(),
        text_length,
        backend: info.backend.clone(),
        cached: false,
        scores: info.labels.iter().cloned().zip(p.scores).collect(),
        tokens: p.tokens,
        truncated: p.truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(body: &str) -> (u16, Option<String>) {
        let limits = RequestLimits { max_texts: 3, max_text_length: 10, max_body_bytes: 1 << 20 };
        let err = decode(body.as_bytes()).and_then(|r| validate(&r, &limits)).unwrap_err();
        (err.status().0.as_u16(), err.field().map(String::from))
    }

    #[test]
    fn every_bad_body_names_its_field() {
        let cases: &[(&str, u16, Option<&str>)] = &[
            ("{", 400, None),
            ("not json", 400, None),
            ("[]", 422, Some("body")),
            ("{}", 422, Some("body")),
            (r#"{"texts": "one"}"#, 422, Some("texts")),
            (r#"{"texts": []}"#, 422, Some("texts")),
            (r#"{"texts": ["ok", 5]}"#, 422, Some("texts[1]")),
            (r#"{"texts": ["ok", null]}"#, 422, Some("texts[1]")),
            (r#"{"texts": ["ok", "  "]}"#, 422, Some("texts[1]")),
            (r#"{"texts": ["a", "b", "c", "d"]}"#, 413, Some("texts")),
            (r#"{"texts": ["a", "this is far too long"]}"#, 413, Some("texts[1]")),
            (r#"{"texts": ["a"], "options": {"truncate": "yes"}}"#, 422, Some("options.truncate")),
            (r#"{"texts": ["a"], "extra": 1}"#, 422, Some("extra")),
        ];
        for (body, status, field) in cases {
            assert_eq!(fault(body), (*status, field.map(String::from)), "{body}");
        }
    }

    proptest::proptest! {
        /// No body, however mangled, panics or is answered outside 400/413/422.
        #[test]
        fn decoding_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            if let Err(e) = decode(&body).and_then(|r| validate(&r, &RequestLimits::default())) {
                proptest::prop_assert!(matches!(e.status().0.as_u16(), 400 | 413 | 422));
            }
        }

        /// Near-miss JSON (right shape, arbitrary strings and nesting) is decoded or named.
        #[test]
        fn near_miss_bodies_name_a_field(texts in proptest::collection::vec(".{0,20}", 0..5), truncate in proptest::option::of(proptest::bool::ANY)) {
            let body = serde_json::json!({ "texts": texts, "options": { "truncate": truncate } }).to_string();
            match decode(body.as_bytes()).and_then(|r| validate(&r, &RequestLimits::default()).map(|()| r)) {
                Ok(req) => proptest::prop_assert!(req.texts.iter().all(|t| !inference_api::is_blank(t))),
                Err(e) => proptest::prop_assert!(e.field().is_some(), "{e}"),
            }
        }
    }

    #[test]
    fn a_good_body_passes() {
        let req = decode(br#"{"texts": ["fine", "caf\u00e9"], "options": {"truncate": false}}"#).unwrap();
        validate(&req, &RequestLimits::default()).unwrap();
        assert!(!req.options.truncate);
    }
}
