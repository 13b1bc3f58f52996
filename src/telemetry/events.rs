//! The events of the worker: one struct per thing that happened, whose `emit()` writes the log
//! line and the metrics together, so the two never disagree.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use metrics::{counter, gauge, histogram};

use super::{TOKENS_PADDING, TOKENS_REAL};

/// Counts from the consumer's poll rounds since the last emit.
#[derive(Debug, Default)]
pub struct PollRound {
    pub consumed: u64,
    pub skipped_control: u64,
    pub skipped_language: u64,
    pub skipped_off_topic: u64,
    pub dead_lettered: Vec<(&'static str, u64)>,
    /// Messages in flight now.
    pub in_flight: usize,
    /// (partition, messages behind the commit position) of the partitions owned now.
    pub lag: Vec<(i32, i64)>,
    /// Partitions whose lag was reported last time: a partition given up reports 0, so the
    /// replica that owns it now is the only one showing its lag.
    lag_reported: BTreeSet<i32>,
}

impl PollRound {
    pub fn emit(&mut self) {
        counter!("vaxpulse_messages_consumed_total").increment(self.consumed);
        for (reason, n) in [
            ("control", self.skipped_control),
            ("language", self.skipped_language),
            ("off_topic", self.skipped_off_topic),
        ] {
            if n > 0 {
                counter!("vaxpulse_messages_skipped_total", "reason" => reason).increment(n);
            }
        }
        for (reason, n) in &self.dead_lettered {
            counter!("vaxpulse_messages_dead_lettered_total", "reason" => *reason).increment(*n);
            tracing::warn!(reason, count = n, "messages sent to the dead-letter topic");
        }
        gauge!("vaxpulse_messages_in_flight").set(self.in_flight as f64);
        let now: BTreeSet<i32> = self.lag.iter().map(|(p, _)| *p).collect();
        for gone in self.lag_reported.difference(&now) {
            gauge!("vaxpulse_consumer_lag_messages", "partition" => gone.to_string()).set(0.0);
        }
        for (p, lag) in &self.lag {
            gauge!("vaxpulse_consumer_lag_messages", "partition" => p.to_string()).set(*lag as f64);
        }
        tracing::trace!(consumed = self.consumed, lag = ?self.lag, "poll rounds");
        *self = PollRound {
            lag_reported: now,
            ..PollRound::default()
        };
    }

    pub fn dead_letter(&mut self, reason: &'static str) {
        match self.dead_lettered.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.dead_lettered.push((reason, 1)),
        }
    }
}

/// The consumer paused or resumed partitions.
pub struct ConsumerPaused {
    pub partitions: usize,
}

impl ConsumerPaused {
    pub fn emit(&self) {
        gauge!("vaxpulse_consumer_paused").set(if self.partitions > 0 { 1.0 } else { 0.0 });
        gauge!("vaxpulse_consumer_paused_partitions").set(self.partitions as f64);
        tracing::debug!(partitions = self.partitions, "paused partitions changed");
    }
}

/// Offsets committed to the broker.
pub struct OffsetsCommitted {
    pub partitions: usize,
}

impl OffsetsCommitted {
    pub fn emit(&self) {
        counter!("vaxpulse_offset_commits_total").increment(1);
        tracing::debug!(partitions = self.partitions, "offsets committed");
    }
}

/// One batch through a model (in one forward or several, `batch.split_by_cost`).
pub struct BatchInferred<'a> {
    pub model: &'a str,
    pub role: &'static str,
    pub rows: usize,
    pub forwards: usize,
    pub real_tokens: usize,
    pub padded_tokens: usize,
    pub seconds: f64,
}

impl BatchInferred<'_> {
    pub fn emit(&self) {
        let padding_tokens = (self.padded_tokens - self.real_tokens) as u64;
        let padding = padding_tokens as f64 / self.padded_tokens.max(1) as f64;
        histogram!("vaxpulse_batch_size_tweets").record(self.rows as f64);
        histogram!("vaxpulse_batch_padding_ratio").record(padding);
        histogram!(
            "vaxpulse_inference_duration_seconds",
            "model" => self.model.to_string(),
            "role" => self.role
        )
        .record(self.seconds);
        counter!("vaxpulse_model_forwards_total", "role" => self.role)
            .increment(self.forwards as u64);
        counter!("vaxpulse_model_tokens_total", "kind" => "real")
            .increment(self.real_tokens as u64);
        counter!("vaxpulse_model_tokens_total", "kind" => "padding").increment(padding_tokens);
        TOKENS_REAL.fetch_add(self.real_tokens as u64, Ordering::Relaxed);
        TOKENS_PADDING.fetch_add(padding_tokens, Ordering::Relaxed);
        tracing::debug!(
            model = self.model,
            role = self.role,
            rows = self.rows,
            forwards = self.forwards,
            padded_tokens = self.padded_tokens,
            padding,
            ms = self.seconds * 1e3,
            "batch inferred"
        );
    }
}

/// The per-call cost batches are cut by changed (measured by the model thread, or fixed by the
/// config).
pub struct BatchCostKnown {
    pub overhead_tokens: f64,
    /// First estimate (logged at info; later ones at debug).
    pub first: bool,
}

impl BatchCostKnown {
    pub fn emit(&self) {
        gauge!("vaxpulse_batch_overhead_tokens").set(self.overhead_tokens);
        if self.first {
            tracing::info!(
                overhead_tokens = self.overhead_tokens,
                "batch cost known: batches closed by the clock are now split where padding costs more than a call"
            );
        } else {
            tracing::debug!(overhead_tokens = self.overhead_tokens, "batch cost updated");
        }
    }
}

/// One batch delivered to a sink.
pub struct BatchStored {
    pub sink: &'static str,
    pub rows: usize,
    pub seconds: f64,
}

impl BatchStored {
    pub fn emit(&self) {
        histogram!("vaxpulse_sink_write_duration_seconds", "sink" => self.sink)
            .record(self.seconds);
        tracing::debug!(
            sink = self.sink,
            rows = self.rows,
            ms = self.seconds * 1e3,
            "batch stored"
        );
    }
}

/// A batch stored by every sink (a champion batch: its offsets are acknowledged right after; a
/// shadow batch: stored in ClickHouse, nothing to acknowledge).
pub struct BatchAcknowledged<'a> {
    pub model: &'a str,
    pub role: &'static str,
    pub labels: &'a [(String, u64)],
    /// Tweets removed by delete notices in the batch.
    pub deleted: usize,
    /// When each tweet of the batch was taken off the input topic.
    pub received: &'a [std::time::Instant],
}

impl BatchAcknowledged<'_> {
    pub fn emit(&self) {
        let now = std::time::Instant::now();
        let latency = histogram!("vaxpulse_tweet_latency_seconds");
        for r in self.received {
            latency.record(now.saturating_duration_since(*r).as_secs_f64());
        }
        for (label, n) in self.labels {
            counter!(
                "vaxpulse_tweets_classified_total",
                "label" => label.clone(),
                "model" => self.model.to_string(),
                "role" => self.role
            )
            .increment(*n);
        }
        if self.deleted > 0 {
            counter!("vaxpulse_tweets_deleted_total").increment(self.deleted as u64);
        }
        tracing::debug!(model = self.model, role = self.role, labels = ?self.labels, deleted = self.deleted, "batch stored");
    }
}

/// A shadow version's batch was not scored or not stored (never waited for: the champion goes
/// on).
pub struct ShadowSkipped<'a> {
    pub model: &'a str,
    pub reason: &'static str,
    pub rows: usize,
    pub error: Option<&'a dyn std::fmt::Display>,
}

impl ShadowSkipped<'_> {
    pub fn emit(&self) {
        counter!(
            "vaxpulse_shadow_skipped_tweets_total",
            "model" => self.model.to_string(),
            "reason" => self.reason
        )
        .increment(self.rows as u64);
        match self.error {
            Some(e) => {
                tracing::warn!(model = self.model, reason = self.reason, rows = self.rows, error = %e, "shadow batch skipped")
            }
            None => tracing::warn!(
                model = self.model,
                reason = self.reason,
                rows = self.rows,
                "shadow batch skipped"
            ),
        }
    }
}

/// A probe run of one version was compared with its earlier runs and stored.
pub struct ProbeScored<'a> {
    pub model: &'a str,
    pub hash: &'a str,
    /// Largest probability change against the first and the previous stored run.
    pub deviation: f64,
    /// Past `bound` (decided by `probe::record`, which stores it).
    pub flagged: bool,
    pub bound: f64,
    pub texts: usize,
}

impl ProbeScored<'_> {
    pub fn emit(&self) {
        let flagged = self.flagged;
        gauge!("vaxpulse_probe_deviation_max", "model" => self.model.to_string())
            .set(self.deviation);
        counter!(
            "vaxpulse_probe_runs_total",
            "model" => self.model.to_string(),
            "outcome" => if flagged { "flagged" } else { "stable" }
        )
        .increment(1);
        if flagged {
            tracing::error!(
                model = self.model,
                hash = self.hash,
                deviation = self.deviation,
                bound = self.bound,
                "probe probabilities moved: the same weights now predict differently (library, device or precision changed?)"
            );
        } else {
            tracing::info!(
                model = self.model,
                deviation = self.deviation,
                texts = self.texts,
                "probe run stable"
            );
        }
    }
}

/// The worker read the latest window's drift and agreement from ClickHouse.
pub struct MonitorObserved<'a> {
    /// Each series' latest window: (series, label PSI, confidence PSI).
    pub drift: &'a [(&'a str, f64, f64)],
    /// Each shadow in the latest agreement window: (shadow, agreement ratio, Cohen's kappa).
    pub agreement: &'a [(&'a str, f64, f64)],
    /// `ok`, `warn` or `alert`: the worst level `vaxpulse monitor` would print.
    pub level: &'a str,
    /// The champion's latest label PSI (0 without a window).
    pub champion_psi: f64,
}

impl MonitorObserved<'_> {
    pub fn emit(&self) {
        for &(series, psi, confidence_psi) in self.drift {
            gauge!("vaxpulse_drift_psi", "series" => series.to_string(), "kind" => "labels")
                .set(psi);
            gauge!("vaxpulse_drift_psi", "series" => series.to_string(), "kind" => "confidence")
                .set(confidence_psi);
        }
        for &(shadow, agreement, kappa) in self.agreement {
            gauge!("vaxpulse_shadow_agreement_ratio", "shadow" => shadow.to_string())
                .set(agreement);
            gauge!("vaxpulse_shadow_kappa", "shadow" => shadow.to_string()).set(kappa);
        }
        let level = self.level;
        gauge!("vaxpulse_drift_alert").set(f64::from(u8::from(level == "alert")));
        let psi = self.champion_psi;
        if level == "ok" {
            tracing::debug!(level, champion_psi = psi, "monitor gauges updated");
        } else {
            tracing::warn!(
                level,
                champion_psi = psi,
                "prediction drift (vaxpulse monitor for details)"
            );
        }
    }
}

/// Whether this replica computes the group's monitor gauges (it holds partition 0 of the input
/// topic): one replica per group refreshes the rollup and reads the drift, the others skip it.
pub struct MonitorLeader {
    pub leading: bool,
    /// Hours of the rollup recomputed by this refresh (0 when not leading).
    pub hours: usize,
}

impl MonitorLeader {
    pub fn emit(&self) {
        gauge!("vaxpulse_monitor_leader").set(f64::from(u8::from(self.leading)));
        if self.leading {
            counter!("vaxpulse_monitor_rollup_windows_total").increment(self.hours as u64);
            tracing::debug!(hours = self.hours, "monitor rollup refreshed");
        } else {
            // A former leader's alert must not outlive its leadership in `max()`.
            gauge!("vaxpulse_drift_alert").set(0.0);
            tracing::debug!("monitor gauges left to the replica holding partition 0");
        }
    }
}

/// This replica started scoring with a deployment, or refused it (and kept the previous one).
pub struct DeploymentChanged<'a> {
    pub epoch: u64,
    pub applied: bool,
    pub summary: &'a str,
    /// Roles before (set to 0) and after (set to 1): (model version, role).
    pub retired: &'a [(String, &'static str)],
    pub serving: &'a [(String, &'static str)],
    /// From the change being published to now (None for the configured bootstrap model).
    pub since_change_seconds: Option<f64>,
    pub load_seconds: f64,
    pub error: Option<&'a str>,
}

impl DeploymentChanged<'_> {
    pub fn emit(&self) {
        let outcome = if self.applied { "applied" } else { "refused" };
        counter!("vaxpulse_deployment_changes_total", "outcome" => outcome).increment(1);
        if self.applied {
            gauge!("vaxpulse_deployment_epoch").set(self.epoch as f64);
            for (m, role) in self.retired {
                gauge!("vaxpulse_model_deployed", "model" => m.clone(), "role" => *role).set(0.0);
            }
            for (m, role) in self.serving {
                gauge!("vaxpulse_model_deployed", "model" => m.clone(), "role" => *role).set(1.0);
            }
            if let Some(s) = self.since_change_seconds {
                histogram!("vaxpulse_deployment_apply_seconds").record(s);
            }
            tracing::info!(
                epoch = self.epoch,
                deployment = self.summary,
                since_change_ms = self.since_change_seconds.map(|s| (s * 1e3) as i64),
                load_seconds = self.load_seconds,
                "deployment applied at a batch boundary"
            );
        } else {
            tracing::error!(
                epoch = self.epoch,
                deployment = self.summary,
                error = self.error.unwrap_or(""),
                "deployment refused; the previous versions keep serving"
            );
        }
    }
}

/// A sink write failed and will be retried.
pub struct SinkRetry<'a> {
    pub sink: &'static str,
    pub error: &'a dyn std::fmt::Display,
    pub after_ms: u128,
}

impl SinkRetry<'_> {
    pub fn emit(&self) {
        counter!("vaxpulse_sink_retries_total", "sink" => self.sink).increment(1);
        tracing::warn!(sink = self.sink, error = %self.error, retry_in_ms = self.after_ms as u64, "sink write failed; retrying");
    }
}

/// A `deployment_events` row not recorded because the recorder is behind (a flood of refused
/// control records): the event's log line and metric were emitted already; only the row is lost.
pub struct DeploymentEventDropped {
    pub epoch: u64,
}

impl DeploymentEventDropped {
    pub fn emit(&self) {
        counter!("vaxpulse_deployment_events_dropped_total").increment(1);
        tracing::warn!(
            epoch = self.epoch,
            "deployment_events row dropped: the recorder is behind (a flood of control records?); the event is in this log and in vaxpulse_deployment_changes_total"
        );
    }
}

/// An annotator labelled (or skipped) a tweet on the annotation page.
pub struct Annotated<'a> {
    pub label: &'a str,
}

impl Annotated<'_> {
    pub fn emit(&self) {
        counter!("vaxpulse_annotations_total", "label" => self.label.to_string()).increment(1);
        tracing::debug!(label = self.label, "annotation stored");
    }
}

/// Live quality of one model identity, estimated from the annotations (the group's leader
/// emits it with the monitor gauges).
pub struct QualityEstimated<'a> {
    pub model: &'a str,
    pub role: &'a str,
    pub labels: u64,
    pub accuracy: f64,
    pub accuracy_low: f64,
    pub accuracy_high: f64,
    pub macro_f1: f64,
}

impl QualityEstimated<'_> {
    pub fn emit(&self) {
        let (m, r) = (self.model.to_string(), self.role.to_string());
        gauge!("vaxpulse_quality_accuracy_ratio", "model" => m.clone(), "role" => r.clone(), "bound" => "estimate").set(self.accuracy);
        gauge!("vaxpulse_quality_accuracy_ratio", "model" => m.clone(), "role" => r.clone(), "bound" => "low").set(self.accuracy_low);
        gauge!("vaxpulse_quality_accuracy_ratio", "model" => m.clone(), "role" => r.clone(), "bound" => "high").set(self.accuracy_high);
        gauge!("vaxpulse_quality_macro_f1_ratio", "model" => m.clone(), "role" => r.clone())
            .set(self.macro_f1);
        gauge!("vaxpulse_quality_labels", "model" => m, "role" => r).set(self.labels as f64);
        tracing::debug!(
            model = self.model,
            accuracy = self.accuracy,
            labels = self.labels,
            "live quality estimated"
        );
    }
}

/// The gate would pass a shadow's promotion (`quality.propose_promotions`): a proposal for an
/// operator, never a promotion.
pub struct PromotionProposed<'a> {
    pub candidate: &'a str,
    pub champion: &'a str,
    pub proposed: bool,
}

impl PromotionProposed<'_> {
    pub fn emit(&self) {
        gauge!("vaxpulse_promotion_proposed", "model" => self.candidate.to_string())
            .set(f64::from(u8::from(self.proposed)));
        if self.proposed {
            tracing::warn!(
                candidate = self.candidate,
                champion = self.champion,
                "the quality gate passes this shadow: promote it with `vaxpulse models promote` after a look at `vaxpulse quality`"
            );
        }
    }
}
