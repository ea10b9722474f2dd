//! The `inference-server` command line: `serve`, `predict`, `train`, `eval` and `bench`.

use std::io::BufRead;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use inference_server::batching::PassLimits;
use inference_server::data::{self, NEGATIVE, NEUTRAL, POSITIVE, Split};
use inference_server::http::{self, RequestLimits};
use inference_server::infer::BatcherConfig;
use inference_server::model::head::LinearHead;
use inference_server::model::onnx::RuntimeConfig;
use inference_server::model::source::{ModelArgs, SourceConfig};
use inference_server::model::{Model, argmax, files::ModelFiles};
use inference_server::{bench, eval, train};

#[derive(Parser)]
#[command(version, about = "ONNX Runtime sentiment classifier with dynamic batching")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve `POST /v1/predict` over HTTP.
    Serve {
        #[arg(long, env = "INFERENCE_HOST", default_value = "127.0.0.1")]
        host: IpAddr,
        /// 0 picks a free port; the bound address is printed on stdout.
        #[arg(long, env = "INFERENCE_PORT", default_value_t = 8080)]
        port: u16,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        batcher: BatcherConfig,
        #[command(flatten)]
        limits: RequestLimits,
        /// Longest a request may take, in seconds.
        #[arg(long, env = "INFERENCE_REQUEST_TIMEOUT_SECONDS", default_value_t = 60)]
        request_timeout_seconds: u64,
    },
    /// Classify the texts given, or stdin's lines; prints one JSON line per text.
    Predict {
        texts: Vec<String>,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Fit the linear head of an encoder model on labelled sentences.
    Train {
        /// Encoder directory (`model.onnx`, `tokenizer.json`, `config.json`).
        #[arg(long)]
        encoder: PathBuf,
        /// Labelled files (UCI json, Hutto txt, or JSONL).
        #[arg(long, num_args = 1.., required = true)]
        data: Vec<PathBuf>,
        /// Part of the Hutto files to train on.
        #[arg(long, value_enum, default_value_t = Split::Train)]
        split: Split,
        /// Where to write the head.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        fit: train::FitConfig,
        #[command(flatten)]
        source: SourceConfig,
        #[command(flatten)]
        runtime: RuntimeConfig,
    },
    /// Accuracy, macro-F1, calibration error (ECE) and confusion matrix on labelled files.
    Eval {
        #[arg(long, num_args = 1.., required = true)]
        data: Vec<PathBuf>,
        /// Part of `.txt` (Hutto) files to score; other formats are always used whole.
        #[arg(long, value_enum, default_value_t = Split::Heldout)]
        split: Split,
        /// Also write the reports as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Throughput of bare forward passes and of the served API.
    Bench(bench::BenchArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve { host, port, model, batcher, limits, request_timeout_seconds } => {
            let model = model.load().await?;
            let (app, workers) = http::app(&model, &batcher, limits, Duration::from_secs(request_timeout_seconds))?;
            let listener = tokio::net::TcpListener::bind((host, port)).await.with_context(|| format!("binding {host}:{port}"))?;
            let addr = listener.local_addr()?;
            println!("listening on http://{addr}");
            tracing::info!(%addr, model = %model.name, "serving");
            http::serve(listener, app, http::shutdown_signal()).await?;
            // The router and its Infer handles are gone: the queue drains and the threads exit.
            tokio::time::timeout(Duration::from_secs(30), tokio::task::spawn_blocking(move || workers.join()))
                .await
                .context("inference threads did not finish within 30 s")??;
            tracing::info!("stopped");
            Ok(())
        }
        Command::Predict { texts, model } => {
            let texts = if texts.is_empty() { std::io::stdin().lock().lines().collect::<Result<Vec<_>, _>>()? } else { texts };
            let texts: Vec<String> = texts.into_iter().filter(|t| !t.trim().is_empty()).collect();
            let model = model.load().await?;
            let info = http::model_info(&model);
            let predictions = model.classifier()?.predict(&texts, PassLimits::default())?;
            for (text, p) in texts.iter().zip(predictions) {
                let result = http::predict::to_wire(p, text.chars().count(), &info);
                let mut line = serde_json::to_value(result)?;
                line["text"] = serde_json::Value::String(text.clone());
                println!("{line}");
            }
            Ok(())
        }
        Command::Train { encoder, data: files, split, out, fit, source, runtime } => {
            let files_ = ModelFiles::open_encoder(&encoder)?;
            let dylib = source.ort_dylib(&runtime);
            let model = Model::load("encoder".into(), None, files_, &dylib, runtime)?;
            let labels = [NEGATIVE, NEUTRAL, POSITIVE];
            let mut examples = Vec::new();
            for f in &files {
                examples.extend(data::load(f, split)?);
            }
            if let Some(bad) = examples.iter().find(|e| !labels.contains(&e.label.as_str())) {
                bail!("label {:?} is not one of {labels:?}", bad.label);
            }
            let texts: Vec<String> = examples.iter().map(|e| e.text.clone()).collect();
            let y: Vec<usize> = examples.iter().map(|e| labels.iter().position(|l| *l == e.label).expect("checked above")).collect();
            tracing::info!(examples = texts.len(), "embedding");
            let x = train::embed_all(&mut model.backend()?, &model.encoder, &texts, PassLimits::default())?;
            tracing::info!(dim = x.ncols(), "fitting");
            let (weight, bias) = train::fit(&x, &y, labels.len(), &fit);
            let head = LinearHead { labels: labels.iter().map(|l| l.to_string()).collect(), weight, bias };
            head.save(&out)?;
            let predicted: Vec<String> = head
                .logits(&x)
                .outer_iter()
                .map(|r| labels[argmax(r.as_slice().expect("logits rows are contiguous"))].to_string())
                .collect();
            let gold: Vec<String> = examples.into_iter().map(|e| e.label).collect();
            print!("{}", eval::score("training set", &gold, &predicted, &labels));
            println!("wrote {}", out.display());
            Ok(())
        }
        Command::Eval { data: files, split, json, model } => {
            let model = model.load().await?;
            let mut classifier = model.classifier()?;
            let mut reports = Vec::new();
            for f in &files {
                let examples = data::load(f, split)?;
                let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
                let predictions = classifier.predict(&texts, PassLimits::default())?;
                let report = eval::judge(&f.display().to_string(), examples, &predictions, model.labels());
                print!("{report}");
                reports.push(report);
            }
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&reports)?)?;
            }
            Ok(())
        }
        Command::Bench(args) => bench::run(args).await,
    }
}
