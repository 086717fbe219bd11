//! Team sync: a researcher, a critic and a writer work on one question at the same time, with a
//! sync pulse between their rounds. Round 1: each answers alone (the three requests are batched
//! together in the kernel). The pulse waits for all three to finish their turn, merges what they
//! said into one digest (on the blackboard, and pinned into each one's memory window), and
//! measures how far apart they were before and after. Round 2: each improves its answer with
//! the shared digest in view. The writer then synthesises the final answer. Prints every
//! contribution, each pulse (drift before → after, contradictions found) and the metrics.
//!
//! ```text
//! cargo run --release --example team_sync -- ["your question"] [--rounds 2] [--model PATH] [--dtype auto|f16|f32]
//! ```

use agentos_examples::{ModelArgs, init_logging};
use agentos_runtime::prelude::*;

/// You are a meticulous researcher. State the key facts that answer the question, briefly.
#[agent(
    name = "Researcher",
    role = "researcher",
    memory,
    temperature = 0.7,
    top_p = 0.9,
    repetition_penalty = 1.1,
    seed = 1,
    max_tokens = 120
)]
#[derive(Default, Serialize, Deserialize)]
struct Researcher;

/// You are a sharp critic. Point out what is doubtful or missing in answers to the question,
/// briefly.
#[agent(
    name = "Critic",
    role = "critic",
    memory,
    temperature = 0.5,
    repetition_penalty = 1.1,
    seed = 2,
    max_tokens = 120
)]
#[derive(Default, Serialize, Deserialize)]
struct Critic;

/// You are a clear writer. Write short, accurate answers for a general reader.
#[agent(
    name = "Writer",
    role = "writer",
    memory,
    temperature = 0.3,
    repetition_penalty = 1.1,
    seed = 3,
    max_tokens = 160
)]
#[derive(Default, Serialize, Deserialize)]
struct Writer;

#[derive(clap::Parser)]
struct Cli {
    /// The question [default: why the seasons change]
    question: Option<String>,
    /// Rounds of parallel work (a pulse between each two)
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    #[command(flatten)]
    model: ModelArgs,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    init_logging();
    let cli = <Cli as clap::Parser>::parse();
    let question = cli
        .question
        .unwrap_or_else(|| "Why do the seasons change on Earth?".to_string());

    let os = AgentOS::builder().kernel(cli.model.kernel_args()).start().await?;
    let team = vec![
        os.spawn(Researcher).await?,
        os.spawn(Critic).await?,
        os.spawn(Writer).await?,
    ];
    println!("Question: {question}\n");
    let config = CollaborateConfig {
        rounds: cli.rounds,
        synthesiser: Some("Writer".into()),
        ..CollaborateConfig::default()
    };
    let result = os.collaborate(&question, &team, &config).await?;

    for round in 1..=cli.rounds.max(1) {
        println!("===== Round {round}");
        for c in result.contributions.iter().filter(|c| c.round == round) {
            println!("== {}\n{}\n", c.agent, c.text.trim());
        }
        if let Some(p) = result
            .pulses
            .iter()
            .find(|p| p.trigger == PulseTrigger::Barrier { round })
        {
            println!(
                "----- Sync pulse {} ({:?}): drift {:.4} -> {:.4} (threshold {}), waited {} ms, \
                 {} contributions merged, {} tokens injected, {} contradiction(s)",
                p.id,
                p.trigger,
                p.drift_before.max,
                p.drift_after.max,
                p.threshold,
                p.wait_ms,
                p.contributions,
                p.tokens_injected,
                p.conflicts.len()
            );
            for x in &p.conflicts {
                println!(
                    "  {} says \"{}\" / {} says \"{}\"",
                    x.first.0, x.first.1, x.second.0, x.second.1
                );
            }
            println!();
        }
    }
    println!("===== Synthesis by {}\n{}\n", result.answered_by, result.answer.trim());
    let m = &result.metrics;
    println!(
        "pulses {}, converged {}, L_kappa {} ms, Gamma {}, eta {}, time {} ms of which pulses {} ms",
        m.pulses,
        m.converged,
        m.l_kappa_ms.map_or("-".into(), |v| format!("{v:.0}")),
        m.gamma.map_or("-".into(), |v| format!("{v:.2}")),
        m.eta.map_or("-".into(), |v| format!("{v:.2}")),
        result.elapsed_ms,
        result.pulse_ms
    );
    os.shutdown().await?;
    Ok(())
}
