//! Decode attention on the CPU, reading each sequence's keys and values where they lie in the
//! host KV pools.
//!
//! Why it exists: through burn, a decode step first gathers every sequence's context into a
//! padded copy for each layer, then runs many tiny batched matmuls (`[group, head_dim]` ×
//! `[head_dim, context]`) whose per-call overhead dominates their arithmetic. Here each
//! (sequence, head) pair is one task that streams that sequence's rows once: scores, softmax,
//! weighted sum. Sequences of different lengths need no padding or mask.
//!
//! # Shapes
//! q: `[batch, heads * head_dim]`; keys, values: a pool `[pool_rows, kv_heads * head_dim]` (f32
//! or f16);
//! `contexts[b]`: the pool rows of sequence `b`'s context, its new token last
//! → out `[batch, heads * head_dim]`; probabilities, when asked, `[batch][heads * context_b]`

use rayon::prelude::*;

use crate::kv_cache::KvElement;

/// Heads of the model, for reading a row of the pools.
#[derive(Debug, Clone, Copy)]
pub struct HeadShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// The attention output of every sequence's one new token and, with `want_probs`, its
/// probabilities per head.
pub fn decode_attention<T: Lanes>(
    q: &[f32],
    keys: &[T],
    values: &[T],
    contexts: &[Vec<usize>],
    shape: HeadShape,
    want_probs: bool,
) -> (Vec<f32>, Option<Vec<Vec<f32>>>) {
    let HeadShape {
        heads,
        kv_heads,
        head_dim,
    } = shape;
    let q_dim = heads * head_dim;
    assert_eq!(q.len(), contexts.len() * q_dim, "q shape");
    let mut out = vec![0f32; q.len()];
    let mut probs: Vec<Vec<f32>> = if want_probs {
        contexts.iter().map(|c| vec![0f32; heads * c.len()]).collect()
    } else {
        Vec::new()
    };
    let group = heads / kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    // One task per (sequence, kv head): the `group` query heads sharing that kv head read each
    // key and value row once. Their output rows `[group * head_dim]` and probability rows
    // `[group * context]` are contiguous, so each task gets its own chunks.
    let mut prob_chunks: Vec<Option<&mut [f32]>> = if want_probs {
        probs
            .iter_mut()
            .zip(contexts)
            .flat_map(|(p, c)| p.chunks_mut(group * c.len().max(1)).map(Some))
            .collect()
    } else {
        (0..contexts.len() * kv_heads).map(|_| None).collect()
    };
    out.par_chunks_mut(group * head_dim)
        .zip(prob_chunks.par_iter_mut())
        .enumerate()
        .for_each_init(Vec::new, |scores, (task, (out, prob))| {
            let (b, kv_head) = (task / kv_heads, task % kv_heads);
            let q_start = b * q_dim + kv_head * group * head_dim;
            let rows = PoolRows {
                keys,
                values,
                context: &contexts[b],
                offset: kv_head * head_dim,
                row_len: kv_heads * head_dim,
            };
            group_attention(
                &q[q_start..q_start + group * head_dim],
                rows,
                head_dim,
                scale,
                scores,
                out,
            );
            if let Some(prob) = prob {
                prob.copy_from_slice(scores);
            }
        });
    drop(prob_chunks);
    (out, want_probs.then_some(probs))
}

/// One kv head's slice of one sequence's context rows in the pools.
struct PoolRows<'a, T> {
    keys: &'a [T],
    values: &'a [T],
    context: &'a [usize],
    /// Where the kv head starts within a row, and the row length.
    offset: usize,
    row_len: usize,
}

/// The query heads sharing one kv head: `out[g] = softmax(q[g] · K^T * scale) · V` over the
/// context rows, leaving the probabilities in `scores`.
///
/// # Shapes
/// qs: `[group * head_dim]` → out `[group * head_dim]`, scores `[group * context]`
fn group_attention<T: Lanes>(
    qs: &[f32],
    rows: PoolRows<'_, T>,
    head_dim: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if head_dim.is_multiple_of(8)
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            let fits = |pool: &[T]| {
                rows.context
                    .iter()
                    .all(|&r| r * rows.row_len + rows.offset + head_dim <= pool.len())
            };
            assert!(fits(rows.keys) && fits(rows.values), "context rows outside the pools");
            // SAFETY: the features it is compiled for were just detected, head_dim is a
            // multiple of 8, and every row it reads was just checked to lie inside the pools.
            unsafe { x86::group_attention(qs, rows, head_dim, scale, scores, out) };
            return;
        }
    }
    group_attention_portable(qs, rows, head_dim, scale, scores, out);
}

#[inline(always)]
fn group_attention_portable<T: KvElement>(
    qs: &[f32],
    rows: PoolRows<'_, T>,
    head_dim: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let group = qs.len() / head_dim;
    let n = rows.context.len();
    scores.clear();
    scores.resize(group * n, 0.0);
    let span = |r: usize| {
        let start = r * rows.row_len + rows.offset;
        start..start + head_dim
    };
    for (j, &r) in rows.context.iter().enumerate() {
        let k = &rows.keys[span(r)];
        for (g, q) in qs.chunks_exact(head_dim).enumerate() {
            scores[g * n + j] = dot(q, k) * scale;
        }
    }
    for probs in scores.chunks_exact_mut(n) {
        softmax_in_place(probs);
    }
    out.fill(0.0);
    for (j, &r) in rows.context.iter().enumerate() {
        let v = &rows.values[span(r)];
        for (g, out) in out.chunks_exact_mut(head_dim).enumerate() {
            let p = scores[g * n + j];
            for (o, &v) in out.iter_mut().zip(v) {
                *o += p * v.to_f32();
            }
        }
    }
}

/// A dot product in 8 independent lanes (the order a vector unit sums in).
#[inline(always)]
fn dot<T: KvElement>(a: &[f32], b: &[T]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a_blocks, b_blocks) = (a.chunks_exact(8), b.chunks_exact(8));
    let (a_rest, b_rest) = (a_blocks.remainder(), b_blocks.remainder());
    for (x, y) in a_blocks.zip(b_blocks) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i].to_f32();
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y.to_f32()).sum();
    lanes.iter().sum::<f32>() + tail
}

/// A pool element the AVX2 code can load 8 at a time as f32.
pub trait Lanes: KvElement {
    /// # Safety
    /// AVX2 and F16C are available and `p` points at 8 readable elements.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Lanes for f32 {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller's contract.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
}

impl Lanes for half::f16 {
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const half::f16) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller's contract.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
    }
}

/// `x ← softmax(x)`, with a vectorisable exp (a call to libm's per score cost more than the
/// dot products).
#[inline(always)]
fn softmax_in_place(x: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let blocks = x.chunks_exact(8);
    let rest = blocks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for block in blocks {
        for i in 0..8 {
            lanes[i] = lanes[i].max(block[i]);
        }
    }
    let max = lanes.iter().fold(rest, |m, &v| m.max(v));
    // Exps and sum in separate loops: a running float sum is a serial chain that would keep
    // the exps from vectorising.
    for v in x.iter_mut() {
        *v = exp_nonpositive(*v - max);
    }
    let mut lanes = [0f32; 8];
    let blocks = x.chunks_exact(8);
    let rest: f32 = blocks.remainder().iter().sum();
    for block in blocks {
        for i in 0..8 {
            lanes[i] += block[i];
        }
    }
    let inv = 1.0 / (lanes.iter().sum::<f32>() + rest);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `e^x` for `x <= 0` to about 2e-7 relative: `x = n ln 2 + r` with `|r| <= ln 2 / 2`, a degree-6
/// Taylor polynomial for `e^r`, and `2^n` built in the exponent bits. Below -87 it returns
/// `e^-87` (about 1.6e-38) instead of a denormal, which no softmax can tell from zero.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 0.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n is in [-126, 0], so n + 127 is a normal float's biased exponent.
    f32::from_bits((((n as i32) + 127) as u32) << 23) * p
}

#[cfg(target_arch = "x86_64")]
// Lane loops index the accumulators and the rows together; with constant bounds they unroll into
// registers, which is the point.
#[allow(clippy::needless_range_loop)]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Lanes, PoolRows, softmax_in_place};

    /// [`super::group_attention_portable`] with AVX2: scores 8 rows at a time (8 accumulators
    /// reduced together, instead of one horizontal sum per row), and the weighted sum of values
    /// kept in registers across the rows.
    ///
    /// # Safety
    /// AVX2 and FMA are available, `head_dim % 8 == 0`, and every context row's span
    /// `r * row_len + offset .. + head_dim` lies inside both pools.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn group_attention<T: Lanes>(
        qs: &[f32],
        rows: PoolRows<'_, T>,
        head_dim: usize,
        scale: f32,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let group = qs.len() / head_dim;
        let context = rows.context;
        let n = context.len();
        scores.clear();
        scores.resize(group * n, 0.0);
        let (kp, vp) = (rows.keys.as_ptr(), rows.values.as_ptr());
        let row_start = |r: usize| r * rows.row_len + rows.offset;
        let scale_v = _mm256_set1_ps(scale);
        for g in 0..group {
            // SAFETY (this loop): q reads head_dim floats of qs at g * head_dim; the key rows
            // are inside the pool (the caller's contract); scores holds group * n floats.
            unsafe {
                let q = qs.as_ptr().add(g * head_dim);
                let s = scores.as_mut_ptr().add(g * n);
                let mut j = 0;
                while j + 8 <= n {
                    let base: [*const T; 8] = std::array::from_fn(|i| kp.add(row_start(context[j + i])));
                    let mut acc = [_mm256_setzero_ps(); 8];
                    for d in (0..head_dim).step_by(8) {
                        let qv = _mm256_loadu_ps(q.add(d));
                        for i in 0..8 {
                            acc[i] = _mm256_fmadd_ps(T::load8(base[i].add(d)), qv, acc[i]);
                        }
                    }
                    _mm256_storeu_ps(s.add(j), _mm256_mul_ps(sum_each(acc), scale_v));
                    j += 8;
                }
                for (j, &r) in context.iter().enumerate().skip(j) {
                    let k = kp.add(row_start(r));
                    let mut acc = _mm256_setzero_ps();
                    for d in (0..head_dim).step_by(8) {
                        acc = _mm256_fmadd_ps(T::load8(k.add(d)), _mm256_loadu_ps(q.add(d)), acc);
                    }
                    let lanes: [f32; 8] = std::mem::transmute(acc);
                    *s.add(j) = lanes.iter().sum::<f32>() * scale;
                }
            }
        }
        for probs in scores.chunks_exact_mut(n) {
            softmax_in_place(probs);
        }
        // out[g] = Σ_j p[g][j] · V[j], 64 columns at a time in up to 8 register accumulators.
        for g in 0..group {
            let p = &scores[g * n..(g + 1) * n];
            for d0 in (0..head_dim).step_by(64) {
                let o = &mut out[g * head_dim + d0..g * head_dim + d0 + (head_dim - d0).min(64)];
                // SAFETY: the caller's contract covers the value rows; o holds 8 * W floats.
                unsafe {
                    match o.len() / 8 {
                        8 => weighted_sum::<T, 8>(p, vp, context, |r| row_start(r) + d0, o),
                        7 => weighted_sum::<T, 7>(p, vp, context, |r| row_start(r) + d0, o),
                        6 => weighted_sum::<T, 6>(p, vp, context, |r| row_start(r) + d0, o),
                        5 => weighted_sum::<T, 5>(p, vp, context, |r| row_start(r) + d0, o),
                        4 => weighted_sum::<T, 4>(p, vp, context, |r| row_start(r) + d0, o),
                        3 => weighted_sum::<T, 3>(p, vp, context, |r| row_start(r) + d0, o),
                        2 => weighted_sum::<T, 2>(p, vp, context, |r| row_start(r) + d0, o),
                        _ => weighted_sum::<T, 1>(p, vp, context, |r| row_start(r) + d0, o),
                    }
                }
            }
        }
    }

    /// `out = Σ_j p[j] · values[start(context[j]) .. + 8 W]`, accumulated in W registers.
    ///
    /// # Safety
    /// AVX2 and FMA are available; every span read lies inside the values pool; out holds 8 W.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn weighted_sum<T: Lanes, const W: usize>(
        p: &[f32],
        values: *const T,
        context: &[usize],
        start: impl Fn(usize) -> usize,
        out: &mut [f32],
    ) {
        let mut acc = [_mm256_setzero_ps(); W];
        for (&pj, &r) in p.iter().zip(context) {
            // SAFETY: the span is inside the pool (the caller's contract).
            unsafe {
                let v = values.add(start(r));
                let pv = _mm256_set1_ps(pj);
                for i in 0..W {
                    acc[i] = _mm256_fmadd_ps(T::load8(v.add(8 * i)), pv, acc[i]);
                }
            }
        }
        for i in 0..W {
            // SAFETY: out holds 8 W floats.
            unsafe { _mm256_storeu_ps(out[8 * i..8 * i + 8].as_mut_ptr(), acc[i]) };
        }
    }

    /// Lane `i` of the result is the sum of the lanes of `a[i]`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn sum_each(a: [__m256; 8]) -> __m256 {
        // hadd(x, y) = [x0+x1, x2+x3, y0+y1, y2+y3 | x4+x5, x6+x7, y4+y5, y6+y7]; two rounds leave
        // each vector's low-half and high-half sums side by side, and one add joins the halves.
        let s01 = _mm256_hadd_ps(a[0], a[1]);
        let s23 = _mm256_hadd_ps(a[2], a[3]);
        let s45 = _mm256_hadd_ps(a[4], a[5]);
        let s67 = _mm256_hadd_ps(a[6], a[7]);
        let s0123 = _mm256_hadd_ps(s01, s23);
        let s4567 = _mm256_hadd_ps(s45, s67);
        let low = _mm256_permute2f128_ps(s0123, s4567, 0x20);
        let high = _mm256_permute2f128_ps(s0123, s4567, 0x31);
        _mm256_add_ps(low, high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain softmax attention for one head over explicit rows.
    fn reference(q: &[f32], ks: &[&[f32]], vs: &[&[f32]], scale: f32) -> (Vec<f32>, Vec<f32>) {
        let scores: Vec<f32> = ks
            .iter()
            .map(|k| q.iter().zip(*k).map(|(a, b)| a * b).sum::<f32>() * scale)
            .collect();
        let max = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f32 = exps.iter().sum();
        let probs: Vec<f32> = exps.iter().map(|e| e / sum).collect();
        let mut out = vec![0f32; q.len()];
        for (p, v) in probs.iter().zip(vs) {
            for (o, x) in out.iter_mut().zip(*v) {
                *o += p * x;
            }
        }
        (out, probs)
    }

    #[test]
    fn exp_matches_libm_over_the_softmax_range() {
        for i in 0..=17_000 {
            let x = -(i as f32) * 0.005;
            let (got, want) = (exp_nonpositive(x), x.exp());
            assert!((got - want).abs() <= 1e-6 * want, "e^{x}: {got} vs {want}");
        }
        assert!(exp_nonpositive(-1000.0) < 1e-37 && exp_nonpositive(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn matches_plain_attention_for_ragged_contexts_and_grouped_heads() {
        // 12: the portable code; 16 and 72 (a 64-column pass and an 8-column one): AVX2 where
        // the machine has it.
        for head_dim in [12, 16, 72] {
            let shape = HeadShape {
                heads: 6,
                kv_heads: 2,
                head_dim,
            };
            check_against_plain_attention::<f32>(shape);
            check_against_plain_attention::<half::f16>(shape);
        }
    }

    /// Pools of `T`; the reference reads the same (rounded) values as f32.
    fn check_against_plain_attention<T: Lanes>(shape: HeadShape) {
        let row_len = shape.kv_heads * shape.head_dim;
        let pool_rows = 40;
        let value = |i: usize, m: usize| ((i * m) % 101) as f32 / 101.0 - 0.5;
        let pool = |m: usize| -> (Vec<T>, Vec<f32>) {
            let exact: Vec<f32> = (0..pool_rows * row_len).map(|i| value(i, m)).collect();
            let mut stored = vec![T::default(); exact.len()];
            T::store(&exact, &mut stored);
            let read = stored.iter().map(|v| v.to_f32()).collect();
            (stored, read)
        };
        let ((keys_t, keys), (values_t, values)) = (pool(7919), pool(104729));
        // Three sequences with scattered, differently sized contexts (one of a single row).
        let contexts = vec![vec![3, 4, 5, 20, 21], vec![39], (0..30).rev().collect::<Vec<_>>()];
        let q_dim = shape.heads * shape.head_dim;
        let q: Vec<f32> = (0..contexts.len() * q_dim).map(|i| value(i, 31)).collect();
        let (out, probs) = decode_attention(&q, &keys_t, &values_t, &contexts, shape, true);
        let probs = probs.expect("asked for");
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        for (b, context) in contexts.iter().enumerate() {
            for h in 0..shape.heads {
                let off = (h / (shape.heads / shape.kv_heads)) * shape.head_dim;
                let rows = |pool: &[f32]| -> Vec<Vec<f32>> {
                    let row = |r: usize| pool[r * row_len + off..r * row_len + off + shape.head_dim].to_vec();
                    context.iter().map(|&r| row(r)).collect()
                };
                let (ks, vs) = (rows(&keys), rows(&values));
                let ks: Vec<&[f32]> = ks.iter().map(|k| k.as_slice()).collect();
                let vs: Vec<&[f32]> = vs.iter().map(|v| v.as_slice()).collect();
                let qh = &q[b * q_dim + h * shape.head_dim..b * q_dim + (h + 1) * shape.head_dim];
                let (want_out, want_probs) = reference(qh, &ks, &vs, scale);
                let got = &out[b * q_dim + h * shape.head_dim..b * q_dim + (h + 1) * shape.head_dim];
                for (g, w) in got.iter().zip(&want_out) {
                    assert!(
                        (g - w).abs() < 1e-5,
                        "{shape:?}: out of sequence {b}, head {h}: {g} vs {w}"
                    );
                }
                let got = &probs[b][h * context.len()..(h + 1) * context.len()];
                for (g, w) in got.iter().zip(&want_probs) {
                    assert!((g - w).abs() < 1e-6, "{shape:?}: probs of sequence {b}, head {h}");
                }
            }
        }
    }
}
