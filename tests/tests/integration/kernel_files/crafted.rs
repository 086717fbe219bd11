//! Small model files written by the tests: a GGUF writer, and a tiny valid Llama model as a
//! GGUF file and as a Hugging Face directory (`config.json` + safetensors) to craft bad files
//! from.

use std::path::Path;

use agentos_kernel::model::{Architecture, ModelConfig};

/// ggml type ids (`ggml.h`).
pub const F32: u32 = 0;
pub const F16: u32 = 1;
pub const Q4_0: u32 = 2;
pub const Q4_1: u32 = 3;
pub const Q8_0: u32 = 8;
pub const Q4_K: u32 = 12;
pub const Q6_K: u32 = 14;
pub const BF16: u32 = 30;

/// GGUF metadata value type ids.
const TYPE_U32: u32 = 4;
const TYPE_I32: u32 = 5;
const TYPE_F32: u32 = 6;
const TYPE_STRING: u32 = 8;
const TYPE_ARRAY: u32 = 9;
const TYPE_U64: u32 = 10;

/// A GGUF v3 file written entry by entry, laid out as llama.cpp writes it: header, metadata,
/// tensor infos, then the tensor data at 32-byte aligned offsets.
#[derive(Default)]
pub struct GgufWriter {
    n_kv: u64,
    kv: Vec<u8>,
    n_tensors: u64,
    infos: Vec<u8>,
    data: Vec<u8>,
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter::default()
    }

    fn key(&mut self, key: &str, value_type: u32) {
        self.n_kv += 1;
        put_str(&mut self.kv, key);
        self.kv.extend(value_type.to_le_bytes());
    }

    pub fn u32(mut self, key: &str, v: u32) -> Self {
        self.key(key, TYPE_U32);
        self.kv.extend(v.to_le_bytes());
        self
    }

    pub fn u64(mut self, key: &str, v: u64) -> Self {
        self.key(key, TYPE_U64);
        self.kv.extend(v.to_le_bytes());
        self
    }

    pub fn meta(self, key: &str, v: Meta) -> Self {
        match v {
            Meta::U32(v) => self.u32(key, v),
            Meta::U64(v) => self.u64(key, v),
            Meta::F32(v) => self.f32(key, v),
            Meta::Str(v) => self.str(key, v),
        }
    }

    pub fn f32(mut self, key: &str, v: f32) -> Self {
        self.key(key, TYPE_F32);
        self.kv.extend(v.to_le_bytes());
        self
    }

    pub fn str(mut self, key: &str, v: &str) -> Self {
        self.key(key, TYPE_STRING);
        put_str(&mut self.kv, v);
        self
    }

    pub fn strs(mut self, key: &str, items: &[&str]) -> Self {
        self.key(key, TYPE_ARRAY);
        self.kv.extend(TYPE_STRING.to_le_bytes());
        self.kv.extend((items.len() as u64).to_le_bytes());
        for s in items {
            put_str(&mut self.kv, s);
        }
        self
    }

    pub fn i32s(mut self, key: &str, items: &[i32]) -> Self {
        self.key(key, TYPE_ARRAY);
        self.kv.extend(TYPE_I32.to_le_bytes());
        self.kv.extend((items.len() as u64).to_le_bytes());
        for v in items {
            self.kv.extend(v.to_le_bytes());
        }
        self
    }

    /// An array header claiming `len` items of `item_type` followed by `items` raw bytes.
    pub fn raw_array(mut self, key: &str, item_type: u32, len: u64, items: &[u8]) -> Self {
        self.key(key, TYPE_ARRAY);
        self.kv.extend(item_type.to_le_bytes());
        self.kv.extend(len.to_le_bytes());
        self.kv.extend(items);
        self
    }

    /// A tensor with GGUF-order `dims` (fastest first) and its encoded `data`.
    pub fn tensor(mut self, name: &str, dims: &[u64], ggml_type: u32, data: &[u8]) -> Self {
        self.n_tensors += 1;
        put_str(&mut self.infos, name);
        self.infos.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(ggml_type.to_le_bytes());
        self.infos.extend((self.data.len() as u64).to_le_bytes());
        self.data.extend(data);
        self.data.resize(self.data.len().next_multiple_of(32), 0);
        self
    }

    pub fn build(self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(self.kv);
        out.extend(self.infos);
        out.resize(out.len().next_multiple_of(32), 0);
        out.extend(self.data);
        out
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// The shape of the tiny model: hidden 8, one layer, 2 heads of 4 sharing one key/value head,
/// an MLP of 16 and a vocabulary of 8.
pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Llama,
        hidden_size: 8,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 4,
        intermediate_size: 16,
        vocab_size: 8,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
        context_length: 64,
        tie_embeddings: true,
        qkv_bias: false,
    }
}

/// Deterministic filler bytes (xorshift), so quantised blocks hold varied scales and nibbles.
pub fn filler(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn f32s(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| ((i % 7) as f32 * 0.1 - 0.3).to_le_bytes())
        .collect()
}

fn halves(n: usize, bf16: bool) -> Vec<u8> {
    (0..n)
        .flat_map(|i| {
            let bits = ((i % 7) as f32 * 0.1 - 0.3).to_bits();
            // f32 → bf16 truncates; f32 → f16 is done by hand for these small normal values.
            let h = if bf16 {
                (bits >> 16) as u16
            } else {
                let sign = ((bits >> 16) & 0x8000) as u16;
                let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
                if exp <= 0 {
                    sign
                } else {
                    sign | ((exp as u16) << 10) | ((bits >> 13) & 0x3ff) as u16
                }
            };
            h.to_le_bytes()
        })
        .collect()
}

/// A metadata value for [`tiny_gguf_where`].
#[derive(Debug, Clone, Copy)]
pub enum Meta {
    U32(u32),
    U64(u64),
    F32(f32),
    Str(&'static str),
}

/// The tiny model's `llama.*` hyper-parameters.
const TINY_HPARAMS: &[(&str, Meta)] = &[
    ("llama.embedding_length", Meta::U32(8)),
    ("llama.block_count", Meta::U32(1)),
    ("llama.attention.head_count", Meta::U32(2)),
    ("llama.attention.head_count_kv", Meta::U32(1)),
    ("llama.rope.dimension_count", Meta::U32(4)),
    ("llama.feed_forward_length", Meta::U32(16)),
    ("llama.context_length", Meta::U32(64)),
    ("llama.rope.freq_base", Meta::F32(10_000.0)),
    ("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-5)),
];

/// A valid one-layer Llama GGUF of a few kilobytes: every tensor type the reader supports
/// appears (the model's own weights in F32/F16/BF16, extra tensors in the quantised types).
pub fn tiny_gguf() -> Vec<u8> {
    tiny_gguf_with(|w| w)
}

/// The tiny model with the hyper-parameter `key` set to `value` instead (or left out, for
/// `None`).
pub fn tiny_gguf_where(key: &str, value: Option<Meta>) -> Vec<u8> {
    tiny_gguf_built(key, value, |w| w)
}

/// The tiny model, with `extra` metadata written after its own.
pub fn tiny_gguf_with(extra: impl FnOnce(GgufWriter) -> GgufWriter) -> Vec<u8> {
    tiny_gguf_built("", None, extra)
}

fn tiny_gguf_built(key: &str, value: Option<Meta>, extra: impl FnOnce(GgufWriter) -> GgufWriter) -> Vec<u8> {
    let mut w = GgufWriter::new()
        .str("general.architecture", "llama")
        .u32("general.alignment", 32);
    for &(k, v) in TINY_HPARAMS {
        if k != key {
            w = w.meta(k, v);
        }
    }
    if let Some(v) = value {
        w = w.meta(key, v);
    }
    tiny_tensors(extra(tiny_tokenizer(w))).build()
}

fn tiny_tokenizer(w: GgufWriter) -> GgufWriter {
    w.str("tokenizer.ggml.model", "gpt2")
        .strs(
            "tokenizer.ggml.tokens",
            &["a", "b", "c", "d", "ab", "cd", "<|im_start|>", "<|im_end|>"],
        )
        .i32s("tokenizer.ggml.token_type", &[1, 1, 1, 1, 1, 1, 3, 3])
        .strs("tokenizer.ggml.merges", &["a b", "c d"])
        .u32("tokenizer.ggml.bos_token_id", 6)
        .u32("tokenizer.ggml.eos_token_id", 7)
}

fn tiny_tensors(w: GgufWriter) -> GgufWriter {
    w.tensor("token_embd.weight", &[8, 8], F16, &halves(64, false))
        .tensor("output_norm.weight", &[8], F32, &f32s(8))
        .tensor("blk.0.attn_norm.weight", &[8], F32, &f32s(8))
        .tensor("blk.0.attn_q.weight", &[8, 8], F32, &f32s(64))
        .tensor("blk.0.attn_k.weight", &[8, 4], F16, &halves(32, false))
        .tensor("blk.0.attn_v.weight", &[8, 4], BF16, &halves(32, true))
        .tensor("blk.0.attn_output.weight", &[8, 8], F32, &f32s(64))
        .tensor("blk.0.ffn_norm.weight", &[8], F32, &f32s(8))
        .tensor("blk.0.ffn_gate.weight", &[8, 16], F16, &halves(128, false))
        .tensor("blk.0.ffn_up.weight", &[8, 16], BF16, &halves(128, true))
        .tensor("blk.0.ffn_down.weight", &[16, 8], F32, &f32s(128))
        .tensor("extra.q4_0", &[32], Q4_0, &filler(1, 18))
        .tensor("extra.q4_1", &[32], Q4_1, &filler(2, 20))
        .tensor("extra.q8_0", &[32, 2], Q8_0, &filler(3, 68))
        .tensor("extra.q4_k", &[256], Q4_K, &filler(4, 144))
        .tensor("extra.q6_k", &[256], Q6_K, &filler(5, 210))
}

/// The tiny model's `config.json` (hidden 8, one layer, 2 heads, 1 key/value head).
pub const TINY_HF_CONFIG: &str = r#"{
  "model_type": "llama",
  "hidden_size": 8,
  "num_hidden_layers": 1,
  "num_attention_heads": 2,
  "num_key_value_heads": 1,
  "head_dim": 4,
  "intermediate_size": 16,
  "vocab_size": 8,
  "rope_theta": 10000.0,
  "rms_norm_eps": 1e-05,
  "max_position_embeddings": 64,
  "tie_word_embeddings": true
}"#;

/// A safetensors file of `(name, dtype, shape, data)` tensors, laid out back to back.
pub fn safetensors(tensors: &[(&str, &str, &[u64], Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend(bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [start, data.len()] }),
        );
    }
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let header = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header);
    out.extend(data);
    out
}

/// A safetensors file with a header written by hand (any JSON, even invalid) and raw data.
pub fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// The tiny model's weights as one safetensors file, in PyTorch order and HF names.
pub fn tiny_safetensors() -> Vec<u8> {
    let layer = |n: &str| format!("model.layers.0.{n}");
    let names: Vec<(String, &str, Vec<u64>)> = vec![
        ("model.embed_tokens.weight".into(), "F16", vec![8, 8]),
        ("model.norm.weight".into(), "F32", vec![8]),
        (layer("input_layernorm.weight"), "BF16", vec![8]),
        (layer("self_attn.q_proj.weight"), "F32", vec![8, 8]),
        (layer("self_attn.k_proj.weight"), "F16", vec![4, 8]),
        (layer("self_attn.v_proj.weight"), "BF16", vec![4, 8]),
        (layer("self_attn.o_proj.weight"), "F32", vec![8, 8]),
        (layer("post_attention_layernorm.weight"), "F32", vec![8]),
        (layer("mlp.gate_proj.weight"), "F16", vec![16, 8]),
        (layer("mlp.up_proj.weight"), "BF16", vec![16, 8]),
        (layer("mlp.down_proj.weight"), "F32", vec![8, 16]),
    ];
    let tensors: Vec<(&str, &str, &[u64], Vec<u8>)> = names
        .iter()
        .map(|(name, dtype, shape)| {
            let n = shape.iter().product::<u64>() as usize;
            let data = match *dtype {
                "F32" => f32s(n),
                "F16" => halves(n, false),
                _ => halves(n, true),
            };
            (name.as_str(), *dtype, shape.as_slice(), data)
        })
        .collect();
    safetensors(&tensors)
}

/// Writes a Hugging Face model directory: `config.json` and `model.safetensors`.
pub fn write_hf_dir(dir: &Path, config: &str, weights: &[u8]) {
    std::fs::write(dir.join("config.json"), config).unwrap();
    std::fs::write(dir.join("model.safetensors"), weights).unwrap();
}
