//! An agent that acts through an MCP server: the reference filesystem server
//! (`@modelcontextprotocol/server-filesystem`, pinned in `mcp/package-lock.json`) serves a
//! scratch directory, and an agent on the default model is asked a question that needs a file
//! in it, with the server's `read_text_file` and `list_directory` tools. Each call and its
//! result are printed as the turn runs. The 135M default model often calls them badly (for the
//! default question it lists a directory named `list_directory`); `--model` takes a larger one.
//!
//! ```text
//! cargo run --release --example mcp_agent -- ["your question"] [--model PATH] [--dtype auto|f16|f32] [--device NAME]
//! ```
//! Needs Node.js; `npm ci` runs in `mcp/` first when the server is not installed there.

use agentos_examples::{ModelArgs, filesystem_mcp_server, init_logging, print_turn};
use agentos_runtime::prelude::*;

/// You are a careful assistant with access to files. Use the functions to look things up before answering.
#[agent(
    name = "FileAssistant",
    tools = ["list_directory", "read_text_file"],
    max_steps = 4,
    tool_choice = "first",
    max_tokens = 128
)]
#[derive(Default, Serialize, Deserialize)]
struct FileAssistant;

/// An agent answers a question about a file through the filesystem MCP server.
#[derive(clap::Parser)]
struct Cli {
    /// The question to ask [default: how many servers inventory.txt lists]
    question: Option<String>,
    #[command(flatten)]
    model: ModelArgs,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    init_logging();
    let cli = <Cli as clap::Parser>::parse();
    let question = cli
        .question
        .unwrap_or_else(|| "How many servers are in the rack? The number is in the file inventory.txt.".to_string());

    let work = std::env::temp_dir().join(format!("agentos-mcp-agent-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let work = work.canonicalize()?;
    std::fs::write(
        work.join("inventory.txt"),
        "Rack B7 inventory\nservers: 37\nswitches: 2\n",
    )?;

    let os = AgentOS::builder()
        .kernel(cli.model.kernel_args())
        .mcp_server(filesystem_mcp_server(&work)?)
        .start()
        .await?;
    for server in os.mcp_servers() {
        eprintln!(
            "[mcp] {} (pid {:?}) offers {}",
            server.name,
            server.pid,
            server.tools.join(", ")
        );
    }
    let assistant = os.spawn(FileAssistant).await?;

    println!("> {question}");
    print_turn(assistant.stream(question).await?).await?;
    os.shutdown().await?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}
