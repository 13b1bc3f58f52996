//! Metric names and the Prometheus recorder, through the `metrics` facade and
//! `metrics-exporter-prometheus`; the events that feed them ([`events`]: each `emit()` writes
//! the log line and updates the metrics in one call, per batch or per poll round, never per
//! message); health and the HTTP endpoints ([`health`]). Names follow
//! `vaxpulse_<what>_<unit>[_total]`; labels are low-cardinality (reason, label, model version,
//! sink, kind, partition). A leaf: imports no domain module.

mod events;
mod health;

pub use events::*;
pub use health::*;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
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
        "Model time per batch (all its forwards), by model version",
    ),
    (
        "vaxpulse_model_forwards_total",
        "counter",
        "Model forwards, by role; above the batches when batch.split_by_cost cuts them by length",
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
        "vaxpulse_batch_overhead_tokens",
        "gauge",
        "Per-call cost of a model forward in padded tokens, as batches are cut by it (0 = not known yet)",
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
        "vaxpulse_quality_accuracy_ratio",
        "gauge",
        "Live accuracy per model version from the annotations, weighted by 1/inclusion probability (bound: estimate, low, high)",
    ),
    (
        "vaxpulse_quality_macro_f1_ratio",
        "gauge",
        "Live macro-F1 per model version from the annotations",
    ),
    (
        "vaxpulse_quality_labels",
        "gauge",
        "Annotated tweets a model version's live quality rests on",
    ),
    (
        "vaxpulse_promotion_proposed",
        "gauge",
        "1 while the quality gate would pass a shadow's promotion (quality.propose_promotions)",
    ),
    (
        "vaxpulse_annotations_total",
        "counter",
        "Labels stored by the annotation page, per label",
    ),
    (
        "vaxpulse_monitor_leader",
        "gauge",
        "1 on the replica that computes the group's drift gauges (it holds input partition 0)",
    ),
    (
        "vaxpulse_monitor_rollup_windows_total",
        "counter",
        "Hourly windows of the monitor's rollup recomputed (those written to since the last refresh)",
    ),
    (
        "vaxpulse_ready",
        "gauge",
        "1 while /health/ready answers ready (consuming, sinks healthy), read at scrape time",
    ),
    (
        "vaxpulse_memory_resident_bytes",
        "gauge",
        "Resident memory of the process (RSS), read at scrape time",
    ),
    (
        "vaxpulse_memory_allocated_bytes",
        "gauge",
        "Live heap allocations of the whole process as jemalloc counts them, read at scrape time: grows on a leak, where only the resident memory grows on retention",
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
    for role in ["champion", "shadow"] {
        counter!("vaxpulse_model_forwards_total", "role" => role).absolute(0);
    }
    counter!("vaxpulse_tweets_deleted_total").absolute(0);
    gauge!("vaxpulse_consumer_paused").set(0.0);
    gauge!("vaxpulse_consumer_paused_partitions").set(0.0);
    gauge!("vaxpulse_messages_in_flight").set(0.0);
    gauge!("vaxpulse_batch_overhead_tokens").set(0.0);
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

/// Logging to stderr; `RUST_LOG` filters (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
