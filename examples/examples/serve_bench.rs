//! The OpenAI-compatible server under load, against the same load through the Rust API.
//!
//! ```text
//! cargo run --release --example serve_bench -- --json [--clients 1,8,16] [--turns 4]
//!     [--max-tokens 64] [--rounds 3] [--external URL --external-model NAME]
//!     [--model PATH] [--dtype auto|f16|f32] [--device NAME]
//! ```
//! Multi-agent chat traffic: each client holds its own conversation (a system prompt, then
//! `turns` questions, each answered in up to `max-tokens` tokens, greedy) and resends the
//! whole history every turn, all clients at once.
//!
//! - `http`: every client streams its replies from `agentos serve` (started in this process,
//!   over TCP on 127.0.0.1) with `stream: true`, one thread per client, SSE parsed as it comes.
//! - `api`: the same conversations sent to the kernel actor directly
//!   (`agentos_kernel::actor::generate`), one task per client: what a Rust program pays.
//! - `external` (with `--external`): the same HTTP load against another OpenAI-compatible
//!   server, e.g. llama.cpp's `llama-server --parallel 8` on the same GGUF
//!   (`benches/serve_vs_llamacpp.sh` builds and starts it).
//!
//! Prints one JSON object; per client count: aggregate generated tokens per second (median of
//! `rounds` rounds, the modes interleaved within each round), time to first token p50/p99 over
//! every turn, `http_overhead` = 1 - http / api, `same_tokens` (greedy: both paths must
//! generate the same number of tokens), and `vs_external` = http / external.

use std::io::BufRead;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentos_cli::serve::{RunningServer, ServeOptions};
use agentos_examples::{ModelArgs, init_logging};
use agentos_kernel::{ChatMessage, GenerateRequest, GenerationEvent, KernelMsg, Prompt, SamplingParams};
use agentos_runtime::{AgentOS, RuntimeConfig};
use ractor::ActorRef;
use serde_json::{Value, json};

const SYSTEM: &str = "You are a helpful assistant. Answer the question thoroughly, in plain words.";

const QUESTIONS: [&str; 16] = [
    "Why is the sky blue?",
    "How do plants make food?",
    "What causes ocean tides?",
    "How does a refrigerator keep food cold?",
    "Why do we have seasons?",
    "How do vaccines work?",
    "What is inflation in economics?",
    "How does a compass find north?",
    "Why does ice float on water?",
    "How do bees make honey?",
    "What makes thunder?",
    "How does the internet send data?",
    "Why do leaves change colour in autumn?",
    "How do airplanes stay in the air?",
    "What is a black hole?",
    "How does the heart pump blood?",
];

/// The HTTP server against the Rust API (and optionally another server) on chat traffic.
#[derive(clap::Parser)]
struct Cli {
    /// Concurrent clients to measure, comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1,8,16")]
    clients: Vec<usize>,
    /// Turns per conversation
    #[arg(long, default_value_t = 4)]
    turns: usize,
    /// Most tokens per reply
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Rounds per client count (each figure is the median)
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Another OpenAI-compatible server to put the same HTTP load on (its /v1 base URL)
    #[arg(long, value_name = "URL")]
    external: Option<String>,
    /// The model name to send to --external
    #[arg(long, default_value = "default", value_name = "NAME")]
    external_model: String,
    /// Print only the JSON object
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

/// One load run: tokens generated, wall time, every turn's time to first token.
#[derive(Debug, Clone, Default)]
struct Run {
    tokens: u64,
    seconds: f64,
    ttfts: Vec<f64>,
}

impl Run {
    fn tps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.tokens as f64 / self.seconds
        } else {
            0.0
        }
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let cli = <Cli as clap::Parser>::parse();
    init_logging();
    let config = RuntimeConfig {
        kernel: Some(cli.model.kernel_args()),
        ..RuntimeConfig::default()
    };
    let os = Arc::new(AgentOS::start(config).await.expect("the model loads"));
    let kernel = os.kernel().expect("a kernel");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let options = ServeOptions {
        default_max_tokens: cli.max_tokens,
        ..ServeOptions::default()
    };
    let server = RunningServer::start(os.clone(), listener, options).await.unwrap();
    let base = format!("http://{}/v1", server.addr);
    let model = server.state.model_id();

    let mut results = serde_json::Map::new();
    for &clients in &cli.clients {
        let mut api_runs = Vec::new();
        let mut http_runs = Vec::new();
        let mut external_runs = Vec::new();
        for round in 0..cli.rounds.max(1) {
            // Alternate which mode goes first, so neither always meets a warm or cold machine.
            let api_first = round % 2 == 0;
            for mode in if api_first { ["api", "http"] } else { ["http", "api"] } {
                let run = match mode {
                    "api" => api_load(&kernel, clients, cli.turns, cli.max_tokens).await,
                    _ => http_load(&base, &model, clients, cli.turns, cli.max_tokens).await,
                };
                if !cli.json {
                    eprintln!("{clients} clients, round {round}, {mode}: {:.1} tokens/s", run.tps());
                }
                match mode {
                    "api" => api_runs.push(run),
                    _ => http_runs.push(run),
                }
            }
            if let Some(url) = &cli.external {
                let run = http_load(url, &cli.external_model, clients, cli.turns, cli.max_tokens).await;
                if !cli.json {
                    eprintln!("{clients} clients, round {round}, external: {:.1} tokens/s", run.tps());
                }
                external_runs.push(run);
            }
        }
        let api = median_tps(&api_runs);
        let http = median_tps(&http_runs);
        let mut entry = json!({
            "api_tps": api,
            "http_tps": http,
            "http_overhead": if api > 0.0 { 1.0 - http / api } else { 0.0 },
            "api_ttft_ms": percentiles(&api_runs),
            "http_ttft_ms": percentiles(&http_runs),
            "tokens_per_run": {"api": api_runs[0].tokens, "http": http_runs[0].tokens},
            "same_tokens": api_runs.iter().chain(&http_runs).all(|r| r.tokens == api_runs[0].tokens),
            "rounds": {"api": api_runs.iter().map(Run::tps).collect::<Vec<_>>(), "http": http_runs.iter().map(Run::tps).collect::<Vec<_>>()},
        });
        if !external_runs.is_empty() {
            let external = median_tps(&external_runs);
            entry["external_tps"] = json!(external);
            entry["external_ttft_ms"] = percentiles(&external_runs);
            entry["external_tokens_per_run"] = json!(external_runs[0].tokens);
            entry["vs_external"] = json!(if external > 0.0 { http / external } else { 0.0 });
        }
        results.insert(clients.to_string(), entry);
    }
    let out = json!({
        "model": model,
        "turns": cli.turns,
        "max_tokens": cli.max_tokens,
        "rounds": cli.rounds,
        "external": cli.external,
        "clients": results,
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap());
    server.stop().await;
    if let Ok(os) = Arc::try_unwrap(os) {
        os.shutdown().await.unwrap();
    }
}

fn median_tps(runs: &[Run]) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(Run::tps).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// p50 and p99 of every turn's time to first token over all runs, in milliseconds.
fn percentiles(runs: &[Run]) -> Value {
    let mut v: Vec<f64> = runs.iter().flat_map(|r| r.ttfts.iter().copied()).collect();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
            * 1e3
    };
    json!({"p50": at(0.5), "p99": at(0.99)})
}

fn opening(client: usize) -> Vec<ChatMessage> {
    vec![ChatMessage::system(SYSTEM), ChatMessage::user(QUESTIONS[client % 16])]
}

fn next_question(client: usize, turn: usize) -> &'static str {
    QUESTIONS[(client + turn * 5) % 16]
}

/// Every client's conversation through the kernel actor, all at once.
async fn api_load(kernel: &ActorRef<KernelMsg>, clients: usize, turns: usize, max_tokens: usize) -> Run {
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let kernel = kernel.clone();
            tokio::spawn(async move {
                let mut messages = opening(client);
                let mut tokens = 0u64;
                let mut ttfts = Vec::with_capacity(turns);
                for turn in 0..turns {
                    let mut request = GenerateRequest::new(Prompt::Chat(messages.clone()));
                    request.max_tokens = max_tokens;
                    request.sampling = SamplingParams::greedy();
                    let asked = Instant::now();
                    let (_, mut events) = agentos_kernel::actor::generate(&kernel, request).await.expect("queued");
                    let mut first = None;
                    let reply = loop {
                        match events.recv().await.expect("the kernel answers") {
                            // As the HTTP client counts it: the first text shown.
                            GenerationEvent::Token { text, .. } if !text.is_empty() => {
                                first.get_or_insert_with(|| asked.elapsed());
                            }
                            GenerationEvent::Token { .. } => {}
                            GenerationEvent::Finished { summary, .. } => break summary,
                            GenerationEvent::Failed(e) => panic!("generation failed: {e}"),
                        }
                    };
                    ttfts.push(first.unwrap_or_else(|| asked.elapsed()).as_secs_f64());
                    tokens += reply.tokens.len() as u64;
                    messages.push(ChatMessage::assistant(reply.text));
                    messages.push(ChatMessage::user(next_question(client, turn + 1)));
                }
                (tokens, ttfts)
            })
        })
        .collect();
    let mut run = Run::default();
    for task in tasks {
        let (tokens, ttfts) = task.await.unwrap();
        run.tokens += tokens;
        run.ttfts.extend(ttfts);
    }
    run.seconds = start.elapsed().as_secs_f64();
    run
}

/// Every client's conversation over HTTP with streaming, one thread per client.
async fn http_load(base: &str, model: &str, clients: usize, turns: usize, max_tokens: usize) -> Run {
    let base = base.to_string();
    let model = model.to_string();
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let threads: Vec<_> = (0..clients)
            .map(|client| {
                let url = format!("{}/chat/completions", base.trim_end_matches('/'));
                let model = model.clone();
                std::thread::spawn(move || http_conversation(&url, &model, client, turns, max_tokens))
            })
            .collect();
        let mut run = Run::default();
        for thread in threads {
            let (tokens, ttfts) = thread.join().expect("a client thread");
            run.tokens += tokens;
            run.ttfts.extend(ttfts);
        }
        run.seconds = start.elapsed().as_secs_f64();
        run
    })
    .await
    .unwrap()
}

fn http_conversation(url: &str, model: &str, client: usize, turns: usize, max_tokens: usize) -> (u64, Vec<f64>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into();
    let mut messages: Vec<Value> = opening(client)
        .into_iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    let mut tokens = 0u64;
    let mut ttfts = Vec::with_capacity(turns);
    for turn in 0..turns {
        let body = json!({
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let asked = Instant::now();
        let mut response = agent
            .post(url)
            .header("content-type", "application/json")
            .send(body.to_string())
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let reader = std::io::BufReader::new(response.body_mut().as_reader());
        let mut first = None;
        let mut reply = String::new();
        let mut usage = None;
        let mut content_chunks = 0u64;
        for line in reader.lines() {
            let line = line.expect("the stream reads");
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                break;
            }
            let chunk: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"));
            if let Some(text) = chunk["choices"][0]["delta"]["content"].as_str()
                && !text.is_empty()
            {
                first.get_or_insert_with(|| asked.elapsed());
                reply.push_str(text);
                content_chunks += 1;
            }
            if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
                usage = Some(n);
            }
        }
        ttfts.push(first.unwrap_or_else(|| asked.elapsed()).as_secs_f64());
        // A server that sends no usage in its stream: one chunk per token, as servers send them.
        tokens += usage.unwrap_or(content_chunks);
        messages.push(json!({"role": "assistant", "content": reply}));
        messages.push(json!({"role": "user", "content": next_question(client, turn + 1)}));
    }
    (tokens, ttfts)
}
