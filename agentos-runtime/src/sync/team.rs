//! Sync pulses, collaboration rounds and the pulse timer (see the [`sync`](crate::sync) docs).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentos_memory::{Embedder, L1Msg};
use agentos_sync::metrics::utilisation;
use agentos_sync::pulse::{contradictions, digest};
use agentos_sync::{Contribution, DriftSample, GroupDrift, PulseRecord, PulseTrigger, SyncMetrics};
use serde::{Deserialize, Serialize};

use super::actor::{SyncMsg, now_ms};
use crate::agent::handle::AgentHandle;
use crate::error::{Result, RuntimeError};
use crate::rpc;
use crate::system::System;
use crate::types::TaskId;

/// How a pulse runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PulseConfig {
    /// Drift above which the group counts as drifted (see [`agentos_sync::drift`]); compared
    /// with the group's largest drift. Default 0.02 (drifts of mean-pooled states are small
    /// numbers: the README lists values measured on the default model).
    pub drift_threshold: f32,
    /// How long the pulse waits for participants to reach a turn boundary. Default 30 s.
    pub deadline: Duration,
    /// Each contribution's share of the digest, in characters (cut at a sentence end). Default 400.
    pub max_chars_per_agent: usize,
    /// Overlap of content words from which two sentences count as being about the same thing
    /// (for contradictions). Default 0.5.
    pub min_overlap: f32,
}

impl Default for PulseConfig {
    fn default() -> Self {
        PulseConfig {
            drift_threshold: 0.02,
            deadline: Duration::from_secs(30),
            max_chars_per_agent: 400,
            min_overlap: 0.5,
        }
    }
}

/// When [`AgentOS::collaborate`](crate::AgentOS::collaborate) pulses between rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PulsePolicy {
    /// At every round's barrier.
    EveryRound,
    /// When the group's drift after a round is above the threshold.
    OnDrift,
    /// Never: the agents work alone (the baseline).
    Never,
}

/// How a collaboration runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollaborateConfig {
    /// Rounds of parallel work (at least 1). Default 2.
    pub rounds: u32,
    pub policy: PulsePolicy,
    pub pulse: PulseConfig,
    /// The prompt of rounds after the first; `{task}` is replaced by the task.
    pub refine_prompt: String,
    /// The agent that writes the final answer from every contribution; without one, the final
    /// contribution nearest the group's centroid (the medoid) is the answer.
    pub synthesiser: Option<String>,
}

impl Default for CollaborateConfig {
    fn default() -> Self {
        CollaborateConfig {
            rounds: 2,
            policy: PulsePolicy::EveryRound,
            pulse: PulseConfig::default(),
            refine_prompt: "Using what your team has shared with you, give your improved answer to: {task}".into(),
            synthesiser: None,
        }
    }
}

/// What a collaboration produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Collaboration {
    pub answer: String,
    /// The synthesiser, or the agent whose contribution was chosen as the medoid.
    pub answered_by: String,
    /// Every round's replies, in round then agent order.
    pub contributions: Vec<Contribution>,
    /// Agents whose task failed in a round: `(round, agent, error)`.
    pub failures: Vec<(u32, String, String)>,
    pub pulses: Vec<PulseRecord>,
    /// The group's drift after each round.
    pub drift: Vec<DriftSample>,
    pub metrics: SyncMetrics,
    pub elapsed_ms: u64,
    /// Of `elapsed_ms`, the time spent in pulses.
    pub pulse_ms: u64,
}

/// What a publication reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    pub topic: String,
    /// The publisher's sequence number of this publication (from 1, never repeated).
    pub seq: u64,
    /// Subscribers it was delivered to (written to their durable inboxes), with the task ids.
    pub delivered: Vec<(String, TaskId)>,
    /// Subscribers that could not take it (not running, stopped): `(agent, reason)`.
    pub missed: Vec<(String, String)>,
}

/// Pulses run on a timer until this is stopped or dropped (see
/// [`AgentOS::sync_every`](crate::AgentOS::sync_every)).
pub struct SyncTimer {
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl SyncTimer {
    pub fn stop(self) {}
}

impl Drop for SyncTimer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn sync_call<T: Send + 'static>(
    system: &System,
    what: &str,
    msg: impl FnOnce(ractor::RpcReplyPort<T>) -> SyncMsg,
) -> Result<T> {
    let actor = system.sync.get().ok_or_else(|| system.down_error())?;
    rpc::call(&actor, what, system.call_timeout, msg, || system.down_error()).await
}

/// The kernel's embeddings of `texts`. A text embedded lately (a reply measured after its
/// round, then again in the pulse before and after the merge) is taken from the system's cache.
async fn embed(system: &System, texts: Vec<String>) -> Result<Vec<Vec<f32>>> {
    let model = system.memory.model.clone().ok_or(RuntimeError::NoKernel)?;
    let mut out: Vec<Option<Vec<f32>>> = texts.iter().map(|t| system.cached_embedding(t)).collect();
    let missing: Vec<String> = texts
        .iter()
        .zip(&out)
        .filter(|(_, v)| v.is_none())
        .map(|(t, _)| t.clone())
        .collect();
    if !missing.is_empty() {
        let vectors = model.embed(missing.clone()).await?;
        if vectors.len() != missing.len() {
            return Err(RuntimeError::Messaging(format!(
                "the kernel returned {} embeddings for {} texts",
                vectors.len(),
                missing.len()
            )));
        }
        let mut fresh = missing.into_iter().zip(vectors);
        for slot in out.iter_mut().filter(|v| v.is_none()) {
            if let Some((text, vector)) = fresh.next() {
                system.cache_embedding(&text, vector.clone());
                *slot = Some(vector);
            }
        }
    }
    Ok(out.into_iter().map(Option::unwrap_or_default).collect())
}

/// One participant's state: the vector of the digest it holds (none before its first pulse)
/// and its latest reply (empty before its first turn).
struct State {
    agent: String,
    digest: Option<Vec<f32>>,
    reply: String,
}

/// `v / ‖v‖`, or `None` for a zero vector.
fn unit(v: &[f32]) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    (norm > 0.0 && norm.is_finite()).then(|| v.iter().map(|x| x / norm).collect())
}

/// The unit embeddings of `texts` (a zero vector gives `None`).
async fn unit_embeddings(system: &System, texts: &[String]) -> Result<Vec<Option<Vec<f32>>>> {
    let vectors = embed(system, texts.to_vec()).await?;
    Ok(vectors.iter().map(|v| unit(v)).collect())
}

/// The drift of `states` from the kernel's vectors. A state's vector is `d + û(reply)`: the
/// digest's vector `d` (see [`digest_vector`]) plus the unit embedding of its latest reply (the
/// one that exists, when only one does), so the shared picture and its own work weigh the
/// same. States with neither are left out.
async fn drift_of(system: &System, states: &[State]) -> Result<GroupDrift> {
    let replies: Vec<String> = states
        .iter()
        .map(|s| s.reply.clone())
        .filter(|r| !r.trim().is_empty())
        .collect();
    let vectors = unit_embeddings(system, &replies).await?;
    let mut points = Vec::new();
    for s in states {
        let reply = replies
            .iter()
            .position(|r| *r == s.reply)
            .and_then(|i| vectors[i].clone());
        let v = match (&s.digest, reply) {
            (Some(d), Some(r)) => d.iter().zip(&r).map(|(a, b)| a + b).collect(),
            (Some(d), None) => d.clone(),
            (None, Some(r)) => r,
            (None, None) => continue,
        };
        points.push((s.agent.clone(), v));
    }
    Ok(agentos_sync::drift(&points)?)
}

/// A digest's vector: the normalised mean of the unit embeddings of what it merged (each text
/// embedded once; a reply measured after its round comes from the cache), rather than the
/// embedding of the digest's own text, which would cost a forward pass over all of it.
async fn digest_vector(system: &System, contributions: &[Contribution]) -> Result<Vec<f32>> {
    let texts: Vec<String> = contributions
        .iter()
        .map(|c| c.text.clone())
        .filter(|t| !t.trim().is_empty())
        .collect();
    let vectors = unit_embeddings(system, &texts).await?;
    let mut sum: Vec<f32> = Vec::new();
    for v in vectors.into_iter().flatten() {
        if sum.is_empty() {
            sum = vec![0.0; v.len()];
        }
        if v.len() == sum.len() {
            sum.iter_mut().zip(&v).for_each(|(a, b)| *a += b);
        }
    }
    Ok(unit(&sum).unwrap_or_default())
}

/// The digest vector each of `agents` holds (see [`SyncMsg::HeldDigests`]).
async fn held_digests(system: &System, agents: &[&AgentHandle]) -> Result<BTreeMap<String, Vec<f32>>> {
    let agents = agents.iter().map(|a| a.name().to_string()).collect();
    let held = |reply| SyncMsg::HeldDigests { agents, reply };
    sync_call(system, "the sync actor (held digests)", held).await
}

async fn latest_reply(agent: &AgentHandle) -> Result<String> {
    let turns = agent.info().turns;
    if turns == 0 {
        return Ok(String::new());
    }
    Ok(agent
        .history(turns, turns + 1)
        .await?
        .pop()
        .map(|t| t.reply)
        .unwrap_or_default())
}

/// Measures the group's drift now and records the sample.
pub(crate) async fn measure_drift(system: &System, agents: &[AgentHandle]) -> Result<DriftSample> {
    let mut held = held_digests(system, &agents.iter().collect::<Vec<_>>()).await?;
    let mut states = Vec::with_capacity(agents.len());
    for agent in agents {
        let reply = latest_reply(agent).await?;
        states.push(State {
            agent: agent.name().to_string(),
            digest: held.remove(agent.name()),
            reply,
        });
    }
    let sample = DriftSample {
        at_ms: now_ms(),
        drift: drift_of(system, &states).await?,
    };
    if let Some(actor) = system.sync.get() {
        let _ = actor.cast(SyncMsg::RecordDrift(sample.clone()));
    }
    Ok(sample)
}

/// Runs one pulse over `agents` (see the [`sync`](crate::sync) docs).
pub(crate) async fn pulse(
    system: &Arc<System>,
    agents: &[AgentHandle],
    trigger: PulseTrigger,
    config: &PulseConfig,
) -> Result<PulseRecord> {
    let model = system.memory.model.clone().ok_or(RuntimeError::NoKernel)?;
    let triggered_ms = now_ms();
    let started = Instant::now();

    // 1. Perception alignment: every participant at a turn boundary, within the deadline.
    let waits = agents.iter().map(|a| {
        let record = a.record().clone();
        async move { tokio::time::timeout(config.deadline, record.idle()).await.is_ok() }
    });
    let ready = futures::future::join_all(waits).await;
    let wait_ms = started.elapsed().as_millis() as u64;
    let mut participants = Vec::new();
    let mut late = Vec::new();
    for (agent, at_boundary) in agents.iter().zip(ready) {
        match at_boundary {
            true => participants.push(agent),
            false => late.push(agent),
        }
    }

    // 2. Merge what each produced since the last pulse that merged it.
    let start = sync_call(system, "the sync actor (pulse)", SyncMsg::BeginPulse).await?;
    let (id, marks) = (start.id, start.marks);
    let mut merged = BTreeMap::new();
    let mut held = held_digests(system, &participants).await?;
    let mut contributions = Vec::new();
    let mut latest = HashMap::new();
    let mut new_marks = BTreeMap::new();
    for agent in &participants {
        let turns = agent.info().turns;
        let from = marks.get(agent.name()).copied().unwrap_or(0) + 1;
        let history = if turns >= from {
            agent.history(from, turns + 1).await?
        } else {
            Vec::new()
        };
        // What it was told, then what it said.
        if let Some(heard) = start.perceived.get(agent.name()) {
            contributions.extend(heard.iter().cloned());
            merged.insert(agent.name().to_string(), heard.len());
        }
        for turn in &history {
            contributions.push(Contribution {
                agent: agent.name().to_string(),
                round: turn.number as u32,
                text: turn.reply.clone(),
                from: None,
            });
        }
        let reply = match history.last() {
            Some(turn) => turn.reply.clone(),
            None => latest_reply(agent).await?,
        };
        latest.insert(agent.name().to_string(), reply);
        new_marks.insert(agent.name().to_string(), turns);
    }
    let conflicts = contradictions(&contributions, config.min_overlap);
    let digest_text = digest(id, &contributions, &conflicts, config.max_chars_per_agent);
    let public = agentos_sync::blackboard::Area::Public;
    for c in &contributions {
        let (area, key, author) = (
            public.clone(),
            format!("pulse/{id}/{}/{}", c.agent, c.round),
            c.agent.clone(),
        );
        let value = serde_json::Value::String(c.text.clone());
        sync_call(system, "the sync actor (blackboard)", |reply| SyncMsg::Put {
            area,
            key,
            value,
            author,
            reply,
        })
        .await??;
    }
    let (area, key, value) = (
        public.clone(),
        format!("pulse/{id}/digest"),
        serde_json::Value::String(digest_text.clone()),
    );
    sync_call(system, "the sync actor (blackboard)", |reply| SyncMsg::Put {
        area,
        key,
        value,
        author: "sync".into(),
        reply,
    })
    .await??;

    let before: Vec<State> = participants
        .iter()
        .map(|a| State {
            agent: a.name().to_string(),
            digest: held.remove(a.name()),
            reply: latest[a.name()].clone(),
        })
        .collect();
    let drift_before = drift_of(system, &before).await?;
    let merged_vector = digest_vector(system, &contributions).await?;

    // 3. Injection: a pinned L1 page, or a delivered message.
    let digest_tokens = model.count_tokens(digest_text.clone()).await? as u64;
    let mut tokens_injected = 0;
    for agent in &participants {
        match system.memory.l1(agent.name()) {
            Some(l1) => {
                let replaces = system.pins().get(agent.name()).copied();
                let text = digest_text.clone();
                let gone = || RuntimeError::Messaging("the agent's memory is restarting".into());
                let pin = |reply| L1Msg::Pin { text, replaces, reply };
                let page = rpc::call(&l1, "the agent's memory (pin)", system.memory_timeout, pin, gone).await??;
                system.pins().insert(agent.name().to_string(), page);
            }
            None => {
                agent.deliver("sync", digest_text.clone()).await?;
            }
        }
        tokens_injected += digest_tokens;
    }
    let merged_ms = now_ms();

    // 4. Drift of the states that now hold the digest.
    let after: Vec<State> = participants
        .iter()
        .map(|a| State {
            agent: a.name().to_string(),
            digest: Some(merged_vector.clone()).filter(|v| !v.is_empty()),
            reply: latest[a.name()].clone(),
        })
        .collect();
    let drift_after = drift_of(system, &after).await?;

    let record = PulseRecord {
        id,
        trigger,
        participants: participants.iter().map(|a| a.name().to_string()).collect(),
        late: late.iter().map(|a| a.name().to_string()).collect(),
        triggered_ms,
        wait_ms,
        merged_ms,
        drift_before,
        drift_after,
        threshold: config.drift_threshold,
        tokens_injected,
        contributions: contributions.len(),
        conflicts,
        digest: digest_text,
        digest_vector: merged_vector,
    };
    let saved = record.clone();
    sync_call(system, "the sync actor (record the pulse)", |reply| {
        SyncMsg::RecordPulse {
            record: saved,
            marks: new_marks,
            merged,
            reply,
        }
    })
    .await??;
    tracing::debug!(
        pulse = id,
        participants = record.participants.len(),
        drift_before = record.drift_before.max,
        drift_after = record.drift_after.max,
        "sync pulse"
    );
    Ok(record)
}

/// Rounds of parallel work with pulses between them, then a synthesis (see
/// [`AgentOS::collaborate`](crate::AgentOS::collaborate)).
pub(crate) async fn collaborate(
    system: &Arc<System>,
    task: &str,
    agents: &[AgentHandle],
    config: &CollaborateConfig,
    synthesiser: Option<AgentHandle>,
) -> Result<Collaboration> {
    if agents.is_empty() {
        return Err(RuntimeError::TaskFailed {
            agent: "collaborate".into(),
            reason: "no agents to collaborate".into(),
        });
    }
    let started = Instant::now();
    let rounds = config.rounds.max(1);
    let mut contributions: Vec<Contribution> = Vec::new();
    let mut failures = Vec::new();
    let mut pulses: Vec<PulseRecord> = Vec::new();
    let mut samples = Vec::new();
    let mut utilisations = Vec::new();
    let mut pulse_ms = 0;
    for round in 1..=rounds {
        let prompt = match round {
            1 => task.to_string(),
            _ => config.refine_prompt.replace("{task}", task),
        };
        // Every agent at once: their requests are batched together in the kernel.
        let asks = agents.iter().map(|a| a.ask(prompt.clone()));
        let replies = futures::future::join_all(asks).await;
        for (agent, reply) in agents.iter().zip(replies) {
            match reply {
                Ok(r) => contributions.push(Contribution {
                    agent: agent.name().to_string(),
                    round,
                    text: r.text,
                    from: None,
                }),
                Err(e) => failures.push((round, agent.name().to_string(), e.to_string())),
            }
        }
        if !contributions.iter().any(|c| c.round == round) {
            return Err(RuntimeError::TaskFailed {
                agent: "collaborate".into(),
                reason: format!("every agent failed round {round}: {failures:?}"),
            });
        }
        // η of the previous round's pulse: what each participant carried into this round.
        if let Some(p) = pulses.last().filter(|_| round > 1) {
            for agent in &p.participants {
                let of = |r: u32, a: &str| contributions.iter().find(|c| c.round == r && c.agent == a);
                let (Some(own), Some(next)) = (of(round - 1, agent), of(round, agent)) else {
                    continue;
                };
                let others: Vec<&str> = p
                    .participants
                    .iter()
                    .filter(|o| *o != agent)
                    .filter_map(|o| of(round - 1, o).map(|c| c.text.as_str()))
                    .collect();
                if let Some(u) = utilisation(&others, &own.text, &next.text) {
                    utilisations.push(u);
                }
            }
        }
        let sample = measure_drift(system, agents).await?;
        let drifted = sample.drift.max > config.pulse.drift_threshold;
        samples.push(sample.clone());
        if round == rounds {
            break;
        }
        let trigger = match config.policy {
            PulsePolicy::EveryRound => Some(PulseTrigger::Barrier { round }),
            PulsePolicy::OnDrift if drifted => Some(PulseTrigger::Drift {
                max: sample.drift.max,
                threshold: config.pulse.drift_threshold,
            }),
            PulsePolicy::OnDrift | PulsePolicy::Never => None,
        };
        if let Some(trigger) = trigger {
            let t = Instant::now();
            pulses.push(pulse(system, agents, trigger, &config.pulse).await?);
            pulse_ms += t.elapsed().as_millis() as u64;
        }
    }

    let last: Vec<&Contribution> = contributions.iter().filter(|c| c.round == rounds).collect();
    let (answer, answered_by) = match synthesiser {
        Some(writer) => {
            let mut prompt = format!("Task: {task}\n\nYour team's answers:\n");
            for c in &last {
                prompt.push_str(&format!("- {}: {}\n", c.agent, c.text.trim()));
            }
            prompt.push_str("\nWrite the final answer to the task from them.");
            (writer.ask(prompt).await?.text, writer.name().to_string())
        }
        None => {
            // The medoid: the final contribution nearest the centroid of all of them.
            let states: Vec<State> = last
                .iter()
                .map(|c| State {
                    agent: c.agent.clone(),
                    digest: None,
                    reply: c.text.clone(),
                })
                .collect();
            let drift = drift_of(system, &states).await?;
            let best = drift
                .per_agent
                .iter()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(a, _)| a.clone())
                .unwrap_or_else(|| last[0].agent.clone());
            let text = last
                .iter()
                .find(|c| c.agent == best)
                .map(|c| c.text.clone())
                .unwrap_or_default();
            (text, best)
        }
    };
    let metrics = SyncMetrics::compute(&pulses, &samples, &utilisations);
    Ok(Collaboration {
        answer,
        answered_by,
        contributions,
        failures,
        pulses,
        drift: samples,
        metrics,
        elapsed_ms: started.elapsed().as_millis() as u64,
        pulse_ms,
    })
}
