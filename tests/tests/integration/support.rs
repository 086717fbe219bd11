//! Shared fixtures: the default model, loaded once per dtype, the reference file, and
//! `runtime_test!` for tests that must hold on any runtime.

/// Defines a test that runs its body twice: on tokio's current-thread runtime and on a
/// multi-threaded one with 4 workers, where actors run in parallel as in production and races
/// between them show.
macro_rules! runtime_test {
    ($(#[$meta:meta])* async fn $name:ident() $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body() $body

            #[tokio::test]
            async fn current_thread() {
                body().await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn multi_thread() {
                body().await
            }
        }
    };
}

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use agentos_kernel::{DeviceChoice, Engine, EngineConfig, ModelSpec, WeightDtype};

/// The shared reference outputs of llama.cpp (`AGENTOS_REFERENCE` overrides the path).
pub fn reference_file() -> PathBuf {
    if let Some(p) = std::env::var_os("AGENTOS_REFERENCE") {
        return PathBuf::from(p);
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/reference/smollm2-135m-instruct-q4_1.greedy.jsonl");
    assert!(
        path.is_file(),
        "reference file {} is missing: run the tests from a checkout with shared/ beside it, or set AGENTOS_REFERENCE",
        path.display()
    );
    path
}

/// The default model's path (fetched on first use).
pub fn default_model_path() -> PathBuf {
    ModelSpec::default()
        .resolve()
        .expect("the default model can be fetched")
}

fn load_with(config: EngineConfig) -> Mutex<Engine> {
    let config = EngineConfig {
        device: DeviceChoice::Flex,
        ..config
    };
    Mutex::new(Engine::load(&ModelSpec::Gguf(default_model_path()), config).expect("the default model loads"))
}

/// The engine in `cell`, loaded on first use with `config` (on flex) and shared by the tests of
/// this binary; a test that panicked holding it does not poison it for the others.
fn shared(
    cell: &'static OnceLock<Mutex<Engine>>,
    config: impl FnOnce() -> EngineConfig,
) -> MutexGuard<'static, Engine> {
    cell.get_or_init(|| load_with(config()))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn with_dtype(dtype: WeightDtype) -> EngineConfig {
    EngineConfig {
        dtype,
        ..EngineConfig::default()
    }
}

/// The default model on flex with f32 weights.
pub fn engine_f32() -> MutexGuard<'static, Engine> {
    static ENGINE: OnceLock<Mutex<Engine>> = OnceLock::new();
    shared(&ENGINE, || with_dtype(WeightDtype::F32))
}

/// The same model with f16 weights.
pub fn engine_f16() -> MutexGuard<'static, Engine> {
    static ENGINE: OnceLock<Mutex<Engine>> = OnceLock::new();
    shared(&ENGINE, || with_dtype(WeightDtype::F16))
}

/// `--dtype auto`: the file's Q4_1 and Q8_0 blocks computed on by the quantised kernel.
pub fn engine_quantized() -> MutexGuard<'static, Engine> {
    static ENGINE: OnceLock<Mutex<Engine>> = OnceLock::new();
    shared(&ENGINE, || with_dtype(WeightDtype::Auto))
}

/// `dtype` weights with the host kernels off: burn's matmuls and device KV pools on flex, as on
/// a GPU.
fn burn_only(dtype: WeightDtype) -> EngineConfig {
    EngineConfig {
        host_kernels: false,
        ..with_dtype(dtype)
    }
}

/// f32 weights on flex with the host kernels off: KV pools are burn tensors and decode attention
/// runs through burn, as on a GPU.
pub fn engine_f32_burn_only() -> MutexGuard<'static, Engine> {
    static ENGINE: OnceLock<Mutex<Engine>> = OnceLock::new();
    shared(&ENGINE, || burn_only(WeightDtype::F32))
}

/// f16 weights with the host kernels off: burn's matmuls and f16 device KV pools on flex, the
/// precision a GPU computes in.
pub fn engine_f16_burn_only() -> MutexGuard<'static, Engine> {
    static ENGINE: OnceLock<Mutex<Engine>> = OnceLock::new();
    shared(&ENGINE, || burn_only(WeightDtype::F16))
}

/// Kernel settings for runtime tests: the default model on flex.
pub fn kernel_args() -> agentos_kernel::KernelArgs {
    agentos_kernel::KernelArgs {
        model: ModelSpec::Gguf(default_model_path()),
        config: EngineConfig {
            device: DeviceChoice::Flex,
            ..EngineConfig::default()
        },
    }
}

/// An AgentOS on the default model (see [`kernel_args`]).
pub async fn model_os() -> agentos_runtime::AgentOS {
    agentos_runtime::AgentOS::builder()
        .kernel(kernel_args())
        .start()
        .await
        .expect("the tree starts with the model")
}

/// Waits (up to 10 s) for `condition`: actor states are dropped just after a stop is reported.
pub async fn eventually(condition: impl Fn() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the condition did not hold within 10 s");
}

/// f32 weights on flex with a KV cache of only 24 blocks (192 tokens): a few sequences fill it.
pub fn engine_f32_small_kv() -> MutexGuard<'static, Engine> {
    static ENGINE: OnceLock<Mutex<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            // SmolLM2-135M: 30 layers x 3 KV heads x 64 dims, keys and values, f32 host pools.
            let bytes_per_block = 8 * 30 * 3 * 64 * 2 * 4;
            load_with(EngineConfig {
                dtype: WeightDtype::F32,
                kv_cache: agentos_kernel::KvCacheConfig {
                    max_bytes: 24 * bytes_per_block,
                    ..Default::default()
                },
                ..EngineConfig::default()
            })
        })
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}
