//! The tokenizer pool and the batcher thread: tweets are encoded in chunks with the champion's
//! tokenizer (switched by the model thread together with the champion), then grouped by the
//! pure [`Batcher`] into batches of similar lengths.
//!
//! Guarantees: exactly one batch waits while the model runs the current one (the channel to the
//! model thread has capacity 1), and it is chosen when that room opens, from all that waits
//! then; at the end of input every waiting tweet is flushed in a batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use crossbeam_channel::{Receiver, Select, Sender};

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

/// Groups encoded tweets into batches. A batch is chosen only when the model stage can take
/// it (the channel has room), from everything that waits then — not when it falls due and then
/// held while the model runs, which would leave out what arrived meanwhile. A full batch goes
/// as soon as there is room. With `idle` (`batch.dispatch_when_idle`), whatever waits goes the
/// moment the model thread waits for work and no batch is queued — so a batch holds what
/// arrived while the model ran the previous one, larger under load, smaller when quiet — and
/// the clock plays no part; without it, a batch is due when its oldest tweet has waited
/// `max_wait`. The window is bounded (eight full batches): past it, input waits in the
/// tokenizers' channel.
pub(super) fn batcher_stage(
    limits: Limits,
    idle: Option<ModelIdle>,
    rx: Receiver<Vec<Encoded>>,
    tx: Sender<Vec<Encoded>>,
) -> anyhow::Result<()> {
    let mut batcher = Batcher::new(limits);
    let never = crossbeam_channel::never();
    let wake = idle.as_ref().map_or(&never, |i| &i.wake_rx);
    // A full window is a full batch, so it is always due: the loop below never waits on nothing.
    let window = 8 * limits.max_batch_size.max(1);
    loop {
        // Take whatever is already there before deciding: a backlog fills batches.
        while batcher.len() < window {
            match rx.try_recv() {
                Ok(items) => push_all(&mut batcher, items.into_iter()),
                Err(_) => break,
            }
        }
        let now = Instant::now();
        let due = match &idle {
            Some(i) => {
                batcher.is_full() || (i.is_waiting() && tx.is_empty() && !batcher.is_empty())
            }
            None => batcher.is_due(now),
        };
        let mut sel = Select::new();
        let recv_op = (batcher.len() < window).then(|| sel.recv(&rx));
        let wake_op = idle.as_ref().map(|_| sel.recv(wake));
        let send_op = due.then(|| sel.send(&tx));
        let deadline = match (&idle, due) {
            (None, false) => batcher.deadline(),
            _ => None,
        };
        let oper = match deadline {
            Some(d) => match sel.select_deadline(d) {
                Ok(oper) => oper,
                Err(_) => continue,
            },
            None => sel.select(),
        };
        let index = oper.index();
        if Some(index) == recv_op {
            match oper.recv(&rx) {
                Ok(items) => push_all(&mut batcher, items.into_iter()),
                Err(_) => {
                    for b in batcher.flush() {
                        if tx.send(b).is_err() {
                            break;
                        }
                    }
                    return Ok(());
                }
            }
        } else if Some(index) == wake_op {
            let _ = oper.recv(wake);
        } else if Some(index) == send_op {
            // Chosen now that the model stage can take it. Never empty: what was due stays due
            // (nothing was taken since, and a due batch stays due as time passes).
            let batch = match &idle {
                Some(i) => {
                    // The model will take it: until it says it waits again, it is busy. Said
                    // before the send so that its next `waiting` cannot come first.
                    i.busy();
                    batcher.next_full().or_else(|| batcher.next_batch_now())
                }
                None => batcher.next_batch(Instant::now()),
            }
            .unwrap_or_default();
            if oper.send(&tx, batch).is_err() {
                return Ok(());
            }
        }
    }
}
