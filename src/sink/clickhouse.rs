//! ClickHouse: the schema (applied idempotently) and the idempotent batch insert.
//!
//! Guarantees: replaying a batch never changes an aggregate. `classified_tweets` is a
//! ReplacingMergeTree keyed on (model_version, hour, tweet_id), so one row per tweet × model
//! remains after merges / `FINAL`; inserts carry a content-derived `insert_deduplication_token`
//! so a retried insert is dropped whole; and `opinion_hourly` counts *distinct* tweet ids
//! (`uniqExact` states), so even a re-batched replay adds nothing to the hourly counts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::Retryable;
use chrono::{DateTime, Utc};
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

use super::{retry_policy, retry_until_done, ClassifiedBatch, SinkError};
use crate::config::{ClickHouseConfig, Secret};
use crate::telemetry::{self, Health};

/// Statements creating the database, tables and views; each is idempotent.
pub fn schema_statements(db: &str) -> Vec<String> {
    vec![
        format!("CREATE DATABASE IF NOT EXISTS {db}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.classified_tweets (
                tweet_id String,
                created_at DateTime64(3, 'UTC'),
                lang LowCardinality(String),
                text String,
                label LowCardinality(String),
                scores Map(LowCardinality(String), Float32),
                model_version LowCardinality(String),
                classified_at DateTime64(3, 'UTC'),
                source_partition Int32,
                source_offset Int64
            ) ENGINE = ReplacingMergeTree(classified_at)
            PARTITION BY toYYYYMM(created_at)
            ORDER BY (model_version, toStartOfHour(created_at), tweet_id)
            SETTINGS non_replicated_deduplication_window = 10000"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.opinion_hourly (
                hour DateTime('UTC'),
                model_version LowCardinality(String),
                label LowCardinality(String),
                tweets AggregateFunction(uniqExact, String)
            ) ENGINE = AggregatingMergeTree
            ORDER BY (hour, model_version, label)
            SETTINGS non_replicated_deduplication_window = 10000"
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.opinion_hourly_mv TO {db}.opinion_hourly AS
            SELECT toStartOfHour(created_at) AS hour, model_version, label,
                   uniqExactState(tweet_id) AS tweets
            FROM {db}.classified_tweets
            GROUP BY hour, model_version, label"
        ),
        format!(
            "CREATE VIEW IF NOT EXISTS {db}.opinion_hourly_counts AS
            SELECT hour, model_version, label, uniqExactMerge(tweets) AS tweets
            FROM {db}.opinion_hourly
            GROUP BY hour, model_version, label"
        ),
    ]
}

#[derive(Row, Serialize, Deserialize)]
struct TweetRow {
    tweet_id: String,
    #[serde(with = "clickhouse::serde::chrono::datetime64::millis")]
    created_at: DateTime<Utc>,
    lang: String,
    text: String,
    label: String,
    scores: BTreeMap<String, f32>,
    model_version: String,
    #[serde(with = "clickhouse::serde::chrono::datetime64::millis")]
    classified_at: DateTime<Utc>,
    source_partition: i32,
    source_offset: i64,
}

/// Writes classified batches to `classified_tweets`.
#[derive(Clone)]
pub struct ClickHouseSink {
    client: Client,
    database: String,
    timeout: Duration,
    health: Option<Arc<Health>>,
}

impl ClickHouseSink {
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

    /// Creates database, tables and views if missing (safe to run any number of times).
    pub async fn apply_schema(&self) -> Result<(), SinkError> {
        // The database may not exist yet, so DDL runs without a default database.
        let admin = self.client.clone().with_database("default");
        for stmt in schema_statements(&self.database) {
            (|| admin.query(&stmt).execute())
                .retry(retry_policy())
                .when(|e: &clickhouse::error::Error| {
                    matches!(e, clickhouse::error::Error::Network(_))
                })
                .await?;
        }
        Ok(())
    }

    /// One insert attempt carrying the batch's deduplication token.
    async fn insert_once(&self, batch: &ClassifiedBatch, token: &str) -> Result<(), SinkError> {
        let mut insert = self
            .client
            .insert::<TweetRow>("classified_tweets")
            .await?
            .with_timeouts(Some(self.timeout), Some(self.timeout))
            .with_setting("insert_deduplication_token", token)
            .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1");
        for r in &batch.rows {
            let scores = r
                .scores
                .iter()
                .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0) as f32))
                .collect();
            insert
                .write(&TweetRow {
                    tweet_id: r.tweet_id.clone(),
                    created_at: r.created_at,
                    lang: r.lang.clone(),
                    text: r.text.clone(),
                    label: r.label.clone(),
                    scores,
                    model_version: r.model_version.clone(),
                    classified_at: r.classified_at,
                    source_partition: r.source_partition,
                    source_offset: r.source_offset,
                })
                .await?;
        }
        insert.end().await?;
        Ok(())
    }

    /// Inserts the batch, retrying transient failures until it succeeds; a non-retriable error
    /// (schema mismatch, bad data) is returned at once.
    pub async fn insert(&self, batch: &ClassifiedBatch) -> Result<(), SinkError> {
        if batch.rows.is_empty() {
            return Ok(());
        }
        let token = batch.dedup_token();
        let started = Instant::now();
        retry_until_done(
            "clickhouse",
            || self.insert_once(batch, &token),
            SinkError::is_retriable,
            self.health.as_deref(),
        )
        .await?;
        telemetry::BatchStored {
            sink: "clickhouse",
            rows: batch.rows.len(),
            seconds: started.elapsed().as_secs_f64(),
        }
        .emit();
        Ok(())
    }
}

impl super::ResultSink for ClickHouseSink {
    fn name(&self) -> &'static str {
        "clickhouse"
    }
    fn store<'a>(
        &'a self,
        batch: &'a ClassifiedBatch,
    ) -> futures::future::BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.insert(batch))
    }
}
