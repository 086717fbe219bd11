//! MCP servers as tool providers: their tools become tools an agent can call by name.
//!
//! An [`McpServer`] names a program that speaks the Model Context Protocol on its standard input
//! and output (the stdio transport of the official Rust SDK, `rmcp`). [`AgentOsBuilder::mcp_server`]
//! (crate::AgentOsBuilder::mcp_server) starts it with the AgentOS, lists its tools and offers
//! each one like any user [`Tool`]: the tool's input schema is what the prompt shows, what its
//! arguments are checked against and what the call grammar constrains the model to. A result
//! the server marks `isError` reaches the model as the call's error.
//!
//! Each server is watched by a task that restarts it when its process ends (after 0.2 s,
//! doubling to at most 10 s while it keeps failing to start); calls made while it is down fail
//! at once with an error that says so, and succeed again once it is back. Its standard error is
//! logged line by line (`tracing`, target `agentos_runtime::mcp`).

use std::borrow::Cow;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{Peer, RoleClient, ServiceExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::syscall::tool::{Tool, ToolFuture};

/// First wait before a restart; it doubles while starts keep failing.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// An MCP server to start as a child process and mount as a tool provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpServer {
    /// Names the server in logs, errors and [`AgentOS::mcp_servers`](crate::AgentOS::mcp_servers).
    pub name: String,
    /// The program to run (no shell is involved).
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Extra environment variables for the server.
    pub env: Vec<(String, String)>,
    /// Its working directory (default: the AgentOS process's own).
    pub cwd: Option<PathBuf>,
    /// Put before each of its tool names (e.g. `"fs_"`), to keep two servers' tools apart.
    pub tool_prefix: String,
    /// How long starting it (spawn, handshake, listing its tools) may take. Default 30 s.
    pub start_timeout: Duration,
}

impl McpServer {
    /// A server started as `program` (found on `PATH` when it has no directory part).
    pub fn stdio(name: impl Into<String>, program: impl Into<PathBuf>) -> Self {
        McpServer {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            tool_prefix: String::new(),
            start_timeout: Duration::from_secs(30),
        }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    pub fn tool_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.tool_prefix = prefix.into();
        self
    }

    pub fn start_timeout(mut self, timeout: Duration) -> Self {
        self.start_timeout = timeout;
        self
    }
}

/// A mounted server's state, as [`AgentOS::mcp_servers`](crate::AgentOS::mcp_servers) lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpServerInfo {
    pub name: String,
    /// The server's process id while it runs.
    pub pid: Option<u32>,
    /// Whether calls can reach it now.
    pub running: bool,
    /// How many times it was started again after its process ended.
    pub restarts: u32,
    /// The names its tools are offered under (with the prefix).
    pub tools: Vec<String>,
}

/// A live connection: the peer calls go through and the process it talks to.
struct Live {
    peer: Peer<RoleClient>,
    pid: Option<u32>,
    /// Ends this connection (and so its process).
    cancel: CancellationToken,
}

/// One mounted server: its current connection, replaced by the watcher after each restart.
pub(crate) struct McpConnection {
    config: McpServer,
    live: Mutex<Option<Live>>,
    restarts: AtomicU32,
    stopping: AtomicBool,
    tools: Mutex<Vec<String>>,
}

impl McpConnection {
    /// Starts `config`'s server and returns the connection and its tools, ready to register.
    pub async fn start(config: McpServer) -> Result<(Arc<McpConnection>, Vec<Arc<dyn Tool>>), String> {
        let started = connect(&config).await?;
        let listed = tokio::time::timeout(config.start_timeout, started.running.list_all_tools())
            .await
            .map_err(|_| format!("it did not list its tools within {:?}", config.start_timeout))?
            .map_err(|e| format!("it could not list its tools: {e}"))?;
        let connection = Arc::new(McpConnection {
            config: config.clone(),
            live: Mutex::new(None),
            restarts: AtomicU32::new(0),
            stopping: AtomicBool::new(false),
            tools: Mutex::new(Vec::new()),
        });
        let mut tools: Vec<Arc<dyn Tool>> = Vec::new();
        let mut names = Vec::new();
        for tool in listed {
            let name = format!("{}{}", config.tool_prefix, tool.name);
            names.push(name.clone());
            tools.push(Arc::new(McpTool {
                server: connection.clone(),
                name,
                remote: tool.name.to_string(),
                description: tool
                    .description
                    .map(|d| d.to_string())
                    .or(tool.title)
                    .unwrap_or_default(),
                parameters: Value::Object((*tool.input_schema).clone()),
            }));
        }
        *connection.tools.lock().unwrap_or_else(|e| e.into_inner()) = names;
        connection.watch(started);
        Ok((connection, tools))
    }

    pub fn info(&self) -> McpServerInfo {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        McpServerInfo {
            name: self.config.name.clone(),
            pid: live.as_ref().and_then(|l| l.pid),
            running: live.is_some(),
            restarts: self.restarts.load(Ordering::Relaxed),
            tools: self.tools.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    /// Ends the server for good (its process is closed, then killed if it lingers).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(live) = self.live.lock().unwrap_or_else(|e| e.into_inner()).take() {
            live.cancel.cancel();
        }
    }

    fn peer(&self) -> Option<Peer<RoleClient>> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|l| l.peer.clone())
    }

    /// Publishes `service` and watches it: when it ends (the process died or closed its
    /// output), the server is started again, until `stop`.
    fn watch(self: &Arc<Self>, started: Started) {
        let connection = self.clone();
        tokio::spawn(async move {
            let mut service = Some(started);
            loop {
                let Some(Started { running, pid, cancel }) = service.take() else {
                    break;
                };
                *connection.live.lock().unwrap_or_else(|e| e.into_inner()) = Some(Live {
                    peer: running.peer().clone(),
                    pid,
                    cancel,
                });
                if connection.stopping.load(Ordering::SeqCst) {
                    connection.stop();
                }
                let reason = running.waiting().await;
                connection.live.lock().unwrap_or_else(|e| e.into_inner()).take();
                if connection.stopping.load(Ordering::SeqCst) {
                    break;
                }
                tracing::warn!(target: "agentos_runtime::mcp", server = %connection.config.name, ?reason, "MCP server ended; restarting it");
                let mut backoff = FIRST_BACKOFF;
                while service.is_none() && !connection.stopping.load(Ordering::SeqCst) {
                    tokio::time::sleep(backoff).await;
                    match connect(&connection.config).await {
                        Ok(started) => {
                            connection.restarts.fetch_add(1, Ordering::Relaxed);
                            service = Some(started);
                        }
                        Err(e) => {
                            tracing::warn!(target: "agentos_runtime::mcp", server = %connection.config.name, error = %e, "MCP server did not start again");
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
            }
        });
    }

    async fn call(&self, tool: &str, arguments: Value) -> Result<Value, String> {
        let name = &self.config.name;
        let peer = self
            .peer()
            .ok_or_else(|| format!("the MCP server `{name}` is not running (it is being restarted)"))?;
        let arguments = match arguments {
            Value::Object(map) => map,
            Value::Null => Default::default(),
            other => return Err(format!("the arguments must be a JSON object, not {other}")),
        };
        let mut params = CallToolRequestParams::new(Cow::Owned(tool.to_string()));
        params.arguments = Some(arguments);
        let result = peer
            .call_tool(params)
            .await
            .map_err(|e| format!("the MCP server `{name}` failed the call: {e}"))?;
        result_value(result)
    }
}

/// A server process that completed the handshake.
struct Started {
    running: RunningService<RoleClient, ()>,
    pid: Option<u32>,
    /// Ends the connection (the transport then closes the process).
    cancel: CancellationToken,
}

/// Spawns the server and completes the MCP handshake.
async fn connect(config: &McpServer) -> Result<Started, String> {
    let mut command = tokio::process::Command::new(&config.program);
    command.args(&config.args);
    for (key, value) in &config.env {
        command.env(key, value);
    }
    if let Some(dir) = &config.cwd {
        command.current_dir(dir);
    }
    let (transport, stderr) = TokioChildProcess::builder(command)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", config.program.display()))?;
    let pid = transport.id();
    if let Some(stderr) = stderr {
        let server = config.name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "agentos_runtime::mcp", server = %server, "{line}");
            }
        });
    }
    let cancel = CancellationToken::new();
    let running = tokio::time::timeout(config.start_timeout, ().serve_with_ct(transport, cancel.clone()))
        .await
        .map_err(|_| {
            format!(
                "it did not complete the MCP handshake within {:?}",
                config.start_timeout
            )
        })?
        .map_err(|e| format!("the MCP handshake failed: {e}"))?;
    Ok(Started { running, pid, cancel })
}

/// What the model sees of a tool's result: its structured content when it has one, otherwise
/// its text (one string, or a list of them). `isError` results are errors.
fn result_value(result: CallToolResult) -> Result<Value, String> {
    let texts: Vec<String> = result
        .content
        .iter()
        .filter_map(|block| block.as_text().map(|t| t.text.clone()))
        .collect();
    if result.is_error == Some(true) {
        return Err(match texts.is_empty() {
            true => "the tool reported an error".to_string(),
            false => texts.join("\n"),
        });
    }
    if let Some(structured) = result.structured_content {
        return Ok(structured);
    }
    Ok(match texts.len() {
        0 => serde_json::to_value(&result.content).unwrap_or(Value::Null),
        1 => Value::String(texts.into_iter().next().unwrap_or_default()),
        _ => json!(texts),
    })
}

/// One tool of a mounted server.
struct McpTool {
    server: Arc<McpConnection>,
    /// The name agents call it by (prefixed).
    name: String,
    /// Its name on the server.
    remote: String,
    description: String,
    parameters: Value,
}

impl Tool for McpTool {
    fn name(&self) -> &str {
        &self.name
    }
    fn description(&self) -> &str {
        &self.description
    }
    fn parameters(&self) -> Value {
        self.parameters.clone()
    }
    fn call(&self, arguments: Value) -> ToolFuture {
        let server = self.server.clone();
        let remote = self.remote.clone();
        Box::pin(async move { server.call(&remote, arguments).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmcp::model::ContentBlock;

    #[test]
    fn results_become_values_and_errors() {
        let text = CallToolResult::success(vec![ContentBlock::text("42")]);
        assert_eq!(result_value(text), Ok(json!("42")));
        let two = CallToolResult::success(vec![ContentBlock::text("a"), ContentBlock::text("b")]);
        assert_eq!(result_value(two), Ok(json!(["a", "b"])));
        let error = CallToolResult::error(vec![ContentBlock::text("no such file")]);
        assert_eq!(result_value(error), Err("no such file".to_string()));
        let mut structured = CallToolResult::success(vec![ContentBlock::text("{\"n\":1}")]);
        structured.structured_content = Some(json!({"n": 1}));
        assert_eq!(result_value(structured), Ok(json!({"n": 1})));
    }
}
