//! The coherence metrics, each computed from what pulses and drift samples recorded.
//!
//! - **Cognitive latency Lκ** of a pulse: milliseconds from its trigger until every participant
//!   has the digest in its context *and* the group's drift (of the states holding the digest) is
//!   below the threshold ([`PulseRecord::l_kappa_ms`]). A pulse after which the group is still
//!   above the threshold has no Lκ; [`SyncMetrics`] reports the median over the pulses that have
//!   one and how many do.
//! - **Sync stability Γ**: the fraction of pulses after which the group stays below the
//!   threshold until the next pulse: its drift after the merge and every drift sample taken
//!   after it (until the next pulse is triggered, or the end) are below the pulse's threshold.
//! - **Contextual utilisation η**: the share of the digest's new content that the agents use.
//!   For a participant `i` of a pulse, let `N_i` be the content words (lower-cased, stopwords
//!   removed) of the other agents' contributions in the digest that are not in `i`'s own
//!   contribution, and `R_i` the content words of `i`'s next reply: `η_i = |R_i ∩ N_i| / |N_i|`.
//!   η is the mean of `η_i` over every participant of every pulse that has a next reply and a
//!   non-empty `N_i`. It measures what the model carried from the shared state into its own
//!   work, not only what it was shown.

use std::collections::HashSet;

use agentos_memory::index::content_words;
use serde::{Deserialize, Serialize};

use crate::drift::DriftSample;
use crate::pulse::PulseRecord;

/// The metrics of a run (see the module docs); `None` where nothing was measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncMetrics {
    pub pulses: usize,
    /// Median Lκ over the pulses that brought the group below the threshold.
    pub l_kappa_ms: Option<f64>,
    /// How many pulses brought the group below the threshold.
    pub converged: usize,
    pub gamma: Option<f64>,
    pub eta: Option<f64>,
}

impl SyncMetrics {
    /// Lκ and Γ of `pulses` (in the order they ran) against `samples` (in time order); η from
    /// the per-participant values of [`utilisation`].
    pub fn compute(pulses: &[PulseRecord], samples: &[DriftSample], utilisations: &[f64]) -> SyncMetrics {
        let mut latencies: Vec<u64> = pulses.iter().filter_map(PulseRecord::l_kappa_ms).collect();
        latencies.sort_unstable();
        let l_kappa_ms = median(&latencies);
        SyncMetrics {
            pulses: pulses.len(),
            converged: latencies.len(),
            l_kappa_ms,
            gamma: gamma(pulses, samples),
            eta: (!utilisations.is_empty()).then(|| utilisations.iter().sum::<f64>() / utilisations.len() as f64),
        }
    }
}

fn median(sorted: &[u64]) -> Option<f64> {
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2] as f64),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) as f64 / 2.0),
    }
}

/// Sync stability Γ (see the module docs); `None` without pulses.
pub fn gamma(pulses: &[PulseRecord], samples: &[DriftSample]) -> Option<f64> {
    if pulses.is_empty() {
        return None;
    }
    let stable = pulses
        .iter()
        .enumerate()
        .filter(|(i, p)| {
            let until = pulses.get(i + 1).map_or(u64::MAX, |next| next.triggered_ms);
            p.drift_after.max < p.threshold
                && samples
                    .iter()
                    .filter(|s| s.at_ms > p.merged_ms && s.at_ms < until)
                    .all(|s| s.drift.max < p.threshold)
        })
        .count();
    Some(stable as f64 / pulses.len() as f64)
}

/// `η_i` of one participant (see the module docs): the share of `others` (the other agents'
/// contributions it was given) new to it (not in `own`) whose content words its `next` reply
/// uses. `None` when the others brought no new content word.
pub fn utilisation(others: &[&str], own: &str, next: &str) -> Option<f64> {
    let own = content_words(own);
    let new: HashSet<String> = others
        .iter()
        .flat_map(|t| content_words(t))
        .filter(|w| !own.contains(w))
        .collect();
    if new.is_empty() {
        return None;
    }
    let reply = content_words(next);
    Some(new.iter().filter(|w| reply.contains(*w)).count() as f64 / new.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::GroupDrift;
    use crate::pulse::PulseTrigger;

    fn pulse(id: u64, triggered: u64, merged: u64, after: f32) -> PulseRecord {
        PulseRecord {
            id,
            trigger: PulseTrigger::Manual,
            participants: vec!["a".into(), "b".into()],
            late: vec![],
            triggered_ms: triggered,
            wait_ms: 0,
            merged_ms: merged,
            drift_before: GroupDrift::default(),
            drift_after: GroupDrift {
                per_agent: vec![],
                max: after,
                mean: after,
            },
            threshold: 0.1,
            tokens_injected: 0,
            contributions: 2,
            conflicts: vec![],
            digest: String::new(),
            digest_vector: vec![],
        }
    }

    fn sample(at: u64, max: f32) -> DriftSample {
        DriftSample {
            at_ms: at,
            drift: GroupDrift {
                per_agent: vec![],
                max,
                mean: max,
            },
        }
    }

    #[test]
    fn latency_counts_only_pulses_that_converged_and_stability_looks_until_the_next_pulse() {
        let pulses = [
            pulse(1, 100, 150, 0.05),
            pulse(2, 1000, 1300, 0.2),
            pulse(3, 2000, 2100, 0.01),
        ];
        // After pulse 1 a sample above the threshold before pulse 2: unstable. Pulse 2 did not
        // converge. Pulse 3 stays below.
        let samples = [sample(500, 0.3), sample(2500, 0.05)];
        let m = SyncMetrics::compute(&pulses, &samples, &[0.5, 0.25]);
        assert_eq!(m.pulses, 3);
        assert_eq!(m.converged, 2);
        assert_eq!(m.l_kappa_ms, Some(75.0)); // median of 50 and 100
        assert_eq!(m.gamma, Some(1.0 / 3.0));
        assert_eq!(m.eta, Some(0.375));
        // Without the early sample, pulse 1 is stable too.
        assert_eq!(gamma(&pulses, &samples[1..]), Some(2.0 / 3.0));
        assert_eq!(SyncMetrics::compute(&[], &[], &[]), SyncMetrics::default());
    }

    #[test]
    fn utilisation_is_the_share_of_new_words_the_reply_uses() {
        let others = ["The code word is BRAVO", "The vault is in Lisbon"];
        // New to the agent: bravo, vault, lisbon (code, word are its own).
        let eta = utilisation(&others, "My code word is ALPHA", "ALPHA and BRAVO; the vault").unwrap();
        assert!((eta - 2.0 / 3.0).abs() < 1e-9, "{eta}");
        assert_eq!(utilisation(&["the of and"], "x", "y"), None);
    }
}
