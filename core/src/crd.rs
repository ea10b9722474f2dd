//! The `SentimentBatch` custom resource: the record of one batch job.
//!
//! Everything the API server can check is declared here, in the schema and CEL rules,
//! so `kubectl apply` rejects a bad batch before the controller sees it. `crdgen` prints
//! the CRD from these types; `crds/sentimentbatch.yaml` must equal its output.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most texts an inline batch may carry; larger inputs belong in a ConfigMap or S3.
pub const MAX_INLINE_TEXTS: usize = 1000;
/// Longest text, in characters, a batch may carry.
pub const MAX_TEXT_CHARS: usize = 10_000;
/// Longest caller's `id` of a text, so result parts stay bounded.
pub const MAX_ID_CHARS: usize = 256;
/// Most texts one batch may hold, from any source.
pub const MAX_TEXTS: usize = 1_000_000;

/// One batch of texts to classify, from inline texts, a ConfigMap or an S3 object.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kubesentiment.io",
    version = "v1alpha1",
    kind = "SentimentBatch",
    plural = "sentimentbatches",
    shortname = "sb",
    namespaced,
    status = "SentimentBatchStatus",
    printcolumn = r#"{"name":"Priority","type":"string","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.reason"}"#,
    printcolumn = r#"{"name":"Suspend","type":"boolean","jsonPath":".spec.suspend"}"#,
    printcolumn = r#"{"name":"Progress","type":"string","jsonPath":".status.progress"}"#,
    printcolumn = r#"{"name":"Texts","type":"integer","jsonPath":".status.totalTexts"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.failedTexts"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new(IMMUTABLE_ONCE_STARTED)
        .message("spec is immutable once the batch has started, except cancel, suspend and ttlSecondsAfterFinished")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.texts) != has(self.source)").message("set exactly one of spec.texts and spec.source"))]
pub struct SentimentBatchSpec {
    /// The texts themselves, for small batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_INLINE_TEXTS), inner(length(min = 1, max = MAX_TEXT_CHARS)))]
    pub texts: Option<Vec<String>>,
    /// Where to read the texts from, for large batches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<TextSource>,
    #[serde(default)]
    pub priority: Priority,
    /// Seconds from creation until the batch expires. Defaults to, and is capped by, the
    /// operator's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub timeout_seconds: Option<i32>,
    /// Most texts sent to an inference server in one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_batch_size: Option<i32>,
    /// The model the inference pool must serve; the batch fails if it serves another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub model: Option<String>,
    /// Where results go: `s3://bucket/prefix` or `file:///path`. Unset: ConfigMaps owned
    /// by the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('s3://') || self.startsWith('file:///')").message("output must start with s3:// or file:///"))]
    pub output: Option<String>,
    /// Set to stop the batch; results computed so far stay.
    #[serde(default)]
    pub cancel: bool,
    /// Set to hold the batch: a Pending batch is not admitted, a Running one stops
    /// dispatching (chunks in flight finish and are kept). Unset it to resume from the
    /// results committed; the timeout starts again.
    #[serde(default)]
    pub suspend: bool,
    /// Seconds after the batch ends until it is deleted, with what it owns. Unset: the
    /// operator's `finished_ttl_seconds`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
    /// Whom to tell when the batch reaches a final phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
}

/// A completion callback: when the batch reaches a final phase the operator POSTs a
/// CloudEvent (structured JSON) to `url`, signed as Standard Webhooks sign
/// (`webhook-id`, `webhook-timestamp`, `webhook-signature`), at least once, with bounded
/// retries. `status.notification` says how delivery went.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Notify {
    /// `https://…` or `http://…`; the operator's allow-list of hosts and CIDRs decides
    /// whether it may be reached (private and loopback addresses only where allowed).
    #[schemars(length(min = 1, max = MAX_URL_CHARS))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("notify.url must start with https:// or http://"))]
    pub url: String,
    /// A key of a Secret in the batch's namespace: the HMAC-SHA256 key the callback is
    /// signed with (its bytes as stored). Unset: the callback is not signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret_ref: Option<SecretKeyRef>,
}

/// Longest callback URL.
pub const MAX_URL_CHARS: usize = 2048;

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The rule on the whole object: once a batch has a phase other than Pending, every spec
/// field but `cancel`, `suspend` and `ttlSecondsAfterFinished` keeps its value.
const IMMUTABLE_ONCE_STARTED: &str = "!has(oldSelf.status) || !has(oldSelf.status.phase) || oldSelf.status.phase == 'Pending' || \
     (has(self.spec.texts) == has(oldSelf.spec.texts) && (!has(self.spec.texts) || self.spec.texts == oldSelf.spec.texts) && \
     has(self.spec.source) == has(oldSelf.spec.source) && (!has(self.spec.source) || self.spec.source == oldSelf.spec.source) && \
     self.spec.priority == oldSelf.spec.priority && \
     has(self.spec.timeoutSeconds) == has(oldSelf.spec.timeoutSeconds) && (!has(self.spec.timeoutSeconds) || self.spec.timeoutSeconds == oldSelf.spec.timeoutSeconds) && \
     has(self.spec.maxBatchSize) == has(oldSelf.spec.maxBatchSize) && (!has(self.spec.maxBatchSize) || self.spec.maxBatchSize == oldSelf.spec.maxBatchSize) && \
     has(self.spec.model) == has(oldSelf.spec.model) && (!has(self.spec.model) || self.spec.model == oldSelf.spec.model) && \
     has(self.spec.output) == has(oldSelf.spec.output) && (!has(self.spec.output) || self.spec.output == oldSelf.spec.output))";

/// Where a batch's texts live. Exactly one member is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.configMapKeyRef) != has(self.s3)").message("set exactly one of source.configMapKeyRef and source.s3"))]
pub struct TextSource {
    /// A key of a ConfigMap in the batch's namespace holding a JSON array of strings,
    /// JSONL with `text` and optional `id`, or one text per line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<ConfigMapKeyRef>,
    /// An S3 object in one of the same formats. JSONL and lines are streamed and read a
    /// window at a time, at any size; a JSON array is read whole, up to 16 MiB. With an
    /// `endpoint` other than the operator's own, `credentialsSecretRef` is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Source>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ConfigMapKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Source {
    #[schemars(length(min = 1, max = 63))]
    pub bucket: String,
    #[schemars(length(min = 1, max = 1024))]
    pub key: String,
    /// The S3 endpoint URL; unset means AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub region: Option<String>,
    /// A Secret in the batch's namespace with `accessKeyId` and `secretAccessKey`
    /// (and optionally `sessionToken`). Unset: the operator's own credentials, which go
    /// only to AWS, to the operator's own endpoint (`AWS_ENDPOINT`) and to the endpoints
    /// it lists in `KUBESENTIMENT_AMBIENT_S3_ENDPOINTS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SecretRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Scheduling priority; higher levels are served first, with aging.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Medium,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Medium, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }

    /// 0 for high, 2 for low: the order the scheduler serves levels in.
    pub fn level(self) -> usize {
        self as usize
    }
}

/// A batch's lifecycle. Succeeded, Failed, Cancelled and Expired are final.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    #[default]
    Pending,
    Running,
    /// Held by `spec.suspend`: nothing runs; unsetting it resumes the batch.
    Suspended,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
}

impl Phase {
    pub fn is_final(self) -> bool {
        !matches!(self, Phase::Pending | Phase::Running | Phase::Suspended)
    }
}

/// What the operator observed of a batch. Written by server-side apply under one field
/// manager; recomputed from the API and the results store, never a log.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SentimentBatchStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Why the batch is in its phase, in one word: `Succeeded`, `AllItemsFailed`,
    /// `ModelMismatch`, `SourceUnreadable`, `SourceInvalid`, `SourceChanged`,
    /// `ResultsUnwritable`, `DeadlineExceeded`, `Cancelled`, `Suspended`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// What the batch's texts were when it was admitted; a source that differs later
    /// fails the batch with `SourceChanged` rather than mix results of different texts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceIdentity>,
    #[serde(default)]
    pub total_texts: i64,
    #[serde(default)]
    pub processed_texts: i64,
    #[serde(default)]
    pub failed_texts: i64,
    #[serde(default)]
    pub progress_percentage: f64,
    /// `processed/total` for humans and `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_completion_seconds: Option<i64>,
    /// The results manifest once the batch is final; the results prefix while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<Failures>,
    /// How the completion callback (`spec.notify`) went, once the batch is final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<Notification>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A completion callback's delivery.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub state: NotificationState,
    /// The CloudEvent's `id` (and `webhook-id`): the same on every attempt, so a receiver
    /// can drop repeats.
    pub event_id: String,
    pub attempts: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_time: Option<Time>,
    /// The last attempt's outcome in a few words: `HTTP 204 No Content`, `could not
    /// connect`, `refused: …`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
}

/// `Pending` while attempts remain; `Delivered` once a 2xx came back; `Failed` once the
/// attempts are spent or the destination is refused.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NotificationState {
    #[default]
    Pending,
    Delivered,
    Failed,
}

impl NotificationState {
    /// The REST name (`pending`, `delivered`, `failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationState::Pending => "pending",
            NotificationState::Delivered => "delivered",
            NotificationState::Failed => "failed",
        }
    }
}

/// A batch's source as admitted.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceIdentity {
    /// The ConfigMap's resourceVersion or the S3 object's ETag; empty for inline texts.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// The source's size in bytes (inline: the texts' bytes).
    pub bytes: i64,
    /// SHA-256 of the texts (and ids), in order: what is compared.
    pub sha256: String,
}

/// The brief's job summary.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub successful_predictions: i64,
    pub failed_predictions: i64,
    pub success_rate: f64,
    pub sentiment_distribution: BTreeMap<String, i64>,
    pub average_confidence: f64,
}

/// Failed items: how many, a few examples, and where the whole dead-letter list is.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Failures {
    pub count: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<FailureSample>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FailureSample {
    pub index: i64,
    pub error: String,
}

impl SentimentBatch {
    pub fn phase(&self) -> Phase {
        self.status.as_ref().and_then(|s| s.phase).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_wire_names_match_the_brief() {
        for (p, s) in [(Priority::High, "high"), (Priority::Medium, "medium"), (Priority::Low, "low")] {
            assert_eq!(serde_json::to_value(p).unwrap(), s);
            assert_eq!(p.as_str(), s);
        }
        assert!(serde_json::from_value::<Priority>("urgent".into()).is_err());
    }

    #[test]
    fn levels_order_high_first() {
        assert!(Priority::High.level() < Priority::Medium.level() && Priority::Medium.level() < Priority::Low.level());
    }
}
