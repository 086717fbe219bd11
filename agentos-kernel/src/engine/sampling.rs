//! Choosing the next token from logits: greedy, temperature, top-k, top-p, repetition penalty.

use serde::{Deserialize, Serialize};

use crate::error::{KernelError, Result};
use crate::tokenizer::TokenId;

/// How to pick tokens. The default is greedy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1 = all).
    pub top_p: f32,
    /// Divide positive logits (multiply negative ones) of already-seen tokens by this (1 = off).
    pub repetition_penalty: f32,
    /// Random seed; the same seed gives the same output.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self::default()
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(KernelError::InvalidRequest(m));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!(
                "temperature must be a finite number ≥ 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return bad(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

/// A per-request sampler with its own deterministic random stream.
///
/// Per token it costs O(vocabulary) plus O(k log k) for the k candidates it keeps: top-k and
/// top-p select their candidates with a partial selection instead of sorting the vocabulary,
/// and the repetition penalty keeps the set of tokens seen so far, updated with the new tokens
/// only (the history is append-only for a request), instead of copying and sorting the whole
/// history each time.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: u64,
    /// Distinct tokens seen so far, and a bit per vocabulary entry (for the penalty).
    seen: Vec<TokenId>,
    seen_bits: Vec<u64>,
    /// How many history tokens `seen` covers.
    observed: usize,
    /// Scratch for the candidates, reused between tokens.
    candidates: Vec<(TokenId, f32)>,
}

/// Candidates in sampling order: higher logit first, lower id first on ties.
fn by_rank(a: &(TokenId, f32), b: &(TokenId, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Candidates looked at first for top-p; doubled until the nucleus is inside them.
const NUCLEUS_START: usize = 64;

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        // SplitMix64 state; mix the seed so seed 0 is not a degenerate stream.
        let rng = params.seed ^ 0x9E37_79B9_7F4A_7C15;
        Sampler {
            params,
            rng,
            seen: Vec::new(),
            seen_bits: Vec::new(),
            observed: 0,
            candidates: Vec::new(),
        }
    }

    fn next_f32(&mut self) -> f32 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Takes the tokens of `history` (every token seen so far, in pieces: prompt, output) that
    /// are new since the last call into the seen set. A history shorter than before (another
    /// request's) starts the set over.
    fn observe(&mut self, history: &[&[TokenId]], vocab: usize) {
        let total: usize = history.iter().map(|piece| piece.len()).sum();
        if total < self.observed || self.seen_bits.len() * 64 < vocab {
            self.seen.clear();
            self.seen_bits = vec![0; vocab.div_ceil(64)];
            self.observed = 0;
        }
        let mut skip = self.observed;
        for piece in history {
            if skip >= piece.len() {
                skip -= piece.len();
                continue;
            }
            for &t in &piece[skip..] {
                let (word, bit) = (t as usize / 64, 1u64 << (t % 64));
                if let Some(w) = self.seen_bits.get_mut(word)
                    && *w & bit == 0
                {
                    *w |= bit;
                    self.seen.push(t);
                }
            }
            skip = 0;
        }
        self.observed = total;
    }

    /// Picks a token. `history` is every token seen so far (prompt and output), in pieces; it
    /// only grows between calls of one request.
    pub fn sample(&mut self, logits: &mut [f32], history: &[&[TokenId]]) -> TokenId {
        if logits.is_empty() {
            return 0;
        }
        let p = self.params.clone();
        if p.repetition_penalty != 1.0 {
            self.observe(history, logits.len());
            for &t in &self.seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        let kept = self.distribution(logits);
        let r = self.next_f32();
        let mut cumulative = 0.0;
        for &(token, probability) in &self.candidates[..kept] {
            cumulative += probability;
            if r < cumulative {
                return token;
            }
        }
        self.candidates[kept - 1].0
    }

    /// Fills `self.candidates` with the tokens that may be drawn, each with its probability
    /// (temperature, then top-k, then top-p, renormalised), most likely first under top-k or
    /// top-p, in id order otherwise; returns how many.
    fn distribution(&mut self, logits: &[f32]) -> usize {
        let p = &self.params;
        let candidates = &mut self.candidates;
        candidates.clear();
        candidates.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as TokenId, l / p.temperature)),
        );
        if p.top_k > 0 && p.top_k < candidates.len() {
            candidates.select_nth_unstable_by(p.top_k - 1, by_rank);
            candidates.truncate(p.top_k);
        }
        let max = candidates.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        let total: f32 = candidates.iter().map(|c| (c.1 - max).exp()).sum();
        if p.top_p >= 1.0 {
            // Every candidate may be drawn. The top-k are few: draw them in rank order; the
            // whole vocabulary is drawn in id order (the same distribution, without a sort).
            if p.top_k > 0 {
                candidates.sort_unstable_by(by_rank);
            }
            for c in candidates.iter_mut() {
                c.1 = (c.1 - max).exp() / total;
            }
            return candidates.len();
        }
        // The nucleus: the fewest best candidates whose probability reaches top_p. Look at the
        // best `m` (a partial selection), doubling `m` until the nucleus ends inside them.
        let mut m = NUCLEUS_START.min(candidates.len());
        loop {
            if m < candidates.len() {
                candidates.select_nth_unstable_by(m - 1, by_rank);
            }
            candidates[..m].sort_unstable_by(by_rank);
            let mut cumulative = 0.0;
            let mut keep = None;
            for (i, c) in candidates[..m].iter().enumerate() {
                cumulative += (c.1 - max).exp() / total;
                if cumulative >= p.top_p {
                    keep = Some(i + 1);
                    break;
                }
            }
            let keep = match keep {
                Some(keep) => keep,
                None if m == candidates.len() => m,
                None => {
                    m = (m * 2).min(candidates.len());
                    continue;
                }
            };
            candidates.truncate(keep);
            let kept_total: f32 = candidates.iter().map(|c| (c.1 - max).exp() / total).sum();
            for c in candidates.iter_mut() {
                c.1 = (c.1 - max).exp() / total / kept_total;
            }
            return keep;
        }
    }
}

/// The distribution as this sampler computed it before partial selection: the whole
/// vocabulary sorted, cut at top-k, softmax, cut at top-p, renormalised (most likely first).
/// The equivalence test and `kernel_bench` (as the baseline of the sampler's cost) use it.
pub fn full_sort_distribution(logits: &[f32], p: &SamplingParams) -> Vec<(TokenId, f32)> {
    let mut c: Vec<(TokenId, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as TokenId, l / p.temperature))
        .collect();
    c.sort_unstable_by(by_rank);
    if p.top_k > 0 {
        c.truncate(p.top_k);
    }
    let Some(max) = c.first().map(|c| c.1) else {
        return c;
    };
    let mut probs: Vec<f32> = c.iter().map(|x| (x.1 - max).exp()).collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= total);
    if p.top_p < 1.0 {
        let mut cumulative = 0.0;
        let mut keep = probs.len();
        for (i, &pr) in probs.iter().enumerate() {
            cumulative += pr;
            if cumulative >= p.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
    }
    c.iter().zip(probs).map(|(c, p)| (c.0, p)).collect()
}

/// The repetition penalty as it was applied before the seen set: the history copied, sorted
/// and deduplicated at every token (`kernel_bench`'s baseline).
pub fn full_copy_penalty(logits: &mut [f32], history: &[&[TokenId]], penalty: f32) {
    let mut seen: Vec<TokenId> = history.iter().flat_map(|piece| piece.iter().copied()).collect();
    seen.sort_unstable();
    seen.dedup();
    for t in seen {
        if let Some(l) = logits.get_mut(t as usize) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

/// Index of the largest logit (the lowest index on ties, as llama.cpp).
pub fn argmax(logits: &[f32]) -> TokenId {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as TokenId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.0], &[]), 1);
    }

    #[test]
    fn repetition_penalty_changes_the_choice() {
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        });
        // Token 1 (3.0) was seen: 3.0 / 2 = 1.5 < 2.0.
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.0], &[&[1]]), 2);
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_limits() {
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 2,
            seed: 42,
            ..Default::default()
        };
        let logits = [1.0f32, 1.1, 0.9, 5.0, 4.9];
        let run = |p: SamplingParams| {
            let mut s = Sampler::new(p);
            (0..64).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
        };
        let a = run(params.clone());
        assert_eq!(a, run(params.clone()));
        assert!(a.iter().all(|&t| t == 3 || t == 4), "{a:?}");
        assert!(
            a.contains(&3) && a.contains(&4),
            "both top-2 tokens should appear: {a:?}"
        );
        assert_ne!(a, run(SamplingParams { seed: 7, ..params }));
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            seed: 3,
            ..Default::default()
        });
        // Token 0 alone has probability > 0.5.
        for _ in 0..32 {
            assert_eq!(s.sample(&mut [10.0, 1.0, 1.0, 1.0], &[]), 0);
        }
    }

    #[test]
    fn partial_selection_keeps_the_distribution_of_a_full_sort() {
        let mut noise = Sampler::new(SamplingParams {
            seed: 11,
            ..Default::default()
        });
        let mut compared = 0;
        for round in 0..60 {
            // Peaked and flat logits over a vocabulary of 3,000.
            let scale = [0.5f32, 3.0, 12.0][round % 3];
            let logits: Vec<f32> = (0..3000).map(|_| (noise.next_f32() - 0.5) * scale).collect();
            for (top_k, top_p) in [(0, 1.0), (40, 1.0), (0, 0.9), (0, 0.5), (50, 0.95), (5000, 0.99)] {
                let params = SamplingParams {
                    temperature: 0.8,
                    top_k,
                    top_p,
                    ..Default::default()
                };
                let mut sampler = Sampler::new(params.clone());
                let kept = sampler.distribution(&logits);
                let mut ours: Vec<(TokenId, f32)> = sampler.candidates[..kept].to_vec();
                let theirs = full_sort_distribution(&logits, &params);
                // Summation order differs: a nucleus whose edge is within rounding of top_p may
                // end one token apart; everything else is the same set and probabilities.
                if ours.len() != theirs.len() {
                    assert!(ours.len().abs_diff(theirs.len()) <= 1, "{top_k} {top_p}");
                    continue;
                }
                ours.sort_unstable_by_key(|c| c.0);
                let mut theirs = theirs;
                theirs.sort_unstable_by_key(|c| c.0);
                for (a, b) in ours.iter().zip(&theirs) {
                    assert_eq!(a.0, b.0);
                    assert!((a.1 - b.1).abs() < 1e-5, "{} vs {}", a.1, b.1);
                }
                compared += 1;
            }
        }
        assert!(compared > 300, "{compared}");
    }

    #[test]
    fn the_penalty_follows_a_growing_history_without_copying_it() {
        let params = SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(params.clone());
        let prompt = [3u32, 1, 3];
        let mut generated = vec![];
        // Seen: 1, 3. Logit 4.0 of token 3 halves to 2.0, under token 0's 2.5.
        let logits = [2.5f32, 1.0, 0.0, 4.0, -1.0];
        assert_eq!(s.sample(&mut logits.clone(), &[&prompt, &generated]), 0);
        // Token 0 is generated: now it is penalised too (1.25), token 3 (2.0) wins.
        generated.push(0);
        assert_eq!(s.sample(&mut logits.clone(), &[&prompt, &generated]), 3);
        let mut penalised = logits;
        s.sample(&mut penalised, &[&prompt, &generated]);
        assert_eq!(penalised, [1.25, 0.5, 0.0, 2.0, -1.0]);
        // Another, shorter history starts the set over.
        let mut fresh = logits;
        s.sample(&mut fresh, &[&[4]]);
        assert_eq!(fresh, [2.5, 1.0, 0.0, 4.0, -2.0]);
        // Out-of-vocabulary tokens in a history are ignored.
        let mut odd = logits;
        Sampler::new(params).sample(&mut odd, &[&[99, 1]]);
        assert_eq!(odd, [2.5, 0.5, 0.0, 4.0, -1.0]);
    }

    #[test]
    fn invalid_params_are_rejected() {
        for p in [
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                repetition_penalty: f32::NAN,
                ..Default::default()
            },
        ] {
            assert!(p.validate().is_err(), "{p:?}");
        }
    }
}
