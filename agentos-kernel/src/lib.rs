//! # agentos-kernel: the Reasoning Kernel
//!
//! Runs Llama-family language models in [burn](https://burn.dev) for many agents at once:
//!
//! - **Model files**: GGUF v2/v3 ([`gguf`]) with F32/F16/BF16/Q4_0/Q4_1/Q8_0/Q4_K/Q6_K
//!   weights, and Hugging Face directories (`config.json`, `*.safetensors`, `tokenizer.json`).
//! - **Tokenizer** ([`tokenizer`]): byte-level BPE from GGUF metadata, or `tokenizers`.
//! - **Chat** ([`chat`]): the model's own Jinja template, rendered with minijinja.
//! - **Engine** ([`engine`]): a paged KV cache ([`kv_cache`]), batched forwards over any mix
//!   of prefill chunks and decode steps, attention probabilities and embeddings on request,
//!   sampling, and continuous batching on a dedicated thread.
//! - **Grammars** ([`grammar`]): constrained sampling per request (JSON Schema or Lark, through
//!   llguidance over our own tokenizer), optionally lazy (free until a start text).
//! - **Actor** ([`actor`]): `KernelActor`, the engine behind typed ractor messages.
//!
//! ```no_run
//! use agentos_kernel::{ChatMessage, Engine, EngineConfig, ModelSpec};
//! use agentos_kernel::engine::generate::{Batcher, GenerateRequest, GenerationEvent, prepare};
//!
//! # fn main() -> agentos_kernel::Result<()> {
//! let mut engine = Engine::load(&ModelSpec::default(), EngineConfig::default())?;
//! let request = GenerateRequest::chat(vec![ChatMessage::user("What is Rust?")]).max_tokens(32);
//! let prepared = prepare(request, engine.tokenizer(), engine.template(), engine.model_config())?;
//! let (tx, rx) = std::sync::mpsc::channel();
//! let mut batcher = Batcher::new();
//! batcher.submit(prepared, Box::new(tx));
//! while !batcher.is_idle() {
//!     batcher.step(&mut engine);
//! }
//! for event in rx.try_iter() {
//!     if let GenerationEvent::Token { text, .. } = event {
//!         print!("{text}");
//!     }
//! }
//! # Ok(())
//! # }
//! ```

pub mod actor;
pub mod chat;
#[cfg(feature = "cli")]
pub mod cli;
pub mod device;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod grammar;
pub mod kv_cache;
pub mod model;
pub mod model_spec;
pub mod parity;
pub mod tokenizer;

pub use actor::{KernelActor, KernelArgs, KernelMsg};
pub use chat::{ChatMessage, ChatTemplate};
pub use device::{DeviceChoice, SelectedDevice, adapter_descriptions, select_device};
pub use engine::generate::{
    BatcherStats, DEFAULT_JOB_PRIORITY, EventSink, FinishReason, GenerateRequest, GenerationEvent, GenerationSummary,
    Job, JobOutput, Prompt, RequestId,
};
pub use engine::sampling::SamplingParams;
pub use engine::{
    AttentionEntropy, AttentionMaps, Embeddings, Engine, EngineConfig, EngineStats, ForwardItem, ForwardOutput,
    LogitsWanted, ModelInfo, SequenceId, TextAttention,
};
pub use error::{GgufError, KernelError, Result};
pub use grammar::{Constraint, Grammar};
pub use kv_cache::{KvCacheConfig, KvStorage};
pub use model::{ModelConfig, WeightDtype};
pub use model_spec::ModelSpec;
pub use tokenizer::{ChatSegment, TokenId, Tokenizer};
