//! Hub model ids, fetched over the hub's HTTP file layout from a real local server into
//! the standard cache, then loaded offline.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::{assets, test_model_dir};
use inference_server::model::ModelError;
use inference_server::model::source::{ModelRef, SourceConfig};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// `GET /{org}/{name}/resolve/{revision}/{file}` with the headers the hub sends and
/// `Range` support, serving one local model directory as repo `acme/tiny`.
async fn resolve(
    State(root): State<Arc<PathBuf>>,
    Path((org, name, rev, file)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let path = root.join(&file);
    if (org.as_str(), name.as_str(), rev.as_str()) != ("acme", "tiny", "main") || !path.is_file() {
        return (StatusCode::NOT_FOUND, "Entry not found").into_response();
    }
    let bytes = std::fs::read(&path).unwrap();
    let size = bytes.len();
    let (start, end) = headers
        .get(header::RANGE)
        .and_then(|r| r.to_str().ok()?.strip_prefix("bytes=")?.split_once('-').map(|(a, b)| (a.parse().ok(), b.parse().ok())))
        .and_then(|(a, b): (Option<usize>, Option<usize>)| Some((a?, b.unwrap_or(size - 1).min(size - 1))))
        .unwrap_or((0, size - 1));
    let etag = format!("\"{:x}-{}\"", size, file.len());
    let mut resp = (StatusCode::PARTIAL_CONTENT, bytes[start..=end].to_vec()).into_response();
    let h = resp.headers_mut();
    h.insert("x-repo-commit", COMMIT.parse().unwrap());
    h.insert(header::ETAG, etag.parse().unwrap());
    h.insert(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}").parse().unwrap());
    resp
}

async fn hub(root: PathBuf) -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().route("/{org}/{name}/resolve/{rev}/{*file}", axum::routing::get(resolve)).with_state(Arc::new(root));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (url, tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }))
}

fn source(endpoint: &str, hf_home: &std::path::Path, offline: bool) -> SourceConfig {
    SourceConfig {
        assets_dir: Some(assets()),
        hf_home: Some(hf_home.to_path_buf()),
        hf_endpoint: endpoint.to_string(),
        hf_offline: offline,
        hf_token: None,
        home: None,
    }
}

#[tokio::test]
async fn a_hub_id_is_fetched_into_the_cache_then_served_offline() {
    // The hub's layout for ONNX exports: the graph under onnx/.
    let repo = tempdir("hub-repo");
    let src = test_model_dir("tiny-bert");
    std::fs::create_dir_all(repo.join("onnx")).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), repo.join(f)).unwrap();
    }
    std::fs::copy(src.join("model.onnx"), repo.join("onnx/model.onnx")).unwrap();
    let hf_home = tempdir("hf-home");
    let (endpoint, server) = hub(repo.clone()).await;

    let reference = ModelRef::parse("acme/tiny").unwrap();
    let (files, revision) = source(&endpoint, &hf_home, false).resolve(&reference).await.unwrap();
    assert_eq!(revision.as_deref(), Some("main"));
    let snapshot = hf_home.join("hub/models--acme--tiny/snapshots").join(COMMIT);
    assert_eq!(files.dir, snapshot);
    assert_eq!(files.onnx, snapshot.join("onnx/model.onnx"));
    assert_eq!(std::fs::read(&files.onnx).unwrap(), std::fs::read(src.join("model.onnx")).unwrap());
    assert_eq!(files.config.labels, ["NEGATIVE", "POSITIVE"]);

    // A repo the hub does not have: one clear error.
    let err = source(&endpoint, &hf_home, false).resolve(&ModelRef::parse("acme/missing").unwrap()).await.unwrap_err();
    assert!(matches!(err, ModelError::NotFound(ref m) if m.contains("acme/missing@main has no config.json")), "{err}");

    // With the hub gone, HF_HUB_OFFLINE still finds the cached snapshot ...
    server.abort();
    let (files, _) = source("http://127.0.0.1:9", &hf_home, true).resolve(&reference).await.unwrap();
    assert_eq!(files.dir, snapshot);
    // ... and says so when the cache is empty.
    let empty = tempdir("hf-empty");
    let err = source("http://127.0.0.1:9", &empty, true).resolve(&reference).await.unwrap_err();
    assert!(err.to_string().contains("HF_HUB_OFFLINE"), "{err}");
    for d in [repo, hf_home, empty] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[tokio::test]
async fn a_missing_builtin_model_says_to_run_setup() {
    let empty = tempdir("assets-empty");
    let cfg = SourceConfig { assets_dir: Some(empty.clone()), ..source("http://127.0.0.1:9", &empty, true) };
    let err = cfg.resolve(&ModelRef::parse("minilm-sentiment").unwrap()).await.unwrap_err().to_string();
    assert!(err.contains("scripts/setup.sh"), "{err}");
    std::fs::remove_dir_all(empty).unwrap();
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
