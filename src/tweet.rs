//! Payload shapes → `Tweet`, and the text normalisation used for tweet models. Decoding never
//! panics: every input ends as a tweet, a counted skip, or a dead letter with a typed reason.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use regex::Regex;
use serde_json::{Map, Value};

/// A tweet ready for classification.
#[derive(Debug, Clone, PartialEq)]
pub struct Tweet {
    /// Tweet id as a decimal string (ids exceed JSON-safe integers).
    pub id: String,
    /// Full text classified (for a retweet: the original's full text), before normalisation.
    pub text: String,
    pub created_at: DateTime<Utc>,
    /// BCP-47-ish language code from the payload; `und` when the payload gives none.
    pub lang: String,
}

/// Why a message was skipped on purpose (counted, not dead-lettered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// A stream control notice (`delete`, `limit`, ...).
    Control,
    /// `lang` outside the configured list.
    Language,
    /// No `decode.keywords` entry in the tweet's full text.
    OffTopic,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Control => "control",
            SkipReason::Language => "language",
            SkipReason::OffTopic => "off_topic",
        }
    }
}

/// Typed reason a message went to the dead-letter topic (header `vaxpulse.error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DlqReason {
    TooLarge,
    InvalidUtf8,
    InvalidJson,
    UnsupportedShape,
    MissingId,
    MissingText,
    InvalidTimestamp,
}

impl DlqReason {
    pub const ALL: [DlqReason; 7] = [
        DlqReason::TooLarge,
        DlqReason::InvalidUtf8,
        DlqReason::InvalidJson,
        DlqReason::UnsupportedShape,
        DlqReason::MissingId,
        DlqReason::MissingText,
        DlqReason::InvalidTimestamp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DlqReason::TooLarge => "too_large",
            DlqReason::InvalidUtf8 => "invalid_utf8",
            DlqReason::InvalidJson => "invalid_json",
            DlqReason::UnsupportedShape => "unsupported_shape",
            DlqReason::MissingId => "missing_id",
            DlqReason::MissingText => "missing_text",
            DlqReason::InvalidTimestamp => "invalid_timestamp",
        }
    }
}

/// Outcome of decoding one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Tweet(Tweet),
    /// A delete notice (v1.1 `{"delete": {"status": ...}}`, v2 compliance
    /// `{"data": {"delete": {"tweet": ...}}}`): the tweet with this id must disappear.
    Delete(String),
    Skip(SkipReason),
    Reject {
        reason: DlqReason,
        detail: String,
    },
}

/// What the decoder accepts.
#[derive(Debug, Clone)]
pub struct DecodeRules {
    /// Accepted languages; empty accepts all.
    pub langs: Vec<String>,
    pub max_message_bytes: usize,
    /// The relevance filter (`decode.keywords`); `None` keeps every tweet.
    pub keywords: Option<std::sync::Arc<crate::relevance::KeywordFilter>>,
}

impl From<&crate::config::DecodeConfig> for DecodeRules {
    fn from(c: &crate::config::DecodeConfig) -> Self {
        DecodeRules {
            langs: c.langs.clone(),
            max_message_bytes: c.max_message_bytes,
            keywords: crate::relevance::KeywordFilter::new(&c.keywords)
                .ok()
                .flatten()
                .map(std::sync::Arc::new),
        }
    }
}

const CONTROL_KEYS: &[&str] = &[
    "delete",
    "scrub_geo",
    "limit",
    "status_withheld",
    "user_withheld",
    "disconnect",
    "warning",
    "friends",
    "event",
];

fn reject(reason: DlqReason, detail: impl Into<String>) -> Decoded {
    Decoded::Reject {
        reason,
        detail: detail.into(),
    }
}

/// Decodes Twitter API v1.1 (incl. `extended_tweet` and retweets), API v2 (`{"data": ...}`), or
/// the plain `{"id","text","created_at","lang"}` shape. `fallback_time` (the Kafka timestamp)
/// stands in when the payload has no `created_at`.
pub fn decode(payload: &[u8], rules: &DecodeRules, fallback_time: DateTime<Utc>) -> Decoded {
    if payload.len() > rules.max_message_bytes {
        return reject(
            DlqReason::TooLarge,
            format!(
                "{} bytes > decode.max_message_bytes = {}",
                payload.len(),
                rules.max_message_bytes
            ),
        );
    }
    let text = match std::str::from_utf8(payload) {
        Ok(t) => t,
        Err(e) => return reject(DlqReason::InvalidUtf8, e.to_string()),
    };
    // serde_json bounds nesting depth (128), so hostile deep nesting fails here, not the stack.
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return reject(DlqReason::InvalidJson, e.to_string()),
    };
    let Value::Object(obj) = value else {
        return reject(
            DlqReason::UnsupportedShape,
            "top-level JSON value is not an object",
        );
    };
    if let Some(target) = delete_target(&obj) {
        // The same id rule as a tweet's: `" 123"` deletes `123`, and an id that no tweet can
        // have is a dead letter, not a delete of nothing (nor an unbounded ClickHouse query).
        return match tweet_id(target) {
            Ok(id) => Decoded::Delete(id),
            Err(rejected) => rejected,
        };
    }
    let tweet = if let Some(data) = obj.get("data") {
        let Value::Object(data) = data else {
            return reject(DlqReason::UnsupportedShape, "`data` is not an object");
        };
        decode_v2(data, obj.get("includes"), fallback_time)
    } else if is_control(&obj) {
        return Decoded::Skip(SkipReason::Control);
    } else {
        decode_v1_or_plain(&obj, fallback_time)
    };
    match tweet {
        Ok(t) => {
            if !rules.langs.is_empty() && t.lang != "und" && !rules.langs.contains(&t.lang) {
                Decoded::Skip(SkipReason::Language)
            } else if rules.keywords.as_ref().is_some_and(|k| !k.matches(&t.text)) {
                Decoded::Skip(SkipReason::OffTopic)
            } else {
                Decoded::Tweet(t)
            }
        }
        Err(d) => d,
    }
}

/// The tweet a delete notice names (v1.1 `delete.status`, v2 compliance `data.delete.tweet`).
fn delete_target(obj: &Map<String, Value>) -> Option<&Map<String, Value>> {
    let target = match obj.get("delete") {
        Some(d) if !obj.contains_key("text") => d.get("status")?,
        _ => obj.get("data")?.get("delete")?.get("tweet")?,
    };
    target.as_object()
}

fn is_control(obj: &Map<String, Value>) -> bool {
    !obj.contains_key("text")
        && !obj.contains_key("full_text")
        && CONTROL_KEYS.iter().any(|k| obj.contains_key(*k))
}

fn decode_v1_or_plain(obj: &Map<String, Value>, fallback: DateTime<Utc>) -> Result<Tweet, Decoded> {
    let id = tweet_id(obj)?;
    let source = match obj.get("retweeted_status") {
        Some(Value::Object(rt)) => rt,
        _ => obj,
    };
    let text = v1_text(source).or_else(|| v1_text(obj)).ok_or_else(|| {
        reject(
            DlqReason::MissingText,
            "no non-empty text, full_text or extended_tweet.full_text",
        )
    })?;
    Ok(Tweet {
        id,
        text,
        created_at: created_at(obj, fallback)?,
        lang: lang(obj),
    })
}

fn v1_text(obj: &Map<String, Value>) -> Option<String> {
    let ext = obj
        .get("extended_tweet")
        .and_then(|e| e.get("full_text"))
        .and_then(Value::as_str);
    [
        ext,
        obj.get("full_text").and_then(Value::as_str),
        obj.get("text").and_then(Value::as_str),
    ]
    .into_iter()
    .flatten()
    .find(|t| !t.trim().is_empty())
    .map(str::to_string)
}

fn decode_v2(
    data: &Map<String, Value>,
    includes: Option<&Value>,
    fallback: DateTime<Utc>,
) -> Result<Tweet, Decoded> {
    let id = tweet_id(data)?;
    // A retweet is classified on the original's full text, found in `includes.tweets`.
    let original = data
        .get("referenced_tweets")
        .and_then(Value::as_array)
        .and_then(|refs| {
            refs.iter()
                .find(|r| r.get("type").and_then(Value::as_str) == Some("retweeted"))
        })
        .and_then(|r| r.get("id").and_then(Value::as_str))
        .and_then(|rid| {
            includes?
                .get("tweets")?
                .as_array()?
                .iter()
                .find(|t| t.get("id").and_then(Value::as_str) == Some(rid))?
                .as_object()
        });
    let text = original
        .and_then(v2_text)
        .or_else(|| v2_text(data))
        .ok_or_else(|| {
            reject(
                DlqReason::MissingText,
                "no non-empty data.text or data.note_tweet.text",
            )
        })?;
    Ok(Tweet {
        id,
        text,
        created_at: created_at(data, fallback)?,
        lang: lang(data),
    })
}

fn v2_text(obj: &Map<String, Value>) -> Option<String> {
    let note = obj
        .get("note_tweet")
        .and_then(|n| n.get("text"))
        .and_then(Value::as_str);
    [note, obj.get("text").and_then(Value::as_str)]
        .into_iter()
        .flatten()
        .find(|t| !t.trim().is_empty())
        .map(str::to_string)
}

fn tweet_id(obj: &Map<String, Value>) -> Result<String, Decoded> {
    let id = match (obj.get("id_str"), obj.get("id")) {
        (Some(Value::String(s)), _) | (None | Some(_), Some(Value::String(s))) => {
            s.trim().to_string()
        }
        (_, Some(Value::Number(n))) if n.is_u64() => n.to_string(),
        (_, Some(other)) => {
            return Err(reject(
                DlqReason::MissingId,
                format!(
                    "`id` must be a string or a non-negative integer, got {}",
                    json_kind(other)
                ),
            ))
        }
        (_, None) => return Err(reject(DlqReason::MissingId, "no `id` or `id_str`")),
    };
    if id.is_empty() || id.len() > 64 {
        return Err(reject(
            DlqReason::MissingId,
            "`id` is empty or longer than 64 characters",
        ));
    }
    Ok(id)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a negative or fractional number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn lang(obj: &Map<String, Value>) -> String {
    match obj.get("lang").and_then(Value::as_str) {
        Some(l) if !l.is_empty() && l.len() <= 16 => l.to_string(),
        _ => "und".to_string(),
    }
}

fn created_at(obj: &Map<String, Value>, fallback: DateTime<Utc>) -> Result<DateTime<Utc>, Decoded> {
    match obj.get("created_at") {
        None | Some(Value::Null) => Ok(fallback),
        Some(Value::String(s)) => parse_time(s).ok_or_else(|| {
            reject(
                DlqReason::InvalidTimestamp,
                format!(
                    "created_at `{}` is neither RFC 3339 nor Twitter's format",
                    truncate(s, 64)
                ),
            )
        }),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(DateTime::from_timestamp_millis)
            .ok_or_else(|| {
                reject(
                    DlqReason::InvalidTimestamp,
                    "created_at number is not epoch milliseconds",
                )
            }),
        Some(other) => Err(reject(
            DlqReason::InvalidTimestamp,
            format!("created_at is {}", json_kind(other)),
        )),
    }
}

/// RFC 3339 (`2021-07-12T08:00:00Z`, API v2, plain) or Twitter v1.1 (`Mon Jul 12 08:00:00 +0000 2021`).
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_str(s, "%a %b %d %H:%M:%S %z %Y"))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

static URL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?:https?://|www\.)\S+").expect("static regex; this is a bug"));
static MENTION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"@\w+").expect("static regex; this is a bug"));
static SPACE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\s+").expect("static regex; this is a bug"));

/// Normalisation shared with training (`scripts/vaxmodel.py::normalize`): HTML entities
/// unescaped, URLs → `HTTPURL`, @mentions → `@user`, whitespace collapsed and trimmed.
pub fn normalize(text: &str) -> String {
    let text = text
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">");
    let text = URL.replace_all(&text, "HTTPURL");
    let text = MENTION.replace_all(&text, "@user");
    SPACE.replace_all(&text, " ").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> DecodeRules {
        DecodeRules {
            langs: vec!["fr".into()],
            max_message_bytes: 64 * 1024,
            keywords: None,
        }
    }
    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_600_000_000, 0).unwrap()
    }
    fn tweet(bytes: &str) -> Tweet {
        match decode(bytes.as_bytes(), &rules(), t0()) {
            Decoded::Tweet(t) => t,
            other => panic!("expected a tweet, got {other:?}"),
        }
    }
    fn rejected(bytes: &[u8]) -> DlqReason {
        match decode(bytes, &rules(), t0()) {
            Decoded::Reject { reason, .. } => reason,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn v1_compat_mode_uses_extended_tweet_full_text() {
        let t = tweet(include_str!("../tests/fixtures/v1_extended.json"));
        assert_eq!(t.id, "1414512376543211520");
        assert!(
            t.text
                .ends_with("la meilleure protection pour nos aînés et nos soignants. #vaccination"),
            "{}",
            t.text
        );
        assert!(!t.text.contains('…'));
        assert_eq!(t.created_at.to_rfc3339(), "2021-07-12T09:15:02+00:00");
        assert_eq!(t.lang, "fr");
    }

    #[test]
    fn v1_retweet_is_classified_on_the_originals_full_text() {
        let t = tweet(include_str!("../tests/fixtures/v1_retweet_extended.json"));
        assert_eq!(t.id, "1414600000000000001", "the retweet keeps its own id");
        assert!(
            t.text
                .starts_with("Hors de question que je me fasse vacciner"),
            "{}",
            t.text
        );
        assert!(
            t.text
                .ends_with("on n'a aucun recul sur ces injections. #NonAuPass"),
            "{}",
            t.text
        );
        assert!(!t.text.starts_with("RT @"));
    }

    #[test]
    fn v1_full_text_in_extended_mode() {
        let t = tweet(
            r#"{"created_at":"Tue Jul 13 10:00:00 +0000 2021","id":1,"id_str":"1","full_text":"Le centre de vaccination ouvre lundi","truncated":false,"lang":"fr"}"#,
        );
        assert_eq!(t.text, "Le centre de vaccination ouvre lundi");
        assert_eq!(t.id, "1");
    }

    #[test]
    fn v2_payload_with_note_tweet_and_retweet_include() {
        let t = tweet(include_str!("../tests/fixtures/v2.json"));
        assert_eq!(t.id, "1445078208190291968");
        assert_eq!(t.created_at.to_rfc3339(), "2021-10-04T17:42:10+00:00");
        assert!(t.text.contains("troisième dose"), "{}", t.text);
        let rt = tweet(include_str!("../tests/fixtures/v2_retweet.json"));
        assert_eq!(rt.id, "1445078208190291999");
        assert!(rt.text.starts_with("Merci aux soignants"), "{}", rt.text);
    }

    #[test]
    fn plain_payload_with_numeric_id_and_rfc3339_time() {
        let t = tweet(
            r#"{"id": 42, "text": "Vacciné hier", "created_at": "2021-05-01T12:30:00+02:00", "lang": "fr"}"#,
        );
        assert_eq!(t.id, "42");
        assert_eq!(t.created_at.to_rfc3339(), "2021-05-01T10:30:00+00:00");
        let no_time = tweet(r#"{"id": "43", "text": "sans date"}"#);
        assert_eq!(
            no_time.created_at,
            t0(),
            "falls back to the message timestamp"
        );
        assert_eq!(no_time.lang, "und");
    }

    #[test]
    fn control_notices_are_skipped_and_deletes_name_their_tweet() {
        for line in include_str!("../tests/fixtures/control.jsonl").lines() {
            let want = if line.starts_with("{\"delete\"") {
                Decoded::Delete("1414512376543211520".into())
            } else {
                Decoded::Skip(SkipReason::Control)
            };
            assert_eq!(decode(line.as_bytes(), &rules(), t0()), want, "{line}");
        }
        let v2 = r#"{"data": {"delete": {"tweet": {"id": "99", "author_id": "7"}, "event_at": "2021-07-12T09:15:02.000Z"}}}"#;
        assert_eq!(
            decode(v2.as_bytes(), &rules(), t0()),
            Decoded::Delete("99".into())
        );
    }

    #[test]
    fn delete_ids_follow_the_tweet_id_rule() {
        let delete = |id: &str| format!(r#"{{"delete":{{"status":{{"id_str":{id}}}}}}}"#);
        assert_eq!(
            decode(delete("\" 123 \"").as_bytes(), &rules(), t0()),
            Decoded::Delete("123".into()),
            "trimmed like a tweet's id"
        );
        let long = format!("\"{}\"", "9".repeat(60_000));
        for bad in [long.as_str(), "\"\"", "\"  \"", "-5", "null"] {
            assert_eq!(
                rejected(delete(bad).as_bytes()),
                DlqReason::MissingId,
                "{}",
                &bad[..bad.len().min(20)]
            );
        }
        assert_eq!(
            rejected(br#"{"delete":{"status":{"user_id":7}}}"#),
            DlqReason::MissingId
        );
    }

    #[test]
    fn foreign_language_is_skipped_and_empty_list_accepts_all() {
        let en = r#"{"id":"1","text":"Got my shot","lang":"en"}"#;
        assert_eq!(
            decode(en.as_bytes(), &rules(), t0()),
            Decoded::Skip(SkipReason::Language)
        );
        let all = DecodeRules {
            langs: vec![],
            ..rules()
        };
        assert!(matches!(
            decode(en.as_bytes(), &all, t0()),
            Decoded::Tweet(_)
        ));
    }

    #[test]
    fn malformed_inputs_get_typed_reasons() {
        assert_eq!(rejected(b"{\"id\": 1, \"text\": "), DlqReason::InvalidJson);
        assert_eq!(rejected(b"\xff\xfe{}"), DlqReason::InvalidUtf8);
        assert_eq!(rejected(b"[1,2,3]"), DlqReason::UnsupportedShape);
        assert_eq!(rejected(br#"{"data": 3}"#), DlqReason::UnsupportedShape);
        assert_eq!(
            rejected(br#"{"text":"sans id","lang":"fr"}"#),
            DlqReason::MissingId
        );
        assert_eq!(rejected(br#"{"id":-5,"text":"x"}"#), DlqReason::MissingId);
        assert_eq!(
            rejected(br#"{"id":"7","text":"   \n ","lang":"fr"}"#),
            DlqReason::MissingText
        );
        assert_eq!(
            rejected(br#"{"id":"7","text":12345,"lang":"fr"}"#),
            DlqReason::MissingText
        );
        assert_eq!(
            rejected(br#"{"id":"7","text":"ok","created_at":"hier"}"#),
            DlqReason::InvalidTimestamp
        );
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(rejected(deep.as_bytes()), DlqReason::InvalidJson);
        let big = format!(r#"{{"id":"1","text":"{}"}}"#, "a".repeat(70_000));
        assert_eq!(rejected(big.as_bytes()), DlqReason::TooLarge);
    }

    #[test]
    fn twitter_time_format_parses() {
        let t = parse_time("Mon Jul 12 09:15:02 +0000 2021").unwrap();
        assert_eq!(t.to_rfc3339(), "2021-07-12T09:15:02+00:00");
        assert!(parse_time("yesterday").is_none());
    }

    #[test]
    fn normalisation_masks_urls_and_mentions_and_collapses_space() {
        assert_eq!(
            normalize("  @Sante_Gouv merci &amp; bravo\n\n https://t.co/abc www.santé.fr/x  "),
            "@user merci & bravo HTTPURL HTTPURL"
        );
        assert_eq!(
            normalize("email@domaine.fr"),
            "email@user.fr",
            "same as Python's `re`"
        );
        assert_eq!(normalize("💉💉 #vaccin"), "💉💉 #vaccin");
        assert_eq!(normalize(""), "");
    }
}
