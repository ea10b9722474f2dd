//! `e2e/up.sh` and `e2e/down.sh` as a user runs them: the stack comes up, the inference
//! server is found through its EndpointSlice, the example batch succeeds through the
//! operator, a killed server is restarted like a Deployment's pod, and `down.sh` leaves
//! no process behind.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kubesentiment_tests::{controlplane_bin, eventually};

fn e2e() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("e2e")
}

fn script(name: &str, state: &Path) -> Command {
    let mut c = Command::new("bash");
    c.arg(e2e().join(name))
        .env("KUBESENTIMENT_STATE", state)
        .env("KUBESENTIMENT_PREBUILT", "1")
        .env_remove("KUBECONFIG")
        .env_remove("KUBESENTIMENT_API_KEYS");
    c
}

fn alive(pid: &str) -> bool {
    Path::new("/proc").join(pid.trim()).exists()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test]
async fn up_registers_restarts_and_down_cleans_up() {
    if controlplane_bin().is_err() && std::env::var("KUBESENTIMENT_REQUIRE_CLUSTER").as_deref() != Ok("1") {
        eprintln!("skipping: the control plane cannot be built here");
        return;
    }
    let state = std::env::temp_dir().join(format!("ks-stack-{}", std::process::id()));
    let up = script("up.sh", &state).output().unwrap();
    // A failed assertion below still takes the stack down.
    let _down = TakeDown(state.clone());
    assert!(up.status.success(), "up.sh failed: {}", String::from_utf8_lossy(&up.stderr));
    let env = read(&state.join("env"));
    let var = |name: &str| {
        env.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .unwrap_or_else(|| panic!("{name} in env"))
            .trim_matches('"')
            .to_string()
    };
    let kubectl = |args: &[&str]| {
        let out = Command::new(var("KUBECTL")).env("KUBECONFIG", var("KUBECONFIG")).args(args).output().unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };

    // Found the way the operator finds it: the Service's EndpointSlice.
    let port = kubectl(&[
        "-n",
        "kubesentiment-system",
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=inference-server",
        "-o",
        "jsonpath={.items[0].ports[0].port}",
    ]);
    let url = format!("http://127.0.0.1:{port}");
    assert_eq!(var("INFERENCE_URLS"), url);
    assert_eq!(status_of(&format!("{url}/health/ready")), 200);

    // kill -9: the supervisor starts a new process on the same port, and the pid file follows.
    let pid_file = state.join("inference-0.pid");
    let old = read(&pid_file);
    assert!(Command::new("kill").args(["-9", old.trim()]).status().unwrap().success());
    let new = eventually(Duration::from_secs(60), "a restarted inference server", || {
        let (pid_file, old, url) = (pid_file.clone(), old.clone(), url.clone());
        async move {
            let pid = read(&pid_file);
            Ok((pid != old && !pid.is_empty() && status_of(&format!("{url}/health/ready")) == 200).then_some(pid))
        }
    })
    .await
    .unwrap();
    assert!(alive(&new) && !alive(&old));

    // The operator runs the example batch to Succeeded, with results where its status says.
    kubectl(&["apply", "-f", e2e().join("examples").to_str().unwrap()]);
    kubectl(&["wait", "--for=jsonpath={.status.phase}=Succeeded", "sentimentbatch/brief", "--timeout=180s"]);
    let location = kubectl(&["get", "sb", "brief", "-o", "jsonpath={.status.resultsLocation}"]);
    assert_eq!(location, "configmap://default/brief-results");
    let manifest = kubectl(&["get", "configmap", "brief-results", "-o", "jsonpath={.data.manifest\\.json}"]);
    assert!(manifest.contains("\"totalTexts\": 3"), "{manifest}");
    // A batch of one chunk has its one part in its manifest's ConfigMap (#17).
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(manifest["parts"][0]["location"], "configmap://default/brief-results", "{manifest}");
    let part = kubectl(&["get", "configmap", "brief-results", "-o", "jsonpath={.data.results\\.jsonl}"]);
    let labels: Vec<_> = part.lines().map(|l| l.split("\"label\":\"").nth(1).unwrap().split('"').next().unwrap()).collect();
    assert_eq!(labels, ["POSITIVE", "NEGATIVE", "NEUTRAL"]);

    // The same job over the REST facade up.sh started.
    let api = var("KUBESENTIMENT_API");
    let status: serde_json::Value = reqwest::get(format!("{api}/api/v1/batch/status/brief")).await.unwrap().json().await.unwrap();
    assert_eq!((status["status"].as_str(), status["processed_texts"].as_i64()), (Some("completed"), Some(3)), "{status}");

    let pids: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pid"))
        .map(|p| read(&p))
        .collect();
    assert!(pids.len() >= 7, "control plane, inference server, operator, facade and their supervisors: {pids:?}");
    let down = script("down.sh", &state).output().unwrap();
    assert!(down.status.success());
    for pid in &pids {
        assert!(!alive(pid), "pid {pid} survived down.sh");
    }
    std::fs::remove_dir_all(&state).unwrap();
}

/// Runs `down.sh` on the stack in this state directory when dropped (a second run, after
/// the test's own, finds nothing to stop).
struct TakeDown(PathBuf);

impl Drop for TakeDown {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = script("down.sh", &self.0).output();
        }
    }
}

/// Status code of a GET (by curl, as a user would), or 0 when nothing answers.
fn status_of(url: &str) -> u16 {
    let out = Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}
