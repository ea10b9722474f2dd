//! The checked-in CRD is exactly what `crdgen` prints from the Rust types.

use kube::CustomResourceExt;
use kubesentiment_core::crd::SentimentBatch;

#[test]
fn checked_in_crd_matches_the_types() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/sentimentbatch.yaml");
    let checked_in = std::fs::read_to_string(&path).unwrap();
    let generated = serde_saphyr::to_string(&SentimentBatch::crd()).unwrap();
    assert!(
        checked_in == generated,
        "crds/sentimentbatch.yaml is stale; regenerate it with `cargo run -p kubesentiment-operator --bin crdgen > crds/sentimentbatch.yaml`"
    );
}
