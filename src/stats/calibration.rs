//! Temperature scaling: one number T per model version such that softmax(log p / T) matches
//! how often the version is right (fitted by weighted negative log-likelihood on labelled
//! items), the weighted expected calibration error before and after, and confidence-based
//! performance estimation (CBPE): with calibrated probabilities, the mean top probability of a
//! window's predictions estimates its accuracy without a single label.

/// One labelled item: weight (1 / inclusion probability), the version's probabilities, gold.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub weight: f64,
    pub probs: Vec<f64>,
    pub gold: usize,
}

/// Bounds of the fitted temperature (beyond them a version is not miscalibrated but broken).
pub const T_MIN: f64 = 0.05;
pub const T_MAX: f64 = 20.0;

const FLOOR: f64 = 1e-12;

/// `probs` re-tempered: softmax(log p / t).
pub fn temper(probs: &[f64], t: f64) -> Vec<f64> {
    let logs: Vec<f64> = probs.iter().map(|p| p.max(FLOOR).ln() / t).collect();
    let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = logs.iter().map(|l| (l - top).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

fn nll(items: &[Scored], t: f64) -> f64 {
    items
        .iter()
        .map(|i| -i.weight * temper(&i.probs, t)[i.gold].max(FLOOR).ln())
        .sum()
}

/// The temperature minimising the weighted NLL (golden-section search on log T; the NLL of
/// temperature scaling is unimodal in it). 1 for no items.
pub fn fit_temperature(items: &[Scored]) -> f64 {
    if items.is_empty() {
        return 1.0;
    }
    let (mut a, mut b) = (T_MIN.ln(), T_MAX.ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let f = |x: f64| nll(items, x.exp());
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..80 {
        if fc < fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    ((a + b) / 2.0).exp()
}

/// Weighted ECE over `bins` equal-width bins of the top probability after tempering by `t`.
pub fn weighted_ece(items: &[Scored], t: f64, bins: usize) -> f64 {
    let total: f64 = items.iter().map(|i| i.weight).sum();
    if total <= 0.0 {
        return 0.0;
    }
    let mut w = vec![0.0; bins];
    let mut conf = vec![0.0; bins];
    let mut right = vec![0.0; bins];
    for i in items {
        let p = temper(&i.probs, t);
        let (k, top) = p
            .iter()
            .copied()
            .enumerate()
            .fold(
                (0, f64::MIN),
                |best, (j, x)| if x > best.1 { (j, x) } else { best },
            );
        let b = ((top * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        w[b] += i.weight;
        conf[b] += i.weight * top;
        if k == i.gold {
            right[b] += i.weight;
        }
    }
    (0..bins)
        .filter(|&b| w[b] > 0.0)
        .map(|b| (w[b] / total) * (right[b] / w[b] - conf[b] / w[b]).abs())
        .sum()
}

/// CBPE: the expected accuracy of predictions whose probabilities are `probs`, tempered by `t`
/// (the mean calibrated top probability).
pub fn expected_accuracy<'a>(probs: impl IntoIterator<Item = &'a [f64]>, t: f64) -> Option<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for p in probs {
        sum += temper(p, t).iter().copied().fold(0.0, f64::max);
        n += 1;
    }
    (n > 0).then(|| sum / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Items from a model whose true probabilities are `truth` but which reports them sharpened
    /// by 1 / `t_true` (overconfident when t_true > 1).
    fn overconfident(n: usize, t_true: f64, seed: u64) -> Vec<Scored> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let raw: Vec<f64> = (0..3).map(|_| rng.random::<f64>() * 3.0).collect();
                let truth = temper(&raw.iter().map(|x| x.exp()).collect::<Vec<_>>(), 1.0);
                let u = rng.random::<f64>();
                let gold = if u < truth[0] {
                    0
                } else if u < truth[0] + truth[1] {
                    1
                } else {
                    2
                };
                Scored {
                    weight: 1.0,
                    probs: temper(&truth, 1.0 / t_true),
                    gold,
                }
            })
            .collect()
    }

    #[test]
    fn the_fitted_temperature_undoes_overconfidence_and_lowers_the_ece() {
        let items = overconfident(20_000, 2.5, 1);
        let t = fit_temperature(&items);
        assert!((t - 2.5).abs() < 0.2, "fitted {t}, true 2.5");
        let (before, after) = (weighted_ece(&items, 1.0, 10), weighted_ece(&items, t, 10));
        assert!(before > 0.08 && after < 0.02, "ECE {before} → {after}");
        // Calibrated, the mean top probability estimates the accuracy (CBPE).
        let right = items
            .iter()
            .filter(|i| {
                let p = &i.probs;
                let k = (0..3).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
                k == i.gold
            })
            .count() as f64
            / items.len() as f64;
        let cbpe = expected_accuracy(items.iter().map(|i| i.probs.as_slice()), t).unwrap();
        let raw = expected_accuracy(items.iter().map(|i| i.probs.as_slice()), 1.0).unwrap();
        assert!(
            (cbpe - right).abs() < 0.015,
            "CBPE {cbpe} vs accuracy {right}"
        );
        assert!(raw - right > 0.08, "uncalibrated {raw} overstates {right}");
    }

    #[test]
    fn tempering_keeps_the_ranking_and_one_is_the_identity() {
        let p = [0.7, 0.2, 0.1];
        let same = temper(&p, 1.0);
        assert!(same.iter().zip(p).all(|(a, b)| (a - b).abs() < 1e-12));
        let soft = temper(&p, 3.0);
        assert!(soft[0] > soft[1] && soft[1] > soft[2] && soft[0] < 0.7);
        assert_eq!(fit_temperature(&[]), 1.0);
    }
}
