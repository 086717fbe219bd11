//! Attention on the CPU, reading each sequence's keys and values where they lie in the host KV
//! pools: decode steps, and prompt chunks (each query of a chunk is a context of its own, the
//! rows up to its position, so the causal mask is the list of rows and no `[queries, context]`
//! score matrix is ever built for the whole chunk).
//!
//! Why it exists: through burn, a decode step first gathers every sequence's context into a
//! padded copy for each layer, then runs many tiny batched matmuls (`[group, head_dim]` ×
//! `[head_dim, context]`) whose per-call overhead dominates their arithmetic. Here each
//! (query, kv head) pair is one task that streams that query's rows once for all the query heads
//! sharing them: scores, softmax, weighted sum (with fewer such tasks than two per thread, as in
//! one sequence's decode, each query head is a task, so every core works). Contexts of different
//! lengths need no padding or mask.
//!
//! # Shapes
//! q: `[batch, heads * head_dim]`; keys, values: a pool `[pool_rows, kv_heads * head_dim]` (f32
//! or f16);
//! `contexts[b]`: the pool rows query `b` attends to, its own token last
//! → out `[batch, heads * head_dim]`; probabilities, when asked, `[batch][heads * context_b]`

use rayon::prelude::*;

use super::host_math::softmax_in_place;
use crate::kv_cache::KvElement;

/// Heads of the model, for reading a row of the pools.
#[derive(Debug, Clone, Copy)]
pub struct HeadShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// The attention output of every query over its own context rows (a decode step's new token of
/// each sequence, or each token of a prompt chunk) and, with `want_probs`, its probabilities per
/// head.
pub fn pool_attention<T: Lanes>(
    q: &[f32],
    keys: &[T],
    values: &[T],
    contexts: &[&[usize]],
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
    // One task per (query, kv head): the `group` query heads sharing that kv head read each key
    // and value row once. With fewer such tasks than two per thread (one sequence's decode has
    // as many as kv heads, 3 for the default model, over 2 cores: one core would do twice the
    // other's work), each query head is a task of its own instead, reading its kv head's rows
    // itself. Either way a task's heads are consecutive, so its output rows
    // `[heads_per_task * head_dim]` and probability rows `[heads_per_task * context]` are
    // contiguous chunks.
    let heads_per_task = if contexts.len() * kv_heads < 2 * rayon::current_num_threads() {
        1
    } else {
        group
    };
    let tasks_per_query = heads / heads_per_task;
    let mut prob_chunks: Vec<Option<&mut [f32]>> = if want_probs {
        probs
            .iter_mut()
            .zip(contexts)
            .flat_map(|(p, c)| p.chunks_mut(heads_per_task * c.len().max(1)).map(Some))
            .collect()
    } else {
        (0..contexts.len() * tasks_per_query).map(|_| None).collect()
    };
    out.par_chunks_mut(heads_per_task * head_dim)
        .zip(prob_chunks.par_iter_mut())
        .enumerate()
        .for_each(|(task, (out, prob))| {
            // Scratch per worker thread, not per rayon split: splits are many and small, and
            // fresh scratch for each would be fresh pages to fault in.
            SCRATCH.with_borrow_mut(|scratch| {
                let (b, first_head) = (task / tasks_per_query, task % tasks_per_query * heads_per_task);
                let kv_head = first_head / group;
                let q_start = b * q_dim + first_head * head_dim;
                let rows = PoolRows {
                    keys,
                    values,
                    context: contexts[b],
                    offset: kv_head * head_dim,
                    row_len: kv_heads * head_dim,
                };
                group_attention(
                    &q[q_start..q_start + heads_per_task * head_dim],
                    rows,
                    head_dim,
                    scale,
                    scratch,
                    out,
                );
                if let Some(prob) = prob {
                    prob.copy_from_slice(&scratch.scores);
                }
            })
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
    scratch: &mut Scratch,
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
            unsafe { x86::group_attention(qs, rows, head_dim, scale, scratch, out) };
            return;
        }
    }
    group_attention_portable(qs, rows, head_dim, scale, &mut scratch.scores, out);
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// One task's working memory, reused across the tasks a thread runs.
#[derive(Default)]
struct Scratch {
    /// `[group * context]`: scores, then probabilities.
    scores: Vec<f32>,
    /// `[context * head_dim]`: the head's key rows in f32, end to end (x86 path).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    keys: Vec<f32>,
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

#[cfg(target_arch = "x86_64")]
// Lane loops index the accumulators and the rows together; with constant bounds they unroll into
// registers, which is the point.
#[allow(clippy::needless_range_loop)]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Lanes, PoolRows, Scratch};
    use crate::model::host_math;

    /// How many rows ahead of use the pool reads are prefetched: far enough to cover a trip to
    /// DRAM at the rate one task consumes rows.
    const PREFETCH_AHEAD: usize = 32;

    /// [`super::group_attention_portable`] with AVX2. Each pool row is read from memory once
    /// for all the query heads of the group, with prefetches far enough ahead to hide DRAM
    /// (the pools of a long batch are far larger than the caches, and plain strided reads left
    /// the cores waiting on them). Keys are converted to f32 and laid end to end in scratch
    /// memory, where every head's scores read them 8 rows at a time (8 accumulators reduced
    /// together instead of one horizontal sum per row). Each value row is converted once and
    /// accumulated into up to 4 heads' outputs held in registers.
    ///
    /// # Safety
    /// AVX2, FMA and F16C are available, `head_dim % 8 == 0`, and every context row's span
    /// `r * row_len + offset .. + head_dim` lies inside both pools.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn group_attention<T: Lanes>(
        qs: &[f32],
        rows: PoolRows<'_, T>,
        head_dim: usize,
        scale: f32,
        scratch: &mut Scratch,
        out: &mut [f32],
    ) {
        let group = qs.len() / head_dim;
        let n = rows.context.len();
        let row_start = |r: usize| r * rows.row_len + rows.offset;
        // SAFETY: the spans are inside the pools (the caller's contract).
        unsafe {
            gather_f32(rows.keys.as_ptr(), rows.context, row_start, head_dim, &mut scratch.keys);
        }
        let scores = &mut scratch.scores;
        scores.clear();
        scores.resize(group * n, 0.0);
        let (kp, sp, qp) = (scratch.keys.as_ptr(), scores.as_mut_ptr(), qs.as_ptr());
        let scale_v = _mm256_set1_ps(scale);
        let mut j = 0;
        // SAFETY (both loops): keys hold n * head_dim floats and j + i < n; q reads head_dim
        // floats at g * head_dim < qs.len(); scores hold group * n floats.
        while j + 8 <= n {
            for g in 0..group {
                unsafe {
                    let q = qp.add(g * head_dim);
                    let mut acc = [_mm256_setzero_ps(); 8];
                    for d in (0..head_dim).step_by(8) {
                        let qv = _mm256_loadu_ps(q.add(d));
                        for i in 0..8 {
                            acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(kp.add((j + i) * head_dim + d)), qv, acc[i]);
                        }
                    }
                    _mm256_storeu_ps(sp.add(g * n + j), _mm256_mul_ps(sum_each(acc), scale_v));
                }
            }
            j += 8;
        }
        for j in j..n {
            for g in 0..group {
                unsafe {
                    let (q, k) = (qp.add(g * head_dim), kp.add(j * head_dim));
                    let mut acc = _mm256_setzero_ps();
                    for d in (0..head_dim).step_by(8) {
                        acc = _mm256_fmadd_ps(_mm256_loadu_ps(k.add(d)), _mm256_loadu_ps(q.add(d)), acc);
                    }
                    let lanes: [f32; 8] = std::mem::transmute(acc);
                    *sp.add(g * n + j) = lanes.iter().sum::<f32>() * scale;
                }
            }
        }
        for probs in scores.chunks_exact_mut(n) {
            host_math::x86::softmax_avx2(probs);
        }
        // Weighted sums straight from the value pool: each value row is converted once for up
        // to 4 query heads of the group (4 heads × 4 vectors of accumulators fit the registers).
        let vp = rows.values.as_ptr();
        let op = out.as_mut_ptr();
        for g0 in (0..group).step_by(4) {
            for d0 in (0..head_dim).step_by(32) {
                let start = |r: usize| row_start(r) + d0;
                let (p, o) = (&scores[g0 * n..], op.wrapping_add(g0 * head_dim + d0));
                // SAFETY (all arms): the spans are in the pool (the caller's contract) and d0 +
                // 8 W <= head_dim; scores hold G rows of n from g0; out holds G heads from g0.
                unsafe {
                    macro_rules! dispatch {
                        ($(($g:literal, $w:literal)),*) => {
                            match ((group - g0).min(4), ((head_dim - d0) / 8).min(4)) {
                                $(($g, $w) => weighted_sums::<T, $g, $w>(p, n, vp, rows.context, start, o, head_dim),)*
                                _ => unreachable!("1 to 4 heads of 1 to 4 vectors"),
                            }
                        };
                    }
                    dispatch!(
                        (1, 1),
                        (1, 2),
                        (1, 3),
                        (1, 4),
                        (2, 1),
                        (2, 2),
                        (2, 3),
                        (2, 4),
                        (3, 1),
                        (3, 2),
                        (3, 3),
                        (3, 4),
                        (4, 1),
                        (4, 2),
                        (4, 3),
                        (4, 4)
                    );
                }
            }
        }
    }

    /// `out[g] = Σ_j p[g][j] · values[start(context[j]) .. + 8 W]` for `G` query heads sharing
    /// the value rows: each row is converted once and used by every head, accumulated in G × W
    /// registers.
    ///
    /// # Safety
    /// AVX2, FMA and F16C are available; `p` holds G rows of `n` probabilities; every span read
    /// lies inside the pool; `out + g * head_dim` has 8 W writable floats for g < G.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn weighted_sums<T: Lanes, const G: usize, const W: usize>(
        p: &[f32],
        n: usize,
        values: *const T,
        context: &[usize],
        start: impl Fn(usize) -> usize,
        out: *mut f32,
        head_dim: usize,
    ) {
        assert!(p.len() >= G * n && context.len() == n);
        let mut acc = [[_mm256_setzero_ps(); W]; G];
        for (j, &r) in context.iter().enumerate() {
            // SAFETY: row r's span is inside the pool (the caller's contract); g * n + j < p.len()
            // (asserted). A prefetch is a hint and never faults.
            unsafe {
                if let Some(&ahead) = context.get(j + PREFETCH_AHEAD) {
                    prefetch_span(
                        values.wrapping_add(start(ahead)) as *const i8,
                        8 * W * std::mem::size_of::<T>(),
                    );
                }
                let v = values.add(start(r));
                let vs: [__m256; W] = std::array::from_fn(|i| T::load8(v.add(8 * i)));
                for g in 0..G {
                    let pv = _mm256_set1_ps(*p.get_unchecked(g * n + j));
                    for i in 0..W {
                        acc[g][i] = _mm256_fmadd_ps(vs[i], pv, acc[g][i]);
                    }
                }
            }
        }
        for g in 0..G {
            for i in 0..W {
                // SAFETY: out + g * head_dim has 8 W floats (the caller's contract).
                unsafe { _mm256_storeu_ps(out.add(g * head_dim + 8 * i), acc[g][i]) };
            }
        }
    }

    /// Copies `head_dim` elements at `start(r)` of every context row `r`, as f32, end to end
    /// into `dst` (`[context * head_dim]`), prefetching `PREFETCH_AHEAD` rows ahead.
    ///
    /// # Safety
    /// AVX2 and F16C are available, `head_dim % 8 == 0`, and every span lies inside the pool.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn gather_f32<T: Lanes>(
        pool: *const T,
        context: &[usize],
        start: impl Fn(usize) -> usize,
        head_dim: usize,
        dst: &mut Vec<f32>,
    ) {
        dst.clear();
        dst.reserve(context.len() * head_dim);
        let out = dst.as_mut_ptr();
        let row_bytes = head_dim * std::mem::size_of::<T>();
        for (j, &r) in context.iter().enumerate() {
            // SAFETY: row r's span is in the pool; dst has room for context.len() * head_dim.
            // A prefetch is a hint and never faults, so it may point anywhere.
            unsafe {
                if let Some(&ahead) = context.get(j + PREFETCH_AHEAD) {
                    prefetch_span(pool.wrapping_add(start(ahead)) as *const i8, row_bytes);
                }
                let src = pool.add(start(r));
                for d in (0..head_dim).step_by(8) {
                    _mm256_storeu_ps(out.add(j * head_dim + d), T::load8(src.add(d)));
                }
            }
        }
        // SAFETY: the loop wrote every one of these floats.
        unsafe { dst.set_len(context.len() * head_dim) };
    }

    /// Prefetches every cache line of `bytes` bytes from `at` (the pools are not line-aligned,
    /// so a span can touch one line more than its length suggests).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn prefetch_span(at: *const i8, bytes: usize) {
        let first = at as usize & !63;
        let last = (at as usize + bytes - 1) & !63;
        for line in (first..=last).step_by(64) {
            // A prefetch is a hint: it never faults, whatever the address.
            _mm_prefetch::<_MM_HINT_T0>(line as *const i8);
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
    fn matches_plain_attention_for_ragged_contexts_and_grouped_heads() {
        // 12: the portable code; 16 and 72 (two 32-column passes of the weighted sum and an
        // 8-column one): AVX2 where the machine has it. Groups of 3 and of 5 query heads per kv
        // head (the weighted sum takes at most 4 heads at once, then the rest).
        // Three sequences with scattered, differently sized contexts (one of a single row): 6
        // (sequence, kv head) tasks on 2 threads, each for its group of heads. One sequence
        // alone: 2 such tasks, fewer than two per thread, so every query head is a task.
        let three = [vec![3, 4, 5, 20, 21], vec![39], (0..30).rev().collect::<Vec<_>>()];
        let one = [(0..30).rev().collect::<Vec<_>>()];
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for head_dim in [12, 16, 72] {
            for heads in [6, 10] {
                let shape = HeadShape {
                    heads,
                    kv_heads: 2,
                    head_dim,
                };
                for contexts in [&three[..], &one[..]] {
                    pool.install(|| {
                        check_against_plain_attention::<f32>(shape, contexts);
                        check_against_plain_attention::<half::f16>(shape, contexts);
                    });
                }
            }
        }
    }

    /// Pools of `T`; the reference reads the same (rounded) values as f32.
    fn check_against_plain_attention<T: Lanes>(shape: HeadShape, contexts: &[Vec<usize>]) {
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
        let q_dim = shape.heads * shape.head_dim;
        let q: Vec<f32> = (0..contexts.len() * q_dim).map(|i| value(i, 31)).collect();
        let context_rows: Vec<&[usize]> = contexts.iter().map(Vec::as_slice).collect();
        let (out, probs) = pool_attention(&q, &keys_t, &values_t, &context_rows, shape, true);
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
