//! Research team: a researcher, a critic and a writer, each declared with `#[agent]`, work on one
//! question. The researcher drafts notes while the critic lists the pitfalls of the question (the
//! two turns run at once, batched in the kernel); the critic then reads the notes (sent agent to
//! agent) and points out what is weak; the writer gets all of it and writes the synthesis.
//! Prints every contribution. (`team_sync` does the same with sync pulses between rounds.)
//!
//! ```text
//! cargo run --release --example research_team -- ["your question"] [--model PATH] [--dtype auto|f16|f32] [--device NAME]
//! ```

use agentos_examples::{ModelArgs, init_logging};
use agentos_runtime::prelude::*;

/// You are a meticulous researcher. List the key facts that answer the question, one per line,
/// and say where each comes from.
#[agent(name = "Researcher", role = "researcher", priority = High, temperature = 0.7, top_p = 0.9,
        repetition_penalty = 1.1, seed = 1, max_tokens = 160, custom_hooks)]
#[derive(Default, Serialize, Deserialize)]
struct Researcher {
    /// Every set of notes this researcher has written (kept in its checkpoint).
    notes: Vec<String>,
}

impl AgentHooks for Researcher {
    fn after_turn(&mut self, turn: &Turn) -> Result<(), String> {
        if turn.reply.trim().is_empty() {
            return Err("the notes are empty".to_string());
        }
        self.notes.push(turn.reply.clone());
        Ok(())
    }
}

/// You are a sharp critic. Given a researcher's notes, name the weakest or least supported claim
/// and what is missing. Be brief and specific.
#[agent(
    name = "Critic",
    role = "critic",
    temperature = 0.5,
    repetition_penalty = 1.1,
    seed = 2,
    max_tokens = 120
)]
#[derive(Default, Serialize, Deserialize)]
struct Critic;

/// You are a clear writer. Combine the notes and the critique you receive into one short,
/// accurate answer for a general reader.
#[agent(
    name = "Writer",
    role = "writer",
    temperature = 0.3,
    repetition_penalty = 1.1,
    seed = 3,
    max_tokens = 200
)]
#[derive(Default, Serialize, Deserialize)]
struct Writer;

/// A researcher and a critic answer together, then a synthesis.
#[derive(clap::Parser)]
struct Cli {
    /// The question to ask [default: why the seasons change]
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
        .unwrap_or_else(|| "Why do the seasons change on Earth?".to_string());

    let os = AgentOS::builder().kernel(cli.model.kernel_args()).start().await?;
    let researcher = os.spawn(Researcher::default()).await?;
    let critic = os.spawn(Critic).await?;
    let writer = os.spawn(Writer).await?;
    println!("Question: {question}\n");

    // Independent work runs at once: the kernel batches the two generations.
    let (notes, pitfalls) = tokio::join!(
        researcher.ask(format!("Research this question: {question}")),
        critic.ask(format!(
            "Before any answer: what is easy to get wrong about this question? {question}"
        ))
    );
    let (notes, pitfalls) = (notes?, pitfalls?);
    println!(
        "== Researcher ({} tokens)\n{}\n",
        notes.completion_tokens,
        notes.text.trim()
    );
    println!(
        "== Critic, beforehand ({} tokens)\n{}\n",
        pitfalls.completion_tokens,
        pitfalls.text.trim()
    );

    researcher.send(&critic, notes.text.clone()).await?;
    let critique = critic
        .ask("Critique the researcher's notes above: the weakest claim, and what is missing.")
        .await?;
    println!(
        "== Critic ({} tokens)\n{}\n",
        critique.completion_tokens,
        critique.text.trim()
    );

    researcher.send(&writer, notes.text.clone()).await?;
    critic.send(&writer, critique.text.clone()).await?;
    let answer = writer
        .ask(format!("Using the notes and the critique above, answer: {question}"))
        .await?;
    println!(
        "== Writer: final synthesis ({} tokens)\n{}\n",
        answer.completion_tokens,
        answer.text.trim()
    );

    println!(
        "{:<6} {:<11} {:<11} {:<11} {:>5} {:>7}",
        "pid", "name", "role", "priority", "turns", "tokens"
    );
    for a in os.agents() {
        println!(
            "{:<6} {:<11} {:<11} {:<11} {:>5} {:>7}",
            a.pid.to_string(),
            a.name,
            a.role,
            format!("{:?}", a.priority),
            a.turns,
            a.tokens_used
        );
    }
    os.shutdown().await?;
    Ok(())
}
