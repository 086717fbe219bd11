//! Measures the runtime without a model: spawning 10,000 agents, the memory an idle agent costs,
//! and a message's round trip through an agent actor.
//!
//! ```text
//! cargo run --release --example runtime_bench -- --json [--agents N] [--roundtrips N]
//! ```
//! Prints one JSON object: spawn_10k_seconds (spawning N agents through the agent supervisor,
//! each started and linked), bytes_per_idle_agent (resident memory grown while spawning, over N),
//! roundtrip_p50_us / roundtrip_p99_us (`AgentHandle::status`: a message into an agent's mailbox
//! and its reply, one at a time), and stop_seconds (stopping them all with a graceful shutdown).
//! Targets: 10,000 agents in under 1 s, under 64 KiB each.

use std::time::{Duration, Instant};

use agentos_examples::init_logging;
use agentos_runtime::prelude::*;

/// You are idle.
#[agent(name = "Idle")]
#[derive(Default, Serialize, Deserialize)]
struct Idle {
    counter: u64,
}

/// The runtime without a model: spawn cost, message round trips, memory per agent.
#[derive(clap::Parser)]
struct Cli {
    /// Agents to spawn
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Message round trips to time
    #[arg(long, default_value_t = 20_000)]
    roundtrips: usize,
    /// Print one JSON object (default: pretty-printed)
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    init_logging();
    let cli = <Cli as clap::Parser>::parse();
    let (agents, roundtrips) = (cli.agents, cli.roundtrips);

    let os = AgentOS::builder().without_kernel().start().await?;
    // Warm the allocator and the runtime with a few agents first, so the memory per agent is
    // not inflated by one-time growth.
    let warm = os.spawn_named("warm-up", Idle::default()).await?;
    warm.status().await?;

    let rss_before = rss_bytes();
    let started = Instant::now();
    let mut handles = Vec::with_capacity(agents);
    for i in 0..agents {
        handles.push(os.spawn_named(format!("idle-{i}"), Idle::default()).await?);
    }
    let spawn_seconds = started.elapsed().as_secs_f64();
    // Let every actor reach its idle state before reading memory.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_after = rss_bytes();
    assert_eq!(os.agents().len(), agents + 1);

    let mut samples = Vec::with_capacity(roundtrips);
    for i in 0..roundtrips {
        let handle = &handles[i % handles.len()];
        let t = Instant::now();
        handle.status().await?;
        samples.push(t.elapsed());
    }
    samples.sort();
    let percentile = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6;

    let stop_started = Instant::now();
    drop(handles);
    os.shutdown().await?;
    let stop_seconds = stop_started.elapsed().as_secs_f64();

    let result = serde_json::json!({
        "agents": agents,
        "spawn_10k_seconds": spawn_seconds * 10_000.0 / agents as f64,
        "spawn_seconds": spawn_seconds,
        "bytes_per_idle_agent": rss_after.saturating_sub(rss_before) / agents as u64,
        "roundtrip_p50_us": percentile(0.50),
        "roundtrip_p99_us": percentile(0.99),
        "roundtrips": roundtrips,
        "stop_seconds": stop_seconds,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
    });
    if cli.json {
        println!("{result}");
    } else {
        println!("{}", serde_json::to_string_pretty(&result)?);
    }
    Ok(())
}

/// Resident set size (VmRSS) in bytes; 0 where /proc is unavailable.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}
