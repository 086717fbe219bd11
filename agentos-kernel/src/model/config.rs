//! Hyper-parameters of a Llama-family model, read from GGUF metadata or HF `config.json`.

use serde::{Deserialize, Serialize};

use crate::error::{KernelError, Result};
use crate::gguf::GgufFile;

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
        let hidden_size = g.u64(&key("embedding_length"))? as usize;
        let n_heads = g.u64(&key("attention.head_count"))? as usize;
        let n_kv_heads = g
            .u64(&key("attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(n_heads);
        let head_dim = g
            .u64(&key("rope.dimension_count"))
            .map(|v| v as usize)
            .unwrap_or(hidden_size / n_heads.max(1));
        let vocab_size = match g.u64(&key("vocab_size")) {
            Ok(v) => v as usize,
            Err(_) => g.strings("tokenizer.ggml.tokens")?.len(),
        };
        let config = ModelConfig {
            architecture,
            hidden_size,
            n_layers: g.u64(&key("block_count"))? as usize,
            n_heads,
            n_kv_heads,
            head_dim,
            intermediate_size: g.u64(&key("feed_forward_length"))? as usize,
            vocab_size,
            rope_theta: g.f64(&key("rope.freq_base")).unwrap_or(10_000.0) as f32,
            rms_norm_eps: g.f64(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f32,
            context_length: g.u64(&key("context_length")).unwrap_or(2048) as usize,
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

    fn validate(self) -> Result<Self> {
        let bad = |what: String| Err(KernelError::ModelFormat(what));
        if self.hidden_size == 0 || self.n_layers == 0 || self.n_heads == 0 || self.vocab_size == 0 {
            return bad(format!("degenerate model shape: {self:?}"));
        }
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head dimension {} must be even for RoPE", self.head_dim));
        }
        // Guard against absurd metadata before we allocate tables sized by it.
        if self.hidden_size > 1 << 16 || self.n_layers > 1024 || self.vocab_size > 1 << 22 {
            return bad(format!("implausible model shape: {self:?}"));
        }
        Ok(self)
    }
}
