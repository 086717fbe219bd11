//! Supervision: an agent that panics on purpose in some turns (a simulated transient fault in its
//! `after_turn` hook) is restarted by its supervisor from its last checkpoint; the task it was
//! running is redelivered once and completes. Prints each restart and the recovered state.
//!
//! ```text
//! cargo run --release --example supervision -- [--model PATH] [--dtype auto|f16|f32] [--device NAME]
//! ```

use std::collections::HashSet;
use std::sync::Mutex;

use agentos_examples::{ModelArgs, init_logging};
use agentos_runtime::prelude::*;

/// Turns whose first attempt panics. The set of faults already injected lives outside the agent
/// (like a flaky network would), so the redelivered attempt succeeds.
const FAULTY_TURNS: [u64; 2] = [2, 4];
static INJECTED: Mutex<Option<HashSet<u64>>> = Mutex::new(None);

/// You are a terse assistant. Answer in one short sentence.
#[agent(name = "Flaky", max_tokens = 24, custom_hooks)]
#[derive(Default, Serialize, Deserialize)]
struct Flaky {
    /// One line per completed turn; restored from the checkpoint after each restart.
    answers: Vec<String>,
}

impl AgentHooks for Flaky {
    fn after_turn(&mut self, turn: &Turn) -> Result<(), String> {
        let first_time = INJECTED
            .lock()
            .unwrap()
            .get_or_insert_with(HashSet::new)
            .insert(turn.number);
        if FAULTY_TURNS.contains(&turn.number) && first_time {
            panic!("simulated fault while recording turn {}", turn.number);
        }
        self.answers
            .push(format!("turn {}: {}", turn.number, turn.reply.trim()));
        println!("   state now holds {} answer(s)", self.answers.len());
        Ok(())
    }
}

/// Supervision: agents that panic are restarted from their checkpoints.
#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    model: ModelArgs,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    init_logging();
    // The injected panics are expected; keep their messages short.
    std::panic::set_hook(Box::new(|info| eprintln!("   [panic] {info}")));
    let cli = <Cli as clap::Parser>::parse();
    let os = AgentOS::builder().kernel(cli.model.kernel_args()).start().await?;
    let mut events = os.events();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            if let SupervisorEvent::Restarted {
                supervisor,
                child,
                restarts,
                ..
            } = event
            {
                println!("   [supervisor `{supervisor}`] restarted `{child}` ({restarts} restart(s) in the window)");
            }
        }
    });

    let flaky = os.spawn(Flaky::default()).await?;
    let questions = [
        "Name a primary colour.",
        "What is 2 + 2?",
        "Name a planet.",
        "What is ice?",
        "Name a fruit.",
    ];
    for question in questions {
        println!("> {question}");
        let response = flaky.ask(question).await?;
        println!(
            "   turn {} (attempts: {}): {}",
            response.turn,
            response.attempts,
            response.text.trim()
        );
    }
    let info = flaky.status().await?;
    println!(
        "\n{} finished {} turns with {} restart(s); every question answered exactly once.",
        info.name, info.turns, info.restarts
    );
    os.shutdown().await?;
    Ok(())
}
