//! Every table and view of the database, in one place: their names ([`ALL`] and one constant
//! each), the statements that create them ([`schema_statements`], idempotent, for one server or
//! a cluster: [`Layout`]), and the row types written to them, each naming its table
//! ([`StoredRow`]).
//!
//! Guarantees of the layout: replaying a batch never changes an aggregate, and what a query for
//! a time window reads follows the window, not the history. Tweets are stored once (`tweets`),
//! predictions once per tweet × model identity × role (`predictions`), the champion's label once
//! per tweet (`champion_labels`, keyed by hour and tweet, keeping the first champion
//! prediction): all three are ReplacingMergeTrees read with `FINAL`, whose key starts with (or,
//! for `predictions`, holds after the few model identities) the tweet's hour, so a filter on
//! the hour prunes the primary key. Inserts carry a content-derived
//! `insert_deduplication_token` so a retried insert is dropped whole. Deletions are tombstones
//! (`is_deleted` rows with a higher version, found through `tweet_hours`, keyed by tweet id),
//! never mutations: a delete costs what its batch costs.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use clickhouse::Row;
use serde::{Deserialize, Serialize};

/// Each tweet once, whatever number of versions scored it (champion rows only).
pub const TWEETS: &str = "tweets";
/// One prediction per tweet × model identity × role.
pub const PREDICTIONS: &str = "predictions";
/// Where every result is inserted (Null engine); its views fill the tables.
pub const INGEST: &str = "ingest";
/// Ids of tweets deleted by their author (TTL `retention.deleted_ids_days`).
pub const DELETED_TWEETS: &str = "deleted_tweets";
/// Tweet id → hour of `created_at`: how a delete finds its tweet's rows by primary key.
pub const TWEET_HOURS: &str = "tweet_hours";
/// The champion's label of each tweet, keyed `(hour, tweet_id)`: the first champion prediction.
pub const CHAMPION_LABELS: &str = "champion_labels";
/// First and last `created_at` each model identity scored (where each series starts).
pub const MODEL_SPANS: &str = "model_spans";
/// Hours written to, and when (what the monitor's rollup recomputes).
pub const TOUCHED_HOURS: &str = "touched_hours";
/// The monitor's cells per hour × series, recomputed whole from the deduplicated tables.
pub const MONITOR_HOURLY: &str = "monitor_hourly";
/// Each rollup of `monitor_hourly`: up to which write it has seen.
pub const MONITOR_ROLLUPS: &str = "monitor_rollups";
pub const TOUCHED_HOURS_MV: &str = "touched_hours_mv";
pub const TWEETS_MV: &str = "tweets_mv";
pub const PREDICTIONS_MV: &str = "predictions_mv";
pub const TWEET_HOURS_MV: &str = "tweet_hours_mv";
pub const CHAMPION_LABELS_MV: &str = "champion_labels_mv";
pub const MODEL_SPANS_MV: &str = "model_spans_mv";
/// Distinct tweets per hour × version × label.
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
/// Tweets drawn for annotation, each with its stratum and inclusion probability.
pub const ANNOTATION_SAMPLES: &str = "annotation_samples";
/// Labels given by annotators (undo = a tombstone of the same key).
pub const ANNOTATIONS: &str = "annotations";
/// A temperature per model identity, fitted on labelled data.
pub const CALIBRATIONS: &str = "calibrations";
/// Each promotion decision of the quality gate, with its evidence.
pub const PROMOTION_DECISIONS: &str = "promotion_decisions";

/// Every table and view [`schema_statements`] creates on one server (a test keeps the two in
/// step); on a cluster each stored table also has its `_local` table.
pub const ALL: &[&str] = &[
    TWEETS,
    PREDICTIONS,
    INGEST,
    DELETED_TWEETS,
    TWEET_HOURS,
    CHAMPION_LABELS,
    MODEL_SPANS,
    TOUCHED_HOURS,
    MONITOR_HOURLY,
    MONITOR_ROLLUPS,
    TOUCHED_HOURS_MV,
    TWEETS_MV,
    PREDICTIONS_MV,
    TWEET_HOURS_MV,
    CHAMPION_LABELS_MV,
    MODEL_SPANS_MV,
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
    ANNOTATION_SAMPLES,
    ANNOTATIONS,
    CALIBRATIONS,
    PROMOTION_DECISIONS,
];

/// The version a tombstone of `champion_labels` carries: above every real prediction's.
pub const TOMBSTONE_RANK: u64 = u64::MAX;

/// A row type written to one table: [`super::ClickHouseSink::record`] takes the table from it.
pub trait StoredRow: clickhouse::RowOwned + clickhouse::RowWrite + Sync {
    const TABLE: &'static str;
}

/// Where the tables live and how long rows stay.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub database: String,
    /// `remote_servers` name: local tables `NAME_local` plus `Distributed` tables `NAME`.
    pub cluster: Option<String>,
    /// DDL with `ON CLUSTER` (needs Keeper); else it is run on each server by the caller.
    pub on_cluster: bool,
    /// `Replicated*MergeTree` local tables (needs Keeper).
    pub replicated: bool,
    /// TTL days of `deleted_tweets`, `tweets`/`tweet_hours`, `predictions`/`champion_labels`
    /// (0 = none).
    pub deleted_ids_days: u32,
    pub tweets_days: u32,
    pub predictions_days: u32,
}

impl Layout {
    /// One server, database `db`, no TTL.
    pub fn single(db: &str) -> Self {
        Layout {
            database: db.into(),
            ..Layout::default()
        }
    }

    pub fn from_config(cfg: &crate::config::Config) -> Self {
        let ch = &cfg.clickhouse;
        let cluster = (!ch.cluster.is_empty()).then(|| ch.cluster.clone());
        Layout {
            database: ch.database.clone(),
            on_cluster: cluster.is_some() && ch.schema_urls.is_empty(),
            cluster,
            replicated: ch.replicated,
            deleted_ids_days: cfg.retention.deleted_ids_days,
            tweets_days: cfg.retention.tweets_days,
            predictions_days: cfg.retention.predictions_days,
        }
    }

    fn on(&self) -> String {
        match (&self.cluster, self.on_cluster) {
            (Some(c), true) => format!(" ON CLUSTER {c}"),
            _ => String::new(),
        }
    }

    /// The table rows of `name` are physically stored in (the local table on a cluster).
    pub fn storage(&self, name: &str) -> String {
        match self.cluster {
            Some(_) => format!("{name}_local"),
            None => name.to_string(),
        }
    }

    /// `CREATE TABLE` of a stored table: `engine` is a MergeTree family name, `args` its
    /// arguments, `rest` what follows the engine (PARTITION BY, ORDER BY, SETTINGS); on a
    /// cluster the local table and the `Distributed` table over it, sharded by `shard_by`.
    fn table(
        &self,
        name: &str,
        columns: &str,
        engine: &str,
        args: &str,
        rest: &str,
        shard_by: &str,
    ) -> Vec<String> {
        let (db, on) = (&self.database, self.on());
        let local = self.storage(name);
        let engine = if self.replicated {
            let path = "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'";
            let args = if args.is_empty() {
                path.to_string()
            } else {
                format!("{path}, {args}")
            };
            format!("Replicated{engine}({args})")
        } else {
            format!("{engine}({args})")
        };
        // Non-replicated tables deduplicate only with a window (replicated ones by default).
        let rest = if self.replicated {
            rest.replace(
                "non_replicated_deduplication_window",
                "replicated_deduplication_window",
            )
        } else {
            rest.to_string()
        };
        let mut out = vec![format!(
            "CREATE TABLE IF NOT EXISTS {db}.{local}{on} ({columns}) ENGINE = {engine} {rest}"
        )];
        if let Some(c) = &self.cluster {
            out.push(format!(
                "CREATE TABLE IF NOT EXISTS {db}.{name}{on} AS {db}.{local} \
                 ENGINE = Distributed({c}, {db}, {local}, {shard_by})"
            ));
        }
        out
    }

    /// An append-only record table (MergeTree, rows spread at random on a cluster).
    fn record_table(&self, name: &str, columns: &str, order_by: &str) -> Vec<String> {
        self.table(name, columns, "MergeTree", "", order_by, "rand()")
    }

    /// TTL of each stored table: (table, expression) with its days, 0 = none.
    pub fn ttls(&self) -> Vec<(String, &'static str, u32)> {
        vec![
            (
                self.storage(DELETED_TWEETS),
                "toDateTime(deleted_at)",
                self.deleted_ids_days,
            ),
            (
                self.storage(TWEETS),
                "toDateTime(created_at)",
                self.tweets_days,
            ),
            (self.storage(TWEET_HOURS), "hour", self.tweets_days),
            (
                self.storage(PREDICTIONS),
                "toDateTime(created_at)",
                self.predictions_days,
            ),
            (self.storage(CHAMPION_LABELS), "hour", self.predictions_days),
        ]
    }

    /// The statement that sets (or, with `days` 0 and `present`, removes) one TTL.
    pub fn ttl_statement(
        &self,
        table: &str,
        expr: &str,
        days: u32,
        present: bool,
    ) -> Option<String> {
        let (db, on) = (&self.database, self.on());
        if days > 0 {
            // Not rewritten now (a mutation over the history): rows leave in later merges.
            Some(format!(
                "ALTER TABLE {db}.{table}{on} MODIFY TTL {expr} + INTERVAL {days} DAY \
                 SETTINGS materialize_ttl_after_modify = 0"
            ))
        } else if present {
            Some(format!("ALTER TABLE {db}.{table}{on} REMOVE TTL"))
        } else {
            None
        }
    }
}

/// Statements creating the database, tables and views of `layout`; each is idempotent. TTLs
/// are set apart ([`Layout::ttl_statement`]): they depend on what the table has.
pub fn schema_statements(layout: &Layout) -> Vec<String> {
    let (db, on) = (layout.database.as_str(), layout.on());
    let by_tweet = "cityHash64(tweet_id)";
    let mut out = vec![format!("CREATE DATABASE IF NOT EXISTS {db}{on}")];
    // Each tweet once, whatever number of versions scored it; a delete is a tombstone row
    // (`is_deleted`, newer `stored_at`) that `FINAL` and merges keep instead of the tweet.
    out.extend(layout.table(
        TWEETS,
        "tweet_id String,
         created_at DateTime64(3, 'UTC'),
         lang LowCardinality(String),
         text String,
         source_partition Int32,
         source_offset Int64,
         stored_at DateTime64(3, 'UTC'),
         is_deleted UInt8 DEFAULT 0",
        "ReplacingMergeTree",
        "stored_at, is_deleted",
        "PARTITION BY toYYYYMM(created_at)
         ORDER BY (toStartOfHour(created_at), tweet_id)
         SETTINGS non_replicated_deduplication_window = 10000",
        by_tweet,
    ));
    // One prediction per tweet × model identity × role. The weights hash is in the key: a
    // version re-exported with new weights is a new series, never merged into the old one.
    out.extend(layout.table(
        PREDICTIONS,
        "tweet_id String,
         created_at DateTime64(3, 'UTC'),
         model_version LowCardinality(String),
         model_hash LowCardinality(String),
         role LowCardinality(String),
         deployment_epoch UInt64,
         label LowCardinality(String),
         scores Map(LowCardinality(String), Float32),
         classified_at DateTime64(3, 'UTC'),
         is_deleted UInt8 DEFAULT 0",
        "ReplacingMergeTree",
        "classified_at, is_deleted",
        "PARTITION BY toYYYYMM(created_at)
         ORDER BY (model_version, model_hash, role, toStartOfHour(created_at), tweet_id)
         SETTINGS non_replicated_deduplication_window = 10000",
        by_tweet,
    ));
    // The champion's label per tweet, keyed by hour: the first champion prediction stored
    // (highest `first_rank`, which falls as `classified_at` grows). Two exist only when a
    // replay straddles a promotion; the first is the one the output topic and the counts saw
    // first, so it stays.
    out.extend(layout.table(
        CHAMPION_LABELS,
        "hour DateTime('UTC'),
         tweet_id String,
         created_at DateTime64(3, 'UTC'),
         label LowCardinality(String),
         model_version LowCardinality(String),
         model_hash LowCardinality(String),
         scores Map(LowCardinality(String), Float32),
         deployment_epoch UInt64,
         classified_at DateTime64(3, 'UTC'),
         first_rank UInt64,
         is_deleted UInt8 DEFAULT 0",
        "ReplacingMergeTree",
        "first_rank, is_deleted",
        "PARTITION BY toYYYYMM(hour)
         ORDER BY (hour, tweet_id)
         SETTINGS non_replicated_deduplication_window = 10000",
        by_tweet,
    ));
    // Small granules: a delete or an arrival looks up a few ids, each in its own granule.
    out.extend(layout.table(
        TWEET_HOURS,
        "tweet_id String, hour DateTime('UTC')",
        "ReplacingMergeTree",
        "",
        "ORDER BY tweet_id SETTINGS index_granularity = 1024",
        by_tweet,
    ));
    // Tweets deleted by their author (delete notices): a tweet whose id is here is not stored
    // when it arrives, and its rows already stored get tombstones.
    out.extend(layout.table(
        DELETED_TWEETS,
        "tweet_id String, deleted_at DateTime64(3, 'UTC')",
        "ReplacingMergeTree",
        "deleted_at",
        "ORDER BY tweet_id SETTINGS index_granularity = 1024",
        by_tweet,
    ));
    out.extend(layout.table(
        MODEL_SPANS,
        "model_version LowCardinality(String),
         model_hash LowCardinality(String),
         first_created SimpleAggregateFunction(min, DateTime64(3, 'UTC')),
         last_created SimpleAggregateFunction(max, DateTime64(3, 'UTC'))",
        "AggregatingMergeTree",
        "",
        "ORDER BY (model_version, model_hash)",
        "rand()",
    ));
    out.extend(layout.record_table(
        TOUCHED_HOURS,
        "hour DateTime('UTC'), touched_at DateTime64(3, 'UTC')",
        "ORDER BY touched_at TTL toDateTime(touched_at) + INTERVAL 30 DAY",
    ));
    // Every version of one hour × series on one shard: `FINAL` keeps the newest recompute.
    out.extend(layout.table(
        MONITOR_HOURLY,
        "hour DateTime('UTC'),
         kind LowCardinality(String),
         series String,
         cells Array(Tuple(String, Tuple(UInt64, Float64))),
         computed_at DateTime64(3, 'UTC')",
        "ReplacingMergeTree",
        "computed_at",
        "PARTITION BY toYYYYMM(hour) ORDER BY (hour, kind, series)",
        "cityHash64(toUInt32(hour), kind, series)",
    ));
    out.extend(layout.record_table(
        MONITOR_ROLLUPS,
        "rolled_at DateTime64(3, 'UTC'), up_to DateTime64(3, 'UTC'), hours UInt64",
        "ORDER BY rolled_at TTL toDateTime(rolled_at) + INTERVAL 30 DAY",
    ));
    // Every result is inserted once, here (Null engine: nothing stored, on each server); the
    // views below split it into the tables, so a champion batch is one insert, deduplicated as
    // one block in every table. `deleted` marks a tweet whose delete notice came first: its
    // prediction is counted (unless `retention.delete_counts`, then the worker drops it) but
    // the tweet is not stored.
    out.push(format!(
        "CREATE TABLE IF NOT EXISTS {db}.ingest{on} (
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
            classified_at DateTime64(3, 'UTC'),
            deleted UInt8 DEFAULT 0
        ) ENGINE = Null"
    ));
    out.extend([
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.tweets_mv{on} TO {db}.tweets AS
            SELECT tweet_id, created_at, lang, text, source_partition, source_offset,
                   classified_at AS stored_at, toUInt8(0) AS is_deleted
            FROM {db}.ingest WHERE role = 'champion' AND deleted = 0"
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.predictions_mv{on} TO {db}.predictions AS
            SELECT tweet_id, created_at, model_version, model_hash, role, deployment_epoch,
                   label, scores, classified_at, toUInt8(0) AS is_deleted
            FROM {db}.ingest"
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.champion_labels_mv{on} TO {db}.champion_labels AS
            SELECT toStartOfHour(created_at) AS hour, tweet_id, created_at, label, model_version,
                   model_hash, scores, deployment_epoch, classified_at,
                   toUInt64({rank_top}) - toUInt64(toUnixTimestamp64Milli(classified_at)) AS first_rank,
                   toUInt8(0) AS is_deleted
            FROM {db}.ingest WHERE role = 'champion'",
            rank_top = i64::MAX
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.tweet_hours_mv{on} TO {db}.tweet_hours AS
            SELECT tweet_id, toStartOfHour(created_at) AS hour
            FROM {db}.ingest WHERE role = 'champion'"
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.touched_hours_mv{on} TO {db}.touched_hours AS
            SELECT DISTINCT toStartOfHour(created_at) AS hour, now64(3) AS touched_at
            FROM {db}.ingest"
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.model_spans_mv{on} TO {db}.model_spans AS
            SELECT model_version, model_hash, min(created_at) AS first_created,
                   max(created_at) AS last_created
            FROM {db}.ingest GROUP BY model_version, model_hash"
        ),
        // Per-version opinion (champion and shadow results alike): distinct tweets per hour ×
        // version × label, so a replay adds nothing; a filter on `hour` prunes the key.
        format!(
            "CREATE VIEW IF NOT EXISTS {db}.opinion_hourly_counts{on} AS
            SELECT hour, model_version, model_hash, label, uniqExact(tweet_id) AS tweets
            FROM (SELECT toStartOfHour(created_at) AS hour, model_version, model_hash, label,
                         tweet_id
                  FROM {db}.predictions FINAL)
            GROUP BY hour, model_version, model_hash, label"
        ),
        format!(
            "CREATE VIEW IF NOT EXISTS {db}.champion_predictions{on} AS
            SELECT tweet_id, created_at, label, model_version, model_hash, scores,
                   deployment_epoch, classified_at, hour
            FROM {db}.champion_labels FINAL"
        ),
        format!(
            "CREATE VIEW IF NOT EXISTS {db}.champion_hourly{on} AS
            SELECT hour, label, count() AS tweets
            FROM {db}.champion_labels FINAL
            GROUP BY hour, label"
        ),
        // The tweet with its champion label: what analysts read row by row. By id, the hour
        // from `tweet_hours` lets both sides use their key (docs/analysts.md).
        format!(
            "CREATE VIEW IF NOT EXISTS {db}.classified_tweets{on} AS
            SELECT tweet_id, t.created_at AS created_at, t.lang AS lang, t.text AS text,
                   c.label AS label, c.scores AS scores, c.model_version AS model_version,
                   c.model_hash AS model_hash, c.deployment_epoch AS deployment_epoch,
                   c.classified_at AS classified_at, t.source_partition AS source_partition,
                   t.source_offset AS source_offset, hour
            FROM (SELECT toStartOfHour(created_at) AS hour, tweet_id, created_at, lang, text,
                         source_partition, source_offset
                  FROM {db}.tweets FINAL) AS t
            INNER JOIN (SELECT hour, tweet_id, label, scores, model_version, model_hash,
                               deployment_epoch, classified_at
                        FROM {db}.champion_labels FINAL) AS c
            USING (hour, tweet_id)"
        ),
    ]);
    // Stability per hour and day and version: volume, label distribution, mean confidence (the
    // top probability) and mean entropy of the score vectors. The window is a function of the
    // key's hour, so a filter on it prunes the key.
    for (name, window, key) in [("hourly", "", "hour"), ("daily", "toStartOfDay", "day")] {
        out.push(format!(
            "CREATE VIEW IF NOT EXISTS {db}.model_{name}_stats{on} AS
            SELECT {window}(toStartOfHour(created_at)) AS {key}, model_version, model_hash,
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
    // chance). Joined on (hour, tweet_id): a filter on the window reaches both sides' keys.
    // The flip matrix is a GROUP BY of the same join (docs/analysts.md).
    for (name, window) in [("hourly", ""), ("daily", "toStartOfDay")] {
        out.push(format!(
            "CREATE VIEW IF NOT EXISTS {db}.champion_shadow_agreement_{name}{on} AS
            SELECT window, shadow_version, shadow_hash, tweets, agreement,
                   if(chance < 1, (agreement - chance) / (1 - chance), 1) AS kappa
            FROM (
                SELECT window, shadow_version, shadow_hash, tweets, agreement,
                       arraySum(arrayMap(l -> (countEqual(cl, l) / tweets) * (countEqual(sl, l) / tweets),
                                         arrayDistinct(arrayConcat(cl, sl)))) AS chance
                FROM (
                    SELECT {window}(hour) AS window, s.model_version AS shadow_version,
                           s.model_hash AS shadow_hash, count() AS tweets,
                           avg(c.label = s.label) AS agreement,
                           groupArray(c.label) AS cl, groupArray(s.label) AS sl
                    FROM (SELECT hour, tweet_id, label FROM {db}.champion_labels FINAL) AS c
                    INNER JOIN (SELECT toStartOfHour(created_at) AS hour, tweet_id,
                                       model_version, model_hash, label
                                FROM {db}.predictions FINAL WHERE role = 'shadow') AS s
                    USING (hour, tweet_id)
                    GROUP BY window, shadow_version, shadow_hash
                )
            )"
        ));
    }
    // Every change of the group's deployment (who, what, when, from → to), written by the
    // `vaxpulse models` command that published it.
    out.extend(layout.record_table(
        DEPLOYMENT_CHANGES,
        "changed_at DateTime64(3, 'UTC'),
         group_id LowCardinality(String),
         epoch UInt64,
         action LowCardinality(String),
         actor String,
         reason String,
         from_champion String,
         to_champion String,
         from_shadows Array(String),
         to_shadows Array(String),
         key_id String DEFAULT ''",
        "ORDER BY (group_id, epoch, changed_at)",
    ));
    // `vaxpulse eval` results: a model identity on a labelled set (by content hash).
    out.extend(layout.record_table(
        MODEL_EVALUATIONS,
        "evaluated_at DateTime64(3, 'UTC'),
         model String,
         dataset String,
         dataset_sha256 String,
         n UInt64,
         accuracy Float64,
         macro_f1 Float64,
         ece Float64,
         details String,
         compared_with String,
         mcnemar_p Float64",
        "ORDER BY (model, evaluated_at)",
    ));
    // Probe runs: each version's probabilities on the fixed probe set, per replica and run,
    // with the largest change against the version's first and previous runs.
    out.extend(layout.record_table(
        PROBE_RUNS,
        "at DateTime64(3, 'UTC'),
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
         flagged UInt8",
        "ORDER BY (model_version, model_hash, at)",
    ));
    // What each replica did with each deployment: applied (and how long after the change),
    // or refused (and why).
    out.extend(layout.record_table(
        DEPLOYMENT_EVENTS,
        "at DateTime64(3, 'UTC'),
         group_id LowCardinality(String),
         replica String,
         epoch UInt64,
         outcome LowCardinality(String),
         champion String,
         shadows Array(String),
         load_seconds Float64,
         since_change_ms Int64,
         message String,
         key_id String DEFAULT ''",
        "ORDER BY (group_id, epoch, at)",
    ));
    // A sample drawn for annotation (Poisson sampling: each tweet of the window in with its
    // own probability, recorded so estimates weight it by 1 / inclusion_prob). `double`: the
    // tweet is served to two annotators (inter-annotator agreement).
    out.extend(layout.table(
        ANNOTATION_SAMPLES,
        "sample_id String,
         drawn_at DateTime64(3, 'UTC'),
         tweet_id String,
         hour DateTime('UTC'),
         stratum LowCardinality(String),
         inclusion_prob Float64,
         double UInt8",
        "ReplacingMergeTree",
        "drawn_at",
        "ORDER BY (sample_id, tweet_id)",
        "cityHash64(sample_id)",
    ));
    // One label per sample × tweet × annotator; an undo writes the same key with a newer
    // `annotated_at` and `is_deleted = 1`. Labels: against, neutral, favour, off_topic.
    out.extend(layout.table(
        ANNOTATIONS,
        "sample_id String,
         tweet_id String,
         annotator LowCardinality(String),
         label LowCardinality(String),
         annotated_at DateTime64(3, 'UTC'),
         is_deleted UInt8 DEFAULT 0",
        "ReplacingMergeTree",
        "annotated_at, is_deleted",
        "ORDER BY (sample_id, tweet_id, annotator)",
        "cityHash64(sample_id)",
    ));
    out.extend(layout.record_table(
        CALIBRATIONS,
        "fitted_at DateTime64(3, 'UTC'),
         model String,
         temperature Float64,
         source String,
         n UInt64,
         ece_before Float64,
         ece_after Float64",
        "ORDER BY (model, fitted_at)",
    ));
    out.extend(layout.record_table(
        PROMOTION_DECISIONS,
        "decided_at DateTime64(3, 'UTC'),
         group_id LowCardinality(String),
         candidate String,
         champion String,
         outcome LowCardinality(String),
         reasons Array(String),
         evidence String,
         actor String,
         reason String",
        "ORDER BY (group_id, decided_at)",
    ));
    out
}

/// Why a database made by an earlier release cannot be used as it is, if it cannot: its
/// `tweets` table has no tombstones (`is_deleted`), so neither deletions nor the per-hour
/// champion labels work on it. `engine_full` is `system.tables.engine_full` of `tweets` (or
/// its local table).
pub fn outdated(database: &str, engine_full: &str) -> Option<String> {
    (!engine_full.contains("is_deleted")).then(|| {
        format!(
            "database {database} was made by an earlier vaxpulse (tweets without tombstones, \
             champion labels computed over the whole history): point clickhouse.database at a \
             new database and copy the history into it (docs/analysts.md → Migrating a \
             database), or drop this one"
        )
    })
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
    /// 1: the tweet's delete notice came first (the tweet is not stored).
    pub(crate) deleted: u8,
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

/// A row of `annotations`: a label, or (`is_deleted` 1) the undo of one.
#[derive(Row, Serialize, Deserialize, Debug, Clone)]
pub struct AnnotationRow {
    pub sample_id: String,
    pub tweet_id: String,
    pub annotator: String,
    /// against, neutral, favour, off_topic or skip.
    pub label: String,
    #[serde(with = "clickhouse::serde::chrono::datetime64::millis")]
    pub annotated_at: DateTime<Utc>,
    pub is_deleted: u8,
}

/// A row of `calibrations`.
#[derive(Row, Serialize, Deserialize, Debug, Clone)]
pub struct CalibrationRow {
    #[serde(with = "clickhouse::serde::chrono::datetime64::millis")]
    pub fitted_at: DateTime<Utc>,
    /// NAME@VERSION#HASH.
    pub model: String,
    pub temperature: f64,
    /// `annotations` or the eval file's sha256.
    pub source: String,
    pub n: u64,
    pub ece_before: f64,
    pub ece_after: f64,
}

/// A row of `promotion_decisions`.
#[derive(Row, Serialize, Deserialize, Debug, Clone)]
pub struct PromotionDecisionRow {
    #[serde(with = "clickhouse::serde::chrono::datetime64::millis")]
    pub decided_at: DateTime<Utc>,
    pub group_id: String,
    pub candidate: String,
    pub champion: String,
    /// passed, refused, forced or proposed.
    pub outcome: String,
    /// Each check that failed (empty when all passed).
    pub reasons: Vec<String>,
    /// The evidence as JSON (the gate's figures).
    pub evidence: String,
    pub actor: String,
    pub reason: String,
}

impl StoredRow for AnnotationRow {
    const TABLE: &'static str = ANNOTATIONS;
}

impl StoredRow for CalibrationRow {
    const TABLE: &'static str = CALIBRATIONS;
}

impl StoredRow for PromotionDecisionRow {
    const TABLE: &'static str = PROMOTION_DECISIONS;
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

    fn created(stmts: &[String], db: &str) -> Vec<String> {
        let marker = format!("IF NOT EXISTS {db}.");
        stmts
            .iter()
            .filter_map(|s| {
                let rest = s.split(marker.as_str()).nth(1)?;
                Some(
                    rest.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .next()?
                        .to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn every_named_table_is_created_and_every_created_table_is_named() {
        let made = created(&schema_statements(&Layout::single("db")), "db");
        let mut named: Vec<&str> = ALL.to_vec();
        let mut made: Vec<&str> = made.iter().map(String::as_str).collect();
        named.sort_unstable();
        made.sort_unstable();
        assert_eq!(named, made);
    }

    #[test]
    fn on_a_cluster_each_stored_table_is_local_plus_distributed_and_views_read_the_distributed() {
        let layout = Layout {
            cluster: Some("two".into()),
            on_cluster: true,
            replicated: true,
            ..Layout::single("db")
        };
        let stmts = schema_statements(&layout);
        let made = created(&stmts, "db");
        for t in [
            TWEETS,
            PREDICTIONS,
            CHAMPION_LABELS,
            TWEET_HOURS,
            DELETED_TWEETS,
        ] {
            assert!(made.iter().any(|m| m == t), "{t}");
            assert!(made.iter().any(|m| *m == format!("{t}_local")), "{t}_local");
        }
        let all = stmts.join("\n");
        assert!(all.contains(
            "ENGINE = Distributed(two, db, champion_labels_local, cityHash64(tweet_id))"
        ));
        assert!(all.contains("ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', stored_at, is_deleted)"));
        assert!(
            stmts.iter().all(|s| s.contains("ON CLUSTER two")),
            "every DDL on the cluster"
        );
        // Views and the MVs' targets name the distributed tables, never a local one.
        for s in stmts.iter().filter(|s| s.contains("VIEW")) {
            assert!(!s.contains("_local"), "{s}");
        }
        // Without Keeper the caller runs each statement on every server: no ON CLUSTER.
        let each = Layout {
            on_cluster: false,
            replicated: false,
            ..layout
        };
        assert!(schema_statements(&each)
            .iter()
            .all(|s| !s.contains("ON CLUSTER")));
    }

    #[test]
    fn ttls_are_set_only_where_configured_and_removed_when_turned_off() {
        let l = Layout {
            deleted_ids_days: 30,
            ..Layout::single("db")
        };
        let ttls = l.ttls();
        let (t, e, d) = &ttls[0];
        assert_eq!(
            l.ttl_statement(t, e, *d, false).unwrap(),
            "ALTER TABLE db.deleted_tweets MODIFY TTL toDateTime(deleted_at) + INTERVAL 30 DAY SETTINGS materialize_ttl_after_modify = 0"
        );
        let (t, e, d) = &ttls[1];
        assert_eq!(*d, 0);
        assert_eq!(l.ttl_statement(t, e, *d, false), None);
        assert_eq!(
            l.ttl_statement(t, e, *d, true).unwrap(),
            "ALTER TABLE db.tweets REMOVE TTL"
        );
    }

    #[test]
    fn a_database_of_an_earlier_release_is_recognised() {
        assert!(outdated(
            "db",
            "ReplacingMergeTree(stored_at) PARTITION BY toYYYYMM(created_at)"
        )
        .is_some());
        assert!(outdated("db", "ReplacingMergeTree(stored_at, is_deleted) ORDER BY x").is_none());
    }
}
