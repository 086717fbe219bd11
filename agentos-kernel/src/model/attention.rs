//! Grouped-query attention over one sequence's cached keys and values.
//!
//! Query heads are grouped by the key/value head they share (head `h` uses kv head
//! `h / group`), so the group folds into the row dimension and one batched matmul per
//! kv head does the work without repeating keys in memory.

use burn::tensor::activation::softmax;
use burn::tensor::{DType, Device, Tensor};

/// The attention of `n_new` query tokens at absolute positions `start_pos..start_pos + n_new`
/// over the `context` cached tokens `0..start_pos + n_new` (causal).
///
/// # Shapes
/// q: `[n_new, heads, head_dim]`, k and v: `[context, kv_heads * head_dim]`
/// → output `[n_new, heads * head_dim]` and, when asked, probabilities `[heads, n_new, context]`
pub fn attend(
    q: Tensor<3>,
    k: Tensor<2>,
    v: Tensor<2>,
    start_pos: usize,
    kv_heads: usize,
    want_probs: bool,
    device: &Device,
) -> (Tensor<2>, Option<Tensor<3>>) {
    let [n_new, heads, head_dim] = q.dims();
    let context = k.dims()[0];
    let group = heads / kv_heads;
    let scale = 1.0 / (head_dim as f64).sqrt();

    // [n, heads, d] → [heads, n, d] → [kv_heads, group * n, d]
    let q = q.swap_dims(0, 1).reshape([kv_heads, group * n_new, head_dim]);
    // [context, kv_heads * d] → [context, kv_heads, d] → [kv_heads, context, d]
    let k = k.reshape([context, kv_heads, head_dim]).swap_dims(0, 1);
    let v = v.reshape([context, kv_heads, head_dim]).swap_dims(0, 1);

    // [kv_heads, group * n, context]
    let scores = q.matmul(k.swap_dims(1, 2)).mul_scalar(scale);
    let scores = if n_new > 1 {
        // Query i (absolute position start_pos + i) sees keys 0..=start_pos + i.
        let mut mask = vec![0f32; n_new * context];
        for i in 0..n_new {
            for j in (start_pos + i + 1)..context {
                mask[i * context + j] = f32::NEG_INFINITY;
            }
        }
        // [1, 1, n, context] broadcast over kv heads and the group.
        let mask = super::upload(mask, [1, 1, n_new, context], DType::F32, device);
        scores
            .reshape([kv_heads, group, n_new, context])
            .add(mask)
            .reshape([kv_heads, group * n_new, context])
    } else {
        scores
    };
    let probs = softmax(scores, 2);

    // [kv_heads, group * n, d] → [heads, n, d] → [n, heads, d] → [n, heads * d]
    let out = probs
        .clone()
        .matmul(v)
        .reshape([heads, n_new, head_dim])
        .swap_dims(0, 1)
        .reshape([n_new, heads * head_dim]);
    let probs = want_probs.then(|| probs.reshape([heads, n_new, context]));
    (out, probs)
}

/// The attention of `batch` sequences that each add one token, in one padded batched matmul
/// (decode steps dominate serving, and per-sequence ops would cost `batch` times the launches).
/// Sequence `b` has `context[b]` cached tokens; rows past that are padding, masked to zero weight.
///
/// # Shapes
/// q: `[batch, heads, head_dim]`, k and v: `[batch * max_context, kv_heads * head_dim]` (each
/// sequence's rows padded to `max_context`), mask: `[batch, 1, 1, max_context]` additive
/// → output `[batch, heads * head_dim]` and, when asked, probabilities `[batch, heads, max_context]`
pub fn attend_decode_batch(
    q: Tensor<3>,
    k: Tensor<2>,
    v: Tensor<2>,
    mask: Option<Tensor<4>>,
    kv_heads: usize,
    want_probs: bool,
) -> (Tensor<2>, Option<Tensor<3>>) {
    let [batch, heads, head_dim] = q.dims();
    let max_context = k.dims()[0] / batch;
    let group = heads / kv_heads;
    let scale = 1.0 / (head_dim as f64).sqrt();
    // [batch, kv_heads, group, d]
    let q = q.reshape([batch, kv_heads, group, head_dim]);
    // [batch * L, kv_heads * d] → [batch, L, kv_heads, d] → [batch, kv_heads, L, d]
    let k = k.reshape([batch, max_context, kv_heads, head_dim]).swap_dims(1, 2);
    let v = v.reshape([batch, max_context, kv_heads, head_dim]).swap_dims(1, 2);
    // [batch, kv_heads, group, L]
    let mut scores = q.matmul(k.swap_dims(2, 3)).mul_scalar(scale);
    if let Some(mask) = mask {
        scores = scores.add(mask);
    }
    let probs = softmax(scores, 3);
    // [batch, kv_heads, group, d] → [batch, heads * d]
    let out = probs.clone().matmul(v).reshape([batch, heads * head_dim]);
    let probs = want_probs.then(|| probs.reshape([batch, heads, max_context]));
    (out, probs)
}
