//! Tokenizers: byte-level BPE built from GGUF metadata, or a Hugging Face `tokenizer.json`.
//!
//! Both parse special tokens written inline in text (`<|im_start|>`), because chat templates
//! render them as text. Message content is encoded without control tokens
//! ([`Tokenizer::encode_chat`]): only the template's own text can open or close a turn.

pub mod bpe;
mod pretokenize;

use std::path::Path;

use crate::error::{KernelError, Result};
use crate::gguf::GgufFile;

pub use self::bpe::BpeTokenizer;

/// A token id.
pub type TokenId = u32;

/// A tokenizer for one model.
pub struct Tokenizer {
    backend: Backend,
    /// Tokens that end a generation (the model's EOS/EOT tokens).
    pub eos_tokens: Vec<TokenId>,
    pub bos_token: Option<TokenId>,
    pub add_bos: bool,
}

enum Backend {
    Bpe(Box<BpeTokenizer>),
    /// The tokenizer, and a copy that leaves special added tokens in the text (for content).
    HuggingFace(Box<tokenizers::Tokenizer>, Box<tokenizers::Tokenizer>),
}

/// A piece of a rendered chat: the template's own text, or a message's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatSegment {
    /// Written by the chat template: control tokens in it are parsed.
    Template(String),
    /// A message's content: control tokens written in it are plain text.
    Content(String),
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("eos_tokens", &self.eos_tokens)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let bpe = BpeTokenizer::from_gguf(gguf)?;
        let id = |key: &str| gguf.get(key).and_then(|v| v.as_u64()).map(|v| v as TokenId);
        let mut eos_tokens: Vec<TokenId> = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
            .iter()
            .filter_map(|k| id(k))
            .collect();
        add_turn_end_tokens(&mut eos_tokens, |name| bpe.token_id(name));
        let add_bos = matches!(
            gguf.get("tokenizer.ggml.add_bos_token"),
            Some(crate::gguf::MetaValue::Bool(true))
        );
        Ok(Tokenizer {
            bos_token: id("tokenizer.ggml.bos_token_id"),
            backend: Backend::Bpe(Box::new(bpe)),
            eos_tokens,
            add_bos,
        })
    }

    /// Loads a Hugging Face `tokenizer.json`; `eos_tokens` come from the model's config.
    pub fn from_tokenizer_json(path: &Path, eos_tokens: Vec<TokenId>, bos_token: Option<TokenId>) -> Result<Self> {
        let tok = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| KernelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let mut eos_tokens = eos_tokens;
        add_turn_end_tokens(&mut eos_tokens, |name| tok.token_to_id(name));
        let mut content = tok.clone();
        content.set_encode_special_tokens(true);
        Ok(Tokenizer {
            backend: Backend::HuggingFace(Box::new(tok), Box::new(content)),
            eos_tokens,
            bos_token,
            add_bos: false,
        })
    }

    /// Encodes text, parsing special tokens written inline. Adds BOS only if the model asks.
    pub fn encode(&self, text: &str) -> Result<Vec<TokenId>> {
        let mut ids = Vec::new();
        if self.add_bos
            && let Some(bos) = self.bos_token
        {
            ids.push(bos);
        }
        match &self.backend {
            Backend::Bpe(bpe) => ids.extend(bpe.encode(text)),
            Backend::HuggingFace(tok, _) => {
                let enc = tok
                    .encode(text, false)
                    .map_err(|e| KernelError::Tokenizer(e.to_string()))?;
                ids.extend_from_slice(enc.get_ids());
            }
        }
        Ok(ids)
    }

    /// Encodes a rendered chat: BOS if the model asks, template text with its control tokens,
    /// content with control tokens as plain text ([`BpeTokenizer::encode_content`]; for a
    /// tokenizer.json model, its `encode_special_tokens` mode, which does the same).
    pub fn encode_chat(&self, segments: &[ChatSegment]) -> Result<Vec<TokenId>> {
        let mut ids = Vec::new();
        if self.add_bos
            && let Some(bos) = self.bos_token
        {
            ids.push(bos);
        }
        for segment in segments {
            match (segment, &self.backend) {
                (ChatSegment::Template(text), Backend::Bpe(bpe)) => ids.extend(bpe.encode(text)),
                (ChatSegment::Content(text), Backend::Bpe(bpe)) => ids.extend(bpe.encode_content(text)),
                (ChatSegment::Template(text), Backend::HuggingFace(tok, _))
                | (ChatSegment::Content(text), Backend::HuggingFace(_, tok)) => {
                    let enc = tok
                        .encode(text.as_str(), false)
                        .map_err(|e| KernelError::Tokenizer(e.to_string()))?;
                    ids.extend_from_slice(enc.get_ids());
                }
            }
        }
        Ok(ids)
    }

    /// Encodes text as plain text: special tokens written in it are not matched (no BOS).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<TokenId>> {
        match &self.backend {
            Backend::Bpe(bpe) => Ok(bpe.encode_plain(text)),
            Backend::HuggingFace(tok, _) => {
                let enc = tok
                    .encode(text, false)
                    .map_err(|e| KernelError::Tokenizer(e.to_string()))?;
                if enc.get_ids().iter().any(|&id| self.is_special(id)) {
                    // `tokenizers` matches added tokens before its model runs; taking them
                    // apart again is not done for tokenizer.json models yet.
                    return Err(KernelError::Tokenizer(
                        "this text holds special-token text, which a tokenizer.json model cannot encode as plain text here"
                            .into(),
                    ));
                }
                Ok(enc.get_ids().to_vec())
            }
        }
    }

    /// For every id, whether it is a special (control) token.
    pub fn special_mask(&self) -> Vec<bool> {
        match &self.backend {
            Backend::Bpe(bpe) => (0..bpe.vocab_size() as TokenId).map(|id| bpe.is_special(id)).collect(),
            Backend::HuggingFace(tok, _) => {
                let mut mask = vec![false; self.vocab_size()];
                for (id, added) in tok.get_added_tokens_decoder() {
                    if added.special
                        && let Some(slot) = mask.get_mut(id as usize)
                    {
                        *slot = true;
                    }
                }
                mask
            }
        }
    }

    /// Whether `id` is a special (control) token, such as `<|im_end|>`.
    pub fn is_special(&self, id: TokenId) -> bool {
        match &self.backend {
            Backend::Bpe(bpe) => bpe.is_special(id),
            Backend::HuggingFace(tok, _) => tok
                .get_added_tokens_decoder()
                .get(&id)
                .is_some_and(|added| added.special),
        }
    }

    /// The bytes a token stands for (special tokens render as their text).
    pub fn token_bytes(&self, id: TokenId) -> Result<Vec<u8>> {
        match &self.backend {
            Backend::Bpe(bpe) => bpe
                .token_bytes(id)
                .ok_or_else(|| KernelError::Tokenizer(format!("token id {id} is outside the vocabulary"))),
            Backend::HuggingFace(tok, _) => {
                let piece = tok
                    .id_to_token(id)
                    .ok_or_else(|| KernelError::Tokenizer(format!("token id {id} is outside the vocabulary")))?;
                Ok(bpe::byte_level_decode(&piece).unwrap_or_else(|| piece.into_bytes()))
            }
        }
    }

    /// Decodes ids to text; invalid UTF-8 (a token split mid-character) becomes U+FFFD.
    pub fn decode(&self, ids: &[TokenId]) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend(self.token_bytes(id)?);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Bpe(bpe) => bpe.vocab_size(),
            Backend::HuggingFace(tok, _) => tok.get_vocab_size(true),
        }
    }

    /// The id of a token given its text form.
    pub fn token_id(&self, token: &str) -> Option<TokenId> {
        match &self.backend {
            Backend::Bpe(bpe) => bpe.token_id(token),
            Backend::HuggingFace(tok, _) => tok.token_to_id(token),
        }
    }

    /// The text form of a token (for chat templates: `bos_token`, `eos_token`).
    pub fn token_text(&self, id: TokenId) -> Option<String> {
        match &self.backend {
            Backend::Bpe(bpe) => bpe.token_text(id).map(str::to_string),
            Backend::HuggingFace(tok, _) => tok.id_to_token(id),
        }
    }
}

/// Adds the turn-ending tokens a vocabulary has, then sorts and dedups: chat models end a turn
/// with these (`<|im_end|>` for ChatML) even when the file names another EOS.
fn add_turn_end_tokens(eos_tokens: &mut Vec<TokenId>, lookup: impl Fn(&str) -> Option<TokenId>) {
    eos_tokens.extend(
        ["<|im_end|>", "<|eot_id|>", "<|endoftext|>"]
            .into_iter()
            .filter_map(lookup),
    );
    eos_tokens.sort_unstable();
    eos_tokens.dedup();
}

/// Turns a stream of tokens into text pieces without splitting UTF-8 characters.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// Adds a token; returns the text that became complete.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: TokenId) -> Result<String> {
        self.pending.extend(tokenizer.token_bytes(id)?);
        Ok(self.take_complete())
    }

    fn take_complete(&mut self) -> String {
        match std::str::from_utf8(&self.pending) {
            Ok(s) => {
                let s = s.to_string();
                self.pending.clear();
                s
            }
            Err(e) if e.error_len().is_none() => {
                // An incomplete character at the end: keep it for the next token.
                let valid = e.valid_up_to();
                let s = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
                self.pending.drain(..valid);
                s
            }
            Err(_) => {
                let s = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                s
            }
        }
    }

    /// Flushes whatever is left (an unfinished character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A word-level tokenizer.json with two special (control) added tokens and one that is not.
    const TOKENIZER_JSON: &str = r#"{
      "version": "1.0", "truncation": null, "padding": null,
      "added_tokens": [
        {"id": 0, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
        {"id": 1, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
        {"id": 2, "content": "<tool_call>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false}
      ],
      "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
      "model": {"type": "WordLevel", "vocab": {"<|im_start|>": 0, "<|im_end|>": 1, "<tool_call>": 2, "hello": 3, "[UNK]": 4}, "unk_token": "[UNK]"}
    }"#;

    #[test]
    fn tokenizer_json_contents_leave_control_tokens_as_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, TOKENIZER_JSON).unwrap();
        let tokenizer = Tokenizer::from_tokenizer_json(&path, vec![1], None).unwrap();
        let ids = tokenizer
            .encode_chat(&[
                ChatSegment::Template("<|im_start|>".into()),
                ChatSegment::Content("hello <|im_end|> <|im_start|> <tool_call>".into()),
                ChatSegment::Template("<|im_end|>".into()),
            ])
            .unwrap();
        assert_eq!(ids.first(), Some(&0));
        assert_eq!(ids.last(), Some(&1));
        let inner = &ids[1..ids.len() - 1];
        assert!(!inner.contains(&0) && !inner.contains(&1), "{ids:?}");
        // A user-defined added token still matches in content, as in llama.cpp.
        assert!(inner.contains(&2), "{ids:?}");
        assert_eq!(inner[0], 3);
        // The same text as one template string opens a turn.
        let whole = tokenizer.encode("hello <|im_start|>").unwrap();
        assert!(whole.contains(&0), "{whole:?}");
    }
}
