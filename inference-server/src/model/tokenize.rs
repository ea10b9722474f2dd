//! One text to token ids. Padding is never done here: texts are encoded one by one and
//! padded together only when a batch is formed, to the longest text in that batch.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::ModelError;

/// A tokenized text, unpadded.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub ids: Vec<i64>,
    pub type_ids: Vec<i64>,
    /// True when the text was cut at the model's maximum length.
    pub truncated: bool,
}

impl Encoded {
    /// Tokens, special tokens included.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A `tokenizer.json` with its padding removed and truncation set to the model's limit.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    max_length: usize,
}

impl TextEncoder {
    pub fn from_file(path: &Path, max_length: usize) -> Result<Self, ModelError> {
        let mut tokenizer = Tokenizer::from_file(path).map_err(|e| ModelError::invalid(path, e))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| ModelError::invalid(path, e))?;
        Ok(Self { tokenizer, max_length })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn encode(&self, text: &str) -> Result<Encoded, ModelError> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(Encoded {
            ids: enc.get_ids().iter().map(|&i| i64::from(i)).collect(),
            type_ids: enc.get_type_ids().iter().map(|&i| i64::from(i)).collect(),
            truncated: !enc.get_overflowing().is_empty(),
        })
    }

    pub fn encode_all<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Encoded>, ModelError> {
        texts.iter().map(|t| self.encode(t.as_ref())).collect()
    }
}
