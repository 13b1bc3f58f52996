//! Metric names, events and the HTTP exporter. Each event's `emit()` writes the log line and
//! updates the metric in one call; events are emitted per batch or per poll round, never per
//! message. Also serves `/health/live` and `/health/ready`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LabelLabel {
    pub label: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

/// All metrics of the process.
pub struct Metrics {
    pub registry: Registry,
    pub consumed: Counter,
    pub classified: Family<LabelLabel, Counter>,
    pub skipped: Family<ReasonLabel, Counter>,
    pub dead_lettered: Family<ReasonLabel, Counter>,
    pub batch_size: Histogram,
    pub batch_padding: Histogram,
    pub inference_seconds: Histogram,
    pub model_tokens: Family<KindLabel, Counter>,
    pub tweet_latency: Histogram,
    pub sink_seconds: Family<SinkLabel, Histogram>,
    pub sink_retries: Family<SinkLabel, Counter>,
    pub commits: Counter,
    pub in_flight: Gauge,
    pub paused: Gauge,
}

fn new_metrics() -> Metrics {
    let mut registry = Registry::with_prefix("vaxpulse");
    let consumed = Counter::default();
    registry.register(
        "messages_consumed",
        "Messages read from the input topic",
        consumed.clone(),
    );
    let classified = Family::<LabelLabel, Counter>::default();
    registry.register(
        "tweets_classified",
        "Tweets classified and stored, by predicted label",
        classified.clone(),
    );
    let skipped = Family::<ReasonLabel, Counter>::default();
    registry.register(
        "messages_skipped",
        "Messages skipped on purpose (control notices, other languages)",
        skipped.clone(),
    );
    let dead_lettered = Family::<ReasonLabel, Counter>::default();
    registry.register(
        "messages_dead_lettered",
        "Messages sent to the dead-letter topic, by reason",
        dead_lettered.clone(),
    );
    let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
    registry.register(
        "batch_size_tweets",
        "Tweets per inference batch",
        batch_size.clone(),
    );
    let batch_padding = Histogram::new([0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]);
    registry.register(
        "batch_padding_ratio",
        "Share of computed tokens that are padding, per batch",
        batch_padding.clone(),
    );
    let inference_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
    registry.register(
        "inference_duration_seconds",
        "Model forward time per batch",
        inference_seconds.clone(),
    );
    let model_tokens = Family::<KindLabel, Counter>::default();
    registry.register(
        "model_tokens",
        "Token positions computed by the model: kind=real or kind=padding",
        model_tokens.clone(),
    );
    let tweet_latency = Histogram::new(exponential_buckets(0.001, 2.0, 16));
    registry.register(
        "tweet_latency_seconds",
        "From taking a tweet off the input topic to both sinks having stored its result",
        tweet_latency.clone(),
    );
    let sink_seconds = Family::<SinkLabel, Histogram>::new_with_constructor(|| {
        Histogram::new(exponential_buckets(0.0005, 2.0, 16))
    });
    registry.register(
        "sink_write_duration_seconds",
        "Time to deliver one batch to a sink, retries included",
        sink_seconds.clone(),
    );
    let sink_retries = Family::<SinkLabel, Counter>::default();
    registry.register("sink_retries", "Retried sink writes", sink_retries.clone());
    let commits = Counter::default();
    registry.register(
        "offset_commits",
        "Offset commits sent to the broker",
        commits.clone(),
    );
    let in_flight = Gauge::default();
    registry.register(
        "messages_in_flight",
        "Messages taken in and not yet finished",
        in_flight.clone(),
    );
    let paused = Gauge::default();
    registry.register(
        "consumer_paused",
        "1 while consumption is paused by backpressure",
        paused.clone(),
    );
    Metrics {
        registry,
        consumed,
        classified,
        skipped,
        dead_lettered,
        batch_size,
        batch_padding,
        inference_seconds,
        model_tokens,
        tweet_latency,
        sink_seconds,
        sink_retries,
        commits,
        in_flight,
        paused,
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(new_metrics)
}

/// Counts from one poll round of the consumer.
#[derive(Debug, Default)]
pub struct PollRound {
    pub consumed: u64,
    pub skipped_control: u64,
    pub skipped_language: u64,
    pub dead_lettered: Vec<(&'static str, u64)>,
}

impl PollRound {
    pub fn emit(&mut self) {
        if self.consumed == 0 {
            return;
        }
        let m = metrics();
        m.consumed.inc_by(self.consumed);
        for (reason, n) in [
            ("control", self.skipped_control),
            ("language", self.skipped_language),
        ] {
            if n > 0 {
                m.skipped
                    .get_or_create(&ReasonLabel {
                        reason: reason.into(),
                    })
                    .inc_by(n);
            }
        }
        for (reason, n) in &self.dead_lettered {
            m.dead_lettered
                .get_or_create(&ReasonLabel {
                    reason: (*reason).into(),
                })
                .inc_by(*n);
            tracing::warn!(reason, count = n, "messages sent to the dead-letter topic");
        }
        tracing::trace!(consumed = self.consumed, "poll round");
        *self = PollRound::default();
    }

    pub fn dead_letter(&mut self, reason: &'static str) {
        match self.dead_lettered.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.dead_lettered.push((reason, 1)),
        }
    }
}

/// One batch through the model.
pub struct BatchInferred {
    pub rows: usize,
    pub real_tokens: usize,
    pub padded_tokens: usize,
    pub seconds: f64,
}

impl BatchInferred {
    pub fn emit(&self) {
        let m = metrics();
        m.batch_size.observe(self.rows as f64);
        m.inference_seconds.observe(self.seconds);
        let padding = 1.0 - self.real_tokens as f64 / self.padded_tokens.max(1) as f64;
        m.batch_padding.observe(padding);
        m.model_tokens
            .get_or_create(&KindLabel {
                kind: "real".into(),
            })
            .inc_by(self.real_tokens as u64);
        m.model_tokens
            .get_or_create(&KindLabel {
                kind: "padding".into(),
            })
            .inc_by((self.padded_tokens - self.real_tokens) as u64);
        tracing::debug!(
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
        let m = metrics();
        m.sink_seconds
            .get_or_create(&SinkLabel {
                sink: self.sink.into(),
            })
            .observe(self.seconds);
        tracing::debug!(
            sink = self.sink,
            rows = self.rows,
            ms = self.seconds * 1e3,
            "batch stored"
        );
    }
}

/// A batch stored by every sink; its offsets are acknowledged right after.
pub struct BatchAcknowledged<'a> {
    pub labels: &'a [(String, u64)],
    /// When each tweet of the batch was taken off the input topic.
    pub received: &'a [std::time::Instant],
}

impl BatchAcknowledged<'_> {
    pub fn emit(&self) {
        let m = metrics();
        let now = std::time::Instant::now();
        for r in self.received {
            m.tweet_latency
                .observe(now.saturating_duration_since(*r).as_secs_f64());
        }
        for (label, n) in self.labels {
            m.classified
                .get_or_create(&LabelLabel {
                    label: label.clone(),
                })
                .inc_by(*n);
        }
        tracing::debug!(labels = ?self.labels, "batch acknowledged");
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
        metrics()
            .sink_retries
            .get_or_create(&SinkLabel {
                sink: self.sink.into(),
            })
            .inc();
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
}

impl Health {
    pub fn ready(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
            && self.sinks_ok.load(Ordering::Relaxed)
            && self.failing_writes.load(Ordering::Relaxed) == 0
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

/// Serves `/metrics`, `/health/live`, `/health/ready` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(|| async {
                let mut out = String::new();
                match prometheus_client::encoding::text::encode(&mut out, &metrics().registry) {
                    Ok(()) => (
                        StatusCode::OK,
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        out,
                    ),
                    Err(e) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        [("content-type", "text/plain")],
                        e.to_string(),
                    ),
                }
            }),
        )
        .route("/health/live", get(|| async { "ok" }))
        .route(
            "/health/ready",
            get(move || {
                let ready = health.ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
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
