//! Ordered offset bookkeeping. Guarantee: the position committed for a partition is the lowest
//! offset not yet finished (published and stored, dead-lettered, or deliberately skipped), so
//! work that finishes out of order never makes a commit jump over unfinished messages.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// A partition of the input topic.
pub type Partition = i32;

/// Proof that a message was taken in; hand it back with [`OffsetTracker::done`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub partition: Partition,
    pub offset: i64,
    generation: u64,
}

#[derive(Default)]
struct PartState {
    pending: BTreeSet<i64>,
    /// One past the highest offset taken in.
    next: Option<i64>,
    /// Last position handed out for commit.
    committed: Option<i64>,
    generation: u64,
    /// Being revoked: queued work of this partition is no longer current.
    releasing: bool,
}

impl PartState {
    fn position(&self) -> Option<i64> {
        self.pending.first().copied().or(self.next)
    }
}

/// Tracks in-flight offsets per partition; shared by the consumer thread and the sinks.
#[derive(Default)]
pub struct OffsetTracker {
    parts: Mutex<HashMap<Partition, PartState>>,
    changed: Condvar,
    generations: std::sync::atomic::AtomicU64,
    /// Messages finished so far (any partition): what "the pipeline moves" means.
    finished: std::sync::atomic::AtomicU64,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Partition, PartState>> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts (or restarts, after a re-assignment) tracking `partition`; acks of an earlier
    /// assignment are ignored from now on.
    pub fn assign(&self, partition: Partition) {
        let generation = 1 + self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(
            partition,
            PartState {
                generation,
                ..Default::default()
            },
        );
    }

    /// Marks `partitions` as being revoked: from now on their work counts as not current (see
    /// [`Self::is_current`]), so queued work is dropped instead of computed, while what is
    /// already done can still be acknowledged and committed before they are released.
    pub fn release(&self, partitions: &[Partition]) {
        let mut parts = self.lock();
        for p in partitions {
            if let Some(st) = parts.get_mut(p) {
                st.releasing = true;
            }
        }
    }

    /// Forgets partitions that were revoked.
    pub fn revoke(&self, partitions: &[Partition]) {
        let mut parts = self.lock();
        for p in partitions {
            parts.remove(p);
        }
        self.changed.notify_all();
    }

    /// Records that `offset` was taken in. Untracked partitions are assigned implicitly.
    pub fn track(&self, partition: Partition, offset: i64) -> Ack {
        let needs_assign = !self.lock().contains_key(&partition);
        if needs_assign {
            self.assign(partition);
        }
        let mut parts = self.lock();
        let st = parts
            .get_mut(&partition)
            .expect("assigned above; this is a bug");
        st.pending.insert(offset);
        st.next = Some(st.next.map_or(offset + 1, |n| n.max(offset + 1)));
        Ack {
            partition,
            offset,
            generation: st.generation,
        }
    }

    /// Whether `ack` belongs to the current assignment of its partition (not being revoked, not
    /// revoked, not re-assigned since it was taken in).
    pub fn is_current(&self, ack: &Ack) -> bool {
        self.lock()
            .get(&ack.partition)
            .is_some_and(|st| st.generation == ack.generation && !st.releasing)
    }

    /// Messages finished so far (done, whatever the partition or generation).
    pub fn finished(&self) -> u64 {
        self.finished.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Marks a message finished.
    pub fn done(&self, ack: Ack) {
        self.finished
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut parts = self.lock();
        if let Some(st) = parts.get_mut(&ack.partition) {
            if st.generation == ack.generation {
                st.pending.remove(&ack.offset);
            }
        }
        self.changed.notify_all();
    }

    /// Gives a taken-in message back unfinished (it was never handed on, and the partition is
    /// being released or the worker stops): the commit position stays at or below it, so the
    /// next owner reads it again.
    pub fn untrack(&self, ack: Ack) {
        let mut parts = self.lock();
        if let Some(st) = parts.get_mut(&ack.partition) {
            if st.generation == ack.generation && st.pending.remove(&ack.offset) {
                st.next = Some(st.next.map_or(ack.offset, |n| n.min(ack.offset)));
            }
        }
        self.changed.notify_all();
    }

    /// Positions that moved since the last call (next offset to read, Kafka's commit convention).
    pub fn to_commit(&self) -> Vec<(Partition, i64)> {
        let mut parts = self.lock();
        let mut out = Vec::new();
        for (p, st) in parts.iter_mut() {
            if let Some(pos) = st.position() {
                if st.committed != Some(pos) {
                    st.committed = Some(pos);
                    out.push((*p, pos));
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// A commit of `partitions` failed: their positions count as not committed, so the next
    /// [`Self::to_commit`] sends them again even if nothing moved.
    pub fn commit_failed(&self, partitions: &[Partition]) {
        let mut parts = self.lock();
        for p in partitions {
            if let Some(st) = parts.get_mut(p) {
                st.committed = None;
            }
        }
    }

    /// Partitions currently tracked.
    pub fn partitions(&self) -> Vec<Partition> {
        let mut out: Vec<Partition> = self.lock().keys().copied().collect();
        out.sort_unstable();
        out
    }

    /// Current commit positions of `partitions`, whether or not they moved.
    pub fn positions(&self, partitions: &[Partition]) -> Vec<(Partition, i64)> {
        let parts = self.lock();
        partitions
            .iter()
            .filter_map(|p| {
                parts
                    .get(p)
                    .and_then(|st| st.position().map(|pos| (*p, pos)))
            })
            .collect()
    }

    /// Messages still in flight in `partitions` (all partitions when `None`).
    pub fn in_flight(&self, partitions: Option<&[Partition]>) -> usize {
        let parts = self.lock();
        parts
            .iter()
            .filter(|(p, _)| partitions.is_none_or(|ps| ps.contains(p)))
            .map(|(_, st)| st.pending.len())
            .sum()
    }

    /// Waits until nothing is in flight in `partitions` (all when `None`), at most `timeout`.
    /// Returns whether everything finished.
    pub fn wait_drained(&self, partitions: Option<&[Partition]>, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut parts = self.lock();
        loop {
            let busy = parts.iter().any(|(p, st)| {
                partitions.is_none_or(|ps| ps.contains(p)) && !st.pending.is_empty()
            });
            if !busy {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            parts = self
                .changed
                .wait_timeout(parts, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_never_jumps_over_an_unfinished_offset() {
        let t = OffsetTracker::new();
        let acks: Vec<Ack> = (10..15).map(|o| t.track(0, o)).collect();
        assert_eq!(t.to_commit(), vec![(0, 10)]);
        t.done(acks[2]);
        t.done(acks[4]);
        assert_eq!(
            t.to_commit(),
            vec![],
            "10 still pending: position unchanged"
        );
        t.done(acks[0]);
        assert_eq!(t.to_commit(), vec![(0, 11)]);
        t.done(acks[1]);
        assert_eq!(t.to_commit(), vec![(0, 13)]);
        t.done(acks[3]);
        assert_eq!(t.to_commit(), vec![(0, 15)], "all done: one past the last");
    }

    #[test]
    fn untracked_messages_are_read_again() {
        let t = OffsetTracker::new();
        let a = t.track(0, 10);
        let b = t.track(0, 11);
        let c = t.track(0, 12);
        t.done(a);
        t.untrack(b);
        t.untrack(c);
        assert_eq!(
            t.positions(&[0]),
            vec![(0, 11)],
            "commit stops before the first untracked"
        );
        assert_eq!(t.in_flight(None), 0, "nothing left to drain");
    }

    #[test]
    fn gaps_in_offsets_are_fine() {
        let t = OffsetTracker::new();
        let a = t.track(1, 100);
        let b = t.track(1, 105);
        t.done(b);
        assert_eq!(t.positions(&[1]), vec![(1, 100)]);
        t.done(a);
        assert_eq!(t.positions(&[1]), vec![(1, 106)]);
    }

    #[test]
    fn partitions_are_independent() {
        let t = OffsetTracker::new();
        let a = t.track(0, 5);
        let _b = t.track(1, 7);
        t.done(a);
        assert_eq!(t.to_commit(), vec![(0, 6), (1, 7)]);
        assert_eq!(t.in_flight(Some(&[0])), 0);
        assert_eq!(t.in_flight(None), 1);
    }

    #[test]
    fn acks_from_before_a_reassignment_are_ignored() {
        let t = OffsetTracker::new();
        let old = t.track(0, 5);
        t.revoke(&[0]);
        t.assign(0);
        let fresh = t.track(0, 5);
        t.done(old);
        assert_eq!(
            t.in_flight(Some(&[0])),
            1,
            "a stale ack must not finish the new message"
        );
        t.done(fresh);
        assert_eq!(t.in_flight(Some(&[0])), 0);
    }

    #[test]
    fn wait_drained_returns_when_the_last_ack_arrives() {
        let t = std::sync::Arc::new(OffsetTracker::new());
        let a = t.track(0, 1);
        assert!(!t.wait_drained(None, Duration::from_millis(10)));
        let t2 = t.clone();
        let h = std::thread::spawn(move || t2.wait_drained(Some(&[0]), Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(20));
        t.done(a);
        assert!(h.join().unwrap());
    }

    #[test]
    fn a_failed_commit_is_sent_again_even_without_progress() {
        let t = OffsetTracker::new();
        let a = t.track(0, 10);
        t.done(a);
        assert_eq!(t.to_commit(), vec![(0, 11)]);
        assert_eq!(t.to_commit(), vec![], "nothing moved");
        t.commit_failed(&[0]);
        assert_eq!(
            t.to_commit(),
            vec![(0, 11)],
            "the failed position goes out again"
        );
        assert_eq!(t.partitions(), vec![0]);
    }

    #[test]
    fn work_of_a_revoked_or_reassigned_partition_is_not_current() {
        let t = OffsetTracker::new();
        t.assign(0);
        let old = t.track(0, 5);
        assert!(t.is_current(&old));
        t.revoke(&[0]);
        assert!(!t.is_current(&old), "revoked");
        t.assign(0);
        assert!(!t.is_current(&old), "re-assigned since");
        assert!(t.is_current(&t.track(0, 5)));
    }

    #[test]
    fn a_releasing_partition_keeps_finished_work_and_gives_queued_work_back() {
        let t = OffsetTracker::new();
        t.assign(0);
        let inferred = t.track(0, 5);
        let queued = t.track(0, 6);
        let other = t.track(1, 9);
        t.release(&[0]);
        assert!(
            !t.is_current(&queued),
            "queued work of a releasing partition is dropped"
        );
        assert!(t.is_current(&other), "other partitions are untouched");
        t.untrack(queued);
        t.done(inferred);
        assert!(t.wait_drained(Some(&[0]), Duration::from_millis(10)));
        assert_eq!(
            t.positions(&[0]),
            vec![(0, 6)],
            "the stored message is committed, the dropped one is read again"
        );
    }
}
