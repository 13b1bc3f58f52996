//! Deletions, at the cost of the batch that carries them: no mutation, no scan of the history.
//! A delete notice's id is remembered (`deleted_tweets`, primary key `tweet_id`, TTL
//! `retention.deleted_ids_days`) and its tweet's stored rows get tombstones: rows of the same
//! key with `is_deleted = 1` and a higher version, which `FINAL` and merges keep instead of the
//! tweet. The key of those rows comes from `tweet_hours` (tweet id → hour), a primary-key
//! lookup. A tweet arriving after its delete is screened before its insert ([`screen`]) and
//! checked again after it ([`ClickHouseSink::store_rows`]), which closes the race with a delete
//! stored meanwhile by another replica. Every step is idempotent and retried, so a crash between
//! steps is repaired by the replay. Ids go to the server in statements of at most
//! [`DELETE_CHUNK_BYTES`] of ids, whatever the burst, so no statement can outgrow ClickHouse's
//! `max_query_size` (256 KiB by default).

use std::collections::HashSet;

use chrono::Utc;

use super::schema::{
    DeletedRow, IngestRow, CHAMPION_LABELS, DELETED_TWEETS, PREDICTIONS, TOMBSTONE_RANK,
    TOUCHED_HOURS, TWEETS, TWEET_HOURS,
};
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

/// Applies the ids found deleted to rows about to be inserted: with `delete_counts` their rows
/// go; otherwise the prediction stays (an anonymous count) and the tweet is not stored.
pub(crate) fn screen(rows: &mut Vec<IngestRow>, deleted: &HashSet<String>, delete_counts: bool) {
    if deleted.is_empty() {
        return;
    }
    if delete_counts {
        rows.retain(|r| !deleted.contains(&r.tweet_id));
    } else {
        for r in rows.iter_mut().filter(|r| deleted.contains(&r.tweet_id)) {
            r.deleted = 1;
            r.text.clear();
        }
    }
}

/// The distinct tweet ids of `rows` not marked deleted, in order of first appearance.
fn live_ids(rows: &[IngestRow]) -> Vec<String> {
    let mut seen = HashSet::new();
    rows.iter()
        .filter(|r| r.deleted == 0 && seen.insert(r.tweet_id.as_str()))
        .map(|r| r.tweet_id.clone())
        .collect()
}

impl ClickHouseSink {
    /// Stores `rows` through `ingest` with `token`: screened against the deleted ids first,
    /// checked again once stored (a delete stored meanwhile gets its tombstones now). Retried
    /// until done (`until_done`) or a few times (shadows).
    pub(crate) async fn store_rows(
        &self,
        table: &str,
        mut rows: Vec<IngestRow>,
        token: &str,
        until_done: bool,
    ) -> Result<(), SinkError> {
        let ids = live_ids(&rows);
        let before = self.deleted_among(&ids, until_done).await?;
        screen(&mut rows, &before, self.delete_counts);
        if !rows.is_empty() {
            self.insert_retrying(table, &rows, token, until_done)
                .await?;
        }
        let ids: Vec<String> = ids.into_iter().filter(|i| !before.contains(i)).collect();
        let after: Vec<String> = self
            .deleted_among(&ids, until_done)
            .await?
            .into_iter()
            .collect();
        self.tombstone(&after).await
    }

    /// Of `ids`, those with a delete notice: one primary-key lookup per chunk of ids.
    async fn deleted_among(
        &self,
        ids: &[String],
        until_done: bool,
    ) -> Result<HashSet<String>, SinkError> {
        let mut found = HashSet::new();
        for chunk in delete_chunks(ids) {
            let sql = format!("SELECT tweet_id FROM {DELETED_TWEETS} WHERE has(?, tweet_id)");
            let lookup = || async {
                self.client
                    .query(&sql)
                    .bind(chunk)
                    .fetch_all::<String>()
                    .await
                    .map_err(SinkError::from)
            };
            let hits = self.retrying(until_done, lookup).await?;
            found.extend(hits);
        }
        Ok(found)
    }

    /// Applies delete notices: remembers the ids (so a tweet arriving later is not stored) and
    /// puts tombstones on their stored rows. Idempotent; retried until done.
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
        self.tombstone(ids).await
    }

    /// Tombstones on the stored rows of `ids`: their tweets, and with `delete_counts` their
    /// champion labels and predictions. Each statement reads the rows' keys by primary key
    /// (`tweet_hours`, then the predictions of those hours only) and writes as many rows as it
    /// found.
    async fn tombstone(&self, ids: &[String]) -> Result<(), SinkError> {
        let hours = format!("SELECT tweet_id, hour FROM {TWEET_HOURS} WHERE has(?, tweet_id)");
        for chunk in delete_chunks(ids) {
            self.until_done(
                &format!(
                    "INSERT INTO {TWEETS} (tweet_id, created_at, stored_at, is_deleted)
                     SELECT tweet_id, hour, now64(3), 1 FROM ({hours})"
                ),
                chunk,
            )
            .await?;
            if !self.delete_counts {
                continue;
            }
            self.until_done(
                &format!(
                    "INSERT INTO {CHAMPION_LABELS} (hour, tweet_id, first_rank, is_deleted)
                     SELECT hour, tweet_id, {TOMBSTONE_RANK}, 1 FROM ({hours})"
                ),
                chunk,
            )
            .await?;
            // The monitor's rollup recomputes these hours.
            self.until_done(
                &format!(
                    "INSERT INTO {TOUCHED_HOURS} (hour, touched_at)
                     SELECT DISTINCT hour, now64(3) FROM ({hours})"
                ),
                chunk,
            )
            .await?;
            // GLOBAL: on a cluster the hours are read once, not by every shard from every shard.
            self.until_done(
                &format!(
                    "INSERT INTO {PREDICTIONS}
                         (tweet_id, created_at, model_version, model_hash, role, classified_at,
                          is_deleted)
                     SELECT tweet_id, created_at, model_version, model_hash, role, now64(3), 1
                     FROM {PREDICTIONS}
                     WHERE toStartOfHour(created_at) GLOBAL IN (SELECT hour FROM ({hours}))
                       AND has(?, tweet_id)"
                ),
                chunk,
            )
            .await?;
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

    fn row(id: &str, role: &str) -> IngestRow {
        IngestRow {
            tweet_id: id.into(),
            created_at: Utc::now(),
            lang: "fr".into(),
            text: format!("text of {id}"),
            source_partition: 0,
            source_offset: 0,
            model_version: "m@1".into(),
            model_hash: "h".into(),
            role: role.into(),
            deployment_epoch: 0,
            label: "neutral".into(),
            scores: Default::default(),
            classified_at: Utc::now(),
            deleted: 0,
        }
    }

    #[test]
    fn a_tweet_deleted_before_it_arrived_is_not_stored_and_counts_only_without_delete_counts() {
        let deleted: HashSet<String> = ["b".to_string()].into();
        let rows = || {
            vec![
                row("a", "champion"),
                row("b", "champion"),
                row("b", "shadow"),
            ]
        };
        let mut kept = rows();
        screen(&mut kept, &deleted, false);
        assert_eq!(kept.len(), 3, "predictions still count");
        assert!(kept.iter().all(|r| (r.tweet_id == "b") == (r.deleted == 1)));
        assert!(kept
            .iter()
            .filter(|r| r.deleted == 1)
            .all(|r| r.text.is_empty()));
        assert_eq!(live_ids(&kept), vec!["a".to_string()]);
        let mut gone = rows();
        screen(&mut gone, &deleted, true);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].tweet_id, "a");
    }
}
