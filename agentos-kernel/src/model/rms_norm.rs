//! RMSNorm: `x / sqrt(mean(x²) + eps) * weight`.

use burn::tensor::{Device, Tensor};

/// # Shapes
/// weight: `[hidden]`; input and output: `[tokens, hidden]`
pub struct RmsNorm {
    weight: Tensor<2>,
    eps: f64,
}

impl RmsNorm {
    pub fn new(weight: Vec<f32>, eps: f32, device: &Device) -> Self {
        let hidden = weight.len();
        RmsNorm {
            // [1, hidden] so it broadcasts over tokens.
            weight: super::upload(weight, [1, hidden], burn::tensor::DType::F32, device),
            eps: eps as f64,
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        // [tokens, 1]
        let inv_rms = x.clone().square().mean_dim(1).add_scalar(self.eps).sqrt().recip();
        x.mul(inv_rms).mul(self.weight.clone())
    }
}
