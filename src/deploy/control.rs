//! The control topic: a compacted, single-partition Kafka topic holding each consumer group's
//! deployment under the key `group_id`. `vaxpulse models` commands publish a record per change;
//! every replica reads the topic to its end before it starts (so a replica that starts later
//! joins with the current deployment) and then follows it. Guarantee: a replica only ever moves
//! to a record with a larger epoch than the one it serves; a record it cannot parse is logged
//! and skipped.

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::Deployment;
use crate::config::KafkaConfig;
use crate::sink::kafka::client_config;

/// A reader of the control topic, positioned at its start.
pub struct ControlReader {
    consumer: BaseConsumer,
    topic: String,
    key: String,
}

impl ControlReader {
    /// Assigns partition 0 of `cfg.control_topic` from the beginning (no group membership, no
    /// commits: every reader reads it all).
    pub fn open(cfg: &KafkaConfig) -> anyhow::Result<Self> {
        let defaults = [
            ("group.id", format!("{}.control-reader", cfg.group_id)),
            ("enable.auto.commit", "false".to_string()),
            ("enable.partition.eof", "false".to_string()),
            (
                "fetch.wait.max.ms",
                cfg.fetch_wait_max_ms.min(500).to_string(),
            ),
        ];
        let consumer: BaseConsumer = client_config(cfg, &defaults)
            .create()
            .context("cannot create the control-topic reader")?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&cfg.control_topic, 0, Offset::Beginning)?;
        consumer.assign(&tpl)?;
        Ok(ControlReader {
            consumer,
            topic: cfg.control_topic.clone(),
            key: cfg.group_id.clone(),
        })
    }

    /// Reads to the end of the topic as it is now; the last deployment of this group, if any.
    pub fn catch_up(&self, timeout: Duration) -> anyhow::Result<Option<Deployment>> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(&self.topic, 0, timeout)
            .with_context(|| {
                format!(
                    "cannot read the control topic {} (create it: vaxpulse topics; it must exist before replicas start)",
                    self.topic
                )
            })?;
        let mut latest = None;
        if high <= low {
            return Ok(None);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            anyhow::ensure!(
                !left.is_zero(),
                "the control topic {} was not read to its end ({high}) within {timeout:?}",
                self.topic
            );
            match self.consumer.poll(left.min(Duration::from_millis(200))) {
                Some(Ok(m)) => {
                    let offset = m.offset();
                    if let Some(d) = self.parse(&m) {
                        latest = Some(d);
                    }
                    if offset + 1 >= high {
                        return Ok(latest);
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "control topic read failed; retrying"),
                None => {}
            }
        }
    }

    /// The next deployment record of this group, waiting up to `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<Deployment> {
        match self.consumer.poll(timeout) {
            Some(Ok(m)) => self.parse(&m),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "control topic read failed; retrying");
                None
            }
            None => None,
        }
    }

    fn parse(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Option<Deployment> {
        if m.key() != Some(self.key.as_bytes()) {
            return None;
        }
        let payload = m.payload()?;
        match serde_json::from_slice::<Deployment>(payload) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::error!(offset = m.offset(), error = %e, "unreadable deployment record on the control topic; skipped (publish a new one with vaxpulse models)");
                None
            }
        }
    }
}

/// Publishes `d` as the group's deployment (partition 0, key = group id), waiting for the
/// broker's acknowledgement.
pub async fn publish(cfg: &KafkaConfig, d: &Deployment) -> anyhow::Result<()> {
    let producer: FutureProducer = client_config(
        cfg,
        &[
            ("acks", "all".to_string()),
            ("message.timeout.ms", "15000".to_string()),
        ],
    )
    .create()
    .context("cannot create the control-topic producer")?;
    let payload = serde_json::to_vec(d)?;
    producer
        .send(
            FutureRecord::to(&cfg.control_topic)
                .partition(0)
                .key(cfg.group_id.as_bytes())
                .payload(&payload),
            Duration::from_secs(15),
        )
        .await
        .map_err(|(e, _)| e)
        .with_context(|| format!("cannot publish the deployment to {}", cfg.control_topic))?;
    Ok(())
}

/// Follows the control topic from where `reader` is, sending every deployment newer than
/// `epoch` to `tx`, until `stop` is set or `tx` is closed.
pub fn follow(
    reader: ControlReader,
    mut epoch: u64,
    tx: crossbeam_channel::Sender<Deployment>,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    while !stop.is_cancelled() {
        if let Some(d) = reader.next(Duration::from_millis(200)) {
            if d.epoch > epoch {
                epoch = d.epoch;
                tracing::info!(deployment = %d.summary(), actor = %d.actor, action = %d.action, "new deployment published; loading it");
                if tx.send(d).is_err() {
                    break;
                }
            } else {
                tracing::debug!(
                    epoch = d.epoch,
                    "deployment record not newer than the served one; ignored"
                );
            }
        }
    }
    Ok(())
}
