//! Weight sources: a GGUF file or a Hugging Face safetensors directory.
//!
//! Both hand out dequantised `f32` matrices in PyTorch order (`[out_features, in_features]`)
//! under canonical names, so the transformer does not care where weights came from; a GGUF
//! source also hands out quantised matrices in their file's blocks, for the quantised kernel.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

use crate::error::{KernelError, Result};
use crate::gguf::GgufFile;
use crate::model::config::{Architecture, ModelConfig};
use crate::model::quant_matmul::{QuantFormat, QuantMatrix};

/// The weights of one tensor: values and PyTorch-order shape.
pub struct HostTensor {
    pub values: Vec<f32>,
    pub shape: Vec<usize>,
}

/// Canonical weight names (the transformer asks for these).
#[derive(Debug, Clone, Copy)]
pub enum Weight {
    Embedding,
    FinalNorm,
    Output,
    AttnNorm(usize),
    Q(usize),
    K(usize),
    V(usize),
    QBias(usize),
    KBias(usize),
    VBias(usize),
    O(usize),
    FfnNorm(usize),
    Gate(usize),
    Up(usize),
    Down(usize),
}

pub trait WeightSource {
    /// Returns the tensor, or `Ok(None)` if the source does not have it (optional tensors).
    fn get(&self, weight: Weight) -> Result<Option<HostTensor>>;

    fn require(&self, weight: Weight) -> Result<HostTensor> {
        self.get(weight)?
            .ok_or_else(|| KernelError::ModelFormat(format!("missing weight {weight:?}")))
    }

    /// Whether the source holds `weight` (without reading it).
    fn has(&self, weight: Weight) -> Result<bool> {
        Ok(self.get(weight)?.is_some())
    }

    /// The matrix in its file's quantised blocks (`[out, in]`, rows permuted as [`Self::get`]
    /// permutes them), or `Ok(None)` where the source holds it as floats or not at all.
    fn get_quantized(&self, _weight: Weight) -> Result<Option<QuantMatrix>> {
        Ok(None)
    }
}

/// GGUF weights (llama.cpp naming).
pub struct GgufWeights<'a> {
    pub gguf: &'a GgufFile,
    pub config: &'a ModelConfig,
}

impl GgufWeights<'_> {
    fn name(weight: Weight) -> String {
        match weight {
            Weight::Embedding => "token_embd.weight".to_string(),
            Weight::FinalNorm => "output_norm.weight".to_string(),
            Weight::Output => "output.weight".to_string(),
            Weight::AttnNorm(i) => format!("blk.{i}.attn_norm.weight"),
            Weight::Q(i) => format!("blk.{i}.attn_q.weight"),
            Weight::K(i) => format!("blk.{i}.attn_k.weight"),
            Weight::V(i) => format!("blk.{i}.attn_v.weight"),
            Weight::QBias(i) => format!("blk.{i}.attn_q.bias"),
            Weight::KBias(i) => format!("blk.{i}.attn_k.bias"),
            Weight::VBias(i) => format!("blk.{i}.attn_v.bias"),
            Weight::O(i) => format!("blk.{i}.attn_output.weight"),
            Weight::FfnNorm(i) => format!("blk.{i}.ffn_norm.weight"),
            Weight::Gate(i) => format!("blk.{i}.ffn_gate.weight"),
            Weight::Up(i) => format!("blk.{i}.ffn_up.weight"),
            Weight::Down(i) => format!("blk.{i}.ffn_down.weight"),
        }
    }

    /// The heads whose RoPE rows llama.cpp's converter permuted in `weight` (Llama's Q and K),
    /// checked against its `rows`.
    fn permuted_heads(&self, weight: Weight, name: &str, rows: usize) -> Result<Option<usize>> {
        if self.config.architecture != Architecture::Llama {
            return Ok(None);
        }
        let heads = match weight {
            Weight::Q(_) => self.config.n_heads,
            Weight::K(_) => self.config.n_kv_heads,
            _ => return Ok(None),
        };
        if heads == 0 || rows == 0 || !rows.is_multiple_of(heads) {
            return Err(KernelError::ModelFormat(format!(
                "{name} has {rows} rows, which {heads} heads do not divide evenly"
            )));
        }
        Ok(Some(heads))
    }
}

impl WeightSource for GgufWeights<'_> {
    fn get(&self, weight: Weight) -> Result<Option<HostTensor>> {
        let name = Self::name(weight);
        if self.gguf.tensor_info(&name).is_none() {
            return Ok(None);
        }
        let (mut values, dims) = self.gguf.tensor_f32(&name)?;
        // GGUF lists the fastest dimension first; PyTorch lists it last.
        let shape: Vec<usize> = dims.iter().rev().map(|&d| d as usize).collect();
        // llama.cpp's converter permutes Q and K rows of Llama models so that RoPE rotates
        // adjacent pairs; we rotate halves (as HF does), so undo that permutation here.
        if let Some(heads) = self.permuted_heads(weight, &name, shape[0])? {
            let row_len = shape.iter().skip(1).product::<usize>();
            unpermute_rope_rows(&mut values, row_len, heads);
        }
        Ok(Some(HostTensor { values, shape }))
    }

    fn has(&self, weight: Weight) -> Result<bool> {
        Ok(self.gguf.tensor_info(&Self::name(weight)).is_some())
    }

    fn get_quantized(&self, weight: Weight) -> Result<Option<QuantMatrix>> {
        let name = Self::name(weight);
        let Some(info) = self.gguf.tensor_info(&name) else {
            return Ok(None);
        };
        let Some(format) = QuantFormat::of(info.ggml_type) else {
            return Ok(None);
        };
        let &[inputs, outputs] = info.dims.as_slice() else {
            return Err(KernelError::ModelFormat(format!(
                "{name} has dims {:?}, a weight matrix has two",
                info.dims
            )));
        };
        let (inputs, outputs) = (inputs as usize, outputs as usize);
        let mut data = self.gguf.tensor_bytes(info)?.to_vec();
        self.gguf.release(info);
        // Rows hold whole blocks (the reader checked), so the permutation moves row bytes.
        if let Some(heads) = self.permuted_heads(weight, &name, outputs)? {
            let row_bytes = data.len() / outputs;
            unpermute_rope_rows(&mut data, row_bytes, heads);
        }
        match QuantMatrix::new(format, outputs, inputs, data) {
            Ok(m) => Ok(Some(m)),
            Err(KernelError::ModelFormat(m)) => Err(KernelError::ModelFormat(format!("{name}: {m}"))),
            Err(e) => Err(e),
        }
    }
}

/// Inverse of llama.cpp's `permute` on rows of `row_len` items: GGUF row `(h, 2i + j)` holds
/// HF row `(h, j * half + i)`. `values` holds whole rows and `n_heads` divides their count.
fn unpermute_rope_rows<T: Copy>(values: &mut [T], row_len: usize, n_heads: usize) {
    if row_len == 0 {
        // No elements (a dimension of 0): nothing to move; the shape check refuses the tensor.
        return;
    }
    let rows = values.len() / row_len;
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let src = values.to_vec();
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let gguf_row = h * head_dim + 2 * i + j;
                let hf_row = h * head_dim + j * half + i;
                values[hf_row * row_len..(hf_row + 1) * row_len]
                    .copy_from_slice(&src[gguf_row * row_len..(gguf_row + 1) * row_len]);
            }
        }
    }
}

/// One safetensors file, memory-mapped, with its header parsed and bounds-checked.
struct SafetensorsFile {
    path: PathBuf,
    map: Mmap,
    data_start: usize,
    entries: HashMap<String, (String, Vec<usize>, usize, usize)>,
}

impl SafetensorsFile {
    fn open(path: &Path) -> Result<Self> {
        let err = |msg: String| KernelError::ModelFormat(format!("{}: {msg}", path.display()));
        let file = File::open(path).map_err(|e| KernelError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        // SAFETY: read-only map; the file must not change while the model loads.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| KernelError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        if map.len() < 8 {
            return Err(err(format!(
                "{} bytes is too short for a safetensors header",
                map.len()
            )));
        }
        let header_len = u64::from_le_bytes(map[..8].try_into().expect("8 bytes")) as usize;
        if header_len > map.len() - 8 || header_len > 100 << 20 {
            return Err(err(format!("header length {header_len} runs past the end of the file")));
        }
        let header: HashMap<String, serde_json::Value> = serde_json::from_slice(&map[8..8 + header_len])
            .map_err(|e| err(format!("header is not valid JSON: {e}")))?;
        let data_start = 8 + header_len;
        let data_len = map.len() - data_start;
        let mut entries = HashMap::new();
        for (name, v) in header {
            if name == "__metadata__" {
                continue;
            }
            let dtype = v["dtype"].as_str().unwrap_or_default().to_string();
            let shape = integers(&v["shape"])
                .ok_or_else(|| err(format!("tensor {name}: shape must be a list of non-negative integers")))?;
            let offsets = integers(&v["data_offsets"]);
            let Some(&[start, end]) = offsets.as_deref() else {
                return Err(err(format!("tensor {name}: data_offsets must be two integers")));
            };
            let elem = match dtype.as_str() {
                "F32" => 4,
                "F16" | "BF16" => 2,
                other => return Err(err(format!("tensor {name}: unsupported dtype {other:?}"))),
            };
            // The shape is the file's word: its byte size is computed in checked arithmetic
            // before it is compared with the data it claims.
            let Some(n_bytes) = shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .and_then(|n| n.checked_mul(elem))
            else {
                return Err(err(format!(
                    "tensor {name}: shape {shape:?} overflows the address space"
                )));
            };
            if start > end || end > data_len || end - start != n_bytes {
                return Err(err(format!(
                    "tensor {name}: data [{start}, {end}) does not fit {} {dtype} values in {data_len} bytes",
                    n_bytes / elem
                )));
            }
            entries.insert(name, (dtype, shape, start, end));
        }
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            map,
            data_start,
            entries,
        })
    }

    fn read(&self, name: &str) -> Option<HostTensor> {
        let (dtype, shape, start, end) = self.entries.get(name)?;
        let bytes = &self.map[self.data_start + start..self.data_start + end];
        let values = match dtype.as_str() {
            "F32" => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            "F16" => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        };
        Some(HostTensor {
            values,
            shape: shape.clone(),
        })
    }
}

/// A JSON list of non-negative integers that fit `usize`; `None` for anything else (a missing
/// key, a negative or fractional entry), which the header must not carry.
fn integers(v: &serde_json::Value) -> Option<Vec<usize>> {
    v.as_array()?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect()
}

/// A Hugging Face model directory: `*.safetensors` with HF tensor names.
pub struct SafetensorsWeights {
    files: Vec<SafetensorsFile>,
}

impl SafetensorsWeights {
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| KernelError::Io {
                path: dir.to_path_buf(),
                source: e,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(KernelError::ModelFormat(format!(
                "{}: no *.safetensors files",
                dir.display()
            )));
        }
        let files = paths.iter().map(|p| SafetensorsFile::open(p)).collect::<Result<_>>()?;
        Ok(SafetensorsWeights { files })
    }

    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }
}

impl SafetensorsWeights {
    fn name(weight: Weight) -> String {
        match weight {
            Weight::Embedding => "model.embed_tokens.weight".to_string(),
            Weight::FinalNorm => "model.norm.weight".to_string(),
            Weight::Output => "lm_head.weight".to_string(),
            Weight::AttnNorm(i) => format!("model.layers.{i}.input_layernorm.weight"),
            Weight::Q(i) => format!("model.layers.{i}.self_attn.q_proj.weight"),
            Weight::K(i) => format!("model.layers.{i}.self_attn.k_proj.weight"),
            Weight::V(i) => format!("model.layers.{i}.self_attn.v_proj.weight"),
            Weight::QBias(i) => format!("model.layers.{i}.self_attn.q_proj.bias"),
            Weight::KBias(i) => format!("model.layers.{i}.self_attn.k_proj.bias"),
            Weight::VBias(i) => format!("model.layers.{i}.self_attn.v_proj.bias"),
            Weight::O(i) => format!("model.layers.{i}.self_attn.o_proj.weight"),
            Weight::FfnNorm(i) => format!("model.layers.{i}.post_attention_layernorm.weight"),
            Weight::Gate(i) => format!("model.layers.{i}.mlp.gate_proj.weight"),
            Weight::Up(i) => format!("model.layers.{i}.mlp.up_proj.weight"),
            Weight::Down(i) => format!("model.layers.{i}.mlp.down_proj.weight"),
        }
    }
}

impl WeightSource for SafetensorsWeights {
    fn get(&self, weight: Weight) -> Result<Option<HostTensor>> {
        let name = Self::name(weight);
        Ok(self.files.iter().find_map(|f| f.read(&name)))
    }

    fn has(&self, weight: Weight) -> Result<bool> {
        let name = Self::name(weight);
        Ok(self.files.iter().any(|f| f.entries.contains_key(&name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // One head of dim 4 (half = 2), one column: HF rows [a0, a1, b0, b1] are stored by
        // llama.cpp as [a0, b0, a1, b1].
        let mut v = vec![0.0, 2.0, 1.0, 3.0];
        unpermute_rope_rows(&mut v, 1, 1);
        assert_eq!(v, vec![0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn safetensors_bounds_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let header = br#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0u8; 8]); // only 8 of the 16 data bytes
        std::fs::write(dir.path().join("m.safetensors"), &bytes).unwrap();
        let err = SafetensorsWeights::open_dir(dir.path()).err().unwrap();
        assert!(err.to_string().contains("does not fit"), "{err}");
    }
}
