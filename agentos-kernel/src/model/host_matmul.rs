//! Small-batch `x @ w` on the CPU for f16 weights: the decode step's matmuls.
//!
//! Why it exists: on the flex backend, burn's matmul goes through the `gemm` crate, which for
//! f16 weights and more than one row converts and packs the whole weight matrix into f32 on
//! every call. For a decode step of 2–16 sequences that conversion costs more than the
//! arithmetic, so a batch of 8 decodes took 3.3x as long as one (profiled: 41% of the step in the
//! packing). This kernel keeps a copy of each weight in a layout made for streaming
//! (`[out / 8][in][8]` f16: every 8-column block is contiguous over `in`), converts 8 weights per
//! instruction (F16C) and applies each to every row of the batch with FMAs, so the weights are
//! read once per step whatever the batch. Prefill (many rows) stays on burn's gemm, which is
//! efficient there.
//!
//! # Shapes
//! weight: `[in, out]`; x: `[rows, in]` row-major → `[rows, out]` row-major

use half::f16;
use rayon::prelude::*;

/// Most rows [`PackedWeight::matmul`] is used for; larger batches are prefill.
pub const MAX_ROWS: usize = 16;

/// Columns per block: one AVX register of f32.
const BLOCK: usize = 8;

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

    /// `x @ w` for `rows <= MAX_ROWS` rows of `x` (row-major `[rows, inputs]`).
    pub fn matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        assert!(rows <= MAX_ROWS && x.len() == rows * self.inputs, "x shape");
        let n_blocks = self.outputs.div_ceil(BLOCK);
        // Output in blocks `[n_blocks][rows][8]`, filled in parallel, then laid out row-major.
        let mut blocked = vec![0f32; n_blocks * rows * BLOCK];
        // Enough blocks per task to amortise scheduling, few enough to balance two to many cores.
        let per_task = (n_blocks / (rayon::current_num_threads() * 4)).max(1);
        blocked
            .par_chunks_mut(rows * BLOCK * per_task)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * per_task;
                for (i, out) in out.chunks_mut(rows * BLOCK).enumerate() {
                    let b = first + i;
                    let w = &self.blocks[b * self.inputs * BLOCK..(b + 1) * self.inputs * BLOCK];
                    block_matmul(w, x, rows, self.inputs, out);
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

/// One 8-column block: `out[r][j] = sum_k x[r][k] * w[k][j]`.
///
/// # Shapes
/// w: `[inputs][8]`, x: `[rows][inputs]`, out: `[rows][8]`
fn block_matmul(w: &[f16], x: &[f32], rows: usize, inputs: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the features it is compiled for were just detected.
            unsafe { x86::block_matmul(w, x, rows, inputs, out) };
            return;
        }
    }
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

#[cfg(target_arch = "x86_64")]
// Row loops index the accumulators and the rows of x together; with a constant bound they unroll
// into registers, which is the point.
#[allow(clippy::needless_range_loop)]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::{BLOCK, MAX_ROWS};

    /// Rows go 4 at a time and `k` 2 at a time: 8 independent FMA chains hide the FMA latency
    /// (4 cycles, 2 per cycle), and the accumulators, two weight vectors and the broadcasts fit
    /// the 16 registers.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn block_matmul(w: &[f16], x: &[f32], rows: usize, inputs: usize, out: &mut [f32]) {
        debug_assert!(rows <= MAX_ROWS);
        let mut r0 = 0;
        while r0 < rows {
            // A constant row count lets the compiler keep every accumulator in a register.
            // SAFETY (all arms): the caller detected the features; r0 + R <= rows.
            let n = match rows - r0 {
                8.. => unsafe { rows_matmul_wide::<8>(w, x, r0, inputs, out) },
                1 => unsafe { rows_matmul::<1>(w, x, r0, inputs, out) },
                2 => unsafe { rows_matmul::<2>(w, x, r0, inputs, out) },
                3 => unsafe { rows_matmul::<3>(w, x, r0, inputs, out) },
                _ => unsafe { rows_matmul::<4>(w, x, r0, inputs, out) },
            };
            r0 += n;
        }
    }

    /// Rows `r0..r0 + R` of one block for `R >= 8`: one chain per row is enough to hide the
    /// FMA latency, and each converted weight vector serves all `R` rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows_matmul_wide<const R: usize>(
        w: &[f16],
        x: &[f32],
        r0: usize,
        inputs: usize,
        out: &mut [f32],
    ) -> usize {
        let wp = w.as_ptr() as *const __m128i;
        let xp = x.as_ptr();
        let mut acc = [_mm256_setzero_ps(); R];
        for k in 0..inputs {
            // SAFETY: w holds inputs * 8 halves and x rows * inputs floats; k < inputs and
            // r0 + i < rows.
            unsafe {
                let wk = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(k)));
                for i in 0..R {
                    acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(*xp.add((r0 + i) * inputs + k)), wk, acc[i]);
                }
            }
        }
        for i in 0..R {
            // SAFETY: out holds rows * 8 floats and r0 + i < rows.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add((r0 + i) * BLOCK), acc[i]) };
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
    fn matches_a_plain_matmul_for_every_batch_size_and_ragged_columns() {
        let (inputs, outputs) = (37, 21);
        let w: Vec<f32> = (0..inputs * outputs)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let packed = PackedWeight::pack(&w, inputs, outputs);
        for rows in 1..=MAX_ROWS {
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
