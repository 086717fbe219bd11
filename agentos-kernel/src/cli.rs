//! Command-line flags for programs that load a model (the `agentos` command and the
//! examples): `--model`, `--dtype`, `--device`, parsed with clap. Behind the `cli` feature, so
//! library users do not build clap.

use crate::{DeviceChoice, EngineConfig, KernelArgs, ModelSpec, WeightDtype};

/// The flags of every program that runs a model: which file, in which weight mode, on which
/// device. Each program's own command line flattens these in (`#[command(flatten)]`), so a
/// misspelt flag is an error and `--help` lists them all.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// A GGUF or safetensors model file or Hugging Face directory [default: $AGENTOS_MODEL,
    /// else SmolLM2-135M-Instruct Q4_1, fetched on first use]
    #[arg(long, value_name = "PATH")]
    pub model: Option<std::path::PathBuf>,
    /// Weights in memory: auto (on the CPU a GGUF file's quantised blocks, else f16), f16 or
    /// f32 [default: auto]
    #[arg(long, value_name = "DTYPE", value_parser = parse_with_from_str::<WeightDtype>)]
    pub dtype: Option<WeightDtype>,
    /// Compute device: auto, flex (cpu), wgpu (gpu), vulkan or wgpu-cpu [default: auto]
    #[arg(long, value_name = "NAME", value_parser = parse_with_from_str::<DeviceChoice>)]
    pub device: Option<DeviceChoice>,
}

fn parse_with_from_str<T: std::str::FromStr<Err: std::fmt::Display>>(text: &str) -> Result<T, String> {
    text.parse::<T>().map_err(|e| e.to_string())
}

impl ModelArgs {
    /// `--model PATH`, else `AGENTOS_MODEL`, else the default model.
    pub fn model(&self) -> ModelSpec {
        self.model
            .as_ref()
            .map(ModelSpec::path)
            .unwrap_or_else(ModelSpec::from_env)
    }

    /// Engine settings from `--dtype` and `--device` over the defaults.
    pub fn engine_config(&self) -> EngineConfig {
        let mut config = EngineConfig::default();
        if let Some(dtype) = self.dtype {
            config.dtype = dtype;
        }
        if let Some(device) = self.device {
            config.device = device;
        }
        config
    }

    /// The kernel to run: model and engine settings from the flags.
    pub fn kernel_args(&self) -> KernelArgs {
        KernelArgs {
            model: self.model(),
            config: self.engine_config(),
        }
    }
}
