//! Prints the CRDs as YAML; `crds/sentimentbatch.yaml` must equal this output.
use kube::CustomResourceExt;

fn main() {
    print!("{}", serde_yaml::to_string(&kubesentiment_operator::crd::SentimentBatch::crd()).expect("the CRD serializes. This is a bug."));
}
