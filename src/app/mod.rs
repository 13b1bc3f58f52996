//! Builds the stages, owns the channels and threads between them, and shuts down in order:
//! stop consuming → flush tokenizer, batcher and model → finish sinks → commit → exit.
//!
//! consumer thread ─(tweets)→ tokenizer pool ─(encoded)→ batcher thread ─(1 batch prefetched)→
//! model thread ─(classified batches)→ store-and-ack task (Kafka + ClickHouse, then offsets
//! acknowledged) → consumer thread commits.
//!
//! One [`CancellationToken`] stops everything: the caller cancels it (a signal), the sinks cancel
//! it when one fails for good, and this module cancels it when any stage ends early. The
//! metrics and health endpoints have a token of their own, cancelled last, so that they answer
//! (not ready, metrics) throughout the drain.

pub mod acks;
pub mod inference;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::batch::offsets::OffsetTracker;
use crate::config::Config;
use crate::model::load::ClassifierFactory;
use crate::model::tokenizer::TweetTokenizer;
use crate::model::Manifest;
use crate::sink::clickhouse::ClickHouseSink;
use crate::sink::kafka::{DeadLetterProducer, ResultProducer};
use crate::sink::ResultSink;
use crate::source::kafka::Source;
use crate::telemetry::{self, Health};
use crate::tweet::DecodeRules;

pub use inference::{start_inference, Inference};

/// What a finished run reports.
#[derive(Debug, Default)]
pub struct RunReport {
    pub model_version: String,
}

/// Runs the worker until `cancel` is cancelled (or a stage fails), then drains and commits.
/// Returns an error when a stage failed or the final commit did not go through: a clean return
/// means every finished offset is committed.
pub async fn run(
    cfg: Config,
    factory: ClassifierFactory,
    cancel: CancellationToken,
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
    let metrics = telemetry::install().context("cannot install the metrics recorder")?;
    // The endpoints outlive the drain (probes and the last scrape see it); they stop last.
    let metrics_stop = CancellationToken::new();
    let metrics_task = if cfg.metrics.listen.is_empty() {
        None
    } else {
        let addr: std::net::SocketAddr =
            cfg.metrics.listen.parse().with_context(|| {
                format!("metrics.listen `{}` is not host:port", cfg.metrics.listen)
            })?;
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} for metrics (port in use? set metrics.listen)")
        })?;
        let (h, stop) = (health.clone(), metrics_stop.clone());
        Some(tokio::spawn(async move {
            if let Err(e) = telemetry::serve(listener, metrics, h, stop.cancelled_owned()).await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        }))
    };

    let Inference {
        input: work_tx,
        output: out_rx,
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
        revoke_drain_timeout: Duration::from_millis(cfg.pipeline.revoke_drain_timeout_ms),
    };
    let source_cancel = cancel.clone();
    let source_thread = inference::spawn("vaxpulse-consume", move || {
        source.run(work_tx, source_cancel)
    });

    let sinks: Vec<Arc<dyn ResultSink>> = vec![Arc::new(results), Arc::new(clickhouse)];
    let mut acks = tokio::spawn(acks::store_and_ack(
        out_rx,
        sinks,
        tracker.clone(),
        health.clone(),
        cfg.pipeline.sink_queue_batches,
        cancel.clone(),
    ));

    // Stop on cancellation, or as soon as any stage ends on its own (an error, or a bug).
    let mut acks_result = None;
    tokio::select! {
        _ = cancel.cancelled() => tracing::info!("shutdown requested: finishing in-flight batches"),
        r = &mut acks => { acks_result = Some(r); tracing::warn!("the sink stage stopped early: shutting down"); }
        _ = async {
            while !source_thread.is_finished() && !threads.iter().any(|t| t.is_finished()) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        } => tracing::warn!("a stage stopped early: shutting down"),
    }
    cancel.cancel();

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
    let acks_result = match acks_result {
        Some(r) => r,
        None => acks.await,
    };
    if let Err(e) = acks_result? {
        first_error = first_error.or(Some(e));
    }
    metrics_stop.cancel();
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

#[cfg(test)]
mod tests;
