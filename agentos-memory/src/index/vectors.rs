//! The embedding side of the index: every page's embedding, centred on the mean of all of them,
//! scored two ways.
//!
//! - [`Vectors::exact`]: the cosine of the centred page and query embeddings, from the f16 row,
//!   centred on the mean of every page indexed at the time of the query (the running sum over
//!   the count: nothing to refresh).
//! - [`Vectors::scan`]: an estimate of that cosine from a random projection `P` to [`PROJECTED`]
//!   dimensions, for every page searched; it only picks the pages that are then scored exactly.
//!
//! **The estimate.** `P` is linear, so the projected centred page is `P·x - P·m`. The numerator
//! `(P·x - P·m)·(P·q - P·m)` uses the current mean `m` (`P·m` is the running sum of the stored
//! `P·x` over the count). The page's norm `|P·x - P·s|` is precomputed against a snapshot `s` of
//! the mean, taken when the index has grown by more than a quarter since the previous snapshot;
//! then every norm is recomputed (`pages * PROJECTED` work after `pages / 4` inserts: a constant
//! amortised cost per insert). Between snapshots the norms lag the mean by the pages added since,
//! which moves the estimates a little and the exact scores not at all. A scan costs one dot
//! product of `PROJECTED` f16 values per page: 128 bytes read, 12.8 MB at 100,000 pages.
//!
//! # Shapes
//! rows: `[pages, dim]` f16 bits; projected: `[pages, PROJECTED]` f16 bits; norms: `[pages]`;
//! projection: `[PROJECTED, dim]`.

use super::f16;

/// Dimensions of the coarse projection. A random projection estimates a cosine with an error of
/// about `(1 - cos²) / sqrt(PROJECTED)`; at 64 the pages that matter rank within the first
/// [`super::CANDIDATES`], which the exact rescoring then orders (`l2_scale` measures the recall;
/// 128 dimensions and half the candidates cost more and found less).
pub(crate) const PROJECTED: usize = 64;

/// Lanes of the accumulators: independent sums the compiler keeps in SIMD registers.
const LANES: usize = 8;

pub(crate) struct Vectors {
    /// Dimension of every row, set by the first non-empty embedding.
    dim: usize,
    len: usize,
    rows: Vec<u16>,
    projection: Vec<f32>,
    sum: Vec<f64>,
    /// `P·x` of every page, f16 bits (half the bytes a scan reads; see `push`).
    projected: Vec<u16>,
    projected_sum: Vec<f64>,
    /// `|P·x - P·s|` of every page, for the snapshot `s` of the mean.
    norms: Vec<f32>,
    snapshot: [f32; PROJECTED],
    /// Pages indexed when the snapshot was taken.
    snapshot_len: usize,
    /// Pages to make room for once the dimension is known.
    reserved: usize,
    /// The row being pushed, in f32.
    row: Vec<f32>,
}

/// A query prepared against the current mean.
pub(crate) struct VectorQuery {
    mean: Vec<f32>,
    /// The query minus the mean, and its norm.
    centered: Vec<f32>,
    norm: f32,
    /// The projected centred query `P·q - P·m`, its norm, and its dot product with `P·m`.
    projected: [f32; PROJECTED],
    projected_norm: f32,
    projected_offset: f32,
}

impl Vectors {
    pub(crate) fn new() -> Self {
        Vectors {
            dim: 0,
            len: 0,
            rows: Vec::new(),
            projection: Vec::new(),
            sum: Vec::new(),
            projected: Vec::new(),
            projected_sum: vec![0.0; PROJECTED],
            norms: Vec::new(),
            snapshot: [0.0; PROJECTED],
            snapshot_len: 0,
            reserved: 0,
            row: Vec::new(),
        }
    }

    /// Makes room for `pages` more rows.
    pub(crate) fn reserve(&mut self, pages: usize) {
        self.reserved = pages;
        self.rows.reserve(pages * self.dim);
        self.projected.reserve(pages * PROJECTED);
        self.norms.reserve(pages);
    }

    /// Appends one page's embedding (f16 bits). Every row has the index's dimension, that of the
    /// first non-empty embedding: a longer one is cut, a shorter one padded with zeros (an index
    /// holds the embeddings of one model, so neither happens in use).
    pub(crate) fn push(&mut self, embedding: &[u16]) {
        if self.dim == 0 && !embedding.is_empty() {
            self.set_dim(embedding.len());
        }
        let dim = self.dim;
        let start = self.rows.len();
        self.rows.resize(start + dim, 0);
        let n = embedding.len().min(dim);
        self.rows[start..start + n].copy_from_slice(&embedding[..n]);
        let table = f16::table();
        let mut row = std::mem::take(&mut self.row);
        row.clear();
        row.extend(self.rows[start..].iter().map(|&h| table[h as usize]));
        for (s, x) in self.sum.iter_mut().zip(&row) {
            *s += *x as f64;
        }
        // `P·x` is dominated by the common direction of all pages; f16 keeps it to 2⁻¹¹ of its
        // size, a thousandth of what sets pages apart, far below the projection's own error.
        let mut projected = [0f32; PROJECTED];
        if dim > 0 {
            project(&self.projection, &row, &mut projected);
        }
        self.row = row;
        for (s, v) in self.projected_sum.iter_mut().zip(&mut projected) {
            let h = f16::from_f32(*v);
            *v = table[h as usize];
            *s += *v as f64;
            self.projected.push(h);
        }
        self.len += 1;
        if self.len > self.snapshot_len + self.snapshot_len / 4 {
            self.take_snapshot();
        } else {
            let norm = centred_norm(&projected, &self.snapshot);
            self.norms.push(norm);
        }
    }

    fn set_dim(&mut self, dim: usize) {
        // Rows pushed before (empty embeddings) become zero rows of the new dimension; their
        // projections are already zero.
        self.dim = dim;
        self.rows = Vec::with_capacity((self.len + self.reserved) * dim);
        self.rows.resize(self.len * dim, 0);
        self.sum = vec![0.0; dim];
        self.projection = random_projection(dim);
    }

    /// The mean now becomes the snapshot, and every page's norm is computed against it.
    fn take_snapshot(&mut self) {
        let n = self.len.max(1) as f64;
        for (s, sum) in self.snapshot.iter_mut().zip(&self.projected_sum) {
            *s = (sum / n) as f32;
        }
        self.snapshot_len = self.len;
        self.norms.clear();
        let table = f16::table();
        for slot in 0..self.len {
            let row: [f32; PROJECTED] = std::array::from_fn(|i| table[self.projected_row(slot)[i] as usize]);
            self.norms.push(centred_norm(&row, &self.snapshot));
        }
    }

    #[inline(always)]
    fn projected_row(&self, slot: usize) -> &[u16; PROJECTED] {
        let at = slot * PROJECTED;
        self.projected[at..at + PROJECTED].try_into().expect("a row")
    }

    /// The query centred on the current mean, in both spaces.
    pub(crate) fn query(&self, embedding: &[f32]) -> VectorQuery {
        let n = self.len.max(1) as f64;
        let mean: Vec<f32> = self.sum.iter().map(|s| (s / n) as f32).collect();
        let centered: Vec<f32> = (0..self.dim)
            .map(|i| embedding.get(i).copied().unwrap_or(0.0) - mean[i])
            .collect();
        let mut projected = [0f32; PROJECTED];
        if self.dim > 0 {
            let padded: Vec<f32> = (0..self.dim)
                .map(|i| embedding.get(i).copied().unwrap_or(0.0))
                .collect();
            project(&self.projection, &padded, &mut projected);
        }
        let mut projected_offset = 0.0;
        let mut projected_mean = [0f32; PROJECTED];
        for (m, s) in projected_mean.iter_mut().zip(&self.projected_sum) {
            *m = (s / n) as f32;
        }
        for (p, m) in projected.iter_mut().zip(&projected_mean) {
            *p -= m;
        }
        for (p, m) in projected.iter().zip(&projected_mean) {
            projected_offset += p * m;
        }
        VectorQuery {
            norm: dot(&centered, &centered).sqrt(),
            projected_norm: dot(&projected, &projected).sqrt(),
            projected_offset,
            mean,
            centered,
            projected,
        }
    }

    /// Writes the estimated cosine of every page of `slots` with the query into `out` (cleared
    /// first), in the order of `slots`.
    pub(crate) fn scan(&self, q: &VectorQuery, slots: Slots<'_>, out: &mut Vec<f32>) {
        out.clear();
        out.resize(slots.len(self.len), 0.0);
        let dot = kernels().dot_projected;
        let estimate = |slot: usize| {
            let d = dot(self.projected_row(slot), &q.projected) - q.projected_offset;
            cosine(d, self.norms[slot], q.projected_norm)
        };
        match slots {
            Slots::All => {
                for (slot, o) in out.iter_mut().enumerate() {
                    *o = estimate(slot);
                }
            }
            Slots::Some(list) => {
                for (&slot, o) in list.iter().zip(out.iter_mut()) {
                    *o = estimate(slot as usize);
                }
            }
        }
    }

    /// Cosine of the centred page `slot` and query (exact, for the stored f16 embedding).
    pub(crate) fn exact(&self, q: &VectorQuery, slot: usize) -> f32 {
        let row = &self.rows[slot * self.dim..(slot + 1) * self.dim];
        let (d, nn) = (kernels().centred_dot_f16)(row, &q.mean, &q.centered);
        cosine(d, nn.sqrt(), q.norm)
    }
}

/// Which slots a scan visits.
#[derive(Clone, Copy)]
pub(crate) enum Slots<'a> {
    All,
    Some(&'a [u32]),
}

impl Slots<'_> {
    fn len(&self, all: usize) -> usize {
        match self {
            Slots::All => all,
            Slots::Some(list) => list.len(),
        }
    }
}

fn centred_norm(row: &[f32; PROJECTED], mean: &[f32; PROJECTED]) -> f32 {
    row.iter().zip(mean).map(|(r, m)| (r - m) * (r - m)).sum::<f32>().sqrt()
}

#[inline(always)]
fn cosine(dot: f32, norm_a: f32, norm_b: f32) -> f32 {
    if norm_a == 0.0 || norm_b == 0.0 {
        0.0
    } else {
        dot / (norm_a * norm_b)
    }
}

/// The projection of one row: `PROJECTED` dot products with the rows of the projection.
fn project(projection: &[f32], row: &[f32], out: &mut [f32]) {
    let dot = kernels().dot;
    for (o, p) in out.iter_mut().zip(projection.chunks_exact(row.len())) {
        *o = dot(p, row);
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    (kernels().dot)(a, b)
}

/// The inner loops, chosen once for the CPU: AVX2 with FMA and F16C where the CPU has them (the
/// build targets baseline x86-64, whose SSE2 runs them at a quarter of the width), else portable
/// Rust. The two agree to rounding (FMA rounds once where the portable code rounds twice).
struct Kernels {
    dot: fn(&[f32], &[f32]) -> f32,
    /// The dot product of a projected row (f16 bits) with a projected query.
    dot_projected: fn(&[u16; PROJECTED], &[f32; PROJECTED]) -> f32,
    centred_dot_f16: CentredDot,
}

/// `((row - mean) · centered, |row - mean|²)` for a row of f16 bits.
type CentredDot = fn(&[u16], &[f32], &[f32]) -> (f32, f32);

fn kernels() -> &'static Kernels {
    static KERNELS: std::sync::LazyLock<Kernels> = std::sync::LazyLock::new(|| {
        #[cfg(target_arch = "x86_64")]
        if x86::supported() {
            return x86::KERNELS;
        }
        PORTABLE
    });
    &KERNELS
}

const PORTABLE: Kernels = Kernels {
    dot: portable::dot,
    dot_projected: portable::dot_f16,
    centred_dot_f16: portable::centred_dot_f16,
};

mod portable {
    use super::{LANES, PROJECTED, f16};

    pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; LANES];
        let chunks = a.len().min(b.len()) / LANES * LANES;
        for (x, y) in a[..chunks].chunks_exact(LANES).zip(b[..chunks].chunks_exact(LANES)) {
            for (acc, (x, y)) in acc.iter_mut().zip(x.iter().zip(y)) {
                *acc += x * y;
            }
        }
        let tail: f32 = a[chunks..].iter().zip(&b[chunks..]).map(|(x, y)| x * y).sum();
        acc.iter().sum::<f32>() + tail
    }

    pub(super) fn dot_f16(row: &[u16; PROJECTED], b: &[f32; PROJECTED]) -> f32 {
        let table = f16::table();
        let mut acc = [0f32; LANES];
        for (r, y) in row.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
            for (acc, (r, y)) in acc.iter_mut().zip(r.iter().zip(y)) {
                *acc += table[*r as usize] * y;
            }
        }
        acc.iter().sum()
    }

    pub(super) fn centred_dot_f16(row: &[u16], mean: &[f32], centered: &[f32]) -> (f32, f32) {
        let table = f16::table();
        let (mut d, mut nn) = ([0f32; LANES], [0f32; LANES]);
        let chunks = row.len() / LANES * LANES;
        for ((r, m), c) in row[..chunks]
            .chunks_exact(LANES)
            .zip(mean[..chunks].chunks_exact(LANES))
            .zip(centered[..chunks].chunks_exact(LANES))
        {
            for l in 0..LANES {
                let x = table[r[l] as usize] - m[l];
                d[l] += x * c[l];
                nn[l] += x * x;
            }
        }
        for i in chunks..row.len() {
            let x = table[row[i] as usize] - mean[i];
            d[0] += x * centered[i];
            nn[0] += x * x;
        }
        (d.iter().sum(), nn.iter().sum())
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Kernels, PROJECTED, portable};

    pub(super) fn supported() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    }

    /// Only handed out when [`supported`] holds, which is what each `unsafe` call below needs.
    pub(super) const KERNELS: Kernels = Kernels {
        // SAFETY (all three): the CPU has AVX2, FMA and F16C (`supported`), and the functions
        // read only within the slices and arrays they are given.
        dot: |a, b| unsafe { dot(a, b) },
        dot_projected: |a, b| unsafe { dot_f16(a, b) },
        centred_dot_f16: |row, mean, centered| unsafe { centred_dot_f16(row, mean, centered) },
    };

    const _: () = assert!(PROJECTED.is_multiple_of(16));

    #[target_feature(enable = "avx2,fma")]
    fn sum(v: __m256) -> f32 {
        let halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let chunks = n / 16 * 16;
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut i = 0;
        while i < chunks {
            // SAFETY: i + 16 <= n, within both slices.
            unsafe {
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), _mm256_loadu_ps(pb.add(i + 8)), acc1);
            }
            i += 16;
        }
        sum(_mm256_add_ps(acc0, acc1)) + portable::dot(&a[chunks..n], &b[chunks..n])
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_f16(row: &[u16; PROJECTED], b: &[f32; PROJECTED]) -> f32 {
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (pr, pb) = (row.as_ptr(), b.as_ptr());
        let mut i = 0;
        while i < PROJECTED {
            // SAFETY: i + 16 <= PROJECTED, within both arrays.
            unsafe {
                let r0 = _mm256_cvtph_ps(_mm_loadu_si128(pr.add(i) as *const __m128i));
                let r1 = _mm256_cvtph_ps(_mm_loadu_si128(pr.add(i + 8) as *const __m128i));
                acc0 = _mm256_fmadd_ps(r0, _mm256_loadu_ps(pb.add(i)), acc0);
                acc1 = _mm256_fmadd_ps(r1, _mm256_loadu_ps(pb.add(i + 8)), acc1);
            }
            i += 16;
        }
        sum(_mm256_add_ps(acc0, acc1))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn centred_dot_f16(row: &[u16], mean: &[f32], centered: &[f32]) -> (f32, f32) {
        let n = row.len().min(mean.len()).min(centered.len());
        let chunks = n / 8 * 8;
        let (mut d, mut nn) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i < chunks {
            // SAFETY: i + 8 <= n, within all three slices.
            unsafe {
                let h = _mm_loadu_si128(row.as_ptr().add(i) as *const __m128i);
                let x = _mm256_sub_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(mean.as_ptr().add(i)));
                d = _mm256_fmadd_ps(x, _mm256_loadu_ps(centered.as_ptr().add(i)), d);
                nn = _mm256_fmadd_ps(x, x, nn);
            }
            i += 8;
        }
        let (td, tnn) = portable::centred_dot_f16(&row[chunks..n], &mean[chunks..n], &centered[chunks..n]);
        (sum(d) + td, sum(nn) + tnn)
    }
}

/// `[PROJECTED, dim]` standard normal entries from a fixed seed, so an index built twice from the
/// same pages scores them the same.
fn random_projection(dim: usize) -> Vec<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut uniform = move || {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..PROJECTED * dim)
        .map(|_| {
            // Box-Muller: one normal from two uniforms in (0, 1).
            let (u, v) = (uniform(), uniform());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coarse(vectors: &Vectors, q: &VectorQuery) -> Vec<f32> {
        let mut out = Vec::new();
        vectors.scan(q, Slots::All, &mut out);
        out
    }

    fn halves(v: &[f32]) -> Vec<u16> {
        v.iter().map(|&x| f16::from_f32(x)).collect()
    }

    #[test]
    fn centring_follows_the_mean_as_pages_arrive() {
        let mut vectors = Vectors::new();
        vectors.push(&halves(&[10.0, 1.0, 0.0]));
        vectors.push(&halves(&[10.0, 0.0, 1.0]));
        let q = vectors.query(&[10.0, 1.0, 0.0]);
        assert!((vectors.exact(&q, 0) - 1.0).abs() < 1e-6);
        assert!((vectors.exact(&q, 1) + 1.0).abs() < 1e-6);
        // A third page moves the mean; the next query is centred on the new one.
        vectors.push(&halves(&[10.0, 0.0, 0.0]));
        let q = vectors.query(&[10.0, 1.0, 0.0]);
        let mean = [10.0, 1.0 / 3.0, 1.0 / 3.0];
        let page = [10.0f32 - mean[0], 0.0 - mean[1], 1.0 - mean[2]];
        let query = [0.0f32, 1.0 - mean[1], 0.0 - mean[2]];
        let want = dot(&page, &query) / (dot(&page, &page).sqrt() * dot(&query, &query).sqrt());
        assert!((vectors.exact(&q, 1) - want).abs() < 1e-6);
        // The projection of a page onto itself is exact whatever the projection.
        let q = vectors.query(&[10.0, 0.0, 1.0]);
        assert!((coarse(&vectors, &q)[1] - 1.0).abs() < 1e-5);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_simd_kernels_agree_with_the_portable_ones() {
        if !x86::supported() {
            return;
        }
        let mut seed = 11u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % 2000) as f32 / 100.0 - 10.0
        };
        for n in [0, 1, 7, 8, 15, 16, 17, 64, 100, 576] {
            let a: Vec<f32> = (0..n).map(|_| next()).collect();
            let b: Vec<f32> = (0..n).map(|_| next()).collect();
            let h: Vec<u16> = a.iter().map(|&x| f16::from_f32(x)).collect();
            let close = |x: f32, y: f32| (x - y).abs() <= 1e-4 * (1.0 + x.abs());
            assert!(close((x86::KERNELS.dot)(&a, &b), (PORTABLE.dot)(&a, &b)), "dot {n}");
            let (d0, n0) = (x86::KERNELS.centred_dot_f16)(&h, &b, &a);
            let (d1, n1) = (PORTABLE.centred_dot_f16)(&h, &b, &a);
            assert!(close(d0, d1) && close(n0, n1), "centred_dot_f16 {n}");
        }
        let row: [u16; PROJECTED] = std::array::from_fn(|_| f16::from_f32(next()));
        let q: [f32; PROJECTED] = std::array::from_fn(|_| next());
        let close = |x: f32, y: f32| (x - y).abs() <= 1e-4 * (1.0 + x.abs());
        assert!(close(
            (x86::KERNELS.dot_projected)(&row, &q),
            (PORTABLE.dot_projected)(&row, &q)
        ));
    }

    #[test]
    fn the_coarse_cosine_estimates_the_exact_one() {
        let dim = 96;
        let mut vectors = Vectors::new();
        let mut seed = 7u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % 2000) as f32 / 1000.0 - 1.0
        };
        let pages: Vec<Vec<f32>> = (0..200).map(|_| (0..dim).map(|_| 5.0 + next()).collect()).collect();
        for p in &pages {
            vectors.push(&halves(p));
        }
        let q = vectors.query(&pages[3]);
        let mut err = 0.0;
        for (slot, estimate) in coarse(&vectors, &q).into_iter().enumerate() {
            err += (estimate - vectors.exact(&q, slot)).powi(2);
        }
        let all = coarse(&vectors, &q);
        let mut some = Vec::new();
        vectors.scan(&q, Slots::Some(&[101, 3, 17]), &mut some);
        assert_eq!(some, vec![all[101], all[3], all[17]]);
        let rms = (err / pages.len() as f32).sqrt();
        assert!(rms < 2.0 / (PROJECTED as f32).sqrt(), "{rms}");
    }
}
