//! Measures the S-MMU on a long session with the real model, against its baselines in the same run.
//!
//! ```text
//! cargo run --release --example memory_bench -- --json [--turns 200] [--kv-mib 512]
//!     [--l2-pages 100000] [--model PATH] [--dtype auto|f16|f32] [--device NAME]
//! ```
//! One agent with memory (`#[agent(memory)]`, L1 budget 512 tokens) talks for `turns` turns:
//! turns 1–10 plant 20 facts (two per turn), the middle turns are small talk on other topics, and
//! the last 11 turns ask about the 20 facts. The same user turns are then sent by a plain chat
//! client that resends the whole conversation every turn (its own replies; the oldest turns
//! dropped once it exceeds the model's context), as llama.cpp's server or vLLM serve it with
//! prefix caching: each turn reuses the previous turn's KV. Prints one JSON object:
//! - `smmu.turn_seconds`, `full_history.turn_seconds`: every turn's latency (ask → whole reply),
//!   both curves; an S-MMU turn includes writing the previous turn to memory (slicing and
//!   embedding), which the next turn waits for. `*.prompt_tokens` and `*.cached_tokens` (prompt
//!   tokens the prefix cache served) per turn.
//! - `turn100_ratio`: median S-MMU latency over turns 96–105 over the full-history client's over
//!   the same turns (below 1: the S-MMU is faster); `last10_ratio`: the same over the last 10
//!   turns; `*_mean_*` are the means.
//! - `recall_answer`: of the 20 facts asked about, the fraction whose answer string the model's
//!   reply contains (case-insensitive), for the S-MMU and for the full-history client;
//!   `recall_window`: the fraction whose answer was in a page of the L1 window the model saw;
//!   `recall_window_fixed_chunks`: the same for the session replayed (same texts, same queries,
//!   same reserved tokens) through an S-MMU cutting fixed chunks of the attention run's mean
//!   page length, snapped to sentence starts as attention slices are.
//! - `l1_tokens_max`, `max_prompt_tokens`, `peak_rss_bytes`, `rss_every_10_turns`,
//!   `kv_allocated_bytes` (the KV pool, which the prefix cache keeps full of reusable blocks, is
//!   capped at `--kv-mib`, default 384: room for the full-history client's 8,192-token context).
//! - `l2_pages`, `l2_start_seconds`, `l2_search_p50_ms`, `l2_search_p99_ms`: L2 at scale, on a
//!   store of `--l2-pages` synthetic pages (no model; see `l2_scale`).

use std::time::{Duration, Instant};

use agentos_examples::{ModelArgs, init_logging, l2_scale, peak_rss_bytes, rss_bytes};
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

/// Memory: a long session with the S-MMU against a client resending the whole history.
#[derive(clap::Parser)]
struct Cli {
    /// Turns of the session (at least 25: 10 planting turns, 11 question turns)
    #[arg(long, default_value_t = 200)]
    turns: usize,
    /// Pages of the L2-at-scale part
    #[arg(long = "l2-pages", default_value_t = 100_000)]
    l2_pages: usize,
    /// KV cache budget in MiB
    #[arg(long = "kv-mib", default_value_t = 384)]
    kv_mib: usize,
    /// Print one JSON object (default: pretty-printed)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    init_logging();
    let cli = <Cli as clap::Parser>::parse();
    let turns = cli.turns;
    if turns < 25 {
        return Err("--turns must be at least 25 (10 planting turns, 11 question turns)".into());
    }
    let l2_pages = cli.l2_pages;
    let script = Script::new(turns);
    let dir = std::env::temp_dir().join(format!("agentos-memory-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    let kv_mib = cli.kv_mib;
    let mut kernel_args = cli.model.kernel_args();
    kernel_args.config.kv_cache.max_bytes = kv_mib << 20;

    // 1. The S-MMU session.
    let os = AgentOS::builder()
        .kernel(kernel_args.clone())
        .checkpoint_dir(dir.join("attention"))
        .start()
        .await?;
    let agent = os.spawn(Companion).await?;
    let mut smmu = Curve::default();
    let mut max_prompt_tokens = 0;
    let mut reserved_per_turn = Vec::with_capacity(turns);
    let (mut window_recalled, mut answer_recalled) = (0, 0);
    let mut rss_every_10_turns = Vec::new();
    let mut cached_before = 0;
    for (i, ask) in script.turns.iter().enumerate() {
        let started = Instant::now();
        let reply = agent.ask(ask.text.clone()).await?;
        let seconds = started.elapsed().as_secs_f64();
        let stats = os.scheduler_stats().await?;
        let cached = stats.by_agent.get(&agent.pid()).map_or(0, |s| s.cached_prompt_tokens);
        smmu.push(seconds, reply.prompt_tokens, (cached - cached_before) as usize);
        cached_before = cached;
        max_prompt_tokens = max_prompt_tokens.max(reply.prompt_tokens);
        let context = agent.last_context().await?.ok_or("the agent assembled no context")?;
        reserved_per_turn.push(context.reserved_tokens);
        window_recalled += ask.in_window(&context);
        answer_recalled += ask.in_reply(&reply.text);
        if !ask.answers.is_empty() {
            eprintln!("s-mmu turn {}: {:?} -> {:?}", i + 1, ask.text, reply.text);
        }
        smmu.replies.push(reply.text.clone());
        if (i + 1) % 10 == 0 {
            rss_every_10_turns.push(rss_bytes());
        }
        if std::env::var_os("MEMORY_BENCH_PAGES").is_some() {
            for p in &context.pages {
                eprintln!("    [{} tokens] {:?}", p.tokens, p.text);
            }
        }
        eprintln!(
            "s-mmu turn {:>3}: {:>6.2} s, prompt {:>3} tokens ({:>3} cached), window {:>3} tokens / {} pages",
            i + 1,
            seconds,
            reply.prompt_tokens,
            smmu.cached_tokens[i],
            context.tokens,
            context.pages.len()
        );
    }
    let transcript: Vec<String> = script.turns.iter().map(|a| a.text.clone()).collect();
    let l1 = agent.memory_stats().await?;
    let l2 = os.memory_stats().await?;
    let peak_rss = peak_rss_bytes();
    let mean_page_tokens = (l1.tokens_written / l1.pages_written.max(1)).max(4) as usize;

    // 2. The same user turns from a client that resends the whole conversation every turn.
    let kernel = os.kernel().ok_or("no kernel")?;
    let info = ractor::call!(kernel, KernelMsg::Info)?;
    let context_length = info.config.context_length;
    let system = Companion::spec().system;
    let max_tokens = Companion::spec().max_tokens;
    let mut full = Curve::default();
    let mut full_answer_recalled = 0;
    let mut history: Vec<ChatMessage> = vec![ChatMessage::system(system.clone())];
    let mut full_overflowed_at = None;
    for (i, (user, ask)) in transcript.iter().zip(&script.turns).enumerate() {
        history.push(ChatMessage::user(user.clone()));
        let (messages, dropped) = fit(&kernel, history.clone(), context_length, max_tokens).await?;
        if dropped > 0 && full_overflowed_at.is_none() {
            full_overflowed_at = Some(i + 1);
        }
        let reply = generate(&kernel, messages, max_tokens).await?;
        full_answer_recalled += ask.in_reply(&reply.text);
        if !ask.answers.is_empty() {
            eprintln!("full-history turn {}: {:?} -> {:?}", i + 1, ask.text, reply.text);
        }
        eprintln!(
            "full-history turn {:>3}: {:>6.2} s, prompt {:>4} tokens ({:>4} cached)",
            i + 1,
            reply.seconds,
            reply.prompt_tokens,
            reply.cached_tokens
        );
        full.push(reply.seconds, reply.prompt_tokens, reply.cached_tokens);
        history.push(ChatMessage::assistant(reply.text));
    }
    let kv_allocated_bytes = ractor::call!(kernel, KernelMsg::Stats)??.kv_allocated_bytes;
    os.shutdown().await?;

    // 3. The S-MMU session replayed through fixed-size chunks.
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
    let mut fixed_window_recalled = 0;
    for ((ask, reply), reserved) in script.turns.iter().zip(&smmu.replies).zip(&reserved_per_turn) {
        let context = replay.page_in(ask.text.clone(), *reserved).await?;
        fixed_window_recalled += ask.in_window(&context);
        replay
            .remember(format!("User: {}\nAssistant: {reply}", ask.text))
            .await?;
    }
    os.shutdown().await?;

    // 4. L2 at scale.
    let spec = l2_scale::ScaleSpec {
        pages: l2_pages,
        ..l2_scale::ScaleSpec::default()
    };
    let l2_scale = l2_scale::measure(&spec, &dir.join("l2-scale"))
        .await
        .map_err(|e| format!("L2 at scale ({l2_pages} pages): {e}"))?;
    let _ = std::fs::remove_dir_all(&dir);

    let questions = FACTS.len() as f64;
    let window = |from: usize, to: usize| from.min(turns - 1)..to.min(turns);
    let at100 = window(95, 105);
    let last10 = window(turns - 10, turns);
    let report = serde_json::json!({
        "turns": turns,
        "turn100_ratio": round(median(&smmu.seconds[at100.clone()]) / median(&full.seconds[at100.clone()])),
        "turn100_mean_ratio": round(mean(&smmu.seconds[at100.clone()]) / mean(&full.seconds[at100.clone()])),
        "last10_ratio": round(median(&smmu.seconds[last10.clone()]) / median(&full.seconds[last10.clone()])),
        "last10_mean_ratio": round(mean(&smmu.seconds[last10.clone()]) / mean(&full.seconds[last10.clone()])),
        "smmu_flatness": round(median(&smmu.seconds[last10.clone()]) / median(&smmu.seconds[2..12])),
        "full_history_overflowed_at_turn": full_overflowed_at,
        "recall_answer": round(answer_recalled as f64 / questions),
        "recall_window": round(window_recalled as f64 / questions),
        "recall_answer_full_history": round(full_answer_recalled as f64 / questions),
        "recall_window_fixed_chunks": round(fixed_window_recalled as f64 / questions),
        "fixed_chunk_tokens": mean_page_tokens,
        "l1_tokens_max": l1.tokens_max,
        "l1_budget_tokens": MemoryConfig::default().l1_budget_tokens,
        "max_prompt_tokens": max_prompt_tokens,
        "peak_rss_bytes": peak_rss,
        "rss_every_10_turns": rss_every_10_turns,
        "kv_allocated_bytes": kv_allocated_bytes,
        "kv_budget_bytes": kv_mib << 20,
        "pages_written": l1.pages_written,
        "page_faults": l1.page_faults,
        "evictions": l1.evictions,
        "context_full_interrupts": l1.context_full_interrupts,
        "pages_stored": l2.pages,
        "duplicate_pages": l2.duplicates,
        "l2_pages": l2_scale.l2_pages,
        "l2_start_seconds": round(l2_scale.l2_start_seconds),
        "l2_search_p50_ms": round(l2_scale.l2_search_p50_ms),
        "l2_search_p99_ms": round(l2_scale.l2_search_p99_ms),
        "l2_recall_at_k": round(l2_scale.recall_at_k),
        "smmu": smmu.json(),
        "full_history": full.json(),
    });
    if cli.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// One session's per-turn figures.
#[derive(Default)]
struct Curve {
    seconds: Vec<f64>,
    prompt_tokens: Vec<usize>,
    cached_tokens: Vec<usize>,
    replies: Vec<String>,
}

impl Curve {
    fn push(&mut self, seconds: f64, prompt_tokens: usize, cached_tokens: usize) {
        self.seconds.push(seconds);
        self.prompt_tokens.push(prompt_tokens);
        self.cached_tokens.push(cached_tokens);
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "turn_seconds": self.seconds.iter().map(|s| round(*s)).collect::<Vec<_>>(),
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
        })
    }
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// One user turn, and the facts whose answers must be in memory when it is answered.
struct Ask {
    text: String,
    answers: Vec<&'static str>,
}

impl Ask {
    /// How many of this turn's answers were in a page of the window the model saw.
    fn in_window(&self, context: &agentos_runtime::ActiveContext) -> usize {
        self.answers
            .iter()
            .filter(|answer| context.pages.iter().any(|p| contains(&p.text, answer)))
            .count()
    }

    /// How many of this turn's answers the model's reply contains.
    fn in_reply(&self, reply: &str) -> usize {
        self.answers.iter().filter(|answer| contains(reply, answer)).count()
    }
}

fn contains(text: &str, answer: &str) -> bool {
    text.to_lowercase().contains(&answer.to_lowercase())
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
    text: String,
    seconds: f64,
    prompt_tokens: usize,
    cached_tokens: usize,
}

/// Drops the oldest turns until the prompt and the reply fit the model's context; returns the
/// messages and how many pairs were dropped.
async fn fit(
    kernel: &ractor::ActorRef<KernelMsg>,
    mut messages: Vec<ChatMessage>,
    context_length: usize,
    max_tokens: usize,
) -> Result<(Vec<ChatMessage>, usize), Box<dyn std::error::Error>> {
    let mut dropped = 0;
    loop {
        let rendered = ractor::call!(kernel, |reply| KernelMsg::RenderChat {
            messages: messages.clone(),
            tools: Vec::new(),
            reply
        })??;
        let tokens = ractor::call!(kernel, |reply| KernelMsg::Tokenize { text: rendered, reply })??;
        if tokens.len() + max_tokens < context_length || messages.len() <= 2 {
            return Ok((messages, dropped));
        }
        // messages[0] is the system prompt; drop the oldest user/assistant pair.
        messages.drain(1..3);
        dropped += 1;
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
                    text: summary.text,
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
