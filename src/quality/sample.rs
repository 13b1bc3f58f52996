//! Draws a sample of recent traffic for annotation, in ClickHouse, reading only the window's
//! hours. Poisson sampling: every champion-scored tweet of the window is in with a probability
//! set by its stratum — `disagreement` (a shadow gave another label), `low_confidence` (the
//! champion's top probability below `quality.low_confidence_below`), `rest` — and that
//! probability is stored with it, so the estimates in [`super::report`] weight each label by
//! its inverse and estimate the stream, not the sample. The draw is a hash of the tweet id and
//! the sample id: the same sample id draws the same tweets again (a retried insert adds
//! nothing).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::QualityConfig;
use crate::sink::clickhouse::schema::{ANNOTATION_SAMPLES, CHAMPION_LABELS, PREDICTIONS};
use crate::sink::clickhouse::ClickHouseSink;

/// The strata, in the order a tweet is assigned to the first it matches.
pub const STRATA: [&str; 3] = ["disagreement", "low_confidence", "rest"];

/// Tweets of the window per stratum, and the inclusion probability each gets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Design {
    pub strata: Vec<(String, u64, f64)>,
}

impl Design {
    /// Rates for `counts` (per [`STRATA`]): `uniform_share` of `size` spread evenly over the
    /// window, the rest split equally between the non-empty informative strata; each
    /// probability capped at 1.
    pub fn new(counts: [u64; 3], size: u64, uniform_share: f64) -> Self {
        let total: u64 = counts.iter().sum();
        let informative = counts[..2].iter().filter(|&&n| n > 0).count();
        let uniform_share = if informative == 0 { 1.0 } else { uniform_share };
        let size = size as f64;
        let u = if total > 0 {
            size * uniform_share / total as f64
        } else {
            0.0
        };
        let extra = size * (1.0 - uniform_share) / informative.max(1) as f64;
        let strata = STRATA
            .iter()
            .zip(counts)
            .enumerate()
            .map(|(i, (name, n))| {
                let p = if n == 0 {
                    0.0
                } else if i < 2 {
                    u + extra / n as f64
                } else {
                    u
                };
                (name.to_string(), n, p.min(1.0))
            })
            .collect();
        Design { strata }
    }

    pub fn expected_size(&self) -> f64 {
        self.strata.iter().map(|(_, n, p)| *n as f64 * p).sum()
    }

    fn rate(&self, i: usize) -> f64 {
        self.strata[i].2
    }
}

/// A drawn sample.
#[derive(Debug, Clone, Serialize)]
pub struct Drawn {
    pub sample_id: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub design: Design,
    /// Tweets drawn, per stratum.
    pub drawn: Vec<(String, u64)>,
}

/// The window's tweets with their stratum: the champion's label and confidence per tweet
/// joined with the shadows' labels of the same hours (both sides pruned to the window by key).
fn strata_sql(db: &str, low_below: f64) -> String {
    format!(
        "SELECT c.hour AS hour, c.tweet_id AS tweet_id,
                multiIf(notEmpty(s.labels) AND arrayExists(l -> l != c.label, s.labels), 0,
                        c.confidence < {low_below}, 1, 2) AS stratum_idx
         FROM (SELECT hour, tweet_id, label, arrayMax(mapValues(scores)) AS confidence
               FROM {db}.{CHAMPION_LABELS} FINAL
               WHERE hour >= toDateTime(?, 'UTC') AND hour < toDateTime(?, 'UTC')) AS c
         LEFT JOIN (SELECT toStartOfHour(created_at) AS hour, tweet_id, groupUniqArray(label) AS labels
                    FROM {db}.{PREDICTIONS} FINAL
                    WHERE role = 'shadow'
                      AND toStartOfHour(created_at) >= toDateTime(?, 'UTC')
                      AND toStartOfHour(created_at) < toDateTime(?, 'UTC')
                    GROUP BY hour, tweet_id) AS s
         USING (hour, tweet_id)"
    )
}

fn ts(t: DateTime<Utc>) -> i64 {
    t.timestamp()
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct StratumCount {
    stratum: u8,
    tweets: u64,
}

/// Draws sample `sample_id` from the champion's tweets created in `[from, to)` (whole hours).
pub async fn draw(
    sink: &ClickHouseSink,
    q: &QualityConfig,
    sample_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<Drawn> {
    anyhow::ensure!(
        !sample_id.is_empty() && sample_id.len() <= 64,
        "a sample id is 1 to 64 characters"
    );
    let db = sink.database();
    let strata = strata_sql(db, q.low_confidence_below);
    let bind4 = |sql: &str| {
        sink.client()
            .query(sql)
            .bind(ts(from))
            .bind(ts(to))
            .bind(ts(from))
            .bind(ts(to))
    };
    let counted = bind4(&format!(
        "SELECT stratum_idx AS stratum, count() AS tweets FROM ({strata}) GROUP BY stratum_idx"
    ))
    .fetch_all::<StratumCount>()
    .await?;
    let mut counts = [0u64; 3];
    for c in counted {
        counts[usize::from(c.stratum).min(2)] = c.tweets;
    }
    anyhow::ensure!(
        counts.iter().sum::<u64>() > 0,
        "no champion predictions between {from} and {to}: nothing to sample (is the worker storing results in {db}?)"
    );
    let design = Design::new(counts, q.sample_size, q.uniform_share);
    // A tweet is in when a uniform number drawn from (tweet, sample) falls below its rate.
    let insert = format!(
        "INSERT INTO {db}.{ANNOTATION_SAMPLES} (sample_id, drawn_at, tweet_id, hour, stratum, inclusion_prob, double)
         SELECT ? AS sample_id, now64(3) AS drawn_at, tweet_id, hour,
                [{names}][stratum_idx + 1] AS stratum, [{rates}][stratum_idx + 1] AS inclusion_prob,
                toUInt8(cityHash64(tweet_id, sample_id, 'double') / 18446744073709551616.0 < {double})
         FROM ({strata})
         WHERE cityHash64(tweet_id, ?) / 18446744073709551616.0 < [{rates}][stratum_idx + 1]",
        names = STRATA.map(|s| format!("'{s}'")).join(","),
        rates = (0..3)
            .map(|i| format!("{:.17}", design.rate(i)))
            .collect::<Vec<_>>()
            .join(","),
        double = q.double_share,
    );
    sink.client()
        .query(&insert)
        .bind(sample_id)
        .bind(ts(from))
        .bind(ts(to))
        .bind(ts(from))
        .bind(ts(to))
        .bind(sample_id)
        .with_setting("insert_deduplication_token", format!("sample-{sample_id}"))
        .execute()
        .await?;
    let drawn = sink
        .client()
        .query(&format!(
            "SELECT stratum, count() AS tweets FROM {db}.{ANNOTATION_SAMPLES} FINAL
             WHERE sample_id = ? GROUP BY stratum"
        ))
        .bind(sample_id)
        .fetch_all::<(String, u64)>()
        .await?;
    Ok(Drawn {
        sample_id: sample_id.into(),
        from,
        to,
        design,
        drawn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_design_spends_the_budget_and_oversamples_the_informative_strata() {
        // 100 000 tweets, 2 000 disagreements, 8 000 low confidence; 200 tweets, half uniform.
        let d = Design::new([2_000, 8_000, 90_000], 200, 0.5);
        let rates: Vec<f64> = d.strata.iter().map(|s| s.2).collect();
        let u = 100.0 / 100_000.0;
        assert!((rates[2] - u).abs() < 1e-15);
        assert!((rates[0] - (u + 50.0 / 2_000.0)).abs() < 1e-15);
        assert!((rates[1] - (u + 50.0 / 8_000.0)).abs() < 1e-15);
        assert!((d.expected_size() - 200.0).abs() < 1e-9);
        // Without shadows nor doubt everything is uniform; a tiny window is taken whole.
        let d = Design::new([0, 0, 1_000], 200, 0.5);
        assert_eq!(d.strata[2].2, 0.2);
        let d = Design::new([3, 0, 10], 200, 0.5);
        assert_eq!((d.strata[0].2, d.strata[2].2), (1.0, 1.0));
    }
}
