//! `vaxpulse report`: tweets per day (or hour) × label from ClickHouse — the champion series
//! (`champion_hourly`, one label per tweet) or one version's own predictions
//! (`opinion_hourly_counts`) — as a table, CSV or JSON, and as a chart (`chart::opinion`).

use clickhouse::Row;
use serde::{Deserialize, Serialize};

use crate::sink::clickhouse::schema::{CHAMPION_HOURLY, OPINION_HOURLY_COUNTS};
use crate::sink::clickhouse::ClickHouseSink;

#[derive(Row, Deserialize, Debug)]
struct Cell {
    period: String,
    label: String,
    tweets: u64,
}

/// How `vaxpulse report` prints its numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// Tweets per period × label: `counts[p][l]` for `periods[p]`, `labels[l]`.
#[derive(Debug, Clone, Serialize)]
pub struct Opinion {
    /// Whose predictions: `champion` or a model version.
    pub series: String,
    /// `hour` or `day`.
    pub period: &'static str,
    /// `YYYY-MM-DD` or `YYYY-MM-DD HH:00`, ascending, without gaps filled.
    pub periods: Vec<String>,
    pub labels: Vec<String>,
    pub counts: Vec<Vec<u64>>,
}

impl Opinion {
    fn from_cells(series: String, by_hour: bool, cells: Vec<Cell>) -> Self {
        let mut labels: Vec<String> = cells.iter().map(|c| c.label.clone()).collect();
        labels.sort();
        labels.dedup();
        let mut periods: Vec<String> = cells.iter().map(|c| c.period.clone()).collect();
        periods.dedup();
        let mut counts = vec![vec![0u64; labels.len()]; periods.len()];
        for c in cells {
            let p = periods.iter().position(|p| *p == c.period);
            let l = labels.iter().position(|l| *l == c.label);
            if let (Some(p), Some(l)) = (p, l) {
                counts[p][l] += c.tweets;
            }
        }
        Opinion {
            series,
            period: if by_hour { "hour" } else { "day" },
            periods,
            labels,
            counts,
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().flatten().sum()
    }

    /// Markdown table: periods × labels, a total column and an `all` row.
    pub fn table(&self) -> String {
        let mut out = format!("| {} |", self.period);
        for l in &self.labels {
            out.push_str(&format!(" {l} |"));
        }
        out.push_str(" total |\n|---|");
        out.push_str(&"---:|".repeat(self.labels.len() + 1));
        out.push('\n');
        let mut totals = vec![0u64; self.labels.len()];
        for (p, row) in self.periods.iter().zip(&self.counts) {
            out.push_str(&format!("| {p} |"));
            for (i, n) in row.iter().enumerate() {
                totals[i] += n;
                out.push_str(&format!(" {n} |"));
            }
            out.push_str(&format!(" {} |\n", row.iter().sum::<u64>()));
        }
        out.push_str("| **all** |");
        for t in &totals {
            out.push_str(&format!(" {t} |"));
        }
        out.push_str(&format!(" {} |\n", self.total()));
        out
    }

    /// `period,label,tweets,share` rows (long form: what spreadsheets and pandas pivot best).
    pub fn csv(&self) -> String {
        let mut out = String::from("period,label,tweets,share\n");
        for (p, row) in self.periods.iter().zip(&self.counts) {
            let n = row.iter().sum::<u64>().max(1) as f64;
            for (l, c) in self.labels.iter().zip(row) {
                out.push_str(&format!("{p},{l},{c},{:.6}\n", *c as f64 / n));
            }
        }
        out
    }

    pub fn render(&self, format: Format) -> anyhow::Result<String> {
        Ok(match format {
            Format::Table => self.table(),
            Format::Csv => self.csv(),
            Format::Json => serde_json::to_string_pretty(self)? + "\n",
        })
    }
}

/// Reads the counts per day (or hour) of the champion series, or of `model_version`'s own
/// predictions, from `since` on (else the whole history): a filter on the hour, which both
/// views' keys start with, so the rows read follow the window.
pub async fn opinion(
    sink: &ClickHouseSink,
    by_hour: bool,
    model_version: Option<&str>,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<Opinion> {
    let since = since.map_or(String::new(), |t| {
        format!(
            " AND hour >= toDateTime('{}', 'UTC')",
            t.format("%Y-%m-%d %H:%M:%S")
        )
    });
    let where_since = since.replacen(" AND", " WHERE", 1);
    let fmt = if by_hour {
        "%Y-%m-%d %H:00"
    } else {
        "%Y-%m-%d"
    };
    let bucket = if by_hour {
        "hour"
    } else {
        "toStartOfDay(hour)"
    };
    let cells: Vec<Cell> = match model_version {
        None => {
            let sql = format!(
                "SELECT formatDateTime({bucket}, '{fmt}') AS period, toString(label) AS label, toUInt64(sum(tweets)) AS tweets
                 FROM {CHAMPION_HOURLY}{where_since} GROUP BY period, label ORDER BY period, label"
            );
            sink.client().query(&sql).fetch_all().await?
        }
        Some(mv) => {
            let sql = format!(
                "SELECT formatDateTime({bucket}, '{fmt}') AS period, toString(label) AS label, toUInt64(sum(tweets)) AS tweets
                 FROM {OPINION_HOURLY_COUNTS} WHERE model_version = ?{since}
                 GROUP BY period, label ORDER BY period, label"
            );
            sink.client().query(&sql).bind(mv).fetch_all().await?
        }
    };
    let series = model_version.unwrap_or("champion").to_string();
    anyhow::ensure!(
        !cells.is_empty(),
        "no predictions of {series} in database {} yet (run the worker, or check --model-version against `vaxpulse models list`)",
        sink.database()
    );
    Ok(Opinion::from_cells(series, by_hour, cells))
}

/// The champion (or `model_version`) table, as `vaxpulse report` prints it by default.
pub async fn report(
    sink: &ClickHouseSink,
    by_hour: bool,
    model_version: Option<&str>,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<String> {
    Ok(opinion(sink, by_hour, model_version, since).await?.table())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Opinion {
        let cell = |p: &str, l: &str, n| Cell {
            period: p.into(),
            label: l.into(),
            tweets: n,
        };
        Opinion::from_cells(
            "champion".into(),
            false,
            vec![
                cell("2026-11-30", "against", 1),
                cell("2026-11-30", "favour", 3),
                cell("2026-12-01", "neutral", 2),
            ],
        )
    }

    #[test]
    fn cells_pivot_into_periods_by_labels_with_zeros_filled() {
        let o = sample();
        assert_eq!(o.periods, ["2026-11-30", "2026-12-01"]);
        assert_eq!(o.labels, ["against", "favour", "neutral"]);
        assert_eq!(o.counts, [[1, 3, 0], [0, 0, 2]]);
        assert_eq!(o.total(), 6);
        assert!(o.table().contains("| **all** | 1 | 3 | 2 | 6 |"));
        let csv = o.csv();
        assert!(csv.starts_with("period,label,tweets,share\n2026-11-30,against,1,0.250000\n"));
        assert!(csv.contains("2026-12-01,neutral,2,1.000000\n"));
        let json: serde_json::Value =
            serde_json::from_str(&o.render(Format::Json).unwrap()).unwrap();
        assert_eq!(json["counts"][0][1], 3);
    }
}
