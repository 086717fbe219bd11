//! The wgpu path computes the same model: parity on software Vulkan (Mesa lavapipe).
//!
//! Needs a software Vulkan driver (`apt-get install mesa-vulkan-drivers`; `.ci/run` installs
//! it). Software Vulkan is slow, so this checks the first two reference prompts.

use agentos_kernel::parity::{ParitySummary, check_case, read_reference};
use agentos_kernel::{DeviceChoice, Engine, EngineConfig, ModelSpec, WeightDtype, adapter_descriptions};

use crate::support::{default_model_path, reference_file};

#[test]
fn parity_on_software_vulkan() {
    let config = EngineConfig {
        dtype: WeightDtype::F32,
        device: DeviceChoice::WgpuCpu,
        ..EngineConfig::default()
    };
    let mut engine = match Engine::load(&ModelSpec::Gguf(default_model_path()), config) {
        Ok(e) => e,
        Err(e) => panic!("cannot start the wgpu path on software Vulkan ({e}); install mesa-vulkan-drivers"),
    };
    assert_eq!(engine.info().device, "wgpu-cpu");
    let cases = read_reference(&reference_file()).unwrap();
    let cases = cases
        .iter()
        .take(2)
        .map(|c| check_case(&mut engine, c).unwrap())
        .collect();
    let summary = ParitySummary { cases };
    println!("wgpu-cpu {}", summary.line());
    assert!(summary.passes(97.0), "{}", summary.line());
}

/// Listing adapters starts a small runtime of its own; from async code (an engine loaded inside
/// `#[tokio::main]`) it must find the same adapters, not none.
#[test]
fn adapters_are_found_from_async_code_as_from_plain_code() {
    let plain = adapter_descriptions();
    assert!(
        !plain.is_empty(),
        "no Vulkan adapter at all; install mesa-vulkan-drivers (lavapipe)"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let from_async = runtime.block_on(async { adapter_descriptions() });
    assert_eq!(from_async, plain);
}
