//! `agentos serve` on the real default model: the official OpenAI Python client (chat,
//! streaming, JSON-schema output, a tool-call round trip, an agent, 16 concurrent streams, a
//! client that hangs up), and the HTTP edges (health, auth, bad and oversize bodies, metrics).
//!
//! The Python client comes from the venv that `.ci/run` makes (`target/pyenv`, from
//! tests/python/requirements.txt); `AGENTOS_TEST_PYTHON` names another interpreter.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentos_cli::serve::{RunningServer, ServeOptions};
use agentos_runtime::prelude::*;
use serde_json::{Value, json};

use crate::support::kernel_args;

/// The Python with the `openai` package.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("AGENTOS_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    assert!(
        venv.is_file(),
        "{} is missing: run .ci/run, or python3 -m venv target/pyenv && target/pyenv/bin/pip install -r tests/python/requirements.txt",
        venv.display()
    );
    venv
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python").join(name)
}

struct Served {
    os: Arc<AgentOS>,
    server: RunningServer,
}

impl Served {
    async fn start(options: ServeOptions) -> Served {
        let os = AgentOS::builder()
            .kernel(kernel_args())
            .start()
            .await
            .expect("the model loads");
        let mut helper = AgentSpec::new("Helper", "You are a helpful assistant. Answer briefly.");
        helper.max_tokens = 24;
        os.spawn_spec("Helper", helper).await.unwrap();
        let os = Arc::new(os);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = RunningServer::start(os.clone(), listener, options).await.unwrap();
        Served { os, server }
    }

    fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Runs a scenario of tests/python/openai_client.py; its JSON output.
    async fn client(&self, scenario: &str) -> Value {
        let args = (
            python(),
            script("openai_client.py"),
            format!("{}/v1", self.url()),
            self.server.state.model_id(),
            scenario.to_string(),
        );
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(&args.0)
                .arg(&args.1)
                .args([&args.2, &args.3, &args.4])
                .output()
                .expect("python runs")
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "the client failed: {}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }

    async fn stop(self) {
        self.server.stop().await;
        let os = Arc::try_unwrap(self.os).ok().expect("the server let go of the AgentOS");
        os.shutdown().await.unwrap();
    }
}

/// A blocking HTTP call (on the blocking pool): status and body.
async fn http(
    method: &'static str,
    url: String,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let mut response = match (method, body) {
            ("GET", _) => {
                let mut r = agent.get(&url);
                for (k, v) in &headers {
                    r = r.header(*k, v);
                }
                r.call()
            }
            (_, body) => {
                let mut r = agent.post(&url).header("content-type", "application/json");
                for (k, v) in &headers {
                    r = r.header(*k, v);
                }
                r.send(body.unwrap_or_default())
            }
        }
        .expect("the server answers");
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .unwrap();
        (status, text)
    })
    .await
    .unwrap()
}

/// Waits until the kernel holds no sequence (every generation's KV released).
async fn kernel_idle(os: &AgentOS) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let stats = agentos_cli::client::engine_stats(os).await.unwrap();
        if stats.sequences == 0 && stats.running_sequences == 0 && stats.waiting_requests == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openai_client_chats_streams_calls_tools_and_gets_json() {
    let served = Served::start(ServeOptions::default()).await;
    let out = served.client("basic").await;

    let chat = &out["chat"];
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["role"], "assistant");
    let text = chat["content"].as_str().unwrap();
    // An answer about the question asked (the default Q4_1 model, computed on its blocks,
    // starts "L'Étoile, ..."; with f16 weights, "The capital of France is Paris.").
    assert!(text.contains("Paris") || text.contains("France"), "{text}");
    assert!(chat["usage"]["prompt_tokens"].as_u64().unwrap() > 5);
    assert_eq!(
        chat["usage"]["total_tokens"].as_u64(),
        Some(chat["usage"]["prompt_tokens"].as_u64().unwrap() + chat["usage"]["completion_tokens"].as_u64().unwrap())
    );

    // Greedy: the stream carries the same text as the plain reply, role first, usage last.
    let stream = &out["stream"];
    assert_eq!(stream["first_role"], "assistant");
    assert_eq!(stream["text"], chat["content"], "{out}");
    assert_eq!(stream["finish_reasons"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(stream["usage"]["completion_tokens"], chat["usage"]["completion_tokens"]);
    assert_eq!(stream["objects"], json!(["chat.completion.chunk"]));

    let parsed = &out["json"]["parsed"];
    assert!(parsed["city"].is_string() && parsed["country"].is_string(), "{out}");

    let tools = &out["tools"];
    assert_eq!(tools["finish_reason"], "tool_calls", "{out}");
    assert_eq!(tools["name"], "add");
    assert!(
        tools["arguments"]["a"].is_i64() && tools["arguments"]["b"].is_i64(),
        "{out}"
    );
    let follow = &tools["follow"];
    let answered = follow["content"].as_str().is_some_and(|c| !c.trim().is_empty());
    let called_again = follow["tool_calls"].as_array().is_some_and(|c| !c.is_empty());
    assert!(answered || called_again, "the reply after the result is empty: {out}");

    assert!(!out["agent"]["text"].as_str().unwrap().is_empty(), "{out}");
    assert!(out["agent"]["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert_eq!(out["unknown_model"]["status"], 404, "{out}");

    assert!(kernel_idle(&served.os).await);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_streams_at_once_all_finish_and_a_client_that_hangs_up_frees_its_kv() {
    let served = Served::start(ServeOptions::default()).await;
    let out = served.client("concurrent").await;
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 16);
    for r in results {
        assert!(r["error"].is_null(), "{r}");
        assert!(r["finish_reason"].is_string(), "{r}");
        assert!(r["completion_tokens"].as_u64().unwrap() > 0, "{r}");
    }
    assert!(kernel_idle(&served.os).await);

    let before = served.server.state.metrics().cancelled_count();
    let out = served.client("disconnect").await;
    assert_eq!(out["chunks_read"], 4);
    // The story would run to 2000 tokens; the hang-up cancels it and its sequence goes.
    assert!(kernel_idle(&served.os).await, "the cancelled generation still holds KV");
    assert_eq!(served.server.state.metrics().cancelled_count(), before + 1);
    assert_eq!(served.server.state.metrics().open_streams(), 0);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_are_openai_error_objects_with_the_right_status() {
    let served = Served::start(ServeOptions {
        api_key: Some("secret".into()),
        max_body_bytes: 4096,
        ..ServeOptions::default()
    })
    .await;
    let url = served.url();
    let auth = || vec![("authorization", "Bearer secret".to_string())];
    let chat = format!("{url}/v1/chat/completions");
    let model = served.server.state.model_id();

    let (status, body) = http("GET", format!("{url}/health"), vec![], None).await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = http("GET", format!("{url}/v1/models"), vec![], None).await;
    assert_eq!(status, 401, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "invalid_api_key");
    let wrong = vec![("authorization", "Bearer secreT".to_string())];
    assert_eq!(http("GET", format!("{url}/v1/models"), wrong, None).await.0, 401);

    let (status, body) = http("GET", format!("{url}/v1/models"), auth(), None).await;
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![model.as_str(), "agent:Helper"]);

    let (status, body) = http("POST", chat.clone(), auth(), Some(b"{not json".to_vec())).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["type"],
        "invalid_request_error"
    );

    let big = json!({"model": model, "messages": [{"role": "user", "content": "x".repeat(5000)}]});
    let (status, body) = http("POST", chat.clone(), auth(), Some(big.to_string().into_bytes())).await;
    assert_eq!(status, 413, "{body}");

    let no_messages = json!({"model": model});
    assert_eq!(
        http("POST", chat.clone(), auth(), Some(no_messages.to_string().into_bytes()))
            .await
            .0,
        400
    );
    let n2 = json!({"model": model, "n": 2, "messages": [{"role": "user", "content": "hi"}]});
    let (status, body) = http("POST", chat.clone(), auth(), Some(n2.to_string().into_bytes())).await;
    assert_eq!(status, 400);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["param"], "n");
    let nobody = json!({"model": "agent:Nobody", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        http("POST", chat.clone(), auth(), Some(nobody.to_string().into_bytes()))
            .await
            .0,
        404
    );

    // The agent route answers non-streaming too, and its tokens show in the agent's metrics.
    let ask = json!({"model": "agent:Helper", "messages": [{"role": "user", "content": "Name a colour."}]});
    let (status, body) = http("POST", chat.clone(), auth(), Some(ask.to_string().into_bytes())).await;
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert!(!reply["choices"][0]["message"]["content"].as_str().unwrap().is_empty());

    let (status, metrics) = http("GET", format!("{url}/metrics"), vec![], None).await;
    assert_eq!(status, 200);
    for name in [
        "agentos_up 1",
        "agentos_http_chat_requests_total",
        "agentos_kernel_generated_tokens_total",
        "agentos_kv_used_blocks",
        "agentos_kernel_preemptions_total",
        "agentos_agent_tokens_total{agent=\"Helper\"}",
        "agentos_memory_page_faults_total",
        "agentos_sync_pulses_total",
        "agentos_blackboard_entries",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    let generated: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("agentos_kernel_generated_tokens_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(generated > 0);

    let (status, body) = http("GET", format!("{url}/v1/agents"), auth(), None).await;
    assert_eq!(status, 200);
    let agents: Vec<AgentInfo> = serde_json::from_str(&body).unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].turns, 1);
    served.stop().await;
}
