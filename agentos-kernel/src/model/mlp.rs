//! SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`, with gate and up fused into one matmul.

use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use super::Linear;

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
        // [tokens, 2 * intermediate]
        let gu = self.gate_up.forward(x);
        let gate = gu.clone().slice([0..tokens, 0..self.intermediate]);
        let up = gu.slice([0..tokens, self.intermediate..2 * self.intermediate]);
        self.down.forward(silu(gate).mul(up))
    }
}
