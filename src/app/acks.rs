//! The store-and-acknowledge stage, on the async runtime: each classified batch goes to every
//! result sink concurrently (several batches in flight), and only once **all** of them stored it
//! are its offsets acknowledged to the tracker, which then lets the consumer commit them.
//!
//! Guarantee: an offset is never acknowledged for a batch that some sink did not store; a sink
//! that fails for good marks the replica unhealthy, cancels the worker and acknowledges nothing
//! more (the batch is read again by the next owner).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::batch::offsets::OffsetTracker;
use crate::sink::{ClassifiedBatch, ResultSink};
use crate::telemetry::{self, Health};

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

/// Runs until `input` closes (the model thread ended) or a sink fails for good.
pub async fn store_and_ack(
    input: tokio::sync::mpsc::Receiver<ClassifiedBatch>,
    sinks: Vec<Arc<dyn ResultSink>>,
    tracker: Arc<OffsetTracker>,
    health: Arc<Health>,
    concurrency: usize,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let all = sinks.clone();
    let stream = futures::stream::unfold(input, move |mut rx| async move {
        next_write(&mut rx).await.map(|b| (b, rx))
    });
    let mut stored = std::pin::pin!(stream
        .map(move |batch| {
            let sinks = sinks.clone();
            async move {
                let writes = sinks.iter().map(|s| s.store(&batch));
                let results = futures::future::join_all(writes).await;
                let failed = results
                    .into_iter()
                    .zip(&sinks)
                    .find_map(|(r, s)| r.err().map(|e| (s.name(), e)));
                (batch, failed)
            }
        })
        .buffer_unordered(concurrency.max(1)));
    while let Some((batch, failed)) = stored.next().await {
        if let Some((sink, e)) = failed {
            health.sinks_ok.store(false, Ordering::Relaxed);
            cancel.cancel();
            return Err(anyhow::Error::new(e).context(format!(
                "sink {sink} rejected a batch for good; stopping without committing it"
            )));
        }
        telemetry::BatchAcknowledged {
            model: batch.rows.first().map_or("", |r| r.model_version.as_str()),
            role: crate::sink::Role::Champion.as_str(),
            labels: &batch.label_counts(),
            deleted: batch.deleted.len(),
            received: &batch.received,
        }
        .emit();
        for ack in batch.acks {
            tracker.done(ack);
        }
    }
    for s in &all {
        s.flush(Duration::from_secs(10));
    }
    Ok(())
}
