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
        Ok(TweetTokenizer { inner })
    }

    /// Normalises and encodes `texts` (in parallel inside the tokenizers crate).
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, ModelError> {
        let normalized: Vec<String> = texts.iter().map(|t| normalize(t)).collect();
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
