//! The Kafka consumer, on its own OS thread: decodes messages, routes tweets into the pipeline,
//! skips or dead-letters the rest, commits finished offsets, and handles rebalances.
//!
//! Guarantees: offsets are committed only up to the lowest unfinished message
//! ([`OffsetTracker`]). On revocation, queued work of the partitions given up is dropped (the
//! next owner reads it again) and work already inferred is drained (up to
//! `revoke_drain_timeout_ms`, well under the session timeout) and committed before they are
//! released; at shutdown everything in flight is drained (up to `drain_timeout_ms`) and
//! committed, and a final commit that does not go through is an error, never a clean exit. When
//! the pipeline is full, all partitions are paused; when dead letters cannot be written, the
//! partitions they came from are paused. The consumer thread itself never blocks on either.
//! Messages are decoded in chunks of what the client already holds ([`poll_chunk`]), on up to
//! `decode.threads` threads, and handled in arrival order as if decoded one by one.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::{Sender, TrySendError};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::batch::offsets::{Ack, OffsetTracker, Partition};
use crate::config::KafkaConfig;
use crate::kafka::{client_config, consumer_defaults};
use crate::sink::kafka::{DeadLetter, DeadLetterProducer};
use crate::telemetry::{self, Health, PollRound};
use crate::tweet::{decode_chunk, DecodeRules, Decoded, Input, SkipReason, Tweet};
use crate::work::Work;

/// Everything the consumer thread needs.
pub struct Source {
    pub cfg: KafkaConfig,
    pub rules: DecodeRules,
    /// `decode.threads`.
    pub decode_threads: usize,
    pub tracker: Arc<OffsetTracker>,
    pub dlq: DeadLetterProducer,
    pub runtime: tokio::runtime::Handle,
    pub health: Arc<Health>,
    /// Shutdown: longest wait for everything in flight.
    pub drain_timeout: Duration,
    /// Revocation: longest wait for already-inferred work of the revoked partitions.
    pub revoke_drain_timeout: Duration,
}

/// Messages taken from Kafka that could not be handed on yet.
#[derive(Default)]
struct Held {
    /// Tweets waiting for room in the full pipeline.
    tweets: VecDeque<Work>,
    /// Dead letters waiting for a free slot (the dead-letter topic is slow or down).
    dead_letters: VecDeque<DeadLetter>,
}

struct Ctx {
    tracker: Arc<OffsetTracker>,
    topic: String,
    revoke_drain_timeout: Duration,
    held: Arc<Mutex<Held>>,
    /// Set by every assignment: librdkafka resumes newly assigned partitions, so the consumer
    /// thread must pause again whatever it still wants paused.
    reassigned: AtomicBool,
    /// Partitions revoked since [`poll_chunk`] last asked: its chunk's earlier messages of
    /// these were never tracked and must not be handled.
    revoked: Mutex<Vec<Partition>>,
}

impl Ctx {
    fn take_revoked(&self) -> Vec<Partition> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let parts: Vec<Partition> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(&parts);
        // Held messages were never handed on; the next owner reads them again.
        {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            let tracker = &self.tracker;
            let keep = |ack: Ack| {
                let revoked = parts.contains(&ack.partition);
                if revoked {
                    tracker.untrack(ack);
                }
                !revoked
            };
            held.tweets.retain(|w| keep(w.ack));
            held.dead_letters.retain(|d| keep(d.ack));
        }
        // First let in-flight work finish in order for half the budget: whatever completes now
        // is committed and never redone. Then, if work remains, drop the queued part before
        // inference (it is given back unfinished and the next owner reads it; work that had
        // finished out of order past it — length bucketing reorders — is redone there) and wait
        // the other half for what is already inferred. The whole group waits for this member
        // here, so the budget stays well under the session timeout.
        let half = self.revoke_drain_timeout / 2;
        let mut drained = self.tracker.wait_drained(Some(&parts), half);
        if !drained {
            self.tracker.release(&parts);
            drained = self
                .tracker
                .wait_drained(Some(&parts), self.revoke_drain_timeout - half);
        }
        let positions = self.tracker.positions(&parts);
        commit(consumer, &self.topic, &positions, CommitMode::Sync);
        self.tracker.revoke(&parts);
        tracing::info!(
            ?parts,
            drained,
            "partitions revoked after draining in-flight work"
        );
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(e) = result {
            let parts: Vec<Partition> = offsets
                .elements_for_topic(&self.topic)
                .iter()
                .map(|e| e.partition())
                .collect();
            // Async commits fail here, not at the call: without this, positions that stop
            // moving (the end of a backlog) would never be committed again.
            self.tracker.commit_failed(&parts);
            tracing::warn!(error = %e, ?parts, "offset commit failed; the next commit sends these again");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts: Vec<Partition> = tpl
                    .elements_for_topic(&self.topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                for p in &parts {
                    self.tracker.assign(*p);
                }
                self.reassigned.store(true, Ordering::Relaxed);
                tracing::info!(?parts, "partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

fn commit(
    consumer: &BaseConsumer<Ctx>,
    topic: &str,
    positions: &[(Partition, i64)],
    mode: CommitMode,
) -> bool {
    if positions.is_empty() {
        return true;
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in positions {
        if let Err(e) = tpl.add_partition_offset(topic, *p, Offset::Offset(*o)) {
            tracing::error!(error = %e, "cannot build commit list; this is a bug");
            return false;
        }
    }
    // A sync commit (revocation, shutdown) is the last chance for these positions: retry the
    // transient refusals (e.g. a rebalance in progress) a few times. Whatever stays
    // uncommitted is read again by the next owner — duplicates in the output topic, never loss,
    // and no double counting in ClickHouse.
    let attempts = if matches!(mode, CommitMode::Sync) {
        4
    } else {
        1
    };
    for attempt in 1..=attempts {
        match consumer.commit(&tpl, mode) {
            Ok(()) => {
                telemetry::OffsetsCommitted {
                    partitions: positions.len(),
                }
                .emit();
                tracing::debug!(?positions, "offsets committed");
                return true;
            }
            Err(e) if attempt < attempts => {
                tracing::debug!(error = %e, attempt, "offset commit refused; retrying");
                std::thread::sleep(Duration::from_millis(250 * attempt as u64));
            }
            Err(e) => {
                let parts: Vec<Partition> = positions.iter().map(|(p, _)| *p).collect();
                consumer.context().tracker.commit_failed(&parts);
                tracing::warn!(error = %e, ?positions, "offset commit failed; these positions are read again by their next owner unless a later commit succeeds");
            }
        }
    }
    false
}

impl Source {
    /// Consumes until `cancel` is cancelled, then drains and commits. Runs on the calling thread.
    /// Returns an error when the final commit did not go through.
    pub fn run(self, pipeline: Sender<Work>, cancel: CancellationToken) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let held = Arc::new(Mutex::new(Held::default()));
        let ctx = Ctx {
            tracker: self.tracker.clone(),
            topic: self.cfg.input_topic.clone(),
            revoke_drain_timeout: self.revoke_drain_timeout,
            held: held.clone(),
            reassigned: AtomicBool::new(false),
            revoked: Mutex::new(Vec::new()),
        };
        let mut cc = client_config(&self.cfg, &consumer_defaults(self.rules.max_message_bytes));
        cc.set("group.id", &self.cfg.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", self.cfg.auto_offset_reset.as_str())
            .set("fetch.wait.max.ms", self.cfg.fetch_wait_max_ms.to_string())
            .set(
                "session.timeout.ms",
                self.cfg.session_timeout_ms.to_string(),
            )
            .set("queued.max.messages.kbytes", "16384");
        if !self.cfg.group_instance_id.is_empty() {
            cc.set("group.instance.id", &self.cfg.group_instance_id);
        }
        let consumer: BaseConsumer<Ctx> = cc.create_with_context(ctx).context(
            "cannot create the Kafka consumer (check kafka.brokers and kafka.properties)",
        )?;
        consumer
            .subscribe(&[&self.cfg.input_topic])
            .with_context(|| format!("cannot subscribe to {}", self.cfg.input_topic))?;
        tracing::info!(topic = %self.cfg.input_topic, group = %self.cfg.group_id, "consuming");

        let commit_every = Duration::from_millis(self.cfg.commit_interval_ms);
        let mut last_commit = Instant::now();
        let mut round = PollRound::default();
        let mut paused = BTreeSet::<Partition>::new();
        let topic = self.cfg.input_topic.clone();
        let topic_c = std::ffi::CString::new(topic.clone())
            .context("kafka.input_topic contains a NUL byte")?;
        while !cancel.is_cancelled() {
            {
                let mut h = held.lock().unwrap_or_else(|p| p.into_inner());
                hand_on(&pipeline, &mut h.tweets)?;
                self.retry_dead_letters(&mut h.dead_letters);
                if consumer.context().reassigned.swap(false, Ordering::Relaxed) {
                    paused.clear();
                }
                let want = wanted_paused(&consumer, &h)?;
                if want != paused {
                    set_paused(&consumer, &topic, &paused, &want)?;
                    paused = want;
                    telemetry::ConsumerPaused {
                        partitions: paused.len(),
                    }
                    .emit();
                }
            }
            let wait = if paused.is_empty() { 100 } else { 10 };
            let (chunk, error) = poll_chunk(
                &consumer,
                Duration::from_millis(wait),
                CHUNK_MESSAGES,
                || consumer.context().take_revoked(),
            );
            if let Some(e) = &error {
                tracing::warn!(error = %e, "consumer error");
            }
            if error.is_none() || !chunk.is_empty() {
                self.health.consuming.store(true, Ordering::Relaxed);
            }
            if !chunk.is_empty() {
                let received = Instant::now();
                let times: Vec<(Option<i64>, DateTime<Utc>)> =
                    chunk.iter().map(message_time).collect();
                let inputs: Vec<Input<'_>> = chunk
                    .iter()
                    .zip(&times)
                    .map(|(m, (_, fallback))| (m.payload(), *fallback))
                    .collect();
                let decoded = decode_chunk(&inputs, &self.rules, self.decode_threads);
                for ((msg, decoded), time) in chunk.iter().zip(decoded).zip(times) {
                    self.handle(msg, decoded, time, received, &held, &mut round);
                }
            }
            if last_commit.elapsed() >= commit_every {
                commit(
                    &consumer,
                    &topic,
                    &self.tracker.to_commit(),
                    CommitMode::Async,
                );
                round.in_flight = self.tracker.in_flight(None);
                self.health
                    .observe_pipeline(round.in_flight, self.tracker.finished());
                round.lag = lag(&consumer, &topic_c, &self.tracker);
                round.emit();
                last_commit = Instant::now();
            }
        }
        // Draining from here on: not ready (the endpoints keep answering until the end).
        self.health.consuming.store(false, Ordering::Relaxed);
        round.emit();
        {
            let mut h = held.lock().unwrap_or_else(|p| p.into_inner());
            for w in h.tweets.drain(..) {
                self.tracker.untrack(w.ack);
            }
            for d in h.dead_letters.drain(..) {
                self.tracker.untrack(d.ack);
            }
        }
        drop(pipeline);
        let drained = self.tracker.wait_drained(None, self.drain_timeout);
        // Every position, not only those that moved: an earlier async commit may have failed.
        let positions = self.tracker.positions(&self.tracker.partitions());
        let mut committed = commit(&consumer, &topic, &positions, CommitMode::Sync);
        let deadline = Instant::now() + self.drain_timeout;
        while !committed && Instant::now() < deadline {
            // Refused, typically because the group is rebalancing (another replica stopped at
            // the same moment). Take part in the rebalance, then commit the same positions
            // under the new generation. Messages polled meanwhile are not taken in: they lie
            // beyond these positions, so their next owner reads them.
            let _ = consumer.poll(Duration::from_millis(200));
            committed = commit(&consumer, &topic, &positions, CommitMode::Sync);
        }
        consumer.unsubscribe();
        if !committed {
            anyhow::bail!(
                "the final offset commit failed (positions {positions:?}); the next owner of these partitions reads their finished messages again"
            );
        }
        tracing::info!(
            drained,
            ?positions,
            "consumer stopped; final offsets committed"
        );
        Ok(())
    }

    /// Sends held dead letters, oldest first, while the dead-letter producer has room.
    fn retry_dead_letters(&self, held: &mut VecDeque<DeadLetter>) {
        while let Some(dl) = held.pop_front() {
            if let Some(dl) = self.dlq.try_spawn_send(&self.runtime, dl) {
                held.push_front(dl);
                break;
            }
        }
    }

    fn handle(
        &self,
        msg: &BorrowedMessage<'_>,
        decoded: Decoded,
        (source_timestamp_ms, fallback): (Option<i64>, DateTime<Utc>),
        received: Instant,
        held: &Mutex<Held>,
        round: &mut PollRound,
    ) {
        round.consumed += 1;
        let (partition, offset) = (msg.partition(), msg.offset());
        let ack = self.tracker.track(partition, offset);
        match decoded {
            // Handed on at the top of the next poll round, in arrival order (see `hand_on`).
            Decoded::Tweet(tweet) => held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .tweets
                .push_back(Work {
                    tweet,
                    delete: false,
                    ack,
                    source_timestamp_ms,
                    received,
                }),
            // Through the same queue and sinks as tweets, so it is ordered after any earlier
            // copy of its tweet on this partition and acknowledged only once applied.
            Decoded::Delete(id) => held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .tweets
                .push_back(Work {
                    tweet: Tweet {
                        id,
                        text: String::new(),
                        created_at: fallback,
                        lang: "und".into(),
                    },
                    delete: true,
                    ack,
                    source_timestamp_ms,
                    received,
                }),
            Decoded::Skip(reason) => {
                match reason {
                    SkipReason::Control => round.skipped_control += 1,
                    SkipReason::Language => round.skipped_language += 1,
                    SkipReason::OffTopic => round.skipped_off_topic += 1,
                }
                self.tracker.done(ack);
            }
            Decoded::Reject { reason, detail } => {
                round.dead_letter(reason.as_str());
                // The original bytes, except for oversized messages: those are cut to the cap
                // (the dead-letter topic's broker limit is usually no larger than the input's,
                // and an unwritable dead letter would block the partition for ever).
                let payload = msg.payload().unwrap_or_default();
                let cap = self.rules.max_message_bytes;
                let (kept, original_bytes) = if payload.len() > cap {
                    (&payload[..cap], Some(payload.len()))
                } else {
                    (payload, None)
                };
                let dl = DeadLetter {
                    payload: kept.to_vec(),
                    original_bytes,
                    key: msg.key().map(<[u8]>::to_vec),
                    reason: reason.as_str(),
                    detail,
                    source: format!("{}/{}/{}", msg.topic(), partition, offset),
                    ack,
                };
                // Behind earlier held ones (order), or held when the producer is full: the
                // partition is paused rather than the consumer thread blocked.
                let mut h = held.lock().unwrap_or_else(|p| p.into_inner());
                if !h.dead_letters.is_empty() {
                    h.dead_letters.push_back(dl);
                } else if let Some(dl) = self.dlq.try_spawn_send(&self.runtime, dl) {
                    h.dead_letters.push_back(dl);
                }
            }
        }
    }
}

/// Most messages polled and decoded together: ~1 MB of 4-KB firehose payloads.
pub const CHUNK_MESSAGES: usize = 256;

/// Waits up to `wait` for one message, then takes what the client already holds, up to `max`,
/// without waiting: a quiet stream gets chunks of one, a backlog or a firehose full ones, and
/// nothing waits for a chunk to fill. `revoked` is asked after every poll (rebalance callbacks
/// run inside it): the chunk's earlier messages of partitions revoked meanwhile are dropped —
/// never tracked, they are read again by the partitions' next owner from the offsets the
/// revocation committed. A consumer error ends the chunk and is returned beside it.
pub fn poll_chunk<'c, C: ConsumerContext>(
    consumer: &'c BaseConsumer<C>,
    wait: Duration,
    max: usize,
    mut revoked: impl FnMut() -> Vec<Partition>,
) -> (Vec<BorrowedMessage<'c>>, Option<KafkaError>) {
    let mut chunk = Vec::new();
    let mut timeout = wait;
    while chunk.len() < max {
        let polled = consumer.poll(timeout);
        timeout = Duration::ZERO;
        let gone = revoked();
        if !gone.is_empty() {
            chunk.retain(|m: &BorrowedMessage<'c>| !gone.contains(&m.partition()));
        }
        match polled {
            Some(Ok(m)) => chunk.push(m),
            Some(Err(e)) => return (chunk, Some(e)),
            None => break,
        }
    }
    (chunk, None)
}

/// A message's Kafka timestamp, and the time that stands in for a missing `created_at`.
fn message_time(msg: &BorrowedMessage<'_>) -> (Option<i64>, DateTime<Utc>) {
    let ms = msg.timestamp().to_millis();
    let fallback = ms
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or_else(Utc::now);
    (ms, fallback)
}

/// Partitions that must not be fetched from: all of them while tweets wait for pipeline room,
/// else those whose dead letters wait for the dead-letter producer.
fn wanted_paused(consumer: &BaseConsumer<Ctx>, held: &Held) -> anyhow::Result<BTreeSet<Partition>> {
    use anyhow::Context as _;
    if !held.tweets.is_empty() {
        let assignment = consumer
            .assignment()
            .context("cannot read the assignment")?;
        return Ok(assignment
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect());
    }
    Ok(held.dead_letters.iter().map(|d| d.ack.partition).collect())
}

fn set_paused(
    consumer: &BaseConsumer<Ctx>,
    topic: &str,
    now: &BTreeSet<Partition>,
    want: &BTreeSet<Partition>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let list = |parts: &mut dyn Iterator<Item = &Partition>| {
        let mut tpl = TopicPartitionList::new();
        for p in parts {
            tpl.add_partition(topic, *p);
        }
        tpl
    };
    let resume = list(&mut now.difference(want));
    if resume.count() > 0 {
        consumer.resume(&resume).context("cannot resume")?;
    }
    let pause = list(&mut want.difference(now));
    if pause.count() > 0 {
        consumer.pause(&pause).context("cannot pause")?;
    }
    Ok(())
}

/// The high watermark of `partition` as last seen by the client's fetcher (librdkafka
/// `rd_kafka_get_watermark_offsets`: a local read, no broker round trip, so the poll loop never
/// waits on it); `None` until the first fetch response.
fn cached_high_watermark(
    consumer: &BaseConsumer<Ctx>,
    topic: &std::ffi::CStr,
    partition: Partition,
) -> Option<i64> {
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while `consumer` lives; the out-pointers are ours.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

/// Messages behind the commit position, per owned partition.
fn lag(
    consumer: &BaseConsumer<Ctx>,
    topic: &std::ffi::CStr,
    tracker: &OffsetTracker,
) -> Vec<(Partition, i64)> {
    tracker
        .positions(&tracker.partitions())
        .into_iter()
        .filter_map(|(p, pos)| {
            let high = cached_high_watermark(consumer, topic, p)?;
            Some((p, (high - pos).max(0)))
        })
        .collect()
}

/// Moves held tweets into the pipeline, oldest first, until it is full.
fn hand_on(pipeline: &Sender<Work>, held: &mut VecDeque<Work>) -> anyhow::Result<()> {
    while let Some(w) = held.pop_front() {
        match pipeline.try_send(w) {
            Ok(()) => {}
            Err(TrySendError::Full(w)) => {
                held.push_front(w);
                break;
            }
            Err(TrySendError::Disconnected(_)) => anyhow::bail!("pipeline stopped unexpectedly"),
        }
    }
    Ok(())
}
