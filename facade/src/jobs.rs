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
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use inference_api::client::PredictError;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use kubesentiment_core::admission;
use kubesentiment_core::crd::{ConfigMapKeyRef, Phase, Priority, S3Source, SecretKeyRef, SentimentBatch, TextSource};
use kubesentiment_core::jobs::{self, Origin};
use kubesentiment_core::names::TENANT_LABEL;
use kubesentiment_core::rest::{
    self, BatchJobResponse, BatchJobStatus, BatchMetrics, JobList, JobState, PriorityQueue, QueueStatus, ResultsPage,
};
use kubesentiment_core::status::remaining_texts;
use kubesentiment_core::store::Store;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::Facade;
use crate::auth::{SIGNING_SECRET_KEY, Tenant};
use crate::error::ApiError;
use crate::input::{InputUrl, Submission};

pub fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|r| match r.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge { field: None, message: "the request body is over the size limit".into() },
        _ => ApiError::Malformed(r.body_text()),
    })
}

impl Facade {
    /// The job `id` if `tenant` may see it: from the cache, else from the API server.
    pub async fn job(&self, tenant: &Tenant, id: &str) -> Result<Arc<SentimentBatch>, ApiError> {
        // No resource can have an impossible name: it is not sent to the API server.
        if !kubesentiment_core::names::is_resource_name(id) {
            return Err(ApiError::no_job(id));
        }
        let cached = self.jobs.get(&ObjectRef::new(id).within(&tenant.namespace));
        let job = match cached {
            Some(j) => j,
            None => Arc::new(self.api(tenant).get_opt(id).await?.ok_or_else(|| ApiError::no_job(id))?),
        };
        if tenant.owns(job.labels()) { Ok(job) } else { Err(ApiError::no_job(id)) }
    }

    /// Where `input` points, if `tenant` may read it there: a ConfigMap in its own
    /// namespace (carrying its label, when it shares the namespace), or an object in an
    /// allowed bucket. Otherwise a 403 naming `input_url`, the same whether the ConfigMap
    /// is missing or another tenant's.
    async fn source(&self, tenant: &Tenant, input: &InputUrl) -> Result<TextSource, ApiError> {
        let refuse = |message: String| ApiError::Forbidden { field: "input_url".into(), message };
        match input {
            InputUrl::ConfigMap { namespace, name, key } => {
                if *namespace != tenant.namespace {
                    return Err(refuse(format!("a ConfigMap must be in your namespace, {}", tenant.namespace)));
                }
                let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
                let visible = cms.get_metadata_opt(name).await?.filter(|cm| tenant.owns(cm.labels()));
                if visible.is_none() {
                    return Err(refuse(format!("no ConfigMap {name} in {namespace} that you may read")));
                }
                Ok(TextSource { config_map_key_ref: Some(ConfigMapKeyRef { name: name.clone(), key: key.clone() }), s3: None })
            }
            InputUrl::S3 { bucket, key } => {
                if self.files_bucket.as_ref() == Some(bucket) {
                    // The tenant's own uploads only (no deeper path, no `..`).
                    let own = key.strip_prefix(&crate::files::prefix(tenant)).is_some_and(|name| !name.is_empty() && !name.contains('/'));
                    if !own {
                        return Err(refuse(format!("no file {key} of yours in {bucket}")));
                    }
                } else if !self.input_buckets.contains(bucket) {
                    return Err(refuse(format!("bucket {bucket} is not one this server reads input from")));
                }
                let s3 = S3Source { bucket: bucket.clone(), key: key.clone(), endpoint: None, region: None, credentials_secret_ref: None };
                Ok(TextSource { config_map_key_ref: None, s3: Some(s3) })
            }
        }
    }

    /// The Secret holding `tenant`'s callback signing key, created in its namespace the
    /// first time it asks for a callback (create only: the facade reads no Secret, and
    /// every replica writes the same key, so an existing one is left as it is).
    async fn signing_ref(&self, tenant: &Tenant) -> Result<Option<SecretKeyRef>, ApiError> {
        let Some(signing) = &tenant.signing else { return Ok(None) };
        let known = format!("{}/{}", tenant.namespace, signing.secret);
        if !self.signing_secrets.lock().expect("the lock is never poisoned. This is a bug.").contains(&known) {
            let labels = [("app.kubernetes.io/managed-by".to_string(), "kubesentiment-facade".to_string())]
                .into_iter()
                .chain(tenant.label.iter().map(|l| (TENANT_LABEL.to_string(), l.clone())));
            let secret = Secret {
                metadata: ObjectMeta { name: Some(signing.secret.clone()), labels: Some(labels.collect()), ..Default::default() },
                data: Some([(SIGNING_SECRET_KEY.to_string(), ByteString(signing.key.to_vec()))].into()),
                type_: Some("Opaque".into()),
                ..Default::default()
            };
            match Api::<Secret>::namespaced(self.client.clone(), &tenant.namespace).create(&PostParams::default(), &secret).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => {
                    tracing::error!(namespace = %tenant.namespace, error = %e, "creating a callback signing Secret");
                    return Err(ApiError::Unavailable("callbacks are unavailable: the signing Secret could not be written".into()));
                }
            }
            self.signing_secrets.lock().expect("the lock is never poisoned. This is a bug.").insert(known);
        }
        Ok(Some(SecretKeyRef { name: signing.secret.clone(), key: SIGNING_SECRET_KEY.into() }))
    }

    fn api(&self, tenant: &Tenant) -> Api<SentimentBatch> {
        Api::namespaced(self.client.clone(), &tenant.namespace)
    }

    /// Every cached job `tenant` may see.
    fn visible(&self, tenant: &Tenant) -> Vec<Arc<SentimentBatch>> {
        self.jobs.in_namespace(&tenant.namespace).into_iter().filter(|j| tenant.owns(j.labels())).collect()
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

/// The longest `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The job name an `Idempotency-Key` stands for, within one tenant: the same key from the
/// same tenant always names the same resource, so the API server itself refuses a second
/// one, across facade replicas.
fn idempotent_name(tenant: &Tenant, key: &str) -> String {
    format!("idem-{}", crate::auth::hex_digest(&format!("{}\0{}\0{key}", tenant.namespace, tenant.label.as_deref().unwrap_or("")), 16))
}

/// The 200 answer to a submit repeated with its `Idempotency-Key`: the job it created.
fn already_submitted(job: &SentimentBatch) -> Response {
    let s = rest::status_of(job);
    let estimate = s.estimated_completion_seconds.unwrap_or(0);
    (StatusCode::OK, Json(BatchJobResponse::of(s, estimate))).into_response()
}

/// Submit a batch job. Returns at once; the job runs in the background. With an
/// `Idempotency-Key`, a repeated submit answers 200 with the job the first one created.
#[utoipa::path(post, path = "/api/v1/batch/predict", tag = "batch", request_body = crate::input::BatchRequest,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
        description = "1 to 255 printable ASCII characters; the same key from the same API key returns the same job")),
    responses((status = 202, body = BatchJobResponse, headers(("Location" = String, description = "the job's status URL"))),
        (status = 200, body = BatchJobResponse, description = "the job an earlier submit with the same Idempotency-Key created"),
        (status = 400, body = inference_api::ErrorBody), (status = 401, body = inference_api::ErrorBody),
        (status = 403, body = inference_api::ErrorBody, description = "an input_url this key may not read"),
        (status = 413, body = inference_api::ErrorBody), (status = 422, body = inference_api::ErrorBody),
        (status = 503, body = inference_api::ErrorBody, description = "the API server is unreachable, or a callback's signing Secret could not be written")),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn submit(
    State(f): State<Arc<Facade>>,
    Extension(tenant): Extension<Tenant>,
    headers: axum::http::HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let mut sub = Submission::decode(&body(raw)?, &f.limits)?;
    if let Some(input) = &sub.1 {
        sub.0.source = Some(f.source(&tenant, input).await?);
    }
    if let Some(notify) = &mut sub.0.notify {
        notify.signing_secret_ref = f.signing_ref(&tenant).await?;
    }
    if let Some(key) = headers.get("idempotency-key") {
        let key = key
            .to_str()
            .ok()
            .filter(|k| (1..=MAX_IDEMPOTENCY_KEY).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| ApiError::invalid("Idempotency-Key", format!("1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters")))?;
        let name = idempotent_name(&tenant, key);
        if let Some(job) = f.api(&tenant).get_opt(&name).await? {
            return Ok(already_submitted(&job));
        }
        sub.0.name = Some(name);
    }
    let all = f.jobs.state();
    let active_per_level = admission::per_level(all.iter().filter(|j| active(j)).map(|j| j.spec.priority));
    let limits = f.cfg.admission();
    if limits.admits(active_per_level, sub.priority).is_err() {
        return Err(ApiError::Busy {
            code: "queue_full",
            message: format!(
                "the {} queue is full ({} of {} jobs; {} of {} in all)",
                sub.priority.as_str(),
                active_per_level[sub.priority.level()],
                limits.limit(sub.priority),
                active_per_level.iter().sum::<usize>(),
                limits.max_jobs
            ),
            retry_after: Duration::from_secs(5),
        });
    }
    let ahead: i64 = all.iter().filter(|j| active(j) && j.spec.priority <= sub.priority).map(|j| remaining_texts(j)).sum();
    let tps = f.throughput(&all).max(1.0);
    let total = sub.texts.len() as i64;
    let origin = Origin {
        namespace: tenant.namespace.clone(),
        labels: tenant.label.iter().map(|l| (TENANT_LABEL.to_string(), l.clone())).collect(),
        submitted_by: "rest",
        output: f.output.clone(),
        ttl_seconds_after_finished: f.job_ttl_seconds,
    };
    let name = sub.0.name.clone();
    let job = match jobs::create(&f.client, &origin, sub.0).await {
        Ok(job) => job,
        // Another replica created the same idempotent job a moment ago.
        Err(jobs::CreateError::Kube(kube::Error::Api(s)))
            if s.code == 409
                && let Some(name) = name =>
        {
            let job = f.api(&tenant).get_opt(&name).await?.ok_or_else(|| ApiError::no_job(&name))?;
            return Ok(already_submitted(&job));
        }
        Err(e) => return Err(e.into()),
    };
    let mut status = rest::status_of(&job);
    status.total_texts = total;
    f.jobs.created(job);
    let resp = BatchJobResponse::of(status, ((ahead + total) as f64 / tps).ceil() as i64);
    let location =
        HeaderValue::from_str(&format!("/api/v1/batch/status/{}", resp.job_id)).expect("a resource name is a valid header. This is a bug.");
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(resp)).into_response())
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
    Ok(Json(rest::status_of(&*f.job(&tenant, &id).await?)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1-based.
    #[serde(default = "one")]
    #[param(minimum = 1, maximum = 2_147_483_647)]
    pub page: usize,
    /// Results per page, 1–10,000; the server caps it at its configured maximum.
    #[serde(default = "hundred")]
    #[param(minimum = 1, maximum = 10_000)]
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
    if !(1..=2_147_483_647).contains(&q.page) {
        return Err(ApiError::invalid("page", "page must be 1 to 2,147,483,647"));
    }
    if !(1..=10_000).contains(&q.page_size) {
        return Err(ApiError::invalid("page_size", "page_size must be 1 to 10,000"));
    }
    let job = f.job(&tenant, &id).await?;
    let page_size = q.page_size.min(f.max_page_size);
    let status = rest::status_of(&job);
    let total = status.total_texts.max(0) as usize;
    let start = (q.page - 1).saturating_mul(page_size);
    let range = start.min(total)..start.saturating_add(page_size).min(total);
    let mut lines = if range.is_empty() || job.phase() == Phase::Pending {
        Vec::new()
    } else {
        let store = Store::for_batch(&f.client, &job, &f.stores)?.of_texts(total);
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
        summary: rest::summary_of(&job),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs in this state.
    pub status: Option<JobState>,
    /// Only jobs of this priority.
    pub priority: Option<Priority>,
    /// Jobs per page, 1–100.
    #[serde(default = "twenty")]
    #[param(minimum = 1, maximum = 100)]
    pub limit: usize,
    /// The `next_cursor` of the page before.
    #[param(pattern = "^[0-9]{1,18}_")]
    pub after: Option<String>,
}

fn twenty() -> usize {
    20
}

/// Where a job sorts in the list: newest first, then by id. A cursor is the key of the
/// last job of a page, as `SECONDS_ID`, so a page never depends on an offset that jobs
/// created or deleted in between would shift.
fn list_key(j: &SentimentBatch) -> (i64, String) {
    (j.metadata.creation_timestamp.as_ref().map_or(i64::MAX, |t| t.0.as_second()), j.name_any())
}

fn parse_cursor(cursor: &str) -> Option<(i64, String)> {
    let (seconds, id) = cursor.split_once('_')?;
    if !(1..=18).contains(&seconds.len()) || !seconds.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((seconds.parse().ok()?, id.to_string()))
}

/// The caller's jobs, newest first, a page at a time, from the facade's cache.
#[utoipa::path(get, path = "/api/v1/batch/jobs", tag = "batch", params(ListQuery),
    responses((status = 200, body = JobList), (status = 401, body = inference_api::ErrorBody), (status = 422, body = inference_api::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn list(
    State(f): State<Arc<Facade>>,
    Extension(tenant): Extension<Tenant>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    if !(1..=100).contains(&q.limit) {
        return Err(ApiError::invalid("limit", "limit must be 1 to 100"));
    }
    let after = match q.after.as_deref() {
        None => None,
        Some(c) => Some(parse_cursor(c).ok_or_else(|| ApiError::invalid("after", "not a cursor this server gave"))?),
    };
    let mut jobs: Vec<((i64, String), Arc<SentimentBatch>)> = f
        .visible(&tenant)
        .into_iter()
        .filter(|j| q.status.is_none_or(|s| JobState::of(j.phase()) == s) && q.priority.is_none_or(|p| j.spec.priority == p))
        .map(|j| (list_key(&j), j))
        .filter(|(key, _)| after.as_ref().is_none_or(|a| key < a))
        .collect();
    jobs.sort_by(|a, b| b.0.cmp(&a.0));
    let more = jobs.len() > q.limit;
    jobs.truncate(q.limit);
    let next_cursor = more.then(|| jobs.last().map(|((s, id), _)| format!("{s}_{id}"))).flatten();
    Ok(Json(JobList { jobs: jobs.iter().map(|(_, j)| rest::status_of(j)).collect(), next_cursor }))
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
    if !kubesentiment_core::names::is_resource_name(&id) {
        return Err(ApiError::no_job(&id));
    }
    let api = f.api(&tenant);
    loop {
        let job = api.get_opt(&id).await?.filter(|j| tenant.owns(j.labels())).ok_or_else(|| ApiError::no_job(&id))?;
        let state = JobState::of(job.phase());
        if state.is_final() {
            return Err(ApiError::Conflict(format!("job {id} is already {}", state.as_str())));
        }
        let patch = serde_json::json!({"metadata": {"resourceVersion": job.resource_version()}, "spec": {"cancel": true}});
        match api.patch(&id, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(job) => return Ok((StatusCode::ACCEPTED, Json(rest::status_of(&job))).into_response()),
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
                queued_texts: queued.iter().map(|j| remaining_texts(j)).sum(),
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
        let s = rest::status_of(j);
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
#[utoipa::path(post, path = "/api/v1/predict", tag = "predict", request_body = crate::input::PredictRequest,
    responses((status = 200, body = inference_api::PredictResponse), (status = 400, body = inference_api::ErrorBody),
        (status = 401, body = inference_api::ErrorBody), (status = 413, body = inference_api::ErrorBody),
        (status = 422, body = inference_api::ErrorBody), (status = 503, body = inference_api::ErrorBody)),
    security(("bearer" = []), ("api_key" = [])))]
pub async fn predict(State(f): State<Arc<Facade>>, raw: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let texts = crate::input::PredictRequest::decode(&body(raw)?, &f.limits)?;
    let urls = f.endpoints.borrow().clone();
    if urls.is_empty() {
        return Err(ApiError::Unavailable("no inference endpoint is ready".into()));
    }
    match f.round_robin.predict(&f.predictor, &urls, &texts).await {
        Ok(results) => Ok(Json(inference_api::PredictResponse { results }).into_response()),
        Err(PredictError::Busy { retry_after, .. }) => Err(ApiError::Busy {
            code: "too_many_requests",
            message: "the inference endpoints are busy".into(),
            retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
        }),
        // A text the model failed on, named by the endpoint: the client's to see.
        Err(PredictError::Rejected { status: 422, message, field: Some(field) }) => Err(ApiError::invalid(field, message)),
        // The texts passed our own checks, so any other refusal is ours, not the client's.
        Err(e) => {
            tracing::warn!(error = %e, "synchronous predict");
            Err(ApiError::Unavailable("no inference endpoint could answer".into()))
        }
    }
}
