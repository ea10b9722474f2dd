//! Test helpers: the assets `scripts/setup.sh` installs, real models, and a real server
//! on port 0 per test.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use inference_server::http::{self, RequestLimits};
use inference_server::infer::{BatcherConfig, Workers};
use inference_server::model::Model;
use inference_server::model::files::ModelFiles;
use inference_server::model::onnx::RuntimeConfig;
use tokio::sync::oneshot;

/// `$KUBESENTIMENT_HOME`, or `~/.cache/kubesentiment`; panics if setup has not run.
pub fn assets() -> PathBuf {
    let home = std::env::var_os("KUBESENTIMENT_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").expect("HOME is set")).join(".cache/kubesentiment"));
    assert!(home.join("onnxruntime").is_dir(), "no assets in {}: run `bash scripts/setup.sh` first", home.display());
    home
}

pub fn test_model_dir(name: &str) -> PathBuf {
    assets().join("models/test").join(name)
}

pub fn builtin_dir() -> PathBuf {
    assets().join("models/minilm-sentiment")
}

pub fn load(dir: &std::path::Path) -> Model {
    let files = ModelFiles::open(dir).expect("model files open");
    let dylib = assets().join("onnxruntime/libonnxruntime.so.1.32.0");
    Model::load(
        dir.file_name().unwrap().to_string_lossy().into(),
        None,
        files,
        &dylib,
        RuntimeConfig { intra_threads: 1, ..Default::default() },
    )
    .expect("model loads")
}

/// A real server on 127.0.0.1:0.
pub struct TestServer {
    pub url: String,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    workers: Option<Workers>,
}

impl TestServer {
    pub async fn start(model: &Model, batcher: BatcherConfig, limits: RequestLimits) -> Self {
        let (app, workers) = http::app(model, &batcher, limits, Duration::from_secs(30)).expect("app starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel();
        let server = tokio::spawn(http::serve(listener, app, async {
            let _ = rx.await;
        }));
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !client.get(format!("{url}/health/ready")).send().await.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
            assert!(tokio::time::Instant::now() < deadline, "server never became ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { url, client, shutdown: Some(tx), server: Some(server), workers: Some(workers) }
    }

    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client.post(format!("{}{path}", self.url)).header("content-type", "application/json").body(body).send().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.url)).send().await.unwrap()
    }

    /// Graceful shutdown: stop accepting, finish in-flight work, join the threads.
    pub async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.server.take().unwrap().await.unwrap().unwrap();
        let workers = self.workers.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), tokio::task::spawn_blocking(move || workers.join())).await.unwrap().unwrap();
    }
}

/// A histogram's `_count` from Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no {name} in metrics"))
        .trim()
        .parse()
        .unwrap()
}
