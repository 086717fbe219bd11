//! Hyper-parameters of a Llama-family model, read from GGUF metadata or HF `config.json`.

use serde::{Deserialize, Serialize};

use crate::error::{KernelError, Result};
use crate::gguf::GgufFile;

/// Upper bounds on hyper-parameters, checked before anything is sized by them. Each is far
/// above the released Llama-family models (in brackets, the largest we know of), so only
/// corrupted or crafted metadata meets them.
const MAX_HIDDEN: usize = 1 << 16; // 16384 (Llama 3.1 405B)
const MAX_LAYERS: usize = 1024; // 126 (Llama 3.1 405B)
const MAX_HEADS: usize = 1024; // 128 (Llama 3.1 405B)
const MAX_HEAD_DIM: usize = 1024; // 256 (Gemma 2)
const MAX_INTERMEDIATE: usize = 1 << 20; // 53248 (Llama 3.1 405B)
const MAX_VOCAB: usize = 1 << 22; // 262144 (Gemma 3)
const MAX_CONTEXT: usize = 1 << 24; // 10M (Llama 4 Scout)
/// The one allocation sized by the config alone rather than by weights in the file: RoPE
/// cos/sin tables of `context_length × head_dim` f32 each (see `Rope::new`). This bound keeps
/// the pair within 1 GiB and still admits a 1M-token context with heads of 128.
const MAX_ROPE_TABLE: usize = 1 << 27;

/// Architectures the kernel runs. All are Llama-shaped; they differ in details listed here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    /// Llama, SmolLM, Mistral-style dense models.
    Llama,
    /// Qwen2: biases on the q/k/v projections.
    Qwen2,
}

/// Shapes and constants of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub rope_theta: f32,
    pub rms_norm_eps: f32,
    pub context_length: usize,
    pub tie_embeddings: bool,
    pub qkv_bias: bool,
}

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let arch_name = g.string("general.architecture")?;
        let architecture = match arch_name {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(KernelError::ModelFormat(format!(
                    "architecture {other:?} is not supported (supported: llama, qwen2)"
                )));
            }
        };
        let key = |k: &str| format!("{arch_name}.{k}");
        // Absent optional keys take their defaults; present ones of the wrong type (a string,
        // a negative number) are errors rather than silently defaulted.
        let optional = |k: &str| -> Result<Option<usize>> {
            match g.get(&key(k)) {
                None => Ok(None),
                Some(_) => g.u64(&key(k)).map(|v| Some(to_usize(v))),
            }
        };
        let optional_f64 = |k: &str| -> Result<Option<f64>> {
            match g.get(&key(k)) {
                None => Ok(None),
                Some(_) => g.f64(&key(k)).map(Some),
            }
        };
        let hidden_size = to_usize(g.u64(&key("embedding_length"))?);
        let n_heads = to_usize(g.u64(&key("attention.head_count"))?);
        let n_kv_heads = optional("attention.head_count_kv")?.unwrap_or(n_heads);
        let head_dim = optional("rope.dimension_count")?.unwrap_or(hidden_size / n_heads.max(1));
        let vocab_size = match optional("vocab_size")? {
            Some(v) => v,
            None => g.strings("tokenizer.ggml.tokens")?.len(),
        };
        let config = ModelConfig {
            architecture,
            hidden_size,
            n_layers: to_usize(g.u64(&key("block_count"))?),
            n_heads,
            n_kv_heads,
            head_dim,
            intermediate_size: to_usize(g.u64(&key("feed_forward_length"))?),
            vocab_size,
            rope_theta: optional_f64("rope.freq_base")?.unwrap_or(10_000.0) as f32,
            rms_norm_eps: optional_f64("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5) as f32,
            context_length: optional("context_length")?.unwrap_or(2048),
            tie_embeddings: g.tensor_info("output.weight").is_none(),
            qkv_bias: g.tensor_info("blk.0.attn_q.bias").is_some(),
        };
        config.validate()
    }

    pub fn from_hf_json(text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Hf {
            model_type: Option<String>,
            hidden_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            head_dim: Option<usize>,
            intermediate_size: usize,
            vocab_size: usize,
            rope_theta: Option<f32>,
            rms_norm_eps: Option<f32>,
            max_position_embeddings: Option<usize>,
            tie_word_embeddings: Option<bool>,
            attention_bias: Option<bool>,
        }
        let hf: Hf = serde_json::from_str(text).map_err(|e| KernelError::ModelFormat(format!("config.json: {e}")))?;
        let model_type = hf.model_type.as_deref().unwrap_or("llama");
        let architecture = match model_type {
            "llama" | "mistral" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(KernelError::ModelFormat(format!(
                    "config.json model_type {other:?} is not supported (supported: llama, mistral, qwen2)"
                )));
            }
        };
        let config = ModelConfig {
            architecture,
            hidden_size: hf.hidden_size,
            n_layers: hf.num_hidden_layers,
            n_heads: hf.num_attention_heads,
            n_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf.head_dim.unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            intermediate_size: hf.intermediate_size,
            vocab_size: hf.vocab_size,
            rope_theta: hf.rope_theta.unwrap_or(10_000.0),
            rms_norm_eps: hf.rms_norm_eps.unwrap_or(1e-6),
            context_length: hf.max_position_embeddings.unwrap_or(2048),
            tie_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            qkv_bias: architecture == Architecture::Qwen2 || hf.attention_bias.unwrap_or(false),
        };
        config.validate()
    }

    /// Rejects shapes the engine cannot run or that are too large to be real (see the bounds
    /// above), naming the first offending field.
    fn validate(self) -> Result<Self> {
        let bad = |what: String| Err(KernelError::ModelFormat(what));
        for (what, value, max) in [
            ("hidden size", self.hidden_size, MAX_HIDDEN),
            ("layer count", self.n_layers, MAX_LAYERS),
            ("attention head count", self.n_heads, MAX_HEADS),
            ("key/value head count", self.n_kv_heads, MAX_HEADS),
            ("head dimension", self.head_dim, MAX_HEAD_DIM),
            ("feed-forward size", self.intermediate_size, MAX_INTERMEDIATE),
            ("vocabulary size", self.vocab_size, MAX_VOCAB),
            ("context length", self.context_length, MAX_CONTEXT),
        ] {
            if !(1..=max).contains(&value) {
                return bad(format!("{what} {value} is out of range (1 to {max})"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head dimension {} must be even for RoPE", self.head_dim));
        }
        // Both factors are bounded above, so the product cannot overflow.
        if self.context_length * self.head_dim > MAX_ROPE_TABLE {
            return bad(format!(
                "context length {} × head dimension {} needs {} RoPE table entries (at most {MAX_ROPE_TABLE})",
                self.context_length,
                self.head_dim,
                self.context_length * self.head_dim
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!("RoPE base {} must be a positive number", self.rope_theta));
        }
        if !(0.0..1.0).contains(&self.rms_norm_eps) {
            return bad(format!("RMS norm epsilon {} must be in [0, 1)", self.rms_norm_eps));
        }
        Ok(self)
    }
}

/// A count from the file as `usize`; one that does not fit is out of every range checked in
/// `ModelConfig::validate` anyway.
fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}
