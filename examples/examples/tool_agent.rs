//! An agent that acts: asked a question whose answer is in a file, it calls system calls to
//! find it, with the default model. Each call and its result are printed as the turn runs.
//!
//! The agent may list and read files in a scratch work directory (nothing else); the question
//! needs a number that only the file holds. Its first step in a turn is a call (`tool_choice =
//! "first"`: the 135M default model seldom opens one by itself), sampled under the grammar of
//! its two tools, so the call always parses; what it calls and answers is the model's choice,
//! and the 135M model often chooses badly (it lists a directory `r` for the default question,
//! then has no answer). `--model` runs it on a larger one.
//!
//! ```text
//! cargo run --release --example tool_agent -- ["your question"] [--model PATH] [--dtype auto|f16|f32] [--device NAME]
//! ```

use agentos_examples::{ModelArgs, init_logging, print_turn};
use agentos_runtime::prelude::*;

/// You are a careful assistant with access to files. Use the functions to look things up before answering.
#[agent(
    name = "FileAssistant",
    tools = ["fs_list", "fs_read"],
    max_steps = 4,
    tool_choice = "first",
    max_tokens = 128
)]
#[derive(Default, Serialize, Deserialize)]
struct FileAssistant;

/// An agent answers a question about a file through system calls.
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

    let work = std::env::temp_dir().join(format!("agentos-tool-agent-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    std::fs::write(
        work.join("inventory.txt"),
        "Rack B7 inventory\nservers: 37\nswitches: 2\n",
    )?;

    let os = AgentOS::builder()
        .kernel(cli.model.kernel_args())
        .work_dir(&work)
        .start()
        .await?;
    let assistant = os.spawn(FileAssistant).await?;

    println!("> {question}");
    print_turn(assistant.stream(question).await?).await?;
    os.shutdown().await?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}
