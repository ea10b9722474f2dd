//! Every name the programs agree on when they write to the API server: the field
//! manager, labels, annotations and the finalizer. Condition types live with the rest of
//! status, in [`crate::status`].

/// The field manager of everything the operator writes, and the reporter of its Events.
pub const MANAGER: &str = "kubesentiment-operator";
/// The finalizer of batches whose results are outside the cluster (`s3://`, `file://`):
/// the operator deletes them before the batch goes.
pub const FINALIZER: &str = "kubesentiment.io/cleanup";

/// Label on every result ConfigMap: the UID of its batch.
pub const BATCH_UID_LABEL: &str = "kubesentiment.io/batch-uid";
/// Label on every result ConfigMap: what it holds (`part`, `failures`, `manifest`, or
/// `manifest-part`: a manifest with its only part).
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
/// Prefix of the annotations that hold a REST job's `metadata`: key `k` is the annotation
/// `meta.kubesentiment.io/k`.
pub const METADATA_PREFIX: &str = "meta.kubesentiment.io/";
/// Most `metadata` entries on one job, and their longest key and value (OpenAI's batch
/// API allows the same).
pub const MAX_METADATA: usize = 16;
pub const MAX_METADATA_KEY: usize = 63;
pub const MAX_METADATA_VALUE: usize = 512;

/// [`is_metadata_key`] as a regular expression, for the OpenAPI document.
pub const METADATA_KEY_PATTERN: &str = "^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$";

/// Whether `key` can name a `metadata` entry: an annotation name (alphanumerics, `-`,
/// `_` and `.`, starting and ending alphanumeric, at most 63 characters).
pub fn is_metadata_key(key: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    key.len() <= MAX_METADATA_KEY
        && edge(key.chars().next())
        && edge(key.chars().last())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A job's `metadata`, read back from its annotations.
pub fn metadata_of(annotations: &std::collections::BTreeMap<String, String>) -> std::collections::BTreeMap<String, String> {
    annotations.iter().filter_map(|(k, v)| Some((k.strip_prefix(METADATA_PREFIX)?.to_string(), v.clone()))).collect()
}

/// Set this annotation on a finished batch to compute its failed items again.
pub const RETRY_FAILED: &str = "kubesentiment.io/retry-failed";

/// Whether `name` can name a namespaced resource (a DNS-1123 subdomain, as the API
/// server requires): checked before a client's job id reaches the API server, where an
/// impossible name is simply a job that does not exist.
pub fn is_resource_name(name: &str) -> bool {
    let label = |l: &str| {
        let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        edge(l.chars().next()) && edge(l.chars().last()) && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    name.len() <= 253 && name.split('.').all(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_keys_are_annotation_names() {
        for ok in ["a", "run-1", "A_b.c", &"k".repeat(63)] {
            assert!(is_metadata_key(ok), "{ok}");
        }
        for bad in ["", "-a", "a.", "a/b", "a b", "ü", &"k".repeat(64)] {
            assert!(!is_metadata_key(bad), "{bad}");
        }
    }

    #[test]
    fn resource_names_are_dns_subdomains() {
        for ok in ["a", "0", "job-1", "9c1b2e4e-7f0a-4c1d-9a8b-0d3c2e1f4a5b", "a.b-c.d", &"a".repeat(253)] {
            assert!(is_resource_name(ok), "{ok}");
        }
        let long = "a".repeat(254);
        for bad in ["", "-a", "a-", "A", "a_b", "a..b", ".a", "a.", "7%15%F4%82%98%AD", "ü", "a b", "a/b", &long] {
            assert!(!is_resource_name(bad), "{bad}");
        }
    }
}
