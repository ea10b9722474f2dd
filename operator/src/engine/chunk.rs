//! One attempt at one chunk: answer what the result cache can, ask the endpoint for the
//! rest, then commit the chunk's part, and only then report it done. A failure comes
//! back as an [`Outcome`] for the engine to decide on.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use inference_api::PredictionResult;
use inference_api::client::{Predict, PredictError};
use kubesentiment_core::status::Tally;
use kubesentiment_core::store::{Part, ResultLine};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Command, ResultSink, TextSource};
use crate::metrics::Metrics;
use crate::source::SourceError;

/// How one chunk's attempt ended.
#[derive(Debug)]
pub enum Outcome {
    /// Results (or give-up errors) are in the store.
    Committed(Tally),
    /// The endpoint could not be reached.
    Unreachable(String),
    /// The request was sent and its answer lost (reset, crash, timeout).
    Lost(String),
    /// The endpoint shed load (429), asking to be retried after this long.
    Busy(Option<Duration>),
    /// The endpoint failed for now (500/502/503/504).
    Transient(String, Option<Duration>),
    /// The endpoint answered with an error: possibly a text it cannot take.
    Rejected(String),
    /// Results could not be stored.
    Store(String),
    /// The chunk's texts could not be read.
    Source(SourceError),
    /// The batch cannot succeed on this pool.
    Fatal(String),
    /// The batch stopped (cancel, expiry, delete, shutdown) before the part was committed.
    Cancelled,
}

/// What every chunk task shares.
pub struct Shared {
    pub predictor: Arc<dyn Predict>,
    pub cache: moka::sync::Cache<String, PredictionResult>,
    /// The model name the pool last answered with: the cache's key space.
    pub served_model: RwLock<Option<String>>,
    pub metrics: Metrics,
}

/// One chunk of a job, sent to one endpoint.
pub struct Attempt {
    pub url: String,
    pub range: Range<usize>,
    pub texts: Arc<dyn TextSource>,
    pub sink: Arc<dyn ResultSink>,
    /// The model the batch requires, if any.
    pub model: Option<String>,
    /// Cancelled when the batch stops; nothing is committed after that.
    pub stop: CancellationToken,
}

fn cache_key(model: &str, text: &str) -> String {
    format!("{model}\u{0}{text}")
}

/// Runs `a`. Returns its outcome and whether the endpoint answered (its slot then was
/// already freed with [`Command::Answered`]).
pub async fn run(shared: &Shared, tx: &mpsc::Sender<Command>, a: &Attempt) -> (Outcome, bool) {
    let began = Instant::now();
    let m = &shared.metrics;
    let items = tokio::select! {
        biased;
        _ = a.stop.cancelled() => return (Outcome::Cancelled, false),
        items = a.texts.read(a.range.clone()) => items,
    };
    let items = match items {
        Ok(items) => items,
        Err(e) => return (Outcome::Source(e), false),
    };
    let served = shared.served_model.read().expect("the lock is never poisoned. This is a bug.").clone();
    // Each distinct text once: from the cache, or in the request.
    let mut known: HashMap<&str, (PredictionResult, bool)> = HashMap::new();
    let mut ask: Vec<&str> = Vec::new();
    for item in &items {
        let text = item.text.as_str();
        if known.contains_key(text) || ask.contains(&text) {
            continue;
        }
        match served.as_deref().and_then(|s| shared.cache.get(&cache_key(s, text))) {
            Some(hit) => {
                known.insert(text, (hit, true));
            }
            None => ask.push(text),
        }
    }
    m.cache_hits.inc_by((a.range.len() - ask.len()) as u64);
    m.cache_misses.inc_by(ask.len() as u64);
    let (texts, elapsed) = if ask.is_empty() {
        // All from the cache: the endpoint was never asked.
        (0, Duration::ZERO)
    } else {
        let texts: Vec<String> = ask.iter().map(|t| t.to_string()).collect();
        let answer = tokio::select! {
            biased;
            _ = a.stop.cancelled() => return (Outcome::Cancelled, false),
            answer = shared.predictor.predict(&a.url, &texts) => answer,
        };
        let results = match answer {
            Ok(r) => r,
            Err(PredictError::Unreachable(why)) => return (Outcome::Unreachable(why), false),
            Err(PredictError::Lost(why)) => return (Outcome::Lost(why), false),
            Err(PredictError::Busy { retry_after }) => return (Outcome::Busy(retry_after), false),
            Err(PredictError::Transient { status, message, retry_after }) => {
                return (Outcome::Transient(format!("{message} ({status})"), retry_after), false);
            }
            Err(PredictError::Rejected { message, .. } | PredictError::BadAnswer(message)) => return (Outcome::Rejected(message), false),
        };
        if let Some(want) = &a.model
            && let Some(got) = results.first().map(|r| r.model_name.as_str())
            && got != want
        {
            let answered = Command::Answered { endpoint: a.url.clone(), chunk: a.range.len(), asked: ask.len(), elapsed: began.elapsed() };
            let _ = tx.send(answered).await;
            return (Outcome::Fatal(format!("the inference pool serves model {got:?}, but the batch asks for {want:?}")), true);
        }
        if let Some(first) = results.first() {
            let mut s = shared.served_model.write().expect("the lock is never poisoned. This is a bug.");
            if s.as_deref() != Some(first.model_name.as_str()) {
                *s = Some(first.model_name.clone());
            }
        }
        for (text, r) in ask.iter().zip(results) {
            shared.cache.insert(cache_key(&r.model_name, text), r.clone());
            known.insert(text, (r, false));
        }
        (ask.len(), began.elapsed())
    };
    let _ = tx.send(Command::Answered { endpoint: a.url.clone(), chunk: a.range.len(), asked: texts, elapsed }).await;
    // Later duplicates of a text inside the chunk were computed once: they are hits too.
    let mut seen = HashSet::new();
    let lines: Vec<ResultLine> = (a.range.clone().zip(&items))
        .map(|(index, item)| {
            let (r, hit) = &known[item.text.as_str()];
            let cached = *hit || !seen.insert(item.text.as_str());
            ResultLine { index, id: item.id.clone(), prediction: Some(PredictionResult { cached, ..r.clone() }), error: None }
        })
        .collect();
    (commit(a.sink.as_ref(), &a.stop, Part::new(a.range.start, lines)).await, true)
}

/// Writes a chunk's part, unless its batch has stopped; the chunk is done only if this
/// succeeds.
pub async fn commit(sink: &dyn ResultSink, stop: &CancellationToken, part: Part) -> Outcome {
    if stop.is_cancelled() {
        return Outcome::Cancelled;
    }
    match sink.commit(&part).await {
        Ok(()) => Outcome::Committed(Tally::of(&part.lines)),
        Err(e) => Outcome::Store(e.to_string()),
    }
}
