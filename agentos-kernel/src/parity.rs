//! Checking the kernel against reference outputs of another implementation (llama.cpp).
//!
//! A reference file is JSON lines: `prompt`, `prompt_ids`, `greedy_ids`, `top1_margins`.
//! Tokenization must match `prompt_ids` exactly; under teacher forcing
//! (`prompt_ids + greedy_ids`), our argmax must match `greedy_ids` wherever the reference's
//! top-1 margin is at least [`MIN_MARGIN`] (below that, legitimate numeric differences such as
//! llama.cpp's 8-bit activation quantisation can flip the choice).

use std::path::Path;

use serde::Deserialize;

use crate::engine::sampling::argmax;
use crate::engine::{Engine, ForwardItem, LogitsWanted};
use crate::error::{KernelError, Result};
use crate::tokenizer::TokenId;

/// Positions with a smaller reference margin are not compared.
pub const MIN_MARGIN: f32 = 0.5;

/// One line of a reference file.
#[derive(Debug, Clone, Deserialize)]
pub struct ReferenceCase {
    pub prompt: String,
    pub prompt_ids: Vec<TokenId>,
    pub greedy_ids: Vec<TokenId>,
    pub top1_margins: Vec<f32>,
}

/// Reads a JSON-lines reference file.
pub fn read_reference(path: &Path) -> Result<Vec<ReferenceCase>> {
    let text = std::fs::read_to_string(path).map_err(|source| KernelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let case: ReferenceCase = serde_json::from_str(line)
                .map_err(|e| KernelError::InvalidRequest(format!("{} line {}: {e}", path.display(), i + 1)))?;
            if case.greedy_ids.len() != case.top1_margins.len() || case.prompt_ids.is_empty() {
                return Err(KernelError::InvalidRequest(format!(
                    "{} line {}: greedy_ids and top1_margins differ in length, or prompt_ids is empty",
                    path.display(),
                    i + 1
                )));
            }
            Ok(case)
        })
        .collect()
}

/// The outcome for one reference case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseResult {
    pub tokens_identical: bool,
    pub compared: usize,
    pub agreed: usize,
    /// Positions (into `greedy_ids`) where a confident reference argmax differs from ours.
    pub disagreements: Vec<usize>,
}

/// Runs one case on a fresh sequence.
pub fn check_case(engine: &mut Engine, case: &ReferenceCase) -> Result<CaseResult> {
    let ours = engine.tokenizer().encode(&case.prompt)?;
    let tokens_identical = ours == case.prompt_ids;
    let seq = engine.create_sequence();
    let result = (|| {
        let n_prompt = case.prompt_ids.len();
        // Context up to the last prompt token without logits, then logits for every position
        // that predicts a greedy token.
        let mut logits = Vec::new();
        if n_prompt > 1 {
            let mut item = ForwardItem::new(seq, case.prompt_ids[..n_prompt - 1].to_vec());
            item.logits = LogitsWanted::None;
            engine.forward(&[item])?;
        }
        let mut fed: Vec<TokenId> = vec![case.prompt_ids[n_prompt - 1]];
        fed.extend_from_slice(&case.greedy_ids[..case.greedy_ids.len().saturating_sub(1)]);
        let mut item = ForwardItem::new(seq, fed);
        item.logits = LogitsWanted::All;
        logits.extend(engine.forward(&[item])?.remove(0).logits);
        let mut compared = 0;
        let mut agreed = 0;
        let mut disagreements = Vec::new();
        for (k, (&expected, &margin)) in case.greedy_ids.iter().zip(&case.top1_margins).enumerate() {
            if margin < MIN_MARGIN {
                continue;
            }
            compared += 1;
            if argmax(&logits[k]) == expected {
                agreed += 1;
            } else {
                disagreements.push(k);
            }
        }
        Ok(CaseResult {
            tokens_identical,
            compared,
            agreed,
            disagreements,
        })
    })();
    engine.release_sequence(seq);
    result
}

/// Totals over a reference file.
#[derive(Debug, Clone, PartialEq)]
pub struct ParitySummary {
    pub cases: Vec<CaseResult>,
}

impl ParitySummary {
    pub fn tokens_identical(&self) -> usize {
        self.cases.iter().filter(|c| c.tokens_identical).count()
    }
    pub fn compared(&self) -> usize {
        self.cases.iter().map(|c| c.compared).sum()
    }
    pub fn agreed(&self) -> usize {
        self.cases.iter().map(|c| c.agreed).sum()
    }
    pub fn agreement_percent(&self) -> f64 {
        100.0 * self.agreed() as f64 / self.compared().max(1) as f64
    }
    /// Tokenization identical everywhere and at least `min_percent` argmax agreement.
    pub fn passes(&self, min_percent: f64) -> bool {
        self.tokens_identical() == self.cases.len() && self.agreement_percent() >= min_percent
    }
    /// The final line the parity tool prints.
    pub fn line(&self) -> String {
        format!(
            "parity: tokens {}/{} identical, argmax {}/{} agree ({:.1}%)",
            self.tokens_identical(),
            self.cases.len(),
            self.agreed(),
            self.compared(),
            self.agreement_percent()
        )
    }
}
