//! Quickstart: one agent, declared with `#[agent]`, answers a question with the default model
//! (fetched on first use), streaming its reply to the terminal.
//!
//! ```text
//! cargo run --release --example quickstart -- ["your question"] [--model PATH] [--dtype auto|f16|f32] [--device NAME]
//! ```

use std::io::Write;

use agentos_examples::{ModelArgs, init_logging};
use agentos_runtime::prelude::*;

/// You are a helpful assistant. Answer clearly and briefly.
#[agent(
    name = "Assistant",
    temperature = 0.2,
    top_p = 0.9,
    repetition_penalty = 1.1,
    seed = 7,
    max_tokens = 200
)]
#[derive(Default, Serialize, Deserialize)]
struct Assistant;

/// One agent answers a question with the default model, streaming its reply.
#[derive(clap::Parser)]
struct Cli {
    /// The question to ask [default: a question about operating systems]
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
        .unwrap_or_else(|| "What is an operating system? Answer in two sentences.".to_string());

    let os = AgentOS::builder().kernel(cli.model.kernel_args()).start().await?;
    let assistant = os.spawn(Assistant).await?;

    println!("> {question}");
    let mut reply = assistant.stream(question).await?;
    while let Some(event) = reply.next().await {
        match event {
            StreamEvent::Token(text) => {
                print!("{text}");
                std::io::stdout().flush()?;
            }
            StreamEvent::Restarted => println!("\n[the agent restarted; its answer starts over]"),
            // The assistant has no tools, so it makes no calls.
            StreamEvent::ToolCall { .. } | StreamEvent::ToolResult { .. } => {}
            StreamEvent::Done(outcome) => {
                let response = (*outcome)?;
                let secs = response.total_time.as_secs_f64();
                println!();
                eprintln!(
                    "[{} prompt tokens, {} generated in {:.2}s ({:.1} tokens/s), first token after {:.0} ms, finished: {:?}]",
                    response.prompt_tokens,
                    response.completion_tokens,
                    secs,
                    response.completion_tokens as f64 / secs,
                    response.time_to_first_token.as_secs_f64() * 1000.0,
                    response.finish_reason
                );
            }
        }
    }
    for agent in os.agents() {
        eprintln!(
            "[{} {} ({}): {:?}, {} turn(s), {} tokens]",
            agent.pid, agent.name, agent.role, agent.state, agent.turns, agent.tokens_used
        );
    }
    os.shutdown().await?;
    Ok(())
}
