//! The ClickHouse result sink with group commit. Guarantee: a batch's `store` returns only once
//! the insert that holds it (and its deletes) is stored; within one group, tweets go in before
//! deletes, so a tweet and its delete in the same group end deleted.

use std::time::{Duration, Instant};

use super::schema::{IngestRow, INGEST};
use super::{combined_token, ClickHouseSink};
use crate::sink::SinkError;
use crate::telemetry;
use crate::work::ClassifiedBatch;

/// A champion batch waiting for the grouped insert, and who to tell when it is stored.
struct Pending {
    /// [`ClassifiedBatch::approx_bytes`] of the batch.
    bytes: usize,
    deleted: Vec<String>,
    rows: Vec<IngestRow>,
    token: String,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// The ClickHouse result sink with group commit: batches stored within `linger` of each other
/// (up to `full_rows` rows) go out as one insert. An insert costs ClickHouse about the same for
/// 3 rows as for 300 (a part in each table the views fill), and under a light load the batcher
/// closes many small batches; the output topic is not held back by this (the ack stage writes
/// batches side by side), only the acknowledgement waits.
pub struct GroupedClickHouse {
    tx: tokio::sync::mpsc::Sender<Pending>,
}

impl GroupedClickHouse {
    /// Starts the writer task on the current runtime.
    pub fn start(
        sink: ClickHouseSink,
        linger: Duration,
        full_rows: usize,
        full_bytes: usize,
    ) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel::<Pending>(256);
        tokio::spawn(group_writer(sink, rx, linger, full_rows, full_bytes));
        GroupedClickHouse { tx }
    }
}

async fn group_writer(
    sink: ClickHouseSink,
    mut rx: tokio::sync::mpsc::Receiver<Pending>,
    linger: Duration,
    full_rows: usize,
    full_bytes: usize,
) {
    let mut group: Vec<Pending> = Vec::new();
    while rx.recv_many(&mut group, 256).await > 0 {
        let until = tokio::time::Instant::now() + linger;
        // Deletes count like rows: a burst of delete notices fills a group as tweets do; long
        // texts fill it by bytes.
        let full = |g: &[Pending]| {
            g.iter()
                .map(|p| p.rows.len() + p.deleted.len())
                .sum::<usize>()
                >= full_rows
                || g.iter().map(|p| p.bytes).sum::<usize>() >= full_bytes
        };
        while !full(&group) {
            match tokio::time::timeout_at(until, rx.recv_many(&mut group, 256)).await {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        let started = Instant::now();
        let token = combined_token(group.iter().map(|p| p.token.as_str()));
        let mut rows: Vec<IngestRow> = Vec::with_capacity(group.iter().map(|p| p.rows.len()).sum());
        let mut deleted = Vec::new();
        let mut waiting = Vec::with_capacity(group.len());
        for p in group.drain(..) {
            rows.extend(p.rows);
            deleted.extend(p.deleted);
            waiting.push(p.done);
        }
        // Tweets first, then deletes: a tweet and its delete in the same group end deleted.
        let mut result = Ok(());
        let stored = rows.len();
        if !rows.is_empty() {
            result = sink.store_rows(INGEST, rows, &token, true).await;
        }
        if result.is_ok() {
            result = sink.delete_tweets(&deleted).await;
        }
        let result = result.map_err(|e| e.to_string());
        if result.is_ok() {
            telemetry::BatchStored {
                sink: "clickhouse",
                rows: stored,
                seconds: started.elapsed().as_secs_f64(),
            }
            .emit();
        }
        for w in waiting {
            let _ = w.send(result.clone());
        }
    }
}

impl crate::sink::ResultSink for GroupedClickHouse {
    fn name(&self) -> &'static str {
        "clickhouse"
    }
    fn store<'a>(
        &'a self,
        batch: &'a ClassifiedBatch,
    ) -> futures::future::BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if batch.rows.is_empty() && batch.deleted.is_empty() {
                return Ok(());
            }
            let (done, result) = tokio::sync::oneshot::channel();
            let pending = Pending {
                bytes: batch.approx_bytes(),
                deleted: batch.deleted.clone(),
                rows: ClickHouseSink::ingest_rows([batch]),
                token: batch.dedup_token(),
                done,
            };
            let gone = || SinkError::Stopped("the ClickHouse writer stopped".into());
            self.tx.send(pending).await.map_err(|_| gone())?;
            result
                .await
                .map_err(|_| gone())?
                .map_err(SinkError::Stopped)
        })
    }
}
