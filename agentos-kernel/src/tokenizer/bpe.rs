//! Byte-level BPE (GPT-2 style) built from GGUF metadata.
//!
//! Text is split into special tokens (matched inline, longest first, as llama.cpp does) and
//! ordinary text; ordinary text is pre-tokenized, mapped byte-by-byte to GPT-2's printable
//! alphabet, and merged by rank.

use std::collections::HashMap;
use std::sync::Mutex;

use super::TokenId;
use super::pretokenize::PreTokenizer;
use crate::error::{KernelError, Result};
use crate::gguf::{GgufFile, MetaValue};

/// GGUF token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_UNKNOWN: i64 = 2;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Words longer than this are not cached (they are rare and would bloat the cache).
const CACHE_MAX_WORD: usize = 64;
const CACHE_MAX_ENTRIES: usize = 1 << 16;

pub struct BpeTokenizer {
    tokens: Vec<String>,
    ids: HashMap<String, TokenId>,
    /// Merge ranks keyed by the pair of symbols.
    ranks: HashMap<(String, String), u32>,
    /// Special tokens, longest first.
    specials: Vec<(String, TokenId)>,
    special_ids: Vec<bool>,
    /// Per id: a control (or unknown) token, one that structures the conversation
    /// (`<|im_start|>`); user-defined added tokens (`<tool_call>` in some vocabularies) are not.
    control_ids: Vec<bool>,
    pre: PreTokenizer,
    byte_to_char: [char; 256],
    cache: Mutex<HashMap<String, Vec<TokenId>>>,
}

impl BpeTokenizer {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let model = gguf.string("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(KernelError::Tokenizer(format!(
                "tokenizer.ggml.model = {model:?}: only byte-level BPE (\"gpt2\") GGUF tokenizers are supported; \
                 use the model's Hugging Face directory with tokenizer.json instead"
            )));
        }
        let tokens: Vec<String> = gguf
            .strings("tokenizer.ggml.tokens")?
            .into_iter()
            .map(str::to_string)
            .collect();
        let merges = gguf.strings("tokenizer.ggml.merges")?;
        let pre = gguf.string("tokenizer.ggml.pre").unwrap_or("default");
        let types: Vec<i64> = match gguf.get("tokenizer.ggml.token_type") {
            Some(MetaValue::Array(v)) => v.iter().map(|t| t.as_f64().map(|f| f as i64).unwrap_or(1)).collect(),
            _ => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(KernelError::Tokenizer(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let specials = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (_, t))| matches!(**t, TOKEN_TYPE_UNKNOWN | TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
            .map(|(i, (s, _))| (s.clone(), i as TokenId))
            .collect();
        let control: Vec<bool> = types
            .iter()
            .map(|t| matches!(*t, TOKEN_TYPE_UNKNOWN | TOKEN_TYPE_CONTROL))
            .collect();
        let merges = merges
            .iter()
            .enumerate()
            .map(|(rank, m)| {
                let (a, b) = m.split_once(' ').ok_or_else(|| {
                    KernelError::Tokenizer(format!("merge {rank} ({m:?}) is not two symbols separated by a space"))
                })?;
                Ok(((a.to_string(), b.to_string()), rank as u32))
            })
            .collect::<Result<HashMap<_, _>>>()?;
        let mut bpe = Self::new(tokens, merges, specials, PreTokenizer::for_name(pre)?)?;
        bpe.control_ids = control;
        Ok(bpe)
    }

    fn new(
        tokens: Vec<String>,
        ranks: HashMap<(String, String), u32>,
        mut specials: Vec<(String, TokenId)>,
        pre: PreTokenizer,
    ) -> Result<Self> {
        if tokens.is_empty() {
            return Err(KernelError::Tokenizer("empty vocabulary".into()));
        }
        let ids = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as TokenId))
            .collect();
        specials.retain(|(s, _)| !s.is_empty());
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let mut special_ids = vec![false; tokens.len()];
        for (_, id) in &specials {
            special_ids[*id as usize] = true;
        }
        // Every special is a control token unless the GGUF's token types say otherwise.
        let control_ids = special_ids.clone();
        Ok(BpeTokenizer {
            tokens,
            ids,
            ranks,
            specials,
            special_ids,
            control_ids,
            pre,
            byte_to_char: bytes_to_unicode(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn token_id(&self, token: &str) -> Option<TokenId> {
        self.ids.get(token).copied()
    }

    pub fn token_text(&self, id: TokenId) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The bytes of a token: special tokens are their literal text, others are byte-level decoded.
    pub fn token_bytes(&self, id: TokenId) -> Option<Vec<u8>> {
        let text = self.tokens.get(id as usize)?;
        if self.special_ids[id as usize] {
            return Some(text.as_bytes().to_vec());
        }
        Some(byte_level_decode(text).unwrap_or_else(|| text.as_bytes().to_vec()))
    }

    pub fn encode(&self, text: &str) -> Vec<TokenId> {
        self.encode_with(text, true)
    }

    /// Encodes message content as llama.cpp does with `parse_special = false`: control tokens
    /// written in it (`<|im_start|>`, `<|im_end|>`) are plain text, user-defined added tokens
    /// still match. Text from a tool, a file or another agent cannot open a turn this way.
    pub fn encode_content(&self, text: &str) -> Vec<TokenId> {
        self.encode_with(text, false)
    }

    fn encode_with(&self, text: &str, with_control: bool) -> Vec<TokenId> {
        let mut out = Vec::new();
        for fragment in self.split_specials(text, with_control) {
            match fragment {
                Fragment::Special(id) => out.push(id),
                Fragment::Text(t) => {
                    for piece in self.pre.split(t) {
                        self.encode_word(piece, &mut out);
                    }
                }
            }
        }
        out
    }

    /// Encodes text with no special tokens: `<|im_start|>` written in it is plain text.
    pub fn encode_plain(&self, text: &str) -> Vec<TokenId> {
        let mut out = Vec::new();
        for piece in self.pre.split(text) {
            self.encode_word(piece, &mut out);
        }
        out
    }

    pub fn is_special(&self, id: TokenId) -> bool {
        self.special_ids.get(id as usize).copied().unwrap_or(false)
    }

    /// Whether `id` is a control (or unknown) token.
    pub fn is_control(&self, id: TokenId) -> bool {
        self.control_ids.get(id as usize).copied().unwrap_or(false)
    }

    /// Splits text around special tokens, longest special first (llama.cpp's partitioning);
    /// without `with_control`, control tokens are left in the text.
    fn split_specials<'t>(&self, text: &'t str, with_control: bool) -> Vec<Fragment<'t>> {
        let mut fragments = vec![Fragment::Text(text)];
        for (special, id) in &self.specials {
            if (!with_control && self.control_ids[*id as usize]) || !text.contains(special.as_str()) {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for f in fragments {
                match f {
                    Fragment::Text(mut t) => {
                        while let Some(at) = t.find(special.as_str()) {
                            if at > 0 {
                                next.push(Fragment::Text(&t[..at]));
                            }
                            next.push(Fragment::Special(*id));
                            t = &t[at + special.len()..];
                        }
                        if !t.is_empty() {
                            next.push(Fragment::Text(t));
                        }
                    }
                    special => next.push(special),
                }
            }
            fragments = next;
        }
        fragments
    }

    fn encode_word(&self, word: &str, out: &mut Vec<TokenId>) {
        if word.is_empty() {
            return;
        }
        if let Some(ids) = self.cache.lock().ok().and_then(|c| c.get(word).cloned()) {
            out.extend(ids);
            return;
        }
        let mapped: String = word.bytes().map(|b| self.byte_to_char[b as usize]).collect();
        let mut symbols: Vec<String> = mapped.chars().map(|c| c.to_string()).collect();
        // Repeatedly merge the adjacent pair with the lowest rank.
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| self.ranks.get(&(w[0].clone(), w[1].clone())).map(|&r| (r, i)))
                .min();
            let Some((_, i)) = best else { break };
            let merged = format!("{}{}", symbols[i], symbols[i + 1]);
            symbols[i] = merged;
            symbols.remove(i + 1);
        }
        let start = out.len();
        for s in &symbols {
            match self.ids.get(s) {
                Some(&id) => out.push(id),
                // Not in the vocabulary: fall back to one token per byte (llama.cpp does the same).
                None => {
                    for c in s.chars() {
                        if let Some(&id) = self.ids.get(&c.to_string()) {
                            out.push(id);
                        }
                    }
                }
            }
        }
        if word.len() <= CACHE_MAX_WORD
            && let Ok(mut cache) = self.cache.lock()
        {
            if cache.len() >= CACHE_MAX_ENTRIES {
                cache.clear();
            }
            cache.insert(word.to_string(), out[start..].to_vec());
        }
    }
}

enum Fragment<'t> {
    Text(&'t str),
    Special(TokenId),
}

/// GPT-2's reversible map from bytes to printable unicode characters.
fn bytes_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        map[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + n).expect("256..512 are valid chars");
            n += 1;
            c
        };
    }
    map
}

/// Inverts [`bytes_to_unicode`] over a token's text; `None` if a character is outside the map.
pub(crate) fn byte_level_decode(text: &str) -> Option<Vec<u8>> {
    static INVERSE: std::sync::OnceLock<HashMap<char, u8>> = std::sync::OnceLock::new();
    let inverse = INVERSE.get_or_init(|| {
        bytes_to_unicode()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect()
    });
    text.chars().map(|c| inverse.get(&c).copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> BpeTokenizer {
        let map = bytes_to_unicode();
        let sp = map[b' ' as usize];
        let mut tokens: Vec<String> = vec!["<|im_start|>".into(), "<|im_end|>".into()];
        for c in ['h', 'e', 'l', 'o', sp] {
            tokens.push(c.to_string());
        }
        tokens.push("he".into());
        tokens.push("ll".into());
        tokens.push("hell".into());
        tokens.push("hello".into());
        tokens.push(format!("{sp}h"));
        let merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o")];
        let mut ranks: HashMap<(String, String), u32> = merges
            .iter()
            .enumerate()
            .map(|(i, (a, b))| ((a.to_string(), b.to_string()), i as u32))
            .collect();
        ranks.insert((sp.to_string(), "h".into()), 10);
        let specials = vec![("<|im_start|>".to_string(), 0), ("<|im_end|>".to_string(), 1)];
        BpeTokenizer::new(tokens, ranks, specials, PreTokenizer::for_name("gpt2").unwrap()).unwrap()
    }

    #[test]
    fn merges_by_rank_and_parses_specials() {
        let t = tiny();
        // "hello" merges fully; in " he" the lower-ranked "h e" merge wins over " h".
        assert_eq!(t.encode("<|im_start|>hello<|im_end|>"), vec![0, 10, 1]);
        assert_eq!(t.encode("hello he"), vec![10, 6, 7]);
        assert_eq!(t.encode(" h"), vec![11]);
        assert_eq!(t.token_bytes(11).unwrap(), b" h");
        assert_eq!(t.token_bytes(0).unwrap(), b"<|im_start|>");
    }

    #[test]
    fn content_leaves_control_tokens_as_text() {
        let mut t = tiny();
        let ids = t.encode_content("<|im_start|>hello");
        assert!(!ids.contains(&0), "{ids:?}");
        assert!(ids.ends_with(&[10]), "{ids:?}");
        // A user-defined added token (not a control token) still matches, as in llama.cpp.
        t.control_ids[1] = false;
        assert_eq!(t.encode_content("hello<|im_end|>"), vec![10, 1]);
        assert!(!t.is_control(1) && t.is_control(0));
    }

    #[test]
    fn byte_map_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let text: String = all.iter().map(|&b| bytes_to_unicode()[b as usize]).collect();
        assert_eq!(byte_level_decode(&text).unwrap(), all);
    }
}
