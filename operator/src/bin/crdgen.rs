//! Prints the CRD as YAML; `crds/sentimentbatch.yaml` must equal this output.
use kube::CustomResourceExt;

fn main() {
    let crd = kubesentiment_core::crd::SentimentBatch::crd();
    print!("{}", serde_saphyr::to_string(&crd).expect("the CRD serializes. This is a bug."));
}
