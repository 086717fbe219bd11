//! `x @ wᵀ` on quantised weights: the matmuls of a GGUF model computed on the file's own blocks.
//!
//! Why it exists: dequantising a Q4_1 file at load makes every decode step stream about three
//! times the bytes that the file holds (f16 against 5 bits per weight), and a decode step of a
//! small model is bound by those bytes. Here weights stay in ggml's block layouts (`Q4_0`,
//! `Q4_1`, `Q8_0`, `Q4_K`, `Q6_K`, byte for byte as in the file) and the activations are
//! quantised per 32 values to 8 bits, as llama.cpp does (`quantize_row_q8_1`): each block's dot
//! product is an integer sum (AVX2 `maddubs`/`madd`), scaled once per block, accumulated in f32.
//!
//! Every format is expressed in one of two block shapes, which fixes the arithmetic:
//! - *affine* (Q4_0, Q4_1, Q4_K): 32 unsigned codes with `w = d·q + m` per block of 32, so
//!   `Σ w·x = d·dₓ·Σ q·qₓ + m·sₓ` where `sₓ = dₓ·Σ qₓ` is kept with the activations;
//! - *scaled* (Q8_0, Q6_K): 32 signed codes with one scale per half of 16, so
//!   `Σ w·x = dₓ·(d₀·Σ₀ q·qₓ + d₁·Σ₁ q·qₓ)`.
//!
//! A batch of rows reuses each unpacked weight block for a tile of rows; with more rows, each
//! further tile passes over the task's weight rows again (from cache for a layer's matrices,
//! which are small; the output head's share of a task is larger than L2, so batched steps
//! stream it once per tile).
//!
//! Kernels, chosen once per process by the CPU's features ([`Kernel`]): AVX-512 with VNNI, which
//! keeps Q4_0, Q4_1 and Q8_0 matrices repacked in panels of 16 outputs ([`Layout::Panels`]) so
//! that one `vpdpbusd` advances 16 outputs' sums; AVX2 on the file's layout; a portable fallback.
//! `AGENTOS_QUANT_KERNEL` picks a slower tier where one is wanted for comparison.
//!
//! # Shapes
//! weight: `[outputs, inputs]` (ggml order: one row of blocks per output); x: `[rows, inputs]`
//! row-major → `[rows, outputs]` row-major

use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::gguf::GgmlType;
use crate::gguf::dequant::{half, scale_min_k4};

/// Values per activation block (and per unpacked weight block).
pub const QK: usize = 32;

/// Activation rows that share one unpacked weight block (AVX2 and portable kernels).
const ROW_TILE: usize = 4;

/// The same for the AVX-512 kernel, whose 32 vector registers hold 8 rows' accumulators.
const WIDE_ROW_TILE: usize = 8;

/// The block encodings the kernel multiplies directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantFormat {
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q6K,
}

impl QuantFormat {
    /// The format of a ggml type, `None` for the float types.
    pub fn of(ty: GgmlType) -> Option<Self> {
        Some(match ty {
            GgmlType::Q4_0 => QuantFormat::Q4_0,
            GgmlType::Q4_1 => QuantFormat::Q4_1,
            GgmlType::Q8_0 => QuantFormat::Q8_0,
            GgmlType::Q4K => QuantFormat::Q4K,
            GgmlType::Q6K => QuantFormat::Q6K,
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => return None,
        })
    }

    pub fn ggml_type(self) -> GgmlType {
        match self {
            QuantFormat::Q4_0 => GgmlType::Q4_0,
            QuantFormat::Q4_1 => GgmlType::Q4_1,
            QuantFormat::Q8_0 => GgmlType::Q8_0,
            QuantFormat::Q4K => GgmlType::Q4K,
            QuantFormat::Q6K => GgmlType::Q6K,
        }
    }

    /// Values per block of the file.
    pub fn block_elements(self) -> usize {
        self.ggml_type().block_elements() as usize
    }

    /// Bytes per block of the file.
    pub fn block_bytes(self) -> usize {
        self.ggml_type().block_bytes() as usize
    }
}

/// A weight matrix kept in its file's blocks: `outputs` rows of `inputs / block_elements` blocks.
pub struct QuantMatrix {
    format: QuantFormat,
    outputs: usize,
    inputs: usize,
    /// Bytes per output row.
    row_bytes: usize,
    layout: Layout,
    data: Vec<u8>,
}

/// How a matrix's blocks lie in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// As in the file: one row of blocks per output.
    File,
    /// Q4_0, Q4_1 and Q8_0 repacked for the AVX-512 kernel, [`PANEL`] outputs interleaved: per
    /// panel, per block of 32 inputs, the code vectors of 64 bytes (byte `4j + t` of vector
    /// `h` is code byte `4h + t` of output `j`'s block: for Q4_0/Q4_1, 4 vectors whose bytes
    /// hold values `4h + t` and `4h + t + 16` in their two nibbles; for Q8_0, 8 vectors of
    /// value `4h + t`, stored plus 128 so that they are unsigned), then the 16 outputs' f16
    /// scales `d`, then (Q4_1) their f16 offsets `m`. One `vpdpbusd` then multiplies 4 inputs
    /// into all 16 outputs' sums, with no horizontal adds. The file's bytes, moved (and Q8_0's
    /// codes offset by 128); the same size.
    Panels,
}

/// Outputs per panel of [`Layout::Panels`]: one 512-bit register of `i32` or `f32` lanes.
const PANEL: usize = 16;

/// Activation rows that share one unpacked panel block.
const PANEL_ROW_TILE: usize = 4;

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantMatrix")
            .field("format", &self.format)
            .field("outputs", &self.outputs)
            .field("inputs", &self.inputs)
            .finish()
    }
}

impl QuantMatrix {
    /// `data` holds `outputs` rows of `inputs` values each, in `format`'s blocks.
    pub fn new(format: QuantFormat, outputs: usize, inputs: usize, data: Vec<u8>) -> Result<Self> {
        let block = format.block_elements();
        if inputs == 0 || !inputs.is_multiple_of(block) {
            return Err(KernelError::ModelFormat(format!(
                "a {format:?} row of {inputs} values is not a whole number of {block}-value blocks"
            )));
        }
        let row_bytes = inputs / block * format.block_bytes();
        if Some(data.len()) != row_bytes.checked_mul(outputs) {
            return Err(KernelError::ModelFormat(format!(
                "{} bytes do not hold {outputs} {format:?} rows of {inputs} values",
                data.len()
            )));
        }
        let layout = match Kernel::detect().panels(format) && outputs.is_multiple_of(PANEL) {
            true => Layout::Panels,
            false => Layout::File,
        };
        Ok(QuantMatrix::with_layout(format, outputs, inputs, data, layout))
    }

    /// `data` (checked by [`QuantMatrix::new`]) in `layout`.
    fn with_layout(format: QuantFormat, outputs: usize, inputs: usize, data: Vec<u8>, layout: Layout) -> Self {
        let row_bytes = inputs / format.block_elements() * format.block_bytes();
        let data = match layout {
            Layout::File => data,
            Layout::Panels => repack_panels(format, outputs, inputs, &data),
        };
        QuantMatrix {
            format,
            outputs,
            inputs,
            row_bytes,
            layout,
            data,
        }
    }

    pub fn format(&self) -> QuantFormat {
        self.format
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Bytes the weights occupy.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Output row `r`'s blocks in the file's layout.
    fn row(&self, r: usize) -> std::borrow::Cow<'_, [u8]> {
        match self.layout {
            Layout::File => std::borrow::Cow::Borrowed(&self.data[r * self.row_bytes..(r + 1) * self.row_bytes]),
            Layout::Panels => std::borrow::Cow::Owned(unpack_panel_row(self.format, self.inputs, &self.data, r)),
        }
    }

    /// Output row `r` dequantised (bit for bit as [`crate::gguf`] dequantises), e.g. an
    /// embedding lookup.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        crate::gguf::dequant::dequantize(self.format.ggml_type(), &self.row(r), out);
    }

    /// `x @ wᵀ` for the `rows` rows of `x` (row-major `[rows, inputs]`) → `[rows, outputs]`.
    pub fn matmul(&self, x: &[f32], rows: usize) -> Vec<f32> {
        self.matmul_quantized(&Q8Rows::quantize(x, rows, self.inputs))
    }

    /// `x @ wᵀ` for activations already quantised (one quantisation serves every matrix that
    /// reads the same input).
    pub fn matmul_quantized(&self, x: &Q8Rows) -> Vec<f32> {
        self.matmul_with(Kernel::detect(), x)
    }

    fn matmul_with(&self, kernel: Kernel, x: &Q8Rows) -> Vec<f32> {
        assert_eq!(x.inputs, self.inputs, "activation width");
        let format = self.format;
        let rows = x.rows;
        // Outputs a task's unit holds (a row of blocks, or a panel) and rows per kernel call.
        let (unit, tile) = match self.layout {
            Layout::File => (1, kernel.row_tile(format)),
            Layout::Panels => {
                assert!(kernel.panels(format), "a panel layout needs the AVX-512 kernel");
                (PANEL, PANEL_ROW_TILE)
            }
        };
        let unit_bytes = self.row_bytes * unit;
        // Transposed output `[outputs][rows]`: each task owns whole units, at least 16 outputs.
        let mut out_t = vec![0f32; self.outputs * rows];
        let per_task = (self.outputs / unit / (rayon::current_num_threads() * 4)).max(16 / unit);
        out_t
            .par_chunks_mut(per_task * unit * rows)
            .enumerate()
            .for_each(|(task, out)| {
                let first = task * per_task;
                let n = out.len() / (unit * rows);
                let w = &self.data[first * unit_bytes..(first + n) * unit_bytes];
                let mut r0 = 0;
                while r0 < rows {
                    let tile = tile.min(rows - r0);
                    match self.layout {
                        Layout::File => kernel.dot_rows(format, w, self.row_bytes, x, r0, tile, out),
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: matrices are in panels only where `Kernel::panels` holds for the
                        // kernel (asserted above), whose CPU features `Kernel::supported` found.
                        Layout::Panels => unsafe { x86_vnni::panel_rows(format, w, unit_bytes, x, r0, tile, out) },
                        #[cfg(not(target_arch = "x86_64"))]
                        Layout::Panels => unreachable!("panels are an x86_64 layout"),
                    }
                    r0 += tile;
                }
            });
        transpose_outputs(out_t, rows, self.outputs)
    }
}

/// `[outputs][rows]` → `[rows][outputs]`.
fn transpose_outputs(out_t: Vec<f32>, rows: usize, outputs: usize) -> Vec<f32> {
    if rows == 1 {
        return out_t;
    }
    let mut y = vec![0f32; rows * outputs];
    for j in 0..outputs {
        for r in 0..rows {
            y[r * outputs + j] = out_t[j * rows + r];
        }
    }
    y
}

/// Bytes per block and where its codes start, for Q4_0 (`f = 0`), Q4_1 (1) and Q8_0 (2): the
/// formats whose SIMD kernels take the format as a const parameter.
const fn small_block_layout(f: u8) -> (usize, usize) {
    match f {
        0 => (18, 2),
        1 => (20, 4),
        _ => (34, 2),
    }
}

/// How one block of a format repacked into [`Layout::Panels`] is laid out: its bytes in the
/// file, where its codes start there, its code vectors of 64 bytes per panel block, and what is
/// added to each code byte (Q8_0's signed codes become unsigned for `vpdpbusd`).
struct PanelBlock {
    size: usize,
    qs_at: usize,
    vectors: usize,
    code_offset: u8,
}

impl PanelBlock {
    fn of(format: QuantFormat) -> Self {
        match format {
            QuantFormat::Q4_0 => Self::of_kernel(0),
            QuantFormat::Q4_1 => Self::of_kernel(1),
            QuantFormat::Q8_0 => Self::of_kernel(2),
            other => unreachable!("{other:?} is not repacked"),
        }
    }

    /// The layout of Q4_0 (`f = 0`), Q4_1 (1) or Q8_0 (2), as the kernels' const parameter
    /// names them.
    const fn of_kernel(f: u8) -> Self {
        let (size, qs_at) = small_block_layout(f);
        let (vectors, code_offset) = if f == 2 { (8, 128) } else { (4, 0) };
        PanelBlock {
            size,
            qs_at,
            vectors,
            code_offset,
        }
    }

    /// Bytes of one panel block: 16 outputs' blocks.
    const fn panel_bytes(&self) -> usize {
        PANEL * self.size
    }

    /// Where the 16 scales start in a panel block (the offsets `m` of Q4_1 follow them).
    const fn scales_at(&self) -> usize {
        64 * self.vectors
    }
}

/// The file's rows (`outputs` rows of `inputs / 32` Q4_0, Q4_1 or Q8_0 blocks) in
/// [`Layout::Panels`]: the same bytes, moved (Q8_0's codes offset by 128); `outputs` is a
/// multiple of [`PANEL`].
fn repack_panels(format: QuantFormat, outputs: usize, inputs: usize, data: &[u8]) -> Vec<u8> {
    let layout = PanelBlock::of(format);
    let (size, qs_at, d_at) = (layout.size, layout.qs_at, layout.scales_at());
    let blocks = inputs / QK;
    let row_bytes = blocks * size;
    let block_bytes = layout.panel_bytes();
    let mut out = vec![0u8; data.len()];
    for p in 0..outputs / PANEL {
        for b in 0..blocks {
            let dst = &mut out[(p * blocks + b) * block_bytes..(p * blocks + b + 1) * block_bytes];
            for j in 0..PANEL {
                let at = (p * PANEL + j) * row_bytes + b * size;
                let src = &data[at..at + size];
                for h in 0..layout.vectors {
                    for t in 0..4 {
                        dst[h * 64 + 4 * j + t] = src[qs_at + 4 * h + t].wrapping_add(layout.code_offset);
                    }
                }
                dst[d_at + 2 * j..d_at + 2 * j + 2].copy_from_slice(&src[0..2]);
                if format == QuantFormat::Q4_1 {
                    dst[d_at + 32 + 2 * j..d_at + 32 + 2 * j + 2].copy_from_slice(&src[2..4]);
                }
            }
        }
    }
    out
}

/// Output row `r` of a [`Layout::Panels`] matrix back in the file's layout.
fn unpack_panel_row(format: QuantFormat, inputs: usize, data: &[u8], r: usize) -> Vec<u8> {
    let layout = PanelBlock::of(format);
    let (size, qs_at, d_at) = (layout.size, layout.qs_at, layout.scales_at());
    let blocks = inputs / QK;
    let block_bytes = layout.panel_bytes();
    let (p, j) = (r / PANEL, r % PANEL);
    let mut row = vec![0u8; blocks * size];
    for b in 0..blocks {
        let src = &data[(p * blocks + b) * block_bytes..(p * blocks + b + 1) * block_bytes];
        let dst = &mut row[b * size..(b + 1) * size];
        for h in 0..layout.vectors {
            for t in 0..4 {
                dst[qs_at + 4 * h + t] = src[h * 64 + 4 * j + t].wrapping_sub(layout.code_offset);
            }
        }
        dst[0..2].copy_from_slice(&src[d_at + 2 * j..d_at + 2 * j + 2]);
        if format == QuantFormat::Q4_1 {
            dst[2..4].copy_from_slice(&src[d_at + 32 + 2 * j..d_at + 32 + 2 * j + 2]);
        }
    }
    row
}

/// Rows of activations quantised per block of 32: `x ≈ d·q` with `q` in `-127..=127`.
pub struct Q8Rows {
    rows: usize,
    inputs: usize,
    /// `[rows][inputs]`
    qs: Vec<i8>,
    /// Scale per block: `[rows][inputs / 32]`.
    d: Vec<f32>,
    /// `d · Σ q` per block (the affine formats' offset term): `[rows][inputs / 32]`.
    s: Vec<f32>,
    /// `d` and `s` transposed, `[inputs / 32][rows]`: a tile of 4 rows loads its 4 scales of a
    /// block as one vector.
    d_t: Vec<f32>,
    s_t: Vec<f32>,
}

impl Q8Rows {
    /// Quantises `x` (`[rows, inputs]`, `inputs` a multiple of 32) as llama.cpp's AVX2
    /// `quantize_row_q8_1` does: `d = max|x| / 127`, `q = round(x / d)` (ties to even).
    pub fn quantize(x: &[f32], rows: usize, inputs: usize) -> Self {
        assert!(
            x.len() == rows * inputs && inputs.is_multiple_of(QK),
            "activation shape"
        );
        let blocks = rows * inputs / QK;
        let mut qs = vec![0i8; rows * inputs];
        let mut d = vec![0f32; blocks];
        let mut s = vec![0f32; blocks];
        let kernel = Kernel::detect();
        for (b, (x, q)) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).enumerate() {
            let (scale, sum) = kernel.quantize_block(x, q);
            d[b] = scale;
            s[b] = scale * sum as f32;
        }
        let per_row = inputs / QK;
        let mut d_t = vec![0f32; blocks];
        let mut s_t = vec![0f32; blocks];
        for r in 0..rows {
            for b in 0..per_row {
                d_t[b * rows + r] = d[r * per_row + b];
                s_t[b * rows + r] = s[r * per_row + b];
            }
        }
        Q8Rows {
            rows,
            inputs,
            qs,
            d,
            s,
            d_t,
            s_t,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    fn blocks_per_row(&self) -> usize {
        self.inputs / QK
    }

    /// Row `r`'s block `b`: codes, scale, offset term.
    fn block(&self, r: usize, b: usize) -> (&[i8], f32, f32) {
        let i = r * self.blocks_per_row() + b;
        (&self.qs[i * QK..(i + 1) * QK], self.d[i], self.s[i])
    }
}

/// The portable [`Q8Rows::quantize`] of one block: `q = round(x / d)` with `d = max|x| / 127`,
/// ties to even; returns `d` and the sum of the codes.
fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in q.iter_mut().zip(x) {
        let code = (v * inv).round_ties_even() as i32;
        *q = code as i8;
        sum += code;
    }
    (scale, sum)
}

/// One 32-value block of a weight row, unpacked.
enum Block32 {
    /// `w = d·q + m`, `q` in `0..=15`.
    Affine { q: [u8; QK], d: f32, m: f32 },
    /// `w = d[h]·q` for the half `h` (values `16h..16h + 16`), `q` in `-128..=127`.
    Scaled { q: [i8; QK], d: [f32; 2] },
}

/// The effective scale and offset of the 8 sub-blocks of a Q4_K block: `w = d·q + m`.
fn q4k_scales(block: &[u8]) -> [(f32, f32); 8] {
    let (d, dmin) = (half(block, 0), half(block, 2));
    std::array::from_fn(|j| {
        let (sc, m) = scale_min_k4(j, &block[4..16]);
        (d * sc as f32, -(dmin * m as f32))
    })
}

/// Block `b` (of 32 values) of a weight row, in the layouts of `crate::gguf::dequant`.
fn unpack(format: QuantFormat, row: &[u8], b: usize) -> Block32 {
    match format {
        QuantFormat::Q4_0 | QuantFormat::Q4_1 => {
            let (blk, qs_at) = match format {
                QuantFormat::Q4_0 => (&row[b * 18..b * 18 + 18], 2),
                _ => (&row[b * 20..b * 20 + 20], 4),
            };
            let d = half(blk, 0);
            let m = if format == QuantFormat::Q4_0 {
                -8.0 * d
            } else {
                half(blk, 2)
            };
            let qs = &blk[qs_at..qs_at + 16];
            let q = std::array::from_fn(|i| if i < 16 { qs[i] & 0x0f } else { qs[i - 16] >> 4 });
            Block32::Affine { q, d, m }
        }
        QuantFormat::Q8_0 => {
            let blk = &row[b * 34..b * 34 + 34];
            let d = half(blk, 0);
            Block32::Scaled {
                q: std::array::from_fn(|i| blk[2 + i] as i8),
                d: [d, d],
            }
        }
        QuantFormat::Q4K => {
            // Sub-block j of a 256-value block: chunk j / 2 of 32 bytes, low nibbles for even
            // j, high for odd.
            let blk = &row[(b / 8) * 144..(b / 8) * 144 + 144];
            let j = b % 8;
            let (d, m) = q4k_scales(blk)[j];
            let qs = &blk[16 + (j / 2) * 32..16 + (j / 2) * 32 + 32];
            let q = std::array::from_fn(|l| if j.is_multiple_of(2) { qs[l] & 0x0f } else { qs[l] >> 4 });
            Block32::Affine { q, d, m }
        }
        QuantFormat::Q6K => {
            // Values 128h + 32k + l (l < 32) of a 256-value block come from ql, qh and scales
            // as ggml's dequantize_row_q6_K lays them out.
            let blk = &row[(b / 8) * 210..(b / 8) * 210 + 210];
            let j = b % 8;
            let (h, k) = (j / 4, j % 4);
            let ql = &blk[h * 64..h * 64 + 64];
            let qh = &blk[128 + h * 32..128 + h * 32 + 32];
            let sc = &blk[192 + h * 8..192 + h * 8 + 8];
            let d = half(blk, 208);
            let q = std::array::from_fn(|l| {
                let low = match k {
                    0 => ql[l] & 0x0f,
                    1 => ql[l + 32] & 0x0f,
                    2 => ql[l] >> 4,
                    _ => ql[l + 32] >> 4,
                };
                let high = (qh[l] >> (2 * k)) & 3;
                ((low | (high << 4)) as i32 - 32) as i8
            });
            Block32::Scaled {
                q,
                d: [d * (sc[2 * k] as i8) as f32, d * (sc[2 * k + 1] as i8) as f32],
            }
        }
    }
}

/// Which implementation of the block dot products this CPU runs.
#[derive(Clone, Copy)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 with VNNI for Q4_0, Q4_1 and Q8_0; AVX2 for the other formats.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Kernel {
    /// The fastest implementation this CPU supports, or the one `AGENTOS_QUANT_KERNEL` names
    /// (`portable`, `avx2`, `avx512vnni`; to compare tiers on one machine) where this CPU
    /// supports it. Detected once.
    fn detect() -> Self {
        static DETECTED: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            let wanted = std::env::var("AGENTOS_QUANT_KERNEL").ok();
            Self::choose(&Self::supported(), wanted.as_deref())
        })
    }

    /// The last (fastest) of `supported`, or the one named `wanted` where it is among them.
    fn choose(supported: &[Kernel], wanted: Option<&str>) -> Kernel {
        let best = *supported.last().expect("the portable kernel runs anywhere");
        let Some(wanted) = wanted else {
            return best;
        };
        match supported.iter().find(|k| k.name() == wanted) {
            Some(&kernel) => kernel,
            None => {
                tracing::warn!(
                    wanted,
                    using = best.name(),
                    "AGENTOS_QUANT_KERNEL names no kernel this CPU supports"
                );
                best
            }
        }
    }

    /// Whether matrices of `format` are repacked into [`Layout::Panels`] for this kernel.
    fn panels(self, format: QuantFormat) -> bool {
        match (self, format) {
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512Vnni, QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0) => true,
            _ => false,
        }
    }

    /// Rows [`Kernel::dot_rows`] takes at once for `format`.
    fn row_tile(self, format: QuantFormat) -> usize {
        match (self, format) {
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512Vnni, QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0) => WIDE_ROW_TILE,
            _ => ROW_TILE,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => "avx512vnni",
        }
    }

    /// Every implementation this CPU supports, slowest first.
    fn supported() -> Vec<Self> {
        #[allow(unused_mut)]
        let mut kernels = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                kernels.push(Kernel::Avx2);
                if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
                    kernels.push(Kernel::Avx512Vnni);
                }
            }
        }
        kernels
    }

    /// For every weight row `j` of `w` (rows of `row_bytes`): `out[j][r0 + i] = w_j · x[r0 + i]`
    /// for the `tile <= self.row_tile(format)` rows from `r0`, where `out` is `[w rows][x rows]`.
    #[allow(clippy::too_many_arguments)]
    fn dot_rows(
        self,
        format: QuantFormat,
        w: &[u8],
        row_bytes: usize,
        x: &Q8Rows,
        r0: usize,
        tile: usize,
        out: &mut [f32],
    ) {
        let rows = x.rows;
        match self {
            Kernel::Portable => {
                for (w, out) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(rows)) {
                    portable_dot_rows(format, w, x, r0, &mut out[r0..r0 + tile]);
                }
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `supported` found AVX2, FMA and F16C.
            Kernel::Avx2 => unsafe { x86::dot_rows(format, w, row_bytes, x, r0, tile, out) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => match format {
                // SAFETY: `supported` found AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C.
                QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0 => unsafe {
                    x86_vnni::dot_rows(format, w, row_bytes, x, r0, tile, out)
                },
                // SAFETY: as above (AVX2 is part of this tier).
                _ => unsafe { x86::dot_rows(format, w, row_bytes, x, r0, tile, out) },
            },
        }
    }

    /// Quantises one block of 32 values into `q`; returns the scale and the sum of the codes.
    fn quantize_block(self, x: &[f32], q: &mut [i8]) -> (f32, i32) {
        match self {
            Kernel::Portable => quantize_block(x, q),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `supported` found AVX2, FMA and F16C (with AVX-512 in the second tier).
            Kernel::Avx2 | Kernel::Avx512Vnni => unsafe { x86::quantize_block(x, q) },
        }
    }
}

/// The reference implementation: every block unpacked, integer sums in `i32`.
fn portable_dot_rows(format: QuantFormat, w: &[u8], x: &Q8Rows, r0: usize, out: &mut [f32]) {
    out.fill(0.0);
    for b in 0..x.blocks_per_row() {
        let block = unpack(format, w, b);
        for (i, o) in out.iter_mut().enumerate() {
            let (xq, xd, xs) = x.block(r0 + i, b);
            *o += match &block {
                Block32::Affine { q, d, m } => {
                    let sum: i32 = q.iter().zip(xq).map(|(&a, &b)| a as i32 * b as i32).sum();
                    d * xd * sum as f32 + m * xs
                }
                Block32::Scaled { q, d } => {
                    let sum = |h: usize| -> i32 { (16 * h..16 * h + 16).map(|l| q[l] as i32 * xq[l] as i32).sum() };
                    xd * (d[0] * sum(0) as f32 + d[1] * sum(1) as f32)
                }
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
// Row loops index the accumulators and the activation rows together; with a constant bound they
// unroll into registers, which is the point.
#[allow(clippy::needless_range_loop)]
mod x86 {
    //! AVX2: 32 codes per register; `maddubs` multiplies unsigned weight codes by signed
    //! activation codes into 16-bit pairs, `madd` by ones widens to 8 lanes of `i32` (lanes 0–3
    //! hold values 0–15, lanes 4–7 values 16–31, which is how the scaled formats apply one scale
    //! per half), converted to f32 and scaled once per block.
    use std::arch::x86_64::*;

    use super::{Block32, Q8Rows, QK, QuantFormat, ROW_TILE, q4k_scales, small_block_layout, unpack};

    /// See [`super::Kernel::dot_rows`].
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_rows(
        format: QuantFormat,
        w: &[u8],
        row_bytes: usize,
        x: &Q8Rows,
        r0: usize,
        tile: usize,
        out: &mut [f32],
    ) {
        match tile {
            4 => rows::<4>(format, w, row_bytes, x, r0, out),
            3 => rows::<3>(format, w, row_bytes, x, r0, out),
            2 => rows::<2>(format, w, row_bytes, x, r0, out),
            1 => rows::<1>(format, w, row_bytes, x, r0, out),
            n => unreachable!("{n} rows in a tile of at most {ROW_TILE}"),
        }
    }

    /// Quantises 32 values as [`super::quantize_block`] does; returns the scale and the sum of
    /// the codes.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, i32) {
        assert!(x.len() == QK && q.len() == QK);
        // SAFETY: x holds 32 floats.
        let v: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) });
        let sign = _mm256_set1_ps(-0.0);
        let mut max = _mm256_andnot_ps(sign, v[0]);
        for v in &v[1..] {
            max = _mm256_max_ps(max, _mm256_andnot_ps(sign, *v));
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(max), _mm256_extractf128_ps(max, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_movehdup_ps(m));
        let d = _mm_cvtss_f32(m) / 127.0;
        let inv = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let codes: [__m256i; 4] = std::array::from_fn(|i| {
            _mm256_cvtps_epi32(_mm256_round_ps(
                _mm256_mul_ps(v[i], inv),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            ))
        });
        let sum = _mm256_add_epi32(
            _mm256_add_epi32(codes[0], codes[1]),
            _mm256_add_epi32(codes[2], codes[3]),
        );
        let sum = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        let sum = _mm_add_epi32(sum, _mm_unpackhi_epi64(sum, sum));
        let sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, 1));
        // Packing works within 128-bit lanes; the permute puts the 8 groups of 4 back in order.
        let packed = _mm256_packs_epi16(
            _mm256_packs_epi32(codes[0], codes[1]),
            _mm256_packs_epi32(codes[2], codes[3]),
        );
        let packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: q holds 32 bytes.
        unsafe { _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, packed) };
        (d, _mm_cvtsi128_si32(sum))
    }

    /// Sum of the 8 lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// 16 bytes of nibbles → 32 codes: low nibbles are values 0–15, high nibbles 16–31.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn nibbles(bytes: __m128i) -> __m256i {
        let mask = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(bytes, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
        _mm256_set_m128i(hi, lo)
    }

    /// 8 `i32` lanes of `Σ pairs a·b` for unsigned `a`, signed `b`.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_u8_i8(a: __m256i, b: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)))
    }

    /// One activation row: codes `[inputs]`, scales and offset terms `[inputs / 32]`.
    type XRow<'a> = (&'a [i8], &'a [f32], &'a [f32]);

    /// The codes of block `b` of a row.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn codes(row: &XRow<'_>, b: usize) -> __m256i {
        let q = &row.0[b * QK..(b + 1) * QK];
        // SAFETY: q holds 32 codes.
        unsafe { _mm256_loadu_si256(q.as_ptr() as *const __m256i) }
    }

    /// One affine weight block (codes `q`, `w = d·q + m`) against `R` rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    fn affine<const R: usize>(
        xs: &[XRow<'_>; R],
        b: usize,
        q: __m256i,
        d: f32,
        m: f32,
        acc: &mut [__m256; R],
        offset: &mut [f32; R],
    ) {
        for r in 0..R {
            let (xd, xs_b) = (xs[r].1[b], xs[r].2[b]);
            acc[r] = _mm256_fmadd_ps(dot_u8_i8(q, codes(&xs[r], b)), _mm256_set1_ps(d * xd), acc[r]);
            offset[r] += m * xs_b;
        }
    }

    /// Q4_0 (`Q4_0 = true`: `w = d·q - 8d`) or Q4_1 (`w = d·q + m`) blocks against `R` rows: the
    /// default model's format, so the loop reads through raw pointers (lengths asserted once) and
    /// alternates two accumulator sets, so that consecutive blocks' FMAs do not wait on each
    /// other.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q4_rows<const R: usize, const Q4_0: bool>(
        w: &[u8],
        xs: &[XRow<'_>; R],
        blocks: usize,
        acc: &mut [__m256; R],
        offset: &mut [f32; R],
    ) {
        let size = if Q4_0 { 18 } else { 20 };
        assert!(w.len() >= blocks * size);
        for x in xs {
            assert!(x.0.len() >= blocks * QK && x.1.len() >= blocks && x.2.len() >= blocks);
        }
        // Even blocks into `acc`, odd ones into `odd`: two independent FMA chains.
        let mut odd = [_mm256_setzero_ps(); R];
        let mut b = 0;
        while b < blocks {
            // SAFETY: blocks b and b + 1 (when < blocks) lie within w and every row holds them
            // (asserted above).
            unsafe {
                q4_block::<R, Q4_0>(w.as_ptr().add(b * size), xs, b, acc, offset);
                if b + 1 < blocks {
                    q4_block::<R, Q4_0>(w.as_ptr().add((b + 1) * size), xs, b + 1, &mut odd, offset);
                }
            }
            b += 2;
        }
        for r in 0..R {
            acc[r] = _mm256_add_ps(acc[r], odd[r]);
        }
    }

    /// One Q4_0 or Q4_1 block at `blk` against block `b` of `R` rows.
    ///
    /// # Safety
    /// `blk` points at a whole block and every row holds block `b`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_block<const R: usize, const Q4_0: bool>(
        blk: *const u8,
        xs: &[XRow<'_>; R],
        b: usize,
        acc: &mut [__m256; R],
        offset: &mut [f32; R],
    ) {
        let qs_at = if Q4_0 { 2 } else { 4 };
        // SAFETY: the caller's contract; the 4 bytes read from the block's start lie within its
        // 18 or 20.
        unsafe {
            // F16C widens the scale (and Q4_1's offset) in place: the `half` crate's conversion
            // is a call with a feature check, per block most of a decode step.
            let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(blk as *const i32)));
            let d = _mm_cvtss_f32(dm);
            let m = if Q4_0 {
                -8.0 * d
            } else {
                _mm_cvtss_f32(_mm_movehdup_ps(dm))
            };
            let q = nibbles(_mm_loadu_si128(blk.add(qs_at) as *const __m128i));
            for r in 0..R {
                let xd = *xs[r].1.as_ptr().add(b);
                let xv = _mm256_loadu_si256(xs[r].0.as_ptr().add(b * QK) as *const __m256i);
                acc[r] = _mm256_fmadd_ps(dot_u8_i8(q, xv), _mm256_set1_ps(d * xd), acc[r]);
                offset[r] += m * *xs[r].2.as_ptr().add(b);
            }
        }
    }

    /// Q8_0 blocks (`w = d·q`, signed codes) against `R` rows: the default model's output head,
    /// with the same raw-pointer loop and alternating accumulators as [`q4_rows`].
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q8_rows<const R: usize>(w: &[u8], xs: &[XRow<'_>; R], blocks: usize, acc: &mut [__m256; R]) {
        assert!(w.len() >= blocks * 34);
        for x in xs {
            assert!(x.0.len() >= blocks * QK && x.1.len() >= blocks);
        }
        let mut odd = [_mm256_setzero_ps(); R];
        let mut b = 0;
        while b < blocks {
            // SAFETY: blocks b and b + 1 (when < blocks) lie within w and every row holds them
            // (asserted above).
            unsafe {
                q8_block::<R>(w.as_ptr().add(b * 34), xs, b, acc);
                if b + 1 < blocks {
                    q8_block::<R>(w.as_ptr().add((b + 1) * 34), xs, b + 1, &mut odd);
                }
            }
            b += 2;
        }
        for r in 0..R {
            acc[r] = _mm256_add_ps(acc[r], odd[r]);
        }
    }

    /// One Q8_0 block at `blk` (f16 scale, 32 codes) against block `b` of `R` rows.
    ///
    /// # Safety
    /// `blk` points at a whole block and every row holds block `b`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_block<const R: usize>(blk: *const u8, xs: &[XRow<'_>; R], b: usize, acc: &mut [__m256; R]) {
        // SAFETY: the caller's contract.
        unsafe {
            let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
                std::ptr::read_unaligned(blk as *const u16) as i32,
            )));
            let q = _mm256_loadu_si256(blk.add(2) as *const __m256i);
            // maddubs wants one unsigned side: |w| against x with w's sign.
            let abs = _mm256_sign_epi8(q, q);
            for r in 0..R {
                let xd = *xs[r].1.as_ptr().add(b);
                let xv = _mm256_loadu_si256(xs[r].0.as_ptr().add(b * QK) as *const __m256i);
                let p = dot_u8_i8(abs, _mm256_sign_epi8(xv, q));
                acc[r] = _mm256_fmadd_ps(p, _mm256_set1_ps(d * xd), acc[r]);
            }
        }
    }

    /// `R` rows from `r0` against every weight row of `w`; `out` is `[w rows][x rows]`.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn rows<const R: usize>(format: QuantFormat, w: &[u8], row_bytes: usize, x: &Q8Rows, r0: usize, out: &mut [f32]) {
        let blocks = x.blocks_per_row();
        let inputs = blocks * QK;
        // Each row's slices, cut once: per block only an offset is added.
        let xs: [XRow<'_>; R] = std::array::from_fn(|r| {
            let row = r0 + r;
            (
                &x.qs[row * inputs..(row + 1) * inputs],
                &x.d[row * blocks..(row + 1) * blocks],
                &x.s[row * blocks..(row + 1) * blocks],
            )
        });
        if R == 4 && matches!(format, QuantFormat::Q4_0 | QuantFormat::Q4_1 | QuantFormat::Q8_0) {
            let xs4: &[XRow<'_>; 4] = xs[..].try_into().expect("R = 4");
            for (w, out) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(x.rows)) {
                let sums = match format {
                    QuantFormat::Q4_0 => tile4::<0>(w, xs4, x, r0, blocks),
                    QuantFormat::Q4_1 => tile4::<1>(w, xs4, x, r0, blocks),
                    _ => tile4::<2>(w, xs4, x, r0, blocks),
                };
                // SAFETY: out holds x.rows >= r0 + 4 floats.
                unsafe { _mm_storeu_ps(out[r0..r0 + 4].as_mut_ptr(), sums) };
            }
            return;
        }
        for (w, out) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(x.rows)) {
            let (acc, offset) = row::<R>(format, w, &xs, blocks);
            for r in 0..R {
                out[r0 + r] = hsum(acc[r]) + offset[r];
            }
        }
    }

    /// Four rows against one Q4_0 (`F = 0`), Q4_1 (`F = 1`) or Q8_0 (`F = 2`) weight row, the
    /// batched case: each row's 8 integer lanes are folded together with the other rows' by
    /// `hadd` first, so the conversion, the scale and the FMA run once per block for all four
    /// rows (the scales of the 4 rows come as one vector from the transposed layout) instead of
    /// once per row.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn tile4<const F: u8>(w: &[u8], xs: &[XRow<'_>; 4], x: &Q8Rows, r0: usize, blocks: usize) -> __m128 {
        let (size, qs_at) = small_block_layout(F);
        let rows = x.rows;
        assert!(w.len() >= blocks * size && r0 + 4 <= rows);
        assert!(x.d_t.len() >= blocks * rows && x.s_t.len() >= blocks * rows);
        for row in xs {
            assert!(row.0.len() >= blocks * QK);
        }
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm_setzero_ps();
        let mut offset = _mm_setzero_ps();
        for b in 0..blocks {
            // SAFETY: block b lies within w, every row holds block b, and the transposed scales
            // hold rows r0..r0 + 4 of block b (all asserted above); the 4 bytes read from the
            // block's start lie within it.
            unsafe {
                let blk = w.as_ptr().add(b * size);
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(blk as *const i32)));
                let d = _mm_broadcastss_ps(dm);
                let codes: [__m256i; 4] =
                    std::array::from_fn(|r| _mm256_loadu_si256(xs[r].0.as_ptr().add(b * QK) as *const __m256i));
                let p: [__m256i; 4] = if F == 2 {
                    let q = _mm256_loadu_si256(blk.add(qs_at) as *const __m256i);
                    let abs = _mm256_sign_epi8(q, q);
                    std::array::from_fn(|r| {
                        _mm256_madd_epi16(_mm256_maddubs_epi16(abs, _mm256_sign_epi8(codes[r], q)), ones)
                    })
                } else {
                    let q = nibbles(_mm_loadu_si128(blk.add(qs_at) as *const __m128i));
                    std::array::from_fn(|r| _mm256_madd_epi16(_mm256_maddubs_epi16(q, codes[r]), ones))
                };
                // [p0 lanes 0-3, p1 0-3, p2 0-3, p3 0-3 | the same of lanes 4-7]: the two halves
                // added give each row's whole sum.
                let h = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
                let sums = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
                let xd = _mm_loadu_ps(x.d_t.as_ptr().add(b * rows + r0));
                acc = _mm_fmadd_ps(_mm_cvtepi32_ps(sums), _mm_mul_ps(d, xd), acc);
                if F != 2 {
                    let m = if F == 0 {
                        _mm_mul_ps(d, _mm_set1_ps(-8.0))
                    } else {
                        _mm_broadcastss_ps(_mm_movehdup_ps(dm))
                    };
                    offset = _mm_fmadd_ps(m, _mm_loadu_ps(x.s_t.as_ptr().add(b * rows + r0)), offset);
                }
            }
        }
        _mm_add_ps(acc, offset)
    }

    /// `R` rows against one weight row: per row 8 partial sums and the affine offset term.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn row<const R: usize>(
        format: QuantFormat,
        w: &[u8],
        xs: &[XRow<'_>; R],
        blocks: usize,
    ) -> ([__m256; R], [f32; R]) {
        let mut acc = [_mm256_setzero_ps(); R];
        // The affine formats' offset terms, summed as scalars.
        let mut offset = [0f32; R];
        match format {
            QuantFormat::Q4_0 => q4_rows::<R, true>(w, xs, blocks, &mut acc, &mut offset),
            QuantFormat::Q4_1 => q4_rows::<R, false>(w, xs, blocks, &mut acc, &mut offset),
            QuantFormat::Q4K => {
                let mask = _mm256_set1_epi8(0x0f);
                for sb in 0..blocks / 8 {
                    let blk = &w[sb * 144..sb * 144 + 144];
                    let scales = q4k_scales(blk);
                    for chunk in 0..4 {
                        // SAFETY: 32 code bytes per chunk from 16.
                        let bytes = unsafe { _mm256_loadu_si256(blk[16 + chunk * 32..].as_ptr() as *const __m256i) };
                        let lo = _mm256_and_si256(bytes, mask);
                        let hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask);
                        let (j, b) = (2 * chunk, sb * 8 + 2 * chunk);
                        affine(xs, b, lo, scales[j].0, scales[j].1, &mut acc, &mut offset);
                        affine(xs, b + 1, hi, scales[j + 1].0, scales[j + 1].1, &mut acc, &mut offset);
                    }
                }
            }
            QuantFormat::Q8_0 => q8_rows::<R>(w, xs, blocks, &mut acc),
            QuantFormat::Q6K => {
                // Codes are 0..=63 with w = d_h·(q - 32): Σ q·x - 32·Σ x per half, both from
                // unsigned maddubs.
                let thirty_two = _mm256_set1_epi8(32);
                for b in 0..blocks {
                    let Block32::Scaled { q, d } = unpack(format, w, b) else {
                        unreachable!("Q6_K unpacks to scaled blocks")
                    };
                    // SAFETY: 32 codes; +32 brings them to 0..=63.
                    let q = _mm256_add_epi8(unsafe { _mm256_loadu_si256(q.as_ptr() as *const __m256i) }, thirty_two);
                    for r in 0..R {
                        let xd = xs[r].1[b];
                        let xv = codes(&xs[r], b);
                        let p = _mm256_sub_ps(dot_u8_i8(q, xv), dot_u8_i8(thirty_two, xv));
                        let scale = _mm256_set_m128(_mm_set1_ps(d[1] * xd), _mm_set1_ps(d[0] * xd));
                        acc[r] = _mm256_fmadd_ps(p, scale, acc[r]);
                    }
                }
            }
        }
        (acc, offset)
    }
}

#[cfg(target_arch = "x86_64")]
// As in `x86`: row loops index accumulators and activation rows together and unroll.
#[allow(clippy::needless_range_loop)]
mod x86_vnni {
    //! AVX-512 with VNNI. `vpdpbusd` multiplies 64 unsigned weight codes by 64 signed
    //! activation codes and sums each 4 into 16 `i32` lanes in one instruction (AVX2 needs
    //! `maddubs` + `madd`, and saturates pairs at 16 bits).
    //! - [`panel_rows`]: Q4_0, Q4_1 and Q8_0 in [`super::Layout::Panels`], lanes = 16 outputs.
    //! - [`dot_rows`]: Q4_0, Q4_1 and Q8_0 in the file's layout (a matrix whose outputs are not
    //!   a multiple of 16), two 32-value blocks per
    //!   register: lanes 0–7 belong to the first block, 8–15 to the second, so one vector of
    //!   two scales (each repeated 8 times) scales both. The other formats use the AVX2 kernel.
    use std::arch::x86_64::*;

    use super::{Q8Rows, QK, QuantFormat, WIDE_ROW_TILE, small_block_layout};

    /// See [`super::Kernel::dot_rows`], for Q4_0, Q4_1 and Q8_0.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn dot_rows(
        format: QuantFormat,
        w: &[u8],
        row_bytes: usize,
        x: &Q8Rows,
        r0: usize,
        tile: usize,
        out: &mut [f32],
    ) {
        match (format, tile) {
            (QuantFormat::Q4_0, n) => rows_n::<0>(n, w, row_bytes, x, r0, out),
            (QuantFormat::Q4_1, n) => rows_n::<1>(n, w, row_bytes, x, r0, out),
            (QuantFormat::Q8_0, n) => rows_n::<2>(n, w, row_bytes, x, r0, out),
            (other, _) => unreachable!("{other:?} has no VNNI kernel"),
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    fn rows_n<const F: u8>(n: usize, w: &[u8], row_bytes: usize, x: &Q8Rows, r0: usize, out: &mut [f32]) {
        match n {
            8 => rows::<F, 8>(w, row_bytes, x, r0, out),
            7 => rows::<F, 7>(w, row_bytes, x, r0, out),
            6 => rows::<F, 6>(w, row_bytes, x, r0, out),
            5 => rows::<F, 5>(w, row_bytes, x, r0, out),
            4 => rows::<F, 4>(w, row_bytes, x, r0, out),
            3 => rows::<F, 3>(w, row_bytes, x, r0, out),
            2 => rows::<F, 2>(w, row_bytes, x, r0, out),
            1 => rows::<F, 1>(w, row_bytes, x, r0, out),
            n => unreachable!("{n} rows in a tile of at most {WIDE_ROW_TILE}"),
        }
    }

    /// The codes of blocks at `a` and `b` as 64 unsigned bytes in activation order, and for
    /// Q8_0 the mask of negative codes (their activations are negated, the codes made
    /// positive: `vpdpbusd` wants one unsigned side).
    ///
    /// # Safety
    /// `a` and `b` point at whole blocks of the format.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn codes2<const F: u8>(a: *const u8, b: *const u8) -> (__m512i, __mmask64) {
        let at = small_block_layout(F).1;
        // SAFETY: the caller's contract: 16 (4-bit) or 32 (8-bit) code bytes from `at`.
        unsafe {
            if F == 2 {
                let q = _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_loadu_si256(a.add(at) as *const __m256i)),
                    _mm256_loadu_si256(b.add(at) as *const __m256i),
                    1,
                );
                (_mm512_abs_epi8(q), _mm512_movepi8_mask(q))
            } else {
                // [a | b] → low nibbles [a 0-15 | b 0-15], high [a 16-31 | b 16-31], then the
                // 128-bit lanes reordered to [a lo, a hi, b lo, b hi].
                let v = _mm256_set_m128i(
                    _mm_loadu_si128(b.add(at) as *const __m128i),
                    _mm_loadu_si128(a.add(at) as *const __m128i),
                );
                let mask = _mm256_set1_epi8(0x0f);
                let lo = _mm256_and_si256(v, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
                let z = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                (_mm512_shuffle_i64x2(z, z, 0b11_01_10_00), 0)
            }
        }
    }

    /// `[d_a, m_a, d_b, m_b]` of two blocks (Q8_0 and Q4_0 have no `m`: that lane is junk).
    ///
    /// # Safety
    /// `a` and `b` point at whole blocks (at least 4 bytes each).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn scales2(a: *const u8, b: *const u8) -> __m128 {
        // SAFETY: the caller's contract.
        unsafe {
            let ha = std::ptr::read_unaligned(a as *const i32);
            let hb = std::ptr::read_unaligned(b as *const i32);
            _mm_cvtph_ps(_mm_set_epi32(0, 0, hb, ha))
        }
    }

    /// `R`-row tiles from `r0` against every panel of `w` (this task's panels of
    /// [`super::Layout::Panels`], `panel_bytes` each); `out` is `[outputs][x rows]`.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F, BW, VL and VNNI, AVX2, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn panel_rows(
        format: QuantFormat,
        w: &[u8],
        panel_bytes: usize,
        x: &Q8Rows,
        r0: usize,
        tile: usize,
        out: &mut [f32],
    ) {
        match format {
            QuantFormat::Q4_0 => panels_of::<0>(w, panel_bytes, x, r0, tile, out),
            QuantFormat::Q4_1 => panels_of::<1>(w, panel_bytes, x, r0, tile, out),
            QuantFormat::Q8_0 => panels_of::<2>(w, panel_bytes, x, r0, tile, out),
            format => unreachable!("no panel kernel for {format:?}"),
        }
    }

    /// [`panels`] of format `F` for a tile of 1 to 4 rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    fn panels_of<const F: u8>(w: &[u8], panel_bytes: usize, x: &Q8Rows, r0: usize, tile: usize, out: &mut [f32]) {
        match tile {
            4 => panels::<F, 4>(w, panel_bytes, x, r0, out),
            3 => panels::<F, 3>(w, panel_bytes, x, r0, out),
            2 => panels::<F, 2>(w, panel_bytes, x, r0, out),
            1 => panels::<F, 1>(w, panel_bytes, x, r0, out),
            tile => unreachable!("no panel kernel for {tile} rows"),
        }
    }

    /// Panels of Q4_0 (`F = 0`: `w = d·q - 8d`), Q4_1 (1: `w = d·q + m`) or Q8_0 (2: codes
    /// stored as `q + 128`, so `w = d·(q + 128) - 128d`) against `R` rows: per block, 8
    /// `vpdpbusd` give the 16 outputs' integer sums for one row (4 inputs each, the 4
    /// activation bytes broadcast to every lane), scaled by the 16 weight scales and the row's
    /// activation scale; the offsets `m·s` accumulate alongside.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    fn panels<const F: u8, const R: usize>(w: &[u8], panel_bytes: usize, x: &Q8Rows, r0: usize, out: &mut [f32]) {
        let blocks = x.blocks_per_row();
        let inputs = blocks * QK;
        let layout = const { super::PanelBlock::of_kernel(F) };
        let (block_bytes, scales_at) = (layout.panel_bytes(), layout.scales_at());
        assert!(panel_bytes == blocks * block_bytes && r0 + R <= x.rows);
        assert!(x.qs.len() >= x.rows * inputs && x.d.len() >= x.rows * blocks && x.s.len() >= x.rows * blocks);
        let rows = x.rows;
        let mask = _mm512_set1_epi8(0x0f);
        for (wp, outp) in w
            .chunks_exact(panel_bytes)
            .zip(out.chunks_exact_mut(super::PANEL * rows))
        {
            let mut acc = [_mm512_setzero_ps(); R];
            let mut offset = [_mm512_setzero_ps(); R];
            for b in 0..blocks {
                // SAFETY: block b of this panel lies within `wp` (panel_bytes asserted), and
                // rows r0..r0 + R hold block b of codes, scales and offsets (asserted above).
                unsafe {
                    let base = wp.as_ptr().add(b * block_bytes);
                    // Code vector `c` multiplies activation bytes `4c..4c + 4`: Q4's low
                    // nibbles are values 0..16 and its high nibbles 16..32; Q8_0's 8 vectors
                    // are values 0..32 in order.
                    let codes: [__m512i; 8] = if F == 2 {
                        std::array::from_fn(|c| _mm512_loadu_si512(base.add(64 * c) as *const __m512i))
                    } else {
                        let raw: [__m512i; 4] =
                            std::array::from_fn(|h| _mm512_loadu_si512(base.add(64 * h) as *const __m512i));
                        std::array::from_fn(|c| match c {
                            0..4 => _mm512_and_si512(raw[c], mask),
                            _ => _mm512_and_si512(_mm512_srli_epi16(raw[c - 4], 4), mask),
                        })
                    };
                    let d = _mm512_cvtph_ps(_mm256_loadu_si256(base.add(scales_at) as *const __m256i));
                    let m = match F {
                        0 => _mm512_mul_ps(d, _mm512_set1_ps(-8.0)),
                        1 => _mm512_cvtph_ps(_mm256_loadu_si256(base.add(scales_at + 32) as *const __m256i)),
                        _ => _mm512_mul_ps(d, _mm512_set1_ps(-128.0)),
                    };
                    for r in 0..R {
                        let row = r0 + r;
                        let xq = x.qs.as_ptr().add(row * inputs + b * QK) as *const i32;
                        let group = |c: usize| _mm512_set1_epi32(std::ptr::read_unaligned(xq.add(c)));
                        // Two chains of 4, so consecutive `vpdpbusd` do not wait on each other.
                        let mut s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes[0], group(0));
                        let mut s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes[4], group(4));
                        for h in 1..4 {
                            s0 = _mm512_dpbusd_epi32(s0, codes[h], group(h));
                            s1 = _mm512_dpbusd_epi32(s1, codes[h + 4], group(h + 4));
                        }
                        let sums = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
                        let at = row * blocks + b;
                        acc[r] = _mm512_fmadd_ps(_mm512_mul_ps(sums, d), _mm512_set1_ps(*x.d.as_ptr().add(at)), acc[r]);
                        offset[r] = _mm512_fmadd_ps(m, _mm512_set1_ps(*x.s.as_ptr().add(at)), offset[r]);
                    }
                }
            }
            for r in 0..R {
                let mut lanes = [0f32; 16];
                // SAFETY: lanes holds 16 floats.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_add_ps(acc[r], offset[r])) };
                for (j, v) in lanes.into_iter().enumerate() {
                    outp[j * rows + r0 + r] = v;
                }
            }
        }
    }

    /// Two consecutive floats in lanes 0 and 1.
    ///
    /// # Safety
    /// `at` points at two floats.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn pair(at: *const f32) -> __m128 {
        // SAFETY: the caller's contract; an unaligned 8-byte read.
        _mm_castsi128_ps(_mm_cvtsi64_si128(unsafe { std::ptr::read_unaligned(at as *const i64) }))
    }

    /// `R` rows from `r0` against every weight row of `w`; `out` is `[w rows][x rows]`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    fn rows<const F: u8, const R: usize>(w: &[u8], row_bytes: usize, x: &Q8Rows, r0: usize, out: &mut [f32]) {
        let (size, _) = small_block_layout(F);
        let blocks = x.blocks_per_row();
        let inputs = blocks * QK;
        assert!(row_bytes == blocks * size && r0 + R <= x.rows);
        assert!(x.qs.len() >= x.rows * inputs && x.d.len() >= x.rows * blocks && x.s.len() >= x.rows * blocks);
        // Lane i of a 2-scale vector [s_a, s_b] goes to lanes 0–7 (a) and 8–15 (b).
        let spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
        let pairs = blocks / 2;
        for (w, out) in w.chunks_exact(row_bytes).zip(out.chunks_exact_mut(x.rows)) {
            let mut acc = [_mm512_setzero_ps(); R];
            // Offsets m·s of the affine formats, in lanes 0 and 1.
            let mut offset = [_mm_setzero_ps(); R];
            for p in 0..pairs {
                let b = 2 * p;
                // SAFETY: blocks b and b + 1 lie within this weight row (row_bytes asserted),
                // and rows r0..r0 + R hold blocks b and b + 1 of codes, scales and offsets.
                unsafe {
                    let (wa, wb) = (w.as_ptr().add(b * size), w.as_ptr().add((b + 1) * size));
                    let (q, negative) = codes2::<F>(wa, wb);
                    let dm = scales2(wa, wb);
                    // [d_a, d_b] and [m_a, m_b]
                    let d = _mm_shuffle_ps(dm, dm, 0b10_00_10_00);
                    let m = match F {
                        0 => _mm_mul_ps(d, _mm_set1_ps(-8.0)),
                        _ => _mm_shuffle_ps(dm, dm, 0b11_01_11_01),
                    };
                    for r in 0..R {
                        let row = r0 + r;
                        let at = row * blocks + b;
                        let mut xv = _mm512_loadu_si512(x.qs.as_ptr().add(row * inputs + b * QK) as *const __m512i);
                        if F == 2 {
                            xv = _mm512_mask_sub_epi8(xv, negative, _mm512_setzero_si512(), xv);
                        }
                        let sums = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q, xv));
                        let xd = pair(x.d.as_ptr().add(at));
                        let scale = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_mul_ps(d, xd)));
                        acc[r] = _mm512_fmadd_ps(sums, scale, acc[r]);
                        if F != 2 {
                            let xs = pair(x.s.as_ptr().add(at));
                            offset[r] = _mm_fmadd_ps(m, xs, offset[r]);
                        }
                    }
                }
            }
            let mut sums = [0f32; R];
            for r in 0..R {
                let o = offset[r];
                sums[r] = _mm512_reduce_add_ps(acc[r]) + _mm_cvtss_f32(o) + _mm_cvtss_f32(_mm_movehdup_ps(o));
            }
            if blocks % 2 == 1 {
                // The last block alone: the same sums on 256 bits.
                let b = blocks - 1;
                // SAFETY: block b lies within the row and every row holds it (asserted above).
                unsafe {
                    let blk = w.as_ptr().add(b * size);
                    let (q, negative) = codes2::<F>(blk, blk);
                    let q = _mm512_castsi512_si256(q);
                    let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(blk as *const i32)));
                    let d = _mm_cvtss_f32(dm);
                    let m = match F {
                        0 => -8.0 * d,
                        _ => _mm_cvtss_f32(_mm_movehdup_ps(dm)),
                    };
                    for r in 0..R {
                        let row = r0 + r;
                        let at = row * blocks + b;
                        let mut xv = _mm256_loadu_si256(x.qs.as_ptr().add(row * inputs + b * QK) as *const __m256i);
                        if F == 2 {
                            xv = _mm256_mask_sub_epi8(xv, negative as __mmask32, _mm256_setzero_si256(), xv);
                        }
                        let p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, xv);
                        let total = _mm512_reduce_add_epi32(_mm512_zextsi256_si512(p)) as f32;
                        sums[r] += total * d * *x.d.as_ptr().add(at);
                        if F != 2 {
                            sums[r] += m * *x.s.as_ptr().add(at);
                        }
                    }
                }
            }
            out[r0..r0 + R].copy_from_slice(&sums);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes.
    fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 33) as u8
            })
            .collect()
    }

    /// Random blocks whose f16 scales are small finite numbers (random bytes would give NaNs).
    fn matrix(format: QuantFormat, outputs: usize, inputs: usize, seed: u64) -> QuantMatrix {
        matrix_in(Layout::File, format, outputs, inputs, seed)
    }

    fn matrix_in(layout: Layout, format: QuantFormat, outputs: usize, inputs: usize, seed: u64) -> QuantMatrix {
        let mut data = bytes(outputs * inputs / format.block_elements() * format.block_bytes(), seed);
        let f16_at = |blk: &mut [u8], at: usize, v: f32| {
            blk[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        };
        for (i, blk) in data.chunks_mut(format.block_bytes()).enumerate() {
            let v = 0.01 + (i % 7) as f32 * 0.003;
            match format {
                QuantFormat::Q4_0 | QuantFormat::Q8_0 => f16_at(blk, 0, v),
                QuantFormat::Q4_1 | QuantFormat::Q4K => {
                    f16_at(blk, 0, v);
                    f16_at(blk, 2, -v * 3.0);
                }
                QuantFormat::Q6K => f16_at(blk, 208, v * 0.1),
            }
        }
        QuantMatrix::with_layout(format, outputs, inputs, data, layout)
    }

    /// `x @ wᵀ` in f64 on the dequantised weights, and `|x| @ |w|ᵀ` (the scale of rounding).
    fn reference(w: &QuantMatrix, x: &[f32], rows: usize) -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![0f64; rows * w.outputs()];
        let mut magnitude = vec![0f64; rows * w.outputs()];
        let mut row = vec![0f32; w.inputs()];
        for j in 0..w.outputs() {
            w.dequantize_row(j, &mut row);
            for r in 0..rows {
                let products = row.iter().zip(&x[r * w.inputs()..]).map(|(&a, &b)| a as f64 * b as f64);
                y[r * w.outputs() + j] = products.clone().sum();
                magnitude[r * w.outputs() + j] = products.map(f64::abs).sum();
            }
        }
        (y, magnitude)
    }

    const FORMATS: [QuantFormat; 5] = [
        QuantFormat::Q4_0,
        QuantFormat::Q4_1,
        QuantFormat::Q8_0,
        QuantFormat::Q4K,
        QuantFormat::Q6K,
    ];

    #[test]
    fn unpacked_blocks_are_the_dequantised_values() {
        for format in FORMATS {
            let w = matrix(format, 3, 512, 7);
            let mut want = vec![0f32; 512];
            for j in 0..3 {
                w.dequantize_row(j, &mut want);
                for b in 0..512 / QK {
                    for l in 0..QK {
                        let got = match unpack(format, &w.row(j), b) {
                            Block32::Affine { q, d, m } => d * q[l] as f32 + m,
                            Block32::Scaled { q, d } => d[l / 16] * q[l] as f32,
                        };
                        let want = want[b * QK + l];
                        assert!(
                            (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                            "{format:?} {j} {b} {l}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_kernel_computes_the_dot_products_of_dequantised_weights_and_activations() {
        // 17 blocks of 32: the kernels that take blocks in pairs finish on a single one. 48
        // outputs: three panels of the repacked layout.
        let shapes = FORMATS
            .into_iter()
            .flat_map(|f| [(f, 37, 512), (f, 37, 544), (f, 48, 544)])
            .filter(|&(f, _, inputs)| inputs % f.block_elements() == 0);
        for (format, outputs, inputs) in shapes {
            let seed = format as u64 + inputs as u64;
            let w = matrix(format, outputs, inputs, seed);
            // The same matrix repacked, for each kernel that computes on panels.
            let paneled: Vec<(Kernel, QuantMatrix)> = Kernel::supported()
                .into_iter()
                .filter(|k| k.panels(format) && outputs % PANEL == 0)
                .map(|k| (k, matrix_in(Layout::Panels, format, outputs, inputs, seed)))
                .collect();
            for rows in [1, 2, 3, 4, 5, 9] {
                let x: Vec<f32> = bytes(rows * inputs, rows as u64)
                    .iter()
                    .map(|&b| (b as f32 - 127.5) / 64.0)
                    .collect();
                let q = Q8Rows::quantize(&x, rows, inputs);
                // The activations as the kernel sees them: each within half a step of x.
                let xq: Vec<f32> = (0..rows * inputs)
                    .map(|i| {
                        let (r, k) = (i / inputs, i % inputs);
                        let (codes, d, _) = q.block(r, k / QK);
                        d * codes[k % QK] as f32
                    })
                    .collect();
                for (a, b) in x.iter().zip(&xq) {
                    assert!((a - b).abs() <= 2.0 / 127.0 / 2.0 + 1e-6, "{a} quantised to {b}");
                }
                let (want, magnitude) = reference(&w, &xq, rows);
                let file_runs = Kernel::supported().into_iter().map(|k| (k, &w, "file"));
                let panel_runs = paneled.iter().map(|(k, m)| (*k, m, "panels"));
                for (kernel, matrix, layout) in file_runs.chain(panel_runs) {
                    let got = matrix.matmul_with(kernel, &q);
                    let format_kernel = (format, kernel.name(), layout);
                    for (i, (&g, &e)) in got.iter().zip(&want).enumerate() {
                        // f32 sums of 512 products: relative error of a few ulps of the magnitude.
                        let tolerance = 1e-5 * magnitude[i].max(1e-3);
                        assert!(
                            (g as f64 - e).abs() <= tolerance,
                            "{format_kernel:?} rows {rows} [{i}]: {g} vs {e}"
                        );
                        // The portable kernel computes the same sums.
                        let (r, j) = (i / outputs, i % outputs);
                        let mut p = [0f32];
                        portable_dot_rows(format, &w.row(j), &q, r, &mut p);
                        assert!(
                            (p[0] - g).abs() <= 1e-4 * g.abs().max(1.0),
                            "{format_kernel:?} portable {p:?} vs {g}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_kernel_quantises_activations_alike() {
        let mut x: Vec<f32> = bytes(64 * QK, 3).iter().map(|&b| (b as f32 - 100.0) / 37.0).collect();
        // A block of zeros and one whose largest magnitude is negative.
        x[..QK].fill(0.0);
        x[QK] = -9.0;
        for (kernel, block) in Kernel::supported()
            .into_iter()
            .flat_map(|k| x.chunks_exact(QK).map(move |b| (k, b)))
        {
            let (mut a, mut b) = ([0i8; QK], [0i8; QK]);
            let (da, sa) = quantize_block(block, &mut a);
            let (db, sb) = kernel.quantize_block(block, &mut b);
            assert_eq!((a, da, sa), (b, db, sb), "{}", kernel.name());
            assert!(a.iter().all(|&q| q > -128));
            assert_eq!(sa, a.iter().map(|&q| q as i32).sum::<i32>());
        }
    }

    #[test]
    fn the_panel_layout_holds_the_files_blocks() {
        for format in [QuantFormat::Q4_0, QuantFormat::Q4_1, QuantFormat::Q8_0] {
            let file = matrix_in(Layout::File, format, 48, 544, 5);
            let panels = matrix_in(Layout::Panels, format, 48, 544, 5);
            assert_eq!(file.bytes(), panels.bytes());
            assert_ne!(file.data, panels.data, "{format:?}: repacking moves bytes");
            for r in 0..48 {
                assert_eq!(file.row(r), panels.row(r), "{format:?} row {r}");
            }
        }
    }

    #[test]
    fn the_kernel_is_the_fastest_supported_unless_one_is_named() {
        let supported = Kernel::supported();
        let best = supported.last().unwrap().name();
        assert_eq!(Kernel::choose(&supported, None).name(), best);
        for kernel in &supported {
            assert_eq!(Kernel::choose(&supported, Some(kernel.name())).name(), kernel.name());
        }
        assert_eq!(
            Kernel::choose(&supported, Some("sse9")).name(),
            best,
            "unknown names fall back"
        );
        assert_eq!(Kernel::choose(&[Kernel::Portable], Some("avx2")).name(), "portable");
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(QuantMatrix::new(QuantFormat::Q4_1, 2, 48, vec![0; 60]).is_err());
        assert!(QuantMatrix::new(QuantFormat::Q4_1, 2, 64, vec![0; 79]).is_err());
        assert!(QuantMatrix::new(QuantFormat::Q4K, 1, 128, vec![0; 72]).is_err());
        assert!(QuantMatrix::new(QuantFormat::Q4_1, 2, 64, vec![0; 80]).is_ok());
    }
}
