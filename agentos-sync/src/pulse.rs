//! The merge of a cognitive sync pulse: contributions in, one digest and its contradictions out,
//! and the record a pulse leaves.
//!
//! A pulse (driven by the runtime) waits until its participants reach a turn boundary, gathers
//! what each produced since the last pulse ([`Contribution`]s), finds where they contradict each
//! other ([`contradictions`]), writes one [`digest`] that every participant gets in its context,
//! and records what it did ([`PulseRecord`]).

use std::collections::HashSet;

use agentos_memory::index::content_words;
use serde::{Deserialize, Serialize};

use crate::drift::GroupDrift;

/// What one agent took in or produced, as merged by a pulse: its reply of turn `round`
/// (`from: None`), or a message it was delivered (`from: Some(sender)`, `round` the turn count
/// when it arrived).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contribution {
    pub agent: String,
    pub round: u32,
    pub text: String,
    #[serde(default)]
    pub from: Option<String>,
}

/// Why a pulse ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PulseTrigger {
    /// The group's drift (`max`) passed the threshold.
    Drift { max: f32, threshold: f32 },
    /// A collaboration round ended (its barrier).
    Barrier { round: u32 },
    /// A timer fired.
    Timer,
    /// Asked for by hand.
    Manual,
}

/// Two sentences of different agents about the same thing that disagree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contradiction {
    pub first: (String, String),
    pub second: (String, String),
    pub kind: ContradictionKind,
    /// Jaccard overlap of the two sentences' content words (numbers and negations left out).
    pub overlap: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContradictionKind {
    /// One sentence negates what the other affirms.
    Negation,
    /// The sentences give different numbers.
    Numbers,
}

/// What one pulse did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PulseRecord {
    /// Numbered from 1 in the order pulses ran.
    pub id: u64,
    pub trigger: PulseTrigger,
    /// Agents merged by this pulse.
    pub participants: Vec<String>,
    /// Agents that had not reached a turn boundary by the deadline (left out, never cut).
    pub late: Vec<String>,
    /// When the pulse was triggered (milliseconds since the Unix epoch).
    pub triggered_ms: u64,
    /// Trigger → every participant at a turn boundary.
    pub wait_ms: u64,
    /// When the digest was in every participant's context (milliseconds since the Unix epoch).
    pub merged_ms: u64,
    pub drift_before: GroupDrift,
    /// Drift of the states that now hold the digest.
    pub drift_after: GroupDrift,
    /// The drift threshold the pulse was run against.
    pub threshold: f32,
    /// Tokens of the digest summed over the participants that received it.
    pub tokens_injected: u64,
    /// Contributions merged.
    pub contributions: usize,
    pub conflicts: Vec<Contradiction>,
    pub digest: String,
    /// The digest's vector in drift measurements (unit length; empty when it merged nothing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub digest_vector: Vec<f32>,
}

impl PulseRecord {
    /// Trigger → merged and below the threshold (cognitive latency Lκ of this pulse); `None`
    /// when the group was still above the threshold after the merge.
    pub fn l_kappa_ms(&self) -> Option<u64> {
        (self.drift_after.max < self.threshold).then(|| self.merged_ms.saturating_sub(self.triggered_ms))
    }
}

/// Sentences of a text: split after `.`, `!`, `?` and at line ends, trimmed, non-empty.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '\n' {
            push_sentence(&mut out, &mut current);
            continue;
        }
        current.push(c);
        // A full stop between digits ("3.5") does not end a sentence.
        let next = chars.get(i + 1).copied();
        let ends = matches!(c, '!' | '?')
            || (c == '.' && !(next.is_some_and(|n| n.is_ascii_digit()) && i > 0 && chars[i - 1].is_ascii_digit()));
        if ends && next.is_none_or(char::is_whitespace) {
            push_sentence(&mut out, &mut current);
        }
    }
    push_sentence(&mut out, &mut current);
    out
}

fn push_sentence(out: &mut Vec<String>, current: &mut String) {
    let s = current.trim().trim_start_matches(['-', '*', '•']).trim();
    if !s.is_empty() {
        out.push(s.to_string());
    }
    current.clear();
}

/// Words that turn a statement into its negation.
const NEGATIONS: &[&str] = &["not", "no", "never", "none", "nothing", "cannot", "neither", "nor"];

/// Whether a sentence negates (an odd number of negations: "not untrue" style doubles cancel).
fn negated(sentence: &str) -> bool {
    let lower = sentence.to_lowercase();
    let count = lower
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| NEGATIONS.contains(w) || w.ends_with("n't"))
        .count();
    count % 2 == 1
}

/// The numbers a sentence states, as written ("3", "3.5", "1,000" → "1000").
fn numbers(sentence: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut current = String::new();
    for c in sentence.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() || (!current.is_empty() && (c == '.' || c == ',')) {
            current.push(c);
        } else if !current.is_empty() {
            let n: String = current
                .trim_end_matches(['.', ','])
                .chars()
                .filter(|c| *c != ',')
                .collect();
            out.insert(n);
            current.clear();
        }
    }
    out
}

/// Content words of a sentence without numbers (compared on their own).
fn topic_words(sentence: &str) -> HashSet<String> {
    content_words(sentence)
        .into_iter()
        .filter(|w| !w.chars().all(|c| c.is_ascii_digit()))
        .collect()
}

/// Pairs of sentences of different agents that say opposite things about the same subject:
/// their content words (numbers and negations left out) overlap by at least `min_overlap`
/// (Jaccard), at least two words are shared, and one negates while the other does not; or
/// they are the same statement (the same content words) with different numbers ("the code of
/// agent 1 is X" and "the code of agent 2 is Y" state different things, not one thing twice). Each pair is reported once, in contribution order.
pub fn contradictions(contributions: &[Contribution], min_overlap: f32) -> Vec<Contradiction> {
    struct Claim<'a> {
        agent: &'a str,
        text: String,
        words: HashSet<String>,
        negated: bool,
        numbers: HashSet<String>,
    }
    let claims: Vec<Claim> = contributions
        .iter()
        .flat_map(|c| {
            sentences(&c.text).into_iter().map(move |s| Claim {
                agent: &c.agent,
                words: topic_words(&s),
                negated: negated(&s),
                numbers: numbers(&s),
                text: s,
            })
        })
        .filter(|c| c.words.len() >= 2)
        .collect();
    let mut out = Vec::new();
    for (i, a) in claims.iter().enumerate() {
        for b in &claims[i + 1..] {
            if a.agent == b.agent {
                continue;
            }
            let shared = a.words.intersection(&b.words).count();
            let union = a.words.union(&b.words).count();
            let overlap = shared as f32 / union.max(1) as f32;
            if shared < 2 || overlap < min_overlap {
                continue;
            }
            let kind = if a.negated != b.negated {
                ContradictionKind::Negation
            } else if a.words == b.words && !a.numbers.is_empty() && !b.numbers.is_empty() && a.numbers != b.numbers {
                ContradictionKind::Numbers
            } else {
                continue;
            };
            out.push(Contradiction {
                first: (a.agent.to_string(), a.text.clone()),
                second: (b.agent.to_string(), b.text.clone()),
                kind,
                overlap,
            });
        }
    }
    out
}

/// The digest page of a pulse: each agent's contributions in the order given, what it was told
/// first (`- agent heard from sender: …`) then what it said (`- agent: …`), all of one agent
/// together cut at sentence ends to at most `max_chars_per_agent` characters (each item keeps
/// its first sentence whole unless that alone is over the share), then the disagreements to
/// settle.
pub fn digest(
    pulse: u64,
    contributions: &[Contribution],
    conflicts: &[Contradiction],
    max_chars_per_agent: usize,
) -> String {
    let mut out = format!("Shared state of the team (sync pulse {pulse}):\n");
    let mut agents: Vec<&str> = Vec::new();
    for c in contributions {
        if !agents.contains(&c.agent.as_str()) {
            agents.push(&c.agent);
        }
    }
    for agent in agents {
        let mine = contributions.iter().filter(|c| c.agent == agent);
        let (heard, said): (Vec<&Contribution>, Vec<&Contribution>) = mine.partition(|c| c.from.is_some());
        let mut left = max_chars_per_agent;
        for c in heard.into_iter().chain(said) {
            if left == 0 {
                break;
            }
            let first = sentences(&c.text).first().map_or(0, |s| s.chars().count());
            let text = clip_sentences(&c.text, left.max(first.min(max_chars_per_agent)));
            if text.is_empty() {
                continue;
            }
            left = left.saturating_sub(text.chars().count());
            match &c.from {
                Some(from) => out.push_str(&format!("- {agent} heard from {from}: {text}\n")),
                None => out.push_str(&format!("- {agent}: {text}\n")),
            }
        }
    }
    if !conflicts.is_empty() {
        out.push_str("Disagreements to settle:\n");
        for x in conflicts {
            out.push_str(&format!(
                "- {} says \"{}\" but {} says \"{}\"\n",
                x.first.0, x.first.1, x.second.0, x.second.1
            ));
        }
    }
    out.trim_end().to_string()
}

/// The leading whole sentences of `text` within `max_chars` characters (the first sentence
/// always, cut at `max_chars` with "…" when it alone is longer), joined by spaces.
pub fn clip_sentences(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for s in sentences(text) {
        let len = out.chars().count() + s.chars().count() + usize::from(!out.is_empty());
        if out.is_empty() && s.chars().count() > max_chars {
            out = s.chars().take(max_chars).collect();
            out.push('…');
            break;
        }
        if len > max_chars {
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(agent: &str, text: &str) -> Contribution {
        Contribution {
            agent: agent.into(),
            round: 1,
            text: text.into(),
            from: None,
        }
    }

    #[test]
    fn sentences_split_at_ends_but_not_inside_numbers() {
        assert_eq!(
            sentences("The rate is 3.5 percent. Is it? Yes!\n- a list item\n\n"),
            vec!["The rate is 3.5 percent.", "Is it?", "Yes!", "a list item"]
        );
        assert!(sentences("  \n ").is_empty());
    }

    #[test]
    fn opposite_claims_on_one_subject_are_contradictions_and_agreement_is_not() {
        let found = contradictions(
            &[
                c("researcher", "The bridge opened in 1932. Steel cables carry the deck."),
                c("critic", "The bridge opened in 1937. The weather was sunny."),
                c("writer", "Steel cables do not carry the deck."),
                c("echo", "Steel cables carry the deck."),
            ],
            0.5,
        );
        let kinds: Vec<(&str, &str, ContradictionKind)> = found
            .iter()
            .map(|x| (x.first.0.as_str(), x.second.0.as_str(), x.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("researcher", "critic", ContradictionKind::Numbers),
                ("researcher", "writer", ContradictionKind::Negation),
                ("writer", "echo", ContradictionKind::Negation),
            ]
        );
        // The same agent contradicting itself, unrelated sentences, agreement: none.
        assert!(contradictions(&[c("a", "Cats are not dogs. Cats are dogs.")], 0.5).is_empty());
        assert!(contradictions(&[c("a", "Rivers flow north."), c("b", "Bread is not cheap.")], 0.5).is_empty());
    }

    #[test]
    fn the_digest_holds_every_contribution_and_the_disagreements() {
        let contributions = [
            c(
                "a",
                "First point about the code word ALPHA. Then a long tail that goes on and on.",
            ),
            c("b", "The code word is BRAVO."),
        ];
        let conflicts = contradictions(
            &[c("a", "The vault holds 3 bars."), c("b", "The vault holds 5 bars.")],
            0.5,
        );
        let mut heard = c("b", "Your fact: the vault is in Lisbon.");
        heard.from = Some("lead".into());
        let contributions = [contributions[0].clone(), contributions[1].clone(), heard];
        let d = digest(2, &contributions, &conflicts, 60);
        assert!(d.starts_with("Shared state of the team (sync pulse 2):"), "{d}");
        assert!(d.contains("- a: First point about the code word ALPHA.\n"), "{d}");
        assert!(!d.contains("long tail"), "cut at a sentence end: {d}");
        assert!(
            d.contains("- b heard from lead: Your fact: the vault is in Lisbon.\n- b: The code word is BRAVO."),
            "what an agent heard comes before what it said: {d}"
        );
        assert!(
            d.contains("a says \"The vault holds 3 bars.\" but b says \"The vault holds 5 bars.\""),
            "{d}"
        );
        assert_eq!(clip_sentences("abcdefgh", 3), "abc…");
    }

    #[test]
    fn numbers_and_negations_are_read_as_written() {
        assert_eq!(
            numbers("It cost 1,000 dollars, or 3.5 each."),
            HashSet::from(["1000".to_string(), "3.5".to_string()])
        );
        assert!(negated("It isn't here"));
        assert!(!negated("It is not untrue, nor false")); // two negations cancel
    }
}
