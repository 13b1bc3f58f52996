//! `vaxpulse produce`: pushes tweets into the input topic from a JSONL file or the synthetic
//! generator (or, for the test kit and harness, given messages), optionally at a fixed rate, with
//! a progress bar. Returns once the broker has acknowledged every message.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::KafkaConfig;
use crate::kafka::client_config;
use crate::synthetic::Generator;

/// What to produce.
pub enum Input {
    Jsonl(PathBuf),
    Synthetic {
        count: u64,
        seed: u64,
        days: u32,
    },
    /// (key, payload) pairs, in order.
    Messages(Vec<(Option<String>, Vec<u8>)>),
}

/// How to produce it.
pub struct ProduceOptions {
    pub topic: String,
    /// Messages per second; `None` = as fast as the broker takes them.
    pub rate: Option<f64>,
    pub progress: bool,
    /// How long the client itself keeps trying one message (librdkafka `message.timeout.ms`).
    pub message_timeout_ms: u64,
    /// Extra sends of a message the client gave up on, 500 ms apart. Around a broker restart
    /// some refusals are not retried by librdkafka itself; a resent message may be stored
    /// twice, so only callers that count distinct keys should ask for resends.
    pub resends: u32,
    /// Largest message the producer accepts (librdkafka `message.max.bytes`).
    pub max_message_bytes: usize,
    /// Every message to this partition (default: by key, or the client's partitioner).
    pub partition: Option<i32>,
}

impl ProduceOptions {
    /// Defaults for `topic`: as fast as possible, no progress bar, 60 s per message, no resend.
    pub fn to(topic: impl Into<String>) -> Self {
        ProduceOptions {
            topic: topic.into(),
            rate: None,
            progress: false,
            message_timeout_ms: 60_000,
            resends: 0,
            max_message_bytes: 1_000_000,
            partition: None,
        }
    }
}

/// Produces all messages; returns how many were acknowledged.
pub async fn produce(
    cfg: &KafkaConfig,
    input: Input,
    opts: &ProduceOptions,
) -> anyhow::Result<u64> {
    if let Some(r) = opts.rate {
        // `i / r` with r = 0, negative or NaN would be an infinite or invalid sleep (a panic).
        anyhow::ensure!(
            r.is_finite() && r > 0.0,
            "--rate {r}: give a positive number of messages per second, or leave it out for as fast as possible"
        );
    }
    let defaults = [
        ("acks", "all".to_string()),
        ("linger.ms", "5".to_string()),
        ("message.timeout.ms", opts.message_timeout_ms.to_string()),
        ("message.max.bytes", opts.max_message_bytes.to_string()),
    ];
    let producer: FutureProducer = client_config(cfg, &defaults)
        .create()
        .context("cannot create the producer (check kafka.brokers)")?;
    let messages: Box<dyn Iterator<Item = (Option<String>, Vec<u8>)> + Send> = match input {
        Input::Jsonl(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let lines: Vec<_> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| (None, l.as_bytes().to_vec()))
                .collect();
            Box::new(lines.into_iter())
        }
        Input::Synthetic { count, seed, days } => {
            let start = Utc::now() - chrono::Duration::days(i64::from(days));
            let mut g = Generator::new(seed, start, days).with_trend();
            Box::new((0..count).map(move |_| {
                let (t, p) = g.payload();
                (Some(t.id), p)
            }))
        }
        Input::Messages(m) => Box::new(m.into_iter()),
    };
    let (lower, _) = messages.size_hint();
    let bar = if opts.progress {
        ProgressBar::new(lower as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} produced {pos}/{len} [{elapsed_precise}] {per_sec}",
        )
        .expect("static template; this is a bug"),
    );
    let started = Instant::now();
    let mut sent = 0u64;
    let deliveries = futures::stream::iter(messages.enumerate())
        .map(|(i, (key, payload))| {
            let producer = producer.clone();
            let topic = opts.topic.clone();
            let (rate, resends, partition) = (opts.rate, opts.resends, opts.partition);
            let timeout = Duration::from_millis(opts.message_timeout_ms);
            async move {
                if let Some(r) = rate {
                    let due = started + Duration::from_secs_f64(i as f64 / r);
                    tokio::time::sleep_until(due.into()).await;
                }
                let mut attempt = 0;
                loop {
                    let mut rec = FutureRecord::to(&topic).payload(payload.as_slice());
                    if let Some(k) = &key {
                        rec = rec.key(k.as_bytes());
                    }
                    if let Some(p) = partition {
                        rec = rec.partition(p);
                    }
                    match producer.send(rec, timeout).await {
                        Ok(_) => return Ok(()),
                        Err((e, _)) if attempt >= resends => return Err(e),
                        Err(_) => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            }
        })
        .buffered(2048);
    futures::pin_mut!(deliveries);
    while let Some(r) = deliveries.next().await {
        r.context("the broker refused a message (does the topic exist? scripts/services.sh creates the demo topics)")?;
        sent += 1;
        bar.inc(1);
    }
    bar.finish();
    Ok(sent)
}
