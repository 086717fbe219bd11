//! Semantic slicing: where a stream of tokens changes subject, read from the model's attention.
//!
//! The contextual information density `D(t)` of token `t` is the normalised entropy of its
//! attention row, `H(p_t) / ln(context_t)`, in `[0, 1]`: near 0 when the token attends to a few
//! positions (it continues something local), near 1 when it spreads over the whole context (it
//! integrates or opens something new). The kernel reads a text as one sequence, so `context_t`
//! is everything before `t` in the text: no window edge resets it. It hands over the entropies
//! (an [`EntropySpan`]), not the probabilities, so a long text costs one value per layer, head
//! and token.
//!
//! **Aggregation.** `D(t)` is the mean over every head of the upper layers (by default the upper
//! half, [`SliceConfig::first_layer_fraction`]). Heads specialise (positional, previous-token,
//! delimiter heads), so a single head is noisy and the mean is what a change of subject moves
//! together. Lower layers are left out because their entropy mostly tracks position and local
//! syntax, which would put boundaries inside phrases; upper layers integrate meaning.
//!
//! **Boundaries.** A slice ends before token `t` where `|dD/dt|` (the change of the lightly
//! smoothed density) exceeds an adaptive threshold, `mean + k * std` of the changes over the
//! preceding window, as long as the slice has at least `min_tokens`; a slice never exceeds
//! `max_tokens`. A cut then moves to the nearest sentence start within a few tokens (else forward
//! to the next word start): the density locates a change of subject to within a few tokens, and
//! the sentence edge near it keeps a fact and its subject on one page.

use serde::{Deserialize, Serialize};

/// Attention probabilities of a span of tokens, as the kernel returns them.
///
/// # Shapes
/// probs: `[layer][head][token][context]` row-major; token `i` sits at absolute position
/// `start_pos + i` and attends to context positions `0..=start_pos + i` (the rest are 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionSpan {
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_tokens: usize,
    pub context: usize,
    pub start_pos: usize,
    pub probs: Vec<f32>,
}

impl AttentionSpan {
    fn row(&self, layer: usize, head: usize, token: usize) -> &[f32] {
        let at = ((layer * self.n_heads + head) * self.n_tokens + token) * self.context;
        &self.probs[at..at + self.context]
    }

    /// Checks that the shape fields describe `probs`, so malformed input is an error, not a panic.
    pub fn validate(&self) -> Result<(), String> {
        if self.n_layers == 0 || self.n_heads == 0 {
            return Err(format!(
                "attention span has {} layers and {} heads; it needs at least one of each",
                self.n_layers, self.n_heads
            ));
        }
        let want = self
            .n_layers
            .checked_mul(self.n_heads)
            .and_then(|v| v.checked_mul(self.n_tokens))
            .and_then(|v| v.checked_mul(self.context));
        match want {
            Some(n) if n == self.probs.len() => {}
            _ => {
                return Err(format!(
                    "attention span of {} layers x {} heads x {} tokens x {} context does not match {} values",
                    self.n_layers,
                    self.n_heads,
                    self.n_tokens,
                    self.context,
                    self.probs.len()
                ));
            }
        }
        if self.start_pos + self.n_tokens > self.context {
            return Err(format!(
                "attention span starts at {} with {} tokens but has only {} context positions",
                self.start_pos, self.n_tokens, self.context
            ));
        }
        Ok(())
    }
}

/// The entropy `H = -Σ p ln p` of the attention rows of a span of tokens, as the kernel returns
/// it.
///
/// # Shapes
/// values: `[layer][head][token]` row-major; token `i` sits at absolute position `start_pos + i`
/// and attended to the `start_pos + i + 1` positions up to and including itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntropySpan {
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_tokens: usize,
    pub start_pos: usize,
    pub values: Vec<f32>,
}

impl EntropySpan {
    /// The entropies of attention probabilities (see [`AttentionSpan`]).
    pub fn of(span: &AttentionSpan) -> Result<EntropySpan, String> {
        span.validate()?;
        let mut values = Vec::with_capacity(span.n_layers * span.n_heads * span.n_tokens);
        for layer in 0..span.n_layers {
            for head in 0..span.n_heads {
                for t in 0..span.n_tokens {
                    let visible = span.start_pos + t + 1;
                    let row = &span.row(layer, head, t)[..visible];
                    values.push(row.iter().filter(|&&p| p > 0.0).map(|&p| -p * p.ln()).sum());
                }
            }
        }
        Ok(EntropySpan {
            n_layers: span.n_layers,
            n_heads: span.n_heads,
            n_tokens: span.n_tokens,
            start_pos: span.start_pos,
            values,
        })
    }

    /// Checks that the shape fields describe `values`, so malformed input is an error, not a
    /// panic.
    pub fn validate(&self) -> Result<(), String> {
        if self.n_layers == 0 || self.n_heads == 0 {
            return Err(format!(
                "entropy span has {} layers and {} heads; it needs at least one of each",
                self.n_layers, self.n_heads
            ));
        }
        let want = self
            .n_layers
            .checked_mul(self.n_heads)
            .and_then(|v| v.checked_mul(self.n_tokens));
        if want != Some(self.values.len()) {
            return Err(format!(
                "entropy span of {} layers x {} heads x {} tokens does not match {} values",
                self.n_layers,
                self.n_heads,
                self.n_tokens,
                self.values.len()
            ));
        }
        Ok(())
    }

    fn get(&self, layer: usize, head: usize, token: usize) -> f32 {
        self.values[(layer * self.n_heads + head) * self.n_tokens + token]
    }
}

/// Tuning of [`slice_boundaries`]. Defaults suit chat turns of a small model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceConfig {
    /// Fewest tokens in a slice (except the last one of a span). Default 8.
    pub min_tokens: usize,
    /// Most tokens in a slice. Default 64.
    pub max_tokens: usize,
    /// The threshold is `mean + k * std` of recent density changes. Default 1.0.
    pub threshold_k: f32,
    /// How many recent changes the threshold is computed over. Default 24.
    pub threshold_window: usize,
    /// Layers from `floor(n_layers * fraction)` up are averaged. Default 0.5 (the upper half).
    pub first_layer_fraction: f32,
    /// How far (in tokens, either way) a cut may move to reach the start of a sentence. Default 8.
    pub sentence_snap: usize,
    /// How far (in tokens) a cut may move forward to reach the start of a word. Default 4.
    pub word_snap: usize,
}

impl Default for SliceConfig {
    fn default() -> Self {
        SliceConfig {
            min_tokens: 8,
            max_tokens: 64,
            threshold_k: 1.0,
            threshold_window: 24,
            first_layer_fraction: 0.5,
            sentence_snap: 8,
            word_snap: 4,
        }
    }
}

/// `D(t)` for every token of the span (see the module docs), in `[0, 1]`; an error when the
/// span's shape does not match its values.
pub fn density(span: &AttentionSpan, config: &SliceConfig) -> Result<Vec<f32>, String> {
    density_of_entropy(&EntropySpan::of(span)?, config)
}

/// `D(t)` from the entropies the kernel computed: each normalised by `ln` of the positions the
/// token saw, averaged over the heads of the upper layers.
pub fn density_of_entropy(span: &EntropySpan, config: &SliceConfig) -> Result<Vec<f32>, String> {
    span.validate()?;
    let first_layer = ((span.n_layers as f32 * config.first_layer_fraction).floor() as usize).min(span.n_layers - 1);
    let maps = ((span.n_layers - first_layer) * span.n_heads).max(1) as f32;
    Ok((0..span.n_tokens)
        .map(|t| {
            let visible = span.start_pos + t + 1;
            if visible < 2 {
                return 0.0;
            }
            let norm = (visible as f32).ln();
            let mut sum = 0.0;
            for layer in first_layer..span.n_layers {
                for head in 0..span.n_heads {
                    sum += span.get(layer, head, t) / norm;
                }
            }
            let d = sum / maps;
            if d.is_finite() { d.clamp(0.0, 1.0) } else { 0.0 }
        })
        .collect())
}

/// What kind of boundary lies just before a token: cuts prefer sentence starts, then word starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Boundary {
    /// Inside a word.
    None,
    /// The token begins a word.
    Word,
    /// The token begins a sentence or a line.
    Sentence,
}

/// The boundary before every piece of a tokenised text.
pub fn boundaries(pieces: &[String]) -> Vec<Boundary> {
    let mut out = Vec::with_capacity(pieces.len());
    // The text so far, trimmed of trailing spaces (only its end is looked at).
    let mut before = String::new();
    for piece in pieces {
        let first = piece.chars().next();
        let kind = if before.is_empty() || ends_sentence(&before, piece) || first == Some('\n') {
            Boundary::Sentence
        } else if first.is_none_or(|c| c.is_whitespace() || c.is_ascii_punctuation()) {
            Boundary::Word
        } else {
            Boundary::None
        };
        out.push(kind);
        before.push_str(piece);
        let keep = before.trim_end_matches(' ').len();
        before.truncate(keep);
        if before.len() > 64 {
            let cut = before.len() - 32;
            let cut = (cut..before.len()).find(|&i| before.is_char_boundary(i)).unwrap_or(0);
            before.drain(..cut);
        }
    }
    out
}

/// Whether the text `before` (trimmed of trailing spaces) ends a sentence, given the piece that
/// follows it. `?`, `!` and a line break end one. A period ends one unless:
/// - the next piece goes on without a space ("3.5", "example.com"): the period is inside a word;
/// - the word before it is an abbreviation that English writes before what follows it (a title
///   before a name, a month before a day, ...: [`ABBREVIATIONS`]), or one of [`NUMBER_PREFIXES`]
///   and a number follows ("No. 5"; "the answer is no." ends a sentence);
/// - it closes an initial ("J."), a capital letter alone, or an acronym written with periods
///   ("U.S.", "Ph.D.").
///
/// These are the rules of common sentence splitters (the Moses toolkit's `split-sentences.perl`
/// and its non-breaking prefixes, Unicode's sentence-break suppressions).
fn ends_sentence(before: &str, next: &str) -> bool {
    match before.chars().last() {
        Some('\n' | '?' | '!') => true,
        Some('.') => {
            if next.chars().next().is_some_and(|c| !c.is_whitespace()) {
                return false;
            }
            let body = &before[..before.len() - 1];
            let start = body
                .char_indices()
                .rev()
                .find(|(_, c)| !(c.is_alphanumeric() || *c == '.'))
                .map_or(0, |(i, c)| i + c.len_utf8());
            let word = &body[start..];
            let number_follows = next.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit());
            let initial = {
                let mut chars = word.chars();
                chars.next().is_some_and(char::is_uppercase) && chars.next().is_none()
            };
            // "U.S", "Ph.D": letters with periods inside, ending in a capital.
            let acronym = word.contains('.')
                && word.chars().any(char::is_alphabetic)
                && word
                    .rsplit('.')
                    .next()
                    .is_some_and(|last| !last.is_empty() && last.chars().all(char::is_uppercase));
            !(ABBREVIATIONS.contains(&word)
                || (number_follows && NUMBER_PREFIXES.contains(&word))
                || initial
                || acronym)
        }
        _ => false,
    }
}

/// Abbreviations that English writes before the word they belong to, so their period is not a
/// sentence end; matched case-sensitively, as written. Chosen by category of general usage (the
/// categories of the Moses toolkit's English non-breaking prefixes), not by any text's content.
/// Left out on purpose: abbreviations that commonly end a sentence ("etc.", "Inc.", "Ltd.",
/// "a.m.", "p.m.") and day names, which are words too ("Sun.", "Sat.").
#[rustfmt::skip]
const ABBREVIATIONS: &[&str] = &[
    // Titles and honorifics before a name, and the same in capitals.
    "Mr", "Mrs", "Ms", "Messrs", "Mme", "Mlle", "Dr", "Drs", "Prof", "Rev", "Hon", "Msgr", "Fr", "St", "Sr", "Jr",
    "MR", "MRS", "MS", "DR",
    // Military and civil ranks before a name.
    "Gen", "Col", "Maj", "Capt", "Lt", "Sgt", "Cpl", "Pvt", "Adm", "Cmdr", "Gov", "Sen", "Rep", "Pres", "Supt",
    // Months before a day or a year ("May" and the rest are written out).
    "Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec",
    // Latin and comparison abbreviations, always followed by more of the sentence.
    "e.g", "i.e", "cf", "vs", "viz",
];

/// Abbreviations that go before a number ("No. 5", "pp. 10-12"), and end a sentence otherwise.
const NUMBER_PREFIXES: &[&str] = &["No", "Nos", "no", "Vol", "vol", "Fig", "fig", "pp", "p", "Art", "ch"];

/// Cuts `0..density.len()` into slices at the density's sharp changes (see the module docs).
/// `boundaries[t]` says what boundary lies before token `t`: a cut moves to the nearest sentence
/// start within `sentence_snap` tokens, else forward to a word start within `word_snap`.
pub fn slice_boundaries(density: &[f32], boundaries: &[Boundary], config: &SliceConfig) -> Vec<std::ops::Range<usize>> {
    let n = density.len();
    let (min, max) = (
        config.min_tokens.max(1),
        config.max_tokens.max(config.min_tokens.max(1)),
    );
    if n == 0 {
        return Vec::new();
    }
    let kind = |t: usize| boundaries.get(t).copied().unwrap_or(Boundary::Word);
    // A 3-token moving average keeps single-token spikes from cutting.
    let smooth: Vec<f32> = (0..n)
        .map(|t| {
            let lo = t.saturating_sub(1);
            let hi = (t + 1).min(n - 1);
            density[lo..=hi].iter().sum::<f32>() / (hi - lo + 1) as f32
        })
        .collect();
    let change: Vec<f32> = (0..n)
        .map(|t| if t == 0 { 0.0 } else { (smooth[t] - smooth[t - 1]).abs() })
        .collect();

    let mut slices = Vec::new();
    let mut start = 0;
    let mut t = 1;
    while t < n {
        let len = t - start;
        let forced = len >= max;
        let mut cut = forced;
        if !cut && len >= min {
            let lo = t.saturating_sub(config.threshold_window).max(1);
            let window = &change[lo..t];
            if window.len() >= 2 {
                let mean = window.iter().sum::<f32>() / window.len() as f32;
                let var = window.iter().map(|c| (c - mean).powi(2)).sum::<f32>() / window.len() as f32;
                cut = change[t] > mean + config.threshold_k * var.sqrt();
            }
        }
        if cut {
            // Candidates keep the slice within [min, max] tokens; a forced cut looks back only.
            let lo = (start + min).max(t.saturating_sub(config.sentence_snap));
            let hi = if forced {
                t
            } else {
                (t + config.sentence_snap).min(start + max).min(n - 1)
            };
            let at = snap(t, lo..=hi, forced, &kind, config).max(start + 1);
            slices.push(start..at);
            start = at;
            t = at + 1;
        } else {
            t += 1;
        }
    }
    slices.push(start..n);
    // A tail shorter than `min` joins the previous slice when that stays within max.
    if slices.len() >= 2 {
        let last = slices[slices.len() - 1].clone();
        let prev = slices[slices.len() - 2].clone();
        if last.len() < min && last.end - prev.start <= max {
            slices.pop();
            let end = slices.len() - 1;
            slices[end] = prev.start..last.end;
        }
    }
    slices
}

/// Where a cut aimed before token `t` lands: the sentence start in `candidates` nearest `t`;
/// else a word start (forward within `word_snap`, or for a `forced` cut, which may not grow the
/// slice, backward); else `t` itself.
fn snap(
    t: usize,
    candidates: std::ops::RangeInclusive<usize>,
    forced: bool,
    kind: &impl Fn(usize) -> Boundary,
    config: &SliceConfig,
) -> usize {
    let (lo, hi) = (*candidates.start(), *candidates.end());
    let sentence = candidates
        .filter(|&c| kind(c) == Boundary::Sentence)
        .min_by_key(|&c| c.abs_diff(t));
    let word = || {
        if forced {
            (lo..=t).rev().find(|&c| kind(c) >= Boundary::Word)
        } else {
            (t..=(t + config.word_snap).min(hi)).find(|&c| kind(c) >= Boundary::Word)
        }
    };
    sentence.or_else(word).unwrap_or(t)
}

/// Chunks of about `size` tokens: the baseline attention slicing is compared with. Each cut is
/// aimed every `size` tokens and snapped exactly as attention cuts are (the nearest sentence
/// start within `sentence_snap`, else a word start), so the comparison is of where the cuts are
/// aimed, not of how they are snapped.
pub fn fixed_slices(boundaries: &[Boundary], size: usize, config: &SliceConfig) -> Vec<std::ops::Range<usize>> {
    let n = boundaries.len();
    let size = size.max(1);
    let kind = |t: usize| boundaries.get(t).copied().unwrap_or(Boundary::Word);
    let mut slices = Vec::new();
    let mut start = 0;
    while n - start > size {
        let t = start + size;
        let lo = (start + 1).max(t.saturating_sub(config.sentence_snap));
        let hi = (t + config.sentence_snap).min(n - 1);
        let at = snap(t, lo..=hi, false, &kind, config).max(start + 1);
        slices.push(start..at);
        start = at;
    }
    if start < n {
        slices.push(start..n);
    }
    slices
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A span whose tokens attend uniformly over `spread[t]` most recent positions.
    fn span_with_spread(spread: &[usize]) -> AttentionSpan {
        let n = spread.len();
        let (layers, heads) = (2, 2);
        let mut probs = vec![0f32; layers * heads * n * n];
        for l in 0..layers {
            for h in 0..heads {
                for (t, &s) in spread.iter().enumerate() {
                    let s = s.clamp(1, t + 1);
                    for j in t + 1 - s..=t {
                        probs[((l * heads + h) * n + t) * n + j] = 1.0 / s as f32;
                    }
                }
            }
        }
        AttentionSpan {
            n_layers: layers,
            n_heads: heads,
            n_tokens: n,
            context: n,
            start_pos: 0,
            probs,
        }
    }

    #[test]
    fn density_is_low_for_focused_and_high_for_spread_attention() {
        let span = span_with_spread(&[1, 2, 1, 1, 1, 1, 1, 1, 8, 9, 10, 11]);
        let d = density(&span, &SliceConfig::default()).unwrap();
        assert_eq!(d.len(), 12);
        assert!(d[5] < 0.05, "one-position attention has ~zero entropy: {}", d[5]);
        assert!(d[10] > 0.9, "uniform attention over everything is ~1: {}", d[10]);
    }

    #[test]
    fn cuts_where_density_jumps_and_respects_min_and_max() {
        // Two regimes: focused for 20 tokens, spread for 20, focused again for 20.
        let mut spread = vec![1usize; 20];
        spread.extend((20..40).map(|t| t + 1));
        spread.extend(std::iter::repeat_n(1, 20));
        let span = span_with_spread(&spread);
        let config = SliceConfig {
            min_tokens: 4,
            max_tokens: 64,
            ..SliceConfig::default()
        };
        let d = density(&span, &config).unwrap();
        let words = vec![Boundary::Word; d.len()];
        let slices = slice_boundaries(&d, &words, &config);
        let starts: Vec<usize> = slices.iter().map(|s| s.start).collect();
        assert!(
            starts.iter().any(|&s| (19..=22).contains(&s)),
            "a cut at the first change: {starts:?}"
        );
        assert!(
            starts.iter().any(|&s| (39..=42).contains(&s)),
            "a cut at the second change: {starts:?}"
        );
        assert!(slices.iter().all(|s| s.len() <= 64));
        // Contiguous and complete.
        assert_eq!(slices.first().unwrap().start, 0);
        assert_eq!(slices.last().unwrap().end, 60);
        assert!(slices.windows(2).all(|w| w[0].end == w[1].start));

        let tight = SliceConfig {
            max_tokens: 10,
            ..config
        };
        let slices = slice_boundaries(&d, &words, &tight);
        assert!(slices.iter().all(|s| s.len() <= 10), "{slices:?}");
    }

    #[test]
    fn cuts_snap_forward_to_a_word_start() {
        let mut spread = vec![1usize; 20];
        spread.extend((20..40).map(|t| t + 1));
        let span = span_with_spread(&spread);
        let config = SliceConfig {
            min_tokens: 4,
            ..SliceConfig::default()
        };
        let d = density(&span, &config).unwrap();
        // Only tokens 0 and 23 start words.
        let mut words = vec![Boundary::None; 40];
        words[0] = Boundary::Sentence;
        words[23] = Boundary::Word;
        let slices = slice_boundaries(&d, &words, &config);
        assert!(slices.iter().any(|s| s.start == 23), "{slices:?}");
        // A sentence start a few tokens before the change wins over the word start after it.
        words[17] = Boundary::Sentence;
        let slices = slice_boundaries(&d, &words, &config);
        assert!(slices.iter().any(|s| s.start == 17), "{slices:?}");
    }

    #[test]
    fn boundaries_follow_sentences_and_words() {
        let pieces: Vec<String> = [
            "User",
            ":",
            " My",
            " cat",
            " is",
            " Bisc",
            "uit",
            ".",
            " The",
            "\nAssistant",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        use Boundary::*;
        assert_eq!(
            boundaries(&pieces),
            vec![Sentence, Word, Word, Word, Word, Word, None, Word, Sentence, Sentence]
        );
    }

    #[test]
    fn abbreviations_do_not_end_sentences() {
        let pieces: Vec<String> = [" teacher", " is", " Mr", ".", " Alvarez", ".", " Next"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let b = boundaries(&pieces);
        assert_eq!(b[4], Boundary::Word, "{b:?}");
        assert_eq!(b[6], Boundary::Sentence, "{b:?}");
    }

    /// Whether a sentence starts at the piece after `text`'s last word (pieces are words with
    /// their leading space, and the periods on their own).
    fn starts_sentence_after(text: &str, next: &str) -> bool {
        let mut pieces: Vec<String> = Vec::new();
        for word in text.split(' ') {
            let word = if pieces.is_empty() {
                word.to_string()
            } else {
                format!(" {word}")
            };
            match word.strip_suffix('.') {
                Some(w) => pieces.extend([w.to_string(), ".".to_string()]),
                None => pieces.push(word),
            }
        }
        pieces.push(next.to_string());
        *boundaries(&pieces).last().unwrap() == Boundary::Sentence
    }

    #[test]
    fn periods_end_sentences_except_after_abbreviations_initials_and_inside_words() {
        // A number, a lone digit, a common word: the period ends the sentence.
        assert!(starts_sentence_after("My car is on level 3.", " Next"));
        assert!(starts_sentence_after("The code is 4417.", " Next"));
        assert!(starts_sentence_after("The answer is no.", " Next"));
        assert!(starts_sentence_after("We packed tents, pots, etc.", " Then"));
        assert!(starts_sentence_after("She was born in the sun.", " It"));
        // Titles, months, Latin abbreviations, "No." before a number, initials and acronyms do not.
        assert!(!starts_sentence_after("Her dentist is Dr.", " Okafor"));
        assert!(!starts_sentence_after("We met Capt.", " Haddock"));
        assert!(!starts_sentence_after("It is due on Jan.", " 5"));
        assert!(!starts_sentence_after("Bring fruit, e.g.", " apples"));
        assert!(!starts_sentence_after("Room No.", " 5"));
        assert!(!starts_sentence_after("Written by J.", " Tolkien"));
        assert!(!starts_sentence_after("He served in the U.S.", " Army"));
        // A period followed by more of the word is not an end: "3.5".
        assert!(!starts_sentence_after("It costs 3.", "5"));
    }

    #[test]
    fn malformed_spans_are_rejected() {
        let mut span = span_with_spread(&[1, 1, 1]);
        assert!(span.validate().is_ok());
        span.probs.pop();
        assert!(span.validate().is_err());
        let mut span = span_with_spread(&[1, 1, 1]);
        span.start_pos = 2;
        assert!(span.validate().is_err());
        let empty = AttentionSpan {
            n_layers: 0,
            n_heads: 0,
            n_tokens: 0,
            context: 0,
            start_pos: 0,
            probs: Vec::new(),
        };
        assert!(empty.validate().is_err());
    }

    #[test]
    fn fixed_slices_cover_everything_and_snap_to_sentences() {
        let config = SliceConfig::default();
        let words = vec![Boundary::Word; 10];
        assert_eq!(fixed_slices(&words, 4, &config), vec![0..4, 4..8, 8..10]);
        assert!(fixed_slices(&[], 4, &config).is_empty());
        // A sentence starts at 6: the cut aimed at 4 moves there, as an attention cut would.
        let mut kinds = vec![Boundary::None; 12];
        kinds[6] = Boundary::Sentence;
        assert_eq!(fixed_slices(&kinds, 4, &config)[0], 0..6);
    }
}
