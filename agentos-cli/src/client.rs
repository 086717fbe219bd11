//! `agentos ps` and `agentos stats`: a running server's agents and figures, read over HTTP
//! (`GET /v1/agents`, `GET /v1/stats`); the report is the one the chat's `/stats` prints.

use std::time::Duration;

use agentos_kernel::{EngineStats, KernelMsg, ModelInfo};
use agentos_runtime::{AgentInfo, AgentOS, SchedulerStats};
use ractor::rpc::CallResult;
use serde::{Deserialize, Serialize};

use crate::error::{CliError, Result};

#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// The server's address
    #[arg(long, default_value = "http://127.0.0.1:8080", value_name = "URL")]
    pub url: String,
    /// The server's API key (also read from AGENTOS_API_KEY)
    #[arg(long, env = "AGENTOS_API_KEY", value_name = "KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print the JSON the server returned
    #[arg(long)]
    pub json: bool,
}

/// The kernel's, scheduler's and memory's figures at one moment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsReport {
    pub engine: EngineStats,
    pub scheduler: SchedulerStats,
    /// `None` when the memory system is not running (no agent with memory was started).
    pub memory: Option<agentos_runtime::L2Stats>,
    pub agents: Vec<AgentInfo>,
}

impl StatsReport {
    pub async fn collect(os: &AgentOS) -> Result<StatsReport> {
        let engine = engine_stats(os).await?;
        let scheduler = os.scheduler_stats().await?;
        let memory = os.memory_stats().await.ok();
        Ok(StatsReport {
            engine,
            scheduler,
            memory,
            agents: os.agents(),
        })
    }

    /// A few lines for a terminal.
    pub fn to_text(&self) -> String {
        let e = &self.engine;
        let total = self.scheduler.total();
        let mut out = format!(
            "kernel: {} forwards, {} tokens processed in {:.1} s ({:.0} tokens/s), {} generated; \
             {} running, {} waiting, {} preemptions\n",
            e.forwards,
            e.tokens_processed,
            e.forward_seconds,
            if e.forward_seconds > 0.0 {
                e.tokens_processed as f64 / e.forward_seconds
            } else {
                0.0
            },
            e.generated_tokens,
            e.running_sequences,
            e.waiting_requests,
            e.preemptions,
        );
        out.push_str(&format!(
            "kv cache: {} of {} blocks used ({} kept by the prefix cache), {} prompt tokens from the prefix cache\n",
            e.kv_used_blocks, e.kv_max_blocks, e.kv_cached_blocks, e.prefix_cached_tokens
        ));
        out.push_str(&format!(
            "scheduler: {} requests from agents, {} in flight, {} throttled now; agents used {} prompt + {} generated tokens\n",
            self.scheduler.submitted,
            self.scheduler.in_flight,
            self.scheduler.throttled_now,
            total.prompt_tokens,
            total.generated_tokens
        ));
        if let Some(m) = &self.memory {
            out.push_str(&format!(
                "memory: {} pages ({} in L1 windows, {} in L2, {} only in L3), {} faults from L3\n",
                m.pages, m.in_l1, m.in_l2, m.in_l3_only, m.faults_from_l3
            ));
        }
        for a in &self.agents {
            let s = self.scheduler.by_agent.get(&a.pid).cloned().unwrap_or_default();
            out.push_str(&format!(
                "  {:<16} {:?}, {} turns, {} tokens, {} throttled, {} preemptions\n",
                a.name, a.state, a.turns, a.tokens_used, s.throttled, s.preemptions
            ));
        }
        out.trim_end().to_string()
    }
}

/// The kernel's counters.
pub async fn engine_stats(os: &AgentOS) -> Result<EngineStats> {
    let kernel = os.kernel().ok_or_else(|| CliError::new("this AgentOS has no kernel"))?;
    match kernel.call(KernelMsg::Stats, Some(Duration::from_secs(10))).await {
        Ok(CallResult::Success(stats)) => Ok(stats?),
        Ok(_) => Err(CliError::new("the kernel did not answer within 10 s")),
        Err(e) => Err(CliError::new(format!("the kernel is gone: {e}"))),
    }
}

/// The loaded model and its device.
pub async fn model_info(os: &AgentOS) -> Result<ModelInfo> {
    let kernel = os.kernel().ok_or_else(|| CliError::new("this AgentOS has no kernel"))?;
    match kernel.call(KernelMsg::Info, Some(Duration::from_secs(10))).await {
        Ok(CallResult::Success(info)) => Ok(info),
        Ok(_) => Err(CliError::new("the kernel did not answer within 10 s")),
        Err(e) => Err(CliError::new(format!("the kernel is gone: {e}"))),
    }
}

/// `agentos ps`.
pub async fn ps(args: ClientArgs) -> Result<()> {
    let body = get(&args, "/v1/agents").await?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let agents: Vec<AgentInfo> = serde_json::from_str(&body)
        .map_err(|e| CliError::new(format!("{} did not answer with agents ({e})", args.url)))?;
    println!(
        "{:<5} {:<16} {:<12} {:<10} {:<9} {:>5} {:>7} {:>6}",
        "PID", "NAME", "ROLE", "PRIORITY", "STATE", "TURNS", "TOKENS", "QUEUED"
    );
    for a in agents {
        println!(
            "{:<5} {:<16} {:<12} {:<10} {:<9} {:>5} {:>7} {:>6}",
            a.pid.0,
            a.name,
            a.role,
            format!("{:?}", a.priority),
            format!("{:?}", a.state),
            a.turns,
            a.tokens_used,
            a.queued_tasks
        );
    }
    Ok(())
}

/// `agentos stats`.
pub async fn stats(args: ClientArgs) -> Result<()> {
    let body = get(&args, "/v1/stats").await?;
    if args.json {
        println!("{body}");
        return Ok(());
    }
    let report: StatsReport = serde_json::from_str(&body)
        .map_err(|e| CliError::new(format!("{} did not answer with figures ({e})", args.url)))?;
    println!("{}", report.to_text());
    Ok(())
}

/// GETs `path` from the server, on the blocking pool (the HTTP client is synchronous).
async fn get(args: &ClientArgs, path: &str) -> Result<String> {
    let url = format!("{}{path}", args.url.trim_end_matches('/'));
    let key = args.api_key.clone();
    let server = args.url.clone();
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(15)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut request = agent.get(&url);
        if let Some(key) = key {
            request = request.header("Authorization", &format!("Bearer {key}"));
        }
        let mut response = request.call().map_err(|e| {
            CliError::new(format!(
                "cannot reach {server} ({e}); is `agentos serve` running there? (--url sets the address)"
            ))
        })?;
        let status = response.status();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| CliError::new(format!("{url}: {e}")))?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or(body);
            return Err(CliError::new(format!("{url} answered {status}: {message}")));
        }
        Ok(body)
    })
    .await
    .map_err(|e| CliError::new(format!("the request stopped: {e}")))?
}
