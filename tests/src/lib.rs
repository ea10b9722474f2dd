//! Test harness: a real Kubernetes API server for integration tests, and a fresh
//! namespace per test.
//!
//! [`cluster`] uses `KUBECONFIG` when it is set (as `scripts/test.sh` does, starting one
//! control plane for the whole run); otherwise it builds and starts the local control
//! plane of `e2e/` once per test process, which stops when the process exits.
//!
//! Without the Go toolchain the control plane cannot be built: [`cluster`] then returns
//! `None` after printing one line, and the caller skips. With
//! `KUBESENTIMENT_REQUIRE_CLUSTER=1` (set by CI) it panics instead, so CI never passes on
//! skipped tests.

pub mod apiserver;
pub mod batches;
pub mod stack;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// A running API server and the kubectl built from the same release.
#[derive(Debug)]
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the repository. This is a bug.").to_path_buf()
}

/// The shared cluster of this test process, or `None` (after saying why) when it cannot
/// be had and is not required.
pub fn cluster() -> Option<&'static Cluster> {
    CLUSTER
        .get_or_init(|| match start() {
            Ok(c) => Some(c),
            Err(e) if std::env::var("KUBESENTIMENT_REQUIRE_CLUSTER").is_ok_and(|v| v == "1") => {
                panic!("a control plane is required (KUBESENTIMENT_REQUIRE_CLUSTER=1): {e:#}")
            }
            Err(e) => {
                eprintln!("skipping: no Kubernetes control plane: {e:#}");
                None
            }
        })
        .as_ref()
}

/// The directory `e2e/build.sh` built the control plane into (building it if need be).
pub fn controlplane_bin() -> Result<PathBuf> {
    let out =
        Command::new("bash").arg(repo_root().join("e2e/build.sh")).stderr(Stdio::inherit()).output().context("running e2e/build.sh")?;
    match out.status.code() {
        Some(0) => Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim())),
        Some(3) => bail!("the Go toolchain is missing, so the control plane cannot be built"),
        _ => bail!("e2e/build.sh failed ({})", out.status),
    }
}

fn start() -> Result<Cluster> {
    if let Some(kubeconfig) = std::env::var_os("KUBECONFIG").map(PathBuf::from) {
        let kubectl = match std::env::var_os("KUBECTL") {
            Some(k) => PathBuf::from(k),
            None => controlplane_bin()?.join("kubectl"),
        };
        return Ok(Cluster { kubeconfig, kubectl });
    }
    let bin = controlplane_bin()?;
    let state = std::env::temp_dir().join(format!("kubesentiment-cp-{}", std::process::id()));
    let log = std::fs::File::create(std::env::temp_dir().join(format!("kubesentiment-cp-{}.log", std::process::id())))?;
    let mut child = Command::new(bin.join("controlplane"))
        .arg("--state")
        .arg(&state)
        .arg("--exit-with-parent")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("starting the control plane")?;
    let stdout = child.stdout.take().expect("stdout is piped. This is a bug.");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    if !line.starts_with("ready") {
        bail!("the control plane did not start (state in {}): {line}", state.display());
    }
    // The child outlives this handle: it exits when this process does (--exit-with-parent).
    std::mem::forget(child);
    Ok(Cluster { kubeconfig: state.join("kubeconfig"), kubectl: bin.join("kubectl") })
}

impl Cluster {
    pub async fn client(&self) -> Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Client::try_from(config)?)
    }

    /// A `kubectl` command pointed at this cluster.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// A kubeconfig that acts as ServiceAccount `name` of `namespace` (a fresh token), to
    /// run a component with exactly the RBAC it would have in a pod.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let out = self.kubectl().args(["-n", namespace, "create", "token", name]).output()?;
        anyhow::ensure!(out.status.success(), "kubectl create token: {}", String::from_utf8_lossy(&out.stderr));
        let token = String::from_utf8(out.stdout)?;
        let path = std::env::temp_dir().join(format!("ks-{namespace}-{name}.kubeconfig"));
        std::fs::copy(&self.kubeconfig, &path)?;
        for args in [
            vec!["set-credentials".to_string(), "sa".into(), format!("--token={}", token.trim())],
            vec!["set-context".into(), "--current".into(), "--user=sa".into()],
        ] {
            let out = self.kubectl().env("KUBECONFIG", &path).arg("config").args(&args).output()?;
            anyhow::ensure!(out.status.success(), "kubectl config {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(path)
    }

    /// A fresh namespace `prefix-<unique>` and a client for it.
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        let client = self.client().await?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
        let name = format!("{prefix}-{}-{nanos:08x}", std::process::id());
        let ns = Namespace { metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() }, ..Default::default() };
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
        Ok(TestNamespace { name, client })
    }
}

/// A namespace of one test.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
}

impl TestNamespace {
    /// A namespaced API for `K` in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub async fn delete(self) -> Result<()> {
        Api::<Namespace>::all(self.client).delete(&self.name, &DeleteParams::default()).await?;
        Ok(())
    }
}

/// Polls `check` until it yields `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Texts of a batch that has to be still running at a deadline a few seconds away (a
/// timeout, a cancel): one single-threaded inference server ([`Inference::one_thread`])
/// needs several times that for them on a fast CPU, and they fit a ConfigMap (about
/// 780 KB). 3,000 once did, until a faster model finished them inside 3 s.
pub const OUTLASTING: usize = 12_000;

/// Distinct, realistic review sentences (distinct so no result cache can help).
pub fn texts(n: usize, tag: &str) -> Vec<String> {
    const SHAPES: [&str; 4] = [
        "I love this product {}, it works great and arrived early.",
        "Terrible experience with order {}; it broke after a day.",
        "The package {} was fine, nothing special about it.",
        "Absolutely wonderful service for ticket {}, thank you!",
    ];
    (0..n).map(|i| SHAPES[i % 4].replace("{}", &format!("{tag}-{i}"))).collect()
}
