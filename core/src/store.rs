//! Where a batch's results go, and how they are read back.
//!
//! A batch's results are *parts*: JSONL, one [`ResultLine`] per text of a contiguous
//! range, in input order, keyed by the range's first index. A part is written whole and
//! idempotently before its chunk counts as done, so the parts present are exactly the
//! work committed, and a restarted operator resumes from them. When the batch is final a
//! manifest lists the parts and a failures file (the dead-letter list) holds every failed
//! item. A batch whose results are one part without failures (a small batch: one chunk)
//! has it written once, with its manifest, as one ConfigMap (#17).
//!
//! Two backends: ConfigMaps owned by the batch (the default; garbage-collected with it,
//! each well under 1 MiB), or any `object_store` URL (`s3://…`, `file:///…`).

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::TryStreamExt;
use inference_api::PredictionResult;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use crate::config::ObjectStores;
use crate::crd::SentimentBatch;
use crate::names::{BATCH_UID_LABEL, MANAGER, RESULTS_KIND_LABEL as KIND_LABEL};

const DATA_KEY: &str = "results.jsonl";
const MANIFEST_KEY: &str = "manifest.json";
/// The stem of a part written with its manifest: [`Part::stem`] of such a part, and the
/// ConfigMap it lives in (`<batch>-results`, the manifest's).
const WHOLE_STEM: &str = "results";
/// The `kubesentiment.io/results` label of a ConfigMap holding a manifest and its only part.
const WHOLE_KIND: &str = "manifest-part";
/// The result ConfigMaps that hold parts.
const PART_KINDS: &str = "part,manifest-part";
/// Most texts in one ConfigMap part: a line is at most ~1.4 KB (a 256-character id of
/// 4-byte characters plus the prediction), so a part stays well under the 1 MiB limit.
pub const MAX_CONFIGMAP_PART_TEXTS: usize = 500;

/// One text's outcome: its prediction, or the error it failed with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultLine {
    pub index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<PredictionResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A committed range of results.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub start: usize,
    pub lines: Vec<ResultLine>,
    /// The name it is stored under (`part-<start>-<end>`): its range when written, which
    /// [`Store::read_parts`] may since have trimmed of lines a part starting earlier holds.
    pub stem: String,
}

impl Part {
    pub fn new(start: usize, lines: Vec<ResultLine>) -> Part {
        let stem = format!("part-{start:07}-{:07}", start + lines.len());
        Part { start, lines, stem }
    }

    pub fn end(&self) -> usize {
        self.start + self.lines.len()
    }
}

/// `parts` sorted by start, each index kept once: two leaders with different chunk
/// boundaries can both commit a text (each under its own part name, which carries its
/// whole range, so neither overwrites the other), and a text must still have exactly one
/// result. The part that starts first keeps it, of two that start together the longer;
/// a part left empty is dropped. So a part of the whole batch (written with its manifest)
/// is never trimmed and is the only one left.
pub fn one_per_index(mut parts: Vec<Part>) -> Vec<Part> {
    parts.sort_by_key(|p| (p.start, std::cmp::Reverse(p.lines.len())));
    let mut at = 0;
    let mut out = Vec::with_capacity(parts.len());
    for mut p in parts {
        if p.end() <= at {
            continue;
        }
        if p.start < at {
            p.lines.drain(..at - p.start);
            p.start = at;
        }
        at = p.end();
        out.push(p);
    }
    out
}

/// Failed items per shard of the dead-letter list, and parts per shard of the manifest:
/// each shard stays well under a ConfigMap's 1 MiB, so a batch of any size ends.
const FAILURES_PER_SHARD: usize = MAX_CONFIGMAP_PART_TEXTS;
const PARTS_PER_MANIFEST_SHARD: usize = 4000;

/// The index of a final batch's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub total_texts: usize,
    /// The parts, in order; past a few thousand, the rest are in `moreParts`.
    pub parts: Vec<ManifestPart>,
    /// Further shards of the manifest, in order, each a JSON array like `parts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_parts: Vec<String>,
    /// The dead-letter list (every failed item, JSONL): its first shard. Absent when no
    /// text failed (nothing is written then).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failures: String,
    /// Every shard of the dead-letter list, in index order, `failures` first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failure_shards: Vec<String>,
    pub failed_texts: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestPart {
    pub location: String,
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// Its message is [`crate::remote::brief`]: it goes into status and Events.
    #[error("object store: {}", crate::remote::brief(.0))]
    Object(#[from] object_store::Error),
    #[error("bad output {url:?}: {why}")]
    BadUrl { url: String, why: String },
    #[error("corrupt result part {location}: {why}")]
    Corrupt { location: String, why: String },
    #[error("ConfigMap {name} already exists and is not this batch's; it is left as it is")]
    NameClash { name: String },
}

/// A batch's results store.
#[derive(Clone)]
// One per running batch, never in a collection that its size would weigh on.
#[allow(clippy::large_enum_variant)]
pub enum Store {
    ConfigMaps {
        api: Api<ConfigMap>,
        namespace: String,
        base: String,
        uid: String,
        owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
        /// The batch's texts, once known ([`Store::of_texts`]): a part of all of them
        /// without failures is then written with its manifest, one write instead of two,
        /// and a batch too large for one part is not looked for there ([`Store::read_whole`]).
        total: Option<usize>,
    },
    /// `root` is the URL of the store's top (`s3://bucket`, `file://`).
    Objects { store: Arc<dyn ObjectStore>, root: String, prefix: Path },
}

impl Store {
    /// The store for `batch`, from its `spec.output`; `s3://` outputs use `stores`'
    /// settings (endpoint, region, credentials).
    pub fn for_batch(client: &Client, batch: &SentimentBatch, stores: &ObjectStores) -> Result<Self, StoreError> {
        let namespace = batch.namespace().unwrap_or_default();
        let uid = batch.uid().unwrap_or_default();
        let name = batch.name_any();
        match &batch.spec.output {
            None => Ok(Store::ConfigMaps {
                api: Api::namespaced(client.clone(), &namespace),
                namespace,
                // Leave room for "-part-0000000-0000000" within the 253-character name limit.
                base: name.chars().take(200).collect(),
                uid,
                owner: batch.controller_owner_ref(&()).expect("a stored batch has a name and UID. This is a bug."),
                total: None,
            }),
            Some(output) => {
                let bad = |why: String| StoreError::BadUrl { url: output.clone(), why };
                let url = url::Url::parse(output).map_err(|e| bad(e.to_string()))?;
                let store: Arc<dyn ObjectStore> = match url.scheme() {
                    "s3" => Arc::new(stores.s3().with_url(output).build().map_err(|e| bad(e.to_string()))?),
                    "file" => Arc::new(LocalFileSystem::new()),
                    other => return Err(bad(format!("unsupported scheme {other:?}; use s3:// or file:///"))),
                };
                let root = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
                let base = Path::parse(url.path()).map_err(|e| bad(e.to_string()))?;
                // Namespace, name and UID keep two batches of the same name apart.
                let prefix = Path::from_iter(base.parts().chain([namespace.as_str().into(), format!("{name}-{uid}").as_str().into()]));
                Ok(Store::Objects { store, root, prefix })
            }
        }
    }

    /// This store, for a batch of `total` texts.
    pub fn of_texts(mut self, n: usize) -> Self {
        if let Store::ConfigMaps { total, .. } = &mut self {
            *total = Some(n);
        }
        self
    }

    /// Most texts one part (one chunk) may hold in this store.
    pub fn max_part_texts(&self) -> usize {
        match self {
            Store::ConfigMaps { .. } => MAX_CONFIGMAP_PART_TEXTS,
            Store::Objects { .. } => usize::MAX,
        }
    }

    /// Where `entry` lives: `configmap://NS/NAME`, or the object's URL.
    fn location(&self, entry: &Entry) -> String {
        match self {
            Store::ConfigMaps { namespace, base, .. } => format!("configmap://{namespace}/{}", entry.configmap(base)),
            Store::Objects { root, prefix, .. } => format!("{root}/{}", entry.object(prefix)),
        }
    }

    /// Where the results are, for `status.resultsLocation`: the manifest.
    pub fn manifest_location(&self) -> String {
        self.location(&Entry::manifest(0))
    }

    /// Where the failures list (the dead-letter list) starts.
    pub fn failures_location(&self) -> String {
        self.location(&Entry::failures(0))
    }

    /// The body of `entry`, if it exists.
    async fn get(&self, entry: &Entry) -> Result<Option<String>, StoreError> {
        Ok(match self {
            Store::ConfigMaps { api, base, .. } => {
                api.get_opt(&entry.configmap(base)).await?.and_then(|cm| cm.data).and_then(|mut d| d.remove(entry.key))
            }
            Store::Objects { store, prefix, .. } => match store.get(&entry.object(prefix)).await {
                Ok(got) => Some(String::from_utf8_lossy(&got.bytes().await?).into_owned()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            },
        })
    }

    async fn put(&self, entry: &Entry, body: String) -> Result<(), StoreError> {
        self.put_data(entry, [(entry.key, body)].into()).await
    }

    /// Writes `entry` with `data`: in a ConfigMap, every key; as an object, `entry.key`'s.
    async fn put_data(&self, entry: &Entry, mut data: BTreeMap<&str, String>) -> Result<(), StoreError> {
        match self {
            Store::ConfigMaps { api, base, uid, owner, .. } => {
                let name = entry.configmap(base);
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        labels: Some([(BATCH_UID_LABEL.to_string(), uid.clone()), (KIND_LABEL.to_string(), entry.kind.to_string())].into()),
                        owner_references: Some(vec![owner.clone()]),
                        ..Default::default()
                    },
                    data: Some(data.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
                    ..Default::default()
                };
                // Created, so that a ConfigMap of the same name that is not ours is never
                // overwritten; one that is ours (a retry, another leader's part) is replaced.
                match api.create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &cm).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        let existing = api.get_metadata(&name).await?;
                        if !existing.owner_references().iter().any(|o| o.uid == owner.uid) {
                            return Err(StoreError::NameClash { name });
                        }
                        let mut value = serde_json::to_value(&cm).expect("a ConfigMap serializes. This is a bug.");
                        value["apiVersion"] = "v1".into();
                        value["kind"] = "ConfigMap".into();
                        api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(value)).await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Store::Objects { store, prefix, .. } => {
                store.put(&entry.object(prefix), data.remove(entry.key).unwrap_or_default().into()).await?;
            }
        }
        Ok(())
    }

    /// Writes one part, replacing any earlier write of the same range; returns the stem
    /// it is stored under (as [`Store::read_parts`] would name it). A part of every text
    /// of a batch stored in ConfigMaps, none failed, is its whole result: it is written
    /// with its manifest, in the manifest's ConfigMap.
    pub async fn write_part(&self, part: &Part) -> Result<String, StoreError> {
        let body = to_jsonl(&part.lines);
        match self {
            Store::ConfigMaps { total: Some(total), .. }
                if part.start == 0 && part.end() == *total && part.lines.iter().all(|l| l.error.is_none()) =>
            {
                let entry = Entry::whole();
                let manifest = Manifest {
                    total_texts: *total,
                    parts: vec![ManifestPart { location: self.location(&entry), start: 0, end: *total }],
                    more_parts: Vec::new(),
                    failures: String::new(),
                    failure_shards: Vec::new(),
                    failed_texts: 0,
                };
                self.put_data(&entry, [(MANIFEST_KEY, pretty(&manifest)), (DATA_KEY, body)].into()).await?;
                Ok(WHOLE_STEM.into())
            }
            _ => {
                self.put(&Entry::part(&part.stem), body).await?;
                Ok(part.stem.clone())
            }
        }
    }

    /// The results of a batch written whole with its manifest ([`Store::write_part`]), read
    /// with one GET; `None` when its results are parts of their own, or not written yet.
    /// (A LIST costs the API server a wait until its cache is fresh, often 50–100 ms.) A
    /// store that knows its batch cannot be one part reads nothing: a large batch's
    /// manifest is not fetched on every page of its results.
    pub async fn read_whole(&self) -> Result<Option<Part>, StoreError> {
        let Store::ConfigMaps { api, base, uid, total, .. } = self else { return Ok(None) };
        if total.is_some_and(|t| t == 0 || t > MAX_CONFIGMAP_PART_TEXTS) {
            return Ok(None);
        }
        let entry = Entry::whole();
        let Some(cm) = api.get_opt(&entry.configmap(base)).await? else { return Ok(None) };
        let labels = cm.metadata.labels.as_ref();
        let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        if label(KIND_LABEL) != Some(WHOLE_KIND) || label(BATCH_UID_LABEL) != Some(uid.as_str()) {
            return Ok(None);
        }
        let body = cm.data.and_then(|mut d| d.remove(DATA_KEY)).unwrap_or_default();
        parse_part(&self.location(&entry), WHOLE_STEM.into(), &body).map(Some)
    }

    /// Every part committed so far, ordered by start, each index once.
    pub async fn read_parts(&self) -> Result<Vec<Part>, StoreError> {
        let mut parts = Vec::new();
        match self {
            Store::ConfigMaps { api, uid, .. } => {
                let lp = ListParams::default().labels(&format!("{BATCH_UID_LABEL}={uid},{KIND_LABEL} in ({PART_KINDS})"));
                for cm in api.list(&lp).await?.items {
                    let location = cm.name_any();
                    let Some(stem) = part_stem(&cm.metadata) else { continue };
                    let body = cm.data.and_then(|mut d| d.remove(DATA_KEY)).unwrap_or_default();
                    parts.push(parse_part(&location, stem, &body)?);
                }
            }
            Store::Objects { store, prefix, .. } => {
                let metas: Vec<_> = store.list(Some(prefix)).try_collect().await?;
                for meta in metas {
                    let Some(stem) = meta.location.filename().and_then(|f| f.strip_suffix(".jsonl")).filter(|f| f.starts_with("part-"))
                    else {
                        continue;
                    };
                    let stem = stem.to_string();
                    let body = store.get(&meta.location).await?.bytes().await?;
                    parts.push(parse_part(meta.location.as_ref(), stem, &String::from_utf8_lossy(&body))?);
                }
            }
        }
        Ok(one_per_index(parts))
    }

    /// The committed parts, as (first index, name), ordered by first index; a part's name
    /// carries its first index, so nothing is read but the listing.
    pub async fn part_names(&self) -> Result<Vec<(usize, String)>, StoreError> {
        let mut starts: Vec<(usize, String)> = match self {
            Store::ConfigMaps { api, uid, .. } => {
                let lp = ListParams::default().labels(&format!("{BATCH_UID_LABEL}={uid},{KIND_LABEL} in ({PART_KINDS})"));
                let metas = api.list_metadata(&lp).await?.items;
                metas.into_iter().filter_map(|m| Some((stem_start(&part_stem(&m.metadata)?)?, m.name_any()))).collect()
            }
            Store::Objects { store, prefix, .. } => {
                let metas: Vec<_> = store.list(Some(prefix)).try_collect().await?;
                let files = metas.into_iter().filter_map(|m| m.location.filename().map(str::to_string));
                files.filter_map(|f| Some((part_start(f.strip_prefix("part-")?.strip_suffix(".jsonl")?)?, f))).collect()
            }
        };
        starts.sort();
        Ok(starts)
    }

    /// The lines of the part [`Store::part_names`] named `name`; `None` if it is gone (a
    /// retry deleted it since the listing).
    pub async fn read_part(&self, name: &str) -> Result<Option<Vec<ResultLine>>, StoreError> {
        let body = match self {
            Store::ConfigMaps { api, .. } => match api.get_opt(name).await? {
                Some(cm) => cm.data.and_then(|mut d| d.remove(DATA_KEY)).unwrap_or_default(),
                None => return Ok(None),
            },
            Store::Objects { store, prefix, .. } => match store.get(&prefix.clone().join(name)).await {
                Ok(got) => String::from_utf8_lossy(&got.bytes().await?).into_owned(),
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            },
        };
        parse_lines(name, &body).map(Some)
    }

    /// The committed lines with an index in `range`, in order and each index once,
    /// reading only the parts that can hold them.
    pub async fn read_range(&self, range: std::ops::Range<usize>) -> Result<Vec<ResultLine>, StoreError> {
        if let Some(whole) = self.read_whole().await? {
            return Ok(whole.lines.into_iter().filter(|l| range.contains(&l.index)).collect());
        }
        let starts = self.part_names().await?;
        let mut lines = Vec::new();
        for (i, (start, name)) in starts.iter().enumerate() {
            let next = starts.get(i + 1).map_or(usize::MAX, |(s, _)| *s);
            if *start >= range.end || next <= range.start {
                continue;
            }
            let Some(part) = self.read_part(name).await? else { continue };
            lines.extend(part.into_iter().filter(|l| range.contains(&l.index)));
        }
        // Stable: of overlapping parts, the one that starts first keeps an index.
        lines.sort_by_key(|l| l.index);
        lines.dedup_by_key(|l| l.index);
        Ok(lines)
    }

    /// How many shards the failures list of a final batch has; 0 before the manifest is
    /// written.
    pub async fn failure_shards(&self) -> Result<usize, StoreError> {
        let Some(head) = self.get(&Entry::manifest(0)).await? else { return Ok(0) };
        let manifest: Manifest =
            serde_json::from_str(&head).map_err(|e| StoreError::Corrupt { location: self.manifest_location(), why: e.to_string() })?;
        // A manifest from before `failureShards` names its one shard in `failures` alone.
        Ok(if manifest.failure_shards.is_empty() { usize::from(!manifest.failures.is_empty()) } else { manifest.failure_shards.len() })
    }

    /// Shard `shard` of the failures list, ordered by index (as is the whole list).
    pub async fn read_failure_shard(&self, shard: usize) -> Result<Vec<ResultLine>, StoreError> {
        let entry = Entry::failures(shard);
        let body = self.get(&entry).await?.unwrap_or_default();
        let lines = body.lines().filter(|l| !l.is_empty()).map(serde_json::from_str);
        lines.collect::<Result<_, _>>().map_err(|e| StoreError::Corrupt { location: self.location(&entry), why: e.to_string() })
    }

    /// The failures list of a final batch, every shard the manifest names; empty before
    /// the manifest is written.
    pub async fn read_failures(&self) -> Result<Vec<ResultLine>, StoreError> {
        let mut lines = Vec::new();
        for shard in 0..self.failure_shards().await? {
            lines.extend(self.read_failure_shard(shard).await?);
        }
        Ok(lines)
    }

    /// Every line of the batch in input order, each index once, in chunks, holding one
    /// part and one failures shard at a time: the parts (as [`Store::part_names`] listed
    /// them) merged with the failures list, which alone holds the texts an expiry left
    /// unfinished. Of a part's line and a failure of the same index, the part's is kept.
    pub fn lines_in_order(self, parts: Vec<(usize, String)>) -> impl futures_util::Stream<Item = Result<Vec<ResultLine>, StoreError>> {
        struct Merge {
            store: Store,
            parts: std::collections::VecDeque<String>,
            shards: Option<std::ops::Range<usize>>,
            part: std::collections::VecDeque<ResultLine>,
            failed: std::collections::VecDeque<ResultLine>,
            next: usize,
        }
        let merge = Merge {
            store: self,
            parts: parts.into_iter().map(|(_, n)| n).collect(),
            shards: None,
            part: [].into(),
            failed: [].into(),
            next: 0,
        };
        futures_util::stream::try_unfold(merge, |mut m| async move {
            // The manifest is read when the parts are, so that none finished in between.
            let mut shards = match m.shards.take() {
                Some(s) => s,
                None => 0..m.store.failure_shards().await?,
            };
            loop {
                if m.part.is_empty()
                    && let Some(name) = m.parts.pop_front()
                {
                    m.part = m.store.read_part(&name).await?.unwrap_or_default().into();
                    continue;
                }
                if m.failed.is_empty()
                    && let Some(shard) = shards.next()
                {
                    m.failed = m.store.read_failure_shard(shard).await?.into();
                    continue;
                }
                // Each buffer holds lines, or its source is spent: the smaller index is next.
                let mut out = Vec::new();
                while (!m.part.is_empty() || m.parts.is_empty()) && (!m.failed.is_empty() || shards.is_empty()) {
                    let line = match (m.part.front(), m.failed.front()) {
                        (None, None) => break,
                        (Some(p), Some(f)) if f.index < p.index => m.failed.pop_front(),
                        (Some(p), Some(f)) => {
                            if f.index == p.index {
                                m.failed.pop_front();
                            }
                            m.part.pop_front()
                        }
                        (Some(_), None) => m.part.pop_front(),
                        (None, Some(_)) => m.failed.pop_front(),
                    };
                    let line = line.expect("the buffer was not empty. This is a bug.");
                    // Overlapping parts: the one that starts first keeps an index.
                    if line.index >= m.next {
                        m.next = line.index + 1;
                        out.push(line);
                    }
                }
                let spent = m.part.is_empty() && m.failed.is_empty() && m.parts.is_empty() && shards.is_empty();
                if !out.is_empty() || spent {
                    m.shards = Some(shards);
                    return Ok((!out.is_empty()).then_some((out, m)));
                }
            }
        })
    }

    /// Writes the failures list and the manifest, each in shards that fit this store,
    /// the manifest's first shard last; returns the manifest's location.
    pub async fn finish(&self, total: usize, parts: &[Part], failures: &[ResultLine]) -> Result<String, StoreError> {
        let (per_failures, per_manifest) = match self {
            Store::ConfigMaps { .. } => (FAILURES_PER_SHARD, PARTS_PER_MANIFEST_SHARD),
            Store::Objects { .. } => (usize::MAX, usize::MAX),
        };
        // A part written with its manifest holds every text, none failed, and
        // [`one_per_index`] leaves it the only part: all is written already.
        if let Some(whole) = parts.iter().find(|p| p.stem == WHOLE_STEM) {
            return if parts.len() == 1 && whole.start == 0 && whole.end() == total && failures.is_empty() {
                Ok(self.manifest_location())
            } else {
                Err(StoreError::Corrupt {
                    location: self.manifest_location(),
                    why: "a whole batch's part beside others. This is a bug.".into(),
                })
            };
        }
        // No failures, no list: a successful batch writes only its manifest here.
        let mut failure_shards = Vec::new();
        for (i, shard) in failures.chunks(per_failures).enumerate() {
            let entry = Entry::failures(i);
            self.put(&entry, to_jsonl(shard)).await?;
            failure_shards.push(self.location(&entry));
        }
        let entries: Vec<_> =
            parts.iter().map(|p| ManifestPart { location: self.location(&Entry::part(&p.stem)), start: p.start, end: p.end() }).collect();
        let mut chunks = entries.chunks(per_manifest);
        let first = chunks.next().unwrap_or_default().to_vec();
        let mut more_parts = Vec::new();
        for (i, chunk) in chunks.enumerate() {
            let entry = Entry::manifest(i + 1);
            self.put(&entry, serde_json::to_string(chunk).expect("parts serialize. This is a bug.")).await?;
            more_parts.push(self.location(&entry));
        }
        let manifest = Manifest {
            total_texts: total,
            parts: first,
            more_parts,
            failures: failure_shards.first().cloned().unwrap_or_default(),
            failure_shards,
            failed_texts: failures.len(),
        };
        self.put(&Entry::manifest(0), pretty(&manifest)).await?;
        Ok(self.manifest_location())
    }

    /// Deletes the part stored as `stem`, so its range is computed again.
    pub async fn delete_part(&self, stem: &str) -> Result<(), StoreError> {
        let entry = Entry::part(stem);
        match self {
            Store::ConfigMaps { api, base, .. } => match api.delete(&entry.configmap(base), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            },
            Store::Objects { store, prefix, .. } => match store.delete(&entry.object(prefix)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            },
        }
        Ok(())
    }

    /// Removes every result of the batch, as it is deleted: objects outside the cluster
    /// one by one, and its ConfigMaps in one request. Those would be garbage-collected
    /// through their owner reference anyway, but only at the controller-manager's pace
    /// (20 requests a second by default), which thousands of expiring jobs outrun.
    pub async fn delete_all(&self) -> Result<(), StoreError> {
        match self {
            Store::ConfigMaps { api, uid, .. } => {
                let owned = ListParams::default().labels(&format!("{BATCH_UID_LABEL}={uid}"));
                api.delete_collection(&DeleteParams::background(), &owned).await?;
            }
            Store::Objects { store, prefix, .. } => {
                let metas: Vec<_> = store.list(Some(prefix)).try_collect().await?;
                for meta in metas {
                    store.delete(&meta.location).await?;
                }
            }
        }
        Ok(())
    }
}

/// One stored object of a batch: a part, the failures list or the manifest, named as a
/// ConfigMap (`<batch>-<stem>`, data key `key`) or as an object (`<prefix>/<file>`).
struct Entry {
    stem: String,
    file: String,
    key: &'static str,
    /// The value of the `kubesentiment.io/results` label.
    kind: &'static str,
}

impl Entry {
    /// A part, by its stem (`part-<start>-<end>`; `part-<start>` as written before 0.2).
    fn part(stem: &str) -> Self {
        Entry { stem: stem.to_string(), file: format!("{stem}.jsonl"), key: DATA_KEY, kind: "part" }
    }

    /// Shard `n` of the failures list: `failures`, `failures-1`, …
    fn failures(n: usize) -> Self {
        let stem = if n == 0 { "failures".to_string() } else { format!("failures-{n}") };
        Entry { file: format!("{stem}.jsonl"), stem, key: DATA_KEY, kind: "failures" }
    }

    /// Shard `n` of the manifest: `results` (`manifest.json`), `results-1`, …
    fn manifest(n: usize) -> Self {
        let (stem, file) = if n == 0 {
            ("results".to_string(), "manifest.json".to_string())
        } else {
            (format!("results-{n}"), format!("manifest-{n}.json"))
        };
        Entry { stem, file, key: MANIFEST_KEY, kind: "manifest" }
    }

    /// The manifest's ConfigMap, holding its only part too.
    fn whole() -> Self {
        Entry { kind: WHOLE_KIND, ..Entry::manifest(0) }
    }

    fn configmap(&self, base: &str) -> String {
        format!("{base}-{}", self.stem)
    }

    fn object(&self, prefix: &Path) -> Path {
        prefix.clone().join(self.file.as_str())
    }
}

/// The stem of the part a result ConfigMap holds: `part-<start>-<end>` from its name, or
/// [`WHOLE_STEM`] for a manifest holding its only part; `None` for a ConfigMap of no part.
fn part_stem(meta: &ObjectMeta) -> Option<String> {
    match meta.labels.as_ref()?.get(KIND_LABEL)?.as_str() {
        WHOLE_KIND => Some(WHOLE_STEM.to_string()),
        _ => Some(format!("part-{}", meta.name.as_deref()?.rsplit_once("-part-")?.1)),
    }
}

fn pretty(manifest: &Manifest) -> String {
    serde_json::to_string_pretty(manifest).expect("a manifest serializes. This is a bug.")
}

/// The first index of the part stored as `stem`.
fn stem_start(stem: &str) -> Option<usize> {
    if stem == WHOLE_STEM { Some(0) } else { part_start(stem.strip_prefix("part-")?) }
}

/// The first index in a part's name (`0000500-0000600` or `0000500` → 500).
fn part_start(range: &str) -> Option<usize> {
    let digits = range.split('-').next()?;
    digits.bytes().all(|b| b.is_ascii_digit()).then(|| digits.parse().ok()).flatten()
}

fn to_jsonl(lines: &[ResultLine]) -> String {
    let mut out = String::new();
    for l in lines {
        out.push_str(&serde_json::to_string(l).expect("a result line serializes. This is a bug."));
        out.push('\n');
    }
    out
}

/// A stored part's lines: at least one, with contiguous indices.
fn parse_lines(location: &str, body: &str) -> Result<Vec<ResultLine>, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt { location: location.to_string(), why };
    let lines = body
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str::<ResultLine>(l).map_err(|e| corrupt(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let start = lines.first().ok_or_else(|| corrupt("empty".into()))?.index;
    if lines.iter().enumerate().any(|(i, l)| l.index != start + i) {
        return Err(corrupt("indices are not contiguous".into()));
    }
    Ok(lines)
}

/// A stored part, named `stem` where it is stored.
fn parse_part(location: &str, stem: String, body: &str) -> Result<Part, StoreError> {
    let lines = parse_lines(location, body)?;
    Ok(Part { start: lines[0].index, lines, stem })
}

/// The ranges of `0..total` no part covers: the work left.
pub fn remaining(total: usize, parts: &[Part]) -> Vec<std::ops::Range<usize>> {
    let covered: BTreeMap<usize, usize> = parts.iter().map(|p| (p.start, p.end())).collect();
    let mut out = Vec::new();
    let mut at = 0;
    for (start, end) in covered {
        if start > at {
            out.push(at..start.min(total));
        }
        at = at.max(end);
    }
    if at < total {
        out.push(at..total);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(start: usize, len: usize) -> Part {
        Part::new(
            start,
            (start..start + len).map(|index| ResultLine { index, id: None, prediction: None, error: Some("x".into()) }).collect(),
        )
    }

    /// Overlapping parts, a part's failure also in the failures list, and gaps only the
    /// failures list fills (an expiry's timeouts), over two shards: every index once, in
    /// order, the part's line kept over the list's.
    #[tokio::test]
    async fn lines_in_order_merge_parts_and_failures() {
        let store =
            Store::Objects { store: Arc::new(object_store::memory::InMemory::new()), root: "memory://".into(), prefix: Path::from("b") };
        let ok = |index| ResultLine { index, id: Some(format!("t{index}")), prediction: None, error: None };
        let timeout = |index| ResultLine { index, id: None, prediction: None, error: Some("timeout".into()) };
        let mut parts = vec![Part::new(0, (0..30).map(ok).collect()), Part::new(20, (20..40).map(ok).collect())];
        parts[1].lines[15].error = Some("inference_failed".into());
        parts.push(Part::new(70, (70..90).map(ok).collect()));
        for p in &parts {
            store.write_part(p).await.unwrap();
        }
        let mut failures: Vec<ResultLine> = (40..70).chain(90..100).map(timeout).collect();
        failures.insert(0, ResultLine { id: None, ..parts[1].lines[15].clone() });
        // Shards as the ConfigMap store cuts them (20, 20 and 1 lines).
        let mut shards = Vec::new();
        for (i, shard) in failures.chunks(20).enumerate() {
            store.put(&Entry::failures(i), to_jsonl(shard)).await.unwrap();
            shards.push(store.location(&Entry::failures(i)));
        }
        let manifest = Manifest {
            total_texts: 100,
            parts: Vec::new(),
            more_parts: Vec::new(),
            failures: shards[0].clone(),
            failure_shards: shards,
            failed_texts: 41,
        };
        store.put(&Entry::manifest(0), serde_json::to_string(&manifest).unwrap()).await.unwrap();

        let names = store.part_names().await.unwrap();
        assert_eq!(names.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [0, 20, 70]);
        let chunks: Vec<Vec<ResultLine>> = store.clone().lines_in_order(names).try_collect().await.unwrap();
        let lines: Vec<ResultLine> = chunks.into_iter().flatten().collect();
        assert_eq!(lines.iter().map(|l| l.index).collect::<Vec<_>>(), (0..100).collect::<Vec<_>>());
        assert_eq!(lines[35].error.as_deref(), Some("inference_failed"));
        assert_eq!(lines[35].id.as_deref(), Some("t35"), "the part's line, not the list's");
        assert!(lines[..35].iter().all(|l| l.error.is_none()), "overlapping parts: the first one's lines");
        assert!(lines[40..70].iter().chain(&lines[90..]).all(|l| l.error.as_deref() == Some("timeout")));
        assert!(lines[70..90].iter().all(|l| l.error.is_none()));

        // Before the manifest: the parts alone.
        store.delete_all().await.unwrap();
        store.write_part(&parts[2]).await.unwrap();
        let names = store.part_names().await.unwrap();
        let lines: Vec<Vec<ResultLine>> = store.lines_in_order(names).try_collect().await.unwrap();
        assert_eq!(lines.concat().iter().map(|l| l.index).collect::<Vec<_>>(), (70..90).collect::<Vec<_>>());
    }

    #[test]
    fn remaining_is_the_complement_of_the_parts() {
        assert_eq!(remaining(10, &[]), vec![0..10]);
        assert_eq!(remaining(10, &[part(0, 10)]), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(remaining(10, &[part(2, 3), part(7, 1)]), vec![0..2, 5..7, 8..10]);
        assert_eq!(remaining(10, &[part(0, 4), part(4, 2)]), vec![6..10]);
    }

    /// Two leaders cut 0..100 differently (by 30 and by 40): each index is kept once,
    /// every kept part still names where it is stored, and a part wholly covered goes.
    #[test]
    fn overlapping_parts_keep_each_index_once() {
        let mut parts: Vec<Part> = [0, 30, 60, 90].iter().map(|s| part(*s, 30.min(100 - s))).collect();
        parts.extend([0, 40, 80].iter().map(|s| part(*s, 40.min(100 - s))));
        parts.push(part(41, 5));
        let kept = one_per_index(parts);
        let indices: Vec<usize> = kept.iter().flat_map(|p| p.lines.iter().map(|l| l.index)).collect();
        assert_eq!(indices, (0..100).collect::<Vec<_>>());
        for p in &kept {
            assert!(p.lines.iter().enumerate().all(|(i, l)| l.index == p.start + i), "contiguous from start: {p:?}");
        }
        assert!(kept.iter().all(|p| p.stem != "part-0000041-0000046"), "wholly covered");
        assert!(kept.iter().any(|p| p.stem == "part-0000040-0000080" && p.start == 60), "trimmed, named where stored");
        assert_eq!(remaining(100, &kept), Vec::<std::ops::Range<usize>>::new());
    }

    /// Of parts that start together the longer keeps the texts, in whichever order they
    /// are listed: a part of the whole batch is never cut.
    #[test]
    fn of_parts_that_start_together_the_longer_wins() {
        let whole = Part { stem: WHOLE_STEM.into(), ..part(0, 10) };
        for parts in [vec![part(0, 5), whole.clone(), part(5, 5)], vec![whole.clone(), part(0, 5)]] {
            assert_eq!(one_per_index(parts), std::slice::from_ref(&whole));
        }
    }

    #[test]
    fn parts_round_trip_and_reject_gaps() {
        let p = part(5, 3);
        assert_eq!(parse_part("p", p.stem.clone(), &to_jsonl(&p.lines)).unwrap(), p);
        let mut gappy = p.lines.clone();
        gappy.remove(1);
        assert!(parse_part("p", p.stem.clone(), &to_jsonl(&gappy)).unwrap_err().to_string().contains("contiguous"));
    }
}
