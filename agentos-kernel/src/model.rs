//! The Llama-family transformer in burn, and where its weights come from.

pub mod attention;
pub mod config;
pub mod host_attention;
pub mod host_math;
pub mod host_matmul;
pub mod mlp;
pub mod rms_norm;
pub mod rope;
pub mod transformer;
pub mod weights;

use burn::tensor::{DType, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

pub use self::config::{Architecture, ModelConfig};
pub use self::transformer::Transformer;

/// How weight matrices are kept in device memory. Norms, activations and the KV cache are f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum WeightDtype {
    /// Full precision: exact dequantised values, twice the memory traffic of f16.
    F32,
    /// Half precision: half the memory and bandwidth; matmuls accumulate in f32.
    #[default]
    F16,
}

impl WeightDtype {
    pub fn burn_dtype(self) -> DType {
        match self {
            WeightDtype::F32 => DType::F32,
            WeightDtype::F16 => DType::F16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
        }
    }
}

impl std::str::FromStr for WeightDtype {
    type Err = crate::KernelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(WeightDtype::F32),
            "f16" | "float16" | "half" => Ok(WeightDtype::F16),
            other => Err(crate::KernelError::InvalidRequest(format!(
                "unknown weight dtype {other:?} (use f32 or f16)"
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

/// A weight matrix used as `x @ w`: a burn tensor, or on the CPU backend with f16 weights the
/// host kernel's packed copy (see [`host_matmul`]), which then serves every batch size.
pub(crate) enum Linear {
    /// `[in, out]` in the weight dtype (boxed: a tensor handle is much larger than the host
    /// variant).
    Burn(Box<Tensor<2>>),
    Host {
        weight: host_matmul::PackedWeight,
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

    /// # Shapes
    /// `x: [rows, in]` → `[rows, out]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Linear::Burn(weight) => linear(x, weight),
            Linear::Host { weight, device } => {
                let rows = x.dims()[0];
                let y = weight.matmul(&crate::kv_cache::host_values(x), rows);
                Tensor::from_data(TensorData::new(y, [rows, weight.outputs()]), device)
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
