//! What the annotation page reads and writes in ClickHouse: the next tweet of a sample for one
//! annotator (one they have not labelled, that nobody else has — or only one other, for the
//! tweets of the double-annotation share), a label, its undo (a tombstone of the same key), and
//! the progress counter. Every read is by the sample's key or a tweet's (hour, id): the page
//! costs the same on a year of history as on a day.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::quality::report::{CLASSES, OFF_TOPIC, SKIP};
use crate::sink::clickhouse::schema::{AnnotationRow, ANNOTATIONS, ANNOTATION_SAMPLES, TWEETS};
use crate::sink::clickhouse::ClickHouseSink;

/// A label the page may send.
pub fn valid_label(label: &str) -> bool {
    CLASSES.contains(&label) || label == OFF_TOPIC || label == SKIP
}

/// A tweet to label (no model output: the annotator is not anchored on it).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ToLabel {
    pub sample_id: String,
    pub tweet_id: String,
    pub text: String,
    pub created_at: String,
}

/// Where one annotator stands in a sample.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub sample_id: String,
    pub annotator: String,
    /// Tweets this annotator labelled or skipped.
    pub done: u64,
    pub total: u64,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct Candidate {
    tweet_id: String,
    hour: u32,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct Text {
    text: String,
    created_utc: String,
}

/// The newest sample, if any.
pub async fn newest_sample(sink: &ClickHouseSink) -> anyhow::Result<Option<String>> {
    let db = sink.database();
    let rows = sink
        .client()
        .query(&format!(
            "SELECT sample_id FROM {db}.{ANNOTATION_SAMPLES} ORDER BY drawn_at DESC LIMIT 1"
        ))
        .fetch_all::<String>()
        .await?;
    Ok(rows.into_iter().next())
}

/// The next tweet of `sample` for `annotator`, or `None` when none is left.
pub async fn next(
    sink: &ClickHouseSink,
    sample: &str,
    annotator: &str,
) -> anyhow::Result<Option<ToLabel>> {
    let db = sink.database();
    let candidates = sink
        .client()
        .query(&format!(
            "SELECT s.tweet_id AS tweet_id, toUnixTimestamp(s.hour) AS hour
             FROM (SELECT tweet_id, hour, double FROM {db}.{ANNOTATION_SAMPLES} FINAL
                   WHERE sample_id = ?) AS s
             LEFT JOIN (SELECT tweet_id, countIf(annotator = ?) AS mine,
                               countIf(annotator != ? AND label != '{SKIP}') AS others
                        FROM {db}.{ANNOTATIONS} FINAL WHERE sample_id = ?
                        GROUP BY tweet_id) AS a
             USING (tweet_id)
             WHERE a.mine = 0 AND a.others < if(s.double = 1, 2, 1)
             ORDER BY cityHash64(tweet_id, ?) LIMIT 16"
        ))
        .bind(sample)
        .bind(annotator)
        .bind(annotator)
        .bind(sample)
        .bind(sample)
        .fetch_all::<Candidate>()
        .await?;
    // A tweet deleted by its author since the draw has no text left: the next one is served.
    for c in candidates {
        if let Some(t) = shown(sink, sample, &c.tweet_id, c.hour).await? {
            return Ok(Some(t));
        }
    }
    Ok(None)
}

/// The tweet as the page shows it, looked up by its hour and id (`None`: deleted since).
async fn shown(
    sink: &ClickHouseSink,
    sample: &str,
    tweet: &str,
    hour: u32,
) -> anyhow::Result<Option<ToLabel>> {
    let db = sink.database();
    let text = sink
        .client()
        .query(&format!(
            "SELECT text, toString(created_at) AS created_utc FROM {db}.{TWEETS} FINAL
             WHERE toStartOfHour(created_at) = toDateTime(?, 'UTC') AND tweet_id = ?
             LIMIT 1"
        ))
        .bind(hour)
        .bind(tweet)
        .fetch_all::<Text>()
        .await?;
    Ok(text.into_iter().next().map(|t| ToLabel {
        sample_id: sample.into(),
        tweet_id: tweet.into(),
        text: t.text,
        created_at: t.created_utc,
    }))
}

/// Whether `tweet` is in `sample` (a label may only name a sampled tweet).
pub async fn in_sample(sink: &ClickHouseSink, sample: &str, tweet: &str) -> anyhow::Result<bool> {
    let db = sink.database();
    let n = sink
        .client()
        .query(&format!(
            "SELECT count() FROM {db}.{ANNOTATION_SAMPLES} WHERE sample_id = ? AND tweet_id = ?"
        ))
        .bind(sample)
        .bind(tweet)
        .fetch_one::<u64>()
        .await?;
    Ok(n > 0)
}

/// Stores `label` of `tweet` by `annotator` (an earlier label of theirs is replaced).
pub async fn label(
    sink: &ClickHouseSink,
    sample: &str,
    tweet: &str,
    annotator: &str,
    label: &str,
    at: DateTime<Utc>,
) -> anyhow::Result<()> {
    anyhow::ensure!(valid_label(label), "unknown label {label:?}");
    sink.record(&AnnotationRow {
        sample_id: sample.into(),
        tweet_id: tweet.into(),
        annotator: annotator.into(),
        label: label.into(),
        annotated_at: at,
        is_deleted: 0,
    })
    .await?;
    Ok(())
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct Current {
    label: String,
    at: i64,
}

/// Withdraws `annotator`'s label of `tweet`: a tombstone newer than the label. Returns the
/// label withdrawn (`None`: there was none).
pub async fn undo(
    sink: &ClickHouseSink,
    sample: &str,
    tweet: &str,
    annotator: &str,
) -> anyhow::Result<Option<String>> {
    let db = sink.database();
    let current = sink
        .client()
        .query(&format!(
            "SELECT label, toUnixTimestamp64Milli(annotated_at) AS at FROM {db}.{ANNOTATIONS} FINAL
             WHERE sample_id = ? AND tweet_id = ? AND annotator = ?"
        ))
        .bind(sample)
        .bind(tweet)
        .bind(annotator)
        .fetch_all::<Current>()
        .await?;
    let Some(c) = current.into_iter().next() else {
        return Ok(None);
    };
    let after = DateTime::<Utc>::from_timestamp_millis(c.at + 1).unwrap_or_else(Utc::now);
    sink.record(&AnnotationRow {
        sample_id: sample.into(),
        tweet_id: tweet.into(),
        annotator: annotator.into(),
        label: c.label.clone(),
        annotated_at: after.max(Utc::now()),
        is_deleted: 1,
    })
    .await?;
    Ok(Some(c.label))
}

/// The tweet itself, for the page to show again after an undo.
pub async fn tweet(
    sink: &ClickHouseSink,
    sample: &str,
    tweet: &str,
) -> anyhow::Result<Option<ToLabel>> {
    let db = sink.database();
    let hours = sink
        .client()
        .query(&format!(
            "SELECT toUnixTimestamp(hour) FROM {db}.{ANNOTATION_SAMPLES} WHERE sample_id = ? AND tweet_id = ? LIMIT 1"
        ))
        .bind(sample)
        .bind(tweet)
        .fetch_all::<u32>()
        .await?;
    match hours.first() {
        Some(&hour) => shown(sink, sample, tweet, hour).await,
        None => Ok(None),
    }
}

/// `annotator`'s progress in `sample`.
pub async fn progress(
    sink: &ClickHouseSink,
    sample: &str,
    annotator: &str,
) -> anyhow::Result<Progress> {
    let db = sink.database();
    let total = sink
        .client()
        .query(&format!(
            "SELECT count() FROM {db}.{ANNOTATION_SAMPLES} FINAL WHERE sample_id = ?"
        ))
        .bind(sample)
        .fetch_one::<u64>()
        .await?;
    let done = sink
        .client()
        .query(&format!(
            "SELECT count() FROM {db}.{ANNOTATIONS} FINAL WHERE sample_id = ? AND annotator = ?"
        ))
        .bind(sample)
        .bind(annotator)
        .fetch_one::<u64>()
        .await?;
    Ok(Progress {
        sample_id: sample.into(),
        annotator: annotator.into(),
        done,
        total,
    })
}
