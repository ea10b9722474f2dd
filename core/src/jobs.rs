//! Creating a job as a resource: the one way the facade and the bench submit work. A job
//! is a `SentimentBatch` named by a new UUID, its texts inline when small and id-free,
//! otherwise in a ConfigMap the job then owns.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};

use crate::crd::{ConfigMapKeyRef, MAX_INLINE_TEXTS, Notify, Priority, SentimentBatch, SentimentBatchSpec, TextSource};
use crate::names::{FINALIZER, JOB_LABEL, METADATA_PREFIX, SUBMITTED_BY};

/// Inline texts up to this many bytes stay in the resource; larger inputs go to a ConfigMap.
pub const MAX_INLINE_BYTES: usize = 256 * 1024;
/// A ConfigMap holds at most 1 MiB; leave room for its metadata.
pub const MAX_CONFIGMAP_BYTES: usize = 1000 * 1024;

/// A valid job to create: texts already checked against the caller's limits.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub texts: Vec<String>,
    /// Present when any text carries the caller's id.
    pub ids: Option<Vec<Option<String>>>,
    pub priority: Priority,
    pub max_batch_size: Option<i32>,
    pub timeout_seconds: Option<i32>,
    pub model: Option<String>,
    /// The client's own key-value pairs, kept as annotations ([`METADATA_PREFIX`]).
    pub metadata: BTreeMap<String, String>,
    /// The resource name, when the caller derives it (an idempotency key); else a new UUID.
    pub name: Option<String>,
    /// Where the texts are instead, when `texts` is empty: a ConfigMap or an S3 object
    /// the operator reads.
    pub source: Option<TextSource>,
    /// The completion callback, if the caller asked for one.
    pub notify: Option<Notify>,
}

impl NewJob {
    pub fn texts(texts: Vec<String>, priority: Priority) -> Self {
        NewJob {
            texts,
            ids: None,
            priority,
            max_batch_size: None,
            timeout_seconds: None,
            model: None,
            metadata: BTreeMap::new(),
            name: None,
            source: None,
            notify: None,
        }
    }
}

/// Who creates a job and where: its namespace, labels (a tenant's, a bench run's), the
/// client kind (`rest`, `bench`), `spec.output` and `spec.ttlSecondsAfterFinished`.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub submitted_by: &'static str,
    pub output: Option<String>,
    pub ttl_seconds_after_finished: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The texts do not fit one job's input.
    #[error("{bytes} bytes of texts exceed the {MAX_CONFIGMAP_BYTES}-byte limit of one job")]
    TooLarge { bytes: usize },
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

/// Creates the job; returns the resource as the API server stored it.
pub async fn create(client: &Client, origin: &Origin, job: NewJob) -> Result<SentimentBatch, CreateError> {
    let named = job.name.is_some();
    let name = job.name.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let input_name = format!("{name}-input");
    let bytes: usize =
        job.texts.iter().map(|t| t.len() + 4).sum::<usize>() + job.ids.iter().flatten().flatten().map(|i| i.len() + 16).sum::<usize>();
    let mut spec = SentimentBatchSpec {
        texts: None,
        source: None,
        priority: job.priority,
        timeout_seconds: job.timeout_seconds,
        max_batch_size: job.max_batch_size,
        model: job.model,
        output: origin.output.clone(),
        cancel: false,
        suspend: false,
        ttl_seconds_after_finished: origin.ttl_seconds_after_finished,
        notify: job.notify,
    };
    let input = if job.source.is_some() {
        spec.source = job.source;
        None
    } else if job.ids.is_none() && bytes <= MAX_INLINE_BYTES && job.texts.len() <= MAX_INLINE_TEXTS {
        spec.texts = Some(job.texts);
        None
    } else if bytes <= MAX_CONFIGMAP_BYTES {
        let items: Vec<serde_json::Value> = match &job.ids {
            Some(ids) => job.texts.iter().zip(ids).map(|(t, id)| serde_json::json!({"text": t, "id": id})).collect(),
            None => job.texts.iter().map(|t| serde_json::json!({"text": t})).collect(),
        };
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(input_name.clone()),
                labels: Some(origin.labels.clone().into_iter().chain([(JOB_LABEL.to_string(), name.clone())]).collect()),
                ..Default::default()
            },
            data: Some([("texts.json".to_string(), serde_json::Value::Array(items).to_string())].into()),
            ..Default::default()
        };
        spec.source =
            Some(TextSource { config_map_key_ref: Some(ConfigMapKeyRef { name: input_name.clone(), key: "texts.json".into() }), s3: None });
        Some(cm)
    } else {
        return Err(CreateError::TooLarge { bytes });
    };
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &origin.namespace);
    if let Some(cm) = &input {
        match cms.create(&PostParams::default(), cm).await {
            // A named job's earlier attempt stopped after writing its input: this one's
            // texts replace it (the name is the caller's, so the input is too).
            Err(kube::Error::Api(s)) if s.code == 409 && named => {
                let patch = serde_json::json!({"data": cm.data});
                cms.patch(&input_name, &PatchParams::default(), &Patch::Merge(patch)).await?;
            }
            r => {
                r?;
            }
        }
    }
    let mut batch = SentimentBatch::new(&name, spec);
    batch.metadata.labels = Some(origin.labels.clone());
    // Results outside the cluster need the operator's cleanup finalizer: from birth, or
    // it would add it with a write of its own before any work (#17 counts each write).
    if batch.spec.output.is_some() {
        batch.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    }
    let metadata = job.metadata.into_iter().map(|(k, v)| (format!("{METADATA_PREFIX}{k}"), v));
    batch.metadata.annotations = Some([(SUBMITTED_BY.to_string(), origin.submitted_by.to_string())].into_iter().chain(metadata).collect());
    let batch = match Api::<SentimentBatch>::namespaced(client.clone(), &origin.namespace).create(&PostParams::default(), &batch).await {
        Ok(b) => b,
        Err(e) => {
            // No job will own the input: remove it rather than leave it behind. (A named
            // job that exists already is the same job, and the input is its own.)
            let same_job = named && matches!(&e, kube::Error::Api(s) if s.code == 409);
            if input.is_some()
                && !same_job
                && let Err(e) = cms.delete(&input_name, &Default::default()).await
            {
                tracing::warn!(job = %name, error = %e, "could not delete the input ConfigMap of a job never created");
            }
            return Err(e.into());
        }
    };
    if input.is_some() {
        // The job owns its input, so deleting the job deletes it.
        let owner = batch.controller_owner_ref(&()).expect("a created batch has a name and UID. This is a bug.");
        let patch = serde_json::json!({"metadata": {"ownerReferences": [owner]}});
        if let Err(e) = cms.patch(&input_name, &PatchParams::default(), &Patch::Merge(patch)).await {
            tracing::warn!(job = %name, error = %e, "could not make the job own its input ConfigMap");
        }
    }
    Ok(batch)
}
