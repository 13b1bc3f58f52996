//! Quality of a classifier on a *stream*, estimated from a sample of it labelled by hand: each
//! labelled item carries the inverse of its inclusion probability, so over-sampled strata
//! (disagreements, low confidence) do not bend the estimate towards themselves. Accuracy,
//! recall and macro-F1 are Hájek ratio estimators (weighted sums over the weighted total);
//! confidence intervals are percentile bootstraps over the labelled items (seeded: the same
//! data give the same interval); two versions on the same items are compared with McNemar's
//! test and a bootstrap of the weighted difference; [`labels_needed`] says how many paired
//! labels a decision takes at a given power. Pure functions; the simulated-stream tests below
//! show the estimates are unbiased where the unweighted sample mean is not.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::metrics::McNemar;

/// One labelled item for one model: weight = 1 / inclusion probability, class indices.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Labelled {
    pub weight: f64,
    pub gold: usize,
    pub predicted: usize,
}

/// `m[gold][predicted]` as estimated stream totals (sums of weights).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeightedConfusion {
    pub labels: Vec<String>,
    pub matrix: Vec<Vec<f64>>,
}

impl WeightedConfusion {
    pub fn new(labels: &[String], items: &[Labelled]) -> Self {
        Self::from_iter(labels, items.iter().copied())
    }

    fn from_iter(labels: &[String], items: impl Iterator<Item = Labelled>) -> Self {
        let k = labels.len();
        let mut matrix = vec![vec![0.0; k]; k];
        for it in items {
            matrix[it.gold][it.predicted] += it.weight;
        }
        WeightedConfusion {
            labels: labels.to_vec(),
            matrix,
        }
    }

    fn total(&self) -> f64 {
        self.matrix.iter().flatten().sum()
    }

    pub fn accuracy(&self) -> f64 {
        let right: f64 = (0..self.labels.len()).map(|i| self.matrix[i][i]).sum();
        ratio(right, self.total())
    }

    /// Recall of each class (share of its items predicted as it).
    pub fn recall(&self) -> Vec<f64> {
        (0..self.labels.len())
            .map(|c| ratio(self.matrix[c][c], self.matrix[c].iter().sum()))
            .collect()
    }

    /// Unweighted mean over classes of F1 (0 for a class without gold or predicted items).
    pub fn macro_f1(&self) -> f64 {
        let k = self.labels.len();
        let f1 = (0..k).map(|c| {
            let tp = self.matrix[c][c];
            let predicted: f64 = (0..k).map(|g| self.matrix[g][c]).sum();
            let (p, r) = (ratio(tp, predicted), ratio(tp, self.matrix[c].iter().sum()));
            if p + r > 0.0 {
                2.0 * p * r / (p + r)
            } else {
                0.0
            }
        });
        f1.sum::<f64>() / k.max(1) as f64
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// An estimate with its 95 % (or other) interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

/// Bootstrap repetitions of every interval: enough for stable 2.5 / 97.5 percentiles.
pub const BOOTSTRAP_REPS: usize = 1000;

/// Percentile bootstrap of `stat` over `n` items resampled with replacement.
fn bootstrap(
    n: usize,
    level: f64,
    seed: u64,
    estimate: f64,
    mut stat: impl FnMut(&[usize]) -> f64,
) -> Interval {
    if n == 0 {
        return Interval {
            estimate,
            low: f64::NAN,
            high: f64::NAN,
        };
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut idx = vec![0usize; n];
    let mut values: Vec<f64> = (0..BOOTSTRAP_REPS)
        .map(|_| {
            idx.iter_mut().for_each(|i| *i = rng.random_range(0..n));
            stat(&idx)
        })
        .collect();
    values.sort_by(f64::total_cmp);
    let q =
        |p: f64| values[((p * (values.len() - 1) as f64).round() as usize).min(values.len() - 1)];
    let tail = (1.0 - level) / 2.0;
    Interval {
        estimate,
        low: q(tail),
        high: q(1.0 - tail),
    }
}

/// Weighted accuracy and macro-F1 of one model with `level` bootstrap intervals.
pub fn accuracy_and_f1(
    labels: &[String],
    items: &[Labelled],
    level: f64,
    seed: u64,
) -> (Interval, Interval) {
    let c = WeightedConfusion::new(labels, items);
    let acc = bootstrap(items.len(), level, seed, c.accuracy(), |idx| {
        let (mut right, mut total) = (0.0, 0.0);
        for &i in idx {
            let it = &items[i];
            total += it.weight;
            if it.gold == it.predicted {
                right += it.weight;
            }
        }
        ratio(right, total)
    });
    let f1 = bootstrap(items.len(), level, seed ^ 0x5eed, c.macro_f1(), |idx| {
        WeightedConfusion::from_iter(labels, idx.iter().map(|&i| items[i])).macro_f1()
    });
    (acc, f1)
}

/// One item scored by two models: weight, and whether each was right.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paired {
    pub weight: f64,
    pub first_right: bool,
    pub second_right: bool,
}

/// Two models on the same labelled items.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub paired: u64,
    /// Weighted accuracy of the first minus the second, with its interval.
    pub difference: Interval,
    /// McNemar's test on the (unweighted) discordant items: under the null both are right as
    /// often, whatever the weights.
    pub mcnemar: McNemar,
}

pub fn compare(items: &[Paired], level: f64, seed: u64) -> Comparison {
    let diff =
        |it: &Paired| f64::from(u8::from(it.first_right)) - f64::from(u8::from(it.second_right));
    let total: f64 = items.iter().map(|i| i.weight).sum();
    let estimate = ratio(items.iter().map(|i| i.weight * diff(i)).sum(), total);
    let difference = bootstrap(items.len(), level, seed, estimate, |idx| {
        let (mut d, mut t) = (0.0, 0.0);
        for &i in idx {
            d += items[i].weight * diff(&items[i]);
            t += items[i].weight;
        }
        ratio(d, t)
    });
    let first: Vec<bool> = items.iter().map(|i| i.first_right).collect();
    let second: Vec<bool> = items.iter().map(|i| i.second_right).collect();
    Comparison {
        paired: items.len() as u64,
        difference,
        mcnemar: McNemar::new(&first, &second),
    }
}

/// Paired labels a two-sided McNemar test at `alpha` needs to detect the difference seen with
/// probability `power` (Connor 1987: n = (z₁₋α/₂ √ψ + z_power √(ψ − δ²))² / δ², ψ the share of
/// discordant items, δ the difference of the two discordant shares). `None` when no difference
/// is seen (no number of labels decides it).
pub fn labels_needed(
    only_first: u64,
    only_second: u64,
    paired: u64,
    alpha: f64,
    power: f64,
) -> Option<u64> {
    if paired == 0 || only_first == only_second {
        return None;
    }
    let n = paired as f64;
    let (p10, p01) = (only_first as f64 / n, only_second as f64 / n);
    let (psi, delta) = (p10 + p01, p10 - p01);
    let za = normal_quantile(1.0 - alpha / 2.0);
    let zb = normal_quantile(power);
    let need =
        (za * psi.sqrt() + zb * (psi - delta * delta).max(0.0).sqrt()).powi(2) / (delta * delta);
    Some(need.ceil() as u64)
}

/// Cohen's kappa of two annotators on the same items (class indices): agreement beyond what
/// their label distributions give by chance; 1 when both always agree.
pub fn cohen_kappa(k: usize, pairs: &[(usize, usize)]) -> Option<f64> {
    if pairs.is_empty() {
        return None;
    }
    let n = pairs.len() as f64;
    let observed = pairs.iter().filter(|(a, b)| a == b).count() as f64 / n;
    let (mut ca, mut cb) = (vec![0.0; k], vec![0.0; k]);
    for &(a, b) in pairs {
        ca[a] += 1.0;
        cb[b] += 1.0;
    }
    let chance: f64 = (0..k).map(|c| (ca[c] / n) * (cb[c] / n)).sum();
    Some(if chance < 1.0 {
        (observed - chance) / (1.0 - chance)
    } else {
        1.0
    })
}

/// Inverse of the standard normal CDF (P. J. Acklam's rational approximation, relative error
/// < 1.2e-9 over (0, 1)).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        ["against", "neutral", "favour"].map(String::from).to_vec()
    }

    /// A stream of `n` items in two strata: a small hard one (low confidence, 40 % right) and
    /// a large easy one (92 % right). Returns (gold, predicted, hard) per item.
    fn stream(n: usize, seed: u64) -> Vec<(usize, usize, bool)> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let hard = rng.random::<f64>() < 0.1;
                let gold = rng.random_range(0..3);
                let right = rng.random::<f64>() < if hard { 0.4 } else { 0.92 };
                let predicted = if right {
                    gold
                } else {
                    (gold + rng.random_range(1..3)) % 3
                };
                (gold, predicted, hard)
            })
            .collect()
    }

    /// Poisson sample: each item in with its stratum's probability.
    fn sample(
        stream: &[(usize, usize, bool)],
        p_hard: f64,
        p_easy: f64,
        rng: &mut StdRng,
    ) -> Vec<Labelled> {
        stream
            .iter()
            .filter_map(|&(gold, predicted, hard)| {
                let p = if hard { p_hard } else { p_easy };
                (rng.random::<f64>() < p).then_some(Labelled {
                    weight: 1.0 / p,
                    gold,
                    predicted,
                })
            })
            .collect()
    }

    #[test]
    fn weighted_estimates_are_unbiased_on_an_oversampled_stream_where_the_sample_mean_is_not() {
        let s = stream(100_000, 1);
        let truth = WeightedConfusion::new(
            &labels(),
            &s.iter()
                .map(|&(gold, predicted, _)| Labelled {
                    weight: 1.0,
                    gold,
                    predicted,
                })
                .collect::<Vec<_>>(),
        );
        let (true_acc, true_f1) = (truth.accuracy(), truth.macro_f1());
        // The hard stratum is over-sampled 25×: about half the sample is hard items.
        let mut rng = StdRng::seed_from_u64(2);
        let (reps, mut acc_sum, mut f1_sum, mut naive_sum, mut covered) = (200, 0.0, 0.0, 0.0, 0);
        for r in 0..reps {
            let items = sample(&s, 0.05, 0.002, &mut rng);
            let (acc, f1) = accuracy_and_f1(&labels(), &items, 0.95, r);
            acc_sum += acc.estimate;
            f1_sum += f1.estimate;
            covered += usize::from(acc.low <= true_acc && true_acc <= acc.high);
            naive_sum +=
                items.iter().filter(|i| i.gold == i.predicted).count() as f64 / items.len() as f64;
        }
        let n = reps as f64;
        let (mean_acc, mean_f1, naive) = (acc_sum / n, f1_sum / n, naive_sum / n);
        // Standard error of one estimate here is ~0.02, so of the mean over 200 ~0.0015.
        assert!(
            (mean_acc - true_acc).abs() < 0.006,
            "weighted {mean_acc} vs true {true_acc}"
        );
        assert!(
            (mean_f1 - true_f1).abs() < 0.01,
            "weighted F1 {mean_f1} vs true {true_f1}"
        );
        assert!(
            naive < true_acc - 0.15,
            "the unweighted mean {naive} should be far below {true_acc}"
        );
        // A 95 % interval covers the truth in about 95 % of samples (binomial slack for 200).
        assert!((180..=200).contains(&covered), "covered {covered}/200");
    }

    #[test]
    fn weighted_confusion_matches_hand_computed_values() {
        // Two items weight 1 (right), one weight 3 (against predicted favour).
        let items = [
            Labelled {
                weight: 1.0,
                gold: 0,
                predicted: 0,
            },
            Labelled {
                weight: 1.0,
                gold: 2,
                predicted: 2,
            },
            Labelled {
                weight: 3.0,
                gold: 0,
                predicted: 2,
            },
        ];
        let c = WeightedConfusion::new(&labels(), &items);
        assert_eq!(c.accuracy(), 2.0 / 5.0);
        assert_eq!(c.recall(), vec![0.25, 0.0, 1.0]);
        // against: p 1, r 1/4 → F1 0.4; neutral 0; favour: p 1/4, r 1 → 0.4.
        assert!((c.macro_f1() - 0.8 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn a_better_model_is_told_apart_and_labels_needed_follows_the_gap() {
        let mut rng = StdRng::seed_from_u64(7);
        let items: Vec<Paired> = (0..600)
            .map(|_| Paired {
                weight: 1.0,
                first_right: rng.random::<f64>() < 0.9,
                second_right: rng.random::<f64>() < 0.8,
            })
            .collect();
        let c = compare(&items, 0.95, 3);
        assert!(c.mcnemar.p_value < 0.01, "{:?}", c.mcnemar);
        assert!(
            c.difference.low > 0.0 && c.difference.estimate > 0.05,
            "{:?}",
            c.difference
        );
        let big =
            labels_needed(c.mcnemar.only_first, c.mcnemar.only_second, 600, 0.05, 0.8).unwrap();
        // A small gap needs many more labels than a large one; no gap, no number.
        let small = labels_needed(55, 45, 600, 0.05, 0.8).unwrap();
        assert!(
            big < 600 && small > 5 * big,
            "big gap {big}, small gap {small}"
        );
        assert_eq!(labels_needed(10, 10, 600, 0.05, 0.8), None);
        // Connor's formula by hand: ψ = 0.2, δ = 0.1, z = 1.95996, 0.84162 →
        // (1.95996·√0.2 + 0.84162·√0.19)² / 0.01 = (0.87652 + 0.36685)² / 0.01 = 154.6 → 155.
        assert_eq!(labels_needed(90, 30, 600, 0.05, 0.8), Some(155));
    }

    #[test]
    fn kappa_and_the_normal_quantile_match_known_values() {
        assert_eq!(cohen_kappa(3, &[(0, 0), (1, 1), (2, 2)]), Some(1.0));
        // 2×2 example: 20 (0,0), 5 (0,1), 10 (1,0), 15 (1,1): po 0.7, pe 0.5·0.6 + 0.5·0.4 = 0.5.
        let mut pairs = vec![(0, 0); 20];
        pairs.extend(vec![(0, 1); 5]);
        pairs.extend(vec![(1, 0); 10]);
        pairs.extend(vec![(1, 1); 15]);
        assert!((cohen_kappa(2, &pairs).unwrap() - 0.4).abs() < 1e-12);
        assert!((normal_quantile(0.975) - 1.959_964).abs() < 1e-6);
        assert!((normal_quantile(0.8) - 0.841_621).abs() < 1e-6);
        assert!((normal_quantile(0.001) + 3.090_232).abs() < 1e-6);
    }
}
