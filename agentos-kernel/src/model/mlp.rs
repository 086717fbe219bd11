//! SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`, with gate and up fused into one matmul.

use burn::tensor::Tensor;
use burn::tensor::activation::silu;

/// # Shapes
/// gate_up: `[hidden, 2 * intermediate]`, down: `[intermediate, hidden]`;
/// input and output: `[tokens, hidden]`
pub struct Mlp {
    pub gate_up: Tensor<2>,
    pub down: Tensor<2>,
    pub intermediate: usize,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let tokens = x.dims()[0];
        // [tokens, 2 * intermediate]
        let gu = super::linear(x, &self.gate_up);
        let gate = gu.clone().slice([0..tokens, 0..self.intermediate]);
        let up = gu.slice([0..tokens, self.intermediate..2 * self.intermediate]);
        super::linear(silu(gate).mul(up), &self.down)
    }
}
