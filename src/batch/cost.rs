//! What a forward costs, as the model thread measures it, and the cheapest way to cut a batch
//! into forwards. The fit: least squares of `seconds = per_call + per_token × padded tokens`
//! over the recent forwards, weighted to forget (about the last 64 count); it gives one number,
//! the per-call cost in tokens, which is what decides whether running a batch as several
//! forwards of similar lengths pays: on a CPU a call costs a few tokens' worth, on a GPU
//! thousands. [`cheapest_runs`] makes that cut. Neither knows anything of the model.
//!
//! Guarantees: no estimate before [`MIN_BATCHES`] forwards, nor while the recent ones all had
//! about the same size, nor while time does not follow the tokens (the fit cannot tell a call
//! from its tokens then; the last estimate stays); an estimate is finite and ≥ 0. The cut is
//! the cheapest of all ways to group the rows, and one forward when none is cheaper.

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

    /// One forward of `padded_tokens` took `seconds` in the model.
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

/// Where to cut rows sorted by length (`lens`, ascending) into forwards so that the sum of
/// `overhead + rows × longest` over them is least: the runs `(start, end)`, in order, covering
/// every row (none for no rows). Some cheapest grouping of rows is made of runs of the sorted
/// order (swapping a short row of a long group for a long row of a short one never raises
/// either's longest), and it never parts rows of equal length (moving them to the shorter
/// forward keeps its longest and shrinks the other), so one pass over the cuts between
/// distinct lengths finds it: O(distinct lengths²), bounded by the model's longest input
/// whatever the batch size.
pub fn cheapest_runs(lens: &[usize], overhead: f64) -> Vec<(usize, usize)> {
    debug_assert!(lens.windows(2).all(|w| w[0] <= w[1]), "lens must be sorted");
    // Where each distinct length starts, and the end.
    let mut at: Vec<usize> = (0..lens.len())
        .filter(|&i| i == 0 || lens[i] != lens[i - 1])
        .collect();
    at.push(lens.len());
    let m = at.len() - 1;
    // best[k]: cheapest cost of the rows before at[k]; cut[k]: the k of its last forward's start.
    let mut best = vec![f64::INFINITY; m + 1];
    let mut cut = vec![0usize; m + 1];
    best[0] = 0.0;
    for end in 1..=m {
        let longest = lens[at[end] - 1];
        for start in 0..end {
            let c = best[start] + overhead + ((at[end] - at[start]) * longest) as f64;
            if c < best[end] {
                best[end] = c;
                cut[end] = start;
            }
        }
    }
    let mut runs = Vec::new();
    let mut end = m;
    while end > 0 {
        runs.push((at[cut[end]], at[end]));
        end = cut[end];
    }
    runs.reverse();
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost_of(groups: &[Vec<usize>], lens: &[usize], overhead: f64) -> f64 {
        groups
            .iter()
            .map(|g| overhead + (g.len() * g.iter().map(|&i| lens[i]).max().unwrap()) as f64)
            .sum()
    }

    #[test]
    fn a_batch_is_cut_where_padding_costs_more_than_a_call() {
        let lens = [10, 11, 12, 98, 100];
        // A call costs 20 tokens: 3 short rows padded to 100 would cost 264 tokens more.
        assert_eq!(cheapest_runs(&lens, 20.0), vec![(0, 3), (3, 5)]);
        // A call costs more than any padding here (a GPU): one forward.
        assert_eq!(cheapest_runs(&lens, 1e5), vec![(0, 5)]);
        // Free calls: one forward per distinct length, never a split of equal lengths.
        assert_eq!(cheapest_runs(&[5, 5, 5, 9], 0.0), vec![(0, 3), (3, 4)]);
        assert_eq!(cheapest_runs(&[7], 0.0), vec![(0, 1)]);
        assert!(cheapest_runs(&[], 3.0).is_empty());
    }

    #[test]
    fn the_cut_is_the_cheapest_of_all_groupings() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(22);
        // Every partition of 0..n into groups.
        fn partitions(n: usize) -> Vec<Vec<Vec<usize>>> {
            let mut all: Vec<Vec<Vec<usize>>> = vec![vec![]];
            for i in 0..n {
                let mut next = Vec::new();
                for p in &all {
                    for g in 0..=p.len() {
                        let mut q = p.clone();
                        if g == p.len() {
                            q.push(vec![i]);
                        } else {
                            q[g].push(i);
                        }
                        next.push(q);
                    }
                }
                all = next;
            }
            all
        }
        let mut cut_somewhere = 0;
        for case in 0..300 {
            let n = rng.random_range(1..=7);
            let overhead = [0.0, 5.0, 30.0, 200.0][case % 4];
            // Few distinct lengths in some cases, so that equal lengths are common.
            let top = [60, 6][(case / 4) % 2];
            let mut lens: Vec<usize> = (0..n).map(|_| rng.random_range(1..=top)).collect();
            lens.sort_unstable();
            let runs = cheapest_runs(&lens, overhead);
            let split: Vec<Vec<usize>> = runs.iter().map(|&(s, e)| (s..e).collect()).collect();
            assert!(
                runs.iter().all(|&(s, _)| s == 0 || lens[s - 1] != lens[s]),
                "case {case}: rows of one length parted: {runs:?} of {lens:?}"
            );
            let covered: Vec<usize> = split.iter().flatten().copied().collect();
            assert_eq!(covered, (0..n).collect::<Vec<_>>(), "case {case}");
            let best = partitions(n)
                .into_iter()
                .map(|p| cost_of(&p, &lens, overhead))
                .fold(f64::INFINITY, f64::min);
            let got = cost_of(&split, &lens, overhead);
            assert!(
                (got - best).abs() < 1e-9,
                "case {case}: {got} vs best {best}, lens {lens:?}"
            );
            cut_somewhere += usize::from(split.len() > 1);
        }
        // The cases are not all trivial: many were cut.
        assert!(cut_somewhere >= 30, "{cut_somewhere}");
    }

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
