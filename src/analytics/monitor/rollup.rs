//! The monitor's hourly rollup: per hour and series (the champion, each version's own
//! predictions, each shadow against the champion) the cells a report needs — tweets and the sum
//! of top probabilities per label × confidence bin, or tweets per (champion label, shadow label)
//! — and the tweets' text descriptors per bucket ([`INPUT_DESCRIPTORS`], kind `input`) —
//! computed from the deduplicated tables (`FINAL`) and stored in `monitor_hourly`, so a report
//! over 30 days reads 720 small rows per series instead of 30 days of predictions.
//!
//! Exact under replays, promotions and deletions: a row of `monitor_hourly` is the whole hour
//! of one series recomputed from `FINAL`, never an increment; an hour is recomputed whenever
//! anything was written to it (`touched_hours`, filled by a view on `ingest` and by the
//! tombstones of `retention.delete_counts`), and a recompute that finds a series gone writes it
//! empty. [`refresh`] recomputes the hours touched since its last run (with a margin for
//! inserts still in flight), so its cost follows the writes of the moment, not the history.

use super::*;
use crate::sink::clickhouse::schema::{MONITOR_HOURLY, MONITOR_ROLLUPS, TOUCHED_HOURS, TWEETS};

/// Hours touched this long before the last refresh are looked at again: an insert that began
/// before the refresh read `touched_hours` may commit after it (longer than any insert timeout).
pub const MARGIN_S: u32 = 600;
/// Text descriptors of the stored tweets, per hour (the input side of drift): name and the
/// ClickHouse expression of its bucket — length in characters by 40s (the last bucket 280 and
/// more), and whether the text holds a link, a mention, a hashtag.
pub const INPUT_DESCRIPTORS: [(&str, &str); 4] = [
    ("length", "least(intDiv(lengthUTF8(text), 40), 7)"),
    ("url", "multiSearchAny(text, ['http://', 'https://'])"),
    ("mention", "match(text, '(^|[^[:alnum:]_])@[[:alnum:]_]')"),
    ("hashtag", "match(text, '(^|[^[:alnum:]_])#[[:alnum:]_]')"),
];
/// Hours recomputed per statement.
const HOURS_PER_STEP: usize = 168;

/// One cell of one hour and series, as stored.
#[derive(Row, Deserialize, Debug, Clone)]
pub(super) struct Stored {
    pub(super) hour: u32,
    pub(super) kind: String,
    pub(super) series: String,
    /// `label|bin` (or `champion label|shadow label`) → (tweets, sum of top probabilities).
    pub(super) cells: Vec<(String, (u64, f64))>,
}

#[derive(Row, Deserialize)]
struct Touched {
    hour: u32,
    touched: i64,
}

/// What a refresh did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Refreshed {
    pub hours: usize,
}

fn hour_list(hours: &[u32]) -> String {
    hours
        .iter()
        .map(|h| format!("toDateTime({h}, 'UTC')"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Recomputes the hours touched since the last refresh (every hour, the first time).
pub async fn refresh(sink: &ClickHouseSink) -> anyhow::Result<Refreshed> {
    let client = sink.client();
    let last: i64 = client
        .query(&format!(
            "SELECT toInt64(ifNull(max(toUnixTimestamp64Milli(up_to)), 0)) FROM {MONITOR_ROLLUPS}"
        ))
        .fetch_one()
        .await?;
    let since = (last - i64::from(MARGIN_S) * 1000).max(0);
    let touched: Vec<Touched> = client
        .query(&format!(
            "SELECT toUInt32(hour) AS hour, toInt64(max(toUnixTimestamp64Milli(touched_at))) AS touched
             FROM {TOUCHED_HOURS} WHERE touched_at > fromUnixTimestamp64Milli(toInt64(?), 'UTC')
             GROUP BY hour ORDER BY hour"
        ))
        .bind(since)
        .fetch_all()
        .await?;
    let Some(up_to) = touched.iter().map(|t| t.touched).max() else {
        return Ok(Refreshed::default());
    };
    let hours: Vec<u32> = touched.iter().map(|t| t.hour).collect();
    for step in hours.chunks(HOURS_PER_STEP) {
        recompute(sink, step).await?;
    }
    client
        .query(&format!(
            "INSERT INTO {MONITOR_ROLLUPS} (rolled_at, up_to, hours)
             VALUES (now64(3), fromUnixTimestamp64Milli(toInt64(?), 'UTC'), ?)"
        ))
        .bind(up_to.max(last))
        .bind(hours.len() as u64)
        .execute()
        .await?;
    Ok(Refreshed { hours: hours.len() })
}

/// Rewrites every series of `hours` from the deduplicated tables.
async fn recompute(sink: &ClickHouseSink, hours: &[u32]) -> anyhow::Result<()> {
    let list = hour_list(hours);
    let bin = format!(
        "toString(least(floor(arrayMax(mapValues(scores)) * {CONFIDENCE_BINS}), {}))",
        CONFIDENCE_BINS - 1
    );
    let top = "toFloat64(arrayMax(mapValues(scores)))";
    // One statement: the new cells of every series, and an empty row for each series the hour
    // had before and has no more (all its tweets deleted, say).
    let fresh = format!(
        "SELECT hour, 'champion' AS kind, '' AS series,
                concat(toString(label), '|', {bin}) AS cell, count() AS tweets, sum({top}) AS confidence
         FROM {CHAMPION_LABELS} FINAL WHERE hour IN ({list})
         GROUP BY hour, cell
         UNION ALL
         SELECT hour, 'version' AS kind, concat(model_version, '#', model_hash) AS series,
                concat(toString(label), '|', {bin}) AS cell, count() AS tweets, sum({top}) AS confidence
         FROM (SELECT model_version, model_hash, tweet_id, toStartOfHour(created_at) AS hour,
                      any(label) AS label, any(scores) AS scores
               FROM {PREDICTIONS} FINAL WHERE toStartOfHour(created_at) IN ({list})
               GROUP BY model_version, model_hash, hour, tweet_id)
         GROUP BY hour, series, cell
         UNION ALL
         SELECT hour, 'pairs' AS kind, concat(s.model_version, '#', s.model_hash) AS series,
                concat(toString(c.label), '|', toString(s.label)) AS cell, count() AS tweets,
                0.0 AS confidence
         FROM (SELECT hour, tweet_id, label FROM {CHAMPION_LABELS} FINAL WHERE hour IN ({list})) AS c
         INNER JOIN (SELECT toStartOfHour(created_at) AS hour, tweet_id, model_version, model_hash, label
                     FROM {PREDICTIONS} FINAL
                     WHERE role = 'shadow' AND toStartOfHour(created_at) IN ({list})) AS s
         USING (hour, tweet_id)
         GROUP BY hour, series, cell
         UNION ALL
         SELECT hour, 'input' AS kind, '' AS series, cell, count() AS tweets, 0.0 AS confidence
         FROM (SELECT toStartOfHour(created_at) AS hour,
                      arrayJoin([{descriptors}]) AS cell
               FROM {TWEETS} FINAL WHERE toStartOfHour(created_at) IN ({list}))
         GROUP BY hour, cell",
        descriptors = INPUT_DESCRIPTORS
            .iter()
            .map(|(name, expr)| format!("concat('{name}|', toString({expr}))"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    sink.client()
        .query(&format!(
            "INSERT INTO {MONITOR_HOURLY} (hour, kind, series, cells, computed_at)
             SELECT hour, kind, series, groupArrayIf((cell, (tweets, confidence)), tweets > 0),
                    now64(3)
             FROM (
                 SELECT hour, kind, series, cell, tweets, confidence FROM ({fresh})
                 UNION ALL
                 SELECT hour, kind, series, '' AS cell, toUInt64(0) AS tweets, 0.0 AS confidence
                 FROM {MONITOR_HOURLY} FINAL WHERE hour IN ({list})
             )
             GROUP BY hour, kind, series"
        ))
        .execute()
        .await?;
    Ok(())
}
