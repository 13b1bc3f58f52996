//! The types that flow through the pipeline, from the consumer to the sinks: a tweet handed in
//! with its ack ([`Work`]), and what the model made of it ([`Classification`] in a
//! [`ClassifiedBatch`], per [`Role`]). Neutral ground: neither end owns them, so the middle
//! stages, `eval` and the in-process benches name them without importing a Kafka client.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::batch::offsets::Ack;
use crate::tweet::Tweet;

/// A tweet handed to the pipeline, with the ack to return once its result is stored.
#[derive(Debug)]
pub struct Work {
    pub tweet: Tweet,
    /// A delete notice for `tweet.id` (its text is empty): not scored; its sinks remove the
    /// tweet (output-topic tombstone, ClickHouse delete) before its offset is acknowledged.
    pub delete: bool,
    pub ack: Ack,
    /// The input record's Kafka timestamp (ms), when it has one.
    pub source_timestamp_ms: Option<i64>,
    /// When the consumer took the message.
    pub received: std::time::Instant,
}

impl Work {
    /// A tweet handed to the inference stages in process (benches, `eval`): no Kafka timestamp,
    /// received now.
    pub fn new(tweet: Tweet, ack: Ack) -> Self {
        Work {
            tweet,
            delete: false,
            ack,
            source_timestamp_ms: None,
            received: std::time::Instant::now(),
        }
    }
}

/// One classified tweet, as published to the output topic (JSON) and stored in ClickHouse.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Classification {
    pub tweet_id: String,
    /// RFC 3339.
    pub created_at: DateTime<Utc>,
    pub lang: String,
    /// The full text classified (before normalisation).
    pub text: String,
    pub label: String,
    /// Label → probability, in the model's label order.
    pub scores: serde_json::Map<String, serde_json::Value>,
    /// `NAME@VERSION` of the model that gave this result.
    pub model_version: String,
    /// Short hash of that version's weights (a re-export under the same version differs here).
    pub model_hash: String,
    /// `champion` (published, counted in the champion series) or `shadow` (compared only).
    pub role: Role,
    /// The deployment (control-topic epoch) the batch was scored under; 0 = the configured
    /// `model.dir` before any deployment was published.
    pub deployment_epoch: u64,
    pub classified_at: DateTime<Utc>,
    /// Where the tweet came from (`partition`, `offset` of the input topic).
    pub source_partition: i32,
    pub source_offset: i64,
    /// The input record's Kafka timestamp (ms); published as the header
    /// `vaxpulse.source_timestamp_ms` so consumers can measure end-to-end latency.
    #[serde(skip)]
    pub source_timestamp_ms: Option<i64>,
}

/// What a version's result is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Champion,
    Shadow,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Champion => "champion",
            Role::Shadow => "shadow",
        }
    }
}

/// Results of one inference batch, with what must be acknowledged once they are stored.
#[derive(Debug)]
pub struct ClassifiedBatch {
    pub rows: Vec<Classification>,
    /// Ids of tweets deleted by delete notices of this batch (their acks are in `acks` too).
    pub deleted: Vec<String>,
    pub acks: Vec<Ack>,
    /// When each row's message was taken from the input topic (same order as `rows`).
    pub received: Vec<std::time::Instant>,
}

impl ClassifiedBatch {
    /// What this batch weighs while it waits for the sinks: its texts and ids, plus a fixed
    /// cost per row for the rest (scores, labels, versions) — the unit of the byte budgets.
    pub fn approx_bytes(&self) -> usize {
        self.rows
            .iter()
            .map(|r| r.text.len() + r.tweet_id.len() + 256)
            .sum::<usize>()
            + self.deleted.iter().map(|d| d.len() + 64).sum::<usize>()
    }

    /// A deterministic token for this batch's content: the same messages classified by the same
    /// model identity (version *and* weights hash) in the same role give the same token, so a
    /// retried insert is deduplicated by ClickHouse, and a re-exported version is not.
    pub fn dedup_token(&self) -> String {
        let mut keys: Vec<(i32, i64)> = self
            .rows
            .iter()
            .map(|r| (r.source_partition, r.source_offset))
            .collect();
        keys.sort_unstable();
        let mut h = Sha256::new();
        if let Some(first) = self.rows.first() {
            h.update(first.model_version.as_bytes());
            h.update(b"#");
            h.update(first.model_hash.as_bytes());
            h.update(first.role.as_str().as_bytes());
        }
        for (p, o) in keys {
            h.update(p.to_le_bytes());
            h.update(o.to_le_bytes());
        }
        format!("{:x}", h.finalize())
    }

    /// Count of tweets per predicted label.
    pub fn label_counts(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = Vec::new();
        for r in &self.rows {
            match out.iter_mut().find(|(l, _)| *l == r.label) {
                Some((_, n)) => *n += 1,
                None => out.push((r.label.clone(), 1)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::offsets::OffsetTracker;

    fn row(p: i32, o: i64) -> Classification {
        Classification {
            tweet_id: format!("{p}-{o}"),
            created_at: Utc::now(),
            lang: "fr".into(),
            text: "t".into(),
            label: "neutral".into(),
            scores: Default::default(),
            model_version: "demo@1".into(),
            model_hash: "aaaaaaaaaaaa".into(),
            role: Role::Champion,
            deployment_epoch: 0,
            classified_at: Utc::now(),
            source_partition: p,
            source_offset: o,
            source_timestamp_ms: None,
        }
    }

    #[test]
    fn dedup_token_depends_on_content_not_order_or_time() {
        let t = OffsetTracker::new();
        let a = ClassifiedBatch {
            rows: vec![row(0, 1), row(1, 5)],
            deleted: Vec::new(),
            acks: vec![t.track(0, 1)],
            received: vec![],
        };
        let b = ClassifiedBatch {
            rows: vec![row(1, 5), row(0, 1)],
            deleted: Vec::new(),
            acks: vec![],
            received: vec![],
        };
        let c = ClassifiedBatch {
            rows: vec![row(0, 1), row(1, 6)],
            deleted: Vec::new(),
            acks: vec![],
            received: vec![],
        };
        assert_eq!(a.dedup_token(), b.dedup_token());
        assert_ne!(a.dedup_token(), c.dedup_token());
        let mut other_model = b;
        other_model
            .rows
            .iter_mut()
            .for_each(|r| r.model_version = "demo@2".into());
        assert_ne!(a.dedup_token(), other_model.dedup_token());
        let mut reexported = other_model;
        let before = reexported.dedup_token();
        reexported
            .rows
            .iter_mut()
            .for_each(|r| r.model_hash = "bbbbbbbbbbbb".into());
        assert_ne!(
            before,
            reexported.dedup_token(),
            "same version, new weights"
        );
        let as_shadow = before.clone();
        reexported.rows.iter_mut().for_each(|r| {
            r.model_hash = "aaaaaaaaaaaa".into();
            r.role = Role::Shadow;
        });
        assert_ne!(
            as_shadow,
            reexported.dedup_token(),
            "same version, other role"
        );
    }
}
