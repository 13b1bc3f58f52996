//! Payload shapes → `Tweet`, and the text normalisation used for tweet models. Decoding never
//! panics: every input ends as a tweet, a counted skip, or a dead letter with a typed reason.

mod json;
#[cfg(test)]
mod reference;

use std::borrow::Cow;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use regex::Regex;

use json::{Json, Kind, Obj};

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
/// stands in when the payload has no `created_at`. The whole message's JSON syntax is checked,
/// but only the members the decoder reads are parsed ([`json`]): a firehose message is mostly a
/// user object and entities, and most messages end as a language or topic skip.
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
    let Some(obj) = Obj::parse(text) else {
        return not_an_object(text);
    };
    let data = obj.get("data");
    let data_obj = data.and_then(Json::as_object);
    if let Some(target) = delete_target(&obj, data_obj.as_ref()) {
        // The same id rule as a tweet's: `" 123"` deletes `123`, and an id that no tweet can
        // have is a dead letter, not a delete of nothing (nor an unbounded ClickHouse query).
        return match tweet_id(&target) {
            Ok(id) => Decoded::Delete(id),
            Err(rejected) => rejected,
        };
    }
    let parts = if data.is_some() {
        let Some(data) = data_obj else {
            return reject(DlqReason::UnsupportedShape, "`data` is not an object");
        };
        decode_v2(&data, obj.get("includes"), fallback_time)
    } else if is_control(&obj) {
        return Decoded::Skip(SkipReason::Control);
    } else {
        decode_v1_or_plain(&obj, fallback_time)
    };
    match parts {
        Ok(p) => {
            if !rules.langs.is_empty()
                && p.lang != "und"
                && !rules.langs.iter().any(|l| *l == p.lang)
            {
                Decoded::Skip(SkipReason::Language)
            } else if rules.keywords.as_ref().is_some_and(|k| !k.matches(&p.text)) {
                Decoded::Skip(SkipReason::OffTopic)
            } else {
                Decoded::Tweet(Tweet {
                    id: p.id,
                    text: p.text.into_owned(),
                    created_at: p.created_at,
                    lang: p.lang.into_owned(),
                })
            }
        }
        Err(d) => d,
    }
}

/// The smallest chunk [`decode_chunk`] splits across threads: below it a thread's start costs
/// more than the decoding it takes over (~10 µs per 4-KB message).
pub const MIN_SPLIT: usize = 32;

/// One message to decode: its payload (`None` when the record has none) and the time that
/// stands in for a missing `created_at`.
pub type Input<'a> = (Option<&'a [u8]>, DateTime<Utc>);

/// Decodes `inputs` on up to `threads` threads (the caller's thread is one of them), in
/// contiguous parts; the results are in input order, so the caller handles (tracks, routes,
/// dead-letters) each message exactly as if it had decoded them one by one.
pub fn decode_chunk(inputs: &[Input<'_>], rules: &DecodeRules, threads: usize) -> Vec<Decoded> {
    let one = |(payload, fallback): &Input<'_>| match payload {
        Some(p) => decode(p, rules, *fallback),
        None => reject(DlqReason::InvalidJson, "empty message (no payload)"),
    };
    if threads <= 1 || inputs.len() < MIN_SPLIT {
        return inputs.iter().map(one).collect();
    }
    let per_thread = inputs.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let mut parts = inputs.chunks(per_thread);
        let mine = parts.next().unwrap_or_default();
        let helpers: Vec<_> = parts
            .map(|part| {
                let spawned = std::thread::Builder::new()
                    .name("vaxpulse-decode".into())
                    .spawn_scoped(scope, move || part.iter().map(one).collect::<Vec<_>>());
                // No thread to be had (a resource limit): this part is decoded here, after ours.
                spawned.map_err(|_| part)
            })
            .collect();
        let mut out: Vec<Decoded> = mine.iter().map(one).collect();
        for helper in helpers {
            match helper {
                Ok(h) => out.extend(h.join().expect("decoding never panics; this is a bug")),
                Err(part) => out.extend(part.iter().map(one)),
            }
        }
        out
    })
}

/// Why a payload that is not one JSON object is refused, with serde_json's own message for
/// invalid JSON (a `Value` bounds nesting depth, so hostile nesting fails here, not the stack).
/// Only refused payloads come here.
fn not_an_object(text: &str) -> Decoded {
    match serde_json::from_str::<serde_json::Value>(text) {
        Err(e) => reject(DlqReason::InvalidJson, e.to_string()),
        Ok(serde_json::Value::Object(_)) => {
            reject(DlqReason::InvalidJson, "the JSON object cannot be read")
        }
        Ok(_) => reject(
            DlqReason::UnsupportedShape,
            "top-level JSON value is not an object",
        ),
    }
}

/// A tweet's fields before the filters: borrowed from the payload, so that a skipped message
/// allocates (almost) nothing.
struct Parts<'a> {
    id: String,
    text: Cow<'a, str>,
    created_at: DateTime<Utc>,
    lang: Cow<'a, str>,
}

/// The tweet a delete notice names (v1.1 `delete.status`, v2 compliance `data.delete.tweet`).
fn delete_target<'a>(obj: &Obj<'a>, data: Option<&Obj<'a>>) -> Option<Obj<'a>> {
    let target = match obj.get("delete") {
        Some(d) if !obj.contains_key("text") => d.get("status")?,
        _ => data?.get("delete")?.get("tweet")?,
    };
    target.as_object()
}

fn is_control(obj: &Obj<'_>) -> bool {
    !obj.contains_key("text")
        && !obj.contains_key("full_text")
        && CONTROL_KEYS.iter().any(|k| obj.contains_key(k))
}

fn decode_v1_or_plain<'a>(obj: &Obj<'a>, fallback: DateTime<Utc>) -> Result<Parts<'a>, Decoded> {
    let id = tweet_id(obj)?;
    let retweeted = obj.get("retweeted_status").and_then(Json::as_object);
    let source = retweeted.as_ref().unwrap_or(obj);
    let text = v1_text(source).or_else(|| v1_text(obj)).ok_or_else(|| {
        reject(
            DlqReason::MissingText,
            "no non-empty text, full_text or extended_tweet.full_text",
        )
    })?;
    Ok(Parts {
        id,
        text,
        created_at: created_at(obj, fallback)?,
        lang: lang(obj),
    })
}

/// The first non-blank of the given members' strings.
fn first_text<'a>(candidates: [Option<Json<'a>>; 3]) -> Option<Cow<'a, str>> {
    candidates
        .into_iter()
        .flatten()
        .filter_map(Json::as_str)
        .find(|t| !t.trim().is_empty())
}

fn v1_text<'a>(obj: &Obj<'a>) -> Option<Cow<'a, str>> {
    let ext = obj.get("extended_tweet").and_then(|e| e.get("full_text"));
    first_text([ext, obj.get("full_text"), obj.get("text")])
}

fn decode_v2<'a>(
    data: &Obj<'a>,
    includes: Option<Json<'a>>,
    fallback: DateTime<Utc>,
) -> Result<Parts<'a>, Decoded> {
    let id = tweet_id(data)?;
    // A retweet is classified on the original's full text, found in `includes.tweets`.
    let original = data
        .get("referenced_tweets")
        .and_then(Json::as_array)
        .and_then(|refs| {
            refs.into_iter()
                .find(|r| r.get("type").and_then(Json::as_str).as_deref() == Some("retweeted"))
        })
        .and_then(|r| r.get("id").and_then(Json::as_str))
        .and_then(|rid| {
            includes?
                .get("tweets")?
                .as_array()?
                .into_iter()
                .find(|t| t.get("id").and_then(Json::as_str).as_deref() == Some(&*rid))?
                .as_object()
        });
    let text = original
        .as_ref()
        .and_then(v2_text)
        .or_else(|| v2_text(data))
        .ok_or_else(|| {
            reject(
                DlqReason::MissingText,
                "no non-empty data.text or data.note_tweet.text",
            )
        })?;
    Ok(Parts {
        id,
        text,
        created_at: created_at(data, fallback)?,
        lang: lang(data),
    })
}

fn v2_text<'a>(obj: &Obj<'a>) -> Option<Cow<'a, str>> {
    let note = obj.get("note_tweet").and_then(|n| n.get("text"));
    first_text([note, obj.get("text"), None])
}

fn tweet_id(obj: &Obj<'_>) -> Result<String, Decoded> {
    let id_str = obj.get("id_str").filter(|v| v.kind() == Kind::String);
    let id = match (id_str, obj.get("id")) {
        (Some(s), _) => trimmed(s),
        (None, Some(v)) if v.kind() == Kind::String => trimmed(v),
        (None, Some(v)) => match v.as_number().filter(serde_json::Number::is_u64) {
            Some(n) => n.to_string(),
            None => {
                return Err(reject(
                    DlqReason::MissingId,
                    format!(
                        "`id` must be a string or a non-negative integer, got {}",
                        json_kind(v)
                    ),
                ))
            }
        },
        (None, None) => return Err(reject(DlqReason::MissingId, "no `id` or `id_str`")),
    };
    if id.is_empty() || id.len() > 64 {
        return Err(reject(
            DlqReason::MissingId,
            "`id` is empty or longer than 64 characters",
        ));
    }
    Ok(id)
}

/// A string member, trimmed (its syntax was checked, so it parses).
fn trimmed(v: Json<'_>) -> String {
    v.as_str().unwrap_or_default().trim().to_string()
}

fn json_kind(v: Json<'_>) -> &'static str {
    match v.kind() {
        Kind::Null => "null",
        Kind::Bool => "a boolean",
        Kind::Number => "a negative or fractional number",
        Kind::String => "a string",
        Kind::Array => "an array",
        Kind::Object => "an object",
    }
}

fn lang<'a>(obj: &Obj<'a>) -> Cow<'a, str> {
    match obj.get("lang").and_then(Json::as_str) {
        Some(l) if !l.is_empty() && l.len() <= 16 => l,
        _ => Cow::Borrowed("und"),
    }
}

fn created_at(obj: &Obj<'_>, fallback: DateTime<Utc>) -> Result<DateTime<Utc>, Decoded> {
    let Some(v) = obj.get("created_at") else {
        return Ok(fallback);
    };
    match v.kind() {
        Kind::Null => Ok(fallback),
        Kind::String => {
            let s = v.as_str().unwrap_or_default();
            parse_time(&s).ok_or_else(|| {
                reject(
                    DlqReason::InvalidTimestamp,
                    format!(
                        "created_at `{}` is neither RFC 3339 nor Twitter's format",
                        truncate(&s, 64)
                    ),
                )
            })
        }
        Kind::Number => v
            .as_number()
            .and_then(|n| n.as_i64())
            .and_then(DateTime::from_timestamp_millis)
            .ok_or_else(|| {
                reject(
                    DlqReason::InvalidTimestamp,
                    "created_at number is not epoch milliseconds",
                )
            }),
        _ => Err(reject(
            DlqReason::InvalidTimestamp,
            format!("created_at is {}", json_kind(v)),
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
        // Deep nesting in a member the decoder never reads is skipped without recursion: the
        // tweet is decoded (a `Value` would have refused it for depth).
        let nested = format!(
            r#"{{"id":"8","text":"ok","lang":"fr","user":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(tweet(&nested).id, "8");
        let big = format!(r#"{{"id":"1","text":"{}"}}"#, "a".repeat(70_000));
        assert_eq!(rejected(big.as_bytes()), DlqReason::TooLarge);
    }

    /// Values of one member that the decoder tells apart (every member may also get any other).
    const FIELDS: &[(&str, &[&str])] = &[
        (
            "id",
            &[
                r#""1414512376543211520""#,
                r#"" 77 ""#,
                r#""""#,
                "42",
                "-5",
                "1.5",
                "18446744073709551615",
                "1e3",
                "null",
                "[]",
            ],
        ),
        (
            "id_str",
            &[r#""1414512376543211521""#, r#""  ""#, "7", "null"],
        ),
        ("\\u0069d", &[r#""99""#]),
        (
            "text",
            &[
                r#""Le vaccin, enfin ! \u00e9\n""#,
                r#""Vaccinée hier""#,
                r#""concert ce soir""#,
                r#""   ""#,
                "12",
                r#""dose \"trois\"""#,
            ],
        ),
        (
            "full_text",
            &[r#""pass sanitaire et vaccin""#, r#""""#, "null"],
        ),
        (
            "lang",
            &[
                r#""fr""#,
                r#""en""#,
                r#""und""#,
                r#""""#,
                r#""abcdefghijklmnopq""#,
                r#""abcdefghijklmnop""#,
                "3",
            ],
        ),
        (
            "created_at",
            &[
                r#""Mon Jul 12 09:15:02 +0000 2021""#,
                r#""2021-07-12T09:15:02.000Z""#,
                r#""hier""#,
                "1626080102000",
                "99999999999999999999",
                "-1",
                "null",
                "true",
                "{}",
            ],
        ),
        (
            "extended_tweet",
            &[
                r#"{"full_text": "vaccin long"}"#,
                r#"{"full_text": "  "}"#,
                r#""x""#,
            ],
        ),
        (
            "retweeted_status",
            &[
                r#"{"text": "  ", "full_text": "rappel vaccin"}"#,
                r#"{"extended_tweet": {"full_text": "dose"}}"#,
                "[]",
            ],
        ),
        (
            "delete",
            &[
                r#"{"status": {"id_str": "9"}}"#,
                r#"{"status": {"id": -1}}"#,
                r#"{"status": 3}"#,
                "1",
            ],
        ),
        ("limit", &[r#"{"track": 3}"#]),
        ("data", &["3", r#""x""#, "[]"]),
        (
            "user",
            &[
                r#"{"screen_name": "u", "lang": "en", "entities": {"urls": [[[{"a": [1, 2, {"b": null}]}]]]}}"#,
            ],
        ),
        (
            "includes",
            &[
                r#"{"tweets": [{"id": "13", "text": "rappel du vaccin"}, {"id": "13", "note_tweet": {"text": "x"}}]}"#,
                r#"{"tweets": [{"id": "13", "note_tweet": {"text": "une dose"}}]}"#,
                r#"{"tweets": {}}"#,
            ],
        ),
    ];
    const DATA_FIELDS: &[(&str, &[&str])] = &[
        ("id", &[r#""12""#, "12", r#""""#, "-3"]),
        ("text", &[r#""vaccin""#, r#""météo""#, r#""  ""#, "[]"]),
        ("lang", &[r#""fr""#, r#""de""#]),
        (
            "created_at",
            &[r#""2021-07-12T09:15:02.000Z""#, r#""demain""#],
        ),
        (
            "note_tweet",
            &[
                r#"{"text": "longue note sur la dose"}"#,
                r#"{"text": ""}"#,
                "7",
            ],
        ),
        (
            "referenced_tweets",
            &[
                r#"[{"type": "retweeted", "id": "13"}]"#,
                r#"[{"type": "quoted", "id": "13"}, {"type": "retweeted", "id": "13"}]"#,
                r#"[{"type": "retweeted", "id": 13}]"#,
                r#"[1, "x"]"#,
            ],
        ),
        (
            "delete",
            &[
                r#"{"tweet": {"id": "10"}}"#,
                r#"{"tweet": {"id": 11}}"#,
                r#"{"tweet": "x"}"#,
            ],
        ),
    ];
    const ANY: &[&str] = &["null", "true", "0", r#""s""#, "[]", "{}"];

    /// An object whose members come from `fields` (each present or not, its own values mostly),
    /// in any order, with duplicates.
    fn object(
        fields: &'static [(&'static str, &'static [&'static str])],
    ) -> impl proptest::strategy::Strategy<Value = Vec<(String, String)>> {
        use proptest::prelude::*;
        let member = (0..fields.len(), any::<prop::sample::Index>(), 0..5u8).prop_map(
            move |(f, v, other)| {
                let (key, values) = fields[f];
                let value = if other == 0 {
                    ANY[v.index(ANY.len())]
                } else {
                    values[v.index(values.len())]
                };
                (key.to_string(), value.to_string())
            },
        );
        prop::collection::vec(member, 0..9)
    }

    #[test]
    fn the_borrowed_decoder_agrees_with_the_value_decoder() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let keywords = crate::relevance::KeywordFilter::new(&["vaccin".into(), "dose".into()])
            .unwrap()
            .map(std::sync::Arc::new);
        let all_rules = [
            rules(),
            DecodeRules {
                keywords: keywords.clone(),
                ..rules()
            },
            DecodeRules {
                langs: vec![],
                max_message_bytes: 300,
                keywords,
            },
        ];
        // How often each outcome came up: the cases must reach every branch, or agreeing proves
        // little.
        let seen = std::cell::RefCell::new(std::collections::BTreeMap::<String, usize>::new());
        let same = |payload: &[u8]| {
            for r in &all_rules {
                let (new, old) = (
                    decode(payload, r, t0()),
                    reference::decode_value(payload, r, t0()),
                );
                let outcome = match &new {
                    Decoded::Tweet(t) => format!("tweet {}", t.lang),
                    Decoded::Delete(_) => "delete".into(),
                    Decoded::Skip(why) => why.as_str().into(),
                    Decoded::Reject { reason, .. } => reason.as_str().into(),
                };
                *seen.borrow_mut().entry(outcome).or_default() += 1;
                assert_eq!(new, old, "{}", String::from_utf8_lossy(payload));
            }
        };
        // Shapes the decoder distinguishes, nested one level, cut anywhere.
        let strategy = (
            object(FIELDS),
            object(DATA_FIELDS),
            any::<proptest::sample::Index>(),
            0..8u8,
        );
        // Seeded: the same 20 000 cases every run, so the coverage asserted below is a fact, not
        // a likelihood.
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases: 20_000,
                ..Config::default()
            },
            proptest::test_runner::TestRng::deterministic_rng(
                proptest::test_runner::RngAlgorithm::ChaCha,
            ),
        );
        runner
            .run(&strategy, |(outer, inner, cut, truncate)| {
                let render = |ms: &[(String, String)]| {
                    let body: Vec<String> =
                        ms.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
                    format!("{{{}}}", body.join(", "))
                };
                let mut outer = outer;
                if inner.len() > 1 {
                    outer.push(("data".into(), render(&inner)));
                }
                let mut payload = render(&outer).into_bytes();
                if truncate == 0 {
                    payload.truncate(cut.index(payload.len() + 1));
                }
                same(&payload);
                Ok(())
            })
            .unwrap();
        // The fixtures and a realistic firehose (user objects, entities, other languages).
        for f in [
            include_str!("../tests/fixtures/v1_extended.json"),
            include_str!("../tests/fixtures/v1_retweet_extended.json"),
            include_str!("../tests/fixtures/v2.json"),
            include_str!("../tests/fixtures/v2_retweet.json"),
        ] {
            same(f.as_bytes());
        }
        for line in include_str!("../tests/fixtures/control.jsonl").lines() {
            same(line.as_bytes());
        }
        for other in ["[1, 2]", "3", "\"x\"", "null", " ", "[[[]]]"] {
            same(other.as_bytes());
        }
        for p in crate::bench::firehose::payloads(3_000, 0.05, 7) {
            same(&p);
        }
        let seen = seen.into_inner();
        for outcome in [
            "tweet fr",
            "tweet und",
            "tweet en",
            "tweet abcdefghijklmnop",
            "delete",
            "control",
            "language",
            "off_topic",
            "too_large",
            "invalid_json",
            "unsupported_shape",
            "missing_id",
            "missing_text",
            "invalid_timestamp",
        ] {
            assert!(
                seen.get(outcome).copied().unwrap_or(0) >= 5,
                "{outcome} came up {:?} times: {seen:?}",
                seen.get(outcome)
            );
        }
    }

    #[test]
    fn a_chunk_split_across_threads_decodes_as_one_by_one_in_order() {
        let payloads = crate::bench::firehose::payloads(1_000, 0.05, 3);
        let mut inputs: Vec<Input<'_>> = payloads.iter().map(|p| (Some(&p[..]), t0())).collect();
        inputs.insert(17, (None, t0()));
        inputs.insert(500, (Some(b"{\"id\": 1, \"text\": "), t0()));
        let one_by_one: Vec<Decoded> = inputs
            .iter()
            .map(|(p, t)| match p {
                Some(p) => decode(p, &rules(), *t),
                None => reject(DlqReason::InvalidJson, "empty message (no payload)"),
            })
            .collect();
        for threads in [1, 2, 3, 7] {
            for len in [0, 1, MIN_SPLIT - 1, MIN_SPLIT, 255, inputs.len()] {
                assert_eq!(
                    decode_chunk(&inputs[..len], &rules(), threads),
                    one_by_one[..len],
                    "{threads} threads, {len} messages"
                );
            }
        }
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
