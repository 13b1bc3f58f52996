//! The in-process inference stages: tokenizer pool → micro-batcher → model thread, on OS threads
//! joined by bounded channels (no libtorch call ever runs on the async runtime).
//!
//! Guarantees: exactly one batch waits while the model runs the current one; work of partitions
//! this replica no longer owns (being revoked, revoked, or re-assigned since) is dropped before
//! inference and handed back to the offset tracker unfinished, so the next owner reads it again;
//! a retriable inference error is retried a few times before the stage fails.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use crate::batch::offsets::OffsetTracker;
use crate::batch::{Batcher, Limits};
use crate::config::Config;
use crate::model::load::ClassifierFactory;
use crate::model::tokenizer::TweetTokenizer;
use crate::model::{argmax, warm_up, warmup_shapes, Classifier, Manifest, PaddedBatch};
use crate::sink::{Classification, ClassifiedBatch};
use crate::source::kafka::Work;
use crate::telemetry::BatchInferred;

struct Encoded {
    work: Work,
    ids: Vec<u32>,
}

pub(crate) fn spawn<F: FnOnce() -> anyhow::Result<()> + Send + 'static>(
    name: &str,
    f: F,
) -> JoinHandle<anyhow::Result<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .expect("cannot spawn a thread; the process is out of resources")
}

/// Tweets per `encode_batch` call: large enough to amortise its parallel dispatch, small enough
/// that the batcher sees a steady stream rather than bursts.
const TOKENIZER_CHUNK: usize = 128;

/// Attempts of a batch whose inference fails with a retriable error.
const INFERENCE_ATTEMPTS: u64 = 4;

fn tokenizer_stage(
    tok: TweetTokenizer,
    rx: Receiver<Work>,
    tx: Sender<Vec<Encoded>>,
) -> anyhow::Result<()> {
    while let Ok(first) = rx.recv() {
        let mut works = vec![first];
        while works.len() < TOKENIZER_CHUNK {
            match rx.try_recv() {
                Ok(w) => works.push(w),
                Err(_) => break,
            }
        }
        let texts: Vec<&str> = works.iter().map(|w| w.tweet.text.as_str()).collect();
        let ids = tok.encode_batch(&texts)?;
        let encoded = works
            .into_iter()
            .zip(ids)
            .map(|(work, ids)| Encoded { work, ids })
            .collect();
        if tx.send(encoded).is_err() {
            break;
        }
    }
    Ok(())
}

fn push_all(batcher: &mut Batcher<Encoded>, items: impl Iterator<Item = Encoded>) {
    let now = Instant::now();
    for e in items {
        let len = e.ids.len();
        batcher.push(e, len, now);
    }
}

fn batcher_stage(
    limits: Limits,
    rx: Receiver<Vec<Encoded>>,
    tx: Sender<Vec<Encoded>>,
) -> anyhow::Result<()> {
    let mut batcher = Batcher::new(limits);
    loop {
        let now = Instant::now();
        let input = match batcher.deadline() {
            Some(d) => rx.recv_timeout(d.saturating_duration_since(now)),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match input {
            Ok(items) => {
                // Take whatever else is already there before deciding: a backlog fills batches.
                push_all(
                    &mut batcher,
                    items.into_iter().chain(rx.try_iter().flatten()),
                );
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                for b in batcher.flush() {
                    if tx.send(b).is_err() {
                        break;
                    }
                }
                return Ok(());
            }
        }
        while let Some(b) = batcher.next_batch(Instant::now()) {
            if tx.send(b).is_err() {
                return Ok(());
            }
            // Top the window up before choosing the next batch: under a backlog the send above
            // waited for the model, and a window drained to one batch leaves no lengths to pick.
            push_all(&mut batcher, rx.try_iter().flatten());
        }
    }
}

/// Runs `model` on `padded`, retrying retriable failures with a short growing pause.
fn classify_with_retries(
    model: &mut dyn Classifier,
    padded: &PaddedBatch,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut attempt = 1;
    loop {
        match model.classify(padded) {
            Ok(p) => return Ok(p),
            Err(e) if e.is_retriable() && attempt < INFERENCE_ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "inference failed; retrying");
                std::thread::sleep(Duration::from_millis(100 * attempt));
                attempt += 1;
            }
            Err(e) => {
                return Err(e)
                    .context("inference failed for good; the batch's offsets stay uncommitted")
            }
        }
    }
}

/// One result row per tweet of the batch, with the acks to return once they are stored.
fn classified(
    batch: Vec<Encoded>,
    probs: Vec<Vec<f32>>,
    labels: &[String],
    version: &str,
) -> ClassifiedBatch {
    let classified_at = Utc::now();
    let mut out = ClassifiedBatch {
        rows: Vec::with_capacity(batch.len()),
        acks: Vec::with_capacity(batch.len()),
        received: Vec::with_capacity(batch.len()),
    };
    for (e, p) in batch.into_iter().zip(probs) {
        let scores = labels
            .iter()
            .zip(&p)
            .map(|(l, s)| (l.clone(), serde_json::Value::from(f64::from(*s))))
            .collect();
        out.acks.push(e.work.ack);
        out.received.push(e.work.received);
        let t = e.work.tweet;
        out.rows.push(Classification {
            tweet_id: t.id,
            created_at: t.created_at,
            lang: t.lang,
            text: t.text,
            label: labels[argmax(&p)].clone(),
            scores,
            model_version: version.to_string(),
            classified_at,
            source_partition: e.work.ack.partition,
            source_offset: e.work.ack.offset,
            source_timestamp_ms: e.work.source_timestamp_ms,
        });
    }
    out
}

fn model_stage(
    mut model: Box<dyn Classifier>,
    manifest: Manifest,
    warmup: Option<Vec<(usize, usize)>>,
    live: Option<Arc<OffsetTracker>>,
    rx: Receiver<Vec<Encoded>>,
    tx: tokio::sync::mpsc::Sender<ClassifiedBatch>,
) -> anyhow::Result<()> {
    if let Some(shapes) = warmup {
        let seconds = warm_up(model.as_mut(), &shapes).context("model warm-up failed")?;
        tracing::info!(?shapes, seconds, "model warmed up");
    }
    let labels = model.labels().to_vec();
    let version = manifest.model_version();
    while let Ok(mut batch) = rx.recv() {
        if let Some(t) = &live {
            batch.retain(|e| {
                let current = t.is_current(&e.work.ack);
                if !current {
                    // Unfinished: the commit position stays at or below it.
                    t.untrack(e.work.ack);
                }
                current
            });
            if batch.is_empty() {
                continue;
            }
        }
        let padded = PaddedBatch::new(batch.iter().map(|e| e.ids.as_slice()), manifest.pad_id);
        let started = Instant::now();
        let probs = classify_with_retries(model.as_mut(), &padded)?;
        BatchInferred {
            model: &version,
            rows: padded.rows,
            real_tokens: batch.iter().map(|e| e.ids.len()).sum(),
            padded_tokens: padded.padded_tokens(),
            seconds: started.elapsed().as_secs_f64(),
        }
        .emit();
        if tx
            .blocking_send(classified(batch, probs, &labels, &version))
            .is_err()
        {
            break;
        }
    }
    Ok(())
}

/// The running inference stages. Feed `input`; classified batches come out of `output`.
/// Dropping `input` flushes everything in flight, then the threads end.
pub struct Inference {
    pub input: Sender<Work>,
    pub output: tokio::sync::mpsc::Receiver<ClassifiedBatch>,
    pub threads: Vec<JoinHandle<anyhow::Result<()>>>,
}

/// Starts the inference stages of `cfg` (`pipeline`, `batch`, `model.warmup`).
/// `live`, when given, lets the model stage drop work of partitions this replica no longer owns:
/// their next owner reads them again, so computing them here would only produce duplicates —
/// after a rebalance that is up to `pipeline.queue_tweets` tweets of wasted compute, and a
/// revocation would wait for all of it.
pub fn start_inference(
    cfg: &Config,
    tokenizer: TweetTokenizer,
    manifest: &Manifest,
    factory: ClassifierFactory,
    live: Option<Arc<OffsetTracker>>,
) -> Inference {
    let (work_tx, work_rx) = bounded::<Work>(cfg.pipeline.queue_tweets);
    // Room for about eight full batches of encoded tweets: the batcher picks similar lengths
    // out of what waits here, so a window of a single batch would leave nothing to choose from.
    let window_chunks = (8 * cfg.batch.max_batch_size)
        .div_ceil(TOKENIZER_CHUNK)
        .max(4);
    let (enc_tx, enc_rx) = bounded::<Vec<Encoded>>(window_chunks);
    // Capacity 1: exactly one batch waits while the model runs the current one.
    let (batch_tx, batch_rx) = bounded::<Vec<Encoded>>(1);
    let (out_tx, out_rx) =
        tokio::sync::mpsc::channel::<ClassifiedBatch>(cfg.pipeline.sink_queue_batches);
    let limits = Limits::from(&cfg.batch);
    let warmup = cfg.model.warmup.then(|| {
        warmup_shapes(
            cfg.batch.max_batch_size,
            cfg.batch.max_batch_tokens,
            manifest.max_length,
        )
    });
    let mut threads = Vec::new();
    for i in 0..cfg.pipeline.tokenizer_threads {
        let (tok, rx, tx) = (tokenizer.clone(), work_rx.clone(), enc_tx.clone());
        threads.push(spawn(&format!("vaxpulse-tokenize-{i}"), move || {
            tokenizer_stage(tok, rx, tx)
        }));
    }
    drop((work_rx, enc_tx));
    threads.push(spawn("vaxpulse-batch", move || {
        batcher_stage(limits, enc_rx, batch_tx)
    }));
    let model_manifest = manifest.clone();
    threads.push(spawn("vaxpulse-model", move || {
        let model = factory(&model_manifest)?;
        model_stage(model, model_manifest, warmup, live, batch_rx, out_tx)
    }));
    Inference {
        input: work_tx,
        output: out_rx,
        threads,
    }
}
