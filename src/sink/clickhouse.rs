//! ClickHouse: the schema (applied idempotently) and the idempotent batch insert.
//!
//! Guarantees: replaying a batch never changes an aggregate. Tweets are stored once (`tweets`),
//! predictions once per tweet × model identity × role (`predictions`, a ReplacingMergeTree whose
//! key holds the weights hash); inserts carry a content-derived `insert_deduplication_token` so
//! a retried insert is dropped whole; `opinion_hourly` counts *distinct* tweet ids per version
//! (`uniqExact` states), and the champion views give exactly one label per tweet.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::Retryable;
use chrono::{DateTime, Utc};
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

use super::{retry_policy, retry_until_done, ClassifiedBatch, Role, SinkError};
use crate::config::{ClickHouseConfig, Secret};
use crate::telemetry::{self, Health};

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
    // chance). The flip matrix is a GROUP BY of the same join (README).
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
                to_shadows Array(String)
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
                message String
            ) ENGINE = MergeTree ORDER BY (group_id, epoch, at)"
        ),
    ]);
    out
}

/// A row of `ingest`: one result (tweet and prediction).
#[derive(Row, Serialize, Deserialize)]
struct IngestRow {
    tweet_id: String,
    #[serde(with = "clickhouse::serde::chrono::datetime64::millis")]
    created_at: DateTime<Utc>,
    lang: String,
    text: String,
    source_partition: i32,
    source_offset: i64,
    model_version: String,
    model_hash: String,
    role: String,
    deployment_epoch: u64,
    label: String,
    scores: BTreeMap<String, f32>,
    #[serde(with = "clickhouse::serde::chrono::datetime64::millis")]
    classified_at: DateTime<Utc>,
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
}

/// Writes classified batches to `classified_tweets`.
#[derive(Clone)]
pub struct ClickHouseSink {
    client: Client,
    database: String,
    timeout: Duration,
    health: Option<Arc<Health>>,
    delete_counts: bool,
}

impl ClickHouseSink {
    /// The sink of `cfg`: `clickhouse` settings and `retention`.
    pub fn from_config(cfg: &crate::config::Config) -> Result<Self, crate::config::ConfigError> {
        Ok(Self::new(&cfg.clickhouse, &cfg.clickhouse_password()?)
            .with_delete_counts(cfg.retention.delete_counts))
    }

    /// `retention.delete_counts`: deletions also leave the counts.
    pub fn with_delete_counts(mut self, delete_counts: bool) -> Self {
        self.delete_counts = delete_counts;
        self
    }

    pub fn new(cfg: &ClickHouseConfig, password: &Secret) -> Self {
        let mut client = Client::default()
            .with_url(&cfg.url)
            .with_user(&cfg.user)
            .with_database(&cfg.database);
        if !password.is_empty() {
            client = client.with_password(password.expose());
        }
        ClickHouseSink {
            client,
            database: cfg.database.clone(),
            timeout: Duration::from_millis(cfg.insert_timeout_ms),
            health: None,
            delete_counts: false,
        }
    }

    /// Reports the replica not ready while an insert is being retried.
    pub fn with_health(mut self, health: Arc<Health>) -> Self {
        self.health = Some(health);
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// Creates database, tables and views if missing (safe to run any number of times).
    pub async fn apply_schema(&self) -> Result<(), SinkError> {
        // The database may not exist yet, so DDL runs without a default database.
        let admin = self.client.clone().with_database("default");
        for stmt in schema_statements(&self.database, self.delete_counts) {
            (|| admin.query(&stmt).execute())
                .retry(retry_policy())
                .when(|e: &clickhouse::error::Error| {
                    matches!(e, clickhouse::error::Error::Network(_))
                })
                .await?;
        }
        // The views were made once, maybe with the other setting: say so rather than half-apply.
        let ddl: String = admin
            .query("SELECT create_table_query FROM system.tables WHERE database = ? AND name = 'predictions_mv'")
            .bind(&self.database)
            .fetch_one()
            .await?;
        let made_with = ddl.contains("deleted_tweets");
        if made_with != self.delete_counts {
            return Err(SinkError::Schema(format!(
                "database {} was created with retention.delete_counts = {made_with}, the config says {}: \
                 set it back, or recreate the view (DROP VIEW {}.predictions_mv, then start again) — \
                 rows stored so far keep the old behaviour",
                self.database, self.delete_counts, self.database
            )));
        }
        Ok(())
    }

    /// One insert attempt of `rows` into `table`, carrying `token` for deduplication.
    async fn insert_rows<R: clickhouse::RowOwned + clickhouse::RowWrite>(
        &self,
        table: &str,
        rows: &[R],
        token: &str,
    ) -> Result<(), SinkError> {
        let mut insert = self
            .client
            .insert::<R>(table)
            .await?
            .with_timeouts(Some(self.timeout), Some(self.timeout))
            .with_setting("insert_deduplication_token", token)
            .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1");
        for r in rows {
            insert.write(r).await?;
        }
        insert.end().await?;
        Ok(())
    }

    /// Inserts `rows` into `table`, retrying transient failures until it succeeds (or once,
    /// for shadows: a shadow's write is never waited for); a non-retriable error is returned.
    pub(crate) async fn insert_retrying<R: clickhouse::RowOwned + clickhouse::RowWrite + Sync>(
        &self,
        table: &str,
        rows: &[R],
        token: &str,
        until_done: bool,
    ) -> Result<(), SinkError> {
        if until_done {
            retry_until_done(
                "clickhouse",
                || self.insert_rows(table, rows, token),
                SinkError::is_retriable,
                self.health.as_deref(),
            )
            .await
        } else {
            (|| self.insert_rows(table, rows, token))
                .retry(retry_policy().with_max_times(3))
                .when(SinkError::is_retriable)
                .await
        }
    }

    /// `batches` as rows of `ingest` (shadow rows without the text: only champion rows fill
    /// `tweets`).
    fn ingest_rows<'a>(batches: impl IntoIterator<Item = &'a ClassifiedBatch>) -> Vec<IngestRow> {
        batches
            .into_iter()
            .flat_map(|b| &b.rows)
            .map(|r| IngestRow {
                tweet_id: r.tweet_id.clone(),
                created_at: r.created_at,
                lang: r.lang.clone(),
                text: match r.role {
                    Role::Champion => r.text.clone(),
                    Role::Shadow => String::new(),
                },
                source_partition: r.source_partition,
                source_offset: r.source_offset,
                model_version: r.model_version.clone(),
                model_hash: r.model_hash.clone(),
                role: r.role.as_str().into(),
                deployment_epoch: r.deployment_epoch,
                label: r.label.clone(),
                scores: r
                    .scores
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0) as f32))
                    .collect(),
                classified_at: r.classified_at,
            })
            .collect()
    }

    /// Stores a champion batch (its tweets and predictions, in one insert), retrying transient
    /// failures until it succeeds; a non-retriable error (schema mismatch, bad data) is returned
    /// at once.
    pub async fn insert(&self, batch: &ClassifiedBatch) -> Result<(), SinkError> {
        if batch.rows.is_empty() {
            return self.delete_tweets(&batch.deleted).await;
        }
        let token = batch.dedup_token();
        let started = Instant::now();
        let rows = Self::ingest_rows([batch]);
        self.insert_retrying("ingest", &rows, &token, true).await?;
        self.delete_tweets(&batch.deleted).await?;
        telemetry::BatchStored {
            sink: "clickhouse",
            rows: batch.rows.len(),
            seconds: started.elapsed().as_secs_f64(),
        }
        .emit();
        Ok(())
    }

    /// Stores shadow batches' predictions in one insert, with a few retries only: shadows are
    /// best effort.
    pub async fn insert_shadows(&self, batches: &[ClassifiedBatch]) -> Result<(), SinkError> {
        let rows = Self::ingest_rows(batches);
        if rows.is_empty() {
            return Ok(());
        }
        let tokens: Vec<String> = batches.iter().map(ClassifiedBatch::dedup_token).collect();
        let token = combined_token(tokens.iter().map(String::as_str));
        self.insert_retrying("ingest", &rows, &token, false).await
    }

    /// Appends one row to `deployment_changes` or `deployment_events`.
    pub async fn record<R: clickhouse::RowOwned + clickhouse::RowWrite + Sync>(
        &self,
        table: &str,
        row: &R,
    ) -> Result<(), SinkError> {
        let mut insert = self.client.insert::<R>(table).await?;
        insert.write(row).await?;
        insert.end().await?;
        Ok(())
    }
}

/// The deduplication token of one insert made of several parts (batch tokens, tweet ids): the
/// same parts in the same order give the same token.
fn combined_token<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    format!("{:x}", h.finalize())
}

/// A row of `deleted_tweets`.
#[derive(Row, Serialize, Deserialize)]
struct DeletedRow {
    tweet_id: String,
    #[serde(with = "clickhouse::serde::chrono::datetime64::millis")]
    deleted_at: DateTime<Utc>,
}

impl ClickHouseSink {
    /// Applies delete notices: remembers the ids (so a tweet arriving later is not stored) and
    /// removes their rows from `tweets` (lightweight delete). Idempotent; retried until done.
    pub async fn delete_tweets(&self, ids: &[String]) -> Result<(), SinkError> {
        if ids.is_empty() {
            return Ok(());
        }
        let now = Utc::now();
        let rows: Vec<DeletedRow> = ids
            .iter()
            .map(|id| DeletedRow {
                tweet_id: id.clone(),
                deleted_at: now,
            })
            .collect();
        let token = format!("delete-{}", combined_token(ids.iter().map(String::as_str)));
        self.insert_retrying("deleted_tweets", &rows, &token, true)
            .await?;
        self.until_done("DELETE FROM tweets WHERE has(?, tweet_id)", ids)
            .await?;
        if self.delete_counts {
            self.delete_counts_of(ids).await?;
        }
        Ok(())
    }

    /// Runs `sql` with `ids` bound to each of its `?` until it succeeds (or fails for good).
    async fn until_done(&self, sql: &str, ids: &[String]) -> Result<(), SinkError> {
        let params = sql.matches('?').count();
        retry_until_done(
            "clickhouse",
            || async {
                let mut q = self.client.query(sql);
                for _ in 0..params {
                    q = q.bind(ids);
                }
                q.execute().await.map_err(SinkError::from)
            },
            SinkError::is_retriable,
            self.health.as_deref(),
        )
        .await
    }

    /// `retention.delete_counts`: the hours `ids` counted in are rebuilt in `opinion_hourly`
    /// without them, then their predictions go. Each step is retried until done, and the order
    /// makes the whole safe to run again after a crash: the hours are found from the
    /// predictions, which leave last. Rebuilding is safe beside concurrent inserts: the hour's
    /// state is a set of tweet ids, and a set merged twice is the same set.
    async fn delete_counts_of(&self, ids: &[String]) -> Result<(), SinkError> {
        let hours =
            "SELECT DISTINCT toStartOfHour(created_at) FROM predictions WHERE has(?, tweet_id)";
        self.until_done(
            &format!("DELETE FROM opinion_hourly WHERE hour IN ({hours})"),
            ids,
        )
        .await?;
        // Not deduplicated: the same hour rebuilt twice must be written twice.
        self.until_done(
            &format!(
                "INSERT INTO opinion_hourly
                 SELECT toStartOfHour(created_at) AS hour, model_version, model_hash, label,
                        uniqExactState(tweet_id)
                 FROM predictions
                 WHERE toStartOfHour(created_at) IN ({hours}) AND NOT has(?, tweet_id)
                 GROUP BY hour, model_version, model_hash, label
                 SETTINGS insert_deduplicate = 0"
            ),
            ids,
        )
        .await?;
        self.until_done("DELETE FROM predictions WHERE has(?, tweet_id)", ids)
            .await
    }
}

/// A champion batch waiting for the grouped insert, and who to tell when it is stored.
struct Pending {
    deleted: Vec<String>,
    rows: Vec<IngestRow>,
    token: String,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// The ClickHouse result sink with group commit: batches stored within `linger` of each other
/// (up to `full_rows` rows) go out as one insert. An insert costs ClickHouse about the same for
/// 3 rows as for 300 (a part in each table the views fill), and under a light load the batcher
/// closes many small batches; the output topic is not held back by this (the ack stage writes
/// batches side by side), only the acknowledgement waits.
pub struct GroupedClickHouse {
    tx: tokio::sync::mpsc::Sender<Pending>,
}

impl GroupedClickHouse {
    /// Starts the writer task on the current runtime.
    pub fn start(sink: ClickHouseSink, linger: Duration, full_rows: usize) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel::<Pending>(256);
        tokio::spawn(group_writer(sink, rx, linger, full_rows));
        GroupedClickHouse { tx }
    }
}

async fn group_writer(
    sink: ClickHouseSink,
    mut rx: tokio::sync::mpsc::Receiver<Pending>,
    linger: Duration,
    full_rows: usize,
) {
    let mut group: Vec<Pending> = Vec::new();
    while rx.recv_many(&mut group, 256).await > 0 {
        let until = tokio::time::Instant::now() + linger;
        while group.iter().map(|p| p.rows.len()).sum::<usize>() < full_rows {
            match tokio::time::timeout_at(until, rx.recv_many(&mut group, 256)).await {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
        let started = Instant::now();
        let token = combined_token(group.iter().map(|p| p.token.as_str()));
        let mut rows = Vec::with_capacity(group.iter().map(|p| p.rows.len()).sum());
        let mut deleted = Vec::new();
        let mut waiting = Vec::with_capacity(group.len());
        for p in group.drain(..) {
            rows.extend(p.rows);
            deleted.extend(p.deleted);
            waiting.push(p.done);
        }
        // Tweets first, then deletes: a tweet and its delete in the same group end deleted.
        let mut result = Ok(());
        if !rows.is_empty() {
            result = sink.insert_retrying("ingest", &rows, &token, true).await;
        }
        if result.is_ok() {
            result = sink.delete_tweets(&deleted).await;
        }
        let result = result.map_err(|e| e.to_string());
        if result.is_ok() {
            telemetry::BatchStored {
                sink: "clickhouse",
                rows: rows.len(),
                seconds: started.elapsed().as_secs_f64(),
            }
            .emit();
        }
        for w in waiting {
            let _ = w.send(result.clone());
        }
    }
}

impl super::ResultSink for GroupedClickHouse {
    fn name(&self) -> &'static str {
        "clickhouse"
    }
    fn store<'a>(
        &'a self,
        batch: &'a ClassifiedBatch,
    ) -> futures::future::BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if batch.rows.is_empty() && batch.deleted.is_empty() {
                return Ok(());
            }
            let (done, result) = tokio::sync::oneshot::channel();
            let pending = Pending {
                deleted: batch.deleted.clone(),
                rows: ClickHouseSink::ingest_rows([batch]),
                token: batch.dedup_token(),
                done,
            };
            let gone = || SinkError::Stopped("the ClickHouse writer stopped".into());
            self.tx.send(pending).await.map_err(|_| gone())?;
            result
                .await
                .map_err(|_| gone())?
                .map_err(SinkError::Stopped)
        })
    }
}
