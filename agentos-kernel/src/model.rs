//! The Llama-family transformer in burn, and where its weights come from.

pub mod attention;
pub mod config;
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

/// A weight matrix used as `x @ w`, with the host kernel's copy for small batches when enabled
/// (see [`host_matmul`]).
pub(crate) struct Linear {
    /// `[in, out]` in the weight dtype.
    weight: Tensor<2>,
    host: Option<host_matmul::PackedWeight>,
    device: Device,
}

impl Linear {
    /// Uploads `values` (row-major `[inputs, outputs]`); with `host`, also packs them for the
    /// host kernel.
    pub fn new(values: Vec<f32>, inputs: usize, outputs: usize, dtype: DType, host: bool, device: &Device) -> Self {
        let host = host.then(|| host_matmul::PackedWeight::pack(&values, inputs, outputs));
        Linear {
            weight: upload(values, [inputs, outputs], dtype, device),
            host,
            device: device.clone(),
        }
    }

    /// # Shapes
    /// `x: [rows, in]` → `[rows, out]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let rows = x.dims()[0];
        if let Some(host) = self.host.as_ref().filter(|_| rows <= host_matmul::MAX_ROWS) {
            let values = x
                .clone()
                .try_into_data()
                .ok()
                .and_then(|d| d.try_into_vec::<f32>().ok());
            if let Some(values) = values {
                let y = host.matmul(&values, rows);
                return Tensor::from_data(TensorData::new(y, [rows, host.outputs()]), &self.device);
            }
        }
        linear(x, &self.weight)
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
