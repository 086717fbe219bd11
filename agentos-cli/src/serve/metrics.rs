//! `GET /metrics`: Prometheus text. The server's own counters (requests, tokens, open
//! streams, disconnects, time to first token) and, read at each scrape, the kernel's
//! (tokens processed and generated, queue, KV blocks, preemptions), the scheduler's per agent
//! (tokens used against its fair share, throttling) and the memory's (page faults).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agentos_runtime::AgentOS;

/// Counters of the HTTP side.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: AtomicU64,
    failed: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    streams_open: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    ttft_micros: AtomicU64,
}

impl Metrics {
    pub fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request_failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request_done(&self, prompt_tokens: usize, completion_tokens: usize, ttft: Duration) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        self.prompt_tokens.fetch_add(prompt_tokens as u64, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion_tokens as u64, Ordering::Relaxed);
        self.ttft_micros.fetch_add(ttft.as_micros() as u64, Ordering::Relaxed);
    }

    /// A client went away before its reply ended (its generation was cancelled).
    pub fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stream_opened(&self) {
        self.streams_open.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stream_closed(&self) {
        self.streams_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Requests cancelled because their client went away.
    pub fn cancelled_count(&self) -> u64 {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Streams open now.
    pub fn open_streams(&self) -> u64 {
        self.streams_open.load(Ordering::Relaxed)
    }

    /// The exposition text; `os` is `None` while the model loads.
    pub async fn render(&self, os: Option<&AgentOS>) -> String {
        let mut out = String::new();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        metric(
            &mut out,
            "agentos_up",
            "gauge",
            "1 once the model is loaded",
            os.is_some() as u64,
        );
        metric(
            &mut out,
            "agentos_http_chat_requests_total",
            "counter",
            "Chat completion requests accepted",
            load(&self.requests),
        );
        metric(
            &mut out,
            "agentos_http_chat_failed_total",
            "counter",
            "Chat completion requests answered with an error",
            load(&self.failed),
        );
        metric(
            &mut out,
            "agentos_http_chat_completed_total",
            "counter",
            "Chat completions finished",
            load(&self.completed),
        );
        metric(
            &mut out,
            "agentos_http_client_disconnects_total",
            "counter",
            "Replies cancelled because the client went away",
            load(&self.cancelled),
        );
        metric(
            &mut out,
            "agentos_http_streams_open",
            "gauge",
            "Streaming replies open now",
            load(&self.streams_open),
        );
        metric(
            &mut out,
            "agentos_http_prompt_tokens_total",
            "counter",
            "Prompt tokens of finished completions",
            load(&self.prompt_tokens),
        );
        metric(
            &mut out,
            "agentos_http_completion_tokens_total",
            "counter",
            "Tokens generated for finished completions",
            load(&self.completion_tokens),
        );
        metric_f(
            &mut out,
            "agentos_http_ttft_seconds_sum",
            "counter",
            "Sum of times to first token of finished completions",
            load(&self.ttft_micros) as f64 / 1e6,
        );
        let Some(os) = os else {
            return out;
        };
        if let Ok(e) = crate::client::engine_stats(os).await {
            metric(
                &mut out,
                "agentos_kernel_forwards_total",
                "counter",
                "Batched forward passes",
                e.forwards,
            );
            metric(
                &mut out,
                "agentos_kernel_tokens_processed_total",
                "counter",
                "Tokens run through the model (prompts and generated)",
                e.tokens_processed,
            );
            metric(
                &mut out,
                "agentos_kernel_generated_tokens_total",
                "counter",
                "Tokens generated",
                e.generated_tokens,
            );
            metric_f(
                &mut out,
                "agentos_kernel_forward_seconds_total",
                "counter",
                "Time spent in forward passes",
                e.forward_seconds,
            );
            let rate = if e.forward_seconds > 0.0 {
                e.tokens_processed as f64 / e.forward_seconds
            } else {
                0.0
            };
            metric_f(
                &mut out,
                "agentos_kernel_tokens_per_second",
                "gauge",
                "Tokens processed per second of forward time, since start",
                rate,
            );
            metric(
                &mut out,
                "agentos_kernel_running_sequences",
                "gauge",
                "Sequences generating now",
                e.running_sequences as u64,
            );
            metric(
                &mut out,
                "agentos_kernel_waiting_requests",
                "gauge",
                "Requests waiting for a batch slot",
                e.waiting_requests as u64,
            );
            metric(
                &mut out,
                "agentos_kernel_preemptions_total",
                "counter",
                "Running sequences paused for a more urgent request",
                e.preemptions,
            );
            metric(
                &mut out,
                "agentos_kv_used_blocks",
                "gauge",
                "KV cache blocks in use",
                e.kv_used_blocks as u64,
            );
            metric(
                &mut out,
                "agentos_kv_max_blocks",
                "gauge",
                "KV cache blocks in all",
                e.kv_max_blocks as u64,
            );
            metric(
                &mut out,
                "agentos_kv_prefix_cached_blocks",
                "gauge",
                "KV blocks kept only by the prefix cache",
                e.kv_cached_blocks as u64,
            );
            metric(
                &mut out,
                "agentos_kv_prefix_hit_tokens_total",
                "counter",
                "Prompt tokens served from the prefix cache",
                e.prefix_cached_tokens,
            );
        }
        if let Ok(s) = os.scheduler_stats().await {
            metric(
                &mut out,
                "agentos_scheduler_in_flight",
                "gauge",
                "Agent generations in the kernel",
                s.in_flight as u64,
            );
            metric(
                &mut out,
                "agentos_scheduler_throttled",
                "gauge",
                "Agent requests held back by fair share now",
                s.throttled_now as u64,
            );
            let agents = os.agents();
            let name_of = |pid| {
                agents
                    .iter()
                    .find(|a| a.pid == pid)
                    .map(|a| a.name.clone())
                    .unwrap_or_default()
            };
            header(
                &mut out,
                "agentos_agent_tokens_total",
                "counter",
                "Tokens an agent used (prompt computed, generated, memory work): what its fair share counts",
            );
            for (pid, a) in &s.by_agent {
                let used =
                    a.prompt_tokens.saturating_sub(a.cached_prompt_tokens) + a.generated_tokens + a.memory_tokens;
                let _ = writeln!(
                    out,
                    "agentos_agent_tokens_total{{agent=\"{}\"}} {used}",
                    escape(&name_of(*pid))
                );
            }
            header(
                &mut out,
                "agentos_agent_throttled_total",
                "counter",
                "Requests of an agent held back because it was over its share",
            );
            for (pid, a) in &s.by_agent {
                let _ = writeln!(
                    out,
                    "agentos_agent_throttled_total{{agent=\"{}\"}} {}",
                    escape(&name_of(*pid)),
                    a.throttled
                );
            }
            let mut faults = 0u64;
            for agent in &agents {
                if let Some(handle) = os.agent(&agent.name)
                    && let Ok(l1) = handle.memory_stats().await
                {
                    faults += l1.page_faults;
                }
            }
            metric(
                &mut out,
                "agentos_memory_page_faults_total",
                "counter",
                "Pages brought back into agents' L1 windows",
                faults,
            );
        }
        if let Ok(sync) = os.sync_stats().await {
            metric(
                &mut out,
                "agentos_sync_pulses_total",
                "counter",
                "Sync pulses run",
                sync.pulses as u64,
            );
            metric(
                &mut out,
                "agentos_sync_tokens_injected_total",
                "counter",
                "Tokens of pulse digests put into agents' contexts",
                sync.tokens_injected,
            );
            metric(
                &mut out,
                "agentos_blackboard_entries",
                "gauge",
                "Blackboard entries",
                sync.board.entries as u64,
            );
            metric(
                &mut out,
                "agentos_blackboard_conflicts_total",
                "counter",
                "Blackboard writes kept as conflicts (concurrent with a value the writer had not read)",
                sync.board.conflicts,
            );
            metric(
                &mut out,
                "agentos_topic_publications_total",
                "counter",
                "Topic publications",
                sync.publications,
            );
            metric(
                &mut out,
                "agentos_leases_held",
                "gauge",
                "Leases held on shared resources",
                sync.leases as u64,
            );
        }
        if let Ok(m) = os.memory_stats().await {
            metric(
                &mut out,
                "agentos_memory_pages",
                "gauge",
                "Pages in the page table",
                m.pages as u64,
            );
            metric(
                &mut out,
                "agentos_memory_l3_faults_total",
                "counter",
                "Pages read back from the durable store",
                m.faults_from_l3,
            );
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

fn metric_f(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
