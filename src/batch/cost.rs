//! What a batch costs, as the model thread measures it: a least-squares fit of
//! `seconds = per_call + per_token × padded tokens` over the recent batches, weighted to forget
//! (about the last 64 batches count). It knows nothing of the model; it gives the batcher one
//! number, the per-call cost in tokens, which is what decides whether splitting a batch by
//! length pays: on a CPU a call costs a few tokens' worth, on a GPU thousands.
//!
//! Guarantees: no estimate before [`MIN_BATCHES`] batches, nor while the recent batches all had
//! about the same size, nor while time does not follow the tokens (the fit cannot tell a call
//! from its tokens then; the last estimate stays); an estimate is finite and ≥ 0.

/// Batches observed before the first estimate.
pub const MIN_BATCHES: u64 = 32;

/// Weight kept by the past at each new batch: 1 − 1/64.
const DECAY: f64 = 1.0 - 1.0 / 64.0;

/// Relative spread of the padded tokens below which the fit is not trusted.
const MIN_SPREAD: f64 = 0.1;

/// Correlation of time with tokens below which the fit is not trusted.
const MIN_CORRELATION: f64 = 0.3;

/// The running fit.
#[derive(Debug, Clone, Default)]
pub struct CostFit {
    w: f64,
    x: f64,
    y: f64,
    xx: f64,
    xy: f64,
    yy: f64,
    batches: u64,
    estimate: Option<f64>,
}

impl CostFit {
    pub fn new() -> Self {
        Self::default()
    }

    /// One batch of `padded_tokens` took `seconds` in the model.
    pub fn observe(&mut self, padded_tokens: usize, seconds: f64) {
        if !seconds.is_finite() || seconds < 0.0 || padded_tokens == 0 {
            return;
        }
        let (x, y) = (padded_tokens as f64, seconds);
        self.w = self.w * DECAY + 1.0;
        self.x = self.x * DECAY + x;
        self.y = self.y * DECAY + y;
        self.xx = self.xx * DECAY + x * x;
        self.xy = self.xy * DECAY + x * y;
        self.yy = self.yy * DECAY + y * y;
        self.batches += 1;
        if self.batches < MIN_BATCHES {
            return;
        }
        let mean_x = self.x / self.w;
        let var_x = (self.xx / self.w - mean_x * mean_x).max(0.0);
        if var_x.sqrt() < MIN_SPREAD * mean_x {
            return;
        }
        let mean_y = self.y / self.w;
        let var_y = (self.yy / self.w - mean_y * mean_y).max(0.0);
        let cov = self.xy / self.w - mean_x * mean_y;
        // Time that does not follow the tokens (flat, or noise) says nothing of a call's cost:
        // keep what we had.
        if var_y.sqrt() <= 1e-6 * mean_y || cov <= MIN_CORRELATION * (var_x * var_y).sqrt() {
            return;
        }
        let per_token = cov / var_x;
        let per_call = mean_y - per_token * mean_x;
        let tokens = (per_call / per_token).clamp(0.0, 1e6);
        if tokens.is_finite() {
            self.estimate = Some(tokens);
        }
    }

    /// The per-call cost in padded tokens, once the fit can tell.
    pub fn overhead_tokens(&self) -> Option<f64> {
        self.estimate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fit_finds_the_per_call_cost_of_a_linear_model() {
        let mut f = CostFit::new();
        // 2 ms a call + 10 µs a token = a call costs 200 tokens.
        for i in 0..200u64 {
            let tokens = 100 + (i * 37 % 40) as usize * 50;
            f.observe(tokens, 0.002 + 1e-5 * tokens as f64);
            if i + 1 < MIN_BATCHES {
                assert_eq!(f.overhead_tokens(), None, "after {} batches", i + 1);
            }
        }
        let t = f.overhead_tokens().expect("an estimate");
        assert!((t - 200.0).abs() < 1.0, "{t}");
    }

    #[test]
    fn batches_of_one_size_give_no_estimate_and_keep_the_last_one() {
        let mut f = CostFit::new();
        let full = 0.0005 + 1e-5 * 4096.0;
        for _ in 0..100 {
            f.observe(4096, full);
        }
        assert_eq!(f.overhead_tokens(), None);
        for i in 0..100u64 {
            let tokens = 64 + (i % 10) as usize * 400;
            f.observe(tokens, 0.0005 + 1e-5 * tokens as f64);
        }
        let before = f.overhead_tokens().expect("an estimate once sizes vary");
        assert!((before - 50.0).abs() < 5.0, "{before}");
        // A long run of full batches (a backlog) neither moves nor erases it much.
        for _ in 0..30 {
            f.observe(4096, full);
        }
        let after = f.overhead_tokens().expect("kept");
        assert!((after - 50.0).abs() < 5.0, "{after}");
    }

    #[test]
    fn nonsense_is_ignored_and_the_estimate_is_never_negative() {
        let mut f = CostFit::new();
        f.observe(100, f64::NAN);
        f.observe(0, 1.0);
        f.observe(100, -1.0);
        for i in 0..100u64 {
            // A negative intercept (the fit's, not the model's): the estimate is 0.
            let tokens = 100 + (i % 20) as usize * 100;
            f.observe(tokens, 1e-5 * tokens as f64 - 0.0005);
        }
        assert_eq!(f.overhead_tokens(), Some(0.0));
        let mut g = CostFit::new();
        for i in 0..100u64 {
            g.observe(100 + (i % 20) as usize * 100, 0.1);
        }
        assert_eq!(g.overhead_tokens(), None, "time flat in tokens");
    }
}
