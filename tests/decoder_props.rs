//! Property tests of payload decoding and text normalisation: no panic and bounded output on any
//! input — random bytes, near-valid JSON with fields of every type, hostile nesting and sizes.
//! 20 000 cases per property by default; `PROPTEST_CASES=1000000` for a long run.

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};
use vaxpulse::tweet::{decode, normalize, DecodeRules, Decoded};

fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var("PROPTEST_CASES").is_err() {
        c.cases = 20_000;
    }
    c
}

fn rules() -> DecodeRules {
    DecodeRules {
        langs: vec!["fr".into()],
        max_message_bytes: 4096,
        keywords: None,
    }
}

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_600_000_000, 0).unwrap()
}

/// What every decode result must satisfy, whatever the input.
fn check(decoded: Decoded) -> Result<(), TestCaseError> {
    if let Decoded::Tweet(t) = decoded {
        prop_assert!(!t.id.is_empty() && t.id.len() <= 64, "id {:?}", t.id);
        prop_assert!(!t.text.trim().is_empty());
        prop_assert!(t.text.len() <= rules().max_message_bytes);
    }
    Ok(())
}

/// Any JSON value, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Tweet-shaped objects (v1.1, v2, plain) whose fields hold values of any type.
fn tweetish() -> impl Strategy<Value = Value> {
    let field = prop_oneof![
        3 => ".{0,60}".prop_map(Value::String),
        1 => any_json(),
    ];
    (
        field.clone(),
        field.clone(),
        field.clone(),
        field.clone(),
        any_json(),
        0..4u8,
    )
        .prop_map(|(id, text, created, lang, extra, shape)| match shape {
            0 => json!({"id": id, "text": text, "created_at": created, "lang": lang}),
            1 => json!({"id_str": id, "full_text": text, "created_at": created, "lang": lang,
                        "extended_tweet": extra, "retweeted_status": {"text": text}}),
            2 => json!({"data": {"id": id, "text": text, "created_at": created, "lang": lang,
                        "referenced_tweets": [{"type": "retweeted", "id": id}]},
                        "includes": {"tweets": [extra]}}),
            _ => json!({"data": extra, "delete": id}),
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(decode(&bytes, &rules(), t0()))?;
    }

    #[test]
    fn tweet_shaped_json_with_any_field_types_never_panics(v in tweetish()) {
        let bytes = serde_json::to_vec(&v).unwrap();
        check(decode(&bytes, &rules(), t0()))?;
    }

    #[test]
    fn mutated_valid_payloads_never_panic(
        v in tweetish(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = serde_json::to_vec(&v).unwrap();
        let i = flip.index(bytes.len());
        bytes[i] = byte;
        bytes.truncate(cut.index(bytes.len() + 1));
        check(decode(&bytes, &rules(), t0()))?;
    }

    #[test]
    fn deep_nesting_and_oversized_inputs_are_rejected_not_crashed(
        depth in 1usize..20_000,
        open in prop::sample::select(vec!["[", "{\"a\":"]),
        size in 4000usize..20_000,
    ) {
        let deep = open.repeat(depth);
        prop_assert!(!matches!(decode(deep.as_bytes(), &rules(), t0()), Decoded::Tweet(_)));
        let big = format!(r#"{{"id":"1","text":"{}"}}"#, "é".repeat(size));
        check(decode(big.as_bytes(), &rules(), t0()))?;
    }

    #[test]
    fn normalisation_is_total_trimmed_and_bounded(text in "(?s).{0,300}") {
        let n = normalize(&text);
        prop_assert_eq!(n.trim(), n.as_str());
        prop_assert!(!n.contains("  "));
        // URLs become HTTPURL (7 bytes) and mentions @user: at most a small constant factor.
        prop_assert!(n.len() <= 2 * text.len() + 8, "{} -> {} bytes", text.len(), n.len());
    }

    #[test]
    fn normalisation_of_url_and_mention_soup_is_bounded(
        parts in prop::collection::vec(
            prop::sample::select(vec!["http://", "www.", "@", "&amp;", "&lt;", " ", "\n", "x", "é", "_"]),
            0..400,
        )
    ) {
        let text = parts.concat();
        let n = normalize(&text);
        prop_assert!(n.len() <= 2 * text.len() + 8);
    }
}
