//! The Llama-family transformer in burn, and where its weights come from.

pub mod attention;
pub mod config;
pub mod host_attention;
pub mod host_math;
pub mod host_matmul;
pub mod mlp;
pub mod quant_matmul;
pub mod rms_norm;
pub mod rope;
pub mod transformer;
pub mod weights;

use std::sync::Arc;

use burn::tensor::{DType, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

pub use self::config::{Architecture, ModelConfig};
pub use self::transformer::Transformer;

/// How weight matrices are kept in memory. Norms and activations are f32; the KV cache is f16
/// except with `F32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WeightDtype {
    /// The file's own encoding where a kernel computes on it (the default): on the CPU with the
    /// host kernels, a GGUF file's quantised matrices (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K) stay in
    /// their blocks and are multiplied by the quantised kernel ([`quant_matmul`]), in about half
    /// the memory of f16 (for speed, see the README's kernel figures); float tensors,
    /// safetensors files and other devices use f16.
    #[default]
    Auto,
    /// Full precision: exact dequantised values, twice the memory traffic of f16.
    F32,
    /// Half precision: half the memory and bandwidth of f32; matmuls accumulate in f32.
    F16,
}

impl WeightDtype {
    /// The burn dtype of weights uploaded as tensors (f16 for `Auto`, whose quantised matrices
    /// are never burn tensors).
    pub fn burn_dtype(self) -> DType {
        match self {
            WeightDtype::F32 => DType::F32,
            WeightDtype::F16 | WeightDtype::Auto => DType::F16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::Auto => "auto",
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
        }
    }
}

impl std::str::FromStr for WeightDtype {
    type Err = crate::KernelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(WeightDtype::Auto),
            "f32" | "float32" => Ok(WeightDtype::F32),
            "f16" | "float16" | "half" => Ok(WeightDtype::F16),
            other => Err(crate::KernelError::InvalidRequest(format!(
                "unknown weight dtype {other:?} (use auto, f32 or f16)"
            ))),
        }
    }
}

/// `x @ w` where `x` is f32 and `w` is in the weight dtype; the result is f32.
///
/// # Shapes
/// `x: [rows, in]`, `w: [in, out]` → `[rows, out]`
pub(crate) fn linear(x: Tensor<2>, w: &Tensor<2>) -> Tensor<2> {
    let dtype = w.dtype();
    if dtype == DType::F32 {
        x.matmul(w.clone())
    } else {
        x.cast(dtype).matmul(w.clone()).cast(DType::F32)
    }
}

/// A weight matrix used as `x @ w`: a burn tensor, or on the CPU backend the host kernels' copy:
/// f16 packed for [`host_matmul`], or the file's quantised blocks for [`quant_matmul`].
pub(crate) enum Linear {
    /// `[in, out]` in the weight dtype (boxed: a tensor handle is much larger than the host
    /// variant).
    Burn(Box<Tensor<2>>),
    Host {
        weight: host_matmul::PackedWeight,
        device: Device,
    },
    /// Matrices whose outputs are placed side by side (fused q, k, v or gate and up), each in
    /// its own encoding; `Arc` because a tied output head shares the embedding's blocks.
    Quant {
        parts: Vec<Arc<quant_matmul::QuantMatrix>>,
        device: Device,
    },
}

impl Linear {
    /// Uploads `values` (row-major `[inputs, outputs]`), or with `host` packs them for the
    /// host kernel instead.
    pub fn new(values: Vec<f32>, inputs: usize, outputs: usize, dtype: DType, host: bool, device: &Device) -> Self {
        if host {
            Linear::Host {
                weight: host_matmul::PackedWeight::pack(&values, inputs, outputs),
                device: device.clone(),
            }
        } else {
            Linear::Burn(Box::new(upload(values, [inputs, outputs], dtype, device)))
        }
    }

    /// Output width.
    pub fn outputs(&self) -> usize {
        match self {
            Linear::Burn(w) => w.dims()[1],
            Linear::Host { weight, .. } => weight.outputs(),
            Linear::Quant { parts, .. } => parts.iter().map(|p| p.outputs()).sum(),
        }
    }

    /// `x @ w` by the host kernels on host values (`[rows, in]` → `[rows, out]`), with the device
    /// the result belongs on; `None` for a burn tensor.
    pub fn host_matmul(&self, x: &[f32], rows: usize) -> Option<(Vec<f32>, &Device)> {
        match self {
            Linear::Burn(_) => None,
            Linear::Host { weight, device } => Some((weight.matmul(x, rows), device)),
            Linear::Quant { parts, device } => {
                let inputs = parts[0].inputs();
                let q = quant_matmul::Q8Rows::quantize(x, rows, inputs);
                if parts.len() == 1 {
                    return Some((parts[0].matmul_quantized(&q), device));
                }
                let outputs = self.outputs();
                let mut y = vec![0f32; rows * outputs];
                let mut col = 0;
                for part in parts {
                    let width = part.outputs();
                    let yp = part.matmul_quantized(&q);
                    for r in 0..rows {
                        y[r * outputs + col..r * outputs + col + width]
                            .copy_from_slice(&yp[r * width..(r + 1) * width]);
                    }
                    col += width;
                }
                Some((y, device))
            }
        }
    }

    /// # Shapes
    /// `x: [rows, in]` → `[rows, out]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Linear::Burn(weight) => linear(x, weight),
            _ => {
                let rows = x.dims()[0];
                let (y, device) = self
                    .host_matmul(&crate::kv_cache::host_values(x), rows)
                    .expect("a host linear");
                Tensor::from_data(TensorData::new(y, [rows, self.outputs()]), device)
            }
        }
    }
}

/// Uploads host values with the given shape and dtype.
pub(crate) fn upload<const D: usize>(values: Vec<f32>, shape: [usize; D], dtype: DType, device: &Device) -> Tensor<D> {
    let data = match dtype {
        DType::F16 => TensorData::new(values.into_iter().map(half::f16::from_f32).collect::<Vec<_>>(), shape),
        _ => TensorData::new(values, shape),
    };
    Tensor::from_data(data, (device, dtype))
}
