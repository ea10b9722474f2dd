//! Labelled sentences for `train` and `eval`, from three formats:
//! - UCI sentiment sentences: a JSON array of `{"text", "class": 0|1}` (an empty row
//!   with a null class, as the fixtures end, is skipped);
//! - Hutto ICWSM-2014 ground truth: `id<TAB>valence<TAB>text` lines, valence in −4…+4;
//! - JSONL with `text` and `label` (a label name, or 0/1 for NEGATIVE/POSITIVE).

use std::path::Path;

use serde::Deserialize;

pub const NEGATIVE: &str = "NEGATIVE";
pub const NEUTRAL: &str = "NEUTRAL";
pub const POSITIVE: &str = "POSITIVE";

/// Hutto valences strictly between these two are NEUTRAL. The ratings are means of ten
/// raters on −4…+4, where ±1 reads "slightly"; a sentence is NEUTRAL unless the raters
/// lean past "slightly" on average. docs/MODELS.md compares the bands tried.
pub const NEUTRAL_BAND: (f32, f32) = (-1.5, 1.5);

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text: String,
    pub label: String,
}

/// Which part of a file to use: Hutto files are split 80/20 by a stable hash of the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    All,
    Train,
    Heldout,
}

pub fn hutto_label(valence: f32) -> &'static str {
    if valence <= NEUTRAL_BAND.0 {
        NEGATIVE
    } else if valence >= NEUTRAL_BAND.1 {
        POSITIVE
    } else {
        NEUTRAL
    }
}

/// FNV-1a: stable across Rust releases, unlike `DefaultHasher`.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

pub fn in_split(text: &str, split: Split) -> bool {
    let heldout = fnv1a(text).is_multiple_of(5);
    match split {
        Split::All => true,
        Split::Train => !heldout,
        Split::Heldout => heldout,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}: {reason}")]
pub struct DataError {
    path: String,
    line: usize,
    reason: String,
}

/// Whether a file is UCI JSON, Hutto text or JSONL, by its name and first character.
/// `split` applies to Hutto files only; the other formats are always read whole.
pub fn load(path: &Path, split: Split) -> Result<Vec<Example>, DataError> {
    let err = |line: usize, reason: String| DataError { path: path.display().to_string(), line, reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(0, e.to_string()))?;
    let name = path.to_string_lossy();
    let mut out = Vec::new();
    if name.ends_with(".jsonl") {
        #[derive(Deserialize)]
        struct Row {
            text: String,
            label: serde_json::Value,
        }
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let row: Row = serde_json::from_str(line).map_err(|e| err(i + 1, e.to_string()))?;
            let label = match row.label {
                serde_json::Value::String(s) => s.to_uppercase(),
                serde_json::Value::Number(n) if n.as_u64() == Some(0) => NEGATIVE.into(),
                serde_json::Value::Number(n) if n.as_u64() == Some(1) => POSITIVE.into(),
                other => return Err(err(i + 1, format!("label {other} is neither a name nor 0/1"))),
            };
            out.push(Example { text: row.text, label });
        }
    } else if text.trim_start().starts_with('[') {
        #[derive(Deserialize)]
        struct Row {
            text: String,
            class: Option<u8>,
        }
        let rows: Vec<Row> = serde_json::from_str(&text).map_err(|e| err(1, e.to_string()))?;
        for r in rows {
            let label = match r.class {
                Some(0) => NEGATIVE,
                Some(1) => POSITIVE,
                // The UCI fixtures end with an empty `{"text": "", "class": null}` row.
                None if r.text.is_empty() => continue,
                c => return Err(err(1, format!("class {c:?} is not 0 or 1"))),
            };
            out.push(Example { text: r.text, label: label.into() });
        }
    } else {
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let mut parts = line.trim_end_matches('\r').splitn(3, '\t');
            let (_, valence, sentence) = (parts.next(), parts.next(), parts.next());
            let (Some(valence), Some(sentence)) = (valence, sentence) else {
                return Err(err(i + 1, "expected id<TAB>valence<TAB>text".into()));
            };
            let valence: f32 = valence.trim().parse().map_err(|_| err(i + 1, format!("valence {valence:?} is not a number")))?;
            if in_split(sentence, split) {
                out.push(Example { text: sentence.to_string(), label: hutto_label(valence).into() });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_all_three_formats() {
        let dir = std::env::temp_dir().join(format!("ks-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            (
                "a.json",
                r#"[{"text":"good","class":1},{"text":"bad","class":0},{"text":"","class":null}]"#,
                vec![("good", POSITIVE), ("bad", NEGATIVE)],
            ),
            (
                "b.txt",
                "1_1\t-1.9\tawful\r\n1_2\t0.2\tmeh\n1_3\t2.5\tgreat\n",
                vec![("awful", NEGATIVE), ("meh", NEUTRAL), ("great", POSITIVE)],
            ),
            (
                "c.jsonl",
                "{\"text\":\"x\",\"label\":\"positive\"}\n\n{\"text\":\"y\",\"label\":0}\n",
                vec![("x", POSITIVE), ("y", NEGATIVE)],
            ),
        ];
        for (name, body, want) in cases {
            let p = dir.join(name);
            std::fs::write(&p, body).unwrap();
            let got: Vec<(String, String)> = load(&p, Split::All).unwrap().into_iter().map(|e| (e.text, e.label)).collect();
            let want: Vec<(String, String)> = want.into_iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
            assert_eq!(got, want, "{name}");
        }
        std::fs::write(dir.join("bad.txt"), "1\tnotanumber\tx\n").unwrap();
        assert!(load(&dir.join("bad.txt"), Split::All).unwrap_err().to_string().contains("bad.txt:1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn splits_are_disjoint_stable_and_about_a_fifth() {
        let texts: Vec<String> = (0..2000).map(|i| format!("sentence number {i}")).collect();
        let held = texts.iter().filter(|t| in_split(t, Split::Heldout)).count();
        assert!((300..500).contains(&held), "{held}");
        assert!(texts.iter().all(|t| in_split(t, Split::Train) != in_split(t, Split::Heldout)));
        assert_eq!(fnv1a("a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn neutral_band_edges() {
        for (v, want) in [(-4.0, NEGATIVE), (-1.5, NEGATIVE), (-1.49, NEUTRAL), (0.0, NEUTRAL), (1.49, NEUTRAL), (1.5, POSITIVE)] {
            assert_eq!(hutto_label(v), want, "{v}");
        }
    }
}
