//! The decoder as it was before [`super::json`]: every payload parsed into a `serde_json::Value`.
//! Kept for tests only, as the oracle the borrowed decoder must agree with (see
//! `tests::the_borrowed_decoder_agrees_with_the_value_decoder`).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{
    parse_time, reject, truncate, DecodeRules, Decoded, DlqReason, SkipReason, Tweet, CONTROL_KEYS,
};

pub fn decode_value(payload: &[u8], rules: &DecodeRules, fallback_time: DateTime<Utc>) -> Decoded {
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
