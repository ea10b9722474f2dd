//! Real processes for black-box tests: inference servers on port 0 registered through a
//! Service's EndpointSlices, operators scoped to one test's namespace, REST facades, and
//! a moto S3 server. Each is killed when its handle drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::{Cluster, TestNamespace, repo_root};

/// A binary of this workspace's release build (`cargo build --release` ran first).
pub fn release_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("a test knows its own path");
    // target/release/deps/<test> → target/release/<name>
    exe.parent().and_then(Path::parent).expect("tests run from target/<profile>/deps").join(name)
}

/// A child process with its output in a log file; killed on drop.
pub struct Proc {
    child: Child,
    pub log: PathBuf,
    /// It leads its own process group, which is killed with it.
    group: bool,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Proc> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!("ks-{name}-{}-{n}.log", std::process::id()));
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .env("RUST_BACKTRACE", "0")
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc { child, log, group: false })
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds a line containing `needle`; returns the rest of that line.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.output().lines().find_map(|l| l.split_once(needle).map(|(_, rest)| rest.trim().to_string())) {
                return Ok(line);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("exited ({status}) before printing {needle:?}:\n{}", self.output());
            }
            if Instant::now() > deadline {
                bail!("no {needle:?} within {timeout:?}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resident memory now and at its peak (`VmRSS`, `VmHWM`), in bytes.
    pub fn memory(&self) -> Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib = |key: &str| -> Result<u64> {
            let line = status.lines().find(|l| l.starts_with(key)).with_context(|| format!("{key} in /proc/PID/status"))?;
            Ok(line.split_whitespace().nth(1).context("a number")?.parse::<u64>()? * 1024)
        };
        Ok((kib("VmRSS:")?, kib("VmHWM:")?))
    }

    /// The HTTP base URL the process logged (`listening on ADDR`), if it has.
    pub fn url(&self) -> Option<String> {
        let log = self.output();
        let addr = log.split("listening on ").nth(1)?.split_whitespace().next()?;
        Some(format!("http://{}", addr.trim_start_matches("http://")))
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success(), "kill -{signal} {}", self.child.id());
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if self.group {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An inference server on a free port.
pub struct Inference {
    pub proc: Proc,
    pub port: u16,
}

impl Inference {
    pub fn start(extra: &[&str]) -> Result<Inference> {
        let mut cmd = Command::new(release_bin("inference-server"));
        cmd.args(["serve", "--host", "127.0.0.1", "--port", "0"]).args(extra);
        let mut proc = Proc::spawn("inference", cmd)?;
        let url = proc.wait_for("listening on http://", Duration::from_secs(60))?;
        let port = url.rsplit(':').next().and_then(|p| p.parse().ok()).context("a port in the listening line")?;
        Ok(Inference { proc, port })
    }

    /// An inference server on one intra-op thread, for tests whose batches must outlast
    /// a deadline ([`crate::OUTLASTING`]).
    pub fn one_thread() -> Result<Inference> {
        Self::start(&["--intra-threads", "1"])
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An inference server on one fixed free port, started again whenever it exits, as
    /// a kubelet restarts a crashed container. Dropping it kills the supervisor and the
    /// server (one process group).
    pub fn supervised(extra: &[&str]) -> Result<Inference> {
        use std::os::unix::process::CommandExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(r#"while :; do "$0" serve --host 127.0.0.1 --port "$1" "${@:2}"; echo "supervisor: exited ($?), restarting"; sleep 0.2; done"#)
            .arg(release_bin("inference-server"))
            .arg(port.to_string())
            .args(extra)
            .process_group(0);
        let mut proc = Proc::spawn("inference-supervised", cmd)?;
        proc.group = true;
        proc.wait_for("listening on http://", Duration::from_secs(60))?;
        Ok(Inference { proc, port })
    }

    /// How often a supervised server was restarted.
    pub fn restarts(&self) -> usize {
        self.proc.output().matches("supervisor: exited").count()
    }

    /// Texts this server has run through the model (the sum of its batch sizes).
    pub async fn texts_inferred(&self) -> Result<f64> {
        let page = reqwest::get(format!("{}/metrics", self.url())).await?.text().await?;
        Ok(inference_api::metric_sums(&page).get("inference_batch_size_sum").copied().unwrap_or(0.0))
    }
}

/// Registers `servers` as the endpoints of Service `inference-server` in `ns`, one
/// EndpointSlice each, as `e2e/up.sh` does (`inference-N.localhost` names).
pub async fn register(ns: &TestNamespace, ports: &[u16]) -> Result<()> {
    let pp = PatchParams::apply("kubesentiment-tests").force();
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "inference-server"},
        "spec": {"ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}});
    ns.api::<Service>().patch("inference-server", &pp, &Patch::Apply(svc)).await?;
    for (i, port) in ports.iter().enumerate() {
        let name = format!("inference-server-{i}");
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "inference-server"}},
            "addressType": "FQDN",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [format!("inference-{i}.localhost")], "conditions": {"ready": true}}]});
        ns.api::<EndpointSlice>().patch(&name, &pp, &Patch::Apply(slice)).await?;
    }
    Ok(())
}

/// Installs the CRD from `crds/` (idempotent) and waits until it is established.
pub fn install_crds(cluster: &Cluster) -> Result<()> {
    static DONE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = DONE.lock().expect("the lock is never poisoned");
    if *done {
        return Ok(());
    }
    let crds = repo_root().join("crds/sentimentbatch.yaml");
    for args in [
        vec!["apply".to_string(), "--server-side".into(), "--force-conflicts".into(), "-f".into(), crds.display().to_string()],
        vec![
            "wait".into(),
            "--for".into(),
            "condition=established".into(),
            "--timeout=60s".into(),
            "-f".into(),
            crds.display().to_string(),
        ],
    ] {
        let out = cluster.kubectl().args(&args).output()?;
        if !out.status.success() {
            bail!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    *done = true;
    Ok(())
}

/// An operator watching only `ns`, with its own lease there; completion callbacks may go
/// to loopback, as in the local stack.
pub fn operator(cluster: &Cluster, ns: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Proc> {
    let mut cmd = Command::new(release_bin("kubesentiment-operator"));
    cmd.env("KUBECONFIG", &cluster.kubeconfig)
        .env_remove("ASYNC_BATCH_MAX_JOBS")
        // As the local stack: callbacks may also go to this machine's loopback.
        .env("KUBESENTIMENT_CALLBACK_ALLOW", "public,127.0.0.0/8,::1/128")
        .args(["--watch-namespace", ns, "--inference-service", &format!("{ns}/inference-server"), "--host", "127.0.0.1", "--port", "0"])
        .args(args);
    if !args.contains(&"--lease-duration-seconds") {
        // Short, so that failover tests take seconds.
        cmd.args(["--lease-duration-seconds", "4"]);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut proc = Proc::spawn("operator", cmd)?;
    proc.wait_for("listening on ", Duration::from_secs(30))?;
    Ok(proc)
}

/// A REST facade whose unkeyed jobs live in `ns`, on a free port; returns once it is
/// ready, with its base URL.
pub async fn facade(cluster: &Cluster, ns: &str, args: &[&str], env: &[(&str, &str)]) -> Result<(Proc, String)> {
    let mut cmd = Command::new(release_bin("kubesentiment-facade"));
    cmd.env("KUBECONFIG", &cluster.kubeconfig)
        .env_remove("KUBESENTIMENT_API_KEYS")
        .env_remove("KUBESENTIMENT_RATE_LIMIT_PER_MINUTE")
        .args(["--namespace", ns, "--inference-service", &format!("{ns}/inference-server"), "--host", "127.0.0.1", "--port", "0"])
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut proc = Proc::spawn("facade", cmd)?;
    let addr = proc.wait_for("listening on ", Duration::from_secs(30))?;
    let url = format!("http://{addr}");
    crate::eventually(Duration::from_secs(30), "the facade to be ready", || {
        let ready = format!("{url}/health/ready");
        async move { Ok(reqwest::get(ready).await.ok().filter(|r| r.status().is_success()).map(|_| ())) }
    })
    .await?;
    Ok((proc, url))
}

/// A program of the Python venv `scripts/setup.sh` installs (moto, pytest, the client's
/// dependencies).
pub fn venv_bin(name: &str) -> Result<PathBuf> {
    let home = std::env::var_os("KUBESENTIMENT_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/kubesentiment"));
    let bin = home.join("venv/bin").join(name);
    if !bin.exists() {
        bail!("{} is missing: run scripts/setup.sh", bin.display());
    }
    Ok(bin)
}

/// moto's S3 server (from the venv `scripts/setup.sh` installs) on a free port.
pub struct S3 {
    pub proc: Proc,
    pub endpoint: String,
}

impl S3 {
    pub async fn start() -> Result<S3> {
        let moto = venv_bin("moto_server")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = Command::new(moto);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let proc = Proc::spawn("moto", cmd)?;
        let endpoint = format!("http://127.0.0.1:{port}");
        crate::eventually(Duration::from_secs(30), "moto to answer", || {
            let url = endpoint.clone();
            async move { Ok(reqwest::get(url).await.ok().map(|_| ())) }
        })
        .await?;
        Ok(S3 { proc, endpoint })
    }

    /// Unsigned requests: moto's server mode does not check signatures.
    pub async fn put(&self, path: &str, body: impl Into<reqwest::Body>) -> Result<()> {
        let r = reqwest::Client::new().put(format!("{}/{path}", self.endpoint)).body(body).send().await?;
        if !r.status().is_success() {
            bail!("PUT {path}: {}", r.status());
        }
        Ok(())
    }

    /// A signed GET of `bucket/key`, as a client holding the credentials reads results.
    pub async fn get_signed(&self, path: &str) -> Result<String> {
        use object_store::ObjectStoreExt;
        let (bucket, key) = path.split_once('/').context("bucket/key")?;
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(bucket)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()?;
        let bytes = store.get(&object_store::path::Path::from(key)).await?.bytes().await?;
        Ok(String::from_utf8(bytes.to_vec())?)
    }

    /// The environment an operator needs to write `s3://` outputs here.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

/// A test namespace with an inference server, an operator (optional) and a facade.
pub struct Stack {
    pub cluster: &'static Cluster,
    pub ns: TestNamespace,
    pub inference: Inference,
    pub operator: Option<Proc>,
    pub facade: Proc,
    /// The facade's base URL.
    pub url: String,
}

impl Stack {
    /// `None` when no control plane is configured (the test is then skipped).
    pub async fn start(prefix: &str, with_operator: bool, facade_args: &[&str], facade_env: &[(&str, &str)]) -> Option<Stack> {
        let cluster = crate::cluster()?;
        install_crds(cluster).unwrap();
        let ns = cluster.namespace(prefix).await.unwrap();
        let inference = Inference::start(&[]).unwrap();
        register(&ns, &[inference.port]).await.unwrap();
        let operator = with_operator.then(|| operator(cluster, &ns.name, &[], &[]).unwrap());
        let (facade, url) = facade(cluster, &ns.name, facade_args, facade_env).await.unwrap();
        Some(Stack { cluster, ns, inference, operator, facade, url })
    }

    /// The operator's HTTP base URL (metrics, health), from its log.
    pub fn operator_url(&self) -> Option<String> {
        self.operator.as_ref()?.url()
    }
}
