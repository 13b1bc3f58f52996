//! The tokenizer pool and the batcher thread: tweets are encoded in chunks with the champion's
//! tokenizer (switched by the model thread together with the champion), then grouped by the
//! pure [`Batcher`] into batches of similar lengths.
//!
//! Guarantee: exactly one batch waits while the model runs the current one (the channel to the
//! model thread has capacity 1); at the end of input every waiting tweet is flushed in a batch.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

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

pub(super) fn batcher_stage(
    limits: Limits,
    rx: Receiver<Vec<Encoded>>,
    tx: Sender<Vec<Encoded>>,
) -> anyhow::Result<()> {
    let mut batcher = Batcher::new(limits);
    loop {
        let now = Instant::now();
        let input = match batcher.deadline() {
            Some(d) => rx.recv_timeout(d.saturating_duration_since(now)),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
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
        while let Some(b) = batcher.next_batch(Instant::now()) {
            if tx.send(b).is_err() {
                return Ok(());
            }
            // Top the window up before choosing the next batch: under a backlog the send above
            // waited for the model, and a window drained to one batch leaves no lengths to pick.
            push_all(&mut batcher, rx.try_iter().flatten());
        }
    }
}
