//! The store-and-acknowledge stage, on the async runtime: each classified batch goes to every
//! result sink concurrently, and only once **all** of them stored it are its offsets acknowledged
//! to the tracker, which then lets the consumer commit them.
//!
//! Writes do not wait for each other: a batch's Kafka write starts as soon as it leaves the model,
//! even while earlier batches wait for ClickHouse's group commit (up to a second). What bounds
//! them is the tweets in flight, counted in rows and in bytes ([`Budget`]); past either, the
//! stage stops taking batches, the sink queue fills and inference waits.
//!
//! Guarantee: an offset is never acknowledged for a batch that some sink did not store; a sink
//! that fails for good marks the replica unhealthy, cancels the worker and acknowledges nothing
//! more (the batch is read again by the next owner).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::batch::offsets::OffsetTracker;
use crate::sink::ResultSink;
use crate::telemetry::{self, Health};
use crate::work::ClassifiedBatch;

/// Most batches merged into one write.
const MERGE_BATCHES: usize = 32;

/// One batch holding the rows and acknowledgements of `batches`, in order.
fn merge(mut batches: Vec<ClassifiedBatch>) -> ClassifiedBatch {
    let mut out = batches.remove(0);
    for b in batches {
        out.rows.extend(b.rows);
        out.deleted.extend(b.deleted);
        out.acks.extend(b.acks);
        out.received.extend(b.received);
    }
    out
}

/// The next write: every batch waiting (they queue up while the sinks are busy; one write of
/// all costs the sinks less than one each).
async fn next_write(
    rx: &mut tokio::sync::mpsc::Receiver<ClassifiedBatch>,
) -> Option<ClassifiedBatch> {
    let mut waiting = Vec::new();
    if rx.recv_many(&mut waiting, MERGE_BATCHES).await == 0 {
        return None;
    }
    Some(merge(waiting))
}

/// A sink that rejected a batch for good.
type Rejected = (&'static str, crate::sink::SinkError);

/// Stores `batch` in every sink; acknowledges its offsets once all stored it. `_permit` (its
/// share of the in-flight budget) is released when this returns.
async fn write(
    batch: ClassifiedBatch,
    sinks: Arc<Vec<Arc<dyn ResultSink>>>,
    tracker: Arc<OffsetTracker>,
    _permit: (OwnedSemaphorePermit, OwnedSemaphorePermit),
) -> Result<(), Rejected> {
    let results = futures::future::join_all(sinks.iter().map(|s| s.store(&batch))).await;
    if let Some(failed) = results
        .into_iter()
        .zip(sinks.iter())
        .find_map(|(r, s)| r.err().map(|e| (s.name(), e)))
    {
        return Err(failed);
    }
    telemetry::BatchAcknowledged {
        model: batch.rows.first().map_or("", |r| r.model_version.as_str()),
        role: crate::work::Role::Champion.as_str(),
        labels: &batch.label_counts(),
        deleted: batch.deleted.len(),
        received: &batch.received,
    }
    .emit();
    for ack in batch.acks {
        tracker.done(ack);
    }
    Ok(())
}

/// How much may be in the sinks at once: tweets, and their bytes
/// ([`ClassifiedBatch::approx_bytes`]). A batch larger than either alone is let through.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub rows: usize,
    pub bytes: usize,
}

/// Bytes are counted in KiB permits (a batch takes at most `u32::MAX` permits at once).
const BYTE_PERMIT: usize = 1024;

/// Runs until `input` closes (the model thread ended) or a sink fails for good, with at most
/// `budget` being stored at once.
pub async fn store_and_ack(
    mut input: tokio::sync::mpsc::Receiver<ClassifiedBatch>,
    sinks: Vec<Arc<dyn ResultSink>>,
    tracker: Arc<OffsetTracker>,
    health: Arc<Health>,
    budget: Budget,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let sinks = Arc::new(sinks);
    let max_rows = budget.rows.clamp(1, u32::MAX as usize);
    let max_kib = (budget.bytes / BYTE_PERMIT).clamp(1, u32::MAX as usize);
    let rows_budget = Arc::new(Semaphore::new(max_rows));
    let bytes_budget = Arc::new(Semaphore::new(max_kib));
    let mut writes: JoinSet<Result<(), Rejected>> = JoinSet::new();
    let fail = |(sink, e): Rejected| {
        health.sinks_ok.store(false, Ordering::Relaxed);
        cancel.cancel();
        anyhow::Error::new(e).context(format!(
            "sink {sink} rejected a batch for good; stopping without committing it"
        ))
    };
    let finished = |r: Result<Result<(), Rejected>, tokio::task::JoinError>| match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(rejected)) => Err(fail(rejected)),
        Err(e) => {
            cancel.cancel();
            Err(anyhow::anyhow!(
                "a sink write panicked ({e}); this is a bug"
            ))
        }
    };
    let mut open = true;
    while open || !writes.is_empty() {
        tokio::select! {
            Some(r) = writes.join_next(), if !writes.is_empty() => finished(r)?,
            batch = next_write(&mut input), if open => {
                let Some(batch) = batch else {
                    open = false;
                    continue;
                };
                let rows = batch.rows.len().clamp(1, max_rows) as u32;
                let kib = (batch.approx_bytes() / BYTE_PERMIT).clamp(1, max_kib) as u32;
                // Wait for room, still reaping (and failing on) finished writes meanwhile.
                let permit = loop {
                    tokio::select! {
                        p = async {
                            let r = rows_budget.clone().acquire_many_owned(rows).await;
                            let b = bytes_budget.clone().acquire_many_owned(kib).await;
                            (r.expect("the budget is never closed"), b.expect("the budget is never closed"))
                        } => break p,
                        Some(r) = writes.join_next() => finished(r)?,
                    }
                };
                writes.spawn(write(batch, sinks.clone(), tracker.clone(), permit));
            }
        }
    }
    for s in sinks.iter() {
        s.flush(Duration::from_secs(10));
    }
    Ok(())
}
