//! Submissions, parsed at the edge: a request body becomes a [`Submission`] whose texts
//! are known to be non-empty, within the limits and with a valid priority, or an
//! [`ApiError`] naming the field at fault. Nothing past this module sees raw JSON.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::error::Category;
use utoipa::ToSchema;

use kubesentiment_core::crd::{MAX_ID_CHARS as MAX_CUSTOM_ID_CHARS, MAX_TEXT_CHARS, Priority};
use kubesentiment_core::jobs::NewJob;
use kubesentiment_core::names::{MAX_METADATA, MAX_METADATA_KEY, MAX_METADATA_VALUE, METADATA_KEY_PATTERN, is_metadata_key};

use crate::error::ApiError;

/// What a request may carry.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The brief's `max_batch_size_per_request`.
    pub max_texts: usize,
    /// The brief's `max_text_length`, in characters.
    pub max_text_length: usize,
    pub max_timeout_seconds: u64,
}

/// The longest `timeout_seconds` whatever the configuration: a week.
pub const MAX_TIMEOUT_SECONDS: u64 = 604_800;

/// The body of `POST /api/v1/batch/predict`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// Texts, or items with `text` and an optional `custom_id` echoed in the results; at
    /// most the configured `max_batch_size_per_request` (1,000 by default). Exactly one of
    /// `texts` and `input_url` is given.
    #[serde(default, deserialize_with = "present")]
    #[schema(min_items = 1, nullable = false)]
    pub texts: Option<Vec<TextItem>>,
    /// Where the texts are, instead of `texts`, at any size: `configmap://NAMESPACE/NAME/KEY`
    /// (a ConfigMap in your own namespace; with a key that shares a namespace, one carrying
    /// your tenant label) or `s3://BUCKET/KEY` (a bucket the server allows). A JSON array of
    /// strings, JSONL with `text` and an optional `id`, or one text per line.
    #[serde(default, deserialize_with = "present")]
    #[schema(
        nullable = false,
        max_length = 2048,
        pattern = r"^(configmap://[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?/[-._a-zA-Z0-9]{1,253}|s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[^\u0000-\u001f\u007f\u2028\u2029]+)$"
    )]
    pub input_url: Option<String>,
    /// `high`, `medium` (default) or `low`.
    #[serde(default)]
    pub priority: Priority,
    /// Most texts sent to an inference server in one request (1–10,000).
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 10_000)]
    pub max_batch_size: Option<f64>,
    /// Seconds until the job expires (at most the configured maximum, and 604,800);
    /// default from the operator's configuration.
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 604_800)]
    pub timeout_seconds: Option<f64>,
    /// The model the inference pool must serve; the job fails if it serves another.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 253)]
    pub model: Option<String>,
    /// Your own key-value pairs, returned on status and in the job list: at most 16, keys
    /// of 1–63 letters, digits, `-`, `_` and `.` (starting and ending with a letter or
    /// digit), values of at most 512 characters.
    #[serde(default)]
    #[schema(schema_with = metadata_schema)]
    pub metadata: BTreeMap<String, String>,
    /// Where to POST a CloudEvent when the job ends (`completed`, `failed`, `cancelled` or
    /// `expired`), signed with your API key's signing key (Standard Webhooks headers),
    /// delivered at least once. The server's allow-list decides which hosts it may reach;
    /// `status.callback` says how delivery went.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, max_length = 2048, pattern = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?([/?#][!-~]*)?$")]
    pub callback_url: Option<String>,
}

/// Whether `url` is a callback URL as the OpenAPI pattern states: `http(s)://`, a host of
/// letters, digits, `.` and `-`, an optional port, then printable ASCII. Whether the host
/// may be reached is the operator's allow-list's call, when the job ends.
fn check_callback_url(url: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{why}: expected http(s)://HOST[:PORT][/PATH]"));
    if url.len() > kubesentiment_core::crd::MAX_URL_CHARS {
        return bad("longer than 2,048 bytes");
    }
    let Some(rest) = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) else { return bad("not http or https") };
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
        return bad("the host has characters other than letters, digits, '.' and '-'");
    }
    if port.is_some_and(|p| p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit())) {
        return bad("the port is not 1 to 5 digits");
    }
    if !tail.bytes().all(|b| b.is_ascii_graphic()) {
        return bad("the path has spaces or characters outside printable ASCII");
    }
    Ok(())
}

/// A field that may be left out but not be `null`.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Where a submission's texts are, when not in the body.
#[derive(Debug, Clone, PartialEq)]
pub enum InputUrl {
    ConfigMap { namespace: String, name: String, key: String },
    S3 { bucket: String, key: String },
}

impl InputUrl {
    /// `configmap://NAMESPACE/NAME/KEY` or `s3://BUCKET/KEY`, exactly as the OpenAPI pattern
    /// states (a fuzzer checks both ways). Bounds a regular expression cannot state without
    /// lookahead, such as a name's dots one apart, are left to the lookup: no ConfigMap has
    /// such a name, so it is refused as absent.
    pub fn parse(url: &str) -> Result<InputUrl, String> {
        let bad = |why: &str| Err(format!("{why}: expected configmap://NAMESPACE/NAME/KEY or s3://BUCKET/KEY"));
        // A namespace, name or bucket starts and ends with a lowercase letter or a digit.
        let edge = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if url.len() > 2048 {
            return bad("longer than 2,048 bytes");
        }
        if let Some(rest) = url.strip_prefix("configmap://") {
            let mut at = rest.splitn(3, '/');
            let (Some(namespace), Some(name), Some(key)) = (at.next(), at.next(), at.next()) else { return bad("too few parts") };
            let key_ok = !key.is_empty() && key.len() <= 253 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
            let name_ok = |name: &str, longest: usize, dots: bool| {
                (1..=longest).contains(&name.len())
                    && edge(name.bytes().next())
                    && edge(name.bytes().last())
                    && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (dots && b == b'.'))
            };
            if !name_ok(namespace, 63, false) {
                return bad("the namespace is not a namespace name");
            }
            if !name_ok(name, 253, true) || !key_ok {
                return bad("the name or key cannot name a ConfigMap's key");
            }
            return Ok(InputUrl::ConfigMap { namespace: namespace.into(), name: name.into(), key: key.into() });
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let Some((bucket, key)) = rest.split_once('/') else { return bad("no key") };
            let bucket_ok = (3..=63).contains(&bucket.len())
                && edge(bucket.bytes().next())
                && edge(bucket.bytes().last())
                && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
            if !bucket_ok {
                return bad("not a bucket name");
            }
            if key.is_empty() || key.chars().any(|c| c.is_ascii_control() || c == '\u{2028}' || c == '\u{2029}') {
                return bad("the key is empty or holds control characters");
            }
            return Ok(InputUrl::S3 { bucket: bucket.into(), key: key.into() });
        }
        bad("an unknown scheme")
    }
}

/// `metadata`'s bounds, which utoipa cannot derive from a map: at most 16 entries, keys
/// that are annotation names, values of at most 512 characters.
fn metadata_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::{ObjectBuilder, Type};
    let string = || ObjectBuilder::new().schema_type(Type::String);
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .max_properties(Some(MAX_METADATA))
        .property_names(Some(string().min_length(Some(1)).max_length(Some(MAX_METADATA_KEY)).pattern(Some(METADATA_KEY_PATTERN))))
        .additional_properties(Some(string().max_length(Some(MAX_METADATA_VALUE))))
        .build()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TextItem {
    Text(Text),
    Item(Item),
}

/// A text with the caller's id, echoed in its result.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Item {
    text: Text,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    custom_id: Option<String>,
}

/// The body of `POST /api/v1/predict`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// At most the configured `max_batch_size_per_request` (1,000 by default).
    #[schema(min_items = 1)]
    pub texts: Vec<Text>,
}

/// One text: not blank, at most 10,000 characters (or the configured `max_text_length`).
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct Text(pub String);

impl utoipa::PartialSchema for Text {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .description(Some("A text to classify: not blank, at most 10,000 characters (or the configured max_text_length)."))
            .min_length(Some(1))
            .max_length(Some(MAX_TEXT_CHARS))
            .pattern(Some(r"\S"))
            .into()
    }
}

impl ToSchema for Text {}

/// A valid submission: a job ready to create, and where its texts are when not in it
/// (which the caller checks against the tenant).
#[derive(Debug, Clone, PartialEq)]
pub struct Submission(pub NewJob, pub Option<InputUrl>);

impl std::ops::Deref for Submission {
    type Target = NewJob;

    fn deref(&self) -> &NewJob {
        &self.0
    }
}

/// Parses JSON into `T`, naming the field at fault on error.
fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            Category::Syntax | Category::Eof | Category::Io => ApiError::Malformed(format!("the body is not valid JSON: {inner}")),
            Category::Data => ApiError::invalid(if field == "." { "body".to_string() } else { field }, inner.to_string()),
        }
    })
}

/// Checks the texts of any request against `limits`.
fn check_texts<'t>(texts: impl ExactSizeIterator<Item = &'t str>, limits: &Limits) -> Result<(), ApiError> {
    let n = texts.len();
    if n == 0 {
        return Err(ApiError::invalid("texts", "at least one text is required"));
    }
    if n > limits.max_texts {
        return Err(ApiError::TooLarge {
            field: Some("texts".into()),
            message: format!("{n} texts exceed the maximum of {} per request", limits.max_texts),
        });
    }
    let max_len = limits.max_text_length.min(MAX_TEXT_CHARS);
    for (i, t) in texts.enumerate() {
        if inference_api::is_blank(t) {
            return Err(ApiError::invalid(format!("texts[{i}]"), "text is empty"));
        }
        let chars = t.chars().count();
        if chars > max_len {
            return Err(ApiError::invalid(format!("texts[{i}]"), format!("text has {chars} characters; the maximum is {max_len}")));
        }
    }
    Ok(())
}

impl Submission {
    pub fn decode(body: &[u8], limits: &Limits) -> Result<Self, ApiError> {
        let req: BatchRequest = parse(body)?;
        let (items, input) = match (req.texts, req.input_url) {
            (Some(items), None) => (items, None),
            (None, Some(url)) => (Vec::new(), Some(InputUrl::parse(&url).map_err(|why| ApiError::invalid("input_url", why))?)),
            (Some(_), Some(_)) => return Err(ApiError::invalid("input_url", "give texts or input_url, not both")),
            (None, None) => return Err(ApiError::invalid("texts", "texts or input_url is required")),
        };
        let mut texts = Vec::with_capacity(items.len());
        let mut ids = Vec::with_capacity(items.len());
        for item in items {
            let (text, id) = match item {
                TextItem::Text(Text(t)) => (t, None),
                TextItem::Item(Item { text: Text(text), custom_id }) => (text, custom_id),
            };
            texts.push(text);
            ids.push(id);
        }
        if input.is_none() {
            check_texts(texts.iter().map(String::as_str), limits)?;
        }
        for (i, id) in ids.iter().enumerate() {
            if let Some(id) = id.as_ref().filter(|id| id.is_empty() || id.chars().count() > MAX_CUSTOM_ID_CHARS) {
                let why = format!("custom_id must have 1 to {MAX_CUSTOM_ID_CHARS} characters, not {}", id.chars().count());
                return Err(ApiError::invalid(format!("texts[{i}].custom_id"), why));
            }
        }
        // Read as numbers: JSON Schema counts `60.0` an integer, so clients may send it.
        let in_range = |field: &str, v: Option<f64>, max: u64| -> Result<Option<i32>, ApiError> {
            match v {
                None => Ok(None),
                Some(v) if v.fract() == 0.0 && v >= 1.0 && v <= max as f64 => Ok(Some(v as i32)),
                Some(v) => Err(ApiError::invalid(field, format!("{v} is not a whole number in 1..={max}"))),
            }
        };
        let model = match req.model {
            Some(m) if m.is_empty() || m.len() > 253 => return Err(ApiError::invalid("model", "model must have 1 to 253 characters")),
            m => m,
        };
        if req.metadata.len() > MAX_METADATA {
            return Err(ApiError::invalid("metadata", format!("{} entries exceed the maximum of {MAX_METADATA}", req.metadata.len())));
        }
        for (key, value) in &req.metadata {
            if !is_metadata_key(key) {
                let why = "a key has 1 to 63 letters, digits, '-', '_' and '.', and starts and ends with a letter or digit";
                return Err(ApiError::invalid(format!("metadata.{key}"), why));
            }
            if value.chars().count() > MAX_METADATA_VALUE {
                return Err(ApiError::invalid(format!("metadata.{key}"), format!("a value has at most {MAX_METADATA_VALUE} characters")));
            }
        }
        if let Some(url) = &req.callback_url {
            check_callback_url(url).map_err(|why| ApiError::invalid("callback_url", why))?;
        }
        let notify = req.callback_url.map(|url| kubesentiment_core::crd::Notify { url, signing_secret_ref: None });
        Ok(Submission(
            NewJob {
                ids: ids.iter().any(Option::is_some).then_some(ids),
                texts,
                priority: req.priority,
                max_batch_size: in_range("max_batch_size", req.max_batch_size, 10_000)?,
                timeout_seconds: in_range("timeout_seconds", req.timeout_seconds, limits.max_timeout_seconds.min(MAX_TIMEOUT_SECONDS))?,
                model,
                metadata: req.metadata,
                name: None,
                source: None,
                notify,
            },
            input,
        ))
    }
}

impl PredictRequest {
    pub fn decode(body: &[u8], limits: &Limits) -> Result<Vec<String>, ApiError> {
        let req: PredictRequest = parse(body)?;
        let texts: Vec<String> = req.texts.into_iter().map(|t| t.0).collect();
        check_texts(texts.iter().map(String::as_str), limits)?;
        Ok(texts)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LIMITS: Limits = Limits { max_texts: 5, max_text_length: 20, max_timeout_seconds: 3600 };

    #[test]
    fn callback_urls_are_checked_as_the_document_states() {
        for ok in ["https://hooks.example.com/k/1?x=y#z", "http://127.0.0.1:8080", "http://localhost:1/"] {
            assert_eq!(check_callback_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "ftp://a/",
            "https://",
            "https://a b/",
            "https://a:/",
            "https://a:123456/",
            "https://user@host/",
            "https://h/ä",
            "http://[::1]/",
        ] {
            assert!(check_callback_url(bad).is_err(), "{bad}");
        }
        let body = |url: &str| format!(r#"{{"texts": ["a"], "callback_url": {url}}}"#);
        let sub = Submission::decode(body(r#""https://hooks.example.com/done""#).as_bytes(), &LIMITS).unwrap();
        assert_eq!(sub.notify.as_ref().map(|n| n.url.as_str()), Some("https://hooks.example.com/done"));
        match Submission::decode(body(r#""javascript:alert(1)""#).as_bytes(), &LIMITS) {
            Err(ApiError::Invalid { field, .. }) => assert_eq!(field, "callback_url"),
            other => panic!("{other:?}"),
        }
        assert!(Submission::decode(body("null").as_bytes(), &LIMITS).is_err());
    }

    #[test]
    fn input_urls_parse_as_the_document_states() {
        let cm = |ns: &str, name: &str, key: &str| InputUrl::ConfigMap { namespace: ns.into(), name: name.into(), key: key.into() };
        let s3 = |bucket: &str, key: &str| InputUrl::S3 { bucket: bucket.into(), key: key.into() };
        let ok = [
            ("configmap://team-b/reviews/texts.jsonl", cm("team-b", "reviews", "texts.jsonl")),
            ("configmap://a/b.c/K_1", cm("a", "b.c", "K_1")),
            // No ConfigMap has this name; the lookup refuses it as absent.
            ("configmap://a/b..c/k", cm("a", "b..c", "k")),
            ("s3://my.bucket-1/in/2026/texts.txt", s3("my.bucket-1", "in/2026/texts.txt")),
            ("s3://abc/ü key", s3("abc", "ü key")),
        ];
        for (url, want) in ok {
            assert_eq!(InputUrl::parse(url), Ok(want), "{url}");
        }
        // The longest namespace, name and key, and one byte more (the pattern's bounds).
        let url = |ns: usize, name: usize, key: usize| {
            format!("configmap://{}/{}/{}", "n".repeat(ns), "a.".repeat(name / 2) + "b", "k".repeat(key))
        };
        assert!(InputUrl::parse(&url(63, 252, 253)).is_ok());
        for long in [url(64, 252, 253), url(63, 254, 253), url(63, 252, 254)] {
            assert!(InputUrl::parse(&long).is_err(), "{long}");
        }
        let bad = [
            "configmap://team-b/reviews",
            "configmap://Team/reviews/k",
            "configmap://a.b/reviews/k",
            "configmap://a/.b/k",
            "configmap://a/b-/k",
            "configmap://a/b/k/more",
            "configmap://a/b/",
            "s3://ab/k",
            "s3://-abc/k",
            "s3://Abc/k",
            "s3://abc/",
            "s3://abc",
            "s3://abc/a\nb",
            "s3://abc/a\u{2028}",
            "https://abc/k",
            "",
        ];
        for url in bad {
            assert!(InputUrl::parse(url).is_err(), "{url:?}");
        }
    }

    /// (body, status, field) for every way a body can be wrong, and a few right ones.
    #[test]
    fn each_bad_field_is_named() {
        let cases: &[(&str, Option<(u16, &str)>)] = &[
            (r#"{"texts":["a"]}"#, None),
            (r#"{"texts":[{"text":"a","custom_id":"x"},"b"],"priority":"low","max_batch_size":3,"timeout_seconds":60}"#, None),
            (r#"{"texts":["a"]"#, Some((400, ""))),
            (r#"{"texts": ["a", "#, Some((400, ""))),
            (r#"{}"#, Some((422, "texts"))),
            (r#"[]"#, Some((422, "texts"))),
            (r#"{"texts":[]}"#, Some((422, "texts"))),
            (r#"{"texts":["a","  "]}"#, Some((422, "texts[1]"))),
            (r#"{"texts":["a",3]}"#, Some((422, "texts[1]"))),
            (r#"{"texts":["a","aaaaaaaaaaaaaaaaaaaaa"]}"#, Some((422, "texts[1]"))),
            (r#"{"texts":["a","b","c","d","e","f"]}"#, Some((413, "texts"))),
            (r#"{"texts":["a"],"priority":"urgent"}"#, Some((422, "priority"))),
            (r#"{"texts":["a"],"max_batch_size":0}"#, Some((422, "max_batch_size"))),
            (r#"{"texts":["a"],"timeout_seconds":3601}"#, Some((422, "timeout_seconds"))),
            (r#"{"texts":["a"],"timeout_seconds":1.5}"#, Some((422, "timeout_seconds"))),
            (r#"{"texts":[{"text":"a","custom_id":""}]}"#, Some((422, "texts[0].custom_id"))),
            (r#"{"texts":["a"],"model":""}"#, Some((422, "model"))),
            (r#"{"texts":["a"],"prio":"high"}"#, Some((422, "prio"))),
        ];
        for (body, want) in cases {
            let got = Submission::decode(body.as_bytes(), &LIMITS);
            match (want, got) {
                (None, Ok(_)) => {}
                (Some((400, _)), Err(ApiError::Malformed(_))) => {}
                (Some((422, f)), Err(ApiError::Invalid { field, .. })) => assert_eq!(field, *f, "{body}"),
                (Some((413, f)), Err(ApiError::TooLarge { field, .. })) => assert_eq!(field.as_deref(), Some(*f), "{body}"),
                (want, got) => panic!("{body}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn ids_are_kept_only_when_given() {
        let s = Submission::decode(br#"{"texts":["a",{"text":"b","custom_id":"B"}]}"#, &LIMITS).unwrap();
        assert_eq!(s.texts, ["a", "b"]);
        assert_eq!(s.ids, Some(vec![None, Some("B".into())]));
        assert_eq!(Submission::decode(br#"{"texts":["a"]}"#, &LIMITS).unwrap().ids, None);
    }

    fn json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,30}".prop_map(Value::String),
            prop_oneof![Just("high"), Just("low"), Just("texts"), Just("text"), Just("custom_id")].prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            let keys = prop_oneof![
                Just("texts".to_string()),
                Just("text".to_string()),
                Just("custom_id".to_string()),
                Just("priority".to_string()),
                Just("max_batch_size".to_string()),
                Just("timeout_seconds".to_string()),
                "\\PC{0,8}"
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
                prop::collection::btree_map(keys, inner, 0..6).prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = Submission::decode(&body, &LIMITS);
            let _ = PredictRequest::decode(&body, &LIMITS);
        }

        /// Whatever JSON arrives, an accepted submission is within every limit.
        #[test]
        fn accepted_submissions_are_within_limits(v in json()) {
            let body = serde_json::to_vec(&v).unwrap();
            if let Ok(s) = Submission::decode(&body, &LIMITS) {
                prop_assert!(!s.texts.is_empty() && s.texts.len() <= LIMITS.max_texts);
                prop_assert!(s.texts.iter().all(|t| !inference_api::is_blank(t) && t.chars().count() <= LIMITS.max_text_length));
                prop_assert!(s.ids.as_ref().is_none_or(|ids| ids.len() == s.texts.len()));
            }
        }
    }
}
