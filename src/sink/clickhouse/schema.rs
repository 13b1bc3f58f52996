//! Every table and view of the database, in one place: their names ([`ALL`] and one constant
//! each), the statements that create them ([`schema_statements`], idempotent), and the row
//! types written to them, each naming its table ([`StoredRow`]).
//!
//! Guarantees of the layout: replaying a batch never changes an aggregate. Tweets are stored
//! once (`tweets`), predictions once per tweet × model identity × role (`predictions`, a
//! ReplacingMergeTree whose key holds the weights hash); inserts carry a content-derived
//! `insert_deduplication_token` so a retried insert is dropped whole; `opinion_hourly` counts
//! *distinct* tweet ids per version (`uniqExact` states), and the champion views give exactly
//! one label per tweet.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};

/// Each tweet once, whatever number of versions scored it (champion rows only).
pub const TWEETS: &str = "tweets";
/// One prediction per tweet × model identity × role.
pub const PREDICTIONS: &str = "predictions";
/// Where every result is inserted (Null engine); its views fill `tweets` and `predictions`.
pub const INGEST: &str = "ingest";
/// Ids of tweets deleted by their author.
pub const DELETED_TWEETS: &str = "deleted_tweets";
pub const TWEETS_MV: &str = "tweets_mv";
pub const PREDICTIONS_MV: &str = "predictions_mv";
/// Distinct tweets per hour × version × label (aggregate states).
pub const OPINION_HOURLY: &str = "opinion_hourly";
pub const OPINION_HOURLY_MV: &str = "opinion_hourly_mv";
/// `opinion_hourly` merged into counts.
pub const OPINION_HOURLY_COUNTS: &str = "opinion_hourly_counts";
/// Exactly one champion label per tweet.
pub const CHAMPION_PREDICTIONS: &str = "champion_predictions";
/// The champion series: tweets per hour × label.
pub const CHAMPION_HOURLY: &str = "champion_hourly";
/// The tweet with its champion label, row by row.
pub const CLASSIFIED_TWEETS: &str = "classified_tweets";
/// Volume, labels, mean confidence and entropy per hour / day × version.
pub const MODEL_HOURLY_STATS: &str = "model_hourly_stats";
pub const MODEL_DAILY_STATS: &str = "model_daily_stats";
/// Champion vs each shadow on the same tweets (agreement, kappa) per hour / day.
pub const AGREEMENT_HOURLY: &str = "champion_shadow_agreement_hourly";
pub const AGREEMENT_DAILY: &str = "champion_shadow_agreement_daily";
/// Every change of a group's deployment, written by `vaxpulse models`.
pub const DEPLOYMENT_CHANGES: &str = "deployment_changes";
/// `vaxpulse eval` results.
pub const MODEL_EVALUATIONS: &str = "model_evaluations";
/// Each version's probabilities on the probe set, per replica and run.
pub const PROBE_RUNS: &str = "probe_runs";
/// What each replica did with each deployment.
pub const DEPLOYMENT_EVENTS: &str = "deployment_events";

/// Every table and view [`schema_statements`] creates (a test keeps the two in step).
pub const ALL: &[&str] = &[
    TWEETS,
    PREDICTIONS,
    INGEST,
    DELETED_TWEETS,
    TWEETS_MV,
    PREDICTIONS_MV,
    OPINION_HOURLY,
    OPINION_HOURLY_MV,
    OPINION_HOURLY_COUNTS,
    CHAMPION_PREDICTIONS,
    CHAMPION_HOURLY,
    CLASSIFIED_TWEETS,
    MODEL_HOURLY_STATS,
    MODEL_DAILY_STATS,
    AGREEMENT_HOURLY,
    AGREEMENT_DAILY,
    DEPLOYMENT_CHANGES,
    MODEL_EVALUATIONS,
    PROBE_RUNS,
    DEPLOYMENT_EVENTS,
];

/// A row type written to one table: [`super::ClickHouseSink::record`] takes the table from it.
pub trait StoredRow: clickhouse::RowOwned + clickhouse::RowWrite + Sync {
    const TABLE: &'static str;
}

/// Statements creating the database, tables and views; each is idempotent.
/// With `delete_counts` (`retention.delete_counts`), predictions of deleted tweets are not
/// stored either, so a delete that arrived first also keeps the tweet out of the counts.
pub fn schema_statements(db: &str, delete_counts: bool) -> Vec<String> {
    let predictions_filter = if delete_counts {
        format!("WHERE tweet_id NOT IN (SELECT tweet_id FROM {db}.deleted_tweets)")
    } else {
        String::new()
    };
    let mut out = vec![
        format!("CREATE DATABASE IF NOT EXISTS {db}"),
        // Each tweet once, whatever number of versions scored it.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.tweets (
                tweet_id String,
                created_at DateTime64(3, 'UTC'),
                lang LowCardinality(String),
                text String,
                source_partition Int32,
                source_offset Int64,
                stored_at DateTime64(3, 'UTC')
            ) ENGINE = ReplacingMergeTree(stored_at)
            PARTITION BY toYYYYMM(created_at)
            ORDER BY (toStartOfHour(created_at), tweet_id)
            SETTINGS non_replicated_deduplication_window = 10000"
        ),
        // One prediction per tweet × model identity × role. The weights hash is in the key: a
        // version re-exported with new weights is a new series, never merged into the old one.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.predictions (
                tweet_id String,
                created_at DateTime64(3, 'UTC'),
                model_version LowCardinality(String),
                model_hash LowCardinality(String),
                role LowCardinality(String),
                deployment_epoch UInt64,
                label LowCardinality(String),
                scores Map(LowCardinality(String), Float32),
                classified_at DateTime64(3, 'UTC')
            ) ENGINE = ReplacingMergeTree(classified_at)
            PARTITION BY toYYYYMM(created_at)
            ORDER BY (model_version, model_hash, role, toStartOfHour(created_at), tweet_id)
            SETTINGS non_replicated_deduplication_window = 10000"
        ),
        // Every result is inserted once, here (Null engine: nothing stored); the views below
        // split it into `tweets` (champion rows) and `predictions` (all rows), so a champion
        // batch is one insert, deduplicated as one block in both tables.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.ingest (
                tweet_id String,
                created_at DateTime64(3, 'UTC'),
                lang LowCardinality(String),
                text String,
                source_partition Int32,
                source_offset Int64,
                model_version LowCardinality(String),
                model_hash LowCardinality(String),
                role LowCardinality(String),
                deployment_epoch UInt64,
                label LowCardinality(String),
                scores Map(LowCardinality(String), Float32),
                classified_at DateTime64(3, 'UTC')
            ) ENGINE = Null"
        ),
        // Tweets deleted by their author (delete notices): their rows leave `tweets`, and a
        // tweet whose delete came first is never stored (the filter below).
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.deleted_tweets (
                tweet_id String,
                deleted_at DateTime64(3, 'UTC')
            ) ENGINE = ReplacingMergeTree(deleted_at) ORDER BY tweet_id"
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.tweets_mv TO {db}.tweets AS
            SELECT tweet_id, created_at, lang, text, source_partition, source_offset,
                   classified_at AS stored_at
            FROM {db}.ingest
            WHERE role = 'champion' AND tweet_id NOT IN (SELECT tweet_id FROM {db}.deleted_tweets)"
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.predictions_mv TO {db}.predictions AS
            SELECT tweet_id, created_at, model_version, model_hash, role, deployment_epoch,
                   label, scores, classified_at
            FROM {db}.ingest {predictions_filter}"
        ),
        // Per-version opinion (champion and shadow results alike): distinct tweets per hour ×
        // version × label, so a replay adds nothing.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.opinion_hourly (
                hour DateTime('UTC'),
                model_version LowCardinality(String),
                model_hash LowCardinality(String),
                label LowCardinality(String),
                tweets AggregateFunction(uniqExact, String)
            ) ENGINE = AggregatingMergeTree
            ORDER BY (hour, model_version, model_hash, label)
            SETTINGS non_replicated_deduplication_window = 10000"
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.opinion_hourly_mv TO {db}.opinion_hourly AS
            SELECT toStartOfHour(created_at) AS hour, model_version, model_hash, label,
                   uniqExactState(tweet_id) AS tweets
            FROM {db}.predictions
            GROUP BY hour, model_version, model_hash, label"
        ),
        format!(
            "CREATE VIEW IF NOT EXISTS {db}.opinion_hourly_counts AS
            SELECT hour, model_version, model_hash, label, uniqExactMerge(tweets) AS tweets
            FROM {db}.opinion_hourly
            GROUP BY hour, model_version, model_hash, label"
        ),
        // Exactly one champion label per tweet: the first champion prediction stored. Two exist
        // only when a replay straddles a promotion; the first is the one the output topic and the
        // counts saw first, so it stays.
        format!(
            "CREATE VIEW IF NOT EXISTS {db}.champion_predictions AS
            SELECT tweet_id, first_created AS created_at,
                   tupleElement(first_champion, 1) AS label,
                   tupleElement(first_champion, 2) AS model_version,
                   tupleElement(first_champion, 3) AS model_hash,
                   tupleElement(first_champion, 4) AS scores,
                   tupleElement(first_champion, 5) AS deployment_epoch,
                   first_at AS classified_at
            FROM (
                SELECT tweet_id, min(created_at) AS first_created,
                       argMin((label, model_version, model_hash, scores, deployment_epoch),
                              (classified_at, model_version, model_hash)) AS first_champion,
                       min(classified_at) AS first_at
                FROM {db}.predictions
                WHERE role = 'champion'
                GROUP BY tweet_id
            )"
        ),
        format!(
            "CREATE VIEW IF NOT EXISTS {db}.champion_hourly AS
            SELECT toStartOfHour(created_at) AS hour, label, count() AS tweets
            FROM {db}.champion_predictions
            GROUP BY hour, label"
        ),
        // The tweet with its champion label: what analysts read row by row.
        format!(
            "CREATE VIEW IF NOT EXISTS {db}.classified_tweets AS
            SELECT t.tweet_id AS tweet_id, t.created_at AS created_at, t.lang AS lang,
                   t.text AS text, c.label AS label, c.scores AS scores,
                   c.model_version AS model_version, c.model_hash AS model_hash,
                   c.deployment_epoch AS deployment_epoch, c.classified_at AS classified_at,
                   t.source_partition AS source_partition, t.source_offset AS source_offset
            FROM (SELECT tweet_id, any(created_at) AS created_at, any(lang) AS lang,
                         any(text) AS text, any(source_partition) AS source_partition,
                         any(source_offset) AS source_offset
                  FROM {db}.tweets GROUP BY tweet_id) AS t
            INNER JOIN {db}.champion_predictions AS c USING (tweet_id)"
        ),
    ];
    // Stability per hour and day and version: volume, label distribution, mean confidence (the
    // top probability) and mean entropy of the score vectors.
    for (name, window, key) in [
        ("hourly", "toStartOfHour", "hour"),
        ("daily", "toStartOfDay", "day"),
    ] {
        out.push(format!(
            "CREATE VIEW IF NOT EXISTS {db}.model_{name}_stats AS
            SELECT {window}(created_at) AS {key}, model_version, model_hash,
                   count() AS predictions,
                   sumMap(map(toString(label), toUInt64(1))) AS labels,
                   avg(arrayMax(mapValues(scores))) AS mean_confidence,
                   avg(arraySum(arrayMap(p -> if(p > 0, -p * log(p), 0), mapValues(scores))))
                       AS mean_entropy
            FROM {db}.predictions FINAL
            GROUP BY {key}, model_version, model_hash"
        ));
    }
    // Champion vs each shadow on the same tweets, per hour and per day: share of identical
    // labels and Cohen's kappa (agreement beyond what the two label distributions give by
    // chance). The flip matrix is a GROUP BY of the same join (docs/analysts.md).
    for (name, window) in [("hourly", "toStartOfHour"), ("daily", "toStartOfDay")] {
        out.push(format!(
            "CREATE VIEW IF NOT EXISTS {db}.champion_shadow_agreement_{name} AS
            SELECT window, shadow_version, shadow_hash, tweets, agreement,
                   if(chance < 1, (agreement - chance) / (1 - chance), 1) AS kappa
            FROM (
                SELECT window, shadow_version, shadow_hash, tweets, agreement,
                       arraySum(arrayMap(l -> (countEqual(cl, l) / tweets) * (countEqual(sl, l) / tweets),
                                         arrayDistinct(arrayConcat(cl, sl)))) AS chance
                FROM (
                    SELECT {window}(c.created_at) AS window, s.model_version AS shadow_version,
                           s.model_hash AS shadow_hash, count() AS tweets,
                           avg(c.label = s.label) AS agreement,
                           groupArray(c.label) AS cl, groupArray(s.label) AS sl
                    FROM {db}.champion_predictions AS c
                    INNER JOIN (SELECT tweet_id, model_version, model_hash, label
                                FROM {db}.predictions FINAL WHERE role = 'shadow') AS s
                    USING (tweet_id)
                    GROUP BY window, shadow_version, shadow_hash
                )
            )"
        ));
    }
    out.extend([
        // Every change of the group's deployment (who, what, when, from → to), written by the
        // `vaxpulse models` command that published it.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.deployment_changes (
                changed_at DateTime64(3, 'UTC'),
                group_id LowCardinality(String),
                epoch UInt64,
                action LowCardinality(String),
                actor String,
                reason String,
                from_champion String,
                to_champion String,
                from_shadows Array(String),
                to_shadows Array(String),
                key_id String DEFAULT ''
            ) ENGINE = MergeTree ORDER BY (group_id, epoch, changed_at)"
        ),
        // `vaxpulse eval` results: a model identity on a labelled set (by content hash).
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.model_evaluations (
                evaluated_at DateTime64(3, 'UTC'),
                model String,
                dataset String,
                dataset_sha256 String,
                n UInt64,
                accuracy Float64,
                macro_f1 Float64,
                ece Float64,
                details String,
                compared_with String,
                mcnemar_p Float64
            ) ENGINE = MergeTree ORDER BY (model, evaluated_at)"
        ),
        // Probe runs: each version's probabilities on the fixed probe set, per replica and run,
        // with the largest change against the version's first and previous runs.
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.probe_runs (
                at DateTime64(3, 'UTC'),
                group_id LowCardinality(String),
                replica String,
                device LowCardinality(String),
                model_version LowCardinality(String),
                model_hash LowCardinality(String),
                probe_set String,
                probe_ids Array(String),
                labels Array(String),
                scores Array(Array(Float32)),
                max_deviation Float64,
                max_deviation_previous Float64,
                flagged UInt8
            ) ENGINE = MergeTree ORDER BY (model_version, model_hash, at)"
        ),
        // What each replica did with each deployment: applied (and how long after the change),
        // or refused (and why).
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.deployment_events (
                at DateTime64(3, 'UTC'),
                group_id LowCardinality(String),
                replica String,
                epoch UInt64,
                outcome LowCardinality(String),
                champion String,
                shadows Array(String),
                load_seconds Float64,
                since_change_ms Int64,
                message String,
                key_id String DEFAULT ''
            ) ENGINE = MergeTree ORDER BY (group_id, epoch, at)"
        ),
        // Databases made before records were signed.
        format!(
            "ALTER TABLE {db}.deployment_changes ADD COLUMN IF NOT EXISTS key_id String DEFAULT ''"
        ),
        format!(
            "ALTER TABLE {db}.deployment_events ADD COLUMN IF NOT EXISTS key_id String DEFAULT ''"
        ),
    ]);
    out
}

/// A row of `ingest`: one result (tweet and prediction).
#[derive(Row, Serialize, Deserialize)]
pub(crate) struct IngestRow {
    pub(crate) tweet_id: String,
    #[serde(with = "clickhouse::serde::chrono::datetime64::millis")]
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) lang: String,
    pub(crate) text: String,
    pub(crate) source_partition: i32,
    pub(crate) source_offset: i64,
    pub(crate) model_version: String,
    pub(crate) model_hash: String,
    pub(crate) role: String,
    pub(crate) deployment_epoch: u64,
    pub(crate) label: String,
    pub(crate) scores: BTreeMap<String, f32>,
    #[serde(with = "clickhouse::serde::chrono::datetime64::millis")]
    pub(crate) classified_at: DateTime<Utc>,
}

/// A row of `deployment_changes`.
#[derive(Row, Serialize, Deserialize, Debug, Clone)]
pub struct DeploymentChangeRow {
    #[serde(with = "clickhouse::serde::chrono::datetime64::millis")]
    pub changed_at: DateTime<Utc>,
    pub group_id: String,
    pub epoch: u64,
    pub action: String,
    pub actor: String,
    pub reason: String,
    pub from_champion: String,
    pub to_champion: String,
    pub from_shadows: Vec<String>,
    pub to_shadows: Vec<String>,
    /// Id of the key that signed the record (empty: unsigned).
    pub key_id: String,
}

/// A row of `deployment_events`.
#[derive(Row, Serialize, Deserialize, Debug, Clone)]
pub struct DeploymentEventRow {
    #[serde(with = "clickhouse::serde::chrono::datetime64::millis")]
    pub at: DateTime<Utc>,
    pub group_id: String,
    pub replica: String,
    pub epoch: u64,
    pub outcome: String,
    pub champion: String,
    pub shadows: Vec<String>,
    pub load_seconds: f64,
    pub since_change_ms: i64,
    pub message: String,
    /// Id of the key that signed the record (empty: unsigned).
    pub key_id: String,
}

/// A row of `deleted_tweets`.
#[derive(Row, Serialize, Deserialize)]
pub(crate) struct DeletedRow {
    pub(crate) tweet_id: String,
    #[serde(with = "clickhouse::serde::chrono::datetime64::millis")]
    pub(crate) deleted_at: DateTime<Utc>,
}

impl StoredRow for IngestRow {
    const TABLE: &'static str = INGEST;
}

impl StoredRow for DeletedRow {
    const TABLE: &'static str = DELETED_TWEETS;
}

impl StoredRow for DeploymentChangeRow {
    const TABLE: &'static str = DEPLOYMENT_CHANGES;
}

impl StoredRow for DeploymentEventRow {
    const TABLE: &'static str = DEPLOYMENT_EVENTS;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_table_is_created_and_every_created_table_is_named() {
        let created: Vec<String> = schema_statements("db", false)
            .iter()
            .filter_map(|s| {
                let rest = s.split("IF NOT EXISTS db.").nth(1)?;
                Some(
                    rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .next()?
                        .to_string(),
                )
            })
            .collect();
        let mut named: Vec<&str> = ALL.to_vec();
        let mut made: Vec<&str> = created.iter().map(String::as_str).collect();
        named.sort_unstable();
        made.sort_unstable();
        assert_eq!(named, made);
    }

    #[test]
    fn delete_counts_filter_predictions_by_the_deleted_ids() {
        let with = schema_statements("db", true).join("\n");
        let without = schema_statements("db", false).join("\n");
        let filter =
            "FROM db.ingest WHERE tweet_id NOT IN (SELECT tweet_id FROM db.deleted_tweets)";
        assert!(with.contains(filter));
        assert!(!without.contains(filter));
    }
}
