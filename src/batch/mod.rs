//! The micro-batcher: groups tokenised items into batches by count, padded-token budget and
//! waiting time, optionally by similar length. It knows nothing of the model, and takes the clock
//! as an argument so tests drive time by hand.
//!
//! Guarantees: a batch is sent as soon as it is full (no waiting when there is a backlog); no item
//! waits longer than `max_wait` once it is the oldest; every batch holds at least one item, so an
//! item longer than the token budget still leaves (alone). [`Batcher::next_batch_now`] closes a
//! batch at once, for a caller that knows the model is idle. How a batch is cut into forwards
//! is the model stage's business ([`cost`]): the batcher's batches are units of work downstream.

pub mod cost;
pub mod offsets;

use std::time::{Duration, Instant};

/// Limits that close a batch.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_batch_size: usize,
    /// Padded tokens: longest row × rows.
    pub max_batch_tokens: usize,
    pub max_wait: Duration,
    pub length_bucketing: bool,
}

impl From<&crate::config::BatchConfig> for Limits {
    fn from(c: &crate::config::BatchConfig) -> Self {
        Limits {
            max_batch_size: c.max_batch_size,
            max_batch_tokens: c.max_batch_tokens,
            max_wait: Duration::from_millis(c.max_wait_ms),
            length_bucketing: c.length_bucketing,
        }
    }
}

struct Waiting<T> {
    len: usize,
    arrived: Instant,
    seq: u64,
    item: T,
}

/// Items waiting to be batched.
pub struct Batcher<T> {
    limits: Limits,
    waiting: Vec<Waiting<T>>,
    seq: u64,
}

impl<T> Batcher<T> {
    pub fn new(limits: Limits) -> Self {
        Batcher {
            limits,
            waiting: Vec::new(),
            seq: 0,
        }
    }

    /// Whether [`Self::next_batch`] returns a batch at `now` (or at any later time, with no
    /// item taken in between).
    pub fn is_due(&self, now: Instant) -> bool {
        self.due(now).is_some()
    }

    /// The oldest item and whether its wait ran out, when a batch is due.
    fn due(&self, now: Instant) -> Option<(usize, bool)> {
        let oldest = (0..self.waiting.len()).min_by_key(|&i| self.waiting[i].seq)?;
        let expired = now >= self.waiting[oldest].arrived + self.limits.max_wait;
        (expired || self.is_full()).then_some((oldest, expired))
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Adds an item of `len` tokens that arrived at `now`.
    pub fn push(&mut self, item: T, len: usize, now: Instant) {
        self.seq += 1;
        self.waiting.push(Waiting {
            len: len.max(1),
            arrived: now,
            seq: self.seq,
            item,
        });
    }

    /// When the oldest waiting item's wait runs out (the next time `next_batch` may return a
    /// batch without new input).
    pub fn deadline(&self) -> Option<Instant> {
        self.waiting
            .iter()
            .map(|w| w.arrived)
            .min()
            .map(|t| t + self.limits.max_wait)
    }

    /// Whether the waiting items make at least one full batch (count or token budget).
    pub fn is_full(&self) -> bool {
        let all_longest = self.waiting.iter().map(|w| w.len).max().unwrap_or(1);
        !self.fits(self.waiting.len(), all_longest)
            || self.waiting.len() >= self.limits.max_batch_size
    }

    fn fits(&self, rows: usize, longest: usize) -> bool {
        rows <= self.limits.max_batch_size && rows * longest <= self.limits.max_batch_tokens
    }

    /// A batch that should be sent now, if any: an expired oldest item's batch first, then a full
    /// batch.
    pub fn next_batch(&mut self, now: Instant) -> Option<Vec<T>> {
        let (oldest, expired) = self.due(now)?;
        let picked = if !self.limits.length_bucketing {
            self.fifo()
        } else if expired {
            self.around(oldest)
        } else {
            self.tightest_full()
        };
        Some(self.take(picked))
    }

    /// A full batch (count or token budget), if the waiting items make one; never a batch
    /// only because its wait ran out.
    pub fn next_full(&mut self) -> Option<Vec<T>> {
        if !self.is_full() {
            return None;
        }
        let picked = if self.limits.length_bucketing {
            self.tightest_full()
        } else {
            self.fifo()
        };
        Some(self.take(picked))
    }

    /// A batch to send now whatever the clock says (the model is idle): what [`Self::next_batch`]
    /// sends once the oldest item's wait ran out — that item and its nearest neighbours in
    /// length (or the oldest items in arrival order without bucketing), as many as fit.
    pub fn next_batch_now(&mut self) -> Option<Vec<T>> {
        let oldest = (0..self.waiting.len()).min_by_key(|&i| self.waiting[i].seq)?;
        // As if the oldest item's wait had run out.
        let expiry = self.waiting[oldest].arrived + self.limits.max_wait;
        self.next_batch(expiry)
    }

    /// Everything still waiting, as batches (used at shutdown).
    pub fn flush(&mut self) -> Vec<Vec<T>> {
        let mut out = Vec::new();
        while !self.waiting.is_empty() {
            let picked = self.fifo();
            out.push(self.take(picked));
        }
        out
    }

    fn take(&mut self, mut idx: Vec<usize>) -> Vec<T> {
        idx.sort_unstable_by(|a, b| b.cmp(a));
        let mut out: Vec<Waiting<T>> = idx
            .into_iter()
            .map(|i| self.waiting.swap_remove(i))
            .collect();
        out.sort_unstable_by_key(|w| w.seq);
        out.into_iter().map(|w| w.item).collect()
    }

    /// In arrival order, as many as fit.
    fn fifo(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.waiting.len()).collect();
        order.sort_unstable_by_key(|&i| self.waiting[i].seq);
        let mut longest = 0;
        let mut picked = Vec::new();
        for i in order {
            let l = longest.max(self.waiting[i].len);
            if !picked.is_empty() && !self.fits(picked.len() + 1, l) {
                break;
            }
            longest = l;
            picked.push(i);
        }
        picked
    }

    fn by_length(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.waiting.len()).collect();
        order.sort_unstable_by_key(|&i| (self.waiting[i].len, self.waiting[i].seq));
        order
    }

    /// The expired item plus its nearest neighbours in length, as many as fit.
    fn around(&self, anchor: usize) -> Vec<usize> {
        let order = self.by_length();
        let pos = order
            .iter()
            .position(|&i| i == anchor)
            .expect("anchor is waiting; this is a bug");
        let (mut lo, mut hi) = (pos, pos + 1);
        let mut longest = self.waiting[anchor].len;
        loop {
            let len_of = |k: usize| self.waiting[order[k]].len;
            let left = (lo > 0).then(|| len_of(lo - 1));
            let right = (hi < order.len()).then(|| len_of(hi));
            let anchor_len = self.waiting[anchor].len;
            let go_left = match (left, right) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some(l), Some(r)) => anchor_len - l <= r - anchor_len,
            };
            let l = if go_left {
                longest
            } else {
                longest.max(len_of(hi))
            };
            if !self.fits(hi - lo + 1, l) {
                break;
            }
            longest = l;
            if go_left {
                lo -= 1;
            } else {
                hi += 1;
            }
        }
        order[lo..hi].to_vec()
    }

    /// Among full windows of similar length, the one with the least padding.
    fn tightest_full(&self) -> Vec<usize> {
        let order = self.by_length();
        let lens: Vec<usize> = order.iter().map(|&i| self.waiting[i].len).collect();
        let mut best: Option<(usize, usize, f64)> = None;
        let mut start = 0;
        while start < lens.len() {
            let mut end = start + 1;
            let mut real = lens[start];
            while end < lens.len() && self.fits(end - start + 1, lens[end]) {
                real += lens[end];
                end += 1;
            }
            let rows = end - start;
            let is_full = end < lens.len() || rows == self.limits.max_batch_size;
            let waste = 1.0 - real as f64 / (rows * lens[end - 1]) as f64;
            // A fuller batch wins over a tighter but smaller one: padding matters per token
            // computed, and tiny batches waste more than a few pad tokens.
            let score = waste + 0.5 * (1.0 - rows as f64 / self.limits.max_batch_size as f64);
            if is_full && best.is_none_or(|b| score < b.2) {
                best = Some((start, end, score));
            }
            // Windows starting inside this one are smaller or equal; skipping half keeps it linear-ish.
            start += (rows / 2).max(1);
        }
        let (s, e, _) = best.unwrap_or((0, lens.len(), 0.0));
        order[s..e].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_closed_at_once_when_asked_whatever_the_clock() {
        let t0 = Instant::now();
        let mut b = Batcher::new(Limits {
            max_batch_size: 4,
            max_batch_tokens: 1_000,
            max_wait: Duration::from_secs(3600),
            length_bucketing: true,
        });
        assert_eq!(b.next_batch_now(), None);
        for (i, len) in [10, 50, 11, 12, 49, 13].into_iter().enumerate() {
            b.push(i, len, t0);
        }
        // Six waiting, four fit: a full batch of the tightest lengths goes first.
        assert_eq!(b.next_full(), Some(vec![0, 2, 3, 5]));
        // Two left, long before their wait runs out: only an explicit close sends them.
        assert_eq!(b.next_full(), None);
        assert_eq!(b.next_batch(t0), None);
        assert_eq!(b.next_batch_now(), Some(vec![1, 4]));
        assert!(b.is_empty());
    }

    fn limits(size: usize, tokens: usize, wait_ms: u64, bucketing: bool) -> Limits {
        Limits {
            max_batch_size: size,
            max_batch_tokens: tokens,
            max_wait: Duration::from_millis(wait_ms),
            length_bucketing: bucketing,
        }
    }

    #[test]
    fn closes_on_size_without_waiting() {
        let t = Instant::now();
        let mut b = Batcher::new(limits(4, 10_000, 50, false));
        for i in 0..3 {
            b.push(i, 10, t);
        }
        assert!(b.next_batch(t).is_none(), "3 of 4: wait");
        b.push(3, 10, t);
        assert_eq!(b.next_batch(t), Some(vec![0, 1, 2, 3]));
        assert!(b.is_empty());
    }

    #[test]
    fn closes_on_timeout_of_the_oldest() {
        let t = Instant::now();
        let mut b = Batcher::new(limits(64, 10_000, 20, true));
        b.push("a", 5, t);
        b.push("b", 5, t + Duration::from_millis(15));
        assert_eq!(b.deadline(), Some(t + Duration::from_millis(20)));
        assert!(b.next_batch(t + Duration::from_millis(19)).is_none());
        assert_eq!(
            b.next_batch(t + Duration::from_millis(20)),
            Some(vec!["a", "b"])
        );
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn closes_on_padded_token_budget() {
        let t = Instant::now();
        let mut b = Batcher::new(limits(64, 100, 1_000, false));
        for (i, len) in [10, 10, 10, 40].into_iter().enumerate() {
            b.push(i, len, t);
        }
        // 4 rows × 40 = 160 > 100: full; FIFO takes the first three (3 × 10 = 30, a 4th would cost 160).
        assert_eq!(b.next_batch(t), Some(vec![0, 1, 2]));
        assert!(b.next_batch(t).is_none());
    }

    #[test]
    fn an_item_longer_than_the_budget_leaves_alone() {
        let t = Instant::now();
        let mut b = Batcher::new(limits(64, 50, 1_000, true));
        b.push("huge", 128, t);
        assert_eq!(b.next_batch(t), Some(vec!["huge"]));
    }

    #[test]
    fn bucketing_groups_similar_lengths() {
        let t = Instant::now();
        let mut b = Batcher::new(limits(4, 10_000, 1_000, true));
        let lens = [5, 60, 6, 61, 5, 62, 7, 60];
        for (i, len) in lens.into_iter().enumerate() {
            b.push(i, len, t);
        }
        let mut first = b.next_batch(t).unwrap();
        first.sort();
        let mut second = b.next_batch(t).unwrap();
        second.sort();
        let mut groups = [first, second];
        groups.sort();
        assert_eq!(groups, [vec![0, 2, 4, 6], vec![1, 3, 5, 7]]);
    }

    #[test]
    fn bucketing_never_starves_an_outlier() {
        let t = Instant::now();
        let mut b = Batcher::new(limits(4, 10_000, 20, true));
        b.push(999, 120, t);
        let mut sent_outlier_at = None;
        for step in 0..40u64 {
            let now = t + Duration::from_millis(step);
            for k in 0..4 {
                b.push(step as usize * 10 + k, 8, now);
            }
            while let Some(batch) = b.next_batch(now) {
                if batch.contains(&999) {
                    sent_outlier_at = Some(step);
                }
            }
        }
        assert_eq!(
            sent_outlier_at,
            Some(20),
            "sent exactly when its wait ran out"
        );
    }

    #[test]
    fn flush_empties_in_arrival_order() {
        let t = Instant::now();
        let mut b = Batcher::new(limits(2, 10_000, 1_000, true));
        for i in 0..5 {
            b.push(i, 3, t);
        }
        assert_eq!(b.flush(), vec![vec![0, 1], vec![2, 3], vec![4]]);
    }
}
