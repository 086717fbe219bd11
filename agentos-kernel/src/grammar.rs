//! Grammar-constrained sampling: a request may carry a grammar (a JSON Schema or a Lark
//! grammar, compiled by llguidance); at each step the sampler may only pick tokens the grammar
//! allows, so the output parses.
//!
//! A grammar can be lazy: with `after` set, generation is free until that text appears, and
//! the grammar constrains what follows it (a tool call: free text until `<tool_call>`, then
//! JSON of an allowed call). Once the grammar is complete only an end-of-generation token is
//! allowed, so a constrained generation ends exactly where its grammar does.
//!
//! llguidance sees our own tokenizer through [`TokenizerEnv`]: the bytes of every token (special
//! tokens marked as llguidance expects) and plain-text tokenisation.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};

use crate::error::{KernelError, Result};
use crate::tokenizer::{TokenId, Tokenizer};

/// What a constrained request's output must match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Grammar {
    /// JSON matching this schema (the subset llguidance supports: types, properties,
    /// required, enum/const, anyOf/oneOf, arrays, string patterns and lengths, ...).
    JsonSchema(serde_json::Value),
    /// A Lark grammar in llguidance's dialect (which embeds JSON Schemas with `%json {...}`).
    Lark(String),
}

/// A grammar and where it starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Constraint {
    pub grammar: Grammar,
    /// Free generation until this text has been generated; the grammar applies to what
    /// follows it. `None`: from the first token.
    pub after: Option<String>,
}

/// Compiles grammars against one tokenizer (built once per engine, on first use).
pub struct GrammarCompiler {
    factory: ParserFactory,
    tokenizer: Arc<Tokenizer>,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler").finish_non_exhaustive()
    }
}

impl GrammarCompiler {
    pub fn new(tokenizer: Arc<Tokenizer>) -> Result<Self> {
        let env: TokEnv = Arc::new(TokenizerBridge::new(tokenizer.clone())?);
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| KernelError::InvalidRequest(format!("grammar engine: {e}")))?;
        // Compile warnings and errors come back to the caller as errors; nothing on stderr.
        factory.quiet();
        Ok(GrammarCompiler { factory, tokenizer })
    }

    /// The per-sequence state for `constraint`, or why its grammar does not compile.
    pub fn start(&self, constraint: &Constraint) -> Result<SequenceGrammar> {
        let grammar = match &constraint.grammar {
            Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(schema.clone()),
            Grammar::Lark(source) => TopLevelGrammar::from_lark(source.clone()),
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| KernelError::InvalidRequest(format!("the grammar does not compile: {e}")))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(KernelError::InvalidRequest(format!(
                "the grammar does not compile: {e}"
            )));
        }
        Ok(SequenceGrammar {
            matcher,
            pending: constraint.after.clone(),
            searched: 0,
            tokenizer: self.tokenizer.clone(),
            failed: None,
        })
    }
}

/// One sequence's place in its grammar.
pub struct SequenceGrammar {
    matcher: Matcher,
    /// The text that starts the constrained part, until it has been generated.
    pending: Option<String>,
    /// How much of the generated text has been searched for `pending` without finding it:
    /// each token searches only what is new (and the start text's length before it), not the
    /// whole text again.
    searched: usize,
    tokenizer: Arc<Tokenizer>,
    /// Why the grammar broke; the batcher then ends the generation
    /// ([`FinishReason::GrammarFailed`](crate::FinishReason::GrammarFailed)).
    failed: Option<String>,
}

impl SequenceGrammar {
    /// Whether the grammar broke (mask, token or forced tokens refused by the grammar engine).
    pub fn failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Whether the grammar constrains the next token.
    pub fn active(&self) -> bool {
        self.pending.is_none() && self.failed.is_none()
    }

    /// Sets the logits of every token the grammar forbids now to -inf (nothing while it waits
    /// for its start text). `logits` may be longer than the vocabulary (padded heads): the
    /// extra entries are never allowed.
    pub fn mask(&mut self, logits: &mut [f32]) {
        if !self.active() {
            return;
        }
        match self.matcher.compute_mask_or_eos() {
            Ok(allowed) => {
                for (id, logit) in logits.iter_mut().enumerate() {
                    if id >= allowed.len() || !allowed.is_allowed(id as TokenId) {
                        *logit = f32::NEG_INFINITY;
                    }
                }
            }
            Err(e) => self.fail(format!("computing the mask: {e}")),
        }
    }

    /// The tokens the grammar forces next, in order: where only one continuation is possible
    /// (`{"name": "` at the start of a call, a property name), it is appended without asking
    /// the model, each token as the tokenizer would write that text. None while the grammar is
    /// inactive. The caller passes each one to [`SequenceGrammar::commit`] like a sampled token.
    pub fn forced(&mut self) -> Vec<TokenId> {
        if !self.active() {
            return Vec::new();
        }
        let tokens = self.matcher.compute_ff_tokens();
        if let Some(e) = self.matcher.get_error() {
            self.fail(format!("computing forced tokens: {e}"));
            return Vec::new();
        }
        tokens
    }

    /// Takes the sampled `token`; `text` is everything generated so far, with it. Starts the
    /// grammar when its start text has appeared (feeding it whatever came after that text in
    /// the same token).
    pub fn commit(&mut self, token: TokenId, text: &str) {
        if self.failed.is_some() {
            return;
        }
        if let Some(after) = &self.pending {
            let mut from = self.searched.saturating_sub(after.len()).min(text.len());
            while !text.is_char_boundary(from) {
                from -= 1;
            }
            let found = text[from..].find(after.as_str()).map(|at| from + at);
            self.searched = text.len();
            if let Some(at) = found {
                let rest = &text[at + after.len()..];
                self.pending = None;
                if !rest.is_empty() {
                    match self.tokenizer.encode_plain(rest) {
                        Ok(tokens) => {
                            if let Err(e) = self.matcher.consume_tokens(&tokens) {
                                self.fail(format!("the text after the start does not fit the grammar: {e}"));
                            }
                        }
                        Err(e) => self.fail(e.to_string()),
                    }
                }
            }
            return;
        }
        if self.tokenizer.eos_tokens.contains(&token) {
            return;
        }
        if let Err(e) = self.matcher.consume_token(token) {
            self.fail(format!("token {token}: {e}"));
        }
    }

    fn fail(&mut self, reason: String) {
        tracing::warn!(%reason, "the grammar broke: the generation ends");
        self.failed = Some(reason);
    }
}

/// Our tokenizer as llguidance's `TokenizerEnv`.
struct TokenizerBridge {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerBridge {
    fn new(tokenizer: Arc<Tokenizer>) -> Result<Self> {
        let vocab = tokenizer.vocab_size();
        let special = tokenizer.special_mask();
        let mut words = Vec::with_capacity(vocab);
        for id in 0..vocab as TokenId {
            let mut bytes = tokenizer.token_bytes(id)?;
            if special.get(id as usize).copied().unwrap_or(false) {
                // llguidance's convention: a special token is its name after a 0xFF byte, so
                // no text can spell it.
                bytes.insert(0, TokTrie::SPECIAL_TOKEN_MARKER);
            }
            words.push(bytes);
        }
        let eos = *tokenizer
            .eos_tokens
            .first()
            .ok_or_else(|| KernelError::Tokenizer("the model has no end-of-generation token".into()))?;
        let mut info = TokRxInfo::new(vocab as u32, eos);
        info.tok_bos = tokenizer.bos_token;
        let trie = TokTrie::from(&info, &words);
        Ok(TokenizerBridge { trie, tokenizer })
    }
}

impl TokenizerEnv for TokenizerBridge {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, bytes: &[u8]) -> Vec<llguidance::toktrie::TokenId> {
        // Text that is not UTF-8 falls back to the trie's greedy tokenisation.
        match std::str::from_utf8(bytes) {
            Ok(text) => self
                .tokenizer
                .encode_plain(text)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(bytes)),
            Err(_) => self.trie.greedy_tokenize(bytes),
        }
    }
}
