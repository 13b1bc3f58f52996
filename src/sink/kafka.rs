//! Kafka producers: results to the output topic (key = tweet id, JSON value) and dead letters
//! (original bytes + typed reason headers). A message is acknowledged only once the broker
//! confirmed it; a dead letter that cannot be written is retried, never dropped, so its offset
//! (and thus the partition's commit) waits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{retry_until_done, ResultSink, SinkError};
use crate::batch::offsets::{Ack, OffsetTracker};
use crate::config::KafkaConfig;
use crate::kafka::client_config;
use crate::telemetry::{self, Health};
use crate::work::ClassifiedBatch;

fn producer(
    cfg: &KafkaConfig,
    message_timeout_ms: u64,
    max_bytes: usize,
) -> Result<FutureProducer, SinkError> {
    let defaults = [
        ("acks", "all".to_string()),
        ("message.timeout.ms", message_timeout_ms.to_string()),
        ("linger.ms", "5".to_string()),
        ("message.max.bytes", max_bytes.max(1_000_000).to_string()),
    ];
    Ok(client_config(cfg, &defaults).create()?)
}

/// Publishes classification results.
#[derive(Clone)]
pub struct ResultProducer {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
    health: Option<Arc<Health>>,
}

impl ResultProducer {
    pub fn new(cfg: &KafkaConfig) -> Result<Self, SinkError> {
        Ok(ResultProducer {
            producer: producer(cfg, cfg.message_timeout_ms, 1_000_000)?,
            topic: cfg.output_topic.clone(),
            timeout: Duration::from_millis(cfg.message_timeout_ms),
            health: None,
        })
    }

    /// Reports the replica not ready while a publish is being retried.
    pub fn with_health(mut self, health: Arc<Health>) -> Self {
        self.health = Some(health);
        self
    }

    async fn publish_once(&self, batch: &ClassifiedBatch) -> Result<(), SinkError> {
        let payloads = batch
            .rows
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<Vec<_>, _>>()?;
        let mut deliveries = Vec::with_capacity(payloads.len());
        for (row, payload) in batch.rows.iter().zip(&payloads) {
            let mut headers = OwnedHeaders::new().insert(Header {
                key: "vaxpulse.model_version",
                value: Some(row.model_version.as_bytes()),
            });
            let source_ts = row.source_timestamp_ms.map(|t| t.to_string());
            if let Some(ts) = &source_ts {
                headers = headers.insert(Header {
                    key: "vaxpulse.source_timestamp_ms",
                    value: Some(ts.as_bytes()),
                });
            }
            let record = FutureRecord::to(&self.topic)
                .key(row.tweet_id.as_bytes())
                .payload(payload.as_slice())
                .headers(headers);
            deliveries.push(self.producer.send(record, self.timeout));
        }
        // A deleted tweet's key gets a tombstone (null value): a compacted output topic forgets
        // it, and consumers learn to drop it.
        for id in &batch.deleted {
            let record = FutureRecord::<[u8], [u8]>::to(&self.topic)
                .key(id.as_bytes())
                .headers(OwnedHeaders::new().insert(Header {
                    key: "vaxpulse.deleted",
                    value: Some("true".as_bytes()),
                }));
            deliveries.push(self.producer.send(record, self.timeout));
        }
        for d in futures::future::join_all(deliveries).await {
            d.map_err(|(e, _)| SinkError::Kafka(e))?;
        }
        Ok(())
    }

    /// Publishes every row of the batch; retries transient failures until the broker accepts
    /// them. Replays may duplicate messages in the topic (at-least-once; consumers key on
    /// `tweet_id` + `model_version`).
    pub async fn publish(&self, batch: &ClassifiedBatch) -> Result<(), SinkError> {
        let started = Instant::now();
        retry_until_done(
            "kafka",
            || self.publish_once(batch),
            SinkError::is_retriable,
            self.health.as_deref(),
        )
        .await?;
        telemetry::BatchStored {
            sink: "kafka",
            rows: batch.rows.len(),
            seconds: started.elapsed().as_secs_f64(),
        }
        .emit();
        Ok(())
    }
}

impl ResultSink for ResultProducer {
    fn name(&self) -> &'static str {
        "kafka"
    }
    fn store<'a>(
        &'a self,
        batch: &'a ClassifiedBatch,
    ) -> futures::future::BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.publish(batch))
    }
    fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

/// A message that could not be decoded, with where it came from.
pub struct DeadLetter {
    /// The original bytes, cut to `decode.max_message_bytes` when they were larger.
    pub payload: Vec<u8>,
    /// The original size when `payload` was cut (header `vaxpulse.truncated_from_bytes`).
    pub original_bytes: Option<usize>,
    pub key: Option<Vec<u8>>,
    pub reason: &'static str,
    pub detail: String,
    pub source: String,
    pub ack: Ack,
}

/// Writes dead letters; each is acknowledged in the tracker only after the broker has it.
#[derive(Clone)]
pub struct DeadLetterProducer {
    producer: FutureProducer,
    topic: String,
    tracker: Arc<OffsetTracker>,
    health: Option<Arc<Health>>,
    /// Bounds dead letters in flight: a storm of bad input while the topic is unwritable
    /// pauses the partitions it comes from instead of piling payloads up in memory.
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// Dead letters that may be in flight at once (see `DeadLetterProducer::in_flight`).
pub const DLQ_IN_FLIGHT: usize = 1024;

/// Most bytes of a message key copied into its dead letter (its full size goes in the header
/// `vaxpulse.key_truncated_from_bytes`): a huge key must not make the dead letter larger than
/// the topic takes, which would hold the partition's commit for good.
pub const DLQ_KEY_MAX_BYTES: usize = 1024;

/// Most bytes of the `vaxpulse.detail` header.
const DLQ_DETAIL_MAX_BYTES: usize = 1024;

/// The broker (or the producer) will never take this record as it is: retrying cannot help.
fn too_large(e: &SinkError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e,
        SinkError::Kafka(k) if matches!(
            k.rdkafka_error_code(),
            Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge)
        )
    )
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl DeadLetterProducer {
    pub fn new(
        cfg: &KafkaConfig,
        max_message_bytes: usize,
        tracker: Arc<OffsetTracker>,
    ) -> Result<Self, SinkError> {
        Ok(DeadLetterProducer {
            producer: producer(
                cfg,
                cfg.message_timeout_ms,
                max_message_bytes.saturating_mul(2) + 64 * 1024,
            )?,
            topic: cfg.dlq_topic.clone(),
            tracker,
            health: None,
            in_flight: Arc::new(tokio::sync::Semaphore::new(DLQ_IN_FLIGHT)),
        })
    }

    /// Reports the replica not ready while a dead letter is being retried.
    pub fn with_health(mut self, health: Arc<Health>) -> Self {
        self.health = Some(health);
        self
    }

    /// One attempt; `headers_only` leaves payload and key out (the record was too large for
    /// the topic: the headers still say what was dropped, where it came from and why).
    async fn send_once(&self, dl: &DeadLetter, headers_only: bool) -> Result<(), SinkError> {
        let truncated = dl.original_bytes.map(|n| n.to_string());
        let key = dl.key.as_deref().filter(|_| !headers_only);
        let key_cut = key
            .filter(|k| k.len() > DLQ_KEY_MAX_BYTES)
            .map(|k| k.len().to_string());
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "vaxpulse.error",
                value: Some(dl.reason.as_bytes()),
            })
            .insert(Header {
                key: "vaxpulse.detail",
                value: Some(cut(&dl.detail, DLQ_DETAIL_MAX_BYTES).as_bytes()),
            })
            .insert(Header {
                key: "vaxpulse.source",
                value: Some(dl.source.as_bytes()),
            });
        if let Some(n) = &truncated {
            headers = headers.insert(Header {
                key: "vaxpulse.truncated_from_bytes",
                value: Some(n.as_bytes()),
            });
        }
        if let Some(n) = &key_cut {
            headers = headers.insert(Header {
                key: "vaxpulse.key_truncated_from_bytes",
                value: Some(n.as_bytes()),
            });
        }
        let original = (dl.original_bytes.unwrap_or(dl.payload.len())
            + dl.key.as_ref().map_or(0, Vec::len))
        .to_string();
        if headers_only {
            headers = headers.insert(Header {
                key: "vaxpulse.dropped_bytes",
                value: Some(original.as_bytes()),
            });
        }
        let payload: &[u8] = if headers_only { &[] } else { &dl.payload };
        let mut record = FutureRecord::to(&self.topic)
            .payload(payload)
            .headers(headers);
        if let Some(k) = key {
            record = record.key(&k[..k.len().min(DLQ_KEY_MAX_BYTES)]);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(e, _)| SinkError::Kafka(e))
    }

    /// Sends `dl` on `runtime` when fewer than [`DLQ_IN_FLIGHT`] dead letters are in flight;
    /// otherwise gives it back at once (`Some`): the caller holds it and pauses its partition. A
    /// slow or unwritable dead-letter topic must never block the consumer thread, or the group
    /// would drop it after `max.poll.interval.ms`.
    #[must_use = "a dead letter given back must be held and sent again"]
    pub fn try_spawn_send(
        &self,
        runtime: &tokio::runtime::Handle,
        dl: DeadLetter,
    ) -> Option<DeadLetter> {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            return Some(dl);
        };
        let this = self.clone();
        runtime.spawn(async move {
            this.send(dl).await;
            drop(permit);
        });
        None
    }

    /// Sends until the broker accepts, then acknowledges. Never gives up on a dead letter the
    /// topic could take: an unwritable DLQ holds the partition's commit back instead of losing
    /// the message. One the topic can never take as it is (too large) goes as its headers
    /// alone, so that no single message can stop a partition's commits.
    pub async fn send(&self, dl: DeadLetter) {
        let full = retry_until_done(
            "dlq",
            || self.send_once(&dl, false),
            |e| !too_large(e),
            self.health.as_deref(),
        )
        .await;
        if let Err(e) = full {
            tracing::warn!(source = %dl.source, reason = dl.reason, error = %e, "dead letter too large for the dead-letter topic; sending its headers without payload and key");
            retry_until_done(
                "dlq",
                || self.send_once(&dl, true),
                |_| true,
                self.health.as_deref(),
            )
            .await
            .expect("every error is retried, so only success returns; this is a bug");
        }
        self.tracker.done(dl.ack);
    }
}
