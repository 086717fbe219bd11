//! `agentos run TEAM.toml "task"`: a team answers one task; the answer as text or JSON.

use std::path::PathBuf;

use agentos_kernel::cli::ModelArgs;
use agentos_runtime::RuntimeConfig;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::team::{Team, TeamSpec};

/// The arguments of `agentos run` (its help text is on [`crate::Command::Run`]).
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The team file (TOML)
    #[arg(value_name = "TEAM.toml")]
    pub team: PathBuf,
    /// The task, in words
    pub task: String,
    /// Print every contribution, the answer and token counts as one JSON object
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub async fn run(args: RunArgs) -> Result<()> {
    let spec = TeamSpec::load(&args.team)?;
    let os = crate::boot::start(&args.model, RuntimeConfig::default()).await?;
    let outcome = async {
        let team = Team::spawn(&os, &spec).await?;
        let cancel = CancellationToken::new();
        team.ask(&args.task, &cancel, &mut |_| {}).await
    }
    .await;
    os.shutdown().await?;
    let answer = outcome?;
    if args.json {
        let text = serde_json::to_string_pretty(&answer).expect("a team answer serialises");
        println!("{text}");
        return Ok(());
    }
    if answer.synthesis.is_some() {
        for c in &answer.contributions {
            println!("── {} ──\n{}\n", c.agent, c.text.trim());
        }
        if let Some(s) = &answer.synthesis {
            println!("── {} (answer) ──", s.agent);
        }
    }
    println!("{}", answer.answer.trim());
    Ok(())
}
