//! The REST API's JSON documents (the brief's, field for field), and how each is read off
//! a `SentimentBatch`. The facade serves them and the bench reads them. Nothing here is
//! stored: every document is a view of the resource.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::crd::{Phase, Priority, SentimentBatch};
use crate::status;
use crate::store::ResultLine;

/// The answer to a submission (202): the brief's `BatchJobResponse`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchJobResponse {
    pub job_id: String,
    pub status: JobState,
    pub total_texts: i64,
    /// From the measured throughput and the texts queued ahead at this priority or higher.
    pub estimated_completion_seconds: i64,
    /// Seconds since the Unix epoch.
    pub created_at: f64,
    pub priority: Priority,
    pub progress_percentage: f64,
}

impl BatchJobResponse {
    /// The submit answer for a job in state `s`, with its completion estimate.
    pub fn of(s: BatchJobStatus, estimated_completion_seconds: i64) -> Self {
        BatchJobResponse {
            job_id: s.job_id,
            status: s.status,
            total_texts: s.total_texts,
            estimated_completion_seconds,
            created_at: s.created_at,
            priority: s.priority,
            progress_percentage: s.progress_percentage,
        }
    }
}

/// A job's state: the brief's `BatchJobStatus`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchJobStatus {
    pub job_id: String,
    pub status: JobState,
    pub total_texts: i64,
    pub processed_texts: i64,
    pub failed_texts: i64,
    pub progress_percentage: f64,
    pub created_at: f64,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub started_at: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub completed_at: Option<f64>,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub estimated_completion_seconds: Option<i64>,
    pub priority: Priority,
    /// Why a failed or expired job ended, else null.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub error: Option<String>,
    /// The `metadata` given at submit; absent when none was.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The completion callback's delivery, when the job was submitted with a
    /// `callback_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackStatus>,
}

/// How a completion callback went: `pending` until the job ends and while attempts
/// remain, then `delivered` (a 2xx came back) or `failed`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallbackStatus {
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^(pending|delivered|failed)$"))]
    pub state: String,
    pub attempts: i32,
    /// The last attempt's outcome in a few words (`HTTP 204 No Content`, `could not
    /// connect`, `refused: …`); null before the first.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub last_result: Option<String>,
}

/// `GET /api/v1/batch/jobs`: one page of the caller's jobs, newest first.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<BatchJobStatus>,
    /// Pass it as `after` for the next page; null on the last one.
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub next_cursor: Option<String>,
}

/// The brief's job states; `Pending` → `pending`, `Running` → `processing`, and so on.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Pending,
    Processing,
    Completed,
    Failed,
    Cancelled,
    Expired,
}

impl JobState {
    pub fn of(phase: Phase) -> Self {
        match phase {
            // A held batch has not run and will not until resumed: pending, to a REST client.
            Phase::Pending | Phase::Suspended => JobState::Pending,
            Phase::Running => JobState::Processing,
            Phase::Succeeded => JobState::Completed,
            Phase::Failed => JobState::Failed,
            Phase::Cancelled => JobState::Cancelled,
            Phase::Expired => JobState::Expired,
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Pending | JobState::Processing)
    }

    /// The wire name (`processing`, `completed`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Processing => "processing",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Expired => "expired",
        }
    }
}

/// One page of results: the brief's results document.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultsPage {
    pub job_id: String,
    pub status: JobState,
    /// The results of this page's input positions that are computed so far, in input order.
    pub results: Vec<ResultItem>,
    /// Texts in the job: pages cover input positions `0..total_results`.
    pub total_results: i64,
    pub page: usize,
    pub page_size: usize,
    pub has_more: bool,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub summary: Option<JobSummary>,
}

/// One text's result: the brief's per-result fields, plus its position and the client's
/// id. A failed text has `error` and no prediction fields.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultItem {
    pub index: usize,
    #[cfg_attr(feature = "openapi", schema(required = true))]
    pub custom_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_time_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_length: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached: Option<bool>,
    /// Every label's score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<BTreeMap<String, f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<ResultLine> for ResultItem {
    fn from(l: ResultLine) -> Self {
        let p = l.prediction;
        ResultItem {
            index: l.index,
            custom_id: l.id,
            label: p.as_ref().map(|p| p.label.clone()),
            score: p.as_ref().map(|p| p.score),
            inference_time_ms: p.as_ref().map(|p| p.inference_time_ms),
            model_name: p.as_ref().map(|p| p.model_name.clone()),
            text_length: p.as_ref().map(|p| p.text_length),
            backend: p.as_ref().map(|p| p.backend.clone()),
            cached: p.as_ref().map(|p| p.cached),
            scores: p.as_ref().map(|p| p.scores.clone()),
            tokens: p.as_ref().map(|p| p.tokens),
            truncated: p.as_ref().map(|p| p.truncated),
            error: l.error,
        }
    }
}

/// The brief's summary, over the texts processed so far.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    pub total_texts: i64,
    pub successful_predictions: i64,
    pub failed_predictions: i64,
    pub success_rate: f64,
    pub sentiment_distribution: BTreeMap<String, i64>,
    pub average_confidence: f64,
}

fn epoch(t: &Time) -> f64 {
    t.0.as_millisecond() as f64 / 1000.0
}

/// The job's id is the resource's name.
pub fn status_of(batch: &SentimentBatch) -> BatchJobStatus {
    let s = batch.status.clone().unwrap_or_default();
    BatchJobStatus {
        job_id: batch.name_any(),
        status: JobState::of(batch.phase()),
        total_texts: status::total_texts(batch),
        processed_texts: s.processed_texts,
        failed_texts: s.failed_texts,
        progress_percentage: s.progress_percentage,
        created_at: batch.metadata.creation_timestamp.as_ref().map_or_else(|| epoch(&Time(Timestamp::now())), epoch),
        started_at: s.started_at.as_ref().map(epoch),
        completed_at: s.completed_at.as_ref().map(epoch),
        estimated_completion_seconds: s.estimated_completion_seconds,
        priority: batch.spec.priority,
        error: status::ended_because(batch),
        metadata: batch.metadata.annotations.as_ref().map(crate::names::metadata_of).unwrap_or_default(),
        callback: batch.spec.notify.as_ref().map(|_| {
            let n = s.notification.clone().unwrap_or_default();
            CallbackStatus { state: n.state.as_str().into(), attempts: n.attempts, last_result: n.last_result }
        }),
    }
}

pub fn summary_of(batch: &SentimentBatch) -> Option<JobSummary> {
    let s = batch.status.as_ref()?;
    let sum = s.summary.as_ref()?;
    Some(JobSummary {
        total_texts: s.total_texts,
        successful_predictions: sum.successful_predictions,
        failed_predictions: sum.failed_predictions,
        success_rate: sum.success_rate,
        sentiment_distribution: sum.sentiment_distribution.clone(),
        average_confidence: sum.average_confidence,
    })
}

/// `GET /api/v1/batch/queue/status`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStatus {
    pub priorities: BTreeMap<String, PriorityQueue>,
    /// Jobs being processed now.
    pub active_jobs: usize,
    pub max_jobs: usize,
    /// Ready inference endpoints.
    pub inference_endpoints: usize,
    /// Texts per second over the running jobs, from their progress.
    pub throughput_tps: f64,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriorityQueue {
    /// Jobs not yet final.
    pub queued_jobs: usize,
    /// Their texts not yet processed.
    pub queued_texts: i64,
    pub limit: usize,
    /// `queued_jobs / limit`.
    pub utilization: f64,
}

/// `GET /api/v1/batch/metrics`: the brief's metrics, over the jobs this key can see.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchMetrics {
    pub total_jobs: usize,
    /// Jobs by state.
    pub jobs: BTreeMap<String, usize>,
    pub jobs_by_priority: BTreeMap<String, usize>,
    pub active_jobs: usize,
    pub queue_size: usize,
    pub total_texts: i64,
    pub processed_texts: i64,
    pub failed_texts: i64,
    /// Successful texts over processed texts, over all jobs.
    pub success_rate: f64,
    /// Mean seconds from start to completion of finished jobs.
    pub average_processing_time_seconds: f64,
    pub throughput_tps: f64,
    pub priority_limits: BTreeMap<String, usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_are_the_wire_names() {
        for s in [JobState::Pending, JobState::Processing, JobState::Completed, JobState::Failed, JobState::Cancelled, JobState::Expired] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
