//! The worker's side tasks on the async runtime, beside the pipeline: deployment events and
//! probe runs into ClickHouse, the drift gauges, and the shadows' results. None of them holds
//! the champion's offsets, and a failure here is logged and counted, never fatal.

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use tokio_util::sync::CancellationToken;

use super::ReplicaInfo;
use crate::sink::clickhouse::{ClickHouseSink, DeploymentEventRow};
use crate::sink::kafka::ResultProducer;
use crate::telemetry;
use crate::work::{ClassifiedBatch, Role};

/// Writes each deployment event (applied / refused) to `deployment_events`; a failure is
/// logged, never fatal (the log line and the metric were emitted already).
pub(super) async fn record_events(
    clickhouse: ClickHouseSink,
    mut rx: tokio::sync::mpsc::Receiver<DeploymentEventRow>,
) {
    while let Some(row) = rx.recv().await {
        let write = || clickhouse.record(&row);
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
pub(super) async fn record_probes(
    clickhouse: ClickHouseSink,
    set: Arc<crate::probe::ProbeSet>,
    who: ReplicaInfo,
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

/// Every `every`, on the one replica of the group holding partition 0 of the input topic:
/// refreshes the monitor's hourly rollup and reads the drift and agreement of the latest hourly
/// window (as `vaxpulse monitor` does) into the gauges; nothing to read yet is not an error.
/// The other replicas leave it to that one (`vaxpulse_monitor_leader` says which), so the
/// group pays for one refresh per interval whatever its size.
pub(super) async fn monitor_gauges(
    clickhouse: ClickHouseSink,
    tracker: Arc<crate::batch::offsets::OffsetTracker>,
    every: Duration,
    reference_days: u32,
    quality: QualityGauges,
    stop: CancellationToken,
) {
    let mut proposed = std::collections::BTreeSet::new();
    loop {
        let leading = tracker.partitions().contains(&0);
        let mut hours = 0;
        if leading {
            // The gauges show the latest hour: the reference and that hour are all it reads.
            let span = crate::analytics::monitor::Span {
                daily: false,
                reference_days,
                pinned: None,
                windows: 1,
            };
            match crate::analytics::monitor::rollup::refresh(&clickhouse).await {
                Ok(r) => hours = r.hours,
                Err(e) => tracing::debug!(error = %e, "monitor rollup not refreshed"),
            }
            // Refreshed just above: read the rollup as it stands (once per interval).
            let monitored = crate::analytics::monitor::read(&clickhouse, span).await;
            match &monitored {
                Ok(report) => report.emit_gauges(),
                Err(e) => tracing::debug!(error = %e, "monitor gauges not updated"),
            }
            quality
                .emit(&clickhouse, monitored.as_ref().ok(), &mut proposed)
                .await;
        }
        telemetry::MonitorLeader { leading, hours }.emit();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// The live-quality part of the gauges: each identity's weighted accuracy from the annotations
/// of the last `quality.window_days`, and (with `quality.propose_promotions`) a proposal
/// event, stored once per candidate, for each shadow the promotion gate would pass.
pub(super) struct QualityGauges {
    pub(super) cfg: crate::config::QualityConfig,
    pub(super) group_id: String,
}

impl QualityGauges {
    async fn emit(
        &self,
        clickhouse: &ClickHouseSink,
        monitored: Option<&crate::analytics::monitor::MonitorReport>,
        proposed: &mut std::collections::BTreeSet<String>,
    ) {
        let since = chrono::Utc::now() - chrono::Duration::days(i64::from(self.cfg.window_days));
        let report =
            match crate::quality::report::quality(clickhouse, &self.cfg, since, None, None).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "quality gauges not updated");
                    return;
                }
            };
        for v in &report.versions {
            telemetry::QualityEstimated {
                model: &v.model,
                role: &v.role,
                labels: v.labels,
                accuracy: v.accuracy.estimate,
                accuracy_low: v.accuracy.low,
                accuracy_high: v.accuracy.high,
                macro_f1: v.macro_f1.estimate,
            }
            .emit();
        }
        let (Some(champion), Some(monitored), true) = (
            report.champion.as_deref(),
            monitored,
            self.cfg.propose_promotions,
        ) else {
            return;
        };
        for v in report.versions.iter().filter(|v| v.role == "shadow") {
            let verdict =
                crate::quality::gate::judge(&report, Ok(monitored), &v.model, champion, &self.cfg);
            telemetry::PromotionProposed {
                candidate: &v.model,
                champion,
                proposed: verdict.passed,
            }
            .emit();
            if verdict.passed && proposed.insert(v.model.clone()) {
                if let Err(e) = verdict
                    .record(clickhouse, &self.group_id, "proposed", "worker", "")
                    .await
                {
                    tracing::warn!(error = %e, "the promotion proposal was not stored");
                }
            }
        }
    }
}

/// Stores shadow batches (ClickHouse, and the shadow topic when configured); best effort:
/// failures are counted as skipped, and nothing here holds the champion's offsets. Batches
/// waiting together are stored in one insert (fewer, larger ClickHouse parts).
pub(super) async fn store_shadows(
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
