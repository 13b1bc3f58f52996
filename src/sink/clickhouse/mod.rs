//! ClickHouse, the connection and the writes: the schema applied idempotently, the
//! deduplicated batch insert (champion and shadows), appended rows of the record tables, and
//! deletions ([`delete`]); [`group`] is the result sink that groups batches into one insert.
//! What is stored where, and why replays never change an aggregate, is in [`schema`].

pub mod delete;
pub mod group;
pub mod schema;

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::Retryable;
use clickhouse::Client;

pub use group::GroupedClickHouse;
use schema::IngestRow;
pub use schema::{schema_statements, DeploymentChangeRow, DeploymentEventRow, StoredRow};

use super::{retry_policy, retry_until_done, SinkError};
use crate::config::{ClickHouseConfig, Secret};
use crate::telemetry::{self, Health};
use crate::work::{ClassifiedBatch, Role};

/// Writes classified batches to `classified_tweets`.
#[derive(Clone)]
pub struct ClickHouseSink {
    client: Client,
    database: String,
    timeout: Duration,
    health: Option<Arc<Health>>,
    delete_counts: bool,
    layout: schema::Layout,
    /// Servers the schema is applied to one by one (a cluster without Keeper).
    schema_urls: Vec<String>,
}

impl ClickHouseSink {
    /// The sink of `cfg`: `clickhouse` settings and `retention`.
    pub fn from_config(cfg: &crate::config::Config) -> Result<Self, crate::config::ConfigError> {
        let mut sink = Self::new(&cfg.clickhouse, &cfg.clickhouse_password()?)
            .with_delete_counts(cfg.retention.delete_counts);
        sink.layout = schema::Layout::from_config(cfg);
        sink.schema_urls = cfg.clickhouse.schema_urls.clone();
        if sink.layout.cluster.is_some() {
            // An insert through a Distributed table returns once every shard has its rows, so
            // the acknowledgement (and the offset commit) still means stored.
            sink.client = sink
                .client
                .with_setting("distributed_foreground_insert", "1");
        }
        Ok(sink)
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
            layout: schema::Layout::single(&cfg.database),
            schema_urls: Vec::new(),
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

    /// Creates database, tables and views if missing (safe to run any number of times), sets
    /// the retention TTLs; refuses a database made by an earlier release
    /// ([`schema::outdated`]). On a cluster without Keeper, on each of `schema_urls`.
    pub async fn apply_schema(&self) -> Result<(), SinkError> {
        if self.schema_urls.is_empty() {
            return self.apply_schema_on(&self.client).await;
        }
        for url in &self.schema_urls {
            self.apply_schema_on(&self.client.clone().with_url(url))
                .await
                .map_err(|e| SinkError::Schema(format!("on {url}: {e}")))?;
        }
        Ok(())
    }

    async fn apply_schema_on(&self, client: &Client) -> Result<(), SinkError> {
        // The database may not exist yet, so DDL runs without a default database.
        let admin = client.clone().with_database("default");
        let db = &self.database;
        let engine = |table: String| {
            let admin = admin.clone();
            async move {
                admin
                    .query("SELECT engine_full FROM system.tables WHERE database = ? AND name = ?")
                    .bind(db)
                    .bind(table)
                    .fetch_optional::<String>()
                    .await
            }
        };
        if let Some(e) = engine(self.layout.storage(schema::TWEETS)).await? {
            if let Some(why) = schema::outdated(db, &e) {
                return Err(SinkError::Schema(why));
            }
        }
        let run = |stmt: String| {
            let admin = admin.clone();
            async move {
                (|| admin.query(&stmt).execute())
                    .retry(retry_policy())
                    .when(|e: &clickhouse::error::Error| {
                        matches!(e, clickhouse::error::Error::Network(_))
                    })
                    .await
            }
        };
        for stmt in schema_statements(&self.layout) {
            run(stmt).await?;
        }
        for (table, expr, days) in self.layout.ttls() {
            let present = engine(table.clone())
                .await?
                .is_some_and(|e| e.contains(" TTL "));
            if let Some(stmt) = self.layout.ttl_statement(&table, expr, days, present) {
                run(stmt).await?;
            }
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
        self.retrying(until_done, || self.insert_rows(table, rows, token))
            .await
    }

    /// Runs `op` until it succeeds or fails for good (`until_done`: the champion's writes, never
    /// dropped), or with a few retries only (shadows: best effort).
    pub(crate) async fn retrying<T, F, Fut>(&self, until_done: bool, op: F) -> Result<T, SinkError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, SinkError>>,
    {
        if until_done {
            retry_until_done(
                "clickhouse",
                op,
                SinkError::is_retriable,
                self.health.as_deref(),
            )
            .await
        } else {
            op.retry(retry_policy().with_max_times(3))
                .when(SinkError::is_retriable)
                .await
        }
    }

    /// `batches` as rows of `ingest` (shadow rows without the text: only champion rows fill
    /// `tweets`).
    pub(crate) fn ingest_rows<'a>(
        batches: impl IntoIterator<Item = &'a ClassifiedBatch>,
    ) -> Vec<IngestRow> {
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
                deleted: 0,
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
        self.store_rows(schema::INGEST, rows, &token, true).await?;
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
        self.store_rows(schema::INGEST, rows, &token, false).await
    }

    /// Appends one row to its table (`deployment_changes`, `deployment_events`, `probe_runs`,
    /// `model_evaluations`).
    pub async fn record<R: StoredRow>(&self, row: &R) -> Result<(), SinkError> {
        let mut insert = self.client.insert::<R>(R::TABLE).await?;
        insert.write(row).await?;
        insert.end().await?;
        Ok(())
    }
}

/// The deduplication token of one insert made of several parts (batch tokens, tweet ids): the
/// same parts in the same order give the same token.
pub(crate) fn combined_token<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    format!("{:x}", h.finalize())
}
