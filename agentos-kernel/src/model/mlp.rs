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
        if let (Linear::Host { weight: gate_up, .. }, Linear::Host { weight: down, device }) =
            (&self.gate_up, &self.down)
        {
            let gu = gate_up.matmul(&host_values(x), tokens);
            let y = down.matmul(&host_math::swiglu(&gu, self.intermediate), tokens);
            return Tensor::from_data(TensorData::new(y, [tokens, down.outputs()]), device);
        }
        // [tokens, 2 * intermediate]
        let gu = self.gate_up.forward(x);
        let gate = gu.clone().slice([0..tokens, 0..self.intermediate]);
        let up = gu.slice([0..tokens, self.intermediate..2 * self.intermediate]);
        self.down.forward(silu(gate).mul(up))
    }
}
