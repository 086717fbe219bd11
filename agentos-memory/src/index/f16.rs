//! IEEE 754 half precision, the form the index and its store records keep embeddings in: half the
//! bytes of `f32` (a 576-dimension embedding is 1,152 bytes), with 11 significant bits, so a
//! component is off by at most 2⁻¹¹ (0.05 %) of its magnitude. Conversions round to nearest, ties
//! to even, as hardware does; out-of-range values become infinities.

/// The half-precision bits nearest to `x`.
pub(crate) fn from_f32(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        // Infinity stays infinite, NaN stays NaN (quiet).
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // A subnormal half (or zero): value = m16 * 2^-24.
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        return sign | round_shift(m, shift) as u16;
    }
    // A carry out of the mantissa rounds into the exponent, up to infinity: both are right.
    sign | round_shift(((e as u32) << 23) | man, 13) as u16
}

/// The `f32` that the half-precision bits `h` stand for (exactly).
pub(crate) fn to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    match exp {
        0 => {
            let v = man as f32 * (1.0 / 16_777_216.0);
            if sign != 0 { -v } else { v }
        }
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (man << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)),
    }
}

/// Every half's `f32`, indexed by its bits (256 KiB): one load per value where decoding in bits
/// would branch.
pub(crate) fn table() -> &'static [f32; 65536] {
    static TABLE: std::sync::LazyLock<Box<[f32; 65536]>> = std::sync::LazyLock::new(|| {
        let values: Vec<f32> = (0..=u16::MAX).map(to_f32).collect();
        values.into_boxed_slice().try_into().expect("65536 values")
    });
    &TABLE
}

/// `v >> shift`, rounded to nearest, ties to even.
fn round_shift(v: u32, shift: u32) -> u32 {
    let kept = v >> shift;
    let rest = v & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    if rest > half || (rest == half && kept & 1 == 1) {
        kept + 1
    } else {
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_half_survives_a_round_trip() {
        for h in 0..=u16::MAX {
            let x = to_f32(h);
            if x.is_nan() {
                assert!(to_f32(from_f32(x)).is_nan());
            } else {
                assert_eq!(from_f32(x), h, "{h:#06x} = {x}");
            }
        }
    }

    #[test]
    fn conversion_rounds_to_nearest_even_and_saturates_to_infinity() {
        assert_eq!(from_f32(1.0), 0x3c00);
        assert_eq!(from_f32(-2.5), 0xc100);
        assert_eq!(from_f32(65504.0), 0x7bff);
        assert_eq!(from_f32(1e6), 0x7c00);
        assert_eq!(from_f32(f32::NEG_INFINITY), 0xfc00);
        // Halfway between 1 and the next half: to the even one (1); just above: up.
        assert_eq!(from_f32(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(from_f32(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
        assert_eq!(from_f32(1.0 + 2f32.powi(-11) + 2f32.powi(-20)), 0x3c01);
        // Subnormals and underflow.
        assert_eq!(from_f32(2f32.powi(-24)), 0x0001);
        assert_eq!(from_f32(2f32.powi(-26)), 0x0000);
        assert_eq!(to_f32(0x0001), 2f32.powi(-24));
        // Relative error of ordinary values is at most 2^-11.
        let mut x = 1e-4f32;
        while x < 6e4 {
            let y = to_f32(from_f32(x));
            assert!(((y - x) / x).abs() <= 2f32.powi(-11), "{x} -> {y}");
            x *= 1.37;
        }
    }
}
