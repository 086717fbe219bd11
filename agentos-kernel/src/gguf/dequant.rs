//! ggml tensor encodings and their dequantisation to `f32`.
//!
//! Block layouts follow ggml (`ggml-common.h`); each `dequantize_*` mirrors ggml's reference
//! `dequantize_row_*` so the values are bit-for-bit what llama.cpp computes.

use half::{bf16, f16};

/// The ggml tensor types this kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q6K,
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// Elements per block.
    pub fn block_elements(self) -> u64 {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q4K | GgmlType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4K => 144,
            GgmlType::Q6K => 210,
        }
    }
}

/// Dequantises `bytes` (whole blocks of `ty`) into `out`.
///
/// `out.len()` must equal the element count `bytes` encodes; the GGUF reader guarantees this
/// for tensors it returns.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let be = ty.block_elements() as usize;
    let bb = ty.block_bytes() as usize;
    assert_eq!(bytes.len() / bb * be, out.len(), "dequantised length");
    let blocks = bytes.chunks_exact(bb).zip(out.chunks_exact_mut(be));
    match ty {
        GgmlType::F32 => blocks.for_each(|(b, o)| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => blocks.for_each(|(b, o)| o[0] = f16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlType::BF16 => blocks.for_each(|(b, o)| o[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlType::Q4_0 => blocks.for_each(|(b, o)| dequantize_q4_0(b, o)),
        GgmlType::Q4_1 => blocks.for_each(|(b, o)| dequantize_q4_1(b, o)),
        GgmlType::Q8_0 => blocks.for_each(|(b, o)| dequantize_q8_0(b, o)),
        GgmlType::Q4K => blocks.for_each(|(b, o)| dequantize_q4_k(b, o)),
        GgmlType::Q6K => blocks.for_each(|(b, o)| dequantize_q6_k(b, o)),
    }
}

/// The little-endian f16 at `at` of `b`.
pub(crate) fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// `{ d: f16, qs: [u8; 16] }`: x = (nibble - 8) * d; low nibbles are elements 0..16.
fn dequantize_q4_0(b: &[u8], out: &mut [f32]) {
    let d = half(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        out[j] = ((qs[j] & 0x0f) as i32 - 8) as f32 * d;
        out[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

/// `{ d: f16, m: f16, qs: [u8; 16] }`: x = nibble * d + m.
fn dequantize_q4_1(b: &[u8], out: &mut [f32]) {
    let d = half(b, 0);
    let m = half(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        out[j] = (qs[j] & 0x0f) as f32 * d + m;
        out[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// `{ d: f16, qs: [i8; 32] }`: x = q * d.
fn dequantize_q8_0(b: &[u8], out: &mut [f32]) {
    let d = half(b, 0);
    for j in 0..32 {
        out[j] = (b[2 + j] as i8) as f32 * d;
    }
}

/// The 6-bit scale and min of sub-block `j` packed in the 12 scale bytes of a K-quant block.
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `{ d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128] }`, 8 sub-blocks of 32.
fn dequantize_q4_k(b: &[u8], out: &mut [f32]) {
    let d = half(b, 0);
    let dmin = half(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for chunk in 0..4 {
        let q = &qs[chunk * 32..chunk * 32 + 32];
        let (sc1, m1) = scale_min_k4(chunk * 2, scales);
        let (sc2, m2) = scale_min_k4(chunk * 2 + 1, scales);
        let (d1, min1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, dmin * m2 as f32);
        let o = &mut out[chunk * 64..chunk * 64 + 64];
        for l in 0..32 {
            o[l] = d1 * (q[l] & 0x0f) as f32 - min1;
            o[l + 32] = d2 * (q[l] >> 4) as f32 - min2;
        }
    }
}

/// `{ ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 }`, 16 sub-blocks of 16.
fn dequantize_q6_k(b: &[u8], out: &mut [f32]) {
    let d = half(b, 208);
    for half_block in 0..2 {
        let ql = &b[half_block * 64..half_block * 64 + 64];
        let qh = &b[128 + half_block * 32..128 + half_block * 32 + 32];
        let sc = &b[192 + half_block * 8..192 + half_block * 8 + 8];
        let o = &mut out[half_block * 128..half_block * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            o[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            o[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            o[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            o[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    fn run(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
        let n = bytes.len() / ty.block_bytes() as usize * ty.block_elements() as usize;
        let mut out = vec![0.0; n];
        dequantize(ty, bytes, &mut out);
        out
    }

    #[test]
    fn plain_floats() {
        assert_eq!(run(GgmlType::F32, &1.5f32.to_le_bytes()), vec![1.5]);
        assert_eq!(run(GgmlType::F16, &f16b(-2.25)), vec![-2.25]);
        assert_eq!(run(GgmlType::BF16, &bf16::from_f32(3.0).to_le_bytes()), vec![3.0]);
    }

    #[test]
    fn q4_0_hand_computed() {
        // d = 0.5; byte j holds low nibble j%16 and high nibble 15 - j%16.
        let mut b = f16b(0.5).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let out = run(GgmlType::Q4_0, &b);
        assert_eq!(out[0], -4.0); // (0 - 8) * 0.5
        assert_eq!(out[15], 3.5); // (15 - 8) * 0.5
        assert_eq!(out[16], 3.5); // high nibble of byte 0 = 15
        assert_eq!(out[31], -4.0);
    }

    #[test]
    fn q4_1_hand_computed() {
        let mut b = f16b(0.25).to_vec();
        b.extend(f16b(-1.0));
        b.extend((0..16u8).map(|j| j | (3 << 4)));
        let out = run(GgmlType::Q4_1, &b);
        assert_eq!(out[0], -1.0); // 0 * 0.25 - 1
        assert_eq!(out[7], 0.75); // 7 * 0.25 - 1
        assert_eq!(out[20], -0.25); // 3 * 0.25 - 1
    }

    #[test]
    fn q8_0_hand_computed() {
        let mut b = f16b(0.125).to_vec();
        b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let out = run(GgmlType::Q8_0, &b);
        assert_eq!(out[0], -2.0);
        assert_eq!(out[16], 0.0);
        assert_eq!(out[31], 1.875);
    }

    #[test]
    fn q4_k_hand_computed() {
        // d = 2, dmin = 1; sub-block scales/mins: j<4 in bytes 0..4 / 4..8, j>=4 packed.
        let mut scales = [0u8; 12];
        scales[0] = 3; // sc of sub-block 0
        scales[4] = 5; // min of sub-block 0
        scales[1] = 1; // sc of sub-block 1
        scales[5] = 2; // min of sub-block 1
        // Sub-block 4: sc = (scales[8] & 15) | ((scales[0] >> 6) << 4), m = (scales[8] >> 4) | ...
        scales[8] = 0x27; // sc = 7, m = 2
        let mut b = f16b(2.0).to_vec();
        b.extend(f16b(1.0));
        b.extend(scales);
        let mut qs = [0u8; 128];
        qs[0] = 0x9 | (0x4 << 4); // element 0: nibble 9 (sub-block 0); element 32: nibble 4 (sub-block 1)
        qs[64] = 0x1; // element 128: nibble 1 (sub-block 4)
        b.extend(qs);
        let out = run(GgmlType::Q4K, &b);
        assert_eq!(out[0], 2.0 * 3.0 * 9.0 - 5.0);
        assert_eq!(out[32], 2.0 * 1.0 * 4.0 - 2.0);
        assert_eq!(out[1], -5.0);
        assert_eq!(out[128], 2.0 * 7.0 * 1.0 - 2.0);
    }

    #[test]
    fn q6_k_hand_computed() {
        let mut b = vec![0u8; 210];
        b[0] = 0x21; // ql[0]: low nibble 1 (element 0), high nibble 2 (element 64)
        b[128] = 0b10_00_00_11; // qh[0]: bits 0-1 = 3 (element 0), bits 6-7 = 2 (element 96)
        b[192] = 2; // scale of elements 0..16
        b[194] = (-1i8) as u8; // scale of elements 32..48
        b[196] = 4; // scale of elements 64..80
        b[198] = 1; // scale of elements 96..112
        b[208..210].copy_from_slice(&f16b(0.5));
        let out = run(GgmlType::Q6K, &b);
        assert_eq!(out[0], 0.5 * 2.0 * ((1 | (3 << 4)) - 32) as f32); // 0.5*2*17
        assert_eq!(out[32], -0.5 * -32.0);
        assert_eq!(out[64], 0.5 * 4.0 * (2 - 32) as f32);
        assert_eq!(out[96], 0.5 * 1.0 * ((2 << 4) - 32) as f32);
    }
}
