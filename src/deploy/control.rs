//! The control topic: a compacted, single-partition Kafka topic holding each consumer group's
//! deployment under the key `group_id`. `vaxpulse models` commands publish a record per change;
//! every replica reads the topic to its end before it starts (so a replica that starts later
//! joins with the current deployment) and then follows it. Guarantee: a replica only ever moves
//! to a record with a larger epoch than the one it serves, and only after the record passed
//! [`Deployment::check`]; a record it cannot read or that fails the check is refused with its
//! reason before any file it names is opened.

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::Deployment;
use crate::config::KafkaConfig;
use crate::kafka::client_config;

/// A record of this group on the control topic.
#[derive(Debug)]
pub enum Record {
    Deployment(Box<Deployment>),
    /// Not a deployment this version can read (bad JSON, an unknown field, a model name that
    /// is not a plain directory name, ...): refused before anything is opened.
    Unreadable {
        offset: i64,
        /// The record's `epoch` field when it has one, else 0.
        epoch: u64,
        error: String,
    },
}

/// A record refused by the control thread (before the loader sees it): its epoch, the
/// deployment when it could be read, and why.
pub struct Refusal<'a> {
    pub epoch: u64,
    pub deployment: Option<&'a Deployment>,
    pub reason: String,
}

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

    /// Reads to the end of the topic as it is now: every readable deployment record of this
    /// group, in offset order (compaction keeps few; the caller picks by epoch, not by offset).
    /// The end is the reader's position, not the last record's offset, so a trailing
    /// transaction marker or a compacted-away record cannot make it wait for ever.
    pub fn catch_up(&self, timeout: Duration) -> anyhow::Result<Vec<Deployment>> {
        let (low, high) = self
            .consumer
            .fetch_watermarks(&self.topic, 0, timeout)
            .with_context(|| {
                format!(
                    "cannot read the control topic {} (create it: vaxpulse topics; it must exist before replicas start)",
                    self.topic
                )
            })?;
        let mut records = Vec::new();
        if high <= low {
            return Ok(records);
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
                    match self.parse(&m) {
                        Some(Record::Deployment(d)) => records.push(*d),
                        Some(Record::Unreadable { offset, error, .. }) => {
                            tracing::error!(offset, error, "unreadable deployment record on the control topic; skipped (publish a new one with vaxpulse models)");
                        }
                        None => {}
                    }
                    if offset + 1 >= high {
                        return Ok(records);
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "control topic read failed; retrying"),
                None => {}
            }
            if self.position()? >= high {
                return Ok(records);
            }
        }
    }

    /// The offset the reader fetches next (past markers and compacted gaps); 0 before any.
    fn position(&self) -> anyhow::Result<i64> {
        let tpl = self.consumer.position()?;
        Ok(tpl
            .find_partition(&self.topic, 0)
            .and_then(|p| p.offset().to_raw())
            .filter(|o| *o >= 0)
            .unwrap_or(0))
    }

    /// The next record of this group, waiting up to `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<Record> {
        match self.consumer.poll(timeout) {
            Some(Ok(m)) => self.parse(&m),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "control topic read failed; retrying");
                None
            }
            None => None,
        }
    }

    /// This group's record in `m` (other groups' records and tombstones are none).
    fn parse(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Option<Record> {
        if m.key() != Some(self.key.as_bytes()) {
            return None;
        }
        let payload = m.payload()?;
        Some(match serde_json::from_slice::<Deployment>(payload) {
            Ok(d) => Record::Deployment(Box::new(d)),
            Err(e) => {
                // The epoch, when there is one, lets the refusal be found next to the others.
                let epoch = serde_json::from_slice::<serde_json::Value>(payload)
                    .ok()
                    .and_then(|v| v.get("epoch").and_then(serde_json::Value::as_u64))
                    .unwrap_or(0);
                // A hostile record can make serde quote long text: the reason stays short.
                let mut error = e.to_string();
                if error.len() > 300 {
                    let cut = (0..=300)
                        .rev()
                        .find(|i| error.is_char_boundary(*i))
                        .unwrap_or(0);
                    error.truncate(cut);
                    error.push('…');
                }
                Record::Unreadable {
                    offset: m.offset(),
                    epoch,
                    error,
                }
            }
        })
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
/// `epoch` to `tx`, until `stop` is set or `tx` is closed. Every record is admitted here first
/// ([`super::Admission`]: signature, then [`Deployment::check`]): one that cannot be read or
/// fails goes to `refused` and
/// never moves `epoch`, so a record far ahead cannot make later, valid ones look old; an old
/// one (replay) is ignored.
pub fn follow(
    reader: ControlReader,
    mut epoch: u64,
    admission: super::Admission,
    tx: crossbeam_channel::Sender<Deployment>,
    refused: impl Fn(Refusal<'_>),
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    while !stop.is_cancelled() {
        let d = match reader.next(Duration::from_millis(200)) {
            None => continue,
            Some(Record::Unreadable {
                offset,
                epoch: e,
                error,
            }) => {
                refused(Refusal {
                    epoch: e,
                    deployment: None,
                    reason: format!("unreadable record at offset {offset}: {error}"),
                });
                continue;
            }
            Some(Record::Deployment(d)) => *d,
        };
        match admission.admit(&d, epoch) {
            Err(e) if e.is_stale() => tracing::debug!(epoch = d.epoch, "{e}"),
            Err(e) => refused(Refusal {
                epoch: d.epoch,
                deployment: Some(&d),
                reason: e.to_string(),
            }),
            Ok(key) => {
                epoch = d.epoch;
                tracing::info!(deployment = %d.summary(), actor = %d.actor, action = %d.action, signed_by = key.as_deref().unwrap_or("-"), "new deployment published; loading it");
                if tx.send(d).is_err() {
                    break;
                }
            }
        }
    }
    Ok(())
}
