//! `vaxpulse report`: tweets per day (or hour) × label from ClickHouse, as a table for the
//! terminal: the champion series (`champion_hourly`, one label per tweet), or one version's own
//! predictions (`opinion_hourly`).

use clickhouse::Row;
use serde::Deserialize;

use crate::sink::clickhouse::ClickHouseSink;

#[derive(Row, Deserialize, Debug)]
struct Cell {
    period: String,
    label: String,
    tweets: u64,
}

/// Prints and returns the table (rows = periods, columns = labels, then total).
pub async fn report(
    sink: &ClickHouseSink,
    by_hour: bool,
    model_version: Option<&str>,
) -> anyhow::Result<String> {
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
                 FROM champion_hourly GROUP BY period, label ORDER BY period, label"
            );
            sink.client().query(&sql).fetch_all().await?
        }
        Some(mv) => {
            let sql = format!(
                "SELECT formatDateTime({bucket}, '{fmt}') AS period, toString(label) AS label, uniqExactMerge(tweets) AS tweets
                 FROM opinion_hourly WHERE model_version = ?
                 GROUP BY period, label ORDER BY period, label"
            );
            sink.client().query(&sql).bind(mv).fetch_all().await?
        }
    };
    let mut labels: Vec<String> = cells.iter().map(|c| c.label.clone()).collect();
    labels.sort();
    labels.dedup();
    let mut periods: Vec<String> = cells.iter().map(|c| c.period.clone()).collect();
    periods.dedup();
    let mut out = format!("| {} |", if by_hour { "hour" } else { "day" });
    for l in &labels {
        out.push_str(&format!(" {l} |"));
    }
    out.push_str(" total |\n|---|");
    out.push_str(&"---:|".repeat(labels.len() + 1));
    out.push('\n');
    let mut totals = vec![0u64; labels.len()];
    for p in &periods {
        out.push_str(&format!("| {p} |"));
        let mut sum = 0;
        for (i, l) in labels.iter().enumerate() {
            let n = cells
                .iter()
                .find(|c| &c.period == p && &c.label == l)
                .map_or(0, |c| c.tweets);
            totals[i] += n;
            sum += n;
            out.push_str(&format!(" {n} |"));
        }
        out.push_str(&format!(" {sum} |\n"));
    }
    out.push_str("| **all** |");
    for t in &totals {
        out.push_str(&format!(" {t} |"));
    }
    out.push_str(&format!(" {} |\n", totals.iter().sum::<u64>()));
    Ok(out)
}
