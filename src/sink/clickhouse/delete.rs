//! Deletions: a delete notice removes its tweet from `tweets` (and, with
//! `retention.delete_counts`, from the counts and predictions). Every step is idempotent and
//! retried until done, so a crash between steps is repaired by the replay. Ids go to the
//! server in statements of at most [`DELETE_CHUNK_BYTES`] of ids, whatever the burst, so no
//! statement can outgrow ClickHouse's `max_query_size` (256 KiB by default).

use chrono::Utc;

use super::schema::{DeletedRow, DELETED_TWEETS, OPINION_HOURLY, PREDICTIONS, TWEETS};
use super::{combined_token, ClickHouseSink};
use crate::sink::{retry_until_done, SinkError};

/// Most bytes of ids bound into one statement (ids are at most 64 characters each, quoted and
/// comma-separated in the query text): a quarter of ClickHouse's default `max_query_size`.
pub const DELETE_CHUNK_BYTES: usize = 64 * 1024;

/// `ids` cut into runs of at most [`DELETE_CHUNK_BYTES`] of query text each (one id per run at
/// least).
pub fn delete_chunks(ids: &[String]) -> Vec<&[String]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, id) in ids.iter().enumerate() {
        let cost = id.len() + 3;
        if i > start && bytes + cost > DELETE_CHUNK_BYTES {
            chunks.push(&ids[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += cost;
    }
    if start < ids.len() {
        chunks.push(&ids[start..]);
    }
    chunks
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
        self.insert_retrying(DELETED_TWEETS, &rows, &token, true)
            .await?;
        for chunk in delete_chunks(ids) {
            self.until_done(
                &format!("DELETE FROM {TWEETS} WHERE has(?, tweet_id)"),
                chunk,
            )
            .await?;
            if self.delete_counts {
                self.delete_counts_of(chunk).await?;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_deletes_is_cut_into_statements_of_bounded_size() {
        let ids: Vec<String> = (0..20_000).map(|i| format!("{:064}", i)).collect();
        let chunks = delete_chunks(&ids);
        assert!(chunks.len() > 1);
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), ids.len());
        for c in &chunks {
            let text: usize = c.iter().map(|id| id.len() + 3).sum();
            assert!(text <= DELETE_CHUNK_BYTES, "{text}");
        }
        assert_eq!(chunks.concat(), ids, "order and ids kept");
        assert!(delete_chunks(&[]).is_empty());
        assert_eq!(delete_chunks(&ids[..1]).len(), 1);
    }
}
