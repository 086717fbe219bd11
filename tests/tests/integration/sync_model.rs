//! Sync pulses on the real default model: a pulse waits for a generation in flight and never
//! cuts it, drift comes from the kernel's vectors, the digest is in every participant's next
//! prompt (a pinned L1 page, or a message), and a collaboration runs its rounds with pulses.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use agentos_kernel::FinishReason;
use agentos_runtime::prelude::*;
use agentos_runtime::{PulseRecord, PulseTrigger};

use crate::support::model_os;

/// The last prompt each probe was given (its messages' text joined), by probe key.
static PROMPTS: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
static RUN: AtomicU64 = AtomicU64::new(1);

fn record_prompt(key: &str, prompt: &TurnPrompt) {
    let text: Vec<String> = prompt.messages.iter().map(|m| m.content.clone()).collect();
    PROMPTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key.to_string(), text.join("\n"));
}

fn last_prompt(key: &str) -> String {
    PROMPTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(key)
        .cloned()
        .unwrap_or_default()
}

/// You are a helpful assistant. Answer in one sentence.
#[agent(name = "Probe", max_tokens = 24, custom_hooks)]
#[derive(Default, Serialize, Deserialize)]
struct Probe {
    key: String,
}

impl AgentHooks for Probe {
    fn prepare(&mut self, prompt: &mut TurnPrompt) {
        record_prompt(&self.key, prompt);
    }
}

/// You are a helpful assistant. Answer in one sentence.
#[agent(name = "MemoryProbe", max_tokens = 24, memory, custom_hooks)]
#[derive(Default, Serialize, Deserialize)]
struct MemoryProbe {
    key: String,
}

impl AgentHooks for MemoryProbe {
    fn prepare(&mut self, prompt: &mut TurnPrompt) {
        record_prompt(&self.key, prompt);
    }
}

/// You are a helpful assistant.
#[agent(name = "Talker", max_tokens = 48)]
#[derive(Default, Serialize, Deserialize)]
struct Talker;

fn key(name: &str) -> String {
    format!("{name}-{}", RUN.fetch_add(1, Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulse_waits_for_the_generation_in_flight_and_never_cuts_it() {
    let os = model_os().await;
    let talker = os.spawn(Talker).await.unwrap();
    let other = os.spawn_named("Other", Probe { key: key("other") }).await.unwrap();

    let stream = talker.stream("Describe the water cycle in detail.").await.unwrap();
    // The talker is generating now; the pulse must wait for the turn to end.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let record: PulseRecord = os
        .pulse(&[talker.clone(), other.clone()], &PulseConfig::default())
        .await
        .unwrap();
    let response = stream.response().await.unwrap();
    assert!(
        matches!(response.finish_reason, FinishReason::MaxTokens | FinishReason::Eos),
        "{:?}",
        response.finish_reason
    );
    assert_eq!(response.attempts, 1);
    assert!(record.late.is_empty(), "{record:?}");
    assert_eq!(record.participants, vec!["Talker".to_string(), "Other".to_string()]);
    assert!(record.wait_ms > 0 && record.wait_ms <= started.elapsed().as_millis() as u64);
    // The whole reply was merged: the pulse ran after the turn, not during it.
    assert_eq!(record.contributions, 1);
    let entry = os.blackboard("pulse/1/Talker/1").await.unwrap();
    assert_eq!(entry.len(), 1);
    assert_eq!(entry[0].text(), response.text);
    assert!(record.digest.contains(response.text.split('.').next().unwrap().trim()));
    assert_eq!(record.trigger, PulseTrigger::Manual);

    // With a deadline shorter than the turn, the busy agent is left out, and its turn goes on.
    let stream = talker.stream("Describe the carbon cycle in detail.").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let hurried = PulseConfig {
        deadline: Duration::from_millis(10),
        ..PulseConfig::default()
    };
    let record = os.pulse(&[talker.clone(), other.clone()], &hurried).await.unwrap();
    assert_eq!(record.late, vec!["Talker".to_string()]);
    assert_eq!(record.participants, vec!["Other".to_string()]);
    let response = stream.response().await.unwrap();
    assert!(response.completion_tokens > 0);
    assert_eq!(os.pulses().await.unwrap().len(), 2);
    os.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_measured_on_the_kernels_vectors() {
    let os = model_os().await;
    let a = os.spawn_named("A", Probe { key: key("a") }).await.unwrap();
    let b = os.spawn_named("B", Probe { key: key("b") }).await.unwrap();
    let c = os.spawn_named("C", Probe { key: key("c") }).await.unwrap();
    // Greedy decoding: the same question gives the same reply, so the same state.
    let question = "What is the capital of France?";
    let (ra, rb) = tokio::join!(a.ask(question), b.ask(question));
    assert_eq!(ra.unwrap().text, rb.unwrap().text);
    let same = os.drift(&[a.clone(), b.clone()]).await.unwrap();
    assert!(same.drift.max < 1e-4, "identical states: {:?}", same.drift);

    c.ask("Write a short poem about a sailing ship in a storm.")
        .await
        .unwrap();
    let apart = os.drift(&[a.clone(), b.clone(), c.clone()]).await.unwrap();
    let (da, dc) = (apart.drift.of("A").unwrap(), apart.drift.of("C").unwrap());
    assert!(
        dc > da && dc > 1e-3,
        "the agent on another subject drifts most: {:?}",
        apart.drift
    );
    assert_eq!(apart.drift.max, dc);
    assert_eq!(os.drift_history().await.unwrap().len(), 2);
    os.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_digest_is_in_every_participants_next_prompt() {
    let os = model_os().await;
    let (km, kp) = (key("memory"), key("plain"));
    let m = os.spawn_named("M", MemoryProbe { key: km.clone() }).await.unwrap();
    let p = os.spawn_named("P", Probe { key: kp.clone() }).await.unwrap();
    let (rm, rp) = tokio::join!(
        m.ask("Name one planet of the solar system."),
        p.ask("Name one ocean of the Earth.")
    );
    let (rm, rp) = (rm.unwrap(), rp.unwrap());
    let record = os
        .pulse(&[m.clone(), p.clone()], &PulseConfig::default())
        .await
        .unwrap();
    assert_eq!(record.contributions, 2);
    assert!(
        record.digest.contains("- M: ") && record.digest.contains("- P: "),
        "{}",
        record.digest
    );
    assert!(record.tokens_injected > 0);

    // Next turns: the memory agent has the digest as a pinned page of its window; the other
    // has it as a message from `sync`.
    m.ask("What did your team find?").await.unwrap();
    p.ask("What did your team find?").await.unwrap();
    let (prompt_m, prompt_p) = (last_prompt(&km), last_prompt(&kp));
    assert!(prompt_m.contains(&record.digest), "memory agent's prompt: {prompt_m}");
    assert!(
        prompt_p.contains(&format!("- sync: {}", record.digest)),
        "plain agent's prompt: {prompt_p}"
    );
    let window = m.last_context().await.unwrap().unwrap();
    assert!(window.pages.iter().any(|page| page.text == record.digest));
    // Each saw the other's contribution through the digest.
    let first_sentence = |t: &str| t.split('.').next().unwrap().trim().to_string();
    assert!(prompt_m.contains(&first_sentence(&rp.text)), "{prompt_m}");
    assert!(prompt_p.contains(&first_sentence(&rm.text)), "{prompt_p}");
    os.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collaboration_runs_rounds_with_a_pulse_between_them() {
    let os = model_os().await;
    let a = os.spawn_named("A", Probe { key: key("ca") }).await.unwrap();
    let b = os.spawn_named("B", Probe { key: key("cb") }).await.unwrap();
    let config = CollaborateConfig::default();
    let result = os
        .collaborate("Name a fruit that is yellow.", &[a.clone(), b.clone()], &config)
        .await
        .unwrap();
    assert_eq!(result.contributions.len(), 4, "{:?}", result.contributions);
    assert_eq!(result.pulses.len(), 1);
    assert_eq!(result.pulses[0].trigger, PulseTrigger::Barrier { round: 1 });
    assert_eq!(result.drift.len(), 2);
    assert_eq!(result.metrics.pulses, 1);
    assert!(result.metrics.gamma.is_some());
    assert!(["A", "B"].contains(&result.answered_by.as_str()));
    assert!(
        result
            .contributions
            .iter()
            .any(|c| c.round == 2 && c.text == result.answer)
    );
    assert!(result.pulse_ms > 0 && result.pulse_ms < result.elapsed_ms);

    let alone = CollaborateConfig {
        policy: PulsePolicy::Never,
        ..CollaborateConfig::default()
    };
    let result = os
        .collaborate("Name a fruit that is red.", &[a, b], &alone)
        .await
        .unwrap();
    assert!(result.pulses.is_empty() && result.metrics.gamma.is_none());
    os.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulse_timer_fires_on_drift_only_when_the_group_has_drifted() {
    let os = model_os().await;
    let a = os.spawn_named("A", Probe { key: key("ta") }).await.unwrap();
    let b = os.spawn_named("B", Probe { key: key("tb") }).await.unwrap();
    let (ra, rb) = tokio::join!(
        a.ask("What is the capital of France?"),
        b.ask("Write a short poem about a sailing ship in a storm.")
    );
    ra.unwrap();
    rb.unwrap();
    let agents = vec![a.clone(), b.clone()];

    // A threshold no drift reaches: the timer measures, and never pulses.
    let calm = PulseConfig {
        drift_threshold: 2.5,
        ..PulseConfig::default()
    };
    let timer = os.sync_every(agents.clone(), Duration::from_secs(1), true, calm);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    timer.stop();
    assert!(os.pulses().await.unwrap().is_empty());
    assert!(
        !os.drift_history().await.unwrap().is_empty(),
        "the timer measured drift"
    );

    // A threshold below the group's drift: the next tick pulses, triggered by drift.
    let eager = PulseConfig {
        drift_threshold: 0.0,
        ..PulseConfig::default()
    };
    let timer = os.sync_every(agents, Duration::from_secs(1), true, eager);
    let mut pulses = Vec::new();
    for _ in 0..100 {
        pulses = os.pulses().await.unwrap();
        if !pulses.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(timer);
    let first = pulses.first().expect("a pulse within 10 s");
    assert!(
        matches!(first.trigger, PulseTrigger::Drift { max, threshold } if max > threshold && threshold == 0.0),
        "{:?}",
        first.trigger
    );
    assert_eq!(first.contributions, 2);
    os.shutdown().await.unwrap();
}
