//! `vaxpulse monitor`: prediction stability from ClickHouse — per window (hour or day) the
//! champion's label distribution and its population stability index (PSI) against a reference
//! (the first `reference_days` days of data, or a pinned range), and the champion–shadow
//! agreement and kappa of the latest window. The command exits 2 when a window is on alert
//! (PSI ≥ 0.25; a watch is reported, not an exit code), 1 on an error, so a cron job or CI step
//! can act on it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};

use crate::bench::Table;
use crate::sink::clickhouse::ClickHouseSink;

/// PSI at or above which a window is watched.
pub const PSI_WATCH: f64 = 0.1;
/// PSI at or above which a window raises an alert.
pub const PSI_ALERT: f64 = 0.25;

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

#[derive(Row, Deserialize)]
struct Cell {
    window: String,
    label: String,
    tweets: u64,
}

#[derive(Row, Deserialize)]
struct Agreement {
    window: String,
    shadow_version: String,
    tweets: u64,
    agreement: f64,
    kappa: f64,
}

/// One window of the champion series.
#[derive(Debug, Clone, Serialize)]
pub struct WindowStatus {
    pub window: String,
    pub tweets: u64,
    pub shares: BTreeMap<String, f64>,
    pub psi: f64,
    pub level: &'static str,
}

/// What `vaxpulse monitor` found.
#[derive(Debug, Clone, Serialize)]
pub struct MonitorReport {
    pub reference: String,
    pub reference_tweets: u64,
    pub windows: Vec<WindowStatus>,
    /// (window, shadow, tweets, agreement, kappa) of the latest window with shadows.
    pub agreement: Vec<(String, String, u64, f64, f64)>,
}

impl MonitorReport {
    /// The worst level over the windows after the reference.
    pub fn worst(&self) -> &'static str {
        let rank = |l: &str| match l {
            "alert" => 2,
            "watch" => 1,
            _ => 0,
        };
        self.windows
            .iter()
            .map(|w| w.level)
            .max_by_key(|l| rank(l))
            .unwrap_or("ok")
    }

    pub fn render(&self) -> String {
        let labels: Vec<String> = self
            .windows
            .iter()
            .flat_map(|w| w.shares.keys().cloned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut header = vec!["window", "tweets"];
        header.extend(labels.iter().map(String::as_str));
        header.extend(["PSI", "level"]);
        let mut t = Table::new(&header);
        for w in &self.windows {
            let mut row = vec![w.window.clone(), w.tweets.to_string()];
            row.extend(
                labels
                    .iter()
                    .map(|l| format!("{:.3}", w.shares.get(l).copied().unwrap_or(0.0))),
            );
            row.push(format!("{:.4}", w.psi));
            row.push(w.level.into());
            t.row(row);
        }
        let mut out = format!(
            "## monitor: champion label distribution vs reference {} ({} tweets); PSI watch ≥ {PSI_WATCH}, alert ≥ {PSI_ALERT}\n\n{}",
            self.reference,
            self.reference_tweets,
            t.render()
        );
        if !self.agreement.is_empty() {
            let mut t = Table::new(&["window", "shadow", "tweets", "agreement", "kappa"]);
            for (w, s, n, a, k) in &self.agreement {
                t.row(vec![
                    w.clone(),
                    s.clone(),
                    n.to_string(),
                    format!("{a:.4}"),
                    format!("{k:.4}"),
                ]);
            }
            out.push_str("\n### champion vs shadows, latest window\n\n");
            out.push_str(&t.render());
        }
        out.push_str(&format!("\nstatus: {}\n", self.worst()));
        out
    }
}

/// Reads the champion series per `day` (else hour) window; the reference is `[from, to)` when
/// given, else the first `reference_days` days of data.
pub async fn monitor(
    sink: &ClickHouseSink,
    day: bool,
    reference_days: u32,
    pinned: Option<(DateTime<Utc>, DateTime<Utc>)>,
) -> anyhow::Result<MonitorReport> {
    let bucket = if day { "toStartOfDay(hour)" } else { "hour" };
    let cells: Vec<Cell> = sink
        .client()
        .query(&format!(
            "SELECT toString({bucket}) AS window, toString(label) AS label, toUInt64(sum(tweets)) AS tweets
             FROM champion_hourly GROUP BY window, label ORDER BY window, label"
        ))
        .fetch_all()
        .await?;
    anyhow::ensure!(
        !cells.is_empty(),
        "no champion predictions in database {} yet: nothing to monitor",
        sink.database()
    );
    let (from, to) = match pinned {
        Some(p) => p,
        None => {
            let first: DateTime<Utc> = cells
                .first()
                .and_then(|c| parse_window(&c.window))
                .unwrap_or_else(Utc::now);
            (
                first,
                first + chrono::Duration::days(i64::from(reference_days)),
            )
        }
    };
    let mut labels: Vec<String> = cells.iter().map(|c| c.label.clone()).collect();
    labels.sort();
    labels.dedup();
    let index = |l: &str| labels.iter().position(|x| x == l).unwrap_or(0);
    let mut reference = vec![0u64; labels.len()];
    let mut windows: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for c in &cells {
        let at = parse_window(&c.window);
        if at.is_some_and(|t| t >= from && t < to) {
            reference[index(&c.label)] += c.tweets;
        } else {
            windows
                .entry(c.window.clone())
                .or_insert_with(|| vec![0; labels.len()])[index(&c.label)] += c.tweets;
        }
    }
    let reference_tweets = reference.iter().sum();
    anyhow::ensure!(
        reference_tweets > 0,
        "the reference {from} .. {to} holds no champion predictions: pin another with --reference-from/--reference-to"
    );
    let windows = windows
        .into_iter()
        .map(|(window, counts)| {
            let n: u64 = counts.iter().sum();
            let p = psi(&reference, &counts);
            WindowStatus {
                window,
                tweets: n,
                shares: labels
                    .iter()
                    .zip(&counts)
                    .map(|(l, &c)| (l.clone(), c as f64 / n.max(1) as f64))
                    .collect(),
                psi: p,
                level: level(p),
            }
        })
        .collect();
    let view = if day {
        "champion_shadow_agreement_daily"
    } else {
        "champion_shadow_agreement_hourly"
    };
    let agreement: Vec<Agreement> = sink
        .client()
        .query(&format!(
            "SELECT toString(window) AS window, shadow_version, tweets, agreement, kappa FROM {view}
             WHERE window = (SELECT max(window) FROM {view}) ORDER BY shadow_version"
        ))
        .fetch_all()
        .await?;
    Ok(MonitorReport {
        reference: format!("{} .. {}", from.to_rfc3339(), to.to_rfc3339()),
        reference_tweets,
        windows,
        agreement: agreement
            .into_iter()
            .map(|a| (a.window, a.shadow_version, a.tweets, a.agreement, a.kappa))
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
}
