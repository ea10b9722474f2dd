//! One home for a batch's status: counts, progress, conditions and their type names, and
//! each transition as a pure function from the old status to the new one. The operator
//! writes status only through these; the facade and the bench read it through
//! [`total_texts`], [`remaining_texts`] and [`ended_because`].

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{FailureSample, Failures, Phase, SentimentBatch, SentimentBatchStatus, Summary};
use crate::store::ResultLine;

/// Condition types.
pub const QUEUED: &str = "Queued";
pub const RUNNING: &str = "Running";
pub const COMPLETE: &str = "Complete";
pub const FAILED: &str = "Failed";
pub const SUSPENDED: &str = "Suspended";

/// Failure samples kept in a batch's status.
pub const SAMPLES: usize = 5;

/// What a batch's committed results add up to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    pub ok: usize,
    pub failed: usize,
    pub labels: BTreeMap<String, i64>,
    pub confidence_sum: f64,
    pub samples: Vec<FailureSample>,
}

impl Tally {
    pub fn add(&mut self, line: &ResultLine) {
        match (&line.prediction, &line.error) {
            (Some(p), None) => {
                self.ok += 1;
                *self.labels.entry(p.label.clone()).or_default() += 1;
                self.confidence_sum += f64::from(p.score);
            }
            (_, error) => {
                self.failed += 1;
                if self.samples.len() < SAMPLES {
                    self.samples.push(FailureSample { index: line.index as i64, error: error.clone().unwrap_or_default() });
                }
            }
        }
    }

    pub fn of<'a>(lines: impl IntoIterator<Item = &'a ResultLine>) -> Self {
        let mut t = Tally::default();
        lines.into_iter().for_each(|l| t.add(l));
        t
    }

    pub fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        for (k, v) in other.labels {
            *self.labels.entry(k).or_default() += v;
        }
        self.confidence_sum += other.confidence_sum;
        let room = SAMPLES.saturating_sub(self.samples.len());
        self.samples.extend(other.samples.into_iter().take(room));
    }

    pub fn done(&self) -> usize {
        self.ok + self.failed
    }
}

/// The counts, progress and summary of `tally` out of `total`, over `old`.
pub fn counts(old: &SentimentBatchStatus, total: usize, tally: &Tally) -> SentimentBatchStatus {
    let done = tally.done();
    let pct = if total == 0 { 100.0 } else { (done as f64 * 1000.0 / total as f64).round() / 10.0 };
    SentimentBatchStatus {
        total_texts: total as i64,
        processed_texts: done as i64,
        failed_texts: tally.failed as i64,
        progress_percentage: pct,
        progress: Some(format!("{pct:.0}%")),
        summary: Some(Summary {
            successful_predictions: tally.ok as i64,
            failed_predictions: tally.failed as i64,
            success_rate: if done == 0 { 0.0 } else { tally.ok as f64 / done as f64 },
            sentiment_distribution: tally.labels.clone(),
            average_confidence: if tally.ok == 0 { 0.0 } else { tally.confidence_sum / tally.ok as f64 },
        }),
        failures: (tally.failed > 0).then(|| Failures { count: tally.failed as i64, samples: tally.samples.clone(), location: None }),
        ..old.clone()
    }
}

/// A condition that keeps its `lastTransitionTime` while its status stays the same.
pub fn condition(batch: &SentimentBatch, type_: &str, status: bool, reason: &str, message: &str) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let old = batch.status.as_ref().map_or(&[][..], |s| &s.conditions[..]);
    let since = old.iter().find(|c| c.type_ == type_ && c.status == status).map(|c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message: message.into(),
        observed_generation: batch.metadata.generation,
        last_transition_time: since.unwrap_or(Time(Timestamp::now())),
    }
}

/// Whether the batch already has this condition with this status and reason.
pub fn has_condition(batch: &SentimentBatch, type_: &str, status: bool, reason: &str) -> bool {
    let status = if status { "True" } else { "False" };
    batch.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == type_ && c.status == status && c.reason == reason))
}

fn old(batch: &SentimentBatch) -> SentimentBatchStatus {
    batch.status.clone().unwrap_or_default()
}

/// Refused admission: Pending, `Queued=True/QueueFull`.
pub fn queue_full(batch: &SentimentBatch, message: &str) -> SentimentBatchStatus {
    SentimentBatchStatus {
        phase: Some(Phase::Pending),
        reason: Some("QueueFull".into()),
        observed_generation: batch.metadata.generation,
        conditions: vec![condition(batch, QUEUED, true, "QueueFull", message)],
        ..old(batch)
    }
}

/// Admitted and dispatching, with `counts` already applied; results go to `location`.
pub fn running(batch: &SentimentBatch, counts: SentimentBatchStatus, location: String) -> SentimentBatchStatus {
    SentimentBatchStatus {
        phase: Some(Phase::Running),
        reason: None,
        observed_generation: batch.metadata.generation,
        started_at: counts.started_at.clone().or(Some(Time(Timestamp::now()))),
        results_location: Some(location),
        conditions: vec![
            condition(batch, QUEUED, false, "Admitted", "admitted by the scheduler"),
            condition(batch, RUNNING, true, "Dispatching", "chunks are being sent to inference endpoints"),
        ],
        ..counts
    }
}

/// Admitted, but no inference pod is ready: `Running=False/WaitingForCapacity`.
pub fn waiting_for_capacity(batch: &SentimentBatch, counts: SentimentBatchStatus, location: String) -> SentimentBatchStatus {
    let mut status = running(batch, counts, location);
    status.conditions[1] = condition(
        batch,
        RUNNING,
        false,
        "WaitingForCapacity",
        "no inference pod is ready; waiting for the inference Deployment to scale up",
    );
    status
}

/// Held by `spec.suspend`, with `counts` applied: `Suspended=True`.
pub fn suspended(batch: &SentimentBatch, counts: SentimentBatchStatus) -> SentimentBatchStatus {
    let why = "spec.suspend is set; unset it to resume";
    SentimentBatchStatus {
        phase: Some(Phase::Suspended),
        reason: Some("Suspended".into()),
        observed_generation: batch.metadata.generation,
        estimated_completion_seconds: None,
        conditions: vec![
            condition(batch, QUEUED, false, "Suspended", why),
            condition(batch, RUNNING, false, "Suspended", why),
            condition(batch, SUSPENDED, true, "Suspended", why),
        ],
        ..counts
    }
}

/// A final phase, with `counts` already applied; `reason` says why in one word. As a
/// Job's: Succeeded sets `Complete=True`, any other end `Failed=True` with reason
/// `Failed`, `DeadlineExceeded` (Expired) or `Cancelled`, so `kubectl wait
/// --for=condition=Complete` returns only for a success.
pub fn ended(batch: &SentimentBatch, counts: SentimentBatchStatus, phase: Phase, reason: &str, message: &str) -> SentimentBatchStatus {
    let end = match phase {
        Phase::Succeeded => condition(batch, COMPLETE, true, reason, message),
        Phase::Expired => condition(batch, FAILED, true, "DeadlineExceeded", message),
        Phase::Cancelled => condition(batch, FAILED, true, "Cancelled", message),
        _ => condition(batch, FAILED, true, "Failed", message),
    };
    SentimentBatchStatus {
        phase: Some(phase),
        reason: Some(reason.into()),
        observed_generation: batch.metadata.generation,
        completed_at: Some(Time(Timestamp::now())),
        estimated_completion_seconds: Some(0),
        conditions: vec![
            condition(batch, QUEUED, false, "Admitted", "admitted by the scheduler"),
            condition(batch, RUNNING, false, "Finished", "no work left"),
            end,
        ],
        ..counts
    }
}

/// Back to Pending for a retry of the failed texts, with a fresh clock.
pub fn retry_requested(batch: &SentimentBatch, message: &str) -> SentimentBatchStatus {
    SentimentBatchStatus {
        phase: Some(Phase::Pending),
        reason: None,
        started_at: Some(Time(Timestamp::now())),
        completed_at: None,
        // The next end is told afresh.
        notification: None,
        conditions: vec![condition(batch, QUEUED, true, "RetryRequested", message)],
        ..old(batch)
    }
}

/// `reason: message` of why a failed or expired batch ended; `None` for any other.
pub fn ended_because(batch: &SentimentBatch) -> Option<String> {
    if !matches!(batch.phase(), Phase::Failed | Phase::Expired) {
        return None;
    }
    let s = batch.status.as_ref()?;
    let failed = s.conditions.iter().find(|c| c.type_ == FAILED && c.status == "True")?;
    Some(format!("{}: {}", s.reason.as_deref().unwrap_or(&failed.reason), failed.message))
}

/// Seconds after its end that `batch` is deleted: its own `ttlSecondsAfterFinished`, else
/// `default`.
pub fn ttl_after_finished(batch: &SentimentBatch, default: Option<u64>) -> Option<std::time::Duration> {
    batch.spec.ttl_seconds_after_finished.map(|t| t.max(0) as u64).or(default).map(std::time::Duration::from_secs)
}

/// The batch's texts: from the status once the operator has read the source; before that,
/// an inline batch's size is still known.
pub fn total_texts(batch: &SentimentBatch) -> i64 {
    match batch.status.as_ref().map_or(0, |s| s.total_texts) {
        0 => batch.spec.texts.as_ref().map_or(0, |t| t.len() as i64),
        n => n,
    }
}

/// What a watch cache keeps of a batch: everything but its inline texts (up to 256 KiB
/// each), whose number moves into the cached copy's `status.totalTexts` if the operator
/// has not set it yet. Readers of the real texts get the object from the API server.
pub fn strip_texts(batch: &mut SentimentBatch) {
    if let Some(texts) = batch.spec.texts.take() {
        let status = batch.status.get_or_insert_with(Default::default);
        if status.total_texts == 0 {
            status.total_texts = texts.len() as i64;
        }
    }
}

/// Texts not processed yet.
pub fn remaining_texts(batch: &SentimentBatch) -> i64 {
    (total_texts(batch) - batch.status.as_ref().map_or(0, |s| s.processed_texts)).max(0)
}

#[cfg(test)]
mod tests {
    use inference_api::PredictionResult;

    use super::*;
    use crate::crd::SentimentBatchSpec;

    fn ok(index: usize, label: &str, score: f32) -> ResultLine {
        let prediction = PredictionResult {
            label: label.into(),
            score,
            inference_time_ms: 1.0,
            model_name: "m".into(),
            text_length: 1,
            backend: "onnx".into(),
            cached: false,
            scores: Default::default(),
            tokens: 3,
            truncated: false,
        };
        ResultLine { index, id: None, prediction: Some(prediction), error: None }
    }

    fn bad(index: usize) -> ResultLine {
        ResultLine { index, id: None, prediction: None, error: Some("boom".into()) }
    }

    #[test]
    fn tallies_count_labels_confidence_and_samples() {
        let mut t = Tally::of(&[ok(0, "POSITIVE", 0.5), ok(1, "POSITIVE", 1.0), bad(2)]);
        t.merge(Tally::of(&(3..10).map(bad).collect::<Vec<_>>()));
        assert_eq!((t.ok, t.failed, t.labels["POSITIVE"], t.confidence_sum), (2, 8, 2, 1.5));
        assert_eq!(t.samples.len(), SAMPLES);
        assert_eq!(t.samples[0].index, 2);
    }

    #[test]
    fn counts_give_progress_and_summary() {
        let t = Tally::of(&[ok(0, "NEGATIVE", 0.75), bad(1), ok(2, "NEGATIVE", 0.25)]);
        let s = counts(&SentimentBatchStatus::default(), 8, &t);
        assert_eq!((s.total_texts, s.processed_texts, s.failed_texts, s.progress.as_deref()), (8, 3, 1, Some("38%")));
        let sum = s.summary.unwrap();
        assert_eq!((sum.successful_predictions, sum.sentiment_distribution["NEGATIVE"]), (2, 2));
        assert_eq!(sum.average_confidence, 0.5);
        assert!((sum.success_rate - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.failures.unwrap().count, 1);
    }

    fn batch(status: Option<SentimentBatchStatus>) -> SentimentBatch {
        let spec: SentimentBatchSpec = serde_json::from_value(serde_json::json!({"texts": ["a", "b"]})).unwrap();
        SentimentBatch { status, ..SentimentBatch::new("b", spec) }
    }

    #[test]
    fn cached_copies_keep_the_count_of_their_texts() {
        let mut cached = batch(None);
        strip_texts(&mut cached);
        assert!(cached.spec.texts.is_none());
        assert_eq!((total_texts(&cached), remaining_texts(&cached)), (2, 2));
    }

    #[test]
    fn transitions_keep_transition_times_and_say_why() {
        let pending = batch(None);
        assert_eq!((total_texts(&pending), remaining_texts(&pending)), (2, 2));
        let queued = batch(Some(queue_full(&pending, "full")));
        assert!(has_condition(&queued, QUEUED, true, "QueueFull"));
        let run = batch(Some(running(&queued, counts(&queued.status.clone().unwrap(), 2, &Tally::default()), "loc".into())));
        assert_eq!(run.phase(), Phase::Running);
        assert!(has_condition(&run, QUEUED, false, "Admitted") && has_condition(&run, RUNNING, true, "Dispatching"));
        let waiting = batch(Some(waiting_for_capacity(&run, run.status.clone().unwrap(), "loc".into())));
        assert!(waiting.phase() == Phase::Running && has_condition(&waiting, RUNNING, false, "WaitingForCapacity"));
        // The same condition again keeps its time.
        let again = running(&run, run.status.clone().unwrap(), "loc".into());
        assert_eq!(again.conditions, run.status.as_ref().unwrap().conditions);
        assert_eq!(ended_because(&run), None);
        let failed = batch(Some(ended(&run, run.status.clone().unwrap(), Phase::Failed, "AllItemsFailed", "all 2 failed")));
        assert!(
            has_condition(&failed, FAILED, true, "Failed")
                && !failed.status.as_ref().unwrap().conditions.iter().any(|c| c.type_ == COMPLETE)
        );
        assert_eq!(ended_because(&failed).as_deref(), Some("AllItemsFailed: all 2 failed"));
        // As a Job's: DeadlineExceeded and Cancelled are Failed conditions, Complete is success only.
        let expired = batch(Some(ended(&run, run.status.clone().unwrap(), Phase::Expired, "DeadlineExceeded", "not within 5 s")));
        assert!(has_condition(&expired, FAILED, true, "DeadlineExceeded"));
        assert_eq!(ended_because(&expired).as_deref(), Some("DeadlineExceeded: not within 5 s"));
        let cancelled = batch(Some(ended(&run, run.status.clone().unwrap(), Phase::Cancelled, "Cancelled", "spec.cancel")));
        assert!(has_condition(&cancelled, FAILED, true, "Cancelled") && ended_because(&cancelled).is_none());
        let done = batch(Some(ended(&run, run.status.clone().unwrap(), Phase::Succeeded, "Succeeded", "ok")));
        assert!(
            has_condition(&done, COMPLETE, true, "Succeeded")
                && !done.status.as_ref().unwrap().conditions.iter().any(|c| c.type_ == FAILED)
        );
        assert_eq!(done.status.as_ref().unwrap().reason.as_deref(), Some("Succeeded"));
        assert!(ended_because(&done).is_none());
        let retried = retry_requested(&done, "retry");
        assert_eq!((retried.phase, retried.reason), (Some(Phase::Pending), None));
        let held = batch(Some(suspended(&run, run.status.clone().unwrap())));
        assert!(held.phase() == Phase::Suspended && has_condition(&held, SUSPENDED, true, "Suspended") && !held.phase().is_final());
    }
}
