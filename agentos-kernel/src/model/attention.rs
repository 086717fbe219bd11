//! Grouped-query attention through burn over keys and values gathered from device KV pools (the
//! GPU path, and flex with the host kernels off); with host pools, `host_attention` reads the
//! rows in place instead, for decode steps and prompt chunks alike.
//!
//! Query heads are grouped by the key/value head they share (head `h` uses kv head
//! `h / group`), so the group folds into the row dimension and one batched matmul per
//! kv head does the work without repeating keys in memory.

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

/// The additive causal mask of `n_new` queries at absolute positions
/// `start_pos..start_pos + n_new` over the keys `0..start_pos + n_new`: query `i` sees keys
/// `0..=start_pos + i`, the rest get -inf. `None` for a single query, which sees every key.
/// Computed on the device from two index ranges (a backend without a device `arange`, such as
/// wgpu without burn's fusion, uploads those `n_new + context` integers, not an
/// `[n_new, context]` mask), once per forward: every layer uses the same mask.
///
/// # Shapes
/// → `[1, 1, n_new, start_pos + n_new]`
pub fn causal_mask(n_new: usize, start_pos: usize, device: &Device) -> Option<Tensor<4>> {
    if n_new < 2 {
        return None;
    }
    let shape = [1, 1, n_new, start_pos + n_new];
    // True where key j > start_pos + i.
    let future = Tensor::<4, Bool>::tril_mask(shape, start_pos as i64, device);
    Some(Tensor::<4>::zeros(shape, device).mask_fill(future, f32::NEG_INFINITY))
}

/// The additive mask of a padded decode batch: sequence `b` has `lens[b]` real rows of the
/// `max_context`, the rest get -inf. The lengths (and, without a device `arange`, the column
/// indices) are uploaded; the mask is computed on the device.
///
/// # Shapes
/// lens: `[batch]` → `[batch, 1, 1, max_context]`
pub fn padding_mask(lens: &[usize], max_context: usize, device: &Device) -> Tensor<4> {
    let batch = lens.len();
    let lens: Vec<i64> = lens.iter().map(|&l| l as i64).collect();
    // [batch, 1]
    let lens = Tensor::<1, Int>::from_data(TensorData::new(lens, [batch]), device).reshape([batch, 1]);
    // [1, max_context]
    let columns = Tensor::<1, Int>::arange(0..max_context as i64, device).reshape([1, max_context]);
    // [batch, max_context]: true where column >= len.
    let padding = columns
        .sub(lens)
        .greater_equal_scalar(0)
        .reshape([batch, 1, 1, max_context]);
    Tensor::<4>::zeros([batch, 1, 1, max_context], device).mask_fill(padding, f32::NEG_INFINITY)
}

/// The attention of `n_new` query tokens over their `context` cached tokens, under `mask` (from
/// [`causal_mask`]; `None` lets every query see every key).
///
/// # Shapes
/// q: `[n_new, heads, head_dim]`, k and v: `[context, kv_heads * head_dim]`,
/// mask: `[1, 1, n_new, context]`
/// → output `[n_new, heads * head_dim]` and, when asked, probabilities `[heads, n_new, context]`
pub fn attend(
    q: Tensor<3>,
    k: Tensor<2>,
    v: Tensor<2>,
    mask: Option<&Tensor<4>>,
    kv_heads: usize,
    want_probs: bool,
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
    let scores = match mask {
        // [1, 1, n, context] broadcast over kv heads and the group.
        Some(mask) => scores
            .reshape([kv_heads, group, n_new, context])
            .add(mask.clone())
            .reshape([kv_heads, group * n_new, context]),
        None => scores,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: Tensor<4>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn causal_mask_lets_each_query_see_its_prefix() {
        let device = Device::flex();
        assert!(causal_mask(1, 7, &device).is_none());
        for start_pos in [0, 3] {
            let n = 4;
            let context = start_pos + n;
            let mask = causal_mask(n, start_pos, &device).unwrap();
            assert_eq!(mask.dims(), [1, 1, n, context]);
            let mask = values(mask);
            for i in 0..n {
                for j in 0..context {
                    let want = if j <= start_pos + i { 0.0 } else { f32::NEG_INFINITY };
                    assert_eq!(mask[i * context + j], want, "start {start_pos}, query {i}, key {j}");
                }
            }
        }
    }

    #[test]
    fn padding_mask_hides_rows_past_each_length() {
        let device = Device::flex();
        let lens = [3, 5, 1];
        let mask = padding_mask(&lens, 5, &device);
        assert_eq!(mask.dims(), [3, 1, 1, 5]);
        let mask = values(mask);
        for (b, &len) in lens.iter().enumerate() {
            for j in 0..5 {
                let want = if j < len { 0.0 } else { f32::NEG_INFINITY };
                assert_eq!(mask[b * 5 + j], want, "sequence {b}, row {j}");
            }
        }
    }
}
