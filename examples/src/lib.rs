//! The runnable tour of agentos lives in `examples/`; this library holds the pieces the
//! examples share (model flags, the L2-at-scale measurement, the MCP server for the examples).

pub mod l2_scale;

pub use agentos_kernel::cli::ModelArgs;

/// Logs to stderr, filtered by `RUST_LOG` (default: info for agentos crates).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("agentos_kernel=info,agentos_runtime=info,warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Peak resident set size (VmHWM) in bytes; 0 where /proc is unavailable.
pub fn peak_rss_bytes() -> u64 {
    proc_status_kb("VmHWM:") * 1024
}

/// Current resident set size (VmRSS) in bytes; 0 where /proc is unavailable.
pub fn rss_bytes() -> u64 {
    proc_status_kb("VmRSS:") * 1024
}

fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// The reference filesystem MCP server (`@modelcontextprotocol/server-filesystem`), serving
/// `root` (which is also its working directory, so relative paths resolve there). It is the
/// npm package pinned in `mcp/package-lock.json`; when `mcp/node_modules` lacks it, this runs
/// `npm ci` there first (from the lock file: nothing is fetched at run time after that).
pub fn filesystem_mcp_server(root: &std::path::Path) -> Result<agentos_runtime::McpServer, String> {
    use std::sync::Mutex;
    static INSTALL: Mutex<()> = Mutex::new(());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../mcp");
    let script = dir.join("node_modules/@modelcontextprotocol/server-filesystem/dist/index.js");
    let _installing = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if !script.is_file() {
        eprintln!("installing the MCP filesystem server: npm ci in {}", dir.display());
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("cannot run npm (install Node.js 20 or later): {e}"))?;
        if !status.success() || !script.is_file() {
            return Err(format!("`npm ci` in {} failed ({status})", dir.display()));
        }
    }
    Ok(agentos_runtime::McpServer::stdio("filesystem", "node")
        .arg(script.to_string_lossy())
        .arg(root.to_string_lossy())
        .cwd(root))
}

/// Prints an agent's streamed turn as it runs: tokens as they come, each call and its result on
/// lines of their own, and a summary line (calls, tokens, time) on stderr at the end.
pub async fn print_turn(mut reply: agentos_runtime::TokenStream) -> Result<(), Box<dyn std::error::Error>> {
    use agentos_runtime::StreamEvent;
    use futures::StreamExt;
    use std::io::Write;
    while let Some(event) = reply.next().await {
        match event {
            StreamEvent::Token(text) => {
                print!("{text}");
                std::io::stdout().flush()?;
            }
            StreamEvent::ToolCall { name, arguments } => println!("\n[call] {name} {arguments}"),
            StreamEvent::ToolResult { name, result } => match result {
                Ok(json) => println!("[result of {name}] {json}"),
                Err(e) => println!("[error from {name}] {e}"),
            },
            StreamEvent::Restarted => println!("\n[the agent restarted; its answer starts over]"),
            StreamEvent::Done(outcome) => {
                let response = (*outcome)?;
                println!();
                if response.text.trim().is_empty() {
                    println!("[no answer]");
                }
                eprintln!(
                    "[{} call(s){}, {} prompt tokens, {} generated, {:.2}s]",
                    response.steps.len(),
                    if response.step_limit_reached {
                        ", stopped at max_steps"
                    } else {
                        ""
                    },
                    response.prompt_tokens,
                    response.completion_tokens,
                    response.total_time.as_secs_f64()
                );
            }
        }
    }
    Ok(())
}
