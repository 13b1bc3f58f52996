//! Where classifications go: the output topic and ClickHouse (results), and the dead-letter topic
//! (undecodable input). A batch's offsets are acknowledged only after both result sinks accepted
//! it; failures retry through the one policy in [`retry_policy`].

pub mod clickhouse;
pub mod kafka;

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::future::BoxFuture;

use crate::telemetry::Health;
use crate::work::ClassifiedBatch;

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
                    // A statement the server cannot parse or that exceeds `max_query_size`
                    // fails the same way every time.
                    "SYNTAX_ERROR",
                    "Max query size exceeded",
                    "QUERY_IS_TOO_LARGE",
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
pub(crate) async fn retry_until_done<T, F, Fut>(
    sink: &'static str,
    mut op: F,
    keep_trying: fn(&SinkError) -> bool,
    health: Option<&Health>,
) -> Result<T, SinkError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SinkError>>,
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
            Ok(v) => return Ok(v),
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
