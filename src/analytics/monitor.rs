//! Prediction stability from ClickHouse, for `vaxpulse monitor`, the worker's monitor gauges and
//! the drift chart. Per window (hour or day): the champion's label distribution and the
//! population stability index (PSI) of its labels and of its binned confidence against a
//! reference (the first `reference_days` days of data, or a pinned range); the same per model
//! version against that version's own first days; champion–shadow agreement, kappa and the
//! label-flip matrix; the latest probe run of each version on each replica. The command exits 2
//! when anything is on alert (PSI ≥ 0.25, or a probe flag), 1 on an error, so a cron job or CI
//! step can act on it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};

use crate::output::Table;
use crate::sink::clickhouse::schema::{
    AGREEMENT_DAILY, AGREEMENT_HOURLY, CHAMPION_PREDICTIONS, PREDICTIONS, PROBE_RUNS,
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
struct AgreementCell {
    window: String,
    shadow_version: String,
    shadow_hash: String,
    tweets: u64,
    agreement: f64,
    kappa: f64,
}

#[derive(Row, Deserialize)]
struct FlipCell {
    shadow: String,
    champion_label: String,
    shadow_label: String,
    tweets: u64,
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

    pub fn render(&self) -> String {
        let c = &self.champion;
        let labels: Vec<String> = c
            .windows
            .iter()
            .flat_map(|w| w.shares.keys().cloned())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut header = vec!["window", "tweets"];
        header.extend(labels.iter().map(String::as_str));
        header.extend(["mean conf.", "PSI labels", "PSI conf.", "level"]);
        let mut t = Table::new(&header);
        for w in &c.windows {
            let mut row = vec![w.window.clone(), w.tweets.to_string()];
            row.extend(
                labels
                    .iter()
                    .map(|l| format!("{:.3}", w.shares.get(l).copied().unwrap_or(0.0))),
            );
            row.push(format!("{:.3}", w.mean_confidence));
            row.push(format!("{:.4}", w.psi));
            row.push(format!("{:.4}", w.confidence_psi));
            row.push(w.level.into());
            t.row(row);
        }
        let mut out = format!(
            "## monitor: champion per {} vs reference {} ({} tweets); PSI watch ≥ {PSI_WATCH}, alert ≥ {PSI_ALERT}\n\n{}",
            self.period,
            c.reference,
            c.reference_tweets,
            t.render()
        );
        if !self.versions.is_empty() {
            let mut t = Table::new(&[
                "version",
                "reference tweets",
                "latest window",
                "tweets",
                "PSI labels",
                "PSI conf.",
                "level",
            ]);
            for v in &self.versions {
                if let Some(w) = v.latest() {
                    t.row(vec![
                        v.series.clone(),
                        v.reference_tweets.to_string(),
                        w.window.clone(),
                        w.tweets.to_string(),
                        format!("{:.4}", w.psi),
                        format!("{:.4}", w.confidence_psi),
                        w.level.into(),
                    ]);
                } else {
                    t.row(vec![
                        v.series.clone(),
                        v.reference_tweets.to_string(),
                        "(reference only)".into(),
                        String::new(),
                        String::new(),
                        String::new(),
                        "ok".into(),
                    ]);
                }
            }
            out.push_str("\n### each version against its own first days\n\n");
            out.push_str(&t.render());
        }
        let latest = self.latest_agreement();
        if !latest.is_empty() {
            let mut t = Table::new(&["window", "shadow", "tweets", "agreement", "kappa"]);
            for a in latest {
                t.row(vec![
                    a.window.clone(),
                    a.shadow.clone(),
                    a.tweets.to_string(),
                    format!("{:.4}", a.agreement),
                    format!("{:.4}", a.kappa),
                ]);
            }
            out.push_str("\n### champion vs shadows, latest window\n\n");
            out.push_str(&t.render());
            let mut t = Table::new(&["shadow", "champion label", "shadow label", "tweets"]);
            for (s, cl, sl, n) in self.flips.iter().filter(|f| f.1 != f.2) {
                t.row(vec![s.clone(), cl.clone(), sl.clone(), n.to_string()]);
            }
            if !t.rows.is_empty() {
                out.push_str("\n### label flips, latest window\n\n");
                out.push_str(&t.render());
            }
        }
        if !self.probes.is_empty() {
            let mut t = Table::new(&[
                "version",
                "device",
                "replicas",
                "latest run",
                "max |Δp| vs first/previous run",
                "flag",
            ]);
            for p in &self.probes {
                t.row(vec![
                    p.model.clone(),
                    p.device.clone(),
                    p.replicas.to_string(),
                    p.at.clone(),
                    format!("{:.2e}", p.max_deviation),
                    if p.flagged { "alert" } else { "ok" }.into(),
                ]);
            }
            out.push_str(&format!(
                "\n### probe set, runs of the last {PROBE_WINDOW_HOURS} h\n\n"
            ));
            out.push_str(&t.render());
        }
        out.push_str(&format!("\nstatus: {}\n", self.worst()));
        out
    }

    /// The drift chart's data: champion PSI (labels, confidence) and agreement per shadow.
    pub fn drift_chart(&self) -> crate::analytics::chart::Drift {
        let windows: Vec<String> = self
            .champion
            .windows
            .iter()
            .map(|w| w.window.clone())
            .chain(self.agreement.iter().map(|a| a.window.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let at = |w: &str| windows.iter().position(|x| x == w);
        let mut labels = vec![None; windows.len()];
        let mut conf = vec![None; windows.len()];
        for w in &self.champion.windows {
            if let Some(i) = at(&w.window) {
                labels[i] = Some(w.psi);
                conf[i] = Some(w.confidence_psi);
            }
        }
        let mut shadows: BTreeMap<String, Vec<Option<f64>>> = BTreeMap::new();
        for a in &self.agreement {
            if let Some(i) = at(&a.window) {
                shadows
                    .entry(a.shadow.clone())
                    .or_insert_with(|| vec![None; windows.len()])[i] = Some(a.agreement);
            }
        }
        crate::analytics::chart::Drift {
            title: format!(
                "Champion drift per {} (reference {}) and agreement with shadows",
                self.period, self.champion.reference
            ),
            windows,
            psi: vec![
                crate::analytics::chart::Line {
                    name: "PSI of labels".into(),
                    values: labels,
                },
                crate::analytics::chart::Line {
                    name: "PSI of confidence".into(),
                    values: conf,
                },
            ],
            agreement: shadows
                .into_iter()
                .map(|(name, values)| crate::analytics::chart::Line {
                    name: format!("agreement {name}"),
                    values,
                })
                .collect(),
            watch: PSI_WATCH,
            alert: PSI_ALERT,
        }
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

/// Reads the series per `day` (else hour) window; each reference is `[from, to)` when pinned,
/// else the first `reference_days` days of that series.
pub async fn monitor(
    sink: &ClickHouseSink,
    day: bool,
    reference_days: u32,
    pinned: Option<(DateTime<Utc>, DateTime<Utc>)>,
) -> anyhow::Result<MonitorReport> {
    let bucket = if day {
        "toStartOfDay(created_at)"
    } else {
        "toStartOfHour(created_at)"
    };
    // Per window, label and confidence bin: tweets and the sum of their top probabilities.
    let cell = format!(
        "toString({bucket}) AS window, toString(label) AS label,
         toUInt8(least(floor(arrayMax(mapValues(scores)) * {CONFIDENCE_BINS}), {})) AS bin,
         count() AS tweets, sum(toFloat64(arrayMax(mapValues(scores)))) AS confidence",
        CONFIDENCE_BINS - 1
    );
    let champion: Vec<Cell> = sink
        .client()
        .query(&format!(
            "SELECT 'champion' AS series, {cell}
             FROM {CHAMPION_PREDICTIONS} GROUP BY window, label, bin ORDER BY window, label, bin"
        ))
        .fetch_all()
        .await?;
    anyhow::ensure!(
        !champion.is_empty(),
        "no champion predictions in database {} yet: nothing to monitor",
        sink.database()
    );
    // One prediction per tweet and version, whichever role produced it.
    let versions: Vec<Cell> = sink
        .client()
        .query(&format!(
            "SELECT concat(model_version, '#', model_hash) AS series, {cell}
             FROM (SELECT model_version, model_hash, tweet_id, any(created_at) AS created_at,
                          any(label) AS label, any(scores) AS scores
                   FROM {PREDICTIONS} GROUP BY model_version, model_hash, tweet_id)
             GROUP BY series, window, label, bin ORDER BY series, window, label, bin"
        ))
        .fetch_all()
        .await?;
    let labels: Vec<String> = champion
        .iter()
        .chain(&versions)
        .map(|c| c.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let champion_status = series_status(
        "champion".into(),
        &champion.iter().collect::<Vec<_>>(),
        &labels,
        reference_days,
        pinned,
    );
    anyhow::ensure!(
        champion_status.reference_tweets > 0,
        "the reference {} holds no champion predictions: pin another with --reference-from/--reference-to",
        champion_status.reference
    );
    let mut by_version: BTreeMap<&str, Vec<&Cell>> = BTreeMap::new();
    for c in &versions {
        by_version.entry(c.series.as_str()).or_default().push(c);
    }
    let versions = by_version
        .into_iter()
        .map(|(s, cells)| series_status(s.to_string(), &cells, &labels, reference_days, pinned))
        .collect();

    let view = if day {
        AGREEMENT_DAILY
    } else {
        AGREEMENT_HOURLY
    };
    let agreement: Vec<AgreementCell> = sink
        .client()
        .query(&format!(
            "SELECT toString(window) AS window, shadow_version, shadow_hash, tweets, agreement, kappa
             FROM {view} ORDER BY window, shadow_version, shadow_hash"
        ))
        .fetch_all()
        .await?;
    let agreement: Vec<AgreementStatus> = agreement
        .into_iter()
        .map(|a| AgreementStatus {
            window: a.window,
            shadow: format!("{}#{}", a.shadow_version, a.shadow_hash),
            tweets: a.tweets,
            agreement: a.agreement,
            kappa: a.kappa,
        })
        .collect();
    let flips: Vec<FlipCell> = match agreement.last() {
        None => Vec::new(),
        Some(last) => {
            sink.client()
                .query(&format!(
                    "SELECT concat(s.model_version, '#', s.model_hash) AS shadow,
                            toString(c.label) AS champion_label, toString(s.label) AS shadow_label,
                            count() AS tweets
                     FROM {CHAMPION_PREDICTIONS} AS c
                     INNER JOIN (SELECT tweet_id, model_version, model_hash, label
                                 FROM {PREDICTIONS} FINAL WHERE role = 'shadow') AS s
                     USING (tweet_id)
                     WHERE toString({}) = ?
                     GROUP BY shadow, champion_label, shadow_label
                     ORDER BY shadow, champion_label, shadow_label",
                    bucket.replace("created_at", "c.created_at"),
                ))
                .bind(&last.window)
                .fetch_all()
                .await?
        }
    };
    let probes: Vec<ProbeCell> = sink
        .client()
        .query(&format!(
            "SELECT toString(max(at)) AS last_at, concat(model_version, '#', model_hash) AS model,
                    toString(device) AS device, uniqExact(replica) AS replicas,
                    max(greatest(max_deviation, max_deviation_previous)) AS max_deviation,
                    max(flagged) AS flagged
             FROM {PROBE_RUNS} WHERE at >= now() - INTERVAL {PROBE_WINDOW_HOURS} HOUR
             GROUP BY model, device ORDER BY model, device"
        ))
        .fetch_all()
        .await?;
    Ok(MonitorReport {
        period: if day { "day" } else { "hour" },
        champion: champion_status,
        versions,
        agreement,
        flips: flips
            .into_iter()
            .map(|f| (f.shadow, f.champion_label, f.shadow_label, f.tweets))
            .collect(),
        probes: probes
            .into_iter()
            .map(|p| ProbeStatus {
                at: p.last_at,
                model: p.model,
                device: p.device,
                replicas: p.replicas,
                max_deviation: p.max_deviation,
                flagged: p.flagged != 0,
            })
            .collect(),
    })
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
