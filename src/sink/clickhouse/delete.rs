//! Deletions: a delete notice removes its tweet from `tweets` (and, with
//! `retention.delete_counts`, from the counts and predictions). Every step is idempotent and
//! retried until done, so a crash between steps is repaired by the replay.

use chrono::Utc;

use super::schema::{DeletedRow, DELETED_TWEETS, OPINION_HOURLY, PREDICTIONS, TWEETS};
use super::{combined_token, ClickHouseSink};
use crate::sink::{retry_until_done, SinkError};

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
        self.insert_retrying(DELETED_TWEETS, &rows, &token, true)
            .await?;
        self.until_done(&format!("DELETE FROM {TWEETS} WHERE has(?, tweet_id)"), ids)
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
        let hours = format!(
            "SELECT DISTINCT toStartOfHour(created_at) FROM {PREDICTIONS} WHERE has(?, tweet_id)"
        );
        self.until_done(
            &format!("DELETE FROM {OPINION_HOURLY} WHERE hour IN ({hours})"),
            ids,
        )
        .await?;
        // Not deduplicated: the same hour rebuilt twice must be written twice.
        self.until_done(
            &format!(
                "INSERT INTO {OPINION_HOURLY}
                 SELECT toStartOfHour(created_at) AS hour, model_version, model_hash, label,
                        uniqExactState(tweet_id)
                 FROM {PREDICTIONS}
                 WHERE toStartOfHour(created_at) IN ({hours}) AND NOT has(?, tweet_id)
                 GROUP BY hour, model_version, model_hash, label
                 SETTINGS insert_deduplicate = 0"
            ),
            ids,
        )
        .await?;
        self.until_done(
            &format!("DELETE FROM {PREDICTIONS} WHERE has(?, tweet_id)"),
            ids,
        )
        .await
    }
}
