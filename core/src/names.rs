//! Every name the programs agree on when they write to the API server: the field
//! manager, labels, annotations and the finalizer. Condition types live with the rest of
//! status, in [`crate::status`].

/// The field manager of everything the operator writes, and the reporter of its Events.
pub const MANAGER: &str = "kubesentiment-operator";
/// The finalizer that lets the operator stop work and clean up non-owned outputs.
pub const FINALIZER: &str = "kubesentiment.io/cleanup";

/// Label on every result ConfigMap: the UID of its batch.
pub const BATCH_UID_LABEL: &str = "kubesentiment.io/batch-uid";
/// Label on every result ConfigMap: what it holds (`part`, `failures`, `manifest`).
pub const RESULTS_KIND_LABEL: &str = "kubesentiment.io/results";
/// Label on an input ConfigMap: the job it holds texts for.
pub const JOB_LABEL: &str = "kubesentiment.io/job";
/// Label that marks a job as a REST tenant's: the first 16 hex digits of its key's SHA-256.
pub const TENANT_LABEL: &str = "kubesentiment.io/tenant";
/// Label on every SentimentBatch a `kubesentiment-bench --via kube` run creates.
pub const BENCH_RUN_LABEL: &str = "kubesentiment.io/bench-run";

/// Annotation naming the client kind that created a job (`rest`, `bench`).
pub const SUBMITTED_BY: &str = "kubesentiment.io/submitted-by";
/// A namespace's weight in the fair shares of its priority level (a positive number;
/// default 1).
pub const WEIGHT_ANNOTATION: &str = "kubesentiment.io/weight";
/// Set this annotation on a finished batch to compute its failed items again.
pub const RETRY_FAILED: &str = "kubesentiment.io/retry-failed";
