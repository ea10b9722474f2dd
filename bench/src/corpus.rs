//! The texts a benchmark sends: a built-in generator of review sentences, or a file.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};

const OPENERS: &[&str] = &[
    "",
    "Honestly,",
    "I have to say",
    "After two weeks of use,",
    "For the price,",
    "Overall,",
    "To be fair,",
    "Sadly,",
    "Surprisingly,",
    "As a long-time customer, I think",
    "Right out of the box,",
    "In my experience,",
    "Compared to my old one,",
    "Without a doubt,",
    "Frankly,",
];
const SUBJECTS: &[&str] = &[
    "the battery life",
    "the customer service",
    "this blender",
    "the hotel room",
    "the pasta",
    "the delivery",
    "the sound quality",
    "the screen",
    "the staff",
    "this movie",
    "the plot",
    "the checkout process",
    "the headphones",
    "the fit of these jeans",
    "the coffee",
    "the app",
    "the instructions",
    "the build quality",
    "our waiter",
    "the price",
    "the camera",
    "the keyboard",
    "the soundtrack",
    "the acting",
    "the packaging",
    "the mattress",
    "the return policy",
    "the latest update",
    "the charger",
    "the seats",
];
const VERDICTS: &[&str] = &[
    "is excellent",
    "was a huge disappointment",
    "exceeded my expectations",
    "stopped working after a week",
    "is decent but nothing special",
    "made my day",
    "felt cheap and flimsy",
    "is worth every penny",
    "was rude and slow",
    "works exactly as described",
    "is way too loud",
    "could not have been better",
    "broke on the first day",
    "is perfectly fine",
    "left a lot to be desired",
    "is simply wonderful",
    "was overpriced for what you get",
    "keeps getting better",
    "is confusing to use",
    "arrived damaged",
    "is fantastic",
    "was mediocre at best",
    "impressed everyone at the table",
    "is a complete waste of money",
    "does the job",
    "is beautifully made",
    "ruined the whole evening",
    "is surprisingly good",
    "was terrible",
    "is solid",
];
const ENDINGS: &[&str] = &[
    ".",
    "!",
    ", and I would buy it again.",
    ", so I returned it.",
    ", and I told all my friends.",
    ", and I will not be back.",
    ", which I did not expect.",
    " for a product at this price.",
    ", five stars.",
    ", one star.",
    " and the rest was just okay.",
    ", but shipping took forever.",
    ", highly recommended.",
    ", avoid at all costs.",
    " compared to the competition.",
    " after the first month.",
    ", as the reviews promised.",
    " and support never answered my emails.",
    ", exactly what I needed.",
    " even though the manual is useless.",
    ", thanks to the friendly team.",
    " and I regret buying it.",
    " on every single day.",
    ", my kids love it.",
    " for what it is.",
];

/// Sentences the generator can make; each index below this gives a different one.
pub const BUILT_IN_SIZE: usize = 15 * 30 * 30 * 25;
/// A step coprime with [`BUILT_IN_SIZE`], so consecutive indices differ in every part.
const STRIDE: usize = 7_919;

/// Review sentence number `i` of the built-in corpus (it repeats after [`BUILT_IN_SIZE`]).
pub fn review(i: usize) -> String {
    let mut n = (i % BUILT_IN_SIZE) * STRIDE % BUILT_IN_SIZE;
    let mut pick = |words: &[&'static str]| {
        let w = words[n % words.len()];
        n /= words.len();
        w
    };
    let (opener, subject, verdict, ending) = (pick(OPENERS), pick(SUBJECTS), pick(VERDICTS), pick(ENDINGS));
    let sentence = if opener.is_empty() { format!("{subject} {verdict}{ending}") } else { format!("{opener} {subject} {verdict}{ending}") };
    let mut chars = sentence.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// Where texts come from, handed out in order to whoever asks.
pub struct Corpus {
    file: Option<Vec<String>>,
    next: AtomicUsize,
}

impl Corpus {
    /// The generated review sentences from `start` on: no two jobs of a run share a text
    /// until [`BUILT_IN_SIZE`] texts have been sent, so no result cache can help. (Give
    /// each run its own `start`, or the operator's cache answers a rerun.)
    pub fn built_in(start: usize) -> Self {
        Corpus { file: None, next: AtomicUsize::new(start) }
    }

    /// Texts from `path`: JSON Lines (a string, or an object with `text`, per line) for
    /// `.jsonl`/`.ndjson`, CSV (the `text` column, else the first) for `.csv`, else one
    /// text per line. Blank lines are skipped. Texts are reused in turn when a run needs more.
    pub fn load(path: &Path) -> Result<Self> {
        let body = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        let texts = match ext.as_str() {
            "jsonl" | "ndjson" => json_lines(&body),
            "csv" => csv_texts(&body),
            _ => Ok(body.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()),
        }
        .with_context(|| format!("reading {}", path.display()))?;
        if texts.is_empty() {
            bail!("{} holds no texts", path.display());
        }
        Ok(Corpus { file: Some(texts), next: AtomicUsize::new(0) })
    }

    /// The next `n` texts.
    pub fn take(&self, n: usize) -> Vec<String> {
        let start = self.next.fetch_add(n, Ordering::Relaxed);
        (start..start + n)
            .map(|i| match &self.file {
                Some(texts) => texts[i % texts.len()].clone(),
                None => review(i),
            })
            .collect()
    }

    /// Distinct texts available before they repeat.
    pub fn distinct(&self) -> usize {
        self.file.as_ref().map_or(BUILT_IN_SIZE, Vec::len)
    }
}

fn json_lines(body: &str) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    for (n, line) in body.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let value: serde_json::Value = serde_json::from_str(line).with_context(|| format!("line {}: not JSON", n + 1))?;
        let text = match &value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(o) => match o.get("text") {
                Some(serde_json::Value::String(s)) => s.clone(),
                _ => bail!("line {}: an object needs a string \"text\"", n + 1),
            },
            _ => bail!("line {}: expected a string or an object with \"text\"", n + 1),
        };
        texts.push(text);
    }
    Ok(texts)
}

fn csv_texts(body: &str) -> Result<Vec<String>> {
    let mut reader = csv::Reader::from_reader(body.as_bytes());
    let column = reader.headers()?.iter().position(|h| h.trim().eq_ignore_ascii_case("text")).unwrap_or(0);
    let mut texts = Vec::new();
    for record in reader.records() {
        let record = record?;
        if let Some(text) = record.get(column).map(str::trim).filter(|t| !t.is_empty()) {
            texts.push(text.to_string());
        }
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn generated_reviews_do_not_repeat_within_the_corpus() {
        let seen: HashSet<String> = (0..BUILT_IN_SIZE).map(review).collect();
        assert_eq!(seen.len(), BUILT_IN_SIZE);
        assert_eq!(review(BUILT_IN_SIZE + 3), review(3));
        assert!(review(0).starts_with(|c: char| c.is_uppercase()), "{}", review(0));
    }

    #[test]
    fn files_of_each_kind_give_their_texts() {
        let dir = std::env::temp_dir().join(format!("kubesentiment-corpus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            ("a.jsonl", "\"plain string\"\n\n{\"text\": \"from an object\", \"id\": 3}\n"),
            ("a.csv", "id,text\n1,plain string\n2,\"from an object\"\n3,\n"),
            ("a.txt", "plain string\n  \nfrom an object\n"),
        ];
        for (name, body) in cases {
            std::fs::write(dir.join(name), body).unwrap();
            let corpus = Corpus::load(&dir.join(name)).unwrap();
            assert_eq!(corpus.take(3), ["plain string", "from an object", "plain string"], "{name}");
        }
        std::fs::write(dir.join("bad.jsonl"), "\"ok\"\n{\"txt\": 1}\n").unwrap();
        let err = format!("{:#}", Corpus::load(&dir.join("bad.jsonl")).err().unwrap());
        assert!(err.contains("line 2"), "{err}");
        std::fs::write(dir.join("empty.txt"), "\n\n").unwrap();
        assert!(Corpus::load(&dir.join("empty.txt")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
