//! Classification metrics from (gold, predicted, probabilities) triples: confusion matrix,
//! accuracy, per-class precision/recall/F1, macro-F1, expected calibration error, and McNemar's
//! test between two models on the same items. Pure functions, checked against hand-computed
//! values in the tests below.

use serde::Serialize;

/// `m[gold][predicted]` counts over `labels`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Confusion {
    pub labels: Vec<String>,
    pub matrix: Vec<Vec<u64>>,
}

/// Precision, recall and F1 of one class (0 where undefined: no prediction / no gold item).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScores {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

impl Confusion {
    /// From gold and predicted class indices (same length).
    pub fn new(labels: &[String], gold: &[usize], predicted: &[usize]) -> Self {
        let k = labels.len();
        let mut matrix = vec![vec![0u64; k]; k];
        for (&g, &p) in gold.iter().zip(predicted) {
            matrix[g][p] += 1;
        }
        Confusion {
            labels: labels.to_vec(),
            matrix,
        }
    }

    pub fn total(&self) -> u64 {
        self.matrix.iter().flatten().sum()
    }

    pub fn accuracy(&self) -> f64 {
        let right: u64 = (0..self.labels.len()).map(|i| self.matrix[i][i]).sum();
        ratio(right, self.total())
    }

    pub fn per_class(&self) -> Vec<ClassScores> {
        let k = self.labels.len();
        (0..k)
            .map(|c| {
                let tp = self.matrix[c][c];
                let predicted: u64 = (0..k).map(|g| self.matrix[g][c]).sum();
                let support: u64 = self.matrix[c].iter().sum();
                let precision = ratio(tp, predicted);
                let recall = ratio(tp, support);
                let f1 = if precision + recall > 0.0 {
                    2.0 * precision * recall / (precision + recall)
                } else {
                    0.0
                };
                ClassScores {
                    label: self.labels[c].clone(),
                    precision,
                    recall,
                    f1,
                    support,
                }
            })
            .collect()
    }

    /// Unweighted mean of the per-class F1 scores.
    pub fn macro_f1(&self) -> f64 {
        let s = self.per_class();
        s.iter().map(|c| c.f1).sum::<f64>() / s.len().max(1) as f64
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Expected calibration error over `bins` equal-width confidence bins: Σ (n_b / n) ×
/// |accuracy_b − mean confidence_b|, confidence = the predicted class's probability.
pub fn expected_calibration_error(confidence: &[f64], correct: &[bool], bins: usize) -> f64 {
    let n = confidence.len();
    if n == 0 {
        return 0.0;
    }
    let mut count = vec![0usize; bins];
    let mut conf_sum = vec![0f64; bins];
    let mut right = vec![0usize; bins];
    for (&c, &ok) in confidence.iter().zip(correct) {
        // Bin b holds (b/bins, (b+1)/bins]; a confidence of 0 goes to the first.
        let b = ((c * bins as f64).ceil() as usize).clamp(1, bins) - 1;
        count[b] += 1;
        conf_sum[b] += c;
        right[b] += usize::from(ok);
    }
    (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| {
            let nb = count[b] as f64;
            (nb / n as f64) * (right[b] as f64 / nb - conf_sum[b] / nb).abs()
        })
        .sum()
}

/// McNemar's test on the items where exactly one of two models is right.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct McNemar {
    /// Items only the first model got right.
    pub only_first: u64,
    /// Items only the second model got right.
    pub only_second: u64,
    /// `exact-binomial` (fewer than 25 discordant items) or `chi2-continuity`.
    pub method: &'static str,
    pub statistic: f64,
    pub p_value: f64,
}

impl McNemar {
    pub fn new(first_correct: &[bool], second_correct: &[bool]) -> Self {
        let mut b = 0u64;
        let mut c = 0u64;
        for (&x, &y) in first_correct.iter().zip(second_correct) {
            match (x, y) {
                (true, false) => b += 1,
                (false, true) => c += 1,
                _ => {}
            }
        }
        let n = b + c;
        if n < 25 {
            // Two-sided exact binomial test of b ~ Bin(n, 1/2).
            let k = b.min(c);
            let tail: f64 = (0..=k)
                .map(|i| binomial(n, i) * 0.5f64.powi(n as i32))
                .sum();
            McNemar {
                only_first: b,
                only_second: c,
                method: "exact-binomial",
                statistic: k as f64,
                p_value: (2.0 * tail).min(1.0),
            }
        } else {
            let d = (b as f64 - c as f64).abs() - 1.0;
            let chi2 = d.max(0.0).powi(2) / n as f64;
            McNemar {
                only_first: b,
                only_second: c,
                method: "chi2-continuity",
                statistic: chi2,
                // Chi-square with one degree of freedom: P(X > x) = erfc(sqrt(x / 2)).
                p_value: erfc((chi2 / 2.0).sqrt()),
            }
        }
    }
}

fn binomial(n: u64, k: u64) -> f64 {
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// Complementary error function (W. J. Cody's rational approximation via `erf`, |error| <
/// 1.2e-7: Numerical Recipes' `erfcc`).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        ["against", "neutral", "favour"].map(String::from).to_vec()
    }

    #[test]
    fn confusion_scores_match_a_hand_computed_example() {
        // gold:      a a a n n f f f f f
        // predicted: a a n n f f f f a f
        let gold = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2];
        let pred = [0, 0, 1, 1, 2, 2, 2, 2, 0, 2];
        let c = Confusion::new(&labels(), &gold, &pred);
        assert_eq!(c.matrix, vec![vec![2, 1, 0], vec![0, 1, 1], vec![1, 0, 4]]);
        assert_eq!(c.accuracy(), 0.7);
        let s = c.per_class();
        // against: tp 2, predicted 3, support 3 → p = r = 2/3, f1 = 2/3.
        assert!((s[0].precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((s[0].f1 - 2.0 / 3.0).abs() < 1e-12);
        // neutral: tp 1, predicted 2, support 2 → 0.5 / 0.5 / 0.5.
        assert_eq!((s[1].precision, s[1].recall, s[1].f1), (0.5, 0.5, 0.5));
        // favour: tp 4, predicted 5, support 5 → 0.8 / 0.8 / 0.8.
        assert!((s[2].f1 - 0.8).abs() < 1e-12);
        assert_eq!(s[2].support, 5);
        // macro-F1 = (2/3 + 1/2 + 4/5) / 3 = 59/90.
        assert!((c.macro_f1() - 59.0 / 90.0).abs() < 1e-12);
    }

    #[test]
    fn a_class_never_predicted_scores_zero_not_nan() {
        let c = Confusion::new(&labels(), &[0, 1], &[0, 0]);
        let s = c.per_class();
        assert_eq!((s[1].precision, s[1].recall, s[1].f1), (0.0, 0.0, 0.0));
        assert!(c.macro_f1().is_finite());
    }

    #[test]
    fn ece_matches_a_hand_computed_example() {
        // 10 bins. Bin (0.9, 1]: 0.95 right, 0.95 wrong → acc 0.5, conf 0.95 → |Δ| 0.45, weight
        // 2/4. Bin (0.5, 0.6]: 0.55 right, 0.6 right → acc 1, conf 0.575 → 0.425, weight 2/4.
        let e =
            expected_calibration_error(&[0.95, 0.95, 0.55, 0.6], &[true, false, true, true], 10);
        assert!((e - (0.5 * 0.45 + 0.5 * 0.425)).abs() < 1e-12, "{e}");
        assert_eq!(expected_calibration_error(&[1.0], &[true], 10), 0.0);
    }

    #[test]
    fn mcnemar_exact_and_chi_square_match_hand_computed_values() {
        // 5 items only the first got right, 1 only the second: exact two-sided p =
        // 2 × (C(6,0) + C(6,1)) / 64 = 14/64.
        let first = [true, true, true, true, true, false, true, false];
        let second = [false, false, false, false, false, true, true, false];
        let m = McNemar::new(&first, &second);
        assert_eq!(
            (m.only_first, m.only_second, m.method),
            (5, 1, "exact-binomial")
        );
        assert!((m.p_value - 14.0 / 64.0).abs() < 1e-12);
        // b = 40, c = 20: χ² = (|40 − 20| − 1)² / 60 = 361/60 = 6.0167, p ≈ 0.01417.
        let mut f = vec![true; 40];
        f.extend(vec![false; 20]);
        let mut s = vec![false; 40];
        s.extend(vec![true; 20]);
        let m = McNemar::new(&f, &s);
        assert_eq!(m.method, "chi2-continuity");
        assert!((m.statistic - 361.0 / 60.0).abs() < 1e-12);
        assert!((m.p_value - 0.014171).abs() < 1e-5, "{}", m.p_value);
        // No disagreement: nothing to tell apart.
        assert_eq!(McNemar::new(&[true, false], &[true, false]).p_value, 1.0);
    }
}
