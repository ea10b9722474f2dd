//! Reading a batch's texts: inline, from a ConfigMap key, or from an S3 object.
//!
//! Every format (a JSON array of strings or of `{text, id}` objects, JSONL with `text`
//! and optional `id`, or one text per line) parses into the same [`Item`]s, and every
//! problem becomes a [`SourceError`] naming where it is, which the controller turns into
//! a Failed batch with that reason.
//!
//! Inline and ConfigMap texts are held whole (their size is capped by the API server).
//! An S3 object of lines (JSONL or plain) is never held whole: at admission it is
//! streamed once, line by line, to validate, count and fingerprint it and to note where
//! every [`WINDOW`]th text starts; a running batch then reads only the windows its
//! chunks need, as ranged reads pinned to the object's ETag.

use std::ops::Range;
use std::sync::Arc;

use futures_util::TryStreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};
use kubesentiment_core::config::ObjectStores;
use kubesentiment_core::crd::{MAX_ID_CHARS, MAX_TEXTS, S3Source, SentimentBatchSpec, SourceIdentity};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use crate::engine::TextSource;

/// Texts per window of an S3 source: the unit it is read and held in.
pub const WINDOW: usize = 1024;
/// Windows of one S3 batch held at once (the chunks in flight and the next ones).
const WINDOWS_HELD: u64 = 4;
/// The largest S3 object in the JSON-array format, which cannot be read a line at a
/// time; larger sources are given as JSONL or one text per line.
pub const MAX_ARRAY_BYTES: u64 = 16 << 20;

/// One text to classify, with the caller's optional id for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub id: Option<String>,
    pub text: String,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum SourceError {
    /// The source is missing or cannot be read (reason `SourceUnreadable`).
    #[error("{0}")]
    Unreadable(String),
    /// The source was read but its content is not a valid batch (reason `SourceInvalid`).
    #[error("{0}")]
    Invalid(String),
    /// The source is no longer what was admitted (reason `SourceChanged`).
    #[error("{0}")]
    Changed(String),
}

impl SourceError {
    pub fn reason(&self) -> &'static str {
        match self {
            SourceError::Unreadable(_) => "SourceUnreadable",
            SourceError::Invalid(_) => "SourceInvalid",
            SourceError::Changed(_) => "SourceChanged",
        }
    }
}

/// Texts held whole, packed into one buffer (a text costs its bytes and one offset,
/// not a `String` of its own): what a batch of inline or ConfigMap texts holds while it
/// runs.
#[derive(Debug, Default)]
pub struct Packed {
    buf: String,
    /// Where each text ends in `buf`.
    ends: Vec<usize>,
    /// Each text's id; empty when no text has one.
    ids: Vec<Option<Box<str>>>,
}

impl Packed {
    pub fn push(&mut self, item: Item) {
        if item.id.is_some() && self.ids.is_empty() {
            self.ids.resize(self.ends.len(), None);
        }
        if item.id.is_some() || !self.ids.is_empty() {
            self.ids.push(item.id.map(String::into_boxed_str));
        }
        self.buf.push_str(&item.text);
        self.ends.push(self.buf.len());
    }
}

impl From<Vec<Item>> for Packed {
    fn from(items: Vec<Item>) -> Self {
        let mut p = Packed::default();
        items.into_iter().for_each(|i| p.push(i));
        p
    }
}

#[async_trait::async_trait]
impl TextSource for Packed {
    fn len(&self) -> usize {
        self.ends.len()
    }

    async fn read(&self, range: Range<usize>) -> Result<Vec<Item>, SourceError> {
        Ok(range
            .map(|i| {
                let start = if i == 0 { 0 } else { self.ends[i - 1] };
                let id = self.ids.get(i).cloned().flatten().map(String::from);
                Item { id, text: self.buf[start..self.ends[i]].to_string() }
            })
            .collect())
    }
}

/// The batch's texts, read from wherever its spec points, with what identifies them (to
/// pin the source at admission). An S3 source starts from `stores`' settings, then
/// applies its own.
pub async fn read(
    client: &Client,
    namespace: &str,
    spec: SentimentBatchSpec,
    stores: &ObjectStores,
) -> Result<(Arc<dyn TextSource>, SourceIdentity), SourceError> {
    if let Some(texts) = spec.texts {
        let bytes = texts.iter().map(String::len).sum::<usize>() as u64;
        return held(texts.into_iter().map(|text| Item { id: None, text }), "spec.texts", String::new(), bytes);
    }
    let source = spec.source.as_ref().ok_or_else(|| SourceError::Invalid("set spec.texts or spec.source".into()))?;
    if let Some(r) = &source.config_map_key_ref {
        let what = format!("ConfigMap {namespace}/{} key {:?}", r.name, r.key);
        let cm = Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .get_opt(&r.name)
            .await
            .map_err(|e| SourceError::Unreadable(format!("reading {what}: {e}")))?
            .ok_or_else(|| SourceError::Unreadable(format!("{what}: the ConfigMap does not exist")))?;
        let body = match (cm.data.as_ref().and_then(|d| d.get(&r.key)), cm.binary_data.as_ref().and_then(|d| d.get(&r.key))) {
            (Some(s), _) => s.clone().into_bytes(),
            (None, Some(b)) => b.0.clone(),
            (None, None) => return Err(SourceError::Unreadable(format!("{what}: no such key"))),
        };
        return held(parse(&body, &what)?, &what, cm.metadata.resource_version.unwrap_or_default(), body.len() as u64);
    }
    if let Some(s3) = &source.s3 {
        let what = format!("s3://{}/{}", s3.bucket, s3.key);
        let store = s3_store(client, namespace, s3, stores).await?;
        return S3Texts::open(store, Path::from(s3.key.as_str()), what).await;
    }
    Err(SourceError::Invalid("spec.source names no source".into()))
}

/// Checks, fingerprints and packs texts to hold them whole; `what` names the source in
/// errors, `version` and `bytes` identify it.
fn held(
    items: impl IntoIterator<Item = Item>,
    what: &str,
    version: String,
    bytes: u64,
) -> Result<(Arc<dyn TextSource>, SourceIdentity), SourceError> {
    let (mut packed, mut seen) = (Packed::default(), Seen::default());
    for item in items {
        seen.add(&item, what)?;
        packed.push(item);
    }
    Ok((Arc::new(packed), seen.identity(what, version, bytes)?))
}

/// The texts of a source so far, as it is read: each checked, counted, and added to a
/// SHA-256 over every text and id in order (what a changed source is told by).
#[derive(Default)]
struct Seen {
    texts: usize,
    sha256: Sha256,
}

impl Seen {
    /// Checks the next text (`what` names the source in errors) and takes it in.
    fn add(&mut self, item: &Item, what: &str) -> Result<(), SourceError> {
        if self.texts == MAX_TEXTS {
            return Err(SourceError::Invalid(format!("{what}: more than the limit of {MAX_TEXTS} texts")));
        }
        check(item, self.texts, what)?;
        self.sha256.update(item.text.as_bytes());
        self.sha256.update([0]);
        if let Some(id) = &item.id {
            self.sha256.update(id.as_bytes());
        }
        self.sha256.update([1]);
        self.texts += 1;
        Ok(())
    }

    /// The identity of a source at `version` (resourceVersion, ETag) of `bytes` bytes;
    /// a source without texts is invalid.
    fn identity(self, what: &str, version: String, bytes: u64) -> Result<SourceIdentity, SourceError> {
        if self.texts == 0 {
            return Err(SourceError::Invalid(format!("{what}: no texts")));
        }
        let sha256 = self.sha256.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(SourceIdentity { version, bytes: bytes as i64, sha256 })
    }
}

/// An S3 object of lines, read a window at a time.
struct S3Texts {
    store: Arc<dyn ObjectStore>,
    path: Path,
    what: String,
    /// Every read is pinned to it: a replaced object fails with `SourceChanged`.
    etag: Option<String>,
    jsonl: bool,
    total: usize,
    size: u64,
    /// The byte offset where text `k * WINDOW` starts, for each window `k`.
    starts: Vec<u64>,
    windows: moka::future::Cache<usize, Arc<Vec<Item>>>,
}

impl S3Texts {
    /// Streams the object once: format, validation, count, fingerprint and window starts.
    async fn open(store: Arc<dyn ObjectStore>, path: Path, what: String) -> Result<(Arc<dyn TextSource>, SourceIdentity), SourceError> {
        let unreadable = |e: &(dyn std::error::Error + 'static)| remote(&what, e);
        let got = store.get(&path).await.map_err(|e| unreadable(&e))?;
        let (etag, size) = (got.meta.e_tag.clone(), got.meta.size);
        let mut reader = tokio_util::io::StreamReader::new(got.into_stream().map_err(std::io::Error::other));
        let (mut seen, mut starts, mut jsonl) = (Seen::default(), Vec::new(), None);
        let (mut line, mut offset, mut number) = (Vec::new(), 0u64, 0);
        loop {
            line.clear();
            let read = reader.read_until(b'\n', &mut line).await.map_err(|e| unreadable(&e))?;
            if read == 0 {
                break;
            }
            let at = offset;
            offset += read as u64;
            number += 1;
            let text = std::str::from_utf8(&line).map_err(|e| SourceError::Invalid(format!("{what}: line {number}: not UTF-8 ({e})")))?;
            if inference_api::is_blank(text) {
                continue;
            }
            let jsonl = *jsonl.get_or_insert_with(|| text.trim_start().starts_with('{'));
            if seen.texts == 0 && text.trim_start().starts_with('[') {
                // A JSON array is parsed whole, within a bound.
                if size > MAX_ARRAY_BYTES {
                    let msg = format!(
                        "{what}: a JSON array of {size} bytes, over {MAX_ARRAY_BYTES}; give large sources as JSONL or one text per line"
                    );
                    return Err(SourceError::Invalid(msg));
                }
                let mut body = line.clone();
                reader.read_to_end(&mut body).await.map_err(|e| unreadable(&e))?;
                return held(parse(&body, &what)?, &what, etag.unwrap_or_default(), size);
            }
            if seen.texts % WINDOW == 0 {
                starts.push(at);
            }
            seen.add(&parse_line(jsonl, text, number, &what)?, &what)?;
        }
        let total = seen.texts;
        let identity = seen.identity(&what, etag.clone().unwrap_or_default(), size)?;
        let windows = moka::future::Cache::new(WINDOWS_HELD);
        let jsonl = jsonl.unwrap_or(false);
        Ok((Arc::new(S3Texts { store, path, what, etag, jsonl, total, size, starts, windows }), identity))
    }

    async fn window(&self, k: usize) -> Result<Arc<Vec<Item>>, SourceError> {
        self.windows.try_get_with(k, self.load(k)).await.map_err(|e| (*e).clone())
    }

    /// Window `k`, by a ranged read of the object as admitted.
    async fn load(&self, k: usize) -> Result<Arc<Vec<Item>>, SourceError> {
        let what = &self.what;
        let range = self.starts[k]..self.starts.get(k + 1).copied().unwrap_or(self.size);
        let opts = GetOptions { if_match: self.etag.clone(), range: Some(GetRange::Bounded(range)), ..Default::default() };
        let changed = || SourceError::Changed(format!("{what} changed after the batch was admitted"));
        let body = match self.store.get_opts(&self.path, opts).await {
            Ok(got) => got.bytes().await.map_err(|e| remote(what, &e))?,
            Err(object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. }) => return Err(changed()),
            Err(e) => return Err(remote(what, &e)),
        };
        let text = std::str::from_utf8(&body).map_err(|_| changed())?;
        let items: Vec<Item> =
            text.lines().filter(|l| !inference_api::is_blank(l)).map(|l| parse_line(self.jsonl, l, 0, what)).collect::<Result<_, _>>()?;
        if items.len() != WINDOW.min(self.total - k * WINDOW) {
            return Err(changed());
        }
        Ok(Arc::new(items))
    }
}

#[async_trait::async_trait]
impl TextSource for S3Texts {
    fn len(&self) -> usize {
        self.total
    }

    async fn read(&self, range: Range<usize>) -> Result<Vec<Item>, SourceError> {
        let mut out = Vec::with_capacity(range.len());
        for k in range.start / WINDOW..range.end.div_ceil(WINDOW) {
            let window = self.window(k).await?;
            let base = k * WINDOW;
            out.extend_from_slice(&window[range.start.max(base) - base..range.end.min(base + window.len()) - base]);
        }
        Ok(out)
    }
}

/// A remote store's failure to read `what`, as status and Events may say it: the server's
/// own words go to the log only.
fn remote(what: &str, e: &(dyn std::error::Error + 'static)) -> SourceError {
    tracing::warn!(%what, error = %e, "reading a source");
    SourceError::Unreadable(format!("reading {what}: {}", kubesentiment_core::remote::brief(e)))
}

async fn s3_store(client: &Client, namespace: &str, s3: &S3Source, stores: &ObjectStores) -> Result<Arc<dyn ObjectStore>, SourceError> {
    // The operator's own credentials go only to AWS, its own endpoint and the endpoints it
    // is configured to lend them to: a source that names another endpoint brings
    // credentials for it, so that a batch cannot send them to a server of its choosing.
    if let Some(endpoint) = &s3.endpoint
        && s3.credentials_secret_ref.is_none()
        && !stores.lends_credentials_to(endpoint)
    {
        let why = format!(
            "source.s3: the operator lends its credentials only to its own endpoints, not {endpoint}; set source.s3.credentialsSecretRef"
        );
        return Err(SourceError::Invalid(why));
    }
    let mut b = stores.s3().with_bucket_name(&s3.bucket);
    if let Some(endpoint) = &s3.endpoint {
        b = b.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://")).with_virtual_hosted_style_request(false);
    }
    if let Some(region) = &s3.region {
        b = b.with_region(region);
    }
    if let Some(secret) = &s3.credentials_secret_ref {
        let what = format!("Secret {namespace}/{}", secret.name);
        let data = Api::<Secret>::namespaced(client.clone(), namespace)
            .get_opt(&secret.name)
            .await
            .map_err(|e| SourceError::Unreadable(format!("reading {what}: {e}")))?
            .ok_or_else(|| SourceError::Unreadable(format!("{what} does not exist")))?
            .data
            .unwrap_or_default();
        let field = |k: &str| data.get(k).map(|v| String::from_utf8_lossy(&v.0).into_owned());
        let (Some(id), Some(key)) = (field("accessKeyId"), field("secretAccessKey")) else {
            return Err(SourceError::Unreadable(format!("{what} needs accessKeyId and secretAccessKey")));
        };
        b = b.with_access_key_id(id).with_secret_access_key(key);
        if let Some(token) = field("sessionToken") {
            b = b.with_token(token);
        }
    }
    Ok(Arc::new(b.build().map_err(|e| SourceError::Invalid(format!("source.s3: {e}")))?))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Entry {
    Text(String),
    Item {
        text: String,
        #[serde(default)]
        id: Option<serde_json::Value>,
    },
}

impl Entry {
    fn into_item(self) -> Item {
        match self {
            Entry::Text(text) => Item { id: None, text },
            Entry::Item { text, id } => Item {
                id: id.map(|v| match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                }),
                text,
            },
        }
    }
}

/// Parses a body in any of the accepted formats. `what` names the source in errors.
pub fn parse(body: &[u8], what: &str) -> Result<Vec<Item>, SourceError> {
    let text = std::str::from_utf8(body).map_err(|e| SourceError::Invalid(format!("{what}: not UTF-8 ({e})")))?;
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        let entries: Vec<Entry> = serde_json::from_str(trimmed)
            .map_err(|e| SourceError::Invalid(format!("{what}: not a JSON array of texts or {{\"text\": …}} objects: {e}")))?;
        return Ok(entries.into_iter().map(Entry::into_item).collect());
    }
    let jsonl = trimmed.starts_with('{');
    text.lines().enumerate().filter(|(_, l)| !inference_api::is_blank(l)).map(|(n, l)| parse_line(jsonl, l, n + 1, what)).collect()
}

/// One line (numbered `number` in errors) of a JSONL or plain-text source.
fn parse_line(jsonl: bool, line: &str, number: usize, what: &str) -> Result<Item, SourceError> {
    let line = line.trim_end_matches(['\n', '\r']);
    if !jsonl {
        return Ok(Item { id: None, text: line.to_string() });
    }
    serde_json::from_str::<Entry>(line)
        .map(Entry::into_item)
        .map_err(|e| SourceError::Invalid(format!("{what}: line {number}: not a JSON object with \"text\": {e}")))
}

/// Text `i`'s own checks: not blank, and an id within bounds.
fn check(item: &Item, i: usize, what: &str) -> Result<(), SourceError> {
    if inference_api::is_blank(&item.text) {
        return Err(SourceError::Invalid(format!("{what}: text {i} is empty")));
    }
    if item.id.as_ref().is_some_and(|id| id.chars().count() > MAX_ID_CHARS) {
        return Err(SourceError::Invalid(format!("{what}: the id of text {i} is longer than {MAX_ID_CHARS} characters")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses and checks `body` as a held source does, and reads every text back.
    fn whole(body: &str) -> Result<Vec<Item>, SourceError> {
        use futures_util::FutureExt;
        let (texts, _) = held(parse(body.as_bytes(), "src")?, "src", String::new(), 0)?;
        texts.read(0..texts.len()).now_or_never().expect("held texts are read at once")
    }

    fn texts(body: &str) -> Result<Vec<(Option<&'static str>, String)>, String> {
        whole(body).map(|v| v.into_iter().map(|i| (i.id.map(|s| &*s.leak()), i.text)).collect()).map_err(|e| e.to_string())
    }

    #[test]
    fn every_format_parses_to_the_same_items() {
        let plain = vec![(None, "good".to_string()), (None, "bad".to_string())];
        assert_eq!(texts(r#"["good", "bad"]"#).unwrap(), plain);
        assert_eq!(texts("good\n\nbad\n").unwrap(), plain);
        assert_eq!(texts(r#"[{"text": "good"}, "bad"]"#).unwrap(), plain);
        assert_eq!(
            texts("{\"text\": \"good\", \"id\": \"a\"}\n{\"text\": \"bad\", \"id\": 7}\n").unwrap(),
            vec![(Some("a"), "good".into()), (Some("7"), "bad".into())]
        );
    }

    #[test]
    fn the_identity_follows_the_texts_and_ids_only() {
        let items =
            |v: &[(&str, Option<&str>)]| v.iter().map(|(t, i)| Item { text: t.to_string(), id: i.map(String::from) }).collect::<Vec<_>>();
        let a = held(items(&[("good", None), ("bad", Some("7"))]), "src", "1".into(), 10).unwrap().1;
        let same = held(items(&[("good", None), ("bad", Some("7"))]), "src", "2".into(), 99).unwrap().1;
        assert_eq!(a.sha256, same.sha256, "versions and sizes do not decide");
        for other in [&[("good", None), ("bad", None)][..], &[("bad", Some("7")), ("good", None)], &[("goo", None), ("dbad", Some("7"))]] {
            assert_ne!(held(items(other), "src", "1".into(), 10).unwrap().1.sha256, a.sha256, "{other:?}");
        }
        assert_eq!(a.sha256.len(), 64);
    }

    #[tokio::test]
    async fn packed_texts_read_back_as_given() {
        let with_ids = vec![
            Item { id: Some("a".into()), text: "good ☀".into() },
            Item { id: None, text: "bad".into() },
            Item { id: Some("c".into()), text: "x".into() },
        ];
        let plain: Vec<Item> = with_ids.iter().map(|i| Item { id: None, ..i.clone() }).collect();
        for items in [with_ids, plain] {
            let packed = Packed::from(items.clone());
            assert_eq!(TextSource::len(&packed), 3);
            assert_eq!(packed.read(0..3).await.unwrap(), items);
            assert_eq!(packed.read(1..3).await.unwrap(), items[1..]);
        }
    }

    /// An object of lines in an in-memory object store: what `S3Texts` reads.
    async fn object(body: &str) -> (Arc<dyn ObjectStore>, Path) {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let path = Path::from("texts.jsonl");
        store.put(&path, body.to_string().into()).await.unwrap();
        (store, path)
    }

    #[tokio::test]
    async fn an_object_of_lines_is_read_a_window_at_a_time_as_if_whole() {
        let lines: Vec<String> = (0..3 * WINDOW + 7).map(|i| format!("{{\"text\": \"text {i}\", \"id\": {i}}}")).collect();
        // Blank lines and CRLF ends, as files from elsewhere have them.
        let body = format!("\n{}\r\n\n", lines.join("\r\n"));
        let all = whole(&body).unwrap();
        let (store, path) = object(&body).await;
        let (texts, identity) = S3Texts::open(store, path, "src".into()).await.unwrap();
        assert_eq!(texts.len(), all.len());
        assert_eq!(identity.sha256, held(all.clone(), "src", String::new(), 0).unwrap().1.sha256, "the same fingerprint as read whole");
        assert_eq!(identity.bytes, body.len() as i64);
        for range in [0..1, WINDOW - 3..WINDOW + 3, 5..2 * WINDOW + 9, 0..all.len(), all.len() - 1..all.len()] {
            assert_eq!(texts.read(range.clone()).await.unwrap(), all[range.clone()], "{range:?}");
        }
    }

    #[tokio::test]
    async fn a_replaced_object_is_a_changed_source() {
        let body = (0..2 * WINDOW).map(|i| format!("text {i}")).collect::<Vec<_>>().join("\n");
        let (store, path) = object(&body).await;
        let (texts, _) = S3Texts::open(store.clone(), path.clone(), "src".into()).await.unwrap();
        assert_eq!(texts.read(0..2).await.unwrap()[1].text, "text 1");
        store.put(&path, body.replace("text", "edited").into()).await.unwrap();
        let err = texts.read(WINDOW..WINDOW + 2).await.unwrap_err();
        assert_eq!(err.reason(), "SourceChanged", "{err}");
    }

    #[tokio::test]
    async fn an_object_holding_a_json_array_is_read_whole() {
        let (store, path) = object(r#"  ["good", {"text": "bad", "id": "b"}]"#).await;
        let (texts, _) = S3Texts::open(store, path, "src".into()).await.unwrap();
        let got = texts.read(0..2).await.unwrap();
        assert_eq!(got[1], Item { id: Some("b".into()), text: "bad".into() });
    }

    #[test]
    fn errors_say_where() {
        for (body, needle) in [
            ("[1, 2]", "not a JSON array"),
            ("{\"text\": \"ok\"}\n{\"txt\": \"x\"}\n", "line 2"),
            (r#"["ok", "  "]"#, "text 1 is empty"),
            ("", "no texts"),
        ] {
            let e = texts(body).unwrap_err();
            assert!(e.contains(needle), "{body:?}: {e}");
        }
        assert!(parse(&[0xff, 0xfe], "src").unwrap_err().to_string().contains("UTF-8"));
    }
}
