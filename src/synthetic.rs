//! Synthetic French vaccination tweets for demos, tests and benchmarks, built from the same
//! phrase bank (`data/synthetic_tweets.json`) the demo model was trained on, in the three payload
//! shapes the worker reads (Twitter v1.1, v2, plain).

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::{DateTime, Duration, Utc};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::json;

use crate::tweet::DlqReason;

#[derive(Deserialize)]
struct Bank {
    labels: Vec<String>,
    templates: HashMap<String, Vec<String>>,
    slots: HashMap<String, Vec<String>>,
    openers: Vec<String>,
    closers: Vec<String>,
    hashtags: Vec<String>,
    emojis: Vec<String>,
    mentions: Vec<String>,
    urls: Vec<String>,
}

static BANK: LazyLock<Bank> = LazyLock::new(|| {
    serde_json::from_str(include_str!("../data/synthetic_tweets.json"))
        .expect("embedded phrase bank parses; this is a bug")
});

/// Generates tweets deterministically from a seed.
pub struct Generator {
    rng: StdRng,
    start: DateTime<Utc>,
    span_secs: i64,
    next_id: u64,
    trend: bool,
}

/// One generated tweet, before it is put in a payload shape.
#[derive(Debug, Clone)]
pub struct SyntheticTweet {
    pub id: String,
    pub text: String,
    pub created_at: DateTime<Utc>,
    /// The opinion the text was written with (ground truth of the generator).
    pub label: String,
}

fn pick<'a>(rng: &mut StdRng, v: &'a [String]) -> &'a str {
    v.choose(rng).map(String::as_str).unwrap_or("")
}

impl Generator {
    /// Tweets spread over `days` days starting at `start`.
    pub fn new(seed: u64, start: DateTime<Utc>, days: u32) -> Self {
        Generator {
            rng: StdRng::seed_from_u64(seed),
            start,
            span_secs: i64::from(days.max(1)) * 86_400,
            next_id: 1_400_000_000_000_000_000
                + seed.wrapping_mul(1_000_000_007) % 1_000_000_000_000,
            trend: false,
        }
    }

    /// Opinion that moves over the span, as real opinion does: `against` falls from 45 % to
    /// 20 %, `favour` rises from 20 % to 50 % (other labels share the rest), so the charts and
    /// `vaxpulse monitor` of a synthetic run have a trend and a drift to show. Without it, labels
    /// are uniform and the draws are those of earlier releases (held-out files stay
    /// reproducible).
    pub fn with_trend(mut self) -> Self {
        self.trend = true;
        self
    }

    fn trending_label(&mut self, fraction: f64) -> String {
        let labels = &BANK.labels;
        let (against, favour) = (0.45 - 0.25 * fraction, 0.20 + 0.30 * fraction);
        let others = labels
            .iter()
            .filter(|l| *l != "against" && *l != "favour")
            .count()
            .max(1) as f64;
        let weight = |l: &str| match l {
            "against" => against,
            "favour" => favour,
            _ => (1.0 - against - favour) / others,
        };
        let mut x = self.rng.random_range(0.0..1.0);
        for l in labels {
            x -= weight(l);
            if x < 0.0 {
                return l.clone();
            }
        }
        labels.last().cloned().unwrap_or_default()
    }

    fn fill(&mut self, template: &str) -> String {
        let mut out = String::with_capacity(template.len() + 32);
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let Some(close) = rest[open..].find('}') else {
                break;
            };
            let slot = &rest[open + 1..open + close];
            let values = BANK.slots.get(slot).map(Vec::as_slice).unwrap_or(&[]);
            out.push_str(pick(&mut self.rng, values));
            rest = &rest[open + close + 1..];
        }
        out.push_str(rest);
        out
    }

    /// Text of one tweet with the given opinion.
    pub fn text(&mut self, label: &str) -> String {
        let templates = &BANK.templates[label];
        let t = pick(&mut self.rng, templates).to_string();
        let mut text = format!("{}{}", pick(&mut self.rng, &BANK.openers), self.fill(&t));
        if self.rng.random_bool(0.3) {
            let t2 = pick(&mut self.rng, templates).to_string();
            text = format!("{text} {}", self.fill(&t2));
        }
        text.push_str(pick(&mut self.rng, &BANK.closers));
        if self.rng.random_bool(0.3) {
            text = format!("{} {text}", pick(&mut self.rng, &BANK.mentions));
        }
        for _ in 0..*[0usize, 0, 1, 1, 2, 3].choose(&mut self.rng).unwrap_or(&0) {
            text = format!("{text} {}", pick(&mut self.rng, &BANK.hashtags));
        }
        if self.rng.random_bool(0.4) {
            let n = self.rng.random_range(1..=3);
            let emojis: String = (0..n)
                .map(|_| pick(&mut self.rng, &BANK.emojis).to_string())
                .collect();
            text = format!("{text} {emojis}");
        }
        if self.rng.random_bool(0.25) {
            text = format!("{text} {}", pick(&mut self.rng, &BANK.urls));
        }
        text
    }

    /// The next tweet (time uniform over the span; opinion uniform, or trending: [`Self::with_trend`]).
    pub fn tweet(&mut self) -> SyntheticTweet {
        if self.trend {
            let offset = self.rng.random_range(0..self.span_secs);
            let label = self.trending_label(offset as f64 / self.span_secs as f64);
            let text = self.text(&label);
            self.next_id += 1 + self.rng.random_range(0..1000);
            return SyntheticTweet {
                id: self.next_id.to_string(),
                text,
                created_at: self.start + Duration::seconds(offset),
                label,
            };
        }
        let label = pick(&mut self.rng, &BANK.labels).to_string();
        let text = self.text(&label);
        self.next_id += 1 + self.rng.random_range(0..1000);
        let created_at = self.start + Duration::seconds(self.rng.random_range(0..self.span_secs));
        SyntheticTweet {
            id: self.next_id.to_string(),
            text,
            created_at,
            label,
        }
    }

    /// The next tweet as a Kafka payload, in one of the three shapes (v1.1 40 %, v2 30 %, plain 30 %).
    pub fn payload(&mut self) -> (SyntheticTweet, Vec<u8>) {
        let t = self.tweet();
        let shape = self.rng.random_range(0..10);
        let v = if shape < 4 {
            v1_payload(&t)
        } else if shape < 7 {
            json!({
                "data": {"id": t.id, "text": t.text, "created_at": t.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                         "lang": "fr", "author_id": "12345"},
                "includes": {"users": [{"id": "12345", "username": "demo"}]}
            })
        } else {
            json!({"id": t.id, "text": t.text, "created_at": t.created_at.to_rfc3339(), "lang": "fr"})
        };
        (
            t,
            serde_json::to_vec(&v).expect("json values serialise; this is a bug"),
        )
    }
}

/// A v1.1 payload in compatibility mode: long texts are truncated in `text` and complete in
/// `extended_tweet.full_text`, as the real API sends them.
pub fn v1_payload(t: &SyntheticTweet) -> serde_json::Value {
    let created = t
        .created_at
        .format("%a %b %d %H:%M:%S +0000 %Y")
        .to_string();
    let chars = t.text.chars().count();
    if chars > 140 {
        let short: String = t.text.chars().take(116).collect();
        json!({"created_at": created, "id_str": t.id, "text": format!("{short}… https://t.co/xYz"), "truncated": true,
               "extended_tweet": {"full_text": t.text, "display_text_range": [0, chars]},
               "user": {"id_str": "98765", "screen_name": "demo_user"}, "lang": "fr"})
    } else {
        json!({"created_at": created, "id_str": t.id, "text": t.text, "truncated": false,
               "user": {"id_str": "98765", "screen_name": "demo_user"}, "lang": "fr"})
    }
}

/// The `i`-th hostile message of the fault-injection suite: its kind, the dead-letter reason it
/// must get, and its bytes. Ten kinds in rotation; the oversized slot holds a 2 MB message once
/// per thousand and a 70 KiB one once per hundred (both over the default 64 KiB cap), otherwise
/// a truncated payload full of NUL escapes, so 10 000 messages carry ~26 MB rather than 700 MB.
pub fn hostile_payload(i: u64) -> (&'static str, DlqReason, Vec<u8>) {
    let text = "le vaccin arrive en pharmacie";
    match i % 10 {
        0 => (
            "malformed_json",
            DlqReason::InvalidJson,
            format!(r#"{{"id": "{i}", "text": "{text}"#).into_bytes(),
        ),
        1 => {
            let mut b = format!(r#"{{"id": "{i}", "text": "vaccin "#).into_bytes();
            b.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
            b.extend_from_slice(b"\"}");
            ("invalid_utf8", DlqReason::InvalidUtf8, b)
        }
        2 if i % 100 == 2 => {
            let size = if i % 1000 == 2 { 2 << 20 } else { 70 << 10 };
            let filler = "a".repeat(size);
            (
                "oversized",
                DlqReason::TooLarge,
                format!(r#"{{"id": "{i}", "text": "{filler}"}}"#).into_bytes(),
            )
        }
        2 => (
            "nul_garbage",
            DlqReason::InvalidJson,
            format!(
                r#"{{"id": "{i}", "text": "\u0000\u0000{}"#,
                r"\u0000".repeat(50)
            )
            .into_bytes(),
        ),
        3 => (
            "empty_text",
            DlqReason::MissingText,
            format!(r#"{{"id": "{i}", "text": ""}}"#).into_bytes(),
        ),
        4 => (
            "whitespace_text",
            DlqReason::MissingText,
            format!(r#"{{"id": "{i}", "text": " \n\t  \u00a0 "}}"#).into_bytes(),
        ),
        5 => (
            "missing_id",
            DlqReason::MissingId,
            format!(r#"{{"text": "{text}", "lang": "fr"}}"#).into_bytes(),
        ),
        6 => {
            let depth = 10_000;
            (
                "deeply_nested",
                DlqReason::InvalidJson,
                format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes(),
            )
        }
        7 => (
            "number_as_text",
            DlqReason::MissingText,
            format!(r#"{{"id": "{i}", "text": {i}}}"#).into_bytes(),
        ),
        8 => (
            "not_an_object",
            DlqReason::UnsupportedShape,
            format!(r#"["{i}", "{text}"]"#).into_bytes(),
        ),
        _ => (
            "fractional_id",
            DlqReason::MissingId,
            format!(r#"{{"id": {i}.5, "text": "{text}"}}"#).into_bytes(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tweet::{decode, DecodeRules, Decoded};

    #[test]
    fn same_seed_same_tweets_and_every_payload_decodes_to_its_tweet() {
        let start = DateTime::from_timestamp(1_625_097_600, 0).unwrap();
        let mut a = Generator::new(7, start, 5);
        let mut b = Generator::new(7, start, 5);
        let rules = DecodeRules {
            langs: vec!["fr".into()],
            max_message_bytes: 65536,
            keywords: None,
        };
        let mut ids = std::collections::HashSet::new();
        for _ in 0..500 {
            let (ta, pa) = a.payload();
            let (_, pb) = b.payload();
            assert_eq!(pa, pb);
            assert!(ids.insert(ta.id.clone()), "ids are unique");
            match decode(&pa, &rules, Utc::now()) {
                Decoded::Tweet(t) => {
                    assert_eq!(t.id, ta.id);
                    assert_eq!(t.text, ta.text);
                    assert_eq!(t.created_at.timestamp(), ta.created_at.timestamp());
                }
                other => panic!("{other:?}"),
            }
            assert!(ta.created_at >= start && ta.created_at < start + Duration::days(5));
        }
    }

    #[test]
    fn every_hostile_kind_is_dead_lettered_with_its_reason() {
        let rules = DecodeRules {
            langs: vec!["fr".into()],
            max_message_bytes: 64 * 1024,
            keywords: None,
        };
        let mut kinds = std::collections::HashSet::new();
        for i in 0..2000u64 {
            let (kind, want, bytes) = hostile_payload(i);
            kinds.insert(kind);
            match decode(&bytes, &rules, Utc::now()) {
                Decoded::Reject { reason, .. } => assert_eq!(reason, want, "{kind} #{i}"),
                other => panic!("{kind} #{i} was not rejected: {other:?}"),
            }
        }
        assert_eq!(kinds.len(), 11, "every kind occurs: {kinds:?}");
        assert!(
            hostile_payload(1002).2.len() > 2 << 20,
            "one in a thousand is 2 MB"
        );
    }

    #[test]
    fn a_trending_generator_moves_opinion_from_against_to_favour() {
        let start = Utc::now();
        let mut g = Generator::new(7, start, 10).with_trend();
        let (mut early, mut late) = ([0u32; 2], [0u32; 2]);
        for _ in 0..20_000 {
            let t = g.tweet();
            let f = (t.created_at - start).num_seconds() as f64 / (10.0 * 86_400.0);
            let bucket = if f < 0.2 {
                &mut early
            } else if f >= 0.8 {
                &mut late
            } else {
                continue;
            };
            bucket[0] += 1;
            bucket[1] += u32::from(t.label == "against");
        }
        let share = |b: [u32; 2]| f64::from(b[1]) / f64::from(b[0]);
        // Expected 0.425 early and 0.225 late (mean of the linear weight over each fifth).
        assert!((share(early) - 0.425).abs() < 0.03, "{}", share(early));
        assert!((share(late) - 0.225).abs() < 0.03, "{}", share(late));
    }
}
