//! Kernel chat: start the Reasoning Kernel as an actor on the default model (fetched on first
//! use) and stream an answer to a question to the terminal.
//!
//! ```text
//! cargo run --release --example kernel_chat -- ["your question"] [--model PATH] [--dtype auto|f16|f32] [--device NAME]
//! ```

use std::io::Write;

use agentos_examples::{ModelArgs, init_logging};
use agentos_kernel::{ChatMessage, GenerateRequest, GenerationEvent, KernelActor, KernelArgs, SamplingParams};
use ractor::Actor;

/// The kernel alone, as an actor: one chat request, streamed.
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

    let kernel_args: KernelArgs = cli.model.kernel_args();
    let (kernel, handle) = Actor::spawn(Some("kernel".into()), KernelActor, kernel_args).await?;
    let info = ractor::call!(kernel, agentos_kernel::KernelMsg::Info)?;
    eprintln!(
        "model {} on {} ({}), weights {}",
        info.name,
        info.device,
        info.device_reason,
        info.dtype.name()
    );

    println!("> {question}");
    let request = GenerateRequest::chat(vec![
        ChatMessage::system("You are a helpful assistant. Be concise."),
        ChatMessage::user(question),
    ])
    .max_tokens(200)
    .sampling(SamplingParams {
        temperature: 0.2,
        top_p: 0.9,
        repetition_penalty: 1.1,
        seed: 7,
        ..Default::default()
    });
    let (_, mut events) = agentos_kernel::actor::generate(&kernel, request).await?;
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Token { text, .. } => {
                print!("{text}");
                std::io::stdout().flush()?;
            }
            GenerationEvent::Finished { tail, summary } => {
                println!("{tail}");
                let secs = summary.total_time.as_secs_f64();
                eprintln!(
                    "\n[{} prompt tokens, {} generated in {:.2}s ({:.1} tokens/s), first token after {:.0} ms, finished: {:?}]",
                    summary.prompt_tokens,
                    summary.tokens.len(),
                    secs,
                    summary.tokens.len() as f64 / secs,
                    summary.time_to_first_token.as_secs_f64() * 1000.0,
                    summary.finish_reason
                );
            }
            GenerationEvent::Failed(e) => return Err(e.into()),
        }
    }
    kernel.stop(None);
    handle.await?;
    Ok(())
}
