//! Proves the kernel computes what the model computes: tokenization and teacher-forced greedy
//! argmax against llama.cpp's reference outputs.
//!
//! ```text
//! cargo run --release --example parity -- --reference ../shared/reference/smollm2-135m-instruct-q4_1.greedy.jsonl [--model PATH] [--dtype auto|f16|f32] [--device flex|wgpu-cpu|...]
//! ```
//! Exits non-zero if tokenization differs anywhere or agreement is below 97 %.

use std::path::PathBuf;
use std::process::ExitCode;

use agentos_examples::{ModelArgs, init_logging};
use agentos_kernel::Engine;
use agentos_kernel::parity::{ParitySummary, check_case, read_reference};

fn main() -> ExitCode {
    init_logging();
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("parity: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Parity with llama.cpp's reference outputs: tokenization and greedy argmax.
#[derive(clap::Parser)]
struct Cli {
    /// The reference file (JSON lines, from ../shared/reference/)
    #[arg(long, value_name = "FILE.jsonl")]
    reference: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
}

fn run() -> agentos_kernel::Result<bool> {
    let cli = <Cli as clap::Parser>::parse();
    let reference = cli.reference;
    let cases = read_reference(&reference)?;
    let mut engine = Engine::load(&cli.model.model(), cli.model.engine_config())?;
    let info = engine.info().clone();
    println!(
        "model {} | dtype {} | device {} ({})",
        info.name,
        info.dtype.name(),
        info.device,
        info.device_description
    );
    let mut results = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let r = check_case(&mut engine, case)?;
        println!(
            "prompt {:>2}: tokens {} ({} ids), argmax {}/{} agree{}",
            i + 1,
            if r.tokens_identical { "identical" } else { "DIFFER" },
            case.prompt_ids.len(),
            r.agreed,
            r.compared,
            if r.disagreements.is_empty() {
                String::new()
            } else {
                format!(" (differs at {:?})", r.disagreements)
            }
        );
        results.push(r);
    }
    let summary = ParitySummary { cases: results };
    println!("{}", summary.line());
    Ok(summary.passes(97.0))
}
