//! Builds the stages, owns the bounded channels and threads between them, and shuts down in
//! order: stop consuming → flush tokenizer, batcher and model → finish sinks → commit → exit.
//!
//! consumer thread ─(tweets)→ tokenizer pool ─(encoded)→ batcher thread ─(1 batch prefetched)→
//! model thread ─(classified batches)→ sink task (Kafka + ClickHouse, then offsets acknowledged)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use futures::StreamExt;

use crate::batch::offsets::OffsetTracker;
use crate::batch::{Batcher, Limits};
use crate::config::Config;
use crate::model::tokenizer::TweetTokenizer;
use crate::model::torch::TorchOptions;
use crate::model::{
    argmax, warm_up, warmup_shapes, Classifier, DeviceSpec, Manifest, PaddedBatch, Precision,
};
use crate::sink::clickhouse::ClickHouseSink;
use crate::sink::kafka::{DeadLetterProducer, ResultProducer};
use crate::sink::{Classification, ClassifiedBatch};
use crate::source::kafka::{Source, Work};
use crate::telemetry::{self, BatchInferred, Health};
use crate::tweet::DecodeRules;

/// Builds the classifier on the model thread (libtorch state stays on that thread).
pub type ClassifierFactory =
    Box<dyn FnOnce(&Manifest) -> anyhow::Result<Box<dyn Classifier>> + Send>;

/// Real tweets for the half-precision parity check: synthetic ones, tokenised like traffic.
fn parity_batch(cfg: &Config, manifest: &Manifest) -> anyhow::Result<PaddedBatch> {
    let tok = TweetTokenizer::load(
        &cfg.model.dir.join(&manifest.files.tokenizer.path),
        manifest.max_length,
    )?;
    let mut g = crate::synthetic::Generator::new(4242, Utc::now(), 1);
    let texts: Vec<String> = (0..64).map(|_| g.tweet().text).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids = tok.encode_batch(&refs)?;
    Ok(PaddedBatch::new(
        ids.iter().map(Vec::as_slice),
        manifest.pad_id,
    ))
}

/// Loads the TorchScript model of `cfg.model` (device, threads, precision + parity check).
pub fn load_torch(
    cfg: &Config,
    manifest: &Manifest,
) -> anyhow::Result<crate::model::torch::TorchClassifier> {
    let device = DeviceSpec::parse(&cfg.model.device).map_err(anyhow::Error::msg)?;
    let precision = Precision::parse(&cfg.model.precision).map_err(anyhow::Error::msg)?;
    let opts = TorchOptions {
        device,
        intra_op_threads: cfg.model.intra_op_threads,
        precision,
        half_parity_max_abs_diff: cfg.model.half_parity_max_abs_diff,
        parity_batch: match precision {
            Precision::Fp32 => None,
            _ => Some(parity_batch(cfg, manifest)?),
        },
    };
    let c = crate::model::torch::TorchClassifier::load(&cfg.model.dir, manifest, opts)
        .with_context(|| format!("loading the model in {}", cfg.model.dir.display()))?;
    match c.parity() {
        Some(p) => tracing::info!(
            device = ?c.device(), precision = %cfg.model.precision, model = %manifest.model_version(),
            parity_max_abs_diff = p.max_abs_diff, parity_rows = p.rows, parity_same_label = p.label_agreement,
            "model loaded; half precision passed the parity check against fp32"
        ),
        None => {
            tracing::info!(device = ?c.device(), precision = %cfg.model.precision, model = %manifest.model_version(), "model loaded")
        }
    }
    Ok(c)
}

/// The production classifier: the TorchScript model of `cfg.model`.
pub fn torch_factory(cfg: &Config) -> ClassifierFactory {
    let cfg = cfg.clone();
    Box::new(move |m: &Manifest| Ok(Box::new(load_torch(&cfg, m)?) as Box<dyn Classifier>))
}

struct Encoded {
    work: Work,
    ids: Vec<u32>,
}

fn spawn<F: FnOnce() -> anyhow::Result<()> + Send + 'static>(
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
            batch.retain(|e| t.is_current(&e.work.ack));
            if batch.is_empty() {
                continue;
            }
        }
        let padded = PaddedBatch::new(batch.iter().map(|e| e.ids.as_slice()), manifest.pad_id);
        let started = Instant::now();
        let mut attempt = 0;
        let probs = loop {
            match model.classify(&padded) {
                Ok(p) => break p,
                Err(e) if e.is_retriable() && attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "inference failed; retrying");
                    std::thread::sleep(Duration::from_millis(100 * attempt));
                }
                Err(e) => {
                    return Err(e)
                        .context("inference failed for good; the batch's offsets stay uncommitted")
                }
            }
        };
        BatchInferred {
            rows: padded.rows,
            real_tokens: batch.iter().map(|e| e.ids.len()).sum(),
            padded_tokens: padded.padded_tokens(),
            seconds: started.elapsed().as_secs_f64(),
        }
        .emit();
        let classified_at = Utc::now();
        let mut rows = Vec::with_capacity(batch.len());
        let mut acks = Vec::with_capacity(batch.len());
        let mut received = Vec::with_capacity(batch.len());
        for (e, p) in batch.into_iter().zip(probs) {
            let scores = labels
                .iter()
                .zip(&p)
                .map(|(l, s)| (l.clone(), serde_json::Value::from(f64::from(*s))))
                .collect();
            acks.push(e.work.ack);
            received.push(e.work.received);
            let t = e.work.tweet;
            rows.push(Classification {
                tweet_id: t.id,
                created_at: t.created_at,
                lang: t.lang,
                text: t.text,
                label: labels[argmax(&p)].clone(),
                scores,
                model_version: version.clone(),
                classified_at,
                source_partition: e.work.ack.partition,
                source_offset: e.work.ack.offset,
                source_timestamp_ms: e.work.source_timestamp_ms,
            });
        }
        if tx
            .blocking_send(ClassifiedBatch {
                rows,
                acks,
                received,
            })
            .is_err()
        {
            break;
        }
    }
    Ok(())
}

/// The in-process inference pipeline: tokenizer pool → batcher → model, on OS threads joined by
/// bounded channels. Feed `input`; classified batches come out of `output`. Dropping `input`
/// flushes everything in flight, then the threads end.
pub struct Inference {
    pub input: Sender<Work>,
    pub output: tokio::sync::mpsc::Receiver<ClassifiedBatch>,
    pub threads: Vec<JoinHandle<anyhow::Result<()>>>,
}

/// Starts the inference stages of `cfg` (`pipeline`, `batch`, `model.warmup`).
/// `live`, when given, lets the model stage drop work of partitions this replica no longer owns
/// (revoked, or re-assigned since): their next owner reads them again, so computing them here
/// would only produce duplicates — after a rebalance that is up to `pipeline.queue_tweets` tweets
/// of wasted compute.
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

/// What a finished run reports.
#[derive(Debug, Default)]
pub struct RunReport {
    pub model_version: String,
}

/// Runs the worker until `shutdown` resolves (or a stage fails), then drains and commits.
pub async fn run(
    cfg: Config,
    factory: ClassifierFactory,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunReport> {
    let manifest = Manifest::load(&cfg.model.dir)?;
    if cfg.model.verify_checksums {
        manifest.verify(&cfg.model.dir)?;
    }
    let tokenizer = TweetTokenizer::load(
        &cfg.model.dir.join(&manifest.files.tokenizer.path),
        manifest.max_length,
    )?;
    let health = Arc::new(Health::default());
    health.sinks_ok.store(true, Ordering::Relaxed);
    let password = cfg.clickhouse_password()?;
    let clickhouse = ClickHouseSink::new(&cfg.clickhouse, &password).with_health(health.clone());
    clickhouse
        .apply_schema()
        .await
        .with_context(|| format!("cannot apply the ClickHouse schema at {} (is ClickHouse up? scripts/services.sh start)", cfg.clickhouse.url))?;
    let tracker = Arc::new(OffsetTracker::new());
    let results = ResultProducer::new(&cfg.kafka)
        .context("cannot create the result producer")?
        .with_health(health.clone());
    let dlq = DeadLetterProducer::new(&cfg.kafka, cfg.decode.max_message_bytes, tracker.clone())
        .context("cannot create the dead-letter producer")?
        .with_health(health.clone());

    let stop = Arc::new(AtomicBool::new(false));
    let (metrics_stop_tx, metrics_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = if cfg.metrics.listen.is_empty() {
        None
    } else {
        let addr =
            cfg.metrics.listen.parse().with_context(|| {
                format!("metrics.listen `{}` is not host:port", cfg.metrics.listen)
            })?;
        let h = health.clone();
        Some(tokio::spawn(async move {
            if let Err(e) = telemetry::serve(addr, h, async {
                let _ = metrics_stop_rx.await;
            })
            .await
            {
                tracing::error!(error = %e, %addr, "metrics endpoint failed (is the port in use? set metrics.listen)");
            }
        }))
    };

    let Inference {
        input: work_tx,
        output: mut out_rx,
        threads,
    } = start_inference(&cfg, tokenizer, &manifest, factory, Some(tracker.clone()));

    let source = Source {
        cfg: cfg.kafka.clone(),
        rules: DecodeRules::from(&cfg.decode),
        tracker: tracker.clone(),
        dlq,
        runtime: tokio::runtime::Handle::current(),
        health: health.clone(),
        drain_timeout: Duration::from_millis(cfg.pipeline.drain_timeout_ms),
    };
    let source_stop = stop.clone();
    let source_thread = spawn("vaxpulse-consume", move || source.run(work_tx, source_stop));

    let sink_tracker = tracker.clone();
    let sink_health = health.clone();
    let sink_stop = stop.clone();
    let concurrency = cfg.pipeline.sink_queue_batches;
    let sink_task = tokio::spawn(async move {
        let stream = futures::stream::poll_fn(move |cx| out_rx.poll_recv(cx));
        let mut results_stream = stream
            .map(|batch| {
                let (results, clickhouse) = (results.clone(), clickhouse.clone());
                async move {
                    let (k, c) = tokio::join!(results.publish(&batch), clickhouse.insert(&batch));
                    k.and(c).map(|()| batch)
                }
            })
            .buffer_unordered(concurrency);
        while let Some(res) = results_stream.next().await {
            match res {
                Ok(batch) => {
                    telemetry::BatchAcknowledged {
                        labels: &batch.label_counts(),
                        received: &batch.received,
                    }
                    .emit();
                    for ack in batch.acks {
                        sink_tracker.done(ack);
                    }
                }
                Err(e) => {
                    sink_health.sinks_ok.store(false, Ordering::Relaxed);
                    sink_stop.store(true, Ordering::Relaxed);
                    return Err(anyhow::Error::new(e).context(
                        "a sink rejected a batch for good; stopping without committing it",
                    ));
                }
            }
        }
        results.flush(Duration::from_secs(10));
        Ok::<(), anyhow::Error>(())
    });

    // Stop on the shutdown future or when a stage ends early (an error).
    let watch_stop = stop.clone();
    tokio::select! {
        _ = shutdown => tracing::info!("shutdown requested: finishing in-flight batches"),
        _ = async {
            while !watch_stop.load(Ordering::Relaxed) && !source_thread.is_finished() && !threads.iter().any(|t| t.is_finished()) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        } => tracing::warn!("a stage stopped early: shutting down"),
    }
    stop.store(true, Ordering::Relaxed);

    let mut first_error: Option<anyhow::Error> = None;
    // The consumer first: it returns once in-flight work is drained and committed.
    for t in std::iter::once(source_thread).chain(threads) {
        let name = t.thread().name().unwrap_or("stage").to_string();
        let res = tokio::task::spawn_blocking(move || t.join()).await?;
        let err = match res {
            Ok(r) => r.err(),
            Err(_) => Some(anyhow::anyhow!("thread {name} panicked; this is a bug")),
        };
        first_error = first_error.or(err);
    }
    if let Err(e) = sink_task.await? {
        first_error = first_error.or(Some(e));
    }
    let _ = metrics_stop_tx.send(());
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(RunReport {
            model_version: manifest.model_version(),
        }),
    }
}
