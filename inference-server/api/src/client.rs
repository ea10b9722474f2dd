//! The one client of `POST /v1/predict`: [`Predict`] ("predict these texts on that
//! endpoint"), its HTTP implementation, and the round-robin choice of an endpoint. The
//! operator's engine, the facade's synchronous predict and the bench all use it; the
//! engine's tests put an in-memory fake behind the same trait.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::{ErrorBody, PredictRequest, PredictResponse, PredictionResult};

/// Why a predict call did not give one result per text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PredictError {
    /// Not reached (no connection): the endpoint, not the texts, is at fault.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// Sent, and then no whole answer (connection reset, the server gone, a timeout): the
    /// texts may have crashed or hung the server, so they share the blame.
    #[error("lost: {0}")]
    Lost(String),
    /// 429: the endpoint shed load; try again after `retry_after`. Not the texts' fault.
    #[error("busy (429)")]
    Busy { retry_after: Option<Duration> },
    /// 500, 502, 503 or 504: the endpoint is failing for now (not ready, restarting,
    /// timed out). Worth retrying, within a budget, and not by itself the texts' fault.
    #[error("{message} ({status})")]
    Transient { status: u16, message: String, retry_after: Option<Duration> },
    /// Any other error answer (4xx): a text it cannot take, named by `field` when the
    /// server says which.
    #[error("{message} ({status})")]
    Rejected { status: u16, message: String, field: Option<String> },
    /// A 2xx answer that is not one result per text.
    #[error("bad answer: {0}")]
    BadAnswer(String),
}

/// Predicts `texts` on the inference server at `endpoint` (`http://host:port`).
#[async_trait::async_trait]
pub trait Predict: Send + Sync {
    async fn predict(&self, endpoint: &str, texts: &[String]) -> Result<Vec<PredictionResult>, PredictError>;
}

/// [`Predict`] over HTTP.
#[derive(Clone)]
pub struct HttpPredictor {
    http: reqwest::Client,
}

impl HttpPredictor {
    /// A client whose requests give up after `timeout`. It resolves `*.localhost` to
    /// loopback (RFC 6761), as the local stack registers its endpoints.
    pub fn new(timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .hickory_dns(true)
            .connect_timeout(Duration::from_secs(5).min(timeout))
            .timeout(timeout)
            .build()
            .expect("the HTTP client builds. This is a bug.");
        HttpPredictor { http }
    }
}

#[async_trait::async_trait]
impl Predict for HttpPredictor {
    async fn predict(&self, endpoint: &str, texts: &[String]) -> Result<Vec<PredictionResult>, PredictError> {
        let body = PredictRequest { texts: texts.to_vec(), options: Default::default() };
        let resp = self
            .http
            .post(format!("{endpoint}/v1/predict"))
            .json(&body)
            .send()
            .await
            .map_err(|e| if e.is_connect() { PredictError::Unreachable(e.to_string()) } else { PredictError::Lost(e.to_string()) })?;
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).map(Duration::from_secs);
            let (message, field) = match resp.json::<ErrorBody>().await {
                Ok(b) => (b.message, b.field),
                Err(_) => (format!("the inference server answered {status}"), None),
            };
            return Err(match status {
                429 => PredictError::Busy { retry_after },
                500 | 502 | 503 | 504 => PredictError::Transient { status, message, retry_after },
                _ => PredictError::Rejected { status, message, field },
            });
        }
        let results = resp.json::<PredictResponse>().await.map_err(|e| PredictError::Lost(format!("reading the answer: {e}")))?.results;
        if results.len() != texts.len() {
            return Err(PredictError::BadAnswer(format!("{} results for {} texts", results.len(), texts.len())));
        }
        Ok(results)
    }
}

/// Takes endpoints in turn: each call starts one further along the list.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// Every endpoint once, starting from the next in turn.
    pub fn order<'a>(&self, endpoints: &'a [String]) -> impl Iterator<Item = &'a String> + 'a {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        (0..endpoints.len()).map(move |i| &endpoints[(first + i) % endpoints.len()])
    }

    /// Predicts on the next endpoint in turn, moving on to the following one while an
    /// endpoint cannot be reached. Any answer, good or bad, ends the round.
    pub async fn predict(
        &self,
        client: &dyn Predict,
        endpoints: &[String],
        texts: &[String],
    ) -> Result<Vec<PredictionResult>, PredictError> {
        let mut last = PredictError::Unreachable("no inference endpoint is ready".into());
        for endpoint in self.order(endpoints) {
            match client.predict(endpoint, texts).await {
                Err(PredictError::Unreachable(why)) => last = PredictError::Unreachable(format!("{endpoint}: {why}")),
                other => return other,
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::Json;
    use axum::http::StatusCode;
    use axum::routing::post;

    use super::*;

    fn result(text: &str) -> PredictionResult {
        PredictionResult {
            label: if text.contains("good") { "POSITIVE" } else { "NEGATIVE" }.into(),
            score: 0.9,
            inference_time_ms: 1.0,
            model_name: "m".into(),
            text_length: text.len(),
            backend: "test".into(),
            cached: false,
            scores: BTreeMap::new(),
            tokens: 3,
            truncated: false,
        }
    }

    /// A real HTTP server on port 0 answering as told by the first text.
    async fn server() -> String {
        let app = axum::Router::new().route(
            "/v1/predict",
            post(|Json(req): Json<PredictRequest>| async move {
                let first = req.texts[0].clone();
                let err = |code: StatusCode| (code, Json(serde_json::json!({"error": "x", "message": format!("said {first}")})));
                match first.as_str() {
                    "busy" => Err(err(StatusCode::TOO_MANY_REQUESTS)),
                    "unavailable" => Err(err(StatusCode::SERVICE_UNAVAILABLE)),
                    "broken" => Err(err(StatusCode::INTERNAL_SERVER_ERROR)),
                    "slow" => Err(err(StatusCode::GATEWAY_TIMEOUT)),
                    "poison" => Err(err(StatusCode::UNPROCESSABLE_ENTITY)),
                    "short" => Ok(Json(serde_json::json!({"results": []}))),
                    _ => {
                        Ok(Json(serde_json::to_value(PredictResponse { results: req.texts.iter().map(|t| result(t)).collect() }).unwrap()))
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    #[tokio::test]
    async fn answers_are_classified() {
        let url = server().await;
        let c = HttpPredictor::new(Duration::from_secs(5));
        let texts = |t: &str| vec![t.to_string(), "good".to_string()];
        let ok = c.predict(&url, &texts("bad")).await.unwrap();
        assert_eq!(ok.iter().map(|r| r.label.as_str()).collect::<Vec<_>>(), ["NEGATIVE", "POSITIVE"]);
        assert!(matches!(c.predict(&url, &texts("busy")).await, Err(PredictError::Busy { .. })));
        for (text, status) in [("unavailable", 503), ("broken", 500), ("slow", 504)] {
            let got = c.predict(&url, &texts(text)).await;
            assert_eq!(got, Err(PredictError::Transient { status, message: format!("said {text}"), retry_after: None }));
        }
        let poison = Err(PredictError::Rejected { status: 422, message: "said poison".into(), field: None });
        assert_eq!(c.predict(&url, &texts("poison")).await, poison);
        assert!(matches!(c.predict(&url, &texts("short")).await, Err(PredictError::BadAnswer(_))));
        // Nothing listens on port 1.
        assert!(matches!(c.predict("http://127.0.0.1:1", &texts("bad")).await, Err(PredictError::Unreachable(_))));
    }

    /// A server that takes the request and dies before answering: the texts share the
    /// blame (`Lost`), unlike a server that was never reached.
    #[tokio::test]
    async fn a_connection_lost_after_sending_is_lost_not_unreachable() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            drop(conn);
        });
        let got = HttpPredictor::new(Duration::from_secs(5)).predict(&url, &["crash".to_string()]).await;
        assert!(matches!(got, Err(PredictError::Lost(_))), "{got:?}");
    }

    #[tokio::test]
    async fn round_robin_takes_turns_and_skips_unreachable_endpoints() {
        let rr = RoundRobin::default();
        let eps: Vec<String> = ["a", "b", "c"].map(String::from).into();
        let firsts: Vec<&String> = (0..4).map(|_| rr.order(&eps).next().unwrap()).collect();
        assert_eq!(firsts, ["a", "b", "c", "a"]);
        assert_eq!(rr.order(&eps).count(), 3);

        let url = server().await;
        let c = HttpPredictor::new(Duration::from_secs(5));
        let eps = vec!["http://127.0.0.1:1".to_string(), url];
        for _ in 0..2 {
            assert_eq!(rr.predict(&c, &eps, &["good".to_string()]).await.unwrap().len(), 1);
        }
        assert!(matches!(rr.predict(&c, &[], &["good".to_string()]).await, Err(PredictError::Unreachable(_))));
    }
}
