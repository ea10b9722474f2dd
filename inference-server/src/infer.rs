//! Dynamic batching, TEI-style: every request's texts go into one queue owned by one
//! task; it closes a batch when a token budget fills or the oldest text has waited
//! long enough, and hands it to dedicated inference threads, one ONNX session each.
//!
//! Load is shed at the door: a semaphore holds one permit per queued text, and a
//! request that cannot take all of its permits at once is refused with
//! [`InferError::QueueFull`]. Shutdown needs no signal of its own: when the last
//! [`Infer`] handle is dropped, the queue drains, the batch channel closes and the
//! threads finish what they hold and exit.
//!
//! Faults stay with the text that causes them: a forward pass that fails (or panics) is
//! run again text by text, so only the failing text gets the error and the other
//! requests that shared the pass get their results; the thread lives on.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, oneshot};
use tokio::time::Instant;
use tracing::Span;

use crate::batching::{PassLimits, is_full, pack};
use crate::metrics::Metrics;
use crate::model::tokenize::TextEncoder;
use crate::model::{Encoded, Model, ModelError, Prediction};

/// Batching and queueing policy.
#[derive(Debug, Clone, clap::Args)]
pub struct BatcherConfig {
    /// Most texts in one forward pass.
    #[arg(long, env = "INFERENCE_MAX_BATCH_TEXTS", default_value_t = 64)]
    pub max_batch_texts: usize,
    /// Most padded tokens (texts × longest) in one forward pass. Small passes keep
    /// padding low when the queue mixes lengths (docs/BENCHMARKS.md).
    #[arg(long, env = "INFERENCE_MAX_BATCH_TOKENS", default_value_t = 1024)]
    pub max_batch_tokens: usize,
    /// Longest a text waits for companions before its batch closes, in milliseconds.
    #[arg(long, env = "INFERENCE_MAX_WAIT_MS", default_value_t = 5)]
    pub max_wait_ms: u64,
    /// Most texts queued; past this, requests are refused with 429.
    #[arg(long, env = "INFERENCE_MAX_QUEUED_TEXTS", default_value_t = 8192)]
    pub max_queued_texts: usize,
    /// Inference threads, each with its own ONNX session.
    #[arg(long, env = "INFERENCE_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Test-only fault injection: a forward pass holding a text that contains this
    /// string fails as `--fault` says. The fault-isolation tests use it; never set it in
    /// production.
    #[arg(long, hide = true)]
    pub fail_on: Option<String>,
    /// What a pass holding the `--fail-on` text does: `fail` (a model error), `panic`
    /// (the inference thread panics), `exit` (the inference thread ends, as one lost to a
    /// bug would) or `abort` (the process dies, as a crash would).
    #[arg(long, hide = true, value_enum, default_value_t = Fault::Fail)]
    pub fault: Fault,
}

/// An injected fault: see [`BatcherConfig::fail_on`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    Fail,
    Panic,
    Exit,
    Abort,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        Self {
            max_batch_texts: 64,
            max_batch_tokens: 1024,
            max_wait_ms: 5,
            max_queued_texts: 8192,
            workers: 1,
            fail_on: None,
            fault: Fault::Fail,
        }
    }
}

impl BatcherConfig {
    fn limits(&self) -> PassLimits {
        PassLimits { max_texts: self.max_batch_texts.max(1), max_tokens: self.max_batch_tokens.max(1) }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum InferError {
    #[error("the queue is full")]
    QueueFull,
    #[error("text {index} has {tokens} tokens, over the model's maximum of {max}")]
    TooLong { index: usize, tokens: usize, max: usize },
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The model failed on text `index` alone (the pass it shared was retried text by
    /// text): the text's fault, not the server's.
    #[error("the model failed on text {index}: {error}")]
    Failed { index: usize, error: ModelError },
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// How far into the queue a pass is packed from, in passes' worth of texts: a wider
/// window finds texts of closer lengths, so less padding (docs/BENCHMARKS.md).
const PACK_WINDOW: usize = 16;

/// One queued text.
struct Entry {
    encoded: Encoded,
    /// It holds the `--fail-on` string.
    faulty: bool,
    reply: oneshot::Sender<Result<Prediction, ModelError>>,
    enqueued: Instant,
    span: Span,
    _permit: OwnedSemaphorePermit,
}

/// The handle requests use; cheap to clone.
#[derive(Clone)]
pub struct Infer {
    /// One message per request: its texts, in order.
    tx: mpsc::Sender<Vec<Entry>>,
    permits: Arc<Semaphore>,
    encoder: Arc<TextEncoder>,
    max_queued: usize,
    fail_on: Option<Arc<str>>,
}

/// The inference threads; [`Workers::join`] waits for them after the last [`Infer`] is gone.
pub struct Workers {
    threads: Vec<JoinHandle<()>>,
    ready: Arc<AtomicBool>,
}

impl Workers {
    /// True once every thread has its session and has run a warm-up pass, and false again
    /// once no thread is left to serve.
    pub fn ready(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

impl Infer {
    /// Creates one session per worker (warming each up) and starts the batcher task.
    /// Must be called inside a Tokio runtime.
    pub fn start(model: &Model, cfg: &BatcherConfig, metrics: Arc<Metrics>) -> Result<(Self, Workers), ModelError> {
        let (tx, rx) = mpsc::channel(cfg.max_queued_texts.max(1));
        // Idle threads ask for work; a pass is packed only when a thread is free to run
        // it, so it is formed from the fullest queue.
        let (idle_tx, idle_rx) = mpsc::channel::<oneshot::Sender<Vec<Entry>>>(cfg.workers.max(1));
        let ready = Arc::new(AtomicBool::new(false));
        let warm = Arc::new(std::sync::Barrier::new(cfg.workers.max(1) + 1));
        let warmup = model.encoder.encode("warm up")?;
        let mut threads = Vec::new();
        for i in 0..cfg.workers.max(1) {
            let mut classifier = model.classifier()?;
            let (idle_tx, metrics, warm, warmup) = (idle_tx.clone(), metrics.clone(), warm.clone(), warmup.clone());
            let fault = cfg.fault;
            let thread = std::thread::Builder::new()
                .name(format!("inference-{i}"))
                .spawn(move || {
                    let _ = classifier.predict_encoded(&[&warmup]);
                    warm.wait();
                    loop {
                        let (give, take) = oneshot::channel();
                        // Either fails only once the batcher has drained and stopped.
                        if idle_tx.blocking_send(give).is_err() {
                            break;
                        }
                        let Ok(batch) = take.blocking_recv() else { break };
                        if fault == Fault::Exit && batch.iter().any(|e| e.faulty) {
                            break;
                        }
                        run_batch(&mut classifier, batch, &metrics, fault);
                    }
                })
                .map_err(|e| ModelError::Runtime(format!("spawning an inference thread: {e}")))?;
            threads.push(thread);
        }
        let ready_flag = ready.clone();
        std::thread::spawn(move || {
            warm.wait();
            ready_flag.store(true, Ordering::Release);
        });
        let ready_flag = ready.clone();
        let batcher = batcher(rx, idle_rx, cfg.limits(), Duration::from_millis(cfg.max_wait_ms), metrics);
        tokio::spawn(async move {
            batcher.await;
            // Every inference thread has gone: nothing can serve, so the pod leaves its
            // Service rather than answering 503 while it looks ready.
            ready_flag.store(false, Ordering::Release);
        });
        let infer = Self {
            tx,
            permits: Arc::new(Semaphore::new(cfg.max_queued_texts.max(1))),
            encoder: model.encoder.clone(),
            max_queued: cfg.max_queued_texts.max(1),
            fail_on: cfg.fail_on.as_deref().map(Arc::from),
        };
        Ok((infer, Workers { threads, ready }))
    }

    /// Predicts every text, in order. With `truncate` false, a text over the model's
    /// maximum length is refused instead of cut.
    pub async fn predict(&self, texts: Vec<String>, truncate: bool) -> Result<Vec<Prediction>, InferError> {
        if texts.len() > self.max_queued {
            return Err(InferError::QueueFull);
        }
        let mut permit = match self.permits.clone().try_acquire_many_owned(texts.len() as u32) {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) => return Err(InferError::QueueFull),
            Err(TryAcquireError::Closed) => return Err(InferError::ShuttingDown),
        };
        let faulty: Vec<bool> = texts.iter().map(|t| self.fail_on.as_deref().is_some_and(|m| t.contains(m))).collect();
        let encoder = self.encoder.clone();
        let encoded = tokio::task::spawn_blocking(move || encoder.encode_all(&texts))
            .await
            .map_err(|e| ModelError::Tokenizer(format!("tokenizer task failed: {e}")))??;
        if !truncate && let Some((index, e)) = encoded.iter().enumerate().find(|(_, e)| e.truncated) {
            return Err(InferError::TooLong { index, tokens: e.len(), max: self.encoder.max_length() });
        }
        let mut replies = Vec::with_capacity(encoded.len());
        let mut entries = Vec::with_capacity(encoded.len());
        let (now, span) = (Instant::now(), Span::current());
        for (encoded, faulty) in encoded.into_iter().zip(faulty) {
            let (reply, rx) = oneshot::channel();
            let _permit = permit.split(1).expect("one permit is held per text. This is a bug.");
            entries.push(Entry { encoded, faulty, reply, enqueued: now, span: span.clone(), _permit });
            replies.push(rx);
        }
        self.tx.send(entries).await.map_err(|_| InferError::ShuttingDown)?;
        let mut out = Vec::with_capacity(replies.len());
        for (index, rx) in replies.into_iter().enumerate() {
            out.push(rx.await.map_err(|_| InferError::ShuttingDown)?.map_err(|error| InferError::Failed { index, error })?);
        }
        Ok(out)
    }
}

/// The batcher task: owns the queue and hands a pass to each thread that asks for one.
async fn batcher(
    mut rx: mpsc::Receiver<Vec<Entry>>,
    mut idle_rx: mpsc::Receiver<oneshot::Sender<Vec<Entry>>>,
    limits: PassLimits,
    max_wait: Duration,
    metrics: Arc<Metrics>,
) {
    let mut queue: VecDeque<Entry> = VecDeque::new();
    let mut idle: Vec<oneshot::Sender<Vec<Entry>>> = Vec::new();
    let mut open = true;
    while open || !queue.is_empty() {
        // A pass is packed only when a thread is free to run it: while every thread is
        // busy, arrivals only join the queue (packing costs a sort of the window).
        let mut deadline = None;
        if !idle.is_empty() {
            queue.retain(|e| !e.reply.is_closed());
            let lengths: Vec<usize> = queue.iter().take(limits.max_texts * PACK_WINDOW).map(|e| e.encoded.len()).collect();
            let mut picked = pack(&lengths, limits);
            deadline = queue.front().map(|e| e.enqueued + max_wait);
            let ready = !queue.is_empty() && (!open || is_full(&picked, &lengths, limits) || deadline.is_some_and(|d| d <= Instant::now()));
            if ready && let Some(worker) = idle.pop() {
                let mut batch = Vec::with_capacity(picked.len());
                while let Some(i) = picked.pop() {
                    batch.push(queue.remove(i).expect("packed indices are within the queue. This is a bug."));
                }
                batch.reverse();
                metrics.queue_depth.set(queue.len() as i64);
                if let Err(batch) = worker.send(batch) {
                    // That thread is gone; its pass goes back to the front of the queue.
                    batch.into_iter().rev().for_each(|e| queue.push_front(e));
                }
                continue;
            }
        }
        tokio::select! {
            worker = idle_rx.recv() => match worker {
                Some(w) => idle.push(w),
                None => break, // every inference thread has exited
            },
            entries = rx.recv(), if open => match entries {
                Some(entries) => {
                    queue.extend(entries);
                    metrics.queue_depth.set(queue.len() as i64);
                }
                None => open = false,
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
        }
    }
}

/// One forward pass, with a panic caught as a model error (the thread and its session
/// serve on).
fn forward(classifier: &mut crate::model::Classifier, entries: &[&Entry], fault: Fault) -> Result<Vec<Prediction>, ModelError> {
    let encoded: Vec<&Encoded> = entries.iter().map(|e| &e.encoded).collect();
    let pass = std::panic::AssertUnwindSafe(|| {
        if entries.iter().any(|e| e.faulty) {
            match fault {
                // (`exit` ends the thread before its pass; here it is only a failure.)
                Fault::Fail | Fault::Exit => return Err(ModelError::Runtime("injected failure (--fail-on)".into())),
                Fault::Panic => panic!("injected panic (--fail-on)"),
                Fault::Abort => std::process::abort(),
            }
        }
        classifier.predict_encoded(&encoded)
    });
    std::panic::catch_unwind(pass).unwrap_or_else(|panic| {
        let why = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
        Err(ModelError::Runtime(format!("the forward pass panicked: {}", why.unwrap_or_default())))
    })
}

/// One forward pass on an inference thread; every waiter gets its answer. A pass that
/// fails is run again text by text, so that only the failing text gets the error.
fn run_batch(classifier: &mut crate::model::Classifier, batch: Vec<Entry>, metrics: &Metrics, fault: Fault) {
    let now = Instant::now();
    for e in &batch {
        metrics.queue_wait.observe((now - e.enqueued).as_secs_f64());
    }
    let _span = batch.first().map(|e| e.span.clone().entered());
    let longest = batch.iter().map(|e| e.encoded.len()).max().unwrap_or(0);
    metrics.batch_size.observe(batch.len() as f64);
    metrics.batch_tokens.observe((batch.len() * longest) as f64);
    let entries: Vec<&Entry> = batch.iter().collect();
    match forward(classifier, &entries, fault) {
        Ok(predictions) => {
            metrics.forward.observe(predictions.first().map_or(0.0, |p| p.inference_time.as_secs_f64()));
            for (e, p) in batch.into_iter().zip(predictions) {
                let _ = e.reply.send(Ok(p));
            }
        }
        Err(err) => {
            tracing::error!(error = %err, texts = batch.len(), "forward pass failed");
            metrics.errors.with_label_values(&["forward"]).inc();
            if let [_] = batch.as_slice() {
                let _ = batch.into_iter().next().map(|e| e.reply.send(Err(err)));
                return;
            }
            for e in batch {
                let alone = forward(classifier, &[&e], fault).map(|mut p| p.remove(0));
                if alone.is_err() {
                    metrics.errors.with_label_values(&["forward"]).inc();
                }
                let _ = e.reply.send(alone);
            }
        }
    }
}
