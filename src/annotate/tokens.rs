//! Who may annotate: a file of `NAME:SHA256_HEX` lines, the hash of each annotator's token. The
//! file never holds a token, a refused request never echoes one, and a line that is not
//! `NAME:64-hex` is refused at start with its line number.

use std::collections::HashMap;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Annotators by the hash of their token.
#[derive(Debug, Clone, Default)]
pub struct Annotators {
    by_hash: HashMap<String, String>,
}

fn hash(token: &str) -> String {
    format!("{:x}", Sha256::digest(token.as_bytes()))
}

/// A name: 1 to 64 letters, digits, `.`, `_` or `-` (it is stored with every label).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Annotators {
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let mut by_hash = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, h) = line.split_once(':').unwrap_or((line, ""));
            let h = h.trim().to_ascii_lowercase();
            anyhow::ensure!(
                valid_name(name.trim())
                    && h.len() == 64
                    && h.chars().all(|c| c.is_ascii_hexdigit()),
                "{origin} line {}: expected NAME:SHA256_HEX (as `vaxpulse annotate token NAME` prints it)",
                i + 1
            );
            by_hash.insert(h, name.trim().to_string());
        }
        anyhow::ensure!(
            !by_hash.is_empty(),
            "{origin} names no annotator: add a line printed by `vaxpulse annotate token NAME`"
        );
        Ok(Annotators { by_hash })
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !path.as_os_str().is_empty(),
            "annotate.tokens_file is not set: create one with `vaxpulse annotate token NAME >> tokens` and set it (env VAXPULSE_ANNOTATE_TOKENS_FILE)"
        );
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!("cannot read annotate.tokens_file {}: {e}", path.display())
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The annotator holding `token`.
    pub fn who(&self, token: &str) -> Option<&str> {
        self.by_hash.get(&hash(token)).map(String::as_str)
    }
}

/// A new random token for `name` and the line of the tokens file that admits it.
pub fn new_token(name: &str) -> anyhow::Result<(String, String)> {
    anyhow::ensure!(
        valid_name(name),
        "annotator name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-'"
    );
    let bytes: [u8; 24] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let line = format!("{name}:{}", hash(&token));
    Ok((token, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_admits_its_annotator_only_and_bad_lines_are_refused() {
        let (token, line) = new_token("alice").unwrap();
        let (other, _) = new_token("bob").unwrap();
        let a = Annotators::parse(&format!("# team\n{line}\n"), "tokens").unwrap();
        assert_eq!(a.who(&token), Some("alice"));
        assert_eq!(a.who(&other), None);
        assert!(
            !line.contains(&token),
            "the file holds the hash, never the token"
        );
        let e = Annotators::parse("alice:1234\n", "tokens").unwrap_err();
        assert!(e.to_string().contains("tokens line 1"), "{e}");
        assert!(Annotators::parse("# nobody\n", "tokens").is_err());
        assert!(new_token("a b").is_err());
    }
}
