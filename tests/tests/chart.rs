//! The Helm chart against the real API server: lint (default and every option on), the
//! values schema refusing bad values, server-side dry-run of everything it renders, the
//! alert rules through Prometheus's rule parser, and a real `helm install` whose ServiceAccounts can do
//! exactly what the operator and the facade need (`kubectl auth can-i`, then each run as
//! its ServiceAccount through a whole job); hadolint on the Dockerfiles.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use kubesentiment_tests::stack::{Inference, Proc, install_crds, release_bin};
use kubesentiment_tests::{Cluster, cluster, repo_root};

fn chart() -> PathBuf {
    repo_root().join("charts/kubesentiment")
}

/// helm and rulecheck, built by `scripts/tools.sh` (which `scripts/test.sh` runs).
fn tool(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("KUBESENTIMENT_TOOLS").map(PathBuf::from)?;
    Some(dir.join(name)).filter(|p| p.exists())
}

/// Runs `cmd` with `stdin`; returns (success, stdout, stderr).
fn run(mut cmd: Command, stdin: &str) -> (bool, String, String) {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn helm(cluster: &Cluster, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(tool("helm").expect("helm (scripts/tools.sh)"));
    cmd.env("KUBECONFIG", &cluster.kubeconfig).env("HELM_CACHE_HOME", std::env::temp_dir().join("ks-helm-cache")).args(args);
    run(cmd, "")
}

fn kubectl(cluster: &Cluster, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut cmd = cluster.kubectl();
    cmd.args(args);
    run(cmd, stdin)
}

#[test]
fn the_charts_crds_are_the_generated_ones() {
    let ours = std::fs::read_to_string(repo_root().join("crds/sentimentbatch.yaml")).unwrap();
    let chart = std::fs::read_to_string(chart().join("crds/sentimentbatch.yaml")).unwrap();
    assert!(ours == chart, "charts/kubesentiment/crds/sentimentbatch.yaml differs from crds/: copy it over");
}

#[test]
fn the_dockerfiles_lint_clean() {
    let hadolint = kubesentiment_tests::stack::venv_bin("hadolint").unwrap();
    let lint = |file: &std::path::Path| {
        run(
            {
                let mut c = Command::new(&hadolint);
                c.arg("--no-color").arg(file);
                c
            },
            "",
        )
    };
    for file in ["operator/Dockerfile", "facade/Dockerfile", "inference-server/Dockerfile"] {
        let (ok, out, err) = lint(&repo_root().join(file));
        assert!(ok, "hadolint {file}:\n{out}{err}");
    }
    // The linter does refuse a careless Dockerfile.
    let bad = std::env::temp_dir().join(format!("ks-bad-{}.Dockerfile", std::process::id()));
    std::fs::write(&bad, "FROM ubuntu:latest\nRUN apt-get install curl\n").unwrap();
    let (ok, out, _) = lint(&bad);
    assert!(!ok && out.contains("DL3007"), "{out}");
}

/// The Dockerfiles are what e2e/images/images.go renders, the definition the local
/// cluster's image build follows too; a hand-edited one fails here.
#[test]
fn dockerfiles_are_generated_from_the_image_definitions() {
    let check = |repo: &std::path::Path| {
        let out = Command::new("go")
            .args(["run", ".", "dockerfiles", "--check", "--repo"])
            .arg(repo)
            .current_dir(repo_root().join("e2e/images"))
            .env("GOTOOLCHAIN", "local")
            .output()
            .expect("the Go toolchain");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = check(&repo_root());
    assert!(ok, "{err}");
    // A copy with one edited Dockerfile is refused, naming it.
    let copy = std::env::temp_dir().join(format!("ks-dockerfiles-{}", std::process::id()));
    for dir in ["operator", "facade", "inference-server"] {
        std::fs::create_dir_all(copy.join(dir)).unwrap();
        std::fs::copy(repo_root().join(dir).join("Dockerfile"), copy.join(dir).join("Dockerfile")).unwrap();
    }
    let edited = std::fs::read_to_string(copy.join("facade/Dockerfile")).unwrap().replace("USER 65532:65532", "USER root");
    std::fs::write(copy.join("facade/Dockerfile"), edited).unwrap();
    let (ok, err) = check(&copy);
    assert!(!ok && err.contains("facade/Dockerfile is stale") && !err.contains("operator/Dockerfile"), "{err}");
    std::fs::remove_dir_all(copy).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chart_lints_validates_and_installs() {
    let Some(cluster) = cluster() else { return };
    if tool("helm").is_none() && std::env::var("KUBESENTIMENT_REQUIRE_CLUSTER").as_deref() != Ok("1") {
        eprintln!("skipping: no helm (set KUBESENTIMENT_TOOLS=$(bash scripts/tools.sh))");
        return;
    }
    install_crds(cluster).unwrap();
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let all_on = format!("{chart}/ci/all-on-values.yaml");
    let (ok, _, _) =
        kubectl(cluster, &["apply", "--server-side", "-f", repo_root().join("tests/fixtures/third-party-crds.yaml").to_str().unwrap()], "");
    assert!(ok);
    assert!(
        kubectl(
            cluster,
            &[
                "wait",
                "--for=condition=established",
                "crd/servicemonitors.monitoring.coreos.com",
                "crd/prometheusrules.monitoring.coreos.com",
                "crd/scaledobjects.keda.sh"
            ],
            ""
        )
        .0
    );

    // Lint, with the defaults and with every option on.
    for values in [None, Some(all_on.as_str())] {
        let mut args = vec!["lint", chart, "--strict"];
        if let Some(v) = values {
            args.extend(["-f", v]);
        }
        let (ok, out, err) = helm(cluster, &args);
        assert!(ok, "helm lint {values:?}:\n{out}{err}");
    }

    // The values schema refuses bad values at install time, naming the key.
    for (set, key) in [
        ("operator.replicas=-1", "/operator/replicas"),
        ("inference.modelSource=s3", "/inference/modelSource"),
        ("asyncBatch.max_jobz=1", "max_jobz"),
        ("facade.tenantNamespaces={Team_B}", "/facade/tenantNamespaces/0"),
    ] {
        let (ok, _, err) = helm(cluster, &["template", "ks", chart, "--set", set]);
        assert!(!ok && err.contains(key), "--set {set} was not refused by the schema: {err}");
    }

    // Everything the chart renders, every option on, admitted by the real API server.
    let release_ns = cluster.namespace("chart-dry").await.unwrap();
    let jobs_ns = cluster.namespace("chart-jobs").await.unwrap();
    let jobs = format!("operator.watchNamespace={0},facade.jobsNamespace={0}", jobs_ns.name);
    let (ok, rendered, err) = helm(
        cluster,
        &[
            "template",
            "ks",
            chart,
            "-n",
            &release_ns.name,
            "-f",
            &all_on,
            "--set",
            &jobs,
            "--kube-version",
            "1.36.3",
            "--api-versions",
            "monitoring.coreos.com/v1/ServiceMonitor",
            "--api-versions",
            "monitoring.coreos.com/v1/PrometheusRule",
        ],
    );
    assert!(ok, "helm template: {err}");
    for kind in
        ["ServiceMonitor", "PrometheusRule", "ScaledObject", "Ingress", "NetworkPolicy", "PodDisruptionBudget", "HorizontalPodAutoscaler"]
    {
        let want = kind != "HorizontalPodAutoscaler"; // KEDA replaces the CPU HPA when on
        assert_eq!(rendered.contains(&format!("kind: {kind}\n")), want, "{kind} rendered: {want}");
    }
    let (ok, out, err) = kubectl(cluster, &["apply", "--server-side", "--dry-run=server", "-f", "-"], &rendered);
    assert!(ok, "server-side dry run refused:\n{err}\n{out}");
    assert!(out.lines().count() >= 30, "{out}");

    // The alert rules are valid Prometheus rules.
    let rules = rendered.split("\n---").find(|d| d.contains("kind: PrometheusRule")).unwrap();
    let spec = rules.split_once("\nspec:\n").unwrap().1;
    let spec: String = spec.lines().map(|l| l.strip_prefix("  ").unwrap_or(l)).collect::<Vec<_>>().join("\n");
    // Checked by Prometheus's own rule-file parser (scripts/rulecheck), which refuses a bad one.
    let check = |name: &str, body: &str| {
        let file = std::env::temp_dir().join(format!("ks-{name}-{}.yaml", std::process::id()));
        std::fs::write(&file, body).unwrap();
        let mut c = Command::new(tool("rulecheck").expect("rulecheck (scripts/tools.sh)"));
        c.arg(&file);
        run(c, "")
    };
    let (ok, out, err) = check("rules", &spec);
    assert!(ok && out.contains("SUCCESS: 7 rules found"), "rulecheck:\n{out}{err}");
    let (ok, _, err) = check("bad-rules", &spec.replacen("[5m]))) > 5", "[5m]))) > > 5", 1));
    assert!(!ok && err.contains("parse error"), "a broken expression passed: {err}");

    // A real install with the defaults: the CRD, the Deployments and least-privilege RBAC.
    let ns = cluster.namespace("chart-install").await.unwrap();
    let release = format!("ks{}", std::process::id());
    let tenant_ns = cluster.namespace("chart-tenant").await.unwrap();
    let watch =
        format!("operator.watchNamespace={0},facade.jobsNamespace={0},facade.tenantNamespaces={{{1}}}", jobs_ns.name, tenant_ns.name);
    let (ok, out, err) = helm(cluster, &["install", &release, chart, "-n", &ns.name, "--set", &watch]);
    assert!(ok, "helm install:\n{out}{err}");
    assert!(out.contains("kubectl get sb"), "NOTES.txt: {out}");
    let (ok, deployments, _) = kubectl(cluster, &["-n", &ns.name, "get", "deployments", "-o", "name"], "");
    assert!(ok);
    for d in ["operator", "inference", "facade"] {
        assert!(deployments.contains(&format!("deployment.apps/{release}-{d}")), "{deployments}");
    }
    assert!(kubectl(cluster, &["wait", "--for=condition=established", "crd/sentimentbatches.kubesentiment.io"], "").0);
    let sa = |name: &str| format!("system:serviceaccount:{}:{release}-{name}", ns.name);
    let other = &jobs_ns.name;
    for (who, verb, resource, namespace, allowed) in [
        ("operator", "list", "sentimentbatches.kubesentiment.io", other.as_str(), true),
        ("operator", "watch", "sentimentbatches.kubesentiment.io", other, true),
        ("operator", "patch", "sentimentbatches.kubesentiment.io/status", other, true),
        ("operator", "update", "sentimentbatches.kubesentiment.io/finalizers", other, true),
        ("operator", "create", "configmaps", other, true),
        ("operator", "delete", "configmaps", other, true),
        ("operator", "get", "secrets", other, true),
        ("operator", "create", "events.events.k8s.io", other, true),
        ("operator", "patch", "leases.coordination.k8s.io", &ns.name, true),
        ("operator", "watch", "endpointslices.discovery.k8s.io", &ns.name, true),
        ("operator", "delete", "sentimentbatches.kubesentiment.io", other, true),
        ("operator", "create", "sentimentbatches.kubesentiment.io", other, false),
        ("operator", "list", "secrets", other, false),
        ("operator", "list", "sentimentbatches.kubesentiment.io", &ns.name, false),
        ("operator", "create", "secrets", other, false),
        ("operator", "patch", "leases.coordination.k8s.io", other, false),
        ("operator", "update", "deployments.apps", &ns.name, false),
        ("facade", "create", "sentimentbatches.kubesentiment.io", other, true),
        ("facade", "patch", "sentimentbatches.kubesentiment.io", other, true),
        ("facade", "watch", "sentimentbatches.kubesentiment.io", other, true),
        ("facade", "create", "configmaps", other, true),
        ("facade", "list", "endpointslices.discovery.k8s.io", &ns.name, true),
        ("facade", "delete", "sentimentbatches.kubesentiment.io", other, false),
        ("facade", "update", "configmaps", other, false),
        ("facade", "get", "secrets", other, false),
        ("facade", "list", "secrets", other, false),
        ("facade", "create", "secrets", other, true),
        ("facade", "patch", "sentimentbatches.kubesentiment.io/status", other, false),
        ("facade", "list", "sentimentbatches.kubesentiment.io", &ns.name, false),
        ("facade", "watch", "sentimentbatches.kubesentiment.io", &tenant_ns.name, true),
        ("facade", "create", "configmaps", &tenant_ns.name, true),
        ("facade", "delete", "sentimentbatches.kubesentiment.io", &tenant_ns.name, false),
    ] {
        let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
        let (_, answer, _) =
            kubectl(cluster, &["auth", "can-i", verb, resource, &format!("--subresource={sub}"), "-n", namespace, "--as", &sa(who)], "");
        let want = if allowed { "yes" } else { "no" };
        assert_eq!(answer.trim(), want, "can the {who} {verb} {resource}/{sub} in {namespace}?");
    }
    // And it is enough: an operator running as that ServiceAccount runs a batch to the end.
    let kubeconfig = cluster.service_account_kubeconfig(&ns.name, &format!("{release}-operator")).unwrap();
    let inference = Inference::start(&[]).unwrap();
    let slice = serde_json::json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{release}-inference-local"), "labels": {"kubernetes.io/service-name": format!("{release}-inference")}},
        "addressType": "FQDN", "ports": [{"name": "http", "port": inference.port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["inference-0.localhost"], "conditions": {"ready": true}}]});
    assert!(kubectl(cluster, &["-n", &ns.name, "apply", "-f", "-"], &slice.to_string()).0);
    let mut cmd = Command::new(release_bin("kubesentiment-operator"));
    cmd.env("KUBECONFIG", &kubeconfig).args([
        "--watch-namespace",
        other,
        "--inference-service",
        &format!("{}/{release}-inference", ns.name),
    ]);
    cmd.args(["--lease-namespace", &ns.name, "--lease-duration-seconds", "4", "--host", "127.0.0.1", "--port", "0"]);
    let mut operator = Proc::spawn("chart-operator", cmd).unwrap();
    operator.wait_for("leading as ", std::time::Duration::from_secs(30)).unwrap();
    let batch = serde_json::json!({"apiVersion": "kubesentiment.io/v1alpha1", "kind": "SentimentBatch", "metadata": {"name": "rbac"},
        "spec": {"texts": ["Works with least privilege.", "Nothing was refused."]}});
    assert!(kubectl(cluster, &["-n", other, "apply", "-f", "-"], &batch.to_string()).0);
    let (ok, _, err) =
        kubectl(cluster, &["-n", other, "wait", "--for=jsonpath={.status.phase}=Succeeded", "sb/rbac", "--timeout=120s"], "");
    assert!(ok, "{err}\noperator log:\n{}", operator.output());
    assert!(!operator.output().contains("forbidden"), "{}", operator.output());

    // The same for the facade: submit over REST (ids, so the input goes to a ConfigMap),
    // follow, read results and classify synchronously, as its ServiceAccount.
    let kubeconfig = cluster.service_account_kubeconfig(&ns.name, &format!("{release}-facade")).unwrap();
    let mut cmd = Command::new(release_bin("kubesentiment-facade"));
    cmd.env("KUBECONFIG", &kubeconfig).env_remove("KUBESENTIMENT_API_KEYS");
    cmd.args([
        "--namespace",
        other,
        "--inference-service",
        &format!("{}/{release}-inference", ns.name),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]);
    let mut facade = Proc::spawn("chart-facade", cmd).unwrap();
    let api = format!("http://{}", facade.wait_for("listening on ", std::time::Duration::from_secs(30)).unwrap());
    let http = reqwest::Client::new();
    let submit = serde_json::json!({"texts": [{"text": "Great service.", "custom_id": "a"}, {"text": "Dreadful.", "custom_id": "b"}]});
    let job: serde_json::Value = http.post(format!("{api}/api/v1/batch/predict")).json(&submit).send().await.unwrap().json().await.unwrap();
    let id = job["job_id"].as_str().unwrap_or_else(|| panic!("{job}\n{}", facade.output())).to_string();
    let status = kubesentiment_tests::eventually(std::time::Duration::from_secs(120), "the REST job to complete", || {
        let (http, url) = (http.clone(), format!("{api}/api/v1/batch/status/{id}"));
        async move {
            let s: serde_json::Value = http.get(url).send().await?.json().await?;
            Ok((s["status"] == "completed").then_some(s))
        }
    })
    .await
    .unwrap();
    assert_eq!(status["processed_texts"], 2);
    let page: serde_json::Value = http.get(format!("{api}/api/v1/batch/results/{id}")).send().await.unwrap().json().await.unwrap();
    let ids: Vec<_> = page["results"].as_array().unwrap().iter().map(|r| r["custom_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, ["a", "b"], "{page}");
    let sync = http.post(format!("{api}/api/v1/predict")).json(&serde_json::json!({"texts": ["Fine."]})).send().await.unwrap();
    assert_eq!(sync.status(), 200);
    assert!(!facade.output().contains("forbidden"), "{}", facade.output());

    // Keys that name namespaces (one the jobs namespace, one a tenant's): a watch in each,
    // which the Roles allow; each key sees its own jobs only.
    let mut cmd = Command::new(release_bin("kubesentiment-facade"));
    cmd.env("KUBECONFIG", &kubeconfig).env("KUBESENTIMENT_API_KEYS", format!("team-a-key-01={other},team-b-key-02={}", tenant_ns.name));
    cmd.args(["--inference-service", &format!("{}/{release}-inference", ns.name), "--host", "127.0.0.1", "--port", "0"]);
    let mut tenants = Proc::spawn("chart-facade-tenants", cmd).unwrap();
    let api = format!("http://{}", tenants.wait_for("listening on ", std::time::Duration::from_secs(30)).unwrap());
    let submit = serde_json::json!({"texts": ["A tenant's text."]});
    let answer = http.post(format!("{api}/api/v1/batch/predict")).bearer_auth("team-b-key-02").json(&submit).send().await.unwrap();
    assert_eq!(answer.status(), 202, "{}", tenants.output());
    let job: serde_json::Value = answer.json().await.unwrap();
    let id = job["job_id"].as_str().unwrap();
    assert!(kubectl(cluster, &["-n", &tenant_ns.name, "get", "sb", id], "").0, "the job is in the tenant's namespace");
    let status = |key: &'static str| http.get(format!("{api}/api/v1/batch/status/{id}")).bearer_auth(key).send();
    assert_eq!(status("team-b-key-02").await.unwrap().status(), 200);
    assert_eq!(status("team-a-key-01").await.unwrap().status(), 404, "another tenant's job");
    assert!(!tenants.output().contains("forbidden"), "{}", tenants.output());

    // The generated API key is kept across an upgrade.
    let key =
        || kubectl(cluster, &["-n", &ns.name, "get", "secret", &format!("{release}-api-keys"), "-o", "jsonpath={.data.api-keys}"], "").1;
    let before = key();
    assert!(!before.is_empty());
    let (ok, _, err) = helm(cluster, &["upgrade", &release, chart, "-n", &ns.name]);
    assert!(ok, "helm upgrade: {err}");
    assert_eq!(key(), before);
    let (ok, _, err) = helm(cluster, &["uninstall", &release, "-n", &ns.name]);
    assert!(ok, "helm uninstall: {err}");
}
