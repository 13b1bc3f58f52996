//! How the model thread runs a batch: as one padded forward, or — with `batch.split_by_cost` —
//! as the cheapest set of forwards of similar lengths, given what a call costs in padded
//! tokens (fixed by `batch.overhead_tokens`, or fitted from the champion's own forwards). The
//! batch stays one unit everywhere else (one write per sink, one set of acknowledgements):
//! only the model sees the cut, so cutting never multiplies the work downstream.
//!
//! Guarantees: every row of the batch is in exactly one forward, and the forwards in order hold
//! the rows in the batch's order (which the cut may have changed: by length); no cut while the
//! cost is unknown; another champion starts a fit of its own.

use crate::batch::cost::{cheapest_runs, CostFit};
use crate::config::BatchConfig;
use crate::model::PaddedBatch;
use crate::telemetry::BatchCostKnown;

use super::inference::Encoded;

/// What a forward of the champion costs besides its tokens, in tokens.
pub(super) struct ForwardCost {
    /// Set by the config: no fit.
    fixed: Option<f64>,
    /// The champion whose timings `fit` holds.
    fitted_for: String,
    fit: CostFit,
    /// The estimate last reported (telemetry when it moves, not at every forward).
    reported: Option<f64>,
}

impl ForwardCost {
    /// From the config; `None` when batches are not cut (`batch.split_by_cost` off).
    pub(super) fn from_config(c: &BatchConfig) -> Option<Self> {
        if !c.split_by_cost {
            return None;
        }
        let fixed = c.overhead_tokens.map(f64::from);
        if let Some(t) = fixed {
            BatchCostKnown {
                overhead_tokens: t,
                first: true,
            }
            .emit();
        }
        Some(ForwardCost {
            fixed,
            fitted_for: String::new(),
            fit: CostFit::new(),
            reported: fixed,
        })
    }

    /// The champion `model` took `seconds` on a forward of `padded_tokens` (nothing to do for
    /// a fixed cost). Another champion starts a new fit: a promoted model of another size has
    /// another per-call cost, and the old one's timings would hide it for many forwards.
    pub(super) fn observe(&mut self, model: &str, padded_tokens: usize, seconds: f64) {
        if self.fixed.is_some() {
            return;
        }
        if self.fitted_for != model {
            model.clone_into(&mut self.fitted_for);
            self.fit = CostFit::new();
            self.reported = None;
        }
        self.fit.observe(padded_tokens, seconds);
        let Some(now) = self.fit.overhead_tokens() else {
            return;
        };
        // Telemetry when it moves by a tenth (or a token), not at every forward.
        let before = self.reported;
        if before.is_none_or(|b| (now - b).abs() >= (0.1 * b).max(1.0)) {
            self.reported = Some(now);
            BatchCostKnown {
                overhead_tokens: now,
                first: before.is_none(),
            }
            .emit();
        }
    }

    /// The per-call cost in padded tokens, once known (for the champion being fitted).
    pub(super) fn overhead_tokens(&self) -> Option<f64> {
        self.fixed.or_else(|| self.fit.overhead_tokens())
    }
}

/// The forwards that run `batch` most cheaply at `overhead` tokens a call (one when it is
/// `None`, or when no cut pays). When cut, `batch` is reordered by length first, so that the
/// forwards in order hold its rows in order.
pub(super) fn forwards(
    batch: &mut [Encoded],
    overhead: Option<f64>,
    pad_id: i64,
) -> Vec<PaddedBatch> {
    let one = |rows: &[Encoded]| PaddedBatch::new(rows.iter().map(|e| e.ids.as_slice()), pad_id);
    let Some(overhead) = overhead.filter(|t| t.is_finite() && *t >= 0.0) else {
        return vec![one(batch)];
    };
    if batch.len() < 2 {
        return vec![one(batch)];
    }
    // Stable: equal lengths keep their arrival order.
    batch.sort_by_key(|e| e.ids.len());
    let lens: Vec<usize> = batch.iter().map(|e| e.ids.len().max(1)).collect();
    cheapest_runs(&lens, overhead)
        .into_iter()
        .map(|(start, end)| one(&batch[start..end]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::offsets::OffsetTracker;
    use crate::tweet::Tweet;
    use crate::work::Work;

    fn encoded(tracker: &OffsetTracker, lens: &[usize]) -> Vec<Encoded> {
        lens.iter()
            .enumerate()
            .map(|(o, &len)| Encoded {
                work: Work::new(
                    Tweet {
                        id: format!("0-{o}"),
                        text: "vaccin".into(),
                        created_at: chrono::Utc::now(),
                        lang: "fr".into(),
                    },
                    tracker.track(0, o as i64),
                ),
                ids: vec![7; len],
                tokenizer: "t".into(),
            })
            .collect()
    }

    fn offsets(batch: &[Encoded]) -> Vec<i64> {
        batch.iter().map(|e| e.work.ack.offset).collect()
    }

    #[test]
    fn a_batch_is_cut_by_length_only_when_a_call_costs_less_than_its_padding() {
        let tracker = OffsetTracker::new();
        let lens = [3, 40, 4, 41, 3];
        // Unknown cost: one forward, rows as they came.
        let mut b = encoded(&tracker, &lens);
        let f = forwards(&mut b, None, 1);
        assert_eq!((f.len(), f[0].rows, f[0].cols), (1, 5, 41));
        assert_eq!(offsets(&b), vec![0, 1, 2, 3, 4]);
        // A call costs 10 tokens: two forwards (short, long), rows reordered to match them.
        let mut b = encoded(&tracker, &lens);
        let f = forwards(&mut b, Some(10.0), 1);
        let shapes: Vec<(usize, usize)> = f.iter().map(|p| (p.rows, p.cols)).collect();
        assert_eq!(shapes, vec![(3, 4), (2, 41)]);
        assert_eq!(offsets(&b), vec![0, 4, 2, 1, 3]);
        // The rows' ids went to their forward: row 1 of the second forward is offset 3's.
        assert_eq!(f[1].ids[41..82], vec![7i64; 41][..]);
        // A call dearer than all the padding (a GPU): one forward.
        let mut b = encoded(&tracker, &lens);
        assert_eq!(forwards(&mut b, Some(1e6), 1).len(), 1);
        // Nonsense is no estimate.
        let mut b = encoded(&tracker, &lens);
        assert_eq!(forwards(&mut b, Some(f64::NAN), 1).len(), 1);
        assert_eq!(offsets(&b), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_fixed_cost_is_known_at_once_and_a_measured_one_after_enough_forwards() {
        let mut cfg = BatchConfig {
            split_by_cost: false,
            ..crate::config::Config::default().batch
        };
        assert!(
            ForwardCost::from_config(&cfg).is_none(),
            "off: no cost, no cut"
        );
        cfg.split_by_cost = true;
        cfg.overhead_tokens = Some(12);
        let mut fixed = ForwardCost::from_config(&cfg).unwrap();
        assert_eq!(fixed.overhead_tokens(), Some(12.0));
        fixed.observe("a@1", 100, 1.0);
        assert_eq!(
            fixed.overhead_tokens(),
            Some(12.0),
            "timings do not move it"
        );
        cfg.overhead_tokens = None;
        let mut fitted = ForwardCost::from_config(&cfg).unwrap();
        assert_eq!(fitted.overhead_tokens(), None);
        // 2 ms a call + 10 µs a token: a call costs 200 tokens.
        for i in 0..200u64 {
            let tokens = 100 + (i * 37 % 40) as usize * 50;
            fitted.observe("a@1", tokens, 0.002 + 1e-5 * tokens as f64);
        }
        let t = fitted.overhead_tokens().expect("a fit");
        assert!((t - 200.0).abs() < 1.0, "{t}");
    }
}
