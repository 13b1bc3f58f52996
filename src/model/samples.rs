//! The tweets every loading check runs a new version on (the half-precision parity batch, the
//! sanity pass of a version without a reference): the 24 hand-written French texts of the probe
//! set, compiled in, so a check never depends on a file at run time or on a test generator.
//! They span what traffic holds: for, against and neutral, very short, emoji only, long, a
//! mention with a URL.

use std::sync::LazyLock;

static TEXTS: LazyLock<Vec<String>> = LazyLock::new(|| {
    include_str!("../../data/probe_fr.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).expect("data/probe_fr.jsonl is compiled in; this is a bug");
            v["text"]
                .as_str()
                .expect("every probe line has a text; this is a bug")
                .to_string()
        })
        .collect()
});

/// The first `n` check tweets (all of them when `n` is larger).
pub fn texts(n: usize) -> Vec<&'static str> {
    TEXTS.iter().take(n).map(String::as_str).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_check_tweets_are_the_probe_set_and_vary_in_length() {
        let all = super::texts(usize::MAX);
        assert_eq!(all.len(), 24);
        let lens: Vec<usize> = all.iter().map(|t| t.chars().count()).collect();
        assert!(
            lens.iter().min() < Some(&10) && lens.iter().max() > Some(&150),
            "{lens:?}"
        );
        assert_eq!(super::texts(8).len(), 8);
    }
}
