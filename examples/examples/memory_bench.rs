//! Measures the S-MMU on a long session with the real model, against its baselines in the same run.
//!
//! ```text
//! cargo run --release --example memory_bench -- --json [--turns 100] [--kv-mib 384]
//!     [--model PATH] [--dtype f32|f16] [--device NAME]
//! ```
//! One agent with memory (`#[agent(memory)]`, L1 budget 512 tokens) talks for `turns` turns:
//! turns 1–10 plant 20 facts (two per turn), the middle turns are small talk on other topics, and
//! the last 11 turns ask about the 20 facts. Prints one JSON object:
//! - `turn100_over_turn5`: median latency (ask → whole reply) of the last 5 turns over that of
//!   turns 3–7. Every turn's latency is in `turn_seconds`.
//! - `speedup_vs_full_history`: the last turn re-sent statelessly with the whole conversation as
//!   its prompt (truncated from the oldest turn to the model's context length), over the S-MMU's
//!   last-turn latency. It shares only the system prompt's first blocks with what is cached.
//! - `speedup_vs_full_history_kv_reuse`: the same full-history turn when the previous turn's KV is
//!   still cached (the previous turn is sent first, then the last one reuses its prefix).
//! - `recall_attention_slicing`: of the 20 questions, the fraction whose fact (its answer string)
//!   was in a page of the L1 window the model saw when answering.
//! - `recall_fixed_chunks`: the same session replayed (same texts, same queries, same reserved
//!   tokens) through an S-MMU that cuts fixed chunks of the attention run's mean page length.
//! - `l1_tokens_max`: most tokens the L1 window held; `max_prompt_tokens`: largest prompt sent.
//! - `peak_rss_bytes`: the process's peak resident size after the S-MMU session (before the
//!   baselines); `rss_every_10_turns` and `kv_allocated_bytes` show it level off. The kernel's KV
//!   pool (which the prefix cache keeps full of reusable blocks) is capped at `--kv-mib` MiB
//!   (default 384, enough for the 4,500-token full-history baseline); with the kernel's default
//!   of 1 GiB, resident size levels off that much higher.

use std::time::{Duration, Instant};

use agentos_examples::{Args, init_logging, peak_rss_bytes, rss_bytes};
use agentos_kernel::{ChatMessage, GenerateRequest, GenerationEvent, KernelMsg};
use agentos_runtime::prelude::*;
use agentos_runtime::{MemoryConfig, Slicing};

/// You are a friendly personal assistant. Answer briefly, in one sentence. When the user tells
/// you something to remember, confirm it.
#[agent(name = "Companion", max_tokens = 24, memory)]
#[derive(Default, Serialize, Deserialize)]
struct Companion;

/// (fact as the user states it, question, the answer string that must be in memory)
const FACTS: [(&str, &str, &str); 20] = [
    ("My locker code is 4417.", "What is my locker code?", "4417"),
    ("My cat is named Biscuit.", "What is my cat's name?", "Biscuit"),
    (
        "The project deadline is March 14.",
        "When is the project deadline?",
        "March 14",
    ),
    (
        "My sister lives in Valparaiso.",
        "Where does my sister live?",
        "Valparaiso",
    ),
    (
        "The wifi password is tangerine88.",
        "What is the wifi password?",
        "tangerine88",
    ),
    (
        "My favourite painter is Hokusai.",
        "Who is my favourite painter?",
        "Hokusai",
    ),
    (
        "The meeting room is called Orion.",
        "What is the meeting room called?",
        "Orion",
    ),
    ("My bike is a green Bianchi.", "What brand is my bike?", "Bianchi"),
    (
        "The server hostname is kestrel-04.",
        "What is the server hostname?",
        "kestrel-04",
    ),
    ("My dentist is Dr. Okafor.", "Who is my dentist?", "Okafor"),
    (
        "The budget for the trip is 2300 euros.",
        "What is the budget for the trip?",
        "2300",
    ),
    ("My flight number is LX318.", "What is my flight number?", "LX318"),
    (
        "The soup recipe needs saffron.",
        "What spice does the soup recipe need?",
        "saffron",
    ),
    ("My manager is called Ingrid.", "What is my manager called?", "Ingrid"),
    (
        "The orchard has 12 apple trees.",
        "How many apple trees does the orchard have?",
        "12 apple",
    ),
    (
        "My car is parked on level 3 of the garage.",
        "On which level of the garage is my car parked?",
        "level 3",
    ),
    (
        "The library book is due on Friday.",
        "When is the library book due?",
        "Friday",
    ),
    (
        "My daughter's teacher is Mr. Alvarez.",
        "Who is my daughter's teacher?",
        "Alvarez",
    ),
    (
        "The sailing boat is named Marlin.",
        "What is the sailing boat named?",
        "Marlin",
    ),
    ("My blood type is AB negative.", "What is my blood type?", "AB negative"),
];

const TOPICS: [&str; 40] = [
    "volcanoes",
    "the history of tea",
    "how bridges carry weight",
    "penguins",
    "the first printing press",
    "jazz music",
    "desert plants",
    "the moon's phases",
    "origami",
    "honeybees",
    "the Roman roads",
    "glaciers",
    "chess openings",
    "coral reefs",
    "the invention of paper",
    "hot air balloons",
    "owls",
    "the Silk Road",
    "rainbows",
    "lighthouses",
    "bamboo",
    "the Great Wall",
    "octopuses",
    "windmills",
    "the northern lights",
    "pottery",
    "hummingbirds",
    "ancient calendars",
    "sand dunes",
    "the violin",
    "tortoises",
    "maps and cartography",
    "thunderstorms",
    "mushrooms",
    "the telescope",
    "whales",
    "kites",
    "the alphabet",
    "caves",
    "sourdough bread",
];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    init_logging();
    let args = Args::from_env();
    let turns: usize = args.value("turns").map(str::parse).transpose()?.unwrap_or(100);
    if turns < 25 {
        return Err("--turns must be at least 25 (10 planting turns, 11 question turns)".into());
    }
    let script = Script::new(turns);
    let dir = std::env::temp_dir().join(format!("agentos-memory-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    let kv_mib: usize = args.value("kv-mib").map(str::parse).transpose()?.unwrap_or(384);
    let mut kernel_args = args.kernel_args()?;
    kernel_args.config.kv_cache.max_bytes = kv_mib << 20;

    // 1. The S-MMU session.
    let os = AgentOS::builder()
        .kernel(kernel_args.clone())
        .checkpoint_dir(dir.join("attention"))
        .start()
        .await?;
    let agent = os.spawn(Companion).await?;
    let mut turn_seconds = Vec::with_capacity(turns);
    let mut max_prompt_tokens = 0;
    let mut transcript: Vec<(String, String)> = Vec::with_capacity(turns);
    let mut reserved_per_turn = Vec::with_capacity(turns);
    let mut recalled_attention = 0;
    let mut rss_every_10_turns = Vec::new();
    for (i, ask) in script.turns.iter().enumerate() {
        let started = Instant::now();
        let reply = agent.ask(ask.text.clone()).await?;
        turn_seconds.push(started.elapsed().as_secs_f64());
        max_prompt_tokens = max_prompt_tokens.max(reply.prompt_tokens);
        let context = agent.last_context().await?.ok_or("the agent assembled no context")?;
        reserved_per_turn.push(context.reserved_tokens);
        recalled_attention += ask.recalled(&context);
        for missing in ask.missing(&context) {
            eprintln!("turn {}: the fact `{missing}` was not in the window", i + 1);
        }
        transcript.push((ask.text.clone(), reply.text));
        if (i + 1) % 10 == 0 {
            rss_every_10_turns.push(rss_bytes());
        }
        if std::env::var_os("MEMORY_BENCH_PAGES").is_some() {
            for p in &context.pages {
                eprintln!("    [{} tokens] {:?}", p.tokens, p.text);
            }
        }
        eprintln!(
            "turn {:>3}: {:>6.2} s, prompt {:>3} tokens, window {:>3} tokens / {} pages",
            i + 1,
            turn_seconds[i],
            reply.prompt_tokens,
            context.tokens,
            context.pages.len()
        );
    }
    let l1 = agent.memory_stats().await?;
    let l2 = os.memory_stats().await?;
    let peak_rss = peak_rss_bytes();
    let mean_page_tokens = (l1.tokens_written / l1.pages_written.max(1)).max(4) as usize;

    // 2. Baselines on the same kernel: the last turn with the whole conversation as its prompt.
    let kernel = os.kernel().ok_or("no kernel")?;
    let kv_allocated_bytes = ractor::call!(kernel, KernelMsg::Stats)??.kv_allocated_bytes;
    let info = ractor::call!(kernel, KernelMsg::Info)?;
    let context_length = info.config.context_length;
    let system = Companion::spec().system;
    let last = transcript.len() - 1;
    let full_history = |upto: usize| -> Vec<ChatMessage> {
        let mut messages = vec![ChatMessage::system(system.clone())];
        for (user, assistant) in &transcript[..upto] {
            messages.push(ChatMessage::user(user.clone()));
            messages.push(ChatMessage::assistant(assistant.clone()));
        }
        messages.push(ChatMessage::user(transcript[upto].0.clone()));
        messages
    };
    let max_tokens = Companion::spec().max_tokens;
    // Stateless: nothing of this conversation cached (the session's prompts share only the
    // system prompt's first tokens with it).
    let stateless = generate(
        &kernel,
        fit(&kernel, full_history(last), context_length, max_tokens).await?,
        max_tokens,
    )
    .await?;
    // With KV reuse: the previous turn's full-history request, then the last turn reuses it.
    let _warm = generate(
        &kernel,
        fit(&kernel, full_history(last - 1), context_length, max_tokens).await?,
        max_tokens,
    )
    .await?;
    let reused = generate(
        &kernel,
        fit(&kernel, full_history(last), context_length, max_tokens).await?,
        max_tokens,
    )
    .await?;
    os.shutdown().await?;

    // 3. The same session replayed through fixed-size chunks.
    let mut fixed_config = MemoryConfig {
        slicing: Slicing::Fixed(mean_page_tokens),
        ..MemoryConfig::default()
    };
    fixed_config.slice.max_tokens = fixed_config.slice.max_tokens.max(mean_page_tokens);
    let mut runtime = RuntimeConfig {
        kernel: Some(kernel_args),
        checkpoint_dir: Some(dir.join("fixed")),
        ..RuntimeConfig::default()
    };
    runtime.memory = fixed_config;
    let os = AgentOS::start(runtime).await?;
    let replay = os.spawn(Companion).await?;
    let mut recalled_fixed = 0;
    for ((ask, (user, assistant)), reserved) in script.turns.iter().zip(&transcript).zip(&reserved_per_turn) {
        let context = replay.page_in(ask.text.clone(), *reserved).await?;
        recalled_fixed += ask.recalled(&context);
        replay.remember(format!("User: {user}\nAssistant: {assistant}")).await?;
    }
    os.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);

    let median = |xs: &[f64]| {
        let mut v = xs.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let early = median(&turn_seconds[2..7]);
    let late = median(&turn_seconds[turns - 5..]);
    let smmu_last = turn_seconds[last];
    let questions = FACTS.len() as f64;
    let report = serde_json::json!({
        "turns": turns,
        "turn100_over_turn5": round(late / early),
        "speedup_vs_full_history": round(stateless.seconds / smmu_last),
        "speedup_vs_full_history_kv_reuse": round(reused.seconds / smmu_last),
        "recall_attention_slicing": round(recalled_attention as f64 / questions),
        "recall_fixed_chunks": round(recalled_fixed as f64 / questions),
        "l1_tokens_max": l1.tokens_max,
        "peak_rss_bytes": peak_rss,
        "rss_every_10_turns": rss_every_10_turns,
        "kv_allocated_bytes": kv_allocated_bytes,
        "kv_budget_bytes": kv_mib << 20,
        "max_prompt_tokens": max_prompt_tokens,
        "l1_budget_tokens": MemoryConfig::default().l1_budget_tokens,
        "turn_seconds_median_early": round(early),
        "turn_seconds_median_late": round(late),
        "last_turn_seconds": round(smmu_last),
        "full_history_prompt_tokens": stateless.prompt_tokens,
        "full_history_seconds": round(stateless.seconds),
        "full_history_cached_tokens": stateless.cached_tokens,
        "full_history_kv_reuse_seconds": round(reused.seconds),
        "full_history_kv_reuse_cached_tokens": reused.cached_tokens,
        "fixed_chunk_tokens": mean_page_tokens,
        "pages_written": l1.pages_written,
        "page_faults": l1.page_faults,
        "evictions": l1.evictions,
        "context_full_interrupts": l1.context_full_interrupts,
        "pages_stored": l2.pages,
        "duplicate_pages": l2.duplicates,
        "turn_seconds": turn_seconds.iter().map(|s| round(*s)).collect::<Vec<_>>(),
    });
    if args.flag("json") {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// One user turn, and the facts whose answers must be in memory when it is answered.
struct Ask {
    text: String,
    answers: Vec<&'static str>,
}

impl Ask {
    fn recalled(&self, context: &agentos_runtime::ActiveContext) -> usize {
        self.answers.len() - self.missing(context).len()
    }

    fn missing(&self, context: &agentos_runtime::ActiveContext) -> Vec<&'static str> {
        self.answers
            .iter()
            .copied()
            .filter(|answer| !context.pages.iter().any(|p| p.text.contains(answer)))
            .collect()
    }
}

struct Script {
    turns: Vec<Ask>,
}

impl Script {
    fn new(turns: usize) -> Self {
        let mut out = Vec::with_capacity(turns);
        for pair in FACTS.chunks(2) {
            out.push(Ask {
                text: format!("Please remember two things. {} {}", pair[0].0, pair[1].0),
                answers: Vec::new(),
            });
        }
        let questions = 11;
        for i in 0..turns - 10 - questions {
            out.push(Ask {
                text: format!("Tell me one interesting thing about {}.", TOPICS[i % TOPICS.len()]),
                answers: Vec::new(),
            });
        }
        // Questions pair facts differently from how they were planted: i with i + 10.
        for q in 0..questions {
            let mut ids = vec![q];
            if q + 10 < FACTS.len() && q < 9 {
                ids.push(q + 10);
            }
            if q == 9 {
                ids = vec![9];
            }
            if q == 10 {
                ids = vec![19];
            }
            let text = ids.iter().map(|&i| FACTS[i].1).collect::<Vec<_>>().join(" And ");
            out.push(Ask {
                text,
                answers: ids.iter().map(|&i| FACTS[i].2).collect(),
            });
        }
        Script { turns: out }
    }
}

struct Generated {
    seconds: f64,
    prompt_tokens: usize,
    cached_tokens: usize,
}

/// Drops the oldest turns until the prompt and the reply fit the model's context.
async fn fit(
    kernel: &ractor::ActorRef<KernelMsg>,
    mut messages: Vec<ChatMessage>,
    context_length: usize,
    max_tokens: usize,
) -> Result<Vec<ChatMessage>, Box<dyn std::error::Error>> {
    loop {
        let rendered = ractor::call!(kernel, |reply| KernelMsg::RenderChat {
            messages: messages.clone(),
            reply
        })??;
        let tokens = ractor::call!(kernel, |reply| KernelMsg::Tokenize { text: rendered, reply })??;
        if tokens.len() + max_tokens < context_length || messages.len() <= 2 {
            return Ok(messages);
        }
        // messages[0] is the system prompt; drop the oldest user/assistant pair.
        messages.drain(1..3);
    }
}

async fn generate(
    kernel: &ractor::ActorRef<KernelMsg>,
    messages: Vec<ChatMessage>,
    max_tokens: usize,
) -> Result<Generated, Box<dyn std::error::Error>> {
    let mut request = GenerateRequest::chat(messages);
    request.max_tokens = max_tokens;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    ractor::call!(kernel, |reply| KernelMsg::Generate {
        request,
        events: Box::new(tx),
        reply
    })??;
    loop {
        match tokio::time::timeout(Duration::from_secs(3600), rx.recv()).await? {
            Some(GenerationEvent::Finished { summary, .. }) => {
                return Ok(Generated {
                    seconds: started.elapsed().as_secs_f64(),
                    prompt_tokens: summary.prompt_tokens,
                    cached_tokens: summary.cached_prompt_tokens,
                });
            }
            Some(GenerationEvent::Failed(e)) => return Err(e.into()),
            Some(_) => {}
            None => return Err("the kernel dropped the generation".into()),
        }
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
