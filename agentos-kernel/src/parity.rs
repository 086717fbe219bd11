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
use crate::engine::{Engine, ForwardItem, LogitsWanted, SequenceId};
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

/// Runs one case on a fresh sequence: the prompt in one forward, then every position that
/// predicts a greedy token in one more (teacher forcing within a single forward).
pub fn check_case(engine: &mut Engine, case: &ReferenceCase) -> Result<CaseResult> {
    let tokens_identical = engine.tokenizer().encode(&case.prompt)? == case.prompt_ids;
    let seq = engine.create_sequence();
    let result = (|| {
        let n_prompt = case.prompt_ids.len();
        // Context up to the last prompt token without logits, then logits for every position
        // that predicts a greedy token.
        if n_prompt > 1 {
            let mut item = ForwardItem::new(seq, case.prompt_ids[..n_prompt - 1].to_vec());
            item.logits = LogitsWanted::None;
            engine.forward(&[item])?;
        }
        let mut fed: Vec<TokenId> = vec![case.prompt_ids[n_prompt - 1]];
        fed.extend_from_slice(&case.greedy_ids[..case.greedy_ids.len().saturating_sub(1)]);
        let mut item = ForwardItem::new(seq, fed);
        item.logits = LogitsWanted::All;
        let logits = engine.forward(&[item])?.remove(0).logits;
        let mut result = CaseResult::new(tokens_identical);
        for (k, row) in logits.iter().enumerate() {
            result.compare(case, k, row);
        }
        Ok(result)
    })();
    engine.release_sequence(seq);
    result
}

impl CaseResult {
    fn new(tokens_identical: bool) -> Self {
        CaseResult {
            tokens_identical,
            compared: 0,
            agreed: 0,
            disagreements: Vec::new(),
        }
    }

    /// Compares our argmax at greedy position `k` with the reference, if it is confident there.
    fn compare(&mut self, case: &ReferenceCase, k: usize, logits: &[f32]) {
        let (Some(&expected), Some(&margin)) = (case.greedy_ids.get(k), case.top1_margins.get(k)) else {
            return;
        };
        if margin < MIN_MARGIN {
            return;
        }
        self.compared += 1;
        if argmax(logits) == expected {
            self.agreed += 1;
        } else {
            self.disagreements.push(k);
        }
    }
}

/// How [`check_stepwise`] feeds the cases: the way the Batcher composes its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Most prompt tokens a case is fed in one step: a longer prompt is prefilled in chunks,
    /// each attending over the cache the earlier chunks wrote.
    pub prefill_chunk: usize,
    /// Cases in flight at once. Each step is one forward with one item per case in flight:
    /// a prompt chunk, or the single reference token of a decode. A finished case's place goes
    /// to the next one, so prompts are prefilled in the same forwards as other cases' decodes.
    pub concurrent: usize,
}

/// What [`check_stepwise`] found, and which kinds of steps it ran.
#[derive(Debug, Clone, PartialEq)]
pub struct StepwiseParity {
    pub summary: ParitySummary,
    /// Forwards run.
    pub steps: usize,
    /// Forwards that held single-token decodes and a prompt chunk together.
    pub mixed_steps: usize,
    /// Most single-token decodes in one forward.
    pub most_decodes: usize,
    /// Prompt chunks that started after the first position (they attend over cached keys).
    pub continued_chunks: usize,
}

/// One case in flight in [`check_stepwise`].
struct InFlight<'a> {
    case: &'a ReferenceCase,
    sequence: SequenceId,
    prompt_fed: usize,
    /// Greedy positions whose logits have been compared.
    predicted: usize,
    result: CaseResult,
}

/// Teacher-forced decoding one token per step, as served: every case's prompt is prefilled in
/// chunks of `schedule.prefill_chunk`, then each step feeds each case the reference token
/// that follows (not its own choice) and compares the logits of that single-token decode.
/// Up to `schedule.concurrent` cases share every forward, so decodes are batched (through the
/// host decode attention on the CPU, the padded batch elsewhere) and mixed with other cases'
/// prompt chunks. Results come back in the order of `cases`.
pub fn check_stepwise(engine: &mut Engine, cases: &[ReferenceCase], schedule: Schedule) -> Result<StepwiseParity> {
    if schedule.prefill_chunk == 0 || schedule.concurrent == 0 {
        return Err(KernelError::InvalidRequest(
            "a schedule needs a prefill chunk and a number of cases in flight of at least 1".into(),
        ));
    }
    let mut results: Vec<Option<CaseResult>> = vec![None; cases.len()];
    let mut waiting = cases.iter().enumerate();
    let mut flight: Vec<(usize, InFlight<'_>)> = Vec::new();
    let mut report = StepwiseParity {
        summary: ParitySummary { cases: Vec::new() },
        steps: 0,
        mixed_steps: 0,
        most_decodes: 0,
        continued_chunks: 0,
    };
    let outcome = (|| {
        loop {
            while flight.len() < schedule.concurrent {
                let Some((index, case)) = waiting.next() else { break };
                let tokens_identical = engine.tokenizer().encode(&case.prompt)? == case.prompt_ids;
                let sequence = engine.create_sequence();
                flight.push((
                    index,
                    InFlight {
                        case,
                        sequence,
                        prompt_fed: 0,
                        predicted: 0,
                        result: CaseResult::new(tokens_identical),
                    },
                ));
            }
            if flight.is_empty() {
                return Ok(());
            }
            let mut items = Vec::with_capacity(flight.len());
            let (mut decodes, mut chunks) = (0, 0);
            for (_, f) in &flight {
                let prompt = &f.case.prompt_ids;
                let item = if f.prompt_fed < prompt.len() {
                    let end = (f.prompt_fed + schedule.prefill_chunk).min(prompt.len());
                    let mut item = ForwardItem::new(f.sequence, prompt[f.prompt_fed..end].to_vec());
                    if end < prompt.len() {
                        item.logits = LogitsWanted::None;
                    }
                    report.continued_chunks += usize::from(f.prompt_fed > 0);
                    chunks += 1;
                    item
                } else {
                    decodes += 1;
                    ForwardItem::new(f.sequence, vec![f.case.greedy_ids[f.predicted - 1]])
                };
                items.push(item);
            }
            report.steps += 1;
            report.mixed_steps += usize::from(decodes > 0 && chunks > 0);
            report.most_decodes = report.most_decodes.max(decodes);
            let outputs = engine.forward(&items)?;
            for ((_, f), (item, out)) in flight.iter_mut().zip(items.iter().zip(outputs)) {
                if f.prompt_fed < f.case.prompt_ids.len() {
                    f.prompt_fed += item.tokens.len();
                    if f.prompt_fed < f.case.prompt_ids.len() {
                        continue;
                    }
                }
                let row = out.logits.last().ok_or_else(|| {
                    KernelError::InvalidRequest("the forward returned no logits where they were asked for".into())
                })?;
                f.result.compare(f.case, f.predicted, row);
                f.predicted += 1;
            }
            let mut k = 0;
            while k < flight.len() {
                if flight[k].1.predicted >= flight[k].1.case.greedy_ids.len() {
                    let (index, done) = flight.swap_remove(k);
                    engine.release_sequence(done.sequence);
                    results[index] = Some(done.result);
                } else {
                    k += 1;
                }
            }
        }
    })();
    for (_, f) in flight {
        engine.release_sequence(f.sequence);
    }
    outcome?;
    report.summary.cases = results.into_iter().map(|r| r.expect("every case ran")).collect();
    Ok(report)
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
