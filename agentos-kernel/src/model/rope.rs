//! Rotary position embeddings, "rotate half" form (as Hugging Face computes them).
//!
//! GGUF Llama weights are stored permuted for llama.cpp's adjacent-pair rotation; the weight
//! loader undoes that permutation, so one rotation serves every source.

use burn::tensor::{DType, Device, Int, Tensor};

/// Precomputed cos/sin tables for every position up to the model's context length.
///
/// # Shapes
/// tables: `[max_positions, head_dim]`; input and output: `[tokens, heads, head_dim]`
pub struct Rope {
    cos: Tensor<2>,
    sin: Tensor<2>,
    head_dim: usize,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f32, max_positions: usize, device: &Device) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_positions * head_dim);
        let mut sin = Vec::with_capacity(max_positions * head_dim);
        for pos in 0..max_positions {
            for j in 0..head_dim {
                let i = j % half;
                let freq = (theta as f64).powf(-2.0 * i as f64 / head_dim as f64);
                let angle = pos as f64 * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Rope {
            cos: super::upload(cos, [max_positions, head_dim], DType::F32, device),
            sin: super::upload(sin, [max_positions, head_dim], DType::F32, device),
            head_dim,
        }
    }

    /// The cos/sin rows for the given positions, shaped to broadcast over heads.
    ///
    /// # Shapes
    /// positions: `[tokens]` → two `[tokens, 1, head_dim]`
    pub fn tables(&self, positions: Tensor<1, Int>) -> (Tensor<3>, Tensor<3>) {
        let cos = self.cos.clone().select(0, positions.clone()).unsqueeze_dim(1);
        let sin = self.sin.clone().select(0, positions).unsqueeze_dim(1);
        (cos, sin)
    }

    /// `x * cos + rotate_half(x) * sin`, where `rotate_half([a, b]) = [-b, a]`.
    pub fn apply(&self, x: Tensor<3>, cos: &Tensor<3>, sin: &Tensor<3>) -> Tensor<3> {
        let [tokens, heads, _] = x.dims();
        let half = self.head_dim / 2;
        let first = x.clone().slice([0..tokens, 0..heads, 0..half]);
        let second = x.clone().slice([0..tokens, 0..heads, half..self.head_dim]);
        let rotated = Tensor::cat(vec![second.neg(), first], 2);
        x.mul(cos.clone()).add(rotated.mul(sin.clone()))
    }
}
