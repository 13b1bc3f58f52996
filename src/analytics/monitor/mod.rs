//! Prediction stability from ClickHouse, for `vaxpulse monitor`, the worker's monitor gauges and
//! the drift chart. Per window (hour or day): the champion's label distribution and the
//! population stability index (PSI) of its labels and of its binned confidence against a
//! reference (the first `reference_days` days of data, or a pinned range); the same per model
//! version against that version's own first days; champion–shadow agreement, kappa and the
//! label-flip matrix; the latest probe run of each version on each replica. The command exits 2
//! when anything is on alert (PSI ≥ 0.25, or a probe flag), 1 on an error, so a cron job or CI
//! step can act on it.

use std::collections::{BTreeMap, BTreeSet};

mod query;
mod render;
pub mod rollup;

pub use query::{monitor, read, Span};

use chrono::{DateTime, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};

use crate::output::Table;
use crate::sink::clickhouse::schema::{
    CHAMPION_LABELS, MODEL_SPANS, MONITOR_HOURLY, PREDICTIONS, PROBE_RUNS,
};
use crate::sink::clickhouse::ClickHouseSink;

/// PSI at or above which a window is watched.
pub const PSI_WATCH: f64 = 0.1;
/// PSI at or above which a window raises an alert.
pub const PSI_ALERT: f64 = 0.25;
/// Confidence (top probability) is binned in tenths for its PSI.
pub const CONFIDENCE_BINS: usize = 10;

/// Population stability index of `actual` against `reference` (both counts over the same
/// categories): Σ (a − r) · ln(a / r) over shares, each share floored at 1e-4 so that an empty
/// category does not make it infinite.
pub fn psi(reference: &[u64], actual: &[u64]) -> f64 {
    let (rt, at) = (
        reference.iter().sum::<u64>().max(1) as f64,
        actual.iter().sum::<u64>().max(1) as f64,
    );
    reference
        .iter()
        .zip(actual)
        .map(|(&r, &a)| {
            let r = (r as f64 / rt).max(1e-4);
            let a = (a as f64 / at).max(1e-4);
            (a - r) * (a / r).ln()
        })
        .sum()
}

/// `ok`, `watch` or `alert` for a PSI value.
pub fn level(psi: f64) -> &'static str {
    if psi >= PSI_ALERT {
        "alert"
    } else if psi >= PSI_WATCH {
        "watch"
    } else {
        "ok"
    }
}

fn rank(level: &str) -> u8 {
    match level {
        "alert" => 2,
        "watch" => 1,
        _ => 0,
    }
}

fn worst<'a>(levels: impl IntoIterator<Item = &'a str>) -> &'static str {
    match levels.into_iter().map(rank).max().unwrap_or(0) {
        2 => "alert",
        1 => "watch",
        _ => "ok",
    }
}

/// Predictions of one series in one window: label and confidence bin.
#[derive(Row, Deserialize, Debug, Clone)]
struct Cell {
    series: String,
    window: String,
    label: String,
    bin: u8,
    tweets: u64,
    /// Sum of the top probabilities.
    confidence: f64,
}

#[derive(Row, Deserialize)]
struct ProbeCell {
    last_at: String,
    model: String,
    device: String,
    replicas: u64,
    max_deviation: f64,
    flagged: u8,
}

/// One window of a series.
#[derive(Debug, Clone, Serialize)]
pub struct WindowStatus {
    pub window: String,
    pub tweets: u64,
    pub shares: BTreeMap<String, f64>,
    /// PSI of the label distribution.
    pub psi: f64,
    /// PSI of the binned confidence (top probability, tenths).
    pub confidence_psi: f64,
    pub mean_confidence: f64,
    pub level: &'static str,
}

/// A series (the champion, or one version's own predictions) against its reference.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesStatus {
    /// `champion` or `NAME@VERSION#HASH`.
    pub series: String,
    pub reference: String,
    pub reference_tweets: u64,
    pub windows: Vec<WindowStatus>,
}

impl SeriesStatus {
    pub fn latest(&self) -> Option<&WindowStatus> {
        self.windows.last()
    }
}

/// Champion vs one shadow in one window.
#[derive(Debug, Clone, Serialize)]
pub struct AgreementStatus {
    pub window: String,
    pub shadow: String,
    pub tweets: u64,
    pub agreement: f64,
    pub kappa: f64,
}

/// Probe runs of a version on a device over the last [`PROBE_WINDOW_HOURS`].
#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    /// The latest run.
    pub at: String,
    pub model: String,
    pub device: String,
    /// Replicas that ran it.
    pub replicas: u64,
    /// Largest change against the first or previous run, over the runs.
    pub max_deviation: f64,
    /// Any run flagged.
    pub flagged: bool,
}

/// One text descriptor of the stored tweets (length, links, mentions, hashtags) in one window
/// against the reference: the input side of drift, next to the labels' PSI.
#[derive(Debug, Clone, Serialize)]
pub struct InputDrift {
    pub window: String,
    pub descriptor: String,
    pub psi: f64,
    pub level: &'static str,
}

/// Probe runs older than this no longer count (replicas come and go; an old flag was seen).
pub const PROBE_WINDOW_HOURS: u32 = 24;

/// What `vaxpulse monitor` found.
#[derive(Debug, Clone, Serialize)]
pub struct MonitorReport {
    pub period: &'static str,
    pub champion: SeriesStatus,
    /// Each version's own predictions (champion and shadow roles alike) against its first days.
    pub versions: Vec<SeriesStatus>,
    /// Every window with shadow predictions, oldest first.
    pub agreement: Vec<AgreementStatus>,
    /// Label flips (shadow, champion label, shadow label, tweets) in the latest agreement window.
    pub flips: Vec<(String, String, String, u64)>,
    pub probes: Vec<ProbeStatus>,
    /// Text descriptors per recent window vs the reference (informational: not in
    /// [`MonitorReport::worst`], since a change of topic is not a model fault).
    pub input: Vec<InputDrift>,
}

impl MonitorReport {
    /// The worst level: champion windows after the reference, each version's latest window,
    /// probe flags (alert).
    pub fn worst(&self) -> &'static str {
        worst(
            self.champion
                .windows
                .iter()
                .map(|w| w.level)
                .chain(
                    self.versions
                        .iter()
                        .filter_map(|v| v.latest().map(|w| w.level)),
                )
                .chain(self.probes.iter().filter(|p| p.flagged).map(|_| "alert")),
        )
    }

    /// The latest agreement window's rows.
    pub fn latest_agreement(&self) -> Vec<&AgreementStatus> {
        let last = self.agreement.last().map(|a| a.window.clone());
        self.agreement
            .iter()
            .filter(|a| Some(&a.window) == last.as_ref())
            .collect()
    }

    /// Sets the drift and agreement gauges (and logs the level) from this report.
    pub fn emit_gauges(&self) {
        let drift: Vec<(&str, f64, f64)> = std::iter::once(&self.champion)
            .chain(&self.versions)
            .filter_map(|s| {
                s.latest()
                    .map(|w| (s.series.as_str(), w.psi, w.confidence_psi))
            })
            .collect();
        let agreement: Vec<(&str, f64, f64)> = self
            .latest_agreement()
            .into_iter()
            .map(|a| (a.shadow.as_str(), a.agreement, a.kappa))
            .collect();
        crate::telemetry::MonitorObserved {
            drift: &drift,
            agreement: &agreement,
            level: self.worst(),
            champion_psi: self.champion.latest().map_or(0.0, |w| w.psi),
        }
        .emit();
    }
}

/// Counts of one series keyed by window, indexed by label and by confidence bin.
struct Counts {
    labels: Vec<u64>,
    bins: Vec<u64>,
    confidence_sum: f64,
}

fn series_status(
    series: String,
    cells: &[&Cell],
    labels: &[String],
    reference_days: u32,
    pinned: Option<(DateTime<Utc>, DateTime<Utc>)>,
) -> SeriesStatus {
    let (from, to) = pinned.unwrap_or_else(|| {
        let first = cells
            .iter()
            .filter_map(|c| parse_window(&c.window))
            .min()
            .unwrap_or_else(Utc::now);
        (
            first,
            first + chrono::Duration::days(i64::from(reference_days)),
        )
    });
    let index = |l: &str| labels.iter().position(|x| x == l).unwrap_or(0);
    let empty = || Counts {
        labels: vec![0; labels.len()],
        bins: vec![0; CONFIDENCE_BINS],
        confidence_sum: 0.0,
    };
    let mut reference = empty();
    let mut windows: BTreeMap<String, Counts> = BTreeMap::new();
    for c in cells {
        let in_reference = parse_window(&c.window).is_some_and(|t| t >= from && t < to);
        let counts = if in_reference {
            &mut reference
        } else {
            windows.entry(c.window.clone()).or_insert_with(empty)
        };
        let bin = usize::from(c.bin).min(CONFIDENCE_BINS - 1);
        counts.labels[index(&c.label)] += c.tweets;
        counts.bins[bin] += c.tweets;
        counts.confidence_sum += c.confidence;
    }
    let reference_tweets = reference.labels.iter().sum();
    let windows = if reference_tweets == 0 {
        Vec::new()
    } else {
        windows
            .into_iter()
            .map(|(window, c)| {
                let n: u64 = c.labels.iter().sum();
                let (p, cp) = (
                    psi(&reference.labels, &c.labels),
                    psi(&reference.bins, &c.bins),
                );
                WindowStatus {
                    window,
                    tweets: n,
                    shares: labels
                        .iter()
                        .zip(&c.labels)
                        .map(|(l, &k)| (l.clone(), k as f64 / n.max(1) as f64))
                        .collect(),
                    psi: p,
                    confidence_psi: cp,
                    mean_confidence: c.confidence_sum / n.max(1) as f64,
                    level: worst([level(p), level(cp)]),
                }
            })
            .collect()
    };
    SeriesStatus {
        series,
        reference: format!(
            "{} .. {}",
            from.format("%Y-%m-%d %H:%M"),
            to.format("%Y-%m-%d %H:%M")
        ),
        reference_tweets,
        windows,
    }
}

fn parse_window(s: &str) -> Option<DateTime<Utc>> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_matches_hand_computed_values() {
        assert_eq!(psi(&[30, 30, 40], &[30, 30, 40]), 0.0);
        // Shares 0.5/0.5 → 0.7/0.3: (0.2)·ln(1.4) + (−0.2)·ln(0.6) = 0.0672944 + 0.1021651.
        let p = psi(&[50, 50], &[70, 30]);
        assert!((p - 0.169_459_5).abs() < 1e-6, "{p}");
        assert_eq!(level(p), "watch");
        // A category that vanishes is floored, not infinite.
        let p = psi(&[50, 50], &[100, 0]);
        assert!(p.is_finite() && p > PSI_ALERT, "{p}");
        assert_eq!(level(0.05), "ok");
    }

    fn cell(window: &str, label: &str, bin: u8, tweets: u64) -> Cell {
        Cell {
            series: "s".into(),
            window: window.into(),
            label: label.into(),
            bin,
            tweets,
            // Every tweet at the bin's middle.
            confidence: (f64::from(bin) + 0.5) / 10.0 * tweets as f64,
        }
    }

    #[test]
    fn a_series_is_compared_with_its_first_days_on_labels_and_confidence() {
        let labels = vec!["a".to_string(), "b".to_string()];
        let cells = [
            // Reference day: labels 50/50, confidence all in bin 9.
            cell("2026-11-01 00:00:00", "a", 9, 50),
            cell("2026-11-01 00:00:00", "b", 9, 50),
            // Same labels, confidence moved to bin 5: only the confidence PSI moves.
            cell("2026-11-02 00:00:00", "a", 5, 50),
            cell("2026-11-02 00:00:00", "b", 5, 50),
            // Labels 70/30, confidence unchanged.
            cell("2026-11-03 00:00:00", "a", 9, 70),
            cell("2026-11-03 00:00:00", "b", 9, 30),
        ];
        let s = series_status(
            "s".into(),
            &cells.iter().collect::<Vec<_>>(),
            &labels,
            1,
            None,
        );
        assert_eq!(s.reference_tweets, 100);
        assert_eq!(s.windows.len(), 2);
        let (w2, w3) = (&s.windows[0], &s.windows[1]);
        assert_eq!(w2.psi, 0.0);
        // Bin 9 share 1 → 1e-4 floor, bin 5 share 1e-4 → 1: 2 · (1 − 1e-4) · ln(1e4).
        let expected = 2.0 * (1.0 - 1e-4) * (1e4f64).ln();
        assert!(
            (w2.confidence_psi - expected).abs() < 1e-9,
            "{}",
            w2.confidence_psi
        );
        assert_eq!(w2.level, "alert");
        assert!((w2.mean_confidence - 0.55).abs() < 1e-12);
        assert!((w3.psi - 0.169_459_5).abs() < 1e-6);
        assert_eq!(w3.confidence_psi, 0.0);
        assert_eq!(w3.level, "watch");
        assert!((w3.shares["a"] - 0.7).abs() < 1e-12);
    }

    #[test]
    fn probe_flags_and_version_alerts_make_the_report_alert() {
        let labels = vec!["a".to_string()];
        let cells = [cell("2026-11-01 00:00:00", "a", 9, 10)];
        let champion = series_status(
            "champion".into(),
            &cells.iter().collect::<Vec<_>>(),
            &labels,
            1,
            None,
        );
        let mut r = MonitorReport {
            period: "day",
            champion,
            versions: Vec::new(),
            agreement: Vec::new(),
            flips: Vec::new(),
            input: Vec::new(),
            probes: vec![ProbeStatus {
                at: "2026-11-01 00:00:00".into(),
                model: "demo@1#abc".into(),
                device: "cpu".into(),
                replicas: 1,
                max_deviation: 0.0,
                flagged: false,
            }],
        };
        assert_eq!(r.worst(), "ok");
        r.probes[0].flagged = true;
        assert_eq!(r.worst(), "alert");
        assert!(r.render().contains("status: alert"));
    }
}
