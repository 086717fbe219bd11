//! Drift: how far each agent's semantic state is from the group's.
//!
//! Each participant's state is a vector `v_i` from the kernel (the embedding of its active
//! context and latest contribution). With `u_i = v_i / ‖v_i‖` the group's state is the centroid
//! `c = (1/N) Σ u_i`, and agent `i`'s drift is the cosine distance
//!
//! ```text
//! d_i = 1 − cos(u_i, c) = 1 − (u_i · c) / ‖c‖
//! ```
//!
//! in `[0, 2]`: 0 when every agent's state points the same way (identical contexts), larger as
//! an agent's state turns away from the rest. The group's drift is `max_i d_i` (what a threshold
//! is compared with: one agent that lost the thread is enough) and its mean is reported beside
//! it. One participant alone has drift 0. Mean-pooled states of a decoder share a large common
//! direction, so drifts between texts on different subjects are small numbers (hundredths):
//! thresholds are set on that scale.

use serde::{Deserialize, Serialize};

use crate::error::{Result, SyncError};

/// The drift of each participant and of the group at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupDrift {
    /// `(agent, d_i)` in the order given.
    pub per_agent: Vec<(String, f32)>,
    /// `max_i d_i`.
    pub max: f32,
    /// `(1/N) Σ d_i`.
    pub mean: f32,
}

impl GroupDrift {
    /// The drift of `agent`, if it took part.
    pub fn of(&self, agent: &str) -> Option<f32> {
        self.per_agent.iter().find(|(a, _)| a == agent).map(|(_, d)| *d)
    }
}

/// The drift of `states` (agent, vector), all of one non-zero dimension (see the module docs).
pub fn drift(states: &[(String, Vec<f32>)]) -> Result<GroupDrift> {
    let Some((_, first)) = states.first() else {
        return Ok(GroupDrift::default());
    };
    let dim = first.len();
    if dim == 0 {
        return Err(SyncError::BadVectors("a vector is empty".into()));
    }
    let mut units = Vec::with_capacity(states.len());
    for (agent, v) in states {
        if v.len() != dim {
            return Err(SyncError::BadVectors(format!(
                "{agent}'s vector has {} values, the first has {dim}",
                v.len()
            )));
        }
        if v.iter().any(|x| !x.is_finite()) {
            return Err(SyncError::BadVectors(format!("{agent}'s vector is not finite")));
        }
        let norm = v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>().sqrt();
        if norm == 0.0 {
            return Err(SyncError::BadVectors(format!("{agent}'s vector is zero")));
        }
        units.push(v.iter().map(|x| *x as f64 / norm).collect::<Vec<f64>>());
    }
    let n = units.len() as f64;
    let mut centroid = vec![0f64; dim];
    for u in &units {
        for (c, x) in centroid.iter_mut().zip(u) {
            *c += x / n;
        }
    }
    let c_norm = centroid.iter().map(|x| x * x).sum::<f64>().sqrt();
    let per_agent: Vec<(String, f32)> = states
        .iter()
        .zip(&units)
        .map(|((agent, _), u)| {
            // Opposite vectors cancel to a zero centroid: every agent is then as far as can be.
            let cos = if c_norm == 0.0 {
                -1.0
            } else {
                u.iter().zip(&centroid).map(|(a, b)| a * b).sum::<f64>() / c_norm
            };
            (agent.clone(), (1.0 - cos).clamp(0.0, 2.0) as f32)
        })
        .collect();
    let max = per_agent.iter().map(|(_, d)| *d).fold(0f32, f32::max);
    let mean = per_agent.iter().map(|(_, d)| *d).sum::<f32>() / per_agent.len() as f32;
    Ok(GroupDrift { per_agent, max, mean })
}

/// One measurement of a group's drift, kept over time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftSample {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub drift: GroupDrift,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(agent: &str, v: &[f32]) -> (String, Vec<f32>) {
        (agent.to_string(), v.to_vec())
    }

    #[test]
    fn identical_states_have_no_drift_and_a_diverging_one_has_the_most() {
        let same = drift(&[s("a", &[1.0, 2.0, 3.0]), s("b", &[2.0, 4.0, 6.0])]).unwrap();
        assert!(same.max < 1e-6, "{same:?}");
        let apart = drift(&[s("a", &[1.0, 0.0]), s("b", &[1.0, 0.1]), s("c", &[0.0, 1.0])]).unwrap();
        let (a, c) = (apart.of("a").unwrap(), apart.of("c").unwrap());
        assert!(c > a && apart.max == c, "{apart:?}");
        assert!(apart.mean > 0.0 && apart.mean < apart.max);
        // Orthogonal pair: centroid at 45°, each 1 - cos 45°.
        let pair = drift(&[s("a", &[1.0, 0.0]), s("b", &[0.0, 1.0])]).unwrap();
        assert!((pair.max - (1.0 - std::f32::consts::FRAC_1_SQRT_2)).abs() < 1e-6);
    }

    #[test]
    fn one_agent_or_none_has_no_drift_and_bad_vectors_are_errors() {
        assert_eq!(drift(&[]).unwrap().max, 0.0);
        assert_eq!(drift(&[s("a", &[0.3, 0.4])]).unwrap().max, 0.0);
        assert!(drift(&[s("a", &[1.0]), s("b", &[1.0, 2.0])]).is_err());
        assert!(drift(&[s("a", &[0.0, 0.0])]).is_err());
        assert!(drift(&[s("a", &[f32::NAN, 1.0])]).is_err());
        assert!(drift(&[s("a", &[])]).is_err());
        let opposite = drift(&[s("a", &[1.0]), s("b", &[-1.0])]).unwrap();
        assert_eq!(opposite.max, 2.0);
    }
}
