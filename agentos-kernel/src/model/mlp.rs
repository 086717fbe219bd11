//! SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`, with gate and up fused into one matmul.

use burn::tensor::activation::silu;
use burn::tensor::{Tensor, TensorData};

use super::{Linear, host_math};
use crate::kv_cache::host_values;

/// # Shapes
/// gate_up: `[hidden, 2 * intermediate]`, down: `[intermediate, hidden]`;
/// input and output: `[tokens, hidden]`
pub struct Mlp {
    pub(crate) gate_up: Linear,
    pub(crate) down: Linear,
    pub intermediate: usize,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let tokens = x.dims()[0];
        // Both matmuls on the host: the activation runs on their host vectors in between,
        // instead of a round trip through burn tensors for a slice, a scalar silu and a mul.
        if !matches!(self.gate_up, Linear::Burn(_)) && !matches!(self.down, Linear::Burn(_)) {
            let (gu, _) = self
                .gate_up
                .host_matmul(&host_values(x), tokens)
                .expect("a host linear");
            let (y, device) = self
                .down
                .host_matmul(&host_math::swiglu(&gu, self.intermediate), tokens)
                .expect("a host linear");
            return Tensor::from_data(TensorData::new(y, [tokens, self.down.outputs()]), device);
        }
        // [tokens, 2 * intermediate]
        let gu = self.gate_up.forward(x);
        let gate = gu.clone().slice([0..tokens, 0..self.intermediate]);
        let up = gu.slice([0..tokens, self.intermediate..2 * self.intermediate]);
        self.down.forward(silu(gate).mul(up))
    }
}
