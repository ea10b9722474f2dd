//! Reading a batch's texts: inline, from a ConfigMap key, or from an S3 object.
//!
//! Every format (a JSON array of strings or of `{text, id}` objects, JSONL with `text`
//! and optional `id`, or one text per line) parses into the same [`Item`]s, and every
//! problem becomes a [`SourceError`] naming where it is, which the controller turns into
//! a Failed batch with that reason.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client};
use kubesentiment_core::config::ObjectStores;
use kubesentiment_core::crd::{MAX_ID_CHARS, MAX_TEXTS, S3Source, SentimentBatchSpec, SourceIdentity};
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// One text to classify, with the caller's optional id for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub id: Option<String>,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source is missing or cannot be read (reason `SourceUnreadable`).
    #[error("{0}")]
    Unreadable(String),
    /// The source was read but its content is not a valid batch (reason `SourceInvalid`).
    #[error("{0}")]
    Invalid(String),
}

impl SourceError {
    pub fn reason(&self) -> &'static str {
        match self {
            SourceError::Unreadable(_) => "SourceUnreadable",
            SourceError::Invalid(_) => "SourceInvalid",
        }
    }
}

/// The batch's texts, read from wherever its spec points, with what identifies them (to
/// pin the source at admission). An S3 source starts from `stores`' settings, then
/// applies its own.
pub async fn read(
    client: &Client,
    namespace: &str,
    spec: &SentimentBatchSpec,
    stores: &ObjectStores,
) -> Result<(Vec<Item>, SourceIdentity), SourceError> {
    if let Some(texts) = &spec.texts {
        let items = validate(texts.iter().map(|t| Item { id: None, text: t.clone() }).collect(), "spec.texts")?;
        let bytes = texts.iter().map(String::len).sum::<usize>();
        return Ok(identify(items, String::new(), bytes));
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
        let items = validate(parse(&body, &what)?, &what)?;
        return Ok(identify(items, cm.metadata.resource_version.unwrap_or_default(), body.len()));
    }
    if let Some(s3) = &source.s3 {
        let what = format!("s3://{}/{}", s3.bucket, s3.key);
        let store = s3_store(client, namespace, s3, stores).await?;
        let got = store
            .get(&object_store::path::Path::from(s3.key.as_str()))
            .await
            .map_err(|e| SourceError::Unreadable(format!("reading {what}: {e}")))?;
        let etag = got.meta.e_tag.clone().unwrap_or_default();
        let body = got.bytes().await.map_err(|e| SourceError::Unreadable(format!("reading {what}: {e}")))?;
        let items = validate(parse(&body, &what)?, &what)?;
        return Ok(identify(items, etag, body.len()));
    }
    Err(SourceError::Invalid("spec.source names no source".into()))
}

/// The texts with their identity: `version` and `bytes` of the source, and a SHA-256 over
/// every text and id in order (what a changed source is told by).
fn identify(items: Vec<Item>, version: String, bytes: usize) -> (Vec<Item>, SourceIdentity) {
    let mut h = Sha256::new();
    for item in &items {
        h.update(item.text.as_bytes());
        h.update([0]);
        if let Some(id) = &item.id {
            h.update(id.as_bytes());
        }
        h.update([1]);
    }
    let sha256 = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    (items, SourceIdentity { version, bytes: bytes as i64, sha256 })
}

async fn s3_store(client: &Client, namespace: &str, s3: &S3Source, stores: &ObjectStores) -> Result<Arc<dyn ObjectStore>, SourceError> {
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
    let lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    if trimmed.starts_with('{') {
        lines
            .map(|(n, l)| {
                serde_json::from_str::<Entry>(l)
                    .map(Entry::into_item)
                    .map_err(|e| SourceError::Invalid(format!("{what}: line {}: not a JSON object with \"text\": {e}", n + 1)))
            })
            .collect()
    } else {
        Ok(lines.map(|(_, l)| Item { id: None, text: l.to_string() }).collect())
    }
}

fn validate(items: Vec<Item>, what: &str) -> Result<Vec<Item>, SourceError> {
    if items.is_empty() {
        return Err(SourceError::Invalid(format!("{what}: no texts")));
    }
    if items.len() > MAX_TEXTS {
        return Err(SourceError::Invalid(format!("{what}: {} texts, more than the limit of {MAX_TEXTS}", items.len())));
    }
    for (i, item) in items.iter().enumerate() {
        if item.text.trim().is_empty() {
            return Err(SourceError::Invalid(format!("{what}: text {i} is empty")));
        }
        if item.id.as_ref().is_some_and(|id| id.chars().count() > MAX_ID_CHARS) {
            return Err(SourceError::Invalid(format!("{what}: the id of text {i} is longer than {MAX_ID_CHARS} characters")));
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(body: &str) -> Result<Vec<(Option<&'static str>, String)>, String> {
        parse(body.as_bytes(), "src")
            .and_then(|v| validate(v, "src"))
            .map(|v| v.into_iter().map(|i| (i.id.map(|s| &*s.leak()), i.text)).collect())
            .map_err(|e| e.to_string())
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
        let items = |v: &[(&str, Option<&str>)]| v.iter().map(|(t, i)| Item { text: t.to_string(), id: i.map(String::from) }).collect();
        let a = identify(items(&[("good", None), ("bad", Some("7"))]), "1".into(), 10).1;
        let same = identify(items(&[("good", None), ("bad", Some("7"))]), "2".into(), 99).1;
        assert_eq!(a.sha256, same.sha256, "versions and sizes do not decide");
        for other in [&[("good", None), ("bad", None)][..], &[("bad", Some("7")), ("good", None)], &[("goo", None), ("dbad", Some("7"))]] {
            assert_ne!(identify(items(other), "1".into(), 10).1.sha256, a.sha256, "{other:?}");
        }
        assert_eq!(a.sha256.len(), 64);
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
