//! The relevance filter (`decode.keywords`): on a firehose most French tweets are not about
//! vaccination, and classifying them as for/against would be wrong. A tweet is kept when its
//! full text (the decoder's: extended/note text, a retweet's original) matches one entry.
//! Matching is case- and accent-insensitive: text and entries are folded the same way
//! (lowercase, Latin accents removed, œ/æ spelled out) before one compiled regex runs.
//!
//! Entries: a word or phrase matches at a word start (`vaccin` matches "Vaccinés", not
//! "provaccin"... unless listed); `#tag` matches that hashtag prefix; `re:PATTERN` is a regex
//! (on folded text). An empty list keeps everything.

use regex::Regex;

/// A compiled keyword list.
#[derive(Debug, Clone)]
pub struct KeywordFilter {
    re: Regex,
    entries: usize,
}

/// Lowercases and removes the accents of Latin letters (the ones French and its neighbours
/// use), so that "Vaccinée", "VACCINEE" and "vaccinee" compare equal.
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
            continue;
        }
        let base = match c {
            'à' | 'â' | 'ä' | 'á' | 'ã' | 'å' | 'À' | 'Â' | 'Ä' | 'Á' | 'Ã' | 'Å' => {
                "a"
            }
            'é' | 'è' | 'ê' | 'ë' | 'É' | 'È' | 'Ê' | 'Ë' => "e",
            'î' | 'ï' | 'í' | 'ì' | 'Î' | 'Ï' | 'Í' | 'Ì' => "i",
            'ô' | 'ö' | 'ó' | 'ò' | 'õ' | 'Ô' | 'Ö' | 'Ó' | 'Ò' | 'Õ' => "o",
            'ù' | 'û' | 'ü' | 'ú' | 'Ù' | 'Û' | 'Ü' | 'Ú' => "u",
            'ç' | 'Ç' => "c",
            'ñ' | 'Ñ' => "n",
            'ÿ' | 'Ÿ' => "y",
            'œ' | 'Œ' => "oe",
            'æ' | 'Æ' => "ae",
            // The typographic apostrophe French keyboards produce.
            '’' => "'",
            _ => {
                out.extend(c.to_lowercase());
                continue;
            }
        };
        out.push_str(base);
    }
    out
}

/// A keyword list that does not compile.
#[derive(Debug, thiserror::Error)]
#[error("decode.keywords entry {entry:?}: {message}")]
pub struct KeywordError {
    pub entry: String,
    pub message: String,
}

impl KeywordFilter {
    /// Compiles `entries`; `None` when the list is empty (keep everything).
    pub fn new(entries: &[String]) -> Result<Option<Self>, KeywordError> {
        let mut parts = Vec::new();
        for e in entries {
            let bad = |message: String| KeywordError {
                entry: e.clone(),
                message,
            };
            let e_trim = e.trim();
            if e_trim.is_empty() {
                return Err(bad("empty entry".into()));
            }
            let part = if let Some(pattern) = e_trim.strip_prefix("re:") {
                Regex::new(pattern).map_err(|err| bad(err.to_string()))?;
                format!("(?:{pattern})")
            } else if let Some(tag) = e_trim.strip_prefix('#') {
                format!("#{}", regex::escape(&fold(tag)))
            } else {
                // Whitespace inside a phrase matches any run of whitespace.
                let words: Vec<String> =
                    fold(e_trim).split_whitespace().map(regex::escape).collect();
                format!(r"\b{}", words.join(r"\s+"))
            };
            parts.push(part);
        }
        if parts.is_empty() {
            return Ok(None);
        }
        let re = Regex::new(&parts.join("|")).map_err(|err| KeywordError {
            entry: "(all entries)".into(),
            message: err.to_string(),
        })?;
        Ok(Some(KeywordFilter {
            re,
            entries: parts.len(),
        }))
    }

    /// Whether `text` is about the topic.
    pub fn matches(&self, text: &str) -> bool {
        self.re.is_match(&fold(text))
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(entries: &[&str]) -> KeywordFilter {
        KeywordFilter::new(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap()
            .unwrap()
    }

    #[test]
    fn folding_removes_case_and_accents() {
        assert_eq!(fold("Vaccinée À LYON, cœur"), "vaccinee a lyon, coeur");
        assert_eq!(fold("PIQÛRE"), "piqure");
    }

    #[test]
    fn words_match_at_word_starts_case_and_accent_insensitively() {
        let f = filter(&[
            "vaccin",
            "pass sanitaire",
            "#NonAuPass",
            "re:\\bpfizer|moderna",
        ]);
        assert!(f.matches("VACCINÉS hier"));
        assert!(f.matches("la vaccination commence"));
        assert!(f.matches("le Pass   Sanitaire encore"));
        assert!(f.matches("manif #nonaupass samedi"));
        assert!(f.matches("rendez-vous Moderna"));
        assert!(
            !f.matches("provaccin"),
            "a word entry starts at a word boundary"
        );
        assert!(!f.matches("le match de foot ce soir"));
        assert!(!f.matches("passe sanitaire"), "only what is listed");
    }

    #[test]
    fn an_empty_list_keeps_everything_and_bad_entries_say_which() {
        assert!(KeywordFilter::new(&[]).unwrap().is_none());
        let e = KeywordFilter::new(&["re:(".to_string()]).unwrap_err();
        assert!(e.to_string().contains("\"re:(\""), "{e}");
        assert!(KeywordFilter::new(&["  ".to_string()]).is_err());
    }

    /// The list shipped in the configs keeps every synthetic tweet (the demo, benches and
    /// chaos runs count on it) and drops French tweets on other subjects.
    #[test]
    fn the_shipped_list_keeps_vaccination_tweets_and_drops_others() {
        for path in ["config/local.toml", "config/compose.toml"] {
            // compose.toml applies only signed deployments: it takes the keys from the env.
            let key = ("VAXPULSE_DEPLOY_TRUSTED_KEYS".to_string(), "ab".repeat(32));
            let cfg = crate::config::Config::from_toml_with_env(
                &std::fs::read_to_string(path).unwrap(),
                path,
                vec![key],
            )
            .unwrap();
            let rules = crate::tweet::DecodeRules::from(&cfg.decode);
            let f = rules.keywords.as_ref().expect("a shipped keyword list");
            let mut g = crate::synthetic::Generator::new(11, chrono::Utc::now(), 5).with_trend();
            for _ in 0..5_000 {
                let (t, payload) = g.payload();
                let d = crate::tweet::decode(&payload, &rules, chrono::Utc::now());
                assert!(
                    matches!(d, crate::tweet::Decoded::Tweet(_)),
                    "{path}: {:?} not kept: {d:?}",
                    t.text
                );
            }
            for off in [
                "Le match de ce soir était incroyable, quelle ambiance au stade !",
                "Je vais au cinéma avec ma sœur demain",
                "Les prix de l'essence augmentent encore, c'est intenable",
                "Rappelle-moi ce soir stp",
            ] {
                assert!(!f.matches(off), "{path}: {off:?} kept");
            }
        }
    }
}
