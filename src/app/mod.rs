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
mod batching;
mod forwards;
pub mod inference;
pub mod loader;
mod model_stage;
mod side;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::batch::offsets::OffsetTracker;
use crate::config::Config;
use crate::deploy::control::{self, ControlReader};
use crate::model::load::ClassifierFactory;
use crate::sink::clickhouse::{ClickHouseSink, GroupedClickHouse};
use crate::sink::kafka::{DeadLetterProducer, ResultProducer};
use crate::sink::ResultSink;
use crate::source::kafka::Source;
use crate::telemetry::{self, Health};
use crate::tweet::DecodeRules;

pub use inference::{start_inference, Inference, Observers};
pub use loader::{load_active, load_startup, Active, ReplicaInfo, Startup};
pub use model_stage::Probes;

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
    if cfg.deploy.trusted_keys.is_empty() {
        tracing::warn!("deployment records are not signed-checked (deploy.trusted_keys is empty): anyone who can write the control topic can deploy; set keys in production (vaxpulse models keygen)");
    }
    // The group's deployment: the control topic's, or the configured model when none was
    // published yet. Read to the end before anything starts, so a late replica joins in step.
    let reader_cfg = cfg.kafka.clone();
    let (reader, published) = tokio::task::spawn_blocking(move || {
        crate::kafka::preflight(&reader_cfg, Duration::from_secs(15))?;
        let reader = ControlReader::open(&reader_cfg)?;
        let published = reader.catch_up(Duration::from_secs(30))?;
        anyhow::Ok((reader, published))
    })
    .await??;
    let (load_cfg, load_factory) = (cfg.clone(), factory.clone());
    let startup =
        tokio::task::spawn_blocking(move || load_startup(&load_cfg, published, &load_factory))
            .await??;
    let Startup {
        active,
        refused,
        unserved,
    } = startup;
    let deployment = active.deployment.clone();
    tracing::info!(deployment = %deployment.summary(), "serving the group's deployment");
    let health = Arc::new(Health::default());
    health.set_wedged_after(Duration::from_millis(cfg.pipeline.wedged_after_ms));
    // Not ready while a newer published deployment is not served here: a rolling update stops
    // instead of spreading it, and the alert on unready replicas fires.
    if let Some((epoch, why)) = unserved {
        health.set_deployment_refused(Some(format!("epoch {epoch}: {why}")));
    }
    health.sinks_ok.store(true, Ordering::Relaxed);
    let password = cfg.clickhouse_password()?;
    let clickhouse = ClickHouseSink::new(&cfg.clickhouse, &password)
        .with_delete_counts(cfg.retention.delete_counts)
        .with_health(health.clone());
    if let Err(e) = clickhouse.apply_schema().await {
        let hint = if e.to_string().contains("AUTHENTICATION_FAILED") {
            "ClickHouse refused the login: check clickhouse.user and its password (clickhouse.password_file or VAXPULSE_CLICKHOUSE_PASSWORD)"
        } else {
            "is ClickHouse up? scripts/services.sh start locally"
        };
        return Err(anyhow::Error::new(e).context(format!(
            "cannot apply the ClickHouse schema at {} ({hint})",
            cfg.clickhouse.url
        )));
    }
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

    let (events_tx, events_rx) = tokio::sync::mpsc::channel(loader::EVENTS_QUEUE);
    let who = ReplicaInfo::of(&cfg);
    let refusals_tx = events_tx.clone();
    for (d, why) in &refused {
        loader::deployment_event(&who, Some(&events_tx), d, Err(why));
    }
    let probe_set = crate::probe::configured(&cfg)?;
    let (probe_tx, probe_rx) = tokio::sync::mpsc::channel(64);
    let probes_task = probe_set.clone().map(|set| {
        tokio::spawn(side::record_probes(
            clickhouse.clone(),
            set,
            who.clone(),
            crate::probe::device_label(&cfg),
            cfg.monitor.probe_max_abs_diff,
            probe_rx,
        ))
    });
    let gauges_stop = CancellationToken::new();
    let gauges_task = (cfg.monitor.gauges_interval_s > 0).then(|| {
        tokio::spawn(side::monitor_gauges(
            clickhouse.clone(),
            tracker.clone(),
            Duration::from_secs(cfg.monitor.gauges_interval_s),
            cfg.monitor.reference_days,
            side::QualityGauges {
                cfg: cfg.quality.clone(),
                group_id: cfg.kafka.group_id.clone(),
            },
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
            health: Some(health.clone()),
            probes: probe_set.map(|set| Probes {
                set,
                tx: probe_tx,
                interval: (cfg.monitor.probe_interval_s > 0)
                    .then(|| Duration::from_secs(cfg.monitor.probe_interval_s)),
            }),
        },
    );
    let events_task = tokio::spawn(side::record_events(clickhouse.clone(), events_rx));
    let shadow_topic = if cfg.kafka.shadow_topic.is_empty() {
        None
    } else {
        let mut k = cfg.kafka.clone();
        k.output_topic = k.shadow_topic.clone();
        Some(ResultProducer::new(&k).context("cannot create the shadow-topic producer")?)
    };
    let shadows_task = tokio::spawn(side::store_shadows(
        shadow_output,
        ClickHouseSink::new(&cfg.clickhouse, &password),
        shadow_topic,
    ));
    let control_stop = CancellationToken::new();
    let control_thread = {
        let (stop, epoch) = (control_stop.clone(), deployment.epoch);
        let admission = crate::deploy::Admission::from_config(&cfg).map_err(anyhow::Error::msg)?;
        let (who, events) = (who.clone(), refusals_tx);
        inference::spawn("vaxpulse-control", move || {
            let refused = |r: control::Refusal<'_>| loader::refusal_event(&who, Some(&events), r);
            control::follow(reader, epoch, admission, deployments, refused, stop)
        })
    };

    let source = Source {
        cfg: cfg.kafka.clone(),
        rules: DecodeRules::from(&cfg.decode),
        decode_threads: cfg.decode.threads,
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
        cfg.clickhouse.insert_max_bytes,
    );
    let sinks: Vec<Arc<dyn ResultSink>> = vec![Arc::new(results), Arc::new(grouped)];
    let mut acks = tokio::spawn(acks::store_and_ack(
        out_rx,
        sinks,
        tracker.clone(),
        health.clone(),
        acks::Budget {
            rows: 2 * cfg.clickhouse.insert_max_rows,
            bytes: 2 * cfg.clickhouse.insert_max_bytes,
        },
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

#[cfg(test)]
mod tests;
