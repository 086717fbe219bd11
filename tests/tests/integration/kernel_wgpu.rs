//! The wgpu path computes the same model: parity on software Vulkan (Mesa lavapipe).
//!
//! Needs a software Vulkan driver (`apt-get install mesa-vulkan-drivers`; `.ci/run` installs
//! it). Software Vulkan is slow, so this checks the first two reference prompts.

use agentos_kernel::parity::{ParitySummary, Schedule, check_case, check_stepwise, read_reference};
use agentos_kernel::{DeviceChoice, Engine, EngineConfig, KvStorage, ModelSpec, WeightDtype, adapter_descriptions};

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

/// The default dtype on wgpu: f16 weights and f16 KV pools where the adapter computes in f16
/// (f32 where it does not), served as the Batcher composes steps: prompts in chunks of 7
/// attending over cached keys (the causal mask built on the device), beside batched decodes of
/// contexts of different lengths (the padding mask built on the device).
#[test]
fn stepwise_parity_of_the_default_dtype_on_software_vulkan() {
    let config = EngineConfig {
        device: DeviceChoice::WgpuCpu,
        ..EngineConfig::default()
    };
    let mut engine = Engine::load(&ModelSpec::Gguf(default_model_path()), config).unwrap();
    // `auto` stays `auto` (f16 weights off the host kernels) unless the adapter lacks f16.
    let expected = match engine.info().dtype {
        WeightDtype::F32 => KvStorage::DeviceF32,
        WeightDtype::Auto | WeightDtype::F16 => KvStorage::DeviceF16,
    };
    assert_eq!(engine.kv_storage(), expected);
    // Software Vulkan takes seconds per forward: the first 8 reference tokens of two cases.
    let cases: Vec<_> = read_reference(&reference_file())
        .unwrap()
        .into_iter()
        .take(2)
        .map(|mut c| {
            c.greedy_ids.truncate(8);
            c.top1_margins.truncate(8);
            c
        })
        .collect();
    let report = check_stepwise(
        &mut engine,
        &cases,
        Schedule {
            prefill_chunk: 7,
            concurrent: 2,
        },
    )
    .unwrap();
    println!(
        "wgpu-cpu {}: {} in {} steps ({} mixed, up to {} decodes)",
        engine.info().dtype.name(),
        report.summary.line(),
        report.steps,
        report.mixed_steps,
        report.most_decodes
    );
    assert!(report.mixed_steps > 0 && report.most_decodes == 2, "{report:?}");
    assert!(report.summary.passes(97.0), "{}", report.summary.line());
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
