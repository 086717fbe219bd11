//! `x @ w` on the CPU for f16 weights: every matmul of the model on the flex backend.
//!
//! Why it exists: on the flex backend, burn's matmul goes through the `gemm` crate, which for
//! f16 weights and more than one row converts and packs the whole weight matrix into f32 on
//! every call. For a decode step of 2–16 sequences that conversion costs more than the
//! arithmetic, so a batch of 8 decodes took 3.3x as long as one (profiled: 41% of the step in the
//! packing), and a step mixing decodes with a prompt chunk paid it too. This kernel keeps each
//! weight in a layout made for streaming (`[out / 8][in][8]` f16: every 8-column block is
//! contiguous over `in`) and converts 8 weights per instruction (F16C) as it goes:
//! - one or two rows (decoding alone) are bound by reading the weights, so each block is
//!   streamed once with independent FMA chains;
//! - more rows go in register tiles of 2 blocks × 4 rows, where each converted weight vector
//!   serves 4 rows and each broadcast input 2 blocks, so the FMA units set the pace. Measured
//!   against burn's gemm on the same weights, prompts of 17–256 tokens ran 1.3–1.5x faster.
//!
//! # Shapes
//! weight: `[in, out]`; x: `[rows, in]` row-major → `[rows, out]` row-major

use half::f16;
use rayon::prelude::*;

/// Columns per block: one AVX register of f32.
const BLOCK: usize = 8;

/// Blocks per panel: a tile of 2 blocks × 4 rows keeps 8 accumulators, 2 weight vectors and a
/// broadcast in registers. (3 × 4 needs all 16 AVX registers plus one, and the spill made it
/// slower.)
const PANEL: usize = 2;

/// A weight matrix in the kernel's blocked f16 layout.
pub struct PackedWeight {
    inputs: usize,
    outputs: usize,
    /// `[ceil(out / 8)][in][8]`, zero-padded past `out`.
    blocks: Vec<f16>,
}

impl PackedWeight {
    /// Packs `w` given row-major as `[inputs, outputs]`.
    pub fn pack(w: &[f32], inputs: usize, outputs: usize) -> Self {
        assert_eq!(w.len(), inputs * outputs, "weight shape");
        let n_blocks = outputs.div_ceil(BLOCK);
        let mut blocks = vec![f16::ZERO; n_blocks * inputs * BLOCK];
        for b in 0..n_blocks {
            for k in 0..inputs {
                for j in 0..BLOCK {
                    let col = b * BLOCK + j;
                    if col < outputs {
                        blocks[(b * inputs + k) * BLOCK + j] = f16::from_f32(w[k * outputs + col]);
                    }
                }
            }
        }
        PackedWeight {
            inputs,
            outputs,
            blocks,
        }
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// `x @ w` for the `rows` rows of `x` (row-major `[rows, inputs]`).
    pub fn matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        assert!(x.len() == rows * self.inputs, "x shape");
        let n_blocks = self.outputs.div_ceil(BLOCK);
        let n_panels = n_blocks.div_ceil(PANEL);
        // Output in blocks `[n_blocks][rows][8]`, filled in parallel by panels of `PANEL`
        // blocks, then laid out row-major.
        let mut blocked = vec![0f32; n_blocks * rows * BLOCK];
        // Enough panels per task to amortise scheduling, few enough to balance two to many cores.
        let per_task = (n_panels / (rayon::current_num_threads() * 4)).max(1);
        let panel_weights = self.inputs * BLOCK * PANEL;
        blocked
            .par_chunks_mut(rows * BLOCK * PANEL * per_task)
            .zip(self.blocks.par_chunks(panel_weights * per_task))
            .for_each(|(out, w)| {
                for (out, w) in out.chunks_mut(rows * BLOCK * PANEL).zip(w.chunks(panel_weights)) {
                    panel_matmul(w, x, rows, self.inputs, out);
                }
            });
        let mut y = vec![0f32; rows * self.outputs];
        for b in 0..n_blocks {
            let cols = BLOCK.min(self.outputs - b * BLOCK);
            for r in 0..rows {
                let src = &blocked[(b * rows + r) * BLOCK..(b * rows + r) * BLOCK + cols];
                y[r * self.outputs + b * BLOCK..r * self.outputs + b * BLOCK + cols].copy_from_slice(src);
            }
        }
        y
    }
}

/// One panel of up to `PANEL` 8-column blocks: `out[b][r][j] = sum_k x[r][k] * w[b][k][j]`.
///
/// # Shapes
/// w: `[blocks][inputs][8]`, x: `[rows][inputs]`, out: `[blocks][rows][8]`
fn panel_matmul(w: &[f16], x: &[f32], rows: usize, inputs: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the features it is compiled for were just detected.
            unsafe { x86::panel_matmul(w, x, rows, inputs, out) };
            return;
        }
    }
    for (w, out) in w.chunks(inputs * BLOCK).zip(out.chunks_mut(rows * BLOCK)) {
        for r in 0..rows {
            let mut acc = [0f32; BLOCK];
            for k in 0..inputs {
                let xv = x[r * inputs + k];
                for j in 0..BLOCK {
                    acc[j] += xv * w[k * BLOCK + j].to_f32();
                }
            }
            out[r * BLOCK..(r + 1) * BLOCK].copy_from_slice(&acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
// Row loops index the accumulators and the rows of x together; with a constant bound they unroll
// into registers, which is the point.
#[allow(clippy::needless_range_loop)]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::BLOCK;

    /// One panel of `blocks <= PANEL` blocks. One or two rows are bound by reading the weights,
    /// so they go block by block with `k` unrolled for independent FMA chains; more rows go in
    /// tiles of up to 2 blocks × 4 rows, bound by the FMAs.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn panel_matmul(w: &[f16], x: &[f32], rows: usize, inputs: usize, out: &mut [f32]) {
        let blocks = w.len() / (inputs * BLOCK);
        if rows <= 2 {
            for (w, out) in w.chunks(inputs * BLOCK).zip(out.chunks_mut(rows * BLOCK)) {
                // SAFETY: the caller detected the features; R = rows.
                unsafe {
                    if rows == 1 {
                        rows_matmul::<1>(w, x, 0, inputs, out);
                    } else {
                        rows_matmul::<2>(w, x, 0, inputs, out);
                    }
                }
            }
            return;
        }
        // SAFETY (all arms): the caller detected the features; B = blocks.
        unsafe {
            // A panel holds PANEL = 2 blocks, fewer only at the right edge.
            match blocks {
                2 => tiles::<2>(w, x, rows, inputs, out),
                _ => tiles::<1>(w, x, rows, inputs, out),
            }
        }
    }

    /// Every row of a `B`-block panel, 4 rows at a time.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tiles<const B: usize>(w: &[f16], x: &[f32], rows: usize, inputs: usize, out: &mut [f32]) {
        let mut r0 = 0;
        while r0 < rows {
            // SAFETY (all arms): the caller detected the features; r0 + R <= rows.
            r0 += unsafe {
                match rows - r0 {
                    4.. => tile::<B, 4>(w, x, r0, rows, inputs, out),
                    3 => tile::<B, 3>(w, x, r0, rows, inputs, out),
                    2 => tile::<B, 2>(w, x, r0, rows, inputs, out),
                    _ => tile::<B, 1>(w, x, r0, rows, inputs, out),
                }
            };
        }
    }

    /// Rows `r0..r0 + R` of a `B`-block panel: `B * R` accumulators, each converted weight
    /// vector used by `R` rows and each broadcast by `B` blocks.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const B: usize, const R: usize>(
        w: &[f16],
        x: &[f32],
        r0: usize,
        rows: usize,
        inputs: usize,
        out: &mut [f32],
    ) -> usize {
        assert!(w.len() == B * inputs * BLOCK && x.len() >= (r0 + R) * inputs && out.len() == B * rows * BLOCK);
        let wp = w.as_ptr() as *const __m128i;
        let xp = x.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); R]; B];
        for k in 0..inputs {
            // SAFETY: block b's weights are the inputs 8-half vectors from b * inputs; k <
            // inputs; rows r0..r0 + R of x exist (asserted).
            unsafe {
                let wv: [__m256; B] = std::array::from_fn(|b| _mm256_cvtph_ps(_mm_loadu_si128(wp.add(b * inputs + k))));
                for r in 0..R {
                    let xb = _mm256_set1_ps(*xp.add((r0 + r) * inputs + k));
                    for b in 0..B {
                        acc[b][r] = _mm256_fmadd_ps(wv[b], xb, acc[b][r]);
                    }
                }
            }
        }
        for b in 0..B {
            for r in 0..R {
                let start = (b * rows + r0 + r) * BLOCK;
                // SAFETY: out holds B * rows * 8 floats (asserted) and start + 8 <= that.
                unsafe { _mm256_storeu_ps(out[start..start + BLOCK].as_mut_ptr(), acc[b][r]) };
            }
        }
        R
    }

    /// Rows `r0..r0 + R` of one block.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows_matmul<const R: usize>(w: &[f16], x: &[f32], r0: usize, inputs: usize, out: &mut [f32]) -> usize {
        let wp = w.as_ptr() as *const __m128i;
        let xp = x.as_ptr();
        let mut even = [_mm256_setzero_ps(); R];
        let mut odd = [_mm256_setzero_ps(); R];
        let mut k = 0;
        while k + 1 < inputs {
            // SAFETY: w holds inputs * 8 halves and x rows * inputs floats; k + 1 < inputs and
            // r0 + i < rows.
            unsafe {
                let w0 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(k)));
                let w1 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(k + 1)));
                for i in 0..R {
                    let row = xp.add((r0 + i) * inputs + k);
                    even[i] = _mm256_fmadd_ps(_mm256_set1_ps(*row), w0, even[i]);
                    odd[i] = _mm256_fmadd_ps(_mm256_set1_ps(*row.add(1)), w1, odd[i]);
                }
            }
            k += 2;
        }
        if k < inputs {
            // SAFETY: as above, for the last (odd) k.
            unsafe {
                let w0 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(k)));
                for i in 0..R {
                    even[i] = _mm256_fmadd_ps(_mm256_set1_ps(*xp.add((r0 + i) * inputs + k)), w0, even[i]);
                }
            }
        }
        for i in 0..R {
            // SAFETY: out holds rows * 8 floats and r0 + i < rows.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add((r0 + i) * BLOCK), _mm256_add_ps(even[i], odd[i])) };
        }
        R
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_plain_matmul_for_streamed_and_tiled_rows_and_ragged_columns() {
        let (inputs, outputs) = (37, 21);
        let w: Vec<f32> = (0..inputs * outputs)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let packed = PackedWeight::pack(&w, inputs, outputs);
        for rows in [1, 2, 3, 4, 5, 7, 8, 9, 16, 33] {
            let x: Vec<f32> = (0..rows * inputs)
                .map(|i| ((i * 104729) % 89) as f32 / 89.0 - 0.5)
                .collect();
            let y = packed.matmul(&x, rows);
            for r in 0..rows {
                for c in 0..outputs {
                    let want: f32 = (0..inputs)
                        .map(|k| x[r * inputs + k] * f16::from_f32(w[k * outputs + c]).to_f32())
                        .sum();
                    assert!((y[r * outputs + c] - want).abs() < 1e-4, "rows {rows}, [{r}][{c}]");
                }
            }
        }
    }
}
