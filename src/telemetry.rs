//! Metric names, events and the HTTP exporter, through the `metrics` facade and
//! `metrics-exporter-prometheus`. Each event's `emit()` writes the log line and updates the
//! metrics in one call; events are emitted per batch or per poll round, never per message.
//! Names follow `vaxpulse_<what>_<unit>[_total]`; labels are low-cardinality (reason, label,
//! model version, sink, kind, partition). Also serves `/health/live` and `/health/ready`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Every metric of the process: (name, kind, help). Dashboards and alert rules may only use
/// these (a test checks the shipped dashboards against this list).
pub const METRICS: &[(&str, &str, &str)] = &[
    (
        "vaxpulse_messages_consumed_total",
        "counter",
        "Messages read from the input topic",
    ),
    (
        "vaxpulse_tweets_classified_total",
        "counter",
        "Tweets classified and stored by every sink, by predicted label and model version",
    ),
    (
        "vaxpulse_messages_skipped_total",
        "counter",
        "Messages skipped on purpose (control notices, other languages), by reason",
    ),
    (
        "vaxpulse_messages_dead_lettered_total",
        "counter",
        "Messages sent to the dead-letter topic, by reason",
    ),
    (
        "vaxpulse_batch_size_tweets",
        "histogram",
        "Tweets per inference batch",
    ),
    (
        "vaxpulse_batch_padding_ratio",
        "histogram",
        "Share of computed tokens that are padding, per batch",
    ),
    (
        "vaxpulse_inference_duration_seconds",
        "histogram",
        "Model forward time per batch, by model version",
    ),
    (
        "vaxpulse_model_tokens_total",
        "counter",
        "Token positions computed by the model: kind=real or kind=padding",
    ),
    (
        "vaxpulse_tweet_latency_seconds",
        "histogram",
        "From taking a tweet off the input topic to every sink having stored its result",
    ),
    (
        "vaxpulse_sink_write_duration_seconds",
        "histogram",
        "Time to deliver one batch to a sink, retries included",
    ),
    (
        "vaxpulse_sink_retries_total",
        "counter",
        "Retried sink writes, by sink",
    ),
    (
        "vaxpulse_offset_commits_total",
        "counter",
        "Offset commits accepted by the broker",
    ),
    (
        "vaxpulse_messages_in_flight",
        "gauge",
        "Messages taken in and not yet finished",
    ),
    (
        "vaxpulse_consumer_paused",
        "gauge",
        "1 while some partition is paused (backpressure or dead-letter outage)",
    ),
    (
        "vaxpulse_consumer_paused_partitions",
        "gauge",
        "Partitions currently paused",
    ),
    (
        "vaxpulse_consumer_lag_messages",
        "gauge",
        "Messages of an owned input partition behind this replica's commit position",
    ),
    (
        "vaxpulse_tweets_deleted_total",
        "counter",
        "Tweets removed on a delete notice (output-topic tombstone and ClickHouse delete done)",
    ),
    (
        "vaxpulse_shadow_skipped_tweets_total",
        "counter",
        "Tweets a shadow version did not score or store, by model version and reason (busy, failed, store_failed)",
    ),
    (
        "vaxpulse_deployment_changes_total",
        "counter",
        "Deployments this replica applied or refused, by outcome",
    ),
    (
        "vaxpulse_deployment_epoch",
        "gauge",
        "Epoch of the deployment this replica serves (0 = the configured model, none published)",
    ),
    (
        "vaxpulse_deployment_apply_seconds",
        "histogram",
        "From a deployment change being published to this replica scoring with it",
    ),
    (
        "vaxpulse_model_deployed",
        "gauge",
        "1 for each model version this replica scores, by model version and role",
    ),
    (
        "vaxpulse_probe_deviation_max",
        "gauge",
        "Largest probe probability change of a version against its first and previous runs",
    ),
    (
        "vaxpulse_probe_runs_total",
        "counter",
        "Probe runs per version, by outcome (stable, flagged)",
    ),
    (
        "vaxpulse_drift_psi",
        "gauge",
        "PSI of the latest hourly window against the reference, by series and kind (labels, confidence)",
    ),
    (
        "vaxpulse_shadow_agreement_ratio",
        "gauge",
        "Share of identical labels, champion vs shadow, latest hourly window",
    ),
    (
        "vaxpulse_shadow_kappa",
        "gauge",
        "Cohen's kappa, champion vs shadow, latest hourly window",
    ),
    (
        "vaxpulse_drift_alert",
        "gauge",
        "1 while vaxpulse monitor's status is alert (PSI >= 0.25 or a probe flag)",
    ),
    (
        "vaxpulse_ready",
        "gauge",
        "1 while /health/ready answers ready (consuming, sinks healthy), read at scrape time",
    ),
];

fn exponential(start: f64, factor: f64, count: usize) -> Vec<f64> {
    std::iter::successors(Some(start), |b| Some(b * factor))
        .take(count)
        .collect()
}

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut installed = HANDLE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = installed.as_ref() {
        return Ok(h.clone());
    }
    let buckets = [
        ("vaxpulse_batch_size_tweets", exponential(1.0, 2.0, 10)),
        (
            "vaxpulse_batch_padding_ratio",
            vec![0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0],
        ),
        (
            "vaxpulse_inference_duration_seconds",
            exponential(0.0005, 2.0, 16),
        ),
        (
            "vaxpulse_tweet_latency_seconds",
            exponential(0.001, 2.0, 16),
        ),
        (
            "vaxpulse_sink_write_duration_seconds",
            exponential(0.0005, 2.0, 16),
        ),
        (
            "vaxpulse_deployment_apply_seconds",
            exponential(0.05, 2.0, 12),
        ),
    ];
    let mut builder = PrometheusBuilder::new();
    for (name, b) in &buckets {
        builder = builder.set_buckets_for_metric(Matcher::Full((*name).into()), b)?;
    }
    let handle = builder.install_recorder()?;
    for (name, kind, help) in METRICS {
        match *kind {
            "counter" => describe_counter!(*name, *help),
            "gauge" => describe_gauge!(*name, *help),
            _ => describe_histogram!(*name, *help),
        }
    }
    // Series that exist from the start, so that rates and alerts see 0 rather than nothing.
    for sink in ["kafka", "clickhouse", "dlq"] {
        counter!("vaxpulse_sink_retries_total", "sink" => sink).absolute(0);
    }
    for reason in ["control", "language"] {
        counter!("vaxpulse_messages_skipped_total", "reason" => reason).absolute(0);
    }
    counter!("vaxpulse_messages_consumed_total").absolute(0);
    counter!("vaxpulse_offset_commits_total").absolute(0);
    counter!("vaxpulse_tweets_deleted_total").absolute(0);
    gauge!("vaxpulse_consumer_paused").set(0.0);
    gauge!("vaxpulse_consumer_paused_partitions").set(0.0);
    gauge!("vaxpulse_messages_in_flight").set(0.0);
    for outcome in ["applied", "refused"] {
        counter!("vaxpulse_deployment_changes_total", "outcome" => outcome).absolute(0);
    }
    let h = handle.clone();
    // Histogram samples are buffered until drained; without a scrape they would pile up.
    std::thread::Builder::new()
        .name("vaxpulse-metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            h.run_upkeep();
        })
        .expect("cannot spawn a thread; the process is out of resources");
    *installed = Some(handle.clone());
    Ok(handle)
}

/// Token positions computed so far (real, padding), for benchmarks in the same process.
pub fn model_tokens() -> (u64, u64) {
    (
        TOKENS_REAL.load(Ordering::Relaxed),
        TOKENS_PADDING.load(Ordering::Relaxed),
    )
}
static TOKENS_REAL: AtomicU64 = AtomicU64::new(0);
static TOKENS_PADDING: AtomicU64 = AtomicU64::new(0);

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

/// One batch through a model.
pub struct BatchInferred<'a> {
    pub model: &'a str,
    pub role: &'static str,
    pub rows: usize,
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
        counter!("vaxpulse_model_tokens_total", "kind" => "real")
            .increment(self.real_tokens as u64);
        counter!("vaxpulse_model_tokens_total", "kind" => "padding").increment(padding_tokens);
        TOKENS_REAL.fetch_add(self.real_tokens as u64, Ordering::Relaxed);
        TOKENS_PADDING.fetch_add(padding_tokens, Ordering::Relaxed);
        tracing::debug!(
            model = self.model,
            role = self.role,
            rows = self.rows,
            padded_tokens = self.padded_tokens,
            padding,
            ms = self.seconds * 1e3,
            "batch inferred"
        );
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

/// Readiness as seen by `/health/ready`: consuming, no sink failed for good, and no sink write
/// currently failing (a ClickHouse or broker outage turns the replica not-ready until the
/// retried write goes through).
#[derive(Default)]
pub struct Health {
    pub consuming: AtomicBool,
    pub sinks_ok: AtomicBool,
    failing_writes: std::sync::atomic::AtomicUsize,
    /// Why the group's newest deployment is not served here (this replica serves an older one
    /// or `model.dir`); cleared when a deployment is applied.
    deployment_refused: Mutex<Option<String>>,
    /// What `/health/live` judges: work pending, and when the pipeline last moved.
    liveness: Mutex<Liveness>,
}

/// Whether the pipeline moves. Wedged: work pending, nothing finished and no sink write being
/// retried for `wedged_after` — a retried write is a dependency down (readiness says so, and a
/// restart would not help), not a wedge.
#[derive(Debug, Clone, Copy, Default)]
pub struct Liveness {
    pub pending: usize,
    pub finished: u64,
    pub last_progress: Option<std::time::Instant>,
    /// Zero: never wedged (`pipeline.wedged_after_ms = 0`).
    pub wedged_after: Duration,
}

impl Liveness {
    /// Records what the consumer sees at `now`: `pending` messages in flight, `finished` so far.
    pub fn observe(&mut self, pending: usize, finished: u64, now: std::time::Instant) {
        if finished != self.finished || pending == 0 || self.last_progress.is_none() {
            self.last_progress = Some(now);
        }
        self.pending = pending;
        self.finished = finished;
    }

    /// How long the pipeline has been stuck at `now`, when it is wedged.
    pub fn wedged(&self, now: std::time::Instant, writes_retrying: bool) -> Option<Duration> {
        let since = now.saturating_duration_since(self.last_progress?);
        (!self.wedged_after.is_zero()
            && self.pending > 0
            && !writes_retrying
            && since >= self.wedged_after)
            .then_some(since)
    }
}

impl Health {
    pub fn ready(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
            && self.sinks_ok.load(Ordering::Relaxed)
            && self.failing_writes.load(Ordering::Relaxed) == 0
            && self.refused().is_none()
    }

    /// Judges the replica wedged once nothing moved for `after` while work was pending.
    pub fn set_wedged_after(&self, after: Duration) {
        self.liveness_mut().wedged_after = after;
    }

    /// Called by the consumer thread each round: messages in flight and finished so far.
    pub fn observe_pipeline(&self, pending: usize, finished: u64) {
        self.liveness_mut()
            .observe(pending, finished, std::time::Instant::now());
    }

    fn liveness_mut(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Err(why)` when the pipeline is wedged (`/health/live` answers 503: restart it).
    pub fn live(&self) -> Result<(), String> {
        let retrying = self.failing_writes.load(Ordering::Relaxed) > 0;
        let l = *self.liveness_mut();
        match l.wedged(std::time::Instant::now(), retrying) {
            Some(since) => Err(format!(
                "wedged: {} messages pending and none finished for {} s (pipeline.wedged_after_ms)",
                l.pending,
                since.as_secs()
            )),
            None => Ok(()),
        }
    }

    /// Marks the replica not ready because the group's deployment could not be served
    /// (`Some(reason)`), or clears that.
    pub fn set_deployment_refused(&self, reason: Option<String>) {
        *self
            .deployment_refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = reason;
    }

    fn refused(&self) -> Option<String> {
        self.deployment_refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The body of `/health/ready`: `ready`, or why not.
    pub fn describe(&self) -> String {
        if self.ready() {
            return "ready".into();
        }
        match self.refused() {
            Some(r) => format!("not ready: the group's deployment is not served here: {r}"),
            None => "not ready".into(),
        }
    }

    /// Marks one sink write as failing until the returned guard is dropped (when it succeeds or
    /// gives up).
    pub fn write_failing(&self) -> FailingWrite<'_> {
        self.failing_writes.fetch_add(1, Ordering::Relaxed);
        FailingWrite(self)
    }
}

/// See [`Health::write_failing`].
pub struct FailingWrite<'a>(&'a Health);

impl Drop for FailingWrite<'_> {
    fn drop(&mut self) {
        self.0.failing_writes.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `/metrics`, `/health/live`, `/health/ready` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let addr = listener.local_addr()?;
    let scraped = health.clone();
    let alive = health.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                // Readiness as a metric too, read at scrape time: dashboards count ready
                // replicas and alerts fire on a replica not ready for minutes.
                gauge!("vaxpulse_ready").set(f64::from(u8::from(scraped.ready())));
                let text = metrics.render();
                async move { ([("content-type", "text/plain; version=0.0.4")], text) }
            }),
        )
        .route(
            "/health/live",
            get(move || {
                let live = alive.live();
                async move {
                    match live {
                        Ok(()) => (StatusCode::OK, "ok".to_string()),
                        Err(why) => {
                            tracing::error!(
                                "{why}; /health/live fails so that the replica is restarted"
                            );
                            (StatusCode::SERVICE_UNAVAILABLE, why)
                        }
                    }
                }
            }),
        )
        .route(
            "/health/ready",
            get(move || {
                let (ready, body) = (health.ready(), health.describe());
                async move {
                    if ready {
                        (StatusCode::OK, body)
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, body)
                    }
                }
            }),
        );
    tracing::info!(%addr, "metrics and health endpoints listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Logging to stderr; `RUST_LOG` filters (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_pipeline_is_wedged_only_when_work_waits_and_nothing_moves() {
        let t0 = Instant::now();
        let min = Duration::from_secs(60);
        let mut l = Liveness {
            wedged_after: 5 * min,
            ..Liveness::default()
        };
        l.observe(10, 0, t0);
        assert_eq!(l.wedged(t0 + 4 * min, false), None);
        assert_eq!(l.wedged(t0 + 6 * min, false), Some(6 * min));
        assert_eq!(
            l.wedged(t0 + 6 * min, true),
            None,
            "a retried write is an outage, not a wedge"
        );
        l.observe(10, 3, t0 + 6 * min);
        assert_eq!(l.wedged(t0 + 10 * min, false), None, "something finished");
        l.observe(0, 3, t0 + 20 * min);
        assert_eq!(
            l.wedged(t0 + 40 * min, false),
            None,
            "nothing pending: idle"
        );
        l.wedged_after = Duration::ZERO;
        l.observe(5, 3, t0 + 41 * min);
        assert_eq!(l.wedged(t0 + 99 * min, false), None, "disabled");
    }
}
