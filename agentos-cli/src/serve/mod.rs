//! `agentos serve`: an OpenAI-compatible HTTP API over one AgentOS.
//!
//! - `POST /v1/chat/completions`: `model` is the served model (any name `GET /v1/models`
//!   lists) for a plain completion, or `agent:NAME` to give the last user message to that agent
//!   as a task (its system prompt, memory, tools, sampling and priority apply; the other
//!   messages are not used: the agent keeps its own context). Streaming (SSE) and not;
//!   `tools`/`tool_choice` through the kernel's constrained decoding; `response_format` with a
//!   JSON schema. Every request is a kernel request, batched with all others in flight; a
//!   client that disconnects cancels its generation, which frees its KV blocks.
//! - `GET /v1/models`, `GET /health` (503 until the model is loaded), `GET /metrics`
//!   (Prometheus text), and, for `agentos ps` / `agentos stats`, `GET /v1/agents` and
//!   `GET /v1/stats`.
//!
//! Errors are OpenAI error objects; a stream that fails after its first chunk ends with one
//! as a data line.

mod metrics;
pub mod openai;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use agentos_kernel::cli::ModelArgs;
use agentos_kernel::{
    FinishReason, GenerateRequest, GenerationEvent, GenerationSummary, KernelMsg, ModelInfo, Prompt, RequestId,
};
use agentos_runtime::syscall::wire::{CallFilter, parse_call, split_call};
use agentos_runtime::{AgentHandle, AgentOS, RuntimeConfig, RuntimeError, StreamEvent, TaskId};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::Stream;
use ractor::rpc::CallResult;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::error::{CliError, Result};
use crate::team::{Team, TeamSpec};
use metrics::Metrics;
use openai::{BadRequest, ChatRequest, Planned};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// A team file (TOML, see `agentos run --help`): its agents answer `model: "agent:NAME"`
    #[arg(long, value_name = "FILE")]
    pub team: Option<PathBuf>,
    /// Require `Authorization: Bearer KEY` on /v1/* (also read from AGENTOS_API_KEY)
    #[arg(long, env = "AGENTOS_API_KEY", value_name = "KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest request body, in bytes
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    pub max_body_bytes: usize,
    /// Most tokens a completion generates when its request sets no max_tokens (small models
    /// sampled at OpenAI's default temperature of 1 can otherwise ramble to the end of the context)
    #[arg(long, default_value_t = 512, value_name = "TOKENS")]
    pub default_max_tokens: usize,
    #[command(flatten)]
    pub model: ModelArgs,
}

/// What a server is started with besides its AgentOS.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    /// `max_tokens` of a request that sets none.
    pub default_max_tokens: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            api_key: None,
            max_body_bytes: 4 << 20,
            default_max_tokens: 512,
        }
    }
}

/// `agentos serve`: listens at once (`/health` says 503 while the model loads), loads the
/// model, spawns the team, serves until Ctrl-C.
pub async fn run(args: ServeArgs) -> Result<()> {
    let listener = TcpListener::bind((args.host.as_str(), args.port)).await.map_err(|e| {
        CliError::new(format!(
            "cannot listen on {}:{} ({e}); pick another --port",
            args.host, args.port
        ))
    })?;
    let addr = listener.local_addr()?;
    let state = AppState::new(ServeOptions {
        api_key: args.api_key.clone(),
        max_body_bytes: args.max_body_bytes,
        default_max_tokens: args.default_max_tokens.max(1),
    });
    let team = match &args.team {
        Some(path) => Some(TeamSpec::load(path)?),
        None => None,
    };
    // The model loads while the server already answers (503 on /health until it is ready);
    // a load that fails stops the server with its error.
    let (load_failed, load_failure) = tokio::sync::oneshot::channel::<String>();
    let loader = {
        let state = state.clone();
        let model = args.model.clone();
        tokio::spawn(async move {
            match load(&model, team.as_ref()).await {
                Ok(os) => {
                    let os = Arc::new(os);
                    state.set_ready(os.clone()).await;
                    eprintln!("agentos: serving {} at http://{addr}/v1", state.model_id());
                    Some(os)
                }
                Err(e) => {
                    state.set_failed(e.to_string());
                    let _ = load_failed.send(e.to_string());
                    None
                }
            }
        })
    };
    eprintln!("agentos: listening on http://{addr} (the model is loading; /health says when it is ready)");
    let failure = Arc::new(std::sync::Mutex::new(None));
    let router = router(state.clone());
    let stop = {
        let failure = failure.clone();
        async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                Ok(reason) = load_failure => {
                    *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
                }
            }
        }
    };
    axum::serve(listener, router).with_graceful_shutdown(stop).await?;
    if let Some(reason) = failure.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(CliError::new(reason));
    }
    // Ctrl-C while the model was still loading: nothing to shut down gracefully yet.
    if !loader.is_finished() {
        loader.abort();
        return Ok(());
    }
    // The state's copy of the AgentOS goes with it; streams still finishing hold theirs a
    // little longer.
    drop(state);
    if let Ok(Some(mut os)) = loader.await {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Arc::try_unwrap(os) {
                Ok(os) => {
                    os.shutdown().await?;
                    break;
                }
                Err(shared) if tokio::time::Instant::now() < deadline => {
                    os = shared;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => {
                    eprintln!("agentos: replies still running after 10 s; exiting without waiting for them");
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Loads the model and spawns the team (a team that fails to start shuts the AgentOS down).
async fn load(model: &ModelArgs, team: Option<&TeamSpec>) -> Result<AgentOS> {
    let os = crate::boot::start(model, RuntimeConfig::default()).await?;
    if let Some(team) = team
        && let Err(e) = Team::spawn(&os, team).await
    {
        let _ = os.shutdown().await;
        return Err(e);
    }
    Ok(os)
}

/// A server running in this process (tests, benchmarks).
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: AppState,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// Serves `os` on `listener` in a background task.
    pub async fn start(os: Arc<AgentOS>, listener: TcpListener, options: ServeOptions) -> Result<RunningServer> {
        let addr = listener.local_addr()?;
        let state = AppState::new(options);
        state.set_ready(os).await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let router = router(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(RunningServer {
            addr,
            state,
            shutdown: Some(tx),
            task,
        })
    }

    /// Stops accepting connections and waits for the open ones to finish; when it returns,
    /// the server holds no reference to the AgentOS any more (within 10 s).
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
        // axum's serve future ends when every connection task has signalled its end, which
        // each does just before it drops its copy of the router (and of this state).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&self.state.inner) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(list_models))
        .route("/v1/agents", get(list_agents))
        .route("/v1/stats", get(stats))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "no such route",
                None,
                None,
            )
        })
        .with_state(state)
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    options: ServeOptions,
    os: OnceLock<Ready>,
    failed: OnceLock<String>,
    metrics: Metrics,
    next_id: AtomicU64,
}

struct Ready {
    os: Arc<AgentOS>,
    info: ModelInfo,
    model_id: String,
}

impl AppState {
    fn new(options: ServeOptions) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                options,
                os: OnceLock::new(),
                failed: OnceLock::new(),
                metrics: Metrics::default(),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    async fn set_ready(&self, os: Arc<AgentOS>) {
        let info = match crate::client::model_info(&os).await {
            Ok(info) => info,
            Err(e) => {
                self.set_failed(e.to_string());
                return;
            }
        };
        let model_id = model_id(&info);
        let _ = self.inner.os.set(Ready { os, info, model_id });
    }

    fn set_failed(&self, reason: String) {
        let _ = self.inner.failed.set(reason);
    }

    /// The id clients use for the served model (`GET /v1/models`).
    pub fn model_id(&self) -> String {
        self.inner.os.get().map(|r| r.model_id.clone()).unwrap_or_default()
    }

    /// The server's request counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    fn ready(&self) -> std::result::Result<&Ready, ApiError> {
        match self.inner.os.get() {
            Some(ready) => Ok(ready),
            None => Err(match self.inner.failed.get() {
                Some(reason) => api_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    &format!("the model failed to load: {reason}"),
                    None,
                    Some("model_load_failed"),
                ),
                None => api_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "the model is still loading; retry shortly",
                    None,
                    Some("model_loading"),
                ),
            }),
        }
    }

    fn authorize(&self, headers: &HeaderMap) -> std::result::Result<(), ApiError> {
        let Some(key) = &self.inner.options.api_key else {
            return Ok(());
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(given) if constant_time_eq(given.as_bytes(), key.as_bytes()) => Ok(()),
            _ => Err(api_error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "missing or wrong API key: send `Authorization: Bearer KEY`",
                None,
                Some("invalid_api_key"),
            )),
        }
    }

    fn next_id(&self) -> String {
        format!("chatcmpl-{:016x}", self.inner.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// Compares without stopping at the first difference (the key is not guessable by timing).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The model's id: its file or directory name, without `.gguf`.
fn model_id(info: &ModelInfo) -> String {
    let name = std::path::Path::new(&info.name)
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| info.name.clone());
    let name = name.strip_suffix(".gguf").unwrap_or(&name).to_string();
    if name.is_empty() { "agentos".into() } else { name }
}

/// An OpenAI error object with its HTTP status.
#[derive(Debug, Clone)]
struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        (self.status, axum::Json(body)).into_response()
    }
}

fn api_error(
    status: StatusCode,
    kind: &'static str,
    message: &str,
    param: Option<&'static str>,
    code: Option<&'static str>,
) -> ApiError {
    ApiError {
        status,
        kind,
        message: message.to_string(),
        param,
        code,
    }
}

/// An OpenAI error object with `status`, as a response.
fn error(
    status: StatusCode,
    kind: &'static str,
    message: &str,
    param: Option<&'static str>,
    code: Option<&'static str>,
) -> Response {
    api_error(status, kind, message, param, code).into_response()
}

fn bad_request(e: BadRequest) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        &e.message,
        e.param,
        None,
    )
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn health(State(state): State<AppState>) -> Response {
    match state.ready() {
        Ok(ready) => match ready.os.down_reason() {
            None => axum::Json(json!({"status": "ok", "model": ready.model_id})).into_response(),
            Some(reason) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                &reason,
                None,
                Some("down"),
            ),
        },
        Err(e) => e.into_response(),
    }
}

async fn list_models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = state.authorize(&headers) {
        return r.into_response();
    }
    let ready = match state.ready() {
        Ok(ready) => ready,
        Err(r) => return r.into_response(),
    };
    let created = now_seconds();
    let mut data = vec![json!({"id": ready.model_id, "object": "model", "created": created, "owned_by": "agentos"})];
    for agent in ready.os.agents() {
        data.push(json!({"id": format!("agent:{}", agent.name), "object": "model", "created": created, "owned_by": "agentos"}));
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn list_agents(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = state.authorize(&headers) {
        return r.into_response();
    }
    match state.ready() {
        Ok(ready) => axum::Json(ready.os.agents()).into_response(),
        Err(r) => r.into_response(),
    }
}

async fn stats(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = state.authorize(&headers) {
        return r.into_response();
    }
    let ready = match state.ready() {
        Ok(ready) => ready,
        Err(r) => return r.into_response(),
    };
    match crate::client::StatsReport::collect(&ready.os).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            &e.to_string(),
            None,
            None,
        ),
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let text = match state.inner.os.get() {
        Some(ready) => state.inner.metrics.render(Some(&ready.os)).await,
        None => state.inner.metrics.render(None).await,
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Reads the body up to the limit: 413 past it, 400 when it is not a chat request.
async fn read_request(state: &AppState, body: Body) -> std::result::Result<ChatRequest, ApiError> {
    let limit = state.inner.options.max_body_bytes;
    let bytes: Bytes = match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                || e.to_string().contains("length limit");
            return Err(match too_large {
                true => api_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    &format!("the request body is larger than {limit} bytes"),
                    None,
                    Some("request_too_large"),
                ),
                false => api_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    &format!("cannot read the body: {e}"),
                    None,
                    None,
                ),
            });
        }
    };
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &format!("the body is not JSON: {e}"),
            None,
            None,
        )
    })?;
    serde_json::from_value(value).map_err(|e| {
        api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            &format!("not a chat completion request: {e}"),
            None,
            None,
        )
    })
}

async fn chat_completions(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    if let Err(r) = state.authorize(&headers) {
        return r.into_response();
    }
    state.metrics().request_started();
    let request = match read_request(&state, body).await {
        Ok(request) => request,
        Err(r) => {
            state.metrics().request_failed();
            return r.into_response();
        }
    };
    let ready = match state.ready() {
        Ok(ready) => ready,
        Err(r) => {
            state.metrics().request_failed();
            return r.into_response();
        }
    };
    let response = match request.model.strip_prefix("agent:") {
        Some(name) => match ready.os.agent(name) {
            Some(agent) => agent_completion(&state, agent, request).await,
            None => error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                &format!("no agent named `{name}`; GET /v1/models lists them"),
                Some("model"),
                Some("model_not_found"),
            ),
        },
        None if request.model == ready.model_id || request.model.is_empty() => {
            model_completion(&state, ready, request).await
        }
        None => error(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            &format!(
                "model `{}` is not served here; GET /v1/models lists what is",
                request.model
            ),
            Some("model"),
            Some("model_not_found"),
        ),
    };
    if !response.status().is_success() {
        state.metrics().request_failed();
    }
    response
}

/// A plain completion on the served model.
async fn model_completion(state: &AppState, ready: &Ready, request: ChatRequest) -> Response {
    let planned = match request.plan(ready.info.template_has_tools_branch) {
        Ok(planned) => planned,
        Err(e) => return bad_request(e),
    };
    let Some(kernel) = ready.os.kernel() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the kernel is not running",
            None,
            None,
        );
    };
    let generate = kernel_request(&planned, state.inner.options.default_max_tokens);
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = kernel
        .call(
            |reply| KernelMsg::Generate {
                request: generate,
                events: Box::new(tx),
                reply,
            },
            Some(Duration::from_secs(30)),
        )
        .await;
    let id = match queued {
        Ok(CallResult::Success(Ok(id))) => id,
        Ok(CallResult::Success(Err(e))) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &e.to_string(),
                Some("messages"),
                None,
            );
        }
        Ok(_) | Err(_) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "the kernel did not take the request",
                None,
                None,
            );
        }
    };
    let generation = KernelGeneration {
        id,
        rx,
        kernel,
        done: false,
        state: state.clone(),
    };
    let meta = ReplyMeta {
        id: state.next_id(),
        model: ready.model_id.clone(),
        created: now_seconds(),
        tools: planned.tools_active,
        include_usage: request.stream_options.as_ref().is_some_and(|o| o.include_usage),
    };
    match request.stream {
        false => model_reply(state, generation, meta).await,
        true => model_stream(state, generation, meta),
    }
}

fn kernel_request(planned: &Planned, default_max_tokens: usize) -> GenerateRequest {
    let prompt = match (planned.template_tools.is_empty(), planned.continue_last) {
        (false, _) => Prompt::ChatWithTools {
            messages: planned.messages.clone(),
            tools: planned.template_tools.clone(),
        },
        (true, true) => Prompt::ContinueChat(planned.messages.clone()),
        (true, false) => Prompt::Chat(planned.messages.clone()),
    };
    GenerateRequest {
        prompt,
        // The kernel also stops where the model's context is full.
        max_tokens: planned.max_tokens.unwrap_or(default_max_tokens),
        sampling: planned.sampling.clone(),
        stop: planned.stop.clone(),
        ignore_eos: false,
        priority: GenerateRequest::DEFAULT_PRIORITY,
        constraint: planned.constraint.clone(),
    }
}

/// A generation in the kernel; dropped before its end, it is cancelled (KV freed).
struct KernelGeneration {
    id: RequestId,
    rx: mpsc::UnboundedReceiver<GenerationEvent>,
    kernel: ractor::ActorRef<KernelMsg>,
    done: bool,
    /// Counts the cancellation as a client disconnect.
    state: AppState,
}

impl KernelGeneration {
    /// The generation ended (finished or failed): nothing to cancel.
    fn finished(&mut self) {
        self.done = true;
    }
}

impl Drop for KernelGeneration {
    fn drop(&mut self) {
        // Dropping the receiver alone would stop it at its next token; cancelling now also
        // takes a request that is still waiting for a slot out of the queue.
        if !self.done {
            let _ = self.kernel.cast(KernelMsg::Cancel(self.id));
            self.state.metrics().cancelled();
        }
    }
}

/// What every chunk and reply repeats.
struct ReplyMeta {
    id: String,
    model: String,
    created: u64,
    tools: bool,
    include_usage: bool,
}

/// The reply's text split into content and tool calls.
fn finish_text(text: &str, tools: bool, call_id: &str) -> (Option<String>, Vec<Value>) {
    if tools
        && let Some((before, body)) = split_call(text)
        && let Ok((name, arguments)) = parse_call(body)
    {
        let content = before.trim();
        let call = json!({
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": arguments.to_string()},
        });
        return ((!content.is_empty()).then(|| content.to_string()), vec![call]);
    }
    (Some(text.to_string()), Vec::new())
}

fn finish_reason(reason: FinishReason, called: bool) -> &'static str {
    match (called, reason) {
        (true, _) => "tool_calls",
        (false, FinishReason::MaxTokens | FinishReason::ContextFull) => "length",
        (false, _) => "stop",
    }
}

fn usage(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

async fn model_reply(state: &AppState, mut generation: KernelGeneration, meta: ReplyMeta) -> Response {
    let summary: GenerationSummary = loop {
        match generation.rx.recv().await {
            Some(GenerationEvent::Token { .. }) => {}
            Some(GenerationEvent::Finished { summary, .. }) => break summary,
            Some(GenerationEvent::Failed(e)) => {
                generation.finished();
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    &e.to_string(),
                    None,
                    None,
                );
            }
            None => {
                generation.finished();
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "the kernel went away",
                    None,
                    None,
                );
            }
        }
    };
    generation.finished();
    let (content, calls) = finish_text(&summary.text, meta.tools, &format!("call_{}", meta.id));
    let mut message = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls.clone());
    }
    state
        .metrics()
        .request_done(summary.prompt_tokens, summary.tokens.len(), summary.time_to_first_token);
    axum::Json(json!({
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(summary.finish_reason, !calls.is_empty()), "logprobs": null}],
        "usage": usage(summary.prompt_tokens, summary.tokens.len(), summary.cached_prompt_tokens),
    }))
    .into_response()
}

fn chunk(meta: &ReplyMeta, delta: Value, finish: Option<&str>) -> Event {
    data(json!({
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
    }))
}

fn usage_chunk(meta: &ReplyMeta, usage: Value) -> Event {
    data(json!({
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "choices": [],
        "usage": usage,
    }))
}

fn data(value: Value) -> Event {
    Event::default().data(value.to_string())
}

fn stream_error(message: &str) -> Event {
    data(json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}}))
}

/// An SSE response fed by a task; when the client goes away the task's sends fail and it
/// stops (dropping the generation cancels it).
fn sse(rx: mpsc::Receiver<Event>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok::<_, Infallible>(event), rx))
    });
    sse_response(stream)
}

fn sse_response(stream: impl Stream<Item = std::result::Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

fn model_stream(state: &AppState, mut generation: KernelGeneration, meta: ReplyMeta) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(64);
    let state = state.clone();
    state.metrics().stream_opened();
    tokio::spawn(async move {
        let _open = StreamGauge(state.clone());
        let send = |event: Event| {
            let tx = tx.clone();
            async move { tx.send(event).await.is_ok() }
        };
        // A client that goes away ends this task; dropping `generation` cancels it (and counts
        // the disconnect).
        if !send(chunk(&meta, json!({"role": "assistant", "content": ""}), None)).await {
            return;
        }
        let mut filter = CallFilter::default();
        loop {
            let event = tokio::select! {
                event = generation.rx.recv() => event,
                () = tx.closed() => return,
            };
            match event {
                Some(GenerationEvent::Token { text, .. }) => {
                    let shown = if meta.tools { filter.push(&text) } else { text };
                    if !shown.is_empty() && !send(chunk(&meta, json!({"content": shown}), None)).await {
                        return;
                    }
                }
                Some(GenerationEvent::Finished { tail, summary }) => {
                    generation.finished();
                    let mut shown = if meta.tools { filter.push(&tail) } else { tail };
                    if meta.tools {
                        shown.push_str(&filter.finish());
                    }
                    if !shown.is_empty() {
                        let _ = send(chunk(&meta, json!({"content": shown}), None)).await;
                    }
                    let (_, calls) = finish_text(&summary.text, meta.tools, &format!("call_{}", meta.id));
                    // A call the model opened but did not finish (cut by max_tokens): its text
                    // was held back; it goes out as text, as the non-streaming reply has it.
                    if calls.is_empty()
                        && let Some(start) = summary.text.find(agentos_runtime::syscall::wire::TOOL_CALL_OPEN)
                        && meta.tools
                    {
                        let _ = send(chunk(&meta, json!({"content": &summary.text[start..]}), None)).await;
                    }
                    let called = !calls.is_empty();
                    if called {
                        let indexed: Vec<Value> = calls
                            .into_iter()
                            .enumerate()
                            .map(|(i, mut c)| {
                                c["index"] = json!(i);
                                c
                            })
                            .collect();
                        let _ = send(chunk(&meta, json!({"tool_calls": indexed}), None)).await;
                    }
                    let _ = send(chunk(
                        &meta,
                        json!({}),
                        Some(finish_reason(summary.finish_reason, called)),
                    ))
                    .await;
                    if meta.include_usage {
                        let u = usage(
                            summary.prompt_tokens,
                            summary.tokens.len(),
                            summary.cached_prompt_tokens,
                        );
                        let _ = send(usage_chunk(&meta, u)).await;
                    }
                    state.metrics().request_done(
                        summary.prompt_tokens,
                        summary.tokens.len(),
                        summary.time_to_first_token,
                    );
                    let _ = send(Event::default().data("[DONE]")).await;
                    return;
                }
                Some(GenerationEvent::Failed(e)) => {
                    generation.finished();
                    state.metrics().request_failed();
                    let _ = send(stream_error(&e.to_string())).await;
                    return;
                }
                None => {
                    generation.finished();
                    state.metrics().request_failed();
                    let _ = send(stream_error("the kernel went away")).await;
                    return;
                }
            }
        }
    });
    sse(rx)
}

/// Counts an open stream in the metrics for as long as it lives.
struct StreamGauge(AppState);

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.metrics().stream_closed();
    }
}

/// A task given to an agent; dropped before its end (the client went away), it is cancelled.
struct AgentTask {
    agent: AgentHandle,
    task: TaskId,
    done: bool,
    state: AppState,
}

impl AgentTask {
    /// The task ended: nothing to cancel.
    fn finished(&mut self) {
        self.done = true;
    }
}

impl Drop for AgentTask {
    fn drop(&mut self) {
        if !self.done {
            self.state.metrics().cancelled();
            let agent = self.agent.clone();
            let task = self.task;
            tokio::spawn(async move {
                let _ = agent.cancel(task).await;
            });
        }
    }
}

/// `model: "agent:NAME"`: the last user message is the agent's task.
async fn agent_completion(state: &AppState, agent: AgentHandle, request: ChatRequest) -> Response {
    let task = match request.agent_task() {
        Ok(task) => task,
        Err(e) => return bad_request(e),
    };
    let stream = match agent.stream(task).await {
        Ok(stream) => stream,
        Err(e) => return runtime_error(&e),
    };
    let mut guard = AgentTask {
        agent: agent.clone(),
        task: stream.task_id(),
        done: false,
        state: state.clone(),
    };
    let meta = ReplyMeta {
        id: state.next_id(),
        model: request.model.clone(),
        created: now_seconds(),
        tools: false,
        include_usage: request.stream_options.as_ref().is_some_and(|o| o.include_usage),
    };
    if !request.stream {
        let response = stream.response().await;
        guard.finished();
        return match response {
            Ok(r) => {
                state
                    .metrics()
                    .request_done(r.prompt_tokens, r.completion_tokens, r.time_to_first_token);
                axum::Json(json!({
                    "id": meta.id,
                    "object": "chat.completion",
                    "created": meta.created,
                    "model": meta.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": r.text}, "finish_reason": finish_reason(r.finish_reason, false), "logprobs": null}],
                    "usage": usage(r.prompt_tokens, r.completion_tokens, 0),
                }))
                .into_response()
            }
            Err(e) => runtime_error(&e),
        };
    }
    let (tx, rx) = mpsc::channel::<Event>(64);
    let state = state.clone();
    state.metrics().stream_opened();
    tokio::spawn(async move {
        use futures::StreamExt;
        let _open = StreamGauge(state.clone());
        let mut stream = stream;
        let mut guard = guard;
        // A client that goes away ends this task; dropping `guard` cancels the agent's task
        // (and counts the disconnect).
        if tx
            .send(chunk(&meta, json!({"role": "assistant", "content": ""}), None))
            .await
            .is_err()
        {
            return;
        }
        let mut sent_text = false;
        loop {
            let event = tokio::select! {
                event = stream.next() => event,
                () = tx.closed() => return,
            };
            let Some(event) = event else {
                let _ = tx.send(stream_error("the agent stopped")).await;
                return;
            };
            match event {
                StreamEvent::Token(text) => {
                    sent_text = true;
                    if tx.send(chunk(&meta, json!({"content": text}), None)).await.is_err() {
                        return;
                    }
                }
                // The agent failed and its task starts over: the text sent is void, and a
                // stream cannot take it back.
                StreamEvent::Restarted if sent_text => {
                    state.metrics().request_failed();
                    let _ = tx
                        .send(stream_error("the agent was restarted during the reply; ask again"))
                        .await;
                    return;
                }
                StreamEvent::Done(outcome) => {
                    guard.finished();
                    match *outcome {
                        Ok(r) => {
                            let _ = tx
                                .send(chunk(&meta, json!({}), Some(finish_reason(r.finish_reason, false))))
                                .await;
                            if meta.include_usage {
                                let _ = tx
                                    .send(usage_chunk(&meta, usage(r.prompt_tokens, r.completion_tokens, 0)))
                                    .await;
                            }
                            state
                                .metrics()
                                .request_done(r.prompt_tokens, r.completion_tokens, r.time_to_first_token);
                            let _ = tx.send(Event::default().data("[DONE]")).await;
                        }
                        Err(e) => {
                            state.metrics().request_failed();
                            let _ = tx.send(stream_error(&e.to_string())).await;
                        }
                    }
                    return;
                }
                // The agent's own tool steps are not part of the OpenAI reply.
                StreamEvent::ToolCall { .. } | StreamEvent::ToolResult { .. } | StreamEvent::Restarted => {}
            }
        }
    });
    sse(rx)
}

fn runtime_error(e: &RuntimeError) -> Response {
    let status = match e {
        RuntimeError::ShuttingDown | RuntimeError::SystemDown { .. } | RuntimeError::KernelLost => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        RuntimeError::AgentStopped { .. } => StatusCode::NOT_FOUND,
        RuntimeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, "server_error", &e.to_string(), None, None)
}
