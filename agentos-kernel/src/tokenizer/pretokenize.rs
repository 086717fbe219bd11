//! Pre-tokenizer rules, keyed by GGUF `tokenizer.ggml.pre`, as llama.cpp applies them.
//!
//! A rule is a list of regexes applied in sequence: each regex splits every piece produced by the
//! previous one, and text between matches is kept as a piece of its own (llama.cpp does the same).

use fancy_regex::Regex;

use crate::error::{KernelError, Result};

/// GPT-2's pattern. llama.cpp writes it without the final `|\s+` because its splitter keeps
/// unmatched text anyway; we keep it explicit.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub(crate) struct PreTokenizer {
    stages: Vec<Regex>,
}

impl PreTokenizer {
    pub(crate) fn for_name(pre: &str) -> Result<Self> {
        let patterns: &[&str] = match pre {
            "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" => &[GPT2],
            // llama.cpp groups these: every digit is a piece, then GPT-2's rules.
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => &[r"\p{N}", GPT2],
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => &[LLAMA3],
            "qwen2" | "stablelm2" | "deepseek-r1-qwen" => &[QWEN2],
            other => {
                return Err(KernelError::Tokenizer(format!(
                    "unsupported pre-tokenizer {other:?} (tokenizer.ggml.pre); supported: gpt2, smollm, \
                     starcoder, llama3, qwen2 and their aliases"
                )));
            }
        };
        let stages = patterns
            .iter()
            .map(|p| Regex::new(p).map_err(|e| KernelError::Tokenizer(format!("pre-tokenizer regex: {e}"))))
            .collect::<Result<_>>()?;
        Ok(PreTokenizer { stages })
    }

    /// Splits `text` into pieces; concatenating the pieces gives `text` back.
    pub(crate) fn split<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let mut pieces = vec![text];
        for re in &self.stages {
            let mut next = Vec::with_capacity(pieces.len() * 2);
            for piece in pieces {
                let mut last = 0;
                for m in re.find_iter(piece) {
                    // fancy-regex only fails on backtrack limits; treat the rest as one piece.
                    let Ok(m) = m else { break };
                    if m.start() > last {
                        next.push(&piece[last..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                    }
                    last = m.end();
                }
                if last < piece.len() {
                    next.push(&piece[last..]);
                }
            }
            pieces = next;
        }
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm_splits_digits_one_by_one() {
        let p = PreTokenizer::for_name("smollm").unwrap();
        assert_eq!(p.split("in 2024, hi"), vec!["in", " ", "2", "0", "2", "4", ",", " hi"]);
        assert_eq!(p.split("a  b\n"), vec!["a", " ", " b", "\n"]);
    }

    #[test]
    fn unknown_pre_tokenizer_is_an_error() {
        assert!(PreTokenizer::for_name("klingon").is_err());
    }
}
