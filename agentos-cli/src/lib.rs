//! # agentos-cli: the `agentos` command
//!
//! - `agentos chat`: an interactive session with a team of agents (a REPL).
//! - `agentos run TEAM.toml "task"`: a team declared in TOML answers one task.
//! - `agentos serve`: an OpenAI-compatible HTTP API (see [`serve`]).
//! - `agentos ps` / `agentos stats`: what a running server's agents and kernel are doing.
//! - `agentos models` / `agentos doctor`: local models; what this machine can run.
//!
//! A separate crate, so that users of `agentos-runtime` never build its HTTP server, line
//! editor and progress bars.

pub mod boot;
pub mod chat;
pub mod client;
pub mod doctor;
mod error;
pub mod run;
pub mod serve;
pub mod team;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use error::{CliError, Result};

/// Many LLM agents as processes on one reasoning kernel.
#[derive(Parser, Debug)]
#[command(name = "agentos", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Talk to a team of agents: each message goes to every worker at once, then the synthesiser
    Chat(chat::ChatArgs),
    /// Run a team declared in TOML on one task and print its answer
    ///
    /// A team file is `[[agent]]` tables with `name` and `system` (its system prompt) and
    /// optionally `role`, `priority` (realtime, high, normal, low, background), `temperature`,
    /// `top_p`, `top_k`, `repetition_penalty`, `seed`, `max_tokens`, `memory`, `tools`, and
    /// `synthesizer = true` for the one agent (at most) that writes the final answer from the
    /// others' answers. The others answer at the same time.
    Run(run::RunArgs),
    /// Serve the OpenAI-compatible HTTP API (chat completions, models, health, metrics)
    Serve(serve::ServeArgs),
    /// List the agents of a running server
    Ps(client::ClientArgs),
    /// Show a running server's kernel, scheduler and memory figures
    Stats(client::ClientArgs),
    /// List the models on this machine and the default model
    Models,
    /// Check what agentos needs here: model cache, pip, compute devices, Vulkan, npm
    Doctor(doctor::DoctorArgs),
}

/// Parses the command line and runs it; a user's mistake ends with one line saying what to do.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(CliError::new(format!("cannot start the async runtime: {e}"))),
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Chat(args) => chat::run(args).await,
            Command::Run(args) => run::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Ps(args) => client::ps(args).await,
            Command::Stats(args) => client::stats(args).await,
            Command::Models => doctor::models(),
            Command::Doctor(args) => doctor::run(args).await,
        }
    });
    // Agents' actors and the engine thread are stopped by the commands themselves; whatever is
    // left (a blocked stdin reader) must not hold the process open.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(error: CliError) -> ExitCode {
    eprintln!("agentos: error: {error}");
    ExitCode::FAILURE
}

/// Logs to stderr, filtered by `RUST_LOG` (default: warnings only, so that the terminal shows
/// the conversation).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
