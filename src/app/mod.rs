//! Builds the stages, owns the channels and threads between them, and shuts down in order:
//! stop consuming → flush tokenizer, batcher and model → finish sinks → commit → exit.
//!
//! consumer thread ─(tweets)→ tokenizer pool ─(encoded)→ batcher thread ─(1 batch prefetched)→
//! model thread ─(classified batches)→ store-and-ack task (Kafka + ClickHouse, then offsets
//! acknowledged) → consumer thread commits.
//!
//! Beside them: the control thread follows the deployment control topic and the loader thread
//! prepares new deployments (see [`inference`]); shadow results are stored by a task of their
//! own that never holds the champion's offsets.
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
use backon::Retryable;
use tokio_util::sync::CancellationToken;

use crate::batch::offsets::OffsetTracker;
use crate::config::Config;
use crate::deploy::control::{self, ControlReader};
use crate::deploy::Deployment;
use crate::model::load::ClassifierFactory;
use crate::model::Manifest;
use crate::sink::clickhouse::{ClickHouseSink, DeploymentEventRow, GroupedClickHouse};
use crate::sink::kafka::{DeadLetterProducer, ResultProducer};
use crate::sink::{ClassifiedBatch, ResultSink, Role};
use crate::source::kafka::Source;
use crate::telemetry::{self, Health};
use crate::tweet::DecodeRules;

pub use inference::{load_active, start_inference, Active, Inference, Observers, Probes};

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
    // The group's deployment: the control topic's, or the configured model when none was
    // published yet. Read to the end before anything starts, so a late replica joins in step.
    let reader_cfg = cfg.kafka.clone();
    let (reader, published) = tokio::task::spawn_blocking(move || {
        let reader = ControlReader::open(&reader_cfg)?;
        let published = reader.catch_up(Duration::from_secs(30))?;
        anyhow::Ok((reader, published))
    })
    .await??;
    let deployment = match published {
        Some(d) => d,
        None => {
            let manifest = Manifest::load(&cfg.model.dir)?;
            Deployment::bootstrap(manifest.id())
        }
    };
    tracing::info!(deployment = %deployment.summary(), "loading the group's deployment");
    let (load_cfg, load_factory, load_deployment) =
        (cfg.clone(), factory.clone(), deployment.clone());
    let active = tokio::task::spawn_blocking(move || {
        load_active(&load_cfg, &load_deployment, &load_factory, None)
    })
    .await?
    .with_context(|| format!("cannot serve the group's deployment ({}); fix the model store, or publish a working deployment with vaxpulse models", deployment.summary()))?;
    let health = Arc::new(Health::default());
    health.sinks_ok.store(true, Ordering::Relaxed);
    let password = cfg.clickhouse_password()?;
    let clickhouse = ClickHouseSink::new(&cfg.clickhouse, &password)
        .with_delete_counts(cfg.retention.delete_counts)
        .with_health(health.clone());
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

    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let probe_set = crate::probe::configured(&cfg)?;
    let (probe_tx, probe_rx) = tokio::sync::mpsc::channel(64);
    let probes_task = probe_set.clone().map(|set| {
        tokio::spawn(record_probes(
            clickhouse.clone(),
            set,
            inference::ReplicaInfo::of(&cfg),
            crate::probe::device_label(&cfg),
            cfg.monitor.probe_max_abs_diff,
            probe_rx,
        ))
    });
    let gauges_stop = CancellationToken::new();
    let gauges_task = (cfg.monitor.gauges_interval_s > 0).then(|| {
        tokio::spawn(monitor_gauges(
            clickhouse.clone(),
            Duration::from_secs(cfg.monitor.gauges_interval_s),
            cfg.monitor.reference_days,
            gauges_stop.clone(),
        ))
    });
    let Inference {
        input: work_tx,
        output: out_rx,
        shadow_output,
        deployments,
        threads,
        loader,
    } = start_inference(
        &cfg,
        active,
        factory,
        Some(tracker.clone()),
        Observers {
            events: Some(events_tx),
            probes: probe_set.map(|set| Probes {
                set,
                tx: probe_tx,
                interval: (cfg.monitor.probe_interval_s > 0)
                    .then(|| Duration::from_secs(cfg.monitor.probe_interval_s)),
            }),
        },
    );
    let events_task = tokio::spawn(record_events(clickhouse.clone(), events_rx));
    let shadow_topic = if cfg.kafka.shadow_topic.is_empty() {
        None
    } else {
        let mut k = cfg.kafka.clone();
        k.output_topic = k.shadow_topic.clone();
        Some(ResultProducer::new(&k).context("cannot create the shadow-topic producer")?)
    };
    let shadows_task = tokio::spawn(store_shadows(
        shadow_output,
        ClickHouseSink::new(&cfg.clickhouse, &password),
        shadow_topic,
    ));
    let control_stop = CancellationToken::new();
    let control_thread = {
        let (stop, epoch) = (control_stop.clone(), deployment.epoch);
        inference::spawn("vaxpulse-control", move || {
            control::follow(reader, epoch, deployments, stop)
        })
    };

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

    let grouped = GroupedClickHouse::start(
        clickhouse.clone(),
        Duration::from_millis(cfg.clickhouse.insert_linger_ms),
        cfg.clickhouse.insert_max_rows,
    );
    let sinks: Vec<Arc<dyn ResultSink>> = vec![Arc::new(results), Arc::new(grouped)];
    let mut acks = tokio::spawn(acks::store_and_ack(
        out_rx,
        sinks,
        tracker.clone(),
        health.clone(),
        2 * cfg.clickhouse.insert_max_rows,
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
    control_stop.cancel();
    for t in [control_thread, loader] {
        if let Err(e) = tokio::task::spawn_blocking(move || t.join()).await? {
            tracing::error!(?e, "the control or loader thread panicked; this is a bug");
        }
    }
    let _ = shadows_task.await;
    let _ = events_task.await;
    if let Some(t) = probes_task {
        let _ = t.await;
    }
    gauges_stop.cancel();
    if let Some(t) = gauges_task {
        let _ = t.await;
    }
    metrics_stop.cancel();
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(RunReport {
            model_version: deployment.champion.to_string(),
        }),
    }
}

/// Writes each deployment event (applied / refused) to `deployment_events`; a failure is
/// logged, never fatal (the log line and the metric were emitted already).
async fn record_events(
    clickhouse: ClickHouseSink,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<DeploymentEventRow>,
) {
    while let Some(row) = rx.recv().await {
        let write = || clickhouse.record("deployment_events", &row);
        if let Err(e) = write
            .retry(crate::sink::retry_policy().with_max_times(4))
            .when(crate::sink::SinkError::is_retriable)
            .await
        {
            tracing::error!(error = %e, epoch = row.epoch, outcome = %row.outcome, "cannot record the deployment event in ClickHouse");
        }
    }
}

/// Compares each probe run with the version's stored runs and stores it (`probe_runs`); emits
/// the deviation gauge and, past the bound, the flag. Failures are logged, never fatal.
async fn record_probes(
    clickhouse: ClickHouseSink,
    set: Arc<crate::probe::ProbeSet>,
    who: inference::ReplicaInfo,
    device: String,
    bound: f64,
    mut rx: tokio::sync::mpsc::Receiver<crate::probe::ProbeRun>,
) {
    while let Some(run) = rx.recv().await {
        let record = || {
            crate::probe::record(
                &clickhouse,
                &set,
                &who.group_id,
                &who.replica,
                &device,
                bound,
                run.clone(),
            )
        };
        match record
            .retry(crate::sink::retry_policy().with_max_times(4))
            .when(|e| {
                e.downcast_ref::<crate::sink::SinkError>()
                    .is_some_and(crate::sink::SinkError::is_retriable)
            })
            .await
        {
            Ok(row) => telemetry::ProbeScored {
                model: &row.model_version,
                hash: &row.model_hash,
                deviation: row.max_deviation.max(row.max_deviation_previous),
                flagged: row.flagged != 0,
                bound,
                texts: row.probe_ids.len(),
            }
            .emit(),
            Err(e) => tracing::error!(
                model = %run.model_version, hash = %run.model_hash, error = %e,
                "cannot compare or store the probe run"
            ),
        }
    }
}

/// Every `every`, reads the drift and agreement of the latest hourly window (as `vaxpulse
/// monitor` does) into the gauges; nothing to read yet is not an error.
async fn monitor_gauges(
    clickhouse: ClickHouseSink,
    every: Duration,
    reference_days: u32,
    stop: CancellationToken,
) {
    loop {
        match crate::monitor::monitor(&clickhouse, false, reference_days, None).await {
            Ok(report) => telemetry::MonitorObserved { report: &report }.emit(),
            Err(e) => tracing::debug!(error = %e, "monitor gauges not updated"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Stores shadow batches (ClickHouse, and the shadow topic when configured); best effort:
/// failures are counted as skipped, and nothing here holds the champion's offsets. Batches
/// waiting together are stored in one insert (fewer, larger ClickHouse parts).
async fn store_shadows(
    mut rx: tokio::sync::mpsc::Receiver<ClassifiedBatch>,
    clickhouse: ClickHouseSink,
    topic: Option<ResultProducer>,
) {
    /// Most shadow batches per insert.
    const MERGE_BATCHES: usize = 64;
    /// Shadow results are for comparison, not for anyone waiting: collect for a while so that
    /// ClickHouse gets a few large inserts instead of one per (often small) batch.
    const LINGER: Duration = Duration::from_millis(250);
    let mut batches = Vec::new();
    while rx.recv_many(&mut batches, MERGE_BATCHES).await > 0 {
        let until = tokio::time::Instant::now() + LINGER;
        while batches.len() < MERGE_BATCHES {
            let room = MERGE_BATCHES - batches.len();
            match tokio::time::timeout_at(until, rx.recv_many(&mut batches, room)).await {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        let mut result = clickhouse.insert_shadows(&batches).await;
        if let (Ok(()), Some(t)) = (&result, &topic) {
            for b in &batches {
                result = t.publish(b).await;
                if result.is_err() {
                    break;
                }
            }
        }
        for b in batches.drain(..) {
            let model = b.rows.first().map_or("", |r| r.model_version.as_str());
            match &result {
                Ok(()) => telemetry::BatchAcknowledged {
                    model,
                    role: Role::Shadow.as_str(),
                    labels: &b.label_counts(),
                    deleted: 0,
                    received: &[],
                }
                .emit(),
                Err(e) => telemetry::ShadowSkipped {
                    model,
                    reason: "store_failed",
                    rows: b.rows.len(),
                    error: Some(e),
                }
                .emit(),
            }
        }
    }
}

#[cfg(test)]
mod tests;
