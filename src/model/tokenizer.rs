//! Turns tweet texts into token ids exactly as at training time: the shared normalisation, then
//! the model's own `tokenizer.json` with truncation at the manifest's `max_length`.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

use super::ModelError;
use crate::tweet::normalize;

/// The model's tokenizer, configured for serving. Cheap to clone for a pool of workers.
#[derive(Clone)]
pub struct TweetTokenizer {
    inner: Tokenizer,
    /// Bytes of a text looked at: what `max_length` tokens can cover (see [`input_bytes`]).
    max_input_bytes: usize,
}

/// Bytes of text that `max_length` tokens can cover, with room to spare: a token is at most a
/// few dozen bytes, and normalisation only shortens (links and mentions become one token
/// each). A long text is cut here, before normalising and tokenising, so a 64 KiB message
/// costs what a tweet costs; tweets (≤ 280 characters) are never cut.
pub fn input_bytes(max_length: usize) -> usize {
    (max_length * 64).max(4096)
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl TweetTokenizer {
    pub fn load(path: &Path, max_length: usize) -> Result<Self, ModelError> {
        let inner = Tokenizer::from_file(path).map_err(|e| ModelError::Missing {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::configure(inner, max_length)
    }

    /// From the bytes of a `tokenizer.json` (as read and hashed by [`super::Manifest::read_files`]).
    pub fn from_bytes(bytes: &[u8], max_length: usize) -> Result<Self, ModelError> {
        let inner = Tokenizer::from_bytes(bytes).map_err(|e| {
            ModelError::Tokenizer(format!("the tokenizer file is not a tokenizer.json: {e}"))
        })?;
        Self::configure(inner, max_length)
    }

    fn configure(mut inner: Tokenizer, max_length: usize) -> Result<Self, ModelError> {
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                ..Default::default()
            }))
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        inner.with_padding(None);
        Ok(TweetTokenizer {
            inner,
            max_input_bytes: input_bytes(max_length),
        })
    }

    /// Normalises and encodes `texts` (in parallel inside the tokenizers crate).
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, ModelError> {
        let normalized: Vec<String> = texts
            .iter()
            .map(|t| normalize(cut(t, self.max_input_bytes)))
            .collect();
        let encodings = self
            .inner
            .encode_batch(normalized, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| e.get_ids().to_vec())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_cut_on_a_character_boundary_before_normalising() {
        assert_eq!(cut("abc", 10), "abc");
        assert_eq!(cut("éé", 3), "é", "never inside a character");
        let long = "vaccin ".repeat(20_000);
        assert_eq!(cut(&long, input_bytes(128)).len(), 8192);
        assert!(input_bytes(16) >= 280 * 4, "a tweet is never cut");
    }
}
