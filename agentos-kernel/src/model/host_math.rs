//! Elementwise math for the host kernels: a fast `e^x` for `x <= 0`, softmax, and the
//! SwiGLU activation, each with an AVX2 form.
//!
//! Why not libm and burn: a libm `expf` call per score or per activation cost more than the
//! matmul work around it, and burn's `silu` on CPU is a scalar loop over a tensor it must first
//! copy out of the host matmul's result.

/// `x ← softmax(x)`, with a vectorisable exp (a call to libm's per score cost more than the
/// dot products).
#[inline(always)]
pub(crate) fn softmax_in_place(x: &mut [f32]) {
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

/// ln 2 split in two, so that `x - n ln 2` keeps its low bits.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// `e^x` for `x <= 0` to about 2e-7 relative: `x = n ln 2 + r` with `|r| <= ln 2 / 2`, a degree-6
/// Taylor polynomial for `e^r`, and `2^n` built in the exponent bits. Below -87 it returns
/// `e^-87` (about 1.6e-38) instead of a denormal, which no softmax can tell from zero.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    let x = x.clamp(-87.0, 0.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n is in [-126, 0], so n + 127 is a normal float's biased exponent.
    f32::from_bits((((n as i32) + 127) as u32) << 23) * p
}

/// `out[r][i] = silu(gate[r][i]) * up[r][i]` where row `r` of `gate_up` is `[gate | up]`, each
/// `intermediate` wide.
///
/// # Shapes
/// gate_up: `[rows, 2 * intermediate]` → `[rows, intermediate]`
pub(crate) fn swiglu(gate_up: &[f32], intermediate: usize) -> Vec<f32> {
    assert!(
        intermediate > 0 && gate_up.len().is_multiple_of(2 * intermediate),
        "gate_up shape"
    );
    let mut out = vec![0f32; gate_up.len() / 2];
    for (row, out) in gate_up
        .chunks_exact(2 * intermediate)
        .zip(out.chunks_exact_mut(intermediate))
    {
        let (gate, up) = row.split_at(intermediate);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: the features were just detected.
                unsafe { x86::swiglu_row(gate, up, out) };
                continue;
            }
        }
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = silu(g) * u;
        }
    }
    out
}

/// `x · sigmoid(x)`, with `e^-|x|` from [`exp_nonpositive`] so it never overflows.
#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    let t = exp_nonpositive(-x.abs());
    let sigmoid = if x >= 0.0 { 1.0 / (1.0 + t) } else { t / (1.0 + t) };
    x * sigmoid
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// `x ← softmax(x)`, 8 lanes at a time, with [`super::exp_nonpositive`]'s exp in vector form
    /// (LLVM leaves the scalar one mostly scalar: the clamp and round do not vectorise well).
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn softmax_avx2(x: &mut [f32]) {
        let (blocks, rest) = x.split_at_mut(x.len() / 8 * 8);
        let mut max_v = _mm256_set1_ps(f32::NEG_INFINITY);
        for block in blocks.chunks_exact(8) {
            // SAFETY: block holds 8 floats.
            max_v = _mm256_max_ps(max_v, unsafe { _mm256_loadu_ps(block.as_ptr()) });
        }
        let lanes: [f32; 8] = unsafe { std::mem::transmute(max_v) };
        let max = lanes
            .iter()
            .chain(rest.iter())
            .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let max_v = _mm256_set1_ps(max);
        let mut sum_v = _mm256_setzero_ps();
        for block in blocks.chunks_exact_mut(8) {
            // SAFETY: block holds 8 floats.
            unsafe {
                let e = exp_nonpositive_x8(_mm256_sub_ps(_mm256_loadu_ps(block.as_ptr()), max_v));
                sum_v = _mm256_add_ps(sum_v, e);
                _mm256_storeu_ps(block.as_mut_ptr(), e);
            }
        }
        for v in rest.iter_mut() {
            *v = super::exp_nonpositive(*v - max);
        }
        let lanes: [f32; 8] = unsafe { std::mem::transmute(sum_v) };
        let inv = 1.0 / (lanes.iter().sum::<f32>() + rest.iter().sum::<f32>());
        let inv_v = _mm256_set1_ps(inv);
        for block in blocks.chunks_exact_mut(8) {
            // SAFETY: block holds 8 floats.
            unsafe {
                _mm256_storeu_ps(
                    block.as_mut_ptr(),
                    _mm256_mul_ps(_mm256_loadu_ps(block.as_ptr()), inv_v),
                )
            };
        }
        for v in rest.iter_mut() {
            *v *= inv;
        }
    }

    /// [`super::exp_nonpositive`] on 8 lanes (rounding `n` to nearest even instead of away from
    /// zero, which only moves `r` to the other end of the same range).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn exp_nonpositive_x8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_setzero_ps());
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(super::LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(super::LN2_LO), r);
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        _mm256_mul_ps(scale, p)
    }

    /// [`super::swiglu`] for one row, 8 lanes at a time.
    ///
    /// # Safety
    /// AVX2 and FMA are available.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn swiglu_row(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = out.len().min(gate.len()).min(up.len());
        let blocks = n / 8 * 8;
        let (one, sign) = (_mm256_set1_ps(1.0), _mm256_set1_ps(-0.0));
        for i in (0..blocks).step_by(8) {
            // SAFETY: i + 8 <= n, inside all three slices.
            unsafe {
                let g = _mm256_loadu_ps(gate.as_ptr().add(i));
                // t = e^-|g|; sigmoid(g) = 1 / (1 + t) for g >= 0, t / (1 + t) below.
                let t = exp_nonpositive_x8(_mm256_or_ps(g, sign));
                let numerator = _mm256_blendv_ps(one, t, g);
                let sigmoid = _mm256_div_ps(numerator, _mm256_add_ps(one, t));
                let y = _mm256_mul_ps(_mm256_mul_ps(g, sigmoid), _mm256_loadu_ps(up.as_ptr().add(i)));
                _mm256_storeu_ps(out.as_mut_ptr().add(i), y);
            }
        }
        for i in blocks..n {
            out[i] = super::silu(gate[i]) * up[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm_over_the_softmax_range() {
        for i in 0..=17_000 {
            let x = -(i as f32) * 0.005;
            let (got, want) = (exp_nonpositive(x), x.exp());
            assert!((got - want).abs() <= 1e-6 * want, "e^{x}: {got} vs {want}");
        }
        assert!(exp_nonpositive(-1000.0) < 1e-37 && exp_nonpositive(f32::NEG_INFINITY) < 1e-37);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_and_softmax_match_the_scalar_ones() {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
            return;
        }
        use std::arch::x86_64::*;
        for i in (0..=17_000).step_by(8) {
            let xs: [f32; 8] = std::array::from_fn(|k| -((i + k) as f32) * 0.005);
            // SAFETY: AVX2 and FMA were detected.
            let got: [f32; 8] = unsafe { std::mem::transmute(x86::exp_nonpositive_x8(_mm256_loadu_ps(xs.as_ptr()))) };
            for (x, got) in xs.iter().zip(got) {
                let want = x.exp();
                assert!((got - want).abs() <= 1e-6 * want, "e^{x}: {got} vs {want}");
            }
        }
        // 8-lane blocks and a scalar tail; the maximum sits in the tail.
        let scores: Vec<f32> = (0..21)
            .map(|i| ((i * 37) % 11) as f32 * 0.7 - 3.0 + (i == 19) as u8 as f32 * 9.0)
            .collect();
        let mut want = scores.clone();
        softmax_in_place(&mut want);
        let mut got = scores;
        // SAFETY: AVX2 and FMA were detected.
        unsafe { x86::softmax_avx2(&mut got) };
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6, "{g} vs {w}");
        }
        assert!((got.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn swiglu_matches_its_definition_for_both_signs_and_a_ragged_width() {
        // 21 wide: two 8-lane blocks and a scalar tail; gates from -30 to 30.
        let intermediate = 21;
        let gate_up: Vec<f32> = (0..3 * 2 * intermediate)
            .map(|i| ((i * 37) % 61) as f32 - 30.0 + 0.25)
            .collect();
        let got = swiglu(&gate_up, intermediate);
        for (row, got) in gate_up.chunks(2 * intermediate).zip(got.chunks(intermediate)) {
            for i in 0..intermediate {
                let (g, u) = (row[i] as f64, row[intermediate + i] as f64);
                let want = g / (1.0 + (-g).exp()) * u;
                assert!(
                    (got[i] as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "silu({g}) * {u}: {} vs {want}",
                    got[i]
                );
            }
        }
    }
}
