//! The job routes: submit, status, results, cancel, queue status and metrics. Each reads
//! or writes `SentimentBatch` resources; reads come from the facade's watch cache, with
//! a direct GET when a job is newer than the cache.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Deserialize;
use utoipa::IntoParams;

use super::Facade;
use super::auth::{TENANT_LABEL, Tenant};
use super::error::ApiError;
use super::input::Submission;
use super::wire::{self, BatchJobResponse, BatchJobStatus, BatchMetrics, JobState, PriorityQueue, QueueStatus, ResultsPage};
use crate::crd::{ConfigMapKeyRef, Phase, Priority, SentimentBatch, SentimentBatchSpec, TextSource};
use crate::store::Store;

/// Label on an input ConfigMap: the job it holds texts for.
const JOB_LABEL: &str = "kubesentiment.io/job";
/// Annotation marking a job as submitted over REST.
const SUBMITTED_BY: &str = "kubesentiment.io/submitted-by";
/// Inline texts up to this many bytes stay in the resource; larger inputs go to a ConfigMap.
const MAX_INLINE_BYTES: usize = 256 * 1024;
/// The CRD's limit on `spec.texts`.
const MAX_INLINE_TEXTS: usize = 1000;
/// A ConfigMap holds at most 1 MiB; leave room for its metadata.
const MAX_CONFIGMAP_BYTES: usize = 1000 * 1024;

pub fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge { field: None, message: "the request body is over the size limit".into() },
        _ => ApiError::Malformed(r.body_text()),
    })
}

impl Facade {
    /// The job `id` if `tenant` may see it: from the cache, else from the API server.
    pub async fn job(&self, tenant: &Tenant, id: &str) -> Result<Arc<SentimentBatch>, ApiError> {
        let cached = self.jobs.get(&ObjectRef::new(id).within(&tenant.namespace));
        let job = match cached {
            Some(j) => j,
            None => Arc::new(self.api(tenant).get_opt(id).await?.ok_or_else(|| ApiError::no_job(id))?),
        };
        if tenant.owns(job.labels()) { Ok(job) } else { Err(ApiError::no_job(id)) }
    }

    fn api(&self, tenant: &Tenant) -> Api<SentimentBatch> {
        Api::namespaced(self.client.clone(), &tenant.namespace)
    }

    /// Every cached job `tenant` may see.
    fn visible(&self, tenant: &Tenant) -> Vec<Arc<SentimentBatch>> {
        self.jobs.state().into_iter().filter(|j| j.namespace().as_deref() == Some(&tenant.namespace) && tenant.owns(j.labels())).collect()
    }

    /// Texts per second over the running jobs, from their progress; the last non-zero
    /// figure while nothing runs.
    fn throughput(&self, jobs: &[Arc<SentimentBatch>]) -> f64 {
        let now = Timestamp::now();
        let tps: f64 = jobs
            .iter()
            .filter(|j| j.phase() == Phase::Running)
            .filter_map(|j| {
                let s = j.status.as_ref()?;
                let secs = now.duration_since(s.started_at.as_ref()?.0).as_secs_f64();
                (secs > 0.5).then(|| s.processed_texts as f64 / secs)
            })
            .sum();
        if tps > 0.0 {
            self.last_tps.store(tps.to_bits(), std::sync::atomic::Ordering::Relaxed);
        }
        f64::from_bits(self.last_tps.load(std::sync::atomic::Ordering::Relaxed))
    }
}

fn active(j: &SentimentBatch) -> bool {
    !j.phase().is_final()
}

fn remaining(j: &SentimentBatch) -> i64 {
    (wire::total_texts(j) - j.status.as_ref().map_or(0, |s| s.processed_texts)).max(0)
}

/// Submit a batch job. Returns at once; the job runs in the background.
#[utoipa::path(post, path = "/api/v1/batch/predict", tag = "batch", request_body = super::input::BatchRequest,
    responses((status = 202, body = BatchJobResponse, headers(("Location" = String, description = "the job's status URL"))),
        (status = 400, body = inference_api::ErrorBody), (status = 401, body = inference_api::ErrorBody),
        (status = 413, body = inference_api::ErrorBody), (status = 422, body = inference_api::ErrorBody),
        (status = 429, body = inference_api::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn submit(
    State(f): State<Arc<Facade>>,
    Extension(tenant): Extension<Tenant>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let sub = Submission::decode(&body(raw)?, &f.limits)?;
    let all = f.jobs.state();
    let queued = all.iter().filter(|j| active(j) && j.spec.priority == sub.priority).count();
    let limit = f.cfg.limit(sub.priority);
    if queued >= limit || all.iter().filter(|j| active(j)).count() >= f.cfg.max_jobs {
        return Err(ApiError::Busy {
            code: "queue_full",
            message: format!("the {} queue is full ({queued} of {limit} jobs)", sub.priority.as_str()),
            retry_after: Duration::from_secs(5),
        });
    }
    let ahead: i64 = all.iter().filter(|j| active(j) && j.spec.priority <= sub.priority).map(|j| remaining(j)).sum();
    let tps = f.throughput(&all).max(1.0);
    let total = sub.texts.len() as i64;
    let labels = tenant.label.iter().map(|l| (TENANT_LABEL.to_string(), l.clone())).collect();
    let job = create(&f.client, &tenant.namespace, labels, "rest", f.output.clone(), sub).await?;
    let mut status = wire::status_of(&job);
    status.total_texts = total;
    let resp = BatchJobResponse {
        job_id: status.job_id,
        status: status.status,
        total_texts: total,
        estimated_completion_seconds: ((ahead + total) as f64 / tps).ceil() as i64,
        created_at: status.created_at,
        priority: status.priority,
        progress_percentage: status.progress_percentage,
    };
    let location =
        HeaderValue::from_str(&format!("/api/v1/batch/status/{}", resp.job_id)).expect("a UUID is a valid header. This is a bug.");
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(resp)).into_response())
}

/// Creates a job named by a new UUID, with its texts inline or, for large or id-carrying
/// inputs, in a ConfigMap the job then owns. `submitted_by` names the client kind
/// (`rest`, `bench`).
pub async fn create(
    client: &Client,
    namespace: &str,
    labels: BTreeMap<String, String>,
    submitted_by: &str,
    output: Option<String>,
    sub: Submission,
) -> Result<SentimentBatch, ApiError> {
    let name = uuid::Uuid::new_v4().to_string();
    let bytes: usize =
        sub.texts.iter().map(|t| t.len() + 4).sum::<usize>() + sub.ids.iter().flatten().flatten().map(|i| i.len() + 16).sum::<usize>();
    let mut spec = SentimentBatchSpec {
        texts: None,
        source: None,
        priority: sub.priority,
        timeout_seconds: sub.timeout_seconds,
        max_batch_size: sub.max_batch_size,
        model: sub.model,
        output,
        cancel: false,
    };
    let input = if sub.ids.is_none() && bytes <= MAX_INLINE_BYTES && sub.texts.len() <= MAX_INLINE_TEXTS {
        spec.texts = Some(sub.texts);
        None
    } else if bytes <= MAX_CONFIGMAP_BYTES {
        let items: Vec<serde_json::Value> = match &sub.ids {
            Some(ids) => sub.texts.iter().zip(ids).map(|(t, id)| serde_json::json!({"text": t, "id": id})).collect(),
            None => sub.texts.iter().map(|t| serde_json::json!({"text": t})).collect(),
        };
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("{name}-input")),
                labels: Some(labels.clone().into_iter().chain([(JOB_LABEL.to_string(), name.clone())]).collect()),
                ..Default::default()
            },
            data: Some([("texts.json".to_string(), serde_json::Value::Array(items).to_string())].into()),
            ..Default::default()
        };
        spec.source = Some(TextSource {
            config_map_key_ref: Some(ConfigMapKeyRef { name: format!("{name}-input"), key: "texts.json".into() }),
            s3: None,
        });
        Some(cm)
    } else {
        return Err(ApiError::TooLarge {
            field: Some("texts".into()),
            message: format!("{bytes} bytes of texts exceed the {MAX_CONFIGMAP_BYTES}-byte limit of one job"),
        });
    };
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    if let Some(cm) = &input {
        cms.create(&PostParams::default(), cm).await?;
    }
    let mut batch = SentimentBatch::new(&name, spec);
    batch.metadata.labels = Some(labels);
    batch.metadata.annotations = Some([(SUBMITTED_BY.to_string(), submitted_by.to_string())].into());
    let batch = match Api::<SentimentBatch>::namespaced(client.clone(), namespace).create(&PostParams::default(), &batch).await {
        Ok(b) => b,
        Err(e) => {
            // No job will own the input: remove it rather than leave it behind.
            if input.is_some() {
                if let Err(e) = cms.delete(&format!("{name}-input"), &Default::default()).await {
                    tracing::warn!(job = %name, error = %e, "could not delete the input ConfigMap of a job never created");
                }
            }
            return Err(e.into());
        }
    };
    if input.is_some() {
        // The job owns its input, so deleting the job deletes it.
        let owner = batch.controller_owner_ref(&()).expect("a created batch has a name and UID. This is a bug.");
        let patch = serde_json::json!({"metadata": {"ownerReferences": [owner]}});
        if let Err(e) = cms.patch(&format!("{name}-input"), &PatchParams::default(), &Patch::Merge(patch)).await {
            tracing::warn!(job = %name, error = %e, "could not make the job own its input ConfigMap");
        }
    }
    Ok(batch)
}

/// A job's state.
#[utoipa::path(get, path = "/api/v1/batch/status/{job_id}", tag = "batch", params(("job_id" = String, Path)),
    responses((status = 200, body = BatchJobStatus), (status = 401, body = inference_api::ErrorBody), (status = 404, body = inference_api::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn status(
    State(f): State<Arc<Facade>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Json<BatchJobStatus>, ApiError> {
    Ok(Json(wire::status_of(&*f.job(&tenant, &id).await?)))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct PageQuery {
    /// 1-based.
    #[serde(default = "one")]
    pub page: usize,
    /// Results per page; capped by the server.
    #[serde(default = "hundred")]
    pub page_size: usize,
}

fn one() -> usize {
    1
}

fn hundred() -> usize {
    100
}

/// One page of a job's results, in input order. Pages cover input positions; while the
/// job runs, a page holds the results computed so far.
#[utoipa::path(get, path = "/api/v1/batch/results/{job_id}", tag = "batch", params(("job_id" = String, Path), PageQuery),
    responses((status = 200, body = ResultsPage), (status = 401, body = inference_api::ErrorBody),
        (status = 404, body = inference_api::ErrorBody), (status = 422, body = inference_api::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn results(
    State(f): State<Arc<Facade>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ResultsPage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    if q.page == 0 {
        return Err(ApiError::invalid("page", "pages start at 1"));
    }
    if q.page_size == 0 {
        return Err(ApiError::invalid("page_size", "page_size must be at least 1"));
    }
    let job = f.job(&tenant, &id).await?;
    let page_size = q.page_size.min(f.max_page_size);
    let status = wire::status_of(&job);
    let total = status.total_texts.max(0) as usize;
    let start = (q.page - 1).saturating_mul(page_size);
    let range = start.min(total)..start.saturating_add(page_size).min(total);
    let mut lines = if range.is_empty() || job.phase() == Phase::Pending {
        Vec::new()
    } else {
        let store = Store::for_batch(&f.client, &job)?;
        let mut lines = store.read_range(range.clone()).await?;
        if job.phase() == Phase::Expired && lines.len() < range.len() {
            // Texts unfinished at expiry are only in the failures list.
            let have: std::collections::BTreeSet<usize> = lines.iter().map(|l| l.index).collect();
            let timed_out = store.read_failures().await?.into_iter().filter(|l| range.contains(&l.index) && !have.contains(&l.index));
            lines.extend(timed_out.collect::<Vec<_>>());
            lines.sort_by_key(|l| l.index);
        }
        lines
    };
    lines.dedup_by_key(|l| l.index);
    Ok(Json(ResultsPage {
        job_id: status.job_id,
        status: status.status,
        results: lines.into_iter().map(Into::into).collect(),
        total_results: total as i64,
        page: q.page,
        page_size,
        has_more: range.end < total,
        summary: wire::summary_of(&job),
    }))
}

/// Cancel a job. Results computed so far stay readable.
#[utoipa::path(delete, path = "/api/v1/batch/jobs/{job_id}", tag = "batch", params(("job_id" = String, Path)),
    responses((status = 202, body = BatchJobStatus), (status = 401, body = inference_api::ErrorBody),
        (status = 404, body = inference_api::ErrorBody), (status = 409, body = inference_api::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn cancel(
    State(f): State<Arc<Facade>>,
    Extension(tenant): Extension<Tenant>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    // A write decides on the object as the API server has it, not on the cache, which
    // may lag a stream that already showed the job final; the resourceVersion makes the
    // patch fail rather than cancel a job that finished in between.
    let api = f.api(&tenant);
    loop {
        let job = api.get_opt(&id).await?.filter(|j| tenant.owns(j.labels())).ok_or_else(|| ApiError::no_job(&id))?;
        let state = JobState::of(job.phase());
        if state.is_final() {
            return Err(ApiError::Conflict(format!("job {id} is already {}", state.as_str())));
        }
        let patch = serde_json::json!({"metadata": {"resourceVersion": job.resource_version()}, "spec": {"cancel": true}});
        match api.patch(&id, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(job) => return Ok((StatusCode::ACCEPTED, Json(wire::status_of(&job))).into_response()),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Per priority: jobs and texts waiting, the limit and its use; over every job.
#[utoipa::path(get, path = "/api/v1/batch/queue/status", tag = "batch",
    responses((status = 200, body = QueueStatus), (status = 401, body = inference_api::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn queue(State(f): State<Arc<Facade>>) -> Json<QueueStatus> {
    let all = f.jobs.state();
    let priorities = Priority::ALL
        .iter()
        .map(|&p| {
            let queued: Vec<_> = all.iter().filter(|j| active(j) && j.spec.priority == p).collect();
            let limit = f.cfg.limit(p);
            let q = PriorityQueue {
                queued_jobs: queued.len(),
                queued_texts: queued.iter().map(|j| remaining(j)).sum(),
                limit,
                utilization: queued.len() as f64 / limit as f64,
            };
            (p.as_str().to_string(), q)
        })
        .collect();
    Json(QueueStatus {
        priorities,
        active_jobs: all.iter().filter(|j| j.phase() == Phase::Running).count(),
        max_jobs: f.cfg.max_jobs,
        inference_endpoints: f.endpoints.borrow().len(),
        throughput_tps: f.throughput(&all),
    })
}

/// The brief's metrics, over the jobs this key can see.
#[utoipa::path(get, path = "/api/v1/batch/metrics", tag = "batch",
    responses((status = 200, body = BatchMetrics), (status = 401, body = inference_api::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn metrics(State(f): State<Arc<Facade>>, Extension(tenant): Extension<Tenant>) -> Json<BatchMetrics> {
    let jobs = f.visible(&tenant);
    let mut by_state = BTreeMap::new();
    let mut by_priority = BTreeMap::new();
    let (mut total, mut processed, mut failed, mut ok) = (0, 0, 0, 0);
    let mut durations = Vec::new();
    for j in &jobs {
        let s = wire::status_of(j);
        *by_state.entry(s.status.as_str().to_string()).or_insert(0) += 1;
        *by_priority.entry(j.spec.priority.as_str().to_string()).or_insert(0) += 1;
        total += s.total_texts;
        processed += s.processed_texts;
        failed += s.failed_texts;
        ok += s.processed_texts - s.failed_texts;
        if let (Some(a), Some(b)) = (s.started_at, s.completed_at) {
            durations.push(b - a);
        }
    }
    let all = f.jobs.state();
    Json(BatchMetrics {
        total_jobs: jobs.len(),
        jobs: by_state,
        jobs_by_priority: by_priority,
        active_jobs: jobs.iter().filter(|j| j.phase() == Phase::Running).count(),
        queue_size: jobs.iter().filter(|j| active(j)).count(),
        total_texts: total,
        processed_texts: processed,
        failed_texts: failed,
        success_rate: if processed == 0 { 0.0 } else { ok as f64 / processed as f64 },
        average_processing_time_seconds: if durations.is_empty() { 0.0 } else { durations.iter().sum::<f64>() / durations.len() as f64 },
        throughput_tps: f.throughput(&all),
        priority_limits: Priority::ALL.iter().map(|&p| (p.as_str().to_string(), f.cfg.limit(p))).collect(),
    })
}

/// Classify a few texts now, on an inference endpoint: the synchronous baseline.
#[utoipa::path(post, path = "/api/v1/predict", tag = "predict", request_body = super::input::PredictRequest,
    responses((status = 200, body = inference_api::PredictResponse), (status = 401, body = inference_api::ErrorBody),
        (status = 413, body = inference_api::ErrorBody), (status = 422, body = inference_api::ErrorBody),
        (status = 503, body = inference_api::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn predict(State(f): State<Arc<Facade>>, raw: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let texts = super::input::PredictRequest::decode(&body(raw)?, &f.limits)?;
    let urls = f.endpoints.borrow().clone();
    if urls.is_empty() {
        return Err(ApiError::Unavailable("no inference endpoint is ready".into()));
    }
    let first = f.next_endpoint.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let req = inference_api::PredictRequest { texts, options: Default::default() };
    // Try each endpoint once, starting from the next in turn.
    for i in 0..urls.len() {
        let url = &urls[(first + i) % urls.len()];
        match f.http.post(format!("{url}/v1/predict")).json(&req).send().await {
            Ok(resp) => {
                let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
                let mut headers = HeaderMap::new();
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                let body = resp.bytes().await.map_err(|e| ApiError::Unavailable(format!("inference endpoint {url}: {e}")))?;
                return Ok((status, headers, body).into_response());
            }
            Err(e) => tracing::warn!(%url, error = %e, "inference endpoint unreachable"),
        }
    }
    Err(ApiError::Unavailable("no inference endpoint answered".into()))
}
