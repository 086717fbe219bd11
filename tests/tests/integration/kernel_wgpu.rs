//! The wgpu path computes the same model: parity on software Vulkan (Mesa lavapipe).
//!
//! Needs a software Vulkan driver (`apt-get install mesa-vulkan-drivers`; `.ci/run` installs
//! it). Software Vulkan is slow, so this checks the first two reference prompts.

use agentos_kernel::parity::{ParitySummary, check_case, read_reference};
use agentos_kernel::{DeviceChoice, Engine, EngineConfig, ModelSpec, WeightDtype};

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
