//! The tokenizer pool and the batcher thread: tweets are encoded in chunks with the champion's
//! tokenizer (switched by the model thread together with the champion), then grouped by the
//! pure [`Batcher`] into batches of similar lengths.
//!
//! Guarantee: exactly one batch waits while the model runs the current one (the channel to the
//! model thread has capacity 1); at the end of input every waiting tweet is flushed in a batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::inference::Encoded;
use crate::batch::{Batcher, Limits};
use crate::model::tokenizer::TweetTokenizer;
use crate::work::Work;

/// Tweets per `encode_batch` call: large enough to amortise its parallel dispatch, small enough
/// that the batcher sees a steady stream rather than bursts.
pub(super) const TOKENIZER_CHUNK: usize = 128;

/// The tokenizer the pool uses: the champion's, switched by the model thread with the champion.
pub(super) type SharedTokenizer = Arc<RwLock<(Arc<str>, Arc<TweetTokenizer>)>>;

pub(super) fn tokenizer_stage(
    tok: SharedTokenizer,
    rx: Receiver<Work>,
    tx: Sender<Vec<Encoded>>,
) -> anyhow::Result<()> {
    while let Ok(first) = rx.recv() {
        let mut works = vec![first];
        while works.len() < TOKENIZER_CHUNK {
            match rx.try_recv() {
                Ok(w) => works.push(w),
                Err(_) => break,
            }
        }
        let (hash, tokenizer) = tok.read().unwrap_or_else(PoisonError::into_inner).clone();
        let texts: Vec<&str> = works
            .iter()
            .filter(|w| !w.delete)
            .map(|w| w.tweet.text.as_str())
            .collect();
        let mut encoded = tokenizer.encode_batch(&texts)?.into_iter();
        // Delete notices carry no text: no ids, and no room taken in a batch's token budget.
        let ids: Vec<Vec<u32>> = works
            .iter()
            .map(|w| {
                if w.delete {
                    Vec::new()
                } else {
                    encoded.next().unwrap_or_default()
                }
            })
            .collect();
        let encoded = works
            .into_iter()
            .zip(ids)
            .map(|(work, ids)| Encoded {
                work,
                ids,
                tokenizer: hash.clone(),
            })
            .collect();
        if tx.send(encoded).is_err() {
            break;
        }
    }
    Ok(())
}

pub(super) fn push_all(batcher: &mut Batcher<Encoded>, items: impl Iterator<Item = Encoded>) {
    let now = Instant::now();
    for e in items {
        let len = e.ids.len();
        batcher.push(e, len, now);
    }
}

/// Whether the model thread waits for a batch, and a wake-up when it starts waiting: what
/// lets the batcher close a batch the moment the model can take it (`batch.dispatch_when_idle`).
#[derive(Clone)]
pub(super) struct ModelIdle {
    waiting: Arc<AtomicBool>,
    wake_tx: Sender<()>,
    wake_rx: Receiver<()>,
}

impl ModelIdle {
    pub(super) fn new() -> Self {
        let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
        ModelIdle {
            waiting: Arc::new(AtomicBool::new(false)),
            wake_tx,
            wake_rx,
        }
    }

    /// The model thread is about to wait for a batch.
    pub(super) fn waiting(&self) {
        self.waiting.store(true, Ordering::Release);
        let _ = self.wake_tx.try_send(());
    }

    /// The model thread took something to do.
    pub(super) fn busy(&self) {
        self.waiting.store(false, Ordering::Release);
    }

    fn is_waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire)
    }
}

/// Groups encoded tweets into batches. A full batch is sent at once (it waits in the channel
/// while the model runs the current one). With `idle` (`batch.dispatch_when_idle`), whatever
/// waits is sent the moment the model thread waits for work and no batch is queued — so a
/// batch holds what arrived while the model ran the previous one, larger under load, smaller
/// when quiet — and the clock plays no part; without it, a batch also closes when its oldest
/// tweet has waited `max_wait`.
pub(super) fn batcher_stage(
    limits: Limits,
    idle: Option<ModelIdle>,
    rx: Receiver<Vec<Encoded>>,
    tx: Sender<Vec<Encoded>>,
) -> anyhow::Result<()> {
    let mut batcher = Batcher::new(limits);
    let never = crossbeam_channel::never();
    let wake = idle.as_ref().map_or(&never, |i| &i.wake_rx);
    loop {
        let now = Instant::now();
        let deadline = if idle.is_some() {
            None
        } else {
            batcher.deadline()
        };
        let timeout = deadline.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(now)
        });
        let input = crossbeam_channel::select! {
            recv(rx) -> m => m.map_err(|_| RecvTimeoutError::Disconnected),
            recv(wake) -> _ => Err(RecvTimeoutError::Timeout),
            default(timeout) => Err(RecvTimeoutError::Timeout),
        };
        match input {
            Ok(items) => {
                // Take whatever else is already there before deciding: a backlog fills batches.
                push_all(
                    &mut batcher,
                    items.into_iter().chain(rx.try_iter().flatten()),
                );
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                for b in batcher.flush() {
                    if tx.send(b).is_err() {
                        break;
                    }
                }
                return Ok(());
            }
        }
        loop {
            let b = match &idle {
                // Full batches, and whatever waits when the model waits with nothing queued.
                Some(i) => batcher.next_full().or_else(|| {
                    (i.is_waiting() && tx.is_empty())
                        .then(|| batcher.next_batch_now())
                        .flatten()
                }),
                None => batcher.next_batch(Instant::now()),
            };
            let Some(b) = b else { break };
            if let Some(i) = &idle {
                // The model will take it: until it says it waits again, it is busy.
                i.busy();
            }
            if tx.send(b).is_err() {
                return Ok(());
            }
            // Top the window up before choosing the next batch: under a backlog the send above
            // waited for the model, and a window drained to one batch leaves no lengths to pick.
            push_all(&mut batcher, rx.try_iter().flatten());
        }
    }
}
