//! A borrowed, one-level view of JSON objects for the decoder. Parsing a payload into
//! `serde_json::Value` allocates every key and string of the user object, entities and metrics
//! that the decoder never reads; this view checks the whole message's syntax once but keeps each
//! member's value as an unparsed slice, and parses a value (one level again) only when the
//! decoder asks for it. Lookups follow `serde_json::Map`: a duplicated name means its last
//! member. Skipping is iterative in serde_json, so deep nesting in a member never read costs no
//! stack (and, unlike a `Value`, is not refused for depth).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// A string of the payload, borrowed unless it had escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The members of one JSON object, their values unparsed.
pub struct Obj<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Obj<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Obj<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Obj<'de>, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some((Str(k), v)) = map.next_entry::<Str<'de>, &'de RawValue>()? {
                    members.push((k, v));
                }
                Ok(Obj(members))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> Obj<'a> {
    /// Parses `text` when it is one JSON object (whitespace around allowed); `None` for any
    /// other value or invalid JSON.
    pub fn parse(text: &'a str) -> Option<Obj<'a>> {
        serde_json::from_str(text).ok()
    }

    /// The value of the last member named `key`.
    pub fn get(&self, key: &str) -> Option<Json<'a>> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.as_ref() == key)
            .map(|(_, v)| Json(v))
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k.as_ref() == key)
    }
}

/// What a JSON value is, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

/// One member's value, not parsed yet (its syntax was checked with the whole message).
#[derive(Clone, Copy)]
pub struct Json<'a>(&'a RawValue);

impl<'a> Json<'a> {
    fn text(self) -> &'a str {
        self.0.get()
    }

    pub fn kind(self) -> Kind {
        match self.text().as_bytes().first() {
            Some(b'{') => Kind::Object,
            Some(b'[') => Kind::Array,
            Some(b'"') => Kind::String,
            Some(b't' | b'f') => Kind::Bool,
            Some(b'n') | None => Kind::Null,
            Some(_) => Kind::Number,
        }
    }

    pub fn as_object(self) -> Option<Obj<'a>> {
        (self.kind() == Kind::Object)
            .then(|| Obj::parse(self.text()))
            .flatten()
    }

    /// Like `Value::get`: a member of an object, `None` for any other value.
    pub fn get(self, key: &str) -> Option<Json<'a>> {
        self.as_object()?.get(key)
    }

    pub fn as_str(self) -> Option<Cow<'a, str>> {
        if self.kind() != Kind::String {
            return None;
        }
        serde_json::from_str::<Str<'a>>(self.text())
            .ok()
            .map(|s| s.0)
    }

    pub fn as_array(self) -> Option<Vec<Json<'a>>> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<Json<'de>>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<&'de RawValue>()? {
                    out.push(Json(v));
                }
                Ok(out)
            }
        }
        if self.kind() != Kind::Array {
            return None;
        }
        let mut de = serde_json::Deserializer::from_str(self.text());
        de.deserialize_seq(V).ok()
    }

    pub fn as_number(self) -> Option<serde_json::Number> {
        (self.kind() == Kind::Number)
            .then(|| serde_json::from_str(self.text()).ok())
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_found_by_their_last_name_and_values_parse_on_demand() {
        let text =
            r#" {"a": 1, "b": {"c": "d\u00e9", "e": [1, {"f": null}]}, "a": "two", "g\n": true} "#;
        let o = Obj::parse(text).unwrap();
        assert_eq!(o.get("a").unwrap().as_str().unwrap(), "two", "last wins");
        assert!(o.contains_key("g\n"), "escaped names are unescaped");
        let b = o.get("b").unwrap();
        assert_eq!(b.kind(), Kind::Object);
        assert_eq!(b.get("c").unwrap().as_str().unwrap(), "dé");
        let e = b.get("e").unwrap().as_array().unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].as_number().unwrap().as_u64(), Some(1));
        assert_eq!(e[1].get("f").unwrap().kind(), Kind::Null);
        assert!(o.get("missing").is_none());
        assert!(o.get("a").unwrap().get("x").is_none(), "get on a string");
        assert_eq!(o.get("g\n").unwrap().kind(), Kind::Bool);
    }

    #[test]
    fn anything_but_one_valid_object_is_refused() {
        for bad in [
            "[1]",
            "3",
            "\"x\"",
            "{\"a\":}",
            "{\"a\":1} x",
            "{\"a\":1",
            "",
        ] {
            assert!(Obj::parse(bad).is_none(), "{bad}");
        }
        // A member nested far deeper than serde_json's recursion limit is skipped, not refused.
        let deep = format!(
            r#"{{"x": {}{}, "y": 1}}"#,
            "[".repeat(5_000),
            "]".repeat(5_000)
        );
        assert_eq!(
            Obj::parse(&deep).unwrap().get("y").unwrap().kind(),
            Kind::Number
        );
    }
}
