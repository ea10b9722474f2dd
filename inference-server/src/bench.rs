//! `bench`: texts per second of bare forward passes (synthetic lengths, and real UCI
//! sentences with tokenization) and of the served API under concurrent clients, all in
//! one process and one run, so the ratios are fair on a noisy machine.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::batching::PassLimits;
use crate::data::{self, Split};
use crate::http::{self, RequestLimits};
use crate::infer::BatcherConfig;
use crate::model::source::ModelArgs;
use crate::model::{Backend, Encoded};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Batch sizes of the bare-forward grid.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    pub batch_sizes: Vec<usize>,
    /// Token counts (special tokens included) of the bare-forward grid.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    pub tokens: Vec<usize>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Real sentences (UCI json, Hutto txt, JSONL) [default: the UCI sets setup.sh installs].
    #[arg(long, num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// Concurrent clients of the served measurement; 0 skips it.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Texts per request of the served measurement.
    #[arg(long, default_value_t = 8)]
    pub texts_per_request: usize,
    #[command(flatten)]
    pub batcher: BatcherConfig,
    /// Rounds of bare-then-served on the sentences; the ratio reported is their median.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Write the report as JSON here too.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Point {
    pub what: String,
    pub batch: usize,
    pub tokens: f64,
    pub texts_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub model: String,
    pub intra_threads: usize,
    pub points: Vec<Point>,
    pub served: Option<Served>,
    /// Served texts/s over bare texts/s on the same sentences: the median round.
    pub served_over_bare: Option<f64>,
}

/// Runs `f` (which returns texts done) until `seconds` pass; texts per second.
fn rate(seconds: f64, mut f: impl FnMut() -> Result<usize>) -> Result<f64> {
    f()?; // warm-up
    let start = Instant::now();
    let mut texts = 0;
    while start.elapsed().as_secs_f64() < seconds {
        texts += f()?;
    }
    Ok(texts as f64 / start.elapsed().as_secs_f64())
}

pub async fn run(args: BenchArgs) -> Result<()> {
    let model = args.model.load().await?;
    let mut points = Vec::new();
    let mut backend = model.backend()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for &tokens in &args.tokens {
        for &batch in &args.batch_sizes {
            let encoded: Vec<Encoded> = (0..batch)
                .map(|_| {
                    let mut ids = vec![101];
                    ids.extend((2..tokens).map(|_| rng.random_range(1000..29000)));
                    ids.push(102);
                    Encoded { type_ids: vec![0; ids.len()], ids, truncated: false }
                })
                .collect();
            let refs: Vec<&Encoded> = encoded.iter().collect();
            let tps = rate(args.seconds, || Ok(backend.logits(&refs).map(|l| l.nrows())?))?;
            println!("bare forward  batch {batch:>3}  tokens {tokens:>3}  {tps:>8.1} texts/s");
            points.push(Point { what: "bare".into(), batch, tokens: tokens as f64, texts_per_s: tps });
        }
    }
    drop(backend);

    let files = if args.data.is_empty() {
        let uci = args.model.source.assets_dir().join("data/uci");
        ["amazon", "imdb", "yelp"].iter().map(|n| uci.join(format!("{n}.json"))).collect()
    } else {
        args.data.clone()
    };
    let mut texts = Vec::new();
    for f in &files {
        texts.extend(data::load(f, Split::All).with_context(|| format!("reading {}", f.display()))?.into_iter().map(|e| e.text));
    }
    let mean_tokens = texts.iter().map(|t| model.encoder.encode(t).map(|e| e.len())).sum::<Result<usize, _>>()? as f64 / texts.len() as f64;
    let limits = PassLimits { max_texts: args.batcher.max_batch_texts, max_tokens: args.batcher.max_batch_tokens };
    let texts = Arc::new(texts);
    // Bare and served alternate, round by round, so machine noise hits both alike.
    let mut rounds = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let mut classifier = model.classifier()?;
        let bare = rate(args.seconds, || Ok(classifier.predict(&texts, limits)?.len()))?;
        drop(classifier);
        println!(
            "round {round}: bare predict  {} sentences, {mean_tokens:.1} tokens on average, tokenization included: {bare:.1} texts/s",
            texts.len()
        );
        points.push(Point { what: "bare-sentences".into(), batch: limits.max_texts, tokens: mean_tokens, texts_per_s: bare });
        if args.concurrency > 0 {
            let s = served(&model, &args, texts.clone()).await?;
            println!(
                "round {round}: served        {} clients × {} texts/request: {:.1} texts/s = {:.3} of bare ({:.1} texts, {:.0} padded tokens per pass)",
                args.concurrency,
                args.texts_per_request,
                s.texts_per_s,
                s.texts_per_s / bare,
                s.texts_per_pass,
                s.padded_tokens_per_pass
            );
            rounds.push((s.texts_per_s / bare, s));
        }
    }
    rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    let median = rounds.len().checked_sub(1).map(|last| rounds.swap_remove(last / 2));
    if let Some((ratio, _)) = &median {
        println!("served/bare, median of {} rounds: {ratio:.3}", args.rounds.max(1));
    }
    let (served_over_bare, served_stats) = median.map_or((None, None), |(r, s)| (Some(r), Some(s)));
    let report = Report {
        model: model.name.clone(),
        intra_threads: args.model.runtime.intra_threads,
        points,
        served: served_stats,
        served_over_bare,
    };
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

/// What the server did under load, read from its own `/metrics`.
#[derive(Debug, Serialize)]
pub struct Served {
    pub texts_per_s: f64,
    pub texts_per_pass: f64,
    pub padded_tokens_per_pass: f64,
}

/// Texts/s through `POST /v1/predict` on a real server on port 0, `concurrency` clients.
async fn served(model: &crate::model::Model, args: &BenchArgs, texts: Arc<Vec<String>>) -> Result<Served> {
    let (app, workers) = http::app(model, &args.batcher, RequestLimits::default(), Duration::from_secs(60))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/predict", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, app, async {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::new();
    let done = Arc::new(AtomicUsize::new(0));
    let run_for = |seconds: f64| {
        let mut clients = Vec::new();
        for c in 0..args.concurrency {
            let (client, url, texts, done) = (client.clone(), url.clone(), texts.clone(), done.clone());
            let per = args.texts_per_request;
            clients.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs_f64(seconds);
                let mut i = c * per;
                while Instant::now() < deadline {
                    let batch: Vec<&String> = (0..per).map(|k| &texts[(i + k) % texts.len()]).collect();
                    i += per * 7919;
                    let resp = client.post(&url).json(&serde_json::json!({ "texts": batch })).send().await?;
                    anyhow::ensure!(resp.status().is_success(), "served request failed: {}", resp.status());
                    done.fetch_add(per, Ordering::Relaxed);
                }
                Ok(())
            }));
        }
        clients
    };
    for c in run_for(1.0) {
        c.await??;
    }
    done.store(0, Ordering::Relaxed);
    let start = Instant::now();
    for c in run_for(args.seconds) {
        c.await??;
    }
    let tps = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    let metrics = client.get(url.replace("/v1/predict", "/metrics")).send().await?.text().await?;
    let sums = inference_api::metric_sums(&metrics);
    let value = |name: &str| sums.get(name).copied().unwrap_or(0.0);
    let passes = value("inference_batch_size_count");
    let stats = Served {
        texts_per_s: tps,
        texts_per_pass: value("inference_batch_size_sum") / passes,
        padded_tokens_per_pass: value("inference_batch_tokens_sum") / passes,
    };
    let _ = stop_tx.send(());
    server.await??;
    tokio::task::spawn_blocking(move || workers.join()).await?;
    Ok(stats)
}
