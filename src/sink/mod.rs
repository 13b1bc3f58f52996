//! Where classifications go: the output topic and ClickHouse (results), and the dead-letter topic
//! (undecodable input). A batch's offsets are acknowledged only after both result sinks accepted
//! it; failures retry through the one policy in [`retry_policy`].

pub mod clickhouse;
pub mod kafka;

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::batch::offsets::Ack;
use crate::telemetry::Health;

/// One classified tweet, as published to the output topic (JSON) and stored in ClickHouse.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Classification {
    pub tweet_id: String,
    /// RFC 3339.
    pub created_at: DateTime<Utc>,
    pub lang: String,
    /// The full text classified (before normalisation).
    pub text: String,
    pub label: String,
    /// Label → probability, in the model's label order.
    pub scores: serde_json::Map<String, serde_json::Value>,
    /// `NAME@VERSION` of the model that gave this result.
    pub model_version: String,
    /// Short hash of that version's weights (a re-export under the same version differs here).
    pub model_hash: String,
    /// `champion` (published, counted in the champion series) or `shadow` (compared only).
    pub role: Role,
    /// The deployment (control-topic epoch) the batch was scored under; 0 = the configured
    /// `model.dir` before any deployment was published.
    pub deployment_epoch: u64,
    pub classified_at: DateTime<Utc>,
    /// Where the tweet came from (`partition`, `offset` of the input topic).
    pub source_partition: i32,
    pub source_offset: i64,
    /// The input record's Kafka timestamp (ms); published as the header
    /// `vaxpulse.source_timestamp_ms` so consumers can measure end-to-end latency.
    #[serde(skip)]
    pub source_timestamp_ms: Option<i64>,
}

/// What a version's result is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Champion,
    Shadow,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Champion => "champion",
            Role::Shadow => "shadow",
        }
    }
}

/// Results of one inference batch, with what must be acknowledged once they are stored.
#[derive(Debug)]
pub struct ClassifiedBatch {
    pub rows: Vec<Classification>,
    /// Ids of tweets deleted by delete notices of this batch (their acks are in `acks` too).
    pub deleted: Vec<String>,
    pub acks: Vec<Ack>,
    /// When each row's message was taken from the input topic (same order as `rows`).
    pub received: Vec<std::time::Instant>,
}

impl ClassifiedBatch {
    /// A deterministic token for this batch's content: the same messages classified by the same
    /// model identity (version *and* weights hash) in the same role give the same token, so a
    /// retried insert is deduplicated by ClickHouse, and a re-exported version is not.
    pub fn dedup_token(&self) -> String {
        let mut keys: Vec<(i32, i64)> = self
            .rows
            .iter()
            .map(|r| (r.source_partition, r.source_offset))
            .collect();
        keys.sort_unstable();
        let mut h = Sha256::new();
        if let Some(first) = self.rows.first() {
            h.update(first.model_version.as_bytes());
            h.update(b"#");
            h.update(first.model_hash.as_bytes());
            h.update(first.role.as_str().as_bytes());
        }
        for (p, o) in keys {
            h.update(p.to_le_bytes());
            h.update(o.to_le_bytes());
        }
        format!("{:x}", h.finalize())
    }

    /// Count of tweets per predicted label.
    pub fn label_counts(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = Vec::new();
        for r in &self.rows {
            match out.iter_mut().find(|(l, _)| *l == r.label) {
                Some((_, n)) => *n += 1,
                None => out.push((r.label.clone(), 1)),
            }
        }
        out
    }
}

/// A place every classified batch must reach before its offsets are acknowledged (the output
/// topic, ClickHouse). `store` returns once the batch is stored for good: implementations retry
/// transient failures themselves, through [`retry_until_done`]; an error is final.
pub trait ResultSink: Send + Sync + 'static {
    /// Short name for logs and metric labels.
    fn name(&self) -> &'static str;
    fn store<'a>(&'a self, batch: &'a ClassifiedBatch) -> BoxFuture<'a, Result<(), SinkError>>;
    /// Pushes out anything buffered; called once at shutdown.
    fn flush(&self, _timeout: Duration) {}
}

/// Errors of the sinks; each says whether retrying can help.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] ::clickhouse::error::Error),
    #[error("cannot encode result: {0}")]
    Encode(#[from] serde_json::Error),
    /// A write that failed for good in a task shared by several batches (its cause is logged
    /// there), or that task is gone.
    #[error("{0}")]
    Stopped(String),
    /// The database's schema does not match the configuration.
    #[error("schema: {0}")]
    Schema(String),
}

impl SinkError {
    pub fn is_retriable(&self) -> bool {
        use ::clickhouse::error::Error as Ch;
        match self {
            SinkError::Kafka(e) => !matches!(
                e.rdkafka_error_code(),
                Some(
                    rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge
                        | rdkafka::types::RDKafkaErrorCode::InvalidMessageSize
                        | rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed
                        | rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition
                )
            ),
            SinkError::ClickHouse(e) => match e {
                Ch::Network(_) | Ch::TimedOut => true,
                // Server errors: 5xx-like conditions come back as BadResponse; schema problems
                // (unknown table/column, type mismatch) do not go away by retrying.
                Ch::BadResponse(msg) => ![
                    "UNKNOWN_TABLE",
                    "NO_SUCH_COLUMN",
                    "TYPE_MISMATCH",
                    "UNKNOWN_DATABASE",
                    "AUTHENTICATION_FAILED",
                    "Code: 516",
                ]
                .iter()
                .any(|k| msg.contains(k)),
                _ => false,
            },
            SinkError::Encode(_) | SinkError::Stopped(_) | SinkError::Schema(_) => false,
        }
    }
}

/// The one retry policy of the worker: exponential with jitter, capped delay, bounded attempts
/// per call (callers that must never drop data loop around it).
pub fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(8)
}

/// Runs `op` through [`retry_policy`] until it succeeds. Failures for which `keep_trying` holds
/// are retried without end (results are never dropped: a long outage holds the batch, and through
/// the bounded queues, consumption); any other failure is returned at once.
/// While it retries, `health` (when given) reports the replica not ready.
pub(crate) async fn retry_until_done<F, Fut>(
    sink: &'static str,
    mut op: F,
    keep_trying: fn(&SinkError) -> bool,
    health: Option<&Health>,
) -> Result<(), SinkError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), SinkError>>,
{
    let mut failing = None;
    loop {
        let res = (&mut op)
            .retry(retry_policy())
            .when(keep_trying)
            .notify(|e, after| {
                if let (Some(h), None) = (health, &failing) {
                    failing = Some(h.write_failing());
                }
                crate::telemetry::SinkRetry {
                    sink,
                    error: e,
                    after_ms: after.as_millis(),
                }
                .emit()
            })
            .await;
        match res {
            Ok(()) => return Ok(()),
            Err(e) if keep_trying(&e) => {
                tracing::error!(sink, error = %e, "sink still failing after a full retry round; retrying");
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::offsets::OffsetTracker;

    fn row(p: i32, o: i64) -> Classification {
        Classification {
            tweet_id: format!("{p}-{o}"),
            created_at: Utc::now(),
            lang: "fr".into(),
            text: "t".into(),
            label: "neutral".into(),
            scores: Default::default(),
            model_version: "demo@1".into(),
            model_hash: "aaaaaaaaaaaa".into(),
            role: Role::Champion,
            deployment_epoch: 0,
            classified_at: Utc::now(),
            source_partition: p,
            source_offset: o,
            source_timestamp_ms: None,
        }
    }

    #[test]
    fn dedup_token_depends_on_content_not_order_or_time() {
        let t = OffsetTracker::new();
        let a = ClassifiedBatch {
            rows: vec![row(0, 1), row(1, 5)],
            deleted: Vec::new(),
            acks: vec![t.track(0, 1)],
            received: vec![],
        };
        let b = ClassifiedBatch {
            rows: vec![row(1, 5), row(0, 1)],
            deleted: Vec::new(),
            acks: vec![],
            received: vec![],
        };
        let c = ClassifiedBatch {
            rows: vec![row(0, 1), row(1, 6)],
            deleted: Vec::new(),
            acks: vec![],
            received: vec![],
        };
        assert_eq!(a.dedup_token(), b.dedup_token());
        assert_ne!(a.dedup_token(), c.dedup_token());
        let mut other_model = b;
        other_model
            .rows
            .iter_mut()
            .for_each(|r| r.model_version = "demo@2".into());
        assert_ne!(a.dedup_token(), other_model.dedup_token());
        let mut reexported = other_model;
        let before = reexported.dedup_token();
        reexported
            .rows
            .iter_mut()
            .for_each(|r| r.model_hash = "bbbbbbbbbbbb".into());
        assert_ne!(
            before,
            reexported.dedup_token(),
            "same version, new weights"
        );
        let as_shadow = before.clone();
        reexported.rows.iter_mut().for_each(|r| {
            r.model_hash = "aaaaaaaaaaaa".into();
            r.role = Role::Shadow;
        });
        assert_ne!(
            as_shadow,
            reexported.dedup_token(),
            "same version, other role"
        );
    }

    #[tokio::test]
    async fn a_failing_write_makes_the_replica_not_ready_until_it_succeeds() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Mutex;
        let health = Health::default();
        health.consuming.store(true, Ordering::Relaxed);
        health.sinks_ok.store(true, Ordering::Relaxed);
        let attempts = AtomicUsize::new(0);
        let ready_at_attempt = Mutex::new(Vec::new());
        retry_until_done(
            "test",
            || async {
                ready_at_attempt.lock().unwrap().push(health.ready());
                if attempts.fetch_add(1, Ordering::Relaxed) < 2 {
                    Err(SinkError::ClickHouse(::clickhouse::error::Error::TimedOut))
                } else {
                    Ok(())
                }
            },
            SinkError::is_retriable,
            Some(&health),
        )
        .await
        .unwrap();
        assert_eq!(*ready_at_attempt.lock().unwrap(), [true, false, false]);
        assert!(health.ready(), "ready again once the write went through");
    }
}
