//! Sync bench: does a sync pulse share what each agent alone knows?
//!
//! For each team size N, N agents are each told one private fact (a code word, as a message),
//! then collaborate on a task that needs every fact: two rounds, with a pulse at the barrier
//! between them or without one (the baseline), in the same run on the same model. Reported per
//! N, each as `{"with_pulses": …, "without_pulses": …}`:
//!
//! - `facts_shared`: the fraction of agents whose final context (the prompt of their last turn)
//!   holds every fact; `facts_held`: the mean fraction of the facts in it;
//! - `answers_complete`: the fraction whose final answer names every fact;
//! - `pulse_overhead_ms` and `pulse_overhead_fraction` (of the collaboration's time);
//! - `tokens_injected`, `drift_before`, `drift_after` (the group's largest drift);
//! - `gamma`, `l_kappa_ms`, `eta` (see `agentos_sync::metrics`).
//!
//! `collapse_point` is the smallest N at which the pulse costs more than it gains: where its
//! cost, the share of the collaboration's time spent in pulses, is at least its gain, the share
//! of the facts that reached the agents' contexts because of it (`facts_held` with pulses minus
//! without); `null` when it gains more than it costs at every N measured.
//!
//! ```text
//! cargo run --release --example sync_bench -- [--agents 2,4,8,16] [--seed 1] [--json]
//! ```

use std::collections::BTreeMap;
use std::sync::Mutex;

use agentos_examples::{ModelArgs, init_logging};
use agentos_runtime::prelude::*;
use serde_json::{Value, json};

/// The last prompt each member was given, by agent name.
static PROMPTS: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

/// You are a member of a team. Answer briefly.
#[agent(name = "Member", max_tokens = 200, repetition_penalty = 1.1, custom_hooks)]
#[derive(Default, Serialize, Deserialize)]
struct Member {
    name: String,
}

impl AgentHooks for Member {
    fn prepare(&mut self, prompt: &mut TurnPrompt) {
        let text: Vec<String> = prompt.messages.iter().map(|m| m.content.clone()).collect();
        PROMPTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.name.clone(), text.join("\n"));
    }
}

/// Sends the facts.
#[agent(name = "Lead", max_tokens = 1)]
#[derive(Default, Serialize, Deserialize)]
struct Lead;

/// Code words the facts are drawn from (`--seed` picks and orders them).
const WORDS: &[&str] = &[
    "FALCON", "MAPLE", "QUARTZ", "HARBOR", "VIOLET", "COMET", "TUNDRA", "CANYON", "EMBER", "GLACIER", "ORCHID",
    "PEBBLE", "RAVEN", "SAFFRON", "TIMBER", "WILLOW", "ANCHOR", "BRONZE", "CEDAR", "DELTA", "ECLIPSE", "FJORD",
    "GARNET", "HAZEL", "IVORY", "JASPER", "KESTREL", "LAGOON", "MERIDIAN", "NECTAR", "OBSIDIAN", "PRAIRIE",
];

#[derive(clap::Parser)]
struct Cli {
    /// Team sizes, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "2,4,8,16")]
    agents: Vec<usize>,
    /// Picks and orders the code words
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Each contribution's share of a digest, in characters
    #[arg(long, default_value_t = 400)]
    max_chars: usize,
    /// Print one JSON object (default: pretty-printed)
    #[arg(long)]
    json: bool,
    /// Print each run's digests, final prompts and answers to stderr
    #[arg(long)]
    verbose: bool,
    #[command(flatten)]
    model: ModelArgs,
}

/// `n` code words, chosen and ordered by `seed` (a small linear congruential shuffle).
fn words(n: usize, seed: u64) -> Vec<String> {
    let mut pool: Vec<&str> = WORDS.to_vec();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    for i in (1..pool.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        pool.swap(i, (state >> 33) as usize % (i + 1));
    }
    pool.into_iter().cycle().take(n).map(String::from).collect()
}

struct Run {
    facts_shared: f64,
    facts_held: f64,
    answers_complete: f64,
    pulse_ms: u64,
    elapsed_ms: u64,
    tokens_injected: u64,
    drift_before: Option<f32>,
    drift_after: Option<f32>,
    gamma: Option<f64>,
    l_kappa_ms: Option<f64>,
    eta: Option<f64>,
}

async fn run(os: &AgentOS, n: usize, with_pulses: bool, cli: &Cli) -> Result<Run, Box<dyn std::error::Error>> {
    let tag = if with_pulses { "with" } else { "without" };
    let lead = os.spawn_named(format!("lead-{n}-{tag}"), Lead).await?;
    let words = words(n, cli.seed);
    let mut agents = Vec::new();
    for (i, word) in words.iter().enumerate() {
        let name = format!("agent{}-{n}-{tag}", i + 1);
        let agent = os.spawn_named(name.clone(), Member { name }).await?;
        lead.send(
            &agent,
            format!("Your private fact: the code word of agent {} is {word}.", i + 1),
        )
        .await?;
        agents.push(agent);
    }
    let config = CollaborateConfig {
        policy: if with_pulses {
            PulsePolicy::EveryRound
        } else {
            PulsePolicy::Never
        },
        pulse: PulseConfig {
            max_chars_per_agent: cli.max_chars,
            ..PulseConfig::default()
        },
        ..CollaborateConfig::default()
    };
    let task =
        "The team needs the code word of every agent. Say the code word you know, then list every code word you know.";
    let result = os.collaborate(task, &agents, &config).await?;

    let prompts = PROMPTS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // Whole words only ("EMBER" is not in "member").
    let has = |text: &str, word: &str| {
        text.split(|c: char| !c.is_alphanumeric())
            .any(|w| w.eq_ignore_ascii_case(word))
    };
    let (mut shared, mut held, mut complete) = (0usize, 0f64, 0usize);
    for agent in &agents {
        let prompt = prompts.get(agent.name()).cloned().unwrap_or_default();
        let in_prompt = words.iter().filter(|w| has(&prompt, w)).count();
        shared += usize::from(in_prompt == n);
        held += in_prompt as f64 / n as f64;
        let answer = result
            .contributions
            .iter()
            .rev()
            .find(|c| c.agent == agent.name())
            .map(|c| c.text.clone())
            .unwrap_or_default();
        complete += usize::from(words.iter().all(|w| has(&answer, w)));
    }
    if cli.verbose {
        for p in &result.pulses {
            eprintln!("--- n={n} {tag}: pulse {} digest\n{}", p.id, p.digest);
        }
        for agent in &agents {
            eprintln!(
                "--- n={n} {tag}: {} final prompt\n{}",
                agent.name(),
                prompts.get(agent.name()).cloned().unwrap_or_default()
            );
        }
        for c in &result.contributions {
            eprintln!("--- n={n} {tag}: {} round {}: {}", c.agent, c.round, c.text);
        }
    }
    for agent in agents.iter().chain([&lead]) {
        agent.stop().await?;
    }
    let pulse = result.pulses.first();
    Ok(Run {
        facts_shared: shared as f64 / n as f64,
        facts_held: held / n as f64,
        answers_complete: complete as f64 / n as f64,
        pulse_ms: result.pulse_ms,
        elapsed_ms: result.elapsed_ms,
        tokens_injected: result.pulses.iter().map(|p| p.tokens_injected).sum(),
        drift_before: pulse.map(|p| p.drift_before.max),
        drift_after: pulse.map(|p| p.drift_after.max),
        gamma: result.metrics.gamma,
        l_kappa_ms: result.metrics.l_kappa_ms,
        eta: result.metrics.eta,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    init_logging();
    let cli = <Cli as clap::Parser>::parse();
    let os = AgentOS::builder().kernel(cli.model.kernel_args()).start().await?;
    let mut figures: BTreeMap<&str, serde_json::Map<String, Value>> = BTreeMap::new();
    let mut collapse_point = None;
    for &n in &cli.agents {
        let with = run(&os, n, true, &cli).await?;
        let without = run(&os, n, false, &cli).await?;
        let key = n.to_string();
        let pair = |w: Value, wo: Value| json!({"with_pulses": w, "without_pulses": wo});
        let mut put = |name: &'static str, value: Value| {
            figures.entry(name).or_default().insert(key.clone(), value);
        };
        put(
            "facts_shared",
            pair(json!(with.facts_shared), json!(without.facts_shared)),
        );
        put("facts_held", pair(json!(with.facts_held), json!(without.facts_held)));
        put(
            "answers_complete",
            pair(json!(with.answers_complete), json!(without.answers_complete)),
        );
        put("pulse_overhead_ms", pair(json!(with.pulse_ms), json!(without.pulse_ms)));
        let fraction = |r: &Run| r.pulse_ms as f64 / r.elapsed_ms.max(1) as f64;
        put(
            "pulse_overhead_fraction",
            pair(json!(fraction(&with)), json!(fraction(&without))),
        );
        put("elapsed_ms", pair(json!(with.elapsed_ms), json!(without.elapsed_ms)));
        put(
            "tokens_injected",
            pair(json!(with.tokens_injected), json!(without.tokens_injected)),
        );
        put(
            "drift_before",
            pair(json!(with.drift_before), json!(without.drift_before)),
        );
        put("drift_after", pair(json!(with.drift_after), json!(without.drift_after)));
        put("gamma", pair(json!(with.gamma), json!(without.gamma)));
        put("l_kappa_ms", pair(json!(with.l_kappa_ms), json!(without.l_kappa_ms)));
        put("eta", pair(json!(with.eta), json!(without.eta)));
        if collapse_point.is_none() && fraction(&with) >= with.facts_held - without.facts_held {
            collapse_point = Some(n);
        }
    }
    os.shutdown().await?;
    let mut result = serde_json::Map::new();
    for (name, per_n) in figures {
        result.insert(name.to_string(), Value::Object(per_n));
    }
    result.insert("collapse_point".into(), json!(collapse_point));
    result.insert("agents".into(), json!(cli.agents));
    result.insert("seed".into(), json!(cli.seed));
    let result = Value::Object(result);
    if cli.json {
        println!("{result}");
    } else {
        println!("{}", serde_json::to_string_pretty(&result)?);
    }
    Ok(())
}
