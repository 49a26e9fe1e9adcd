//! A Q4_K matrix product with AVX-512 VNNI, on the weights rearranged at load in panels
//! of 16 rows (the file's blocks are not kept).
//!
//! Why not candle's: on AVX-512 VNNI CPUs candle 0.11 multiplies Q4_K weights through a
//! repacked copy that it builds on first use and keeps beside the original, so the 1.5B
//! model took 2.25–2.36 GB for a 1.1 GB file; with this kernel, 1.47–1.54 GB, prompts read
//! about as fast (cold 498-token prompt: 4.7 s against 4.3 s; a room's next prompt: 0.58 s
//! against 0.62 s) and decoding as fast (`ai-bench`, see `crates/synq-ai/README.md`).
//!
//! Arithmetic: each input row is quantised per block of 256 to int8 with an f32 scale (as
//! ggml's Q8_K), and per block of the weights (8 sub-blocks of 32 4-bit values, each with a
//! 6-bit scale and minimum, and the block's f16 `d` and `dmin`):
//! `Σ x·w = dx · (d · Σⱼ scaleⱼ · Σ q4·q8 − dmin · Σⱼ minⱼ · Σ q8)`.
//!
//! Layout, per panel of 16 weight rows and per block of 256 inputs: for each of the 8
//! sub-blocks of 32 inputs, 4 vectors of 64 bytes whose byte `4·l + i` holds row `l`'s
//! values `4·g + i` (low nibble) and `16 + 4·g + i` (high nibble) for `g` = 0..4; then the
//! sub-blocks' 6-bit scales and minimums (8 × 16 bytes each, sub-block major), then the 16
//! rows' `d` and `dmin` (f32). One `vpdpbusd` multiplies 4 inputs (broadcast) by 4 values
//! of all 16 rows; the scales apply once per sub-block, to 16 rows at once.

use candle_core::{Result, Tensor, bail};

pub use super::q8::supported;
use super::q8::{SendPtr, input_rows, product};

const QK: usize = 256;
const BLOCK_BYTES: usize = 144;
/// Weight rows per panel (the 16 lanes of a vector).
const NR: usize = 16;
const NIBBLE_BYTES: usize = 8 * 4 * 64;
const PANEL_BLOCK_BYTES: usize = NIBBLE_BYTES + 2 * 8 * NR + 2 * 4 * NR;
/// Input rows per tile: they share each unpacked weight vector.
const MR: usize = 4;
/// Quantised input bytes per panel of rows: they stay in the core's cache while every
/// weight panel is multiplied with them.
const ROWS_BYTES: usize = 128 * 1024;

/// A weight matrix `[n, k]` from Q4_K, in panels (see the module documentation).
pub struct Q4kMatrix {
    n: usize,
    k: usize,
    nb: usize,
    panels: Vec<u8>,
}

/// The 6-bit scale and minimum of sub-block `j` (ggml's `get_scale_min_k4`).
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

impl Q4kMatrix {
    /// From the raw Q4_K blocks of a `[n, k]` tensor.
    pub fn from_q4_k(data: &[u8], n: usize, k: usize) -> Result<Q4kMatrix> {
        if !k.is_multiple_of(QK) || data.len() != n * (k / QK) * BLOCK_BYTES {
            bail!("a Q4_K tensor [{n}, {k}] of {} bytes", data.len());
        }
        let nb = k / QK;
        let n_panels = n.div_ceil(NR);
        let mut panels = vec![0u8; n_panels * nb * PANEL_BLOCK_BYTES];
        let mut q = [0u8; QK];
        for r in 0..n {
            let (p, l) = (r / NR, r % NR);
            for b in 0..nb {
                let block = &data[(r * nb + b) * BLOCK_BYTES..][..BLOCK_BYTES];
                let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                let dmin = half::f16::from_le_bytes([block[2], block[3]]).to_f32();
                for pair in 0..4 {
                    for i in 0..32 {
                        let byte = block[16 + 32 * pair + i];
                        q[64 * pair + i] = byte & 0x0F;
                        q[64 * pair + 32 + i] = byte >> 4;
                    }
                }
                let out = &mut panels[(p * nb + b) * PANEL_BLOCK_BYTES..][..PANEL_BLOCK_BYTES];
                for j in 0..8 {
                    for g in 0..4 {
                        for i in 0..4 {
                            let lo = q[32 * j + 4 * g + i];
                            let hi = q[32 * j + 16 + 4 * g + i];
                            out[(j * 4 + g) * 64 + 4 * l + i] = lo | (hi << 4);
                        }
                    }
                    let (s, m) = scale_min(j, &block[4..16]);
                    out[NIBBLE_BYTES + j * NR + l] = s;
                    out[NIBBLE_BYTES + 8 * NR + j * NR + l] = m;
                }
                let at = NIBBLE_BYTES + 16 * NR + 4 * l;
                out[at..at + 4].copy_from_slice(&d.to_le_bytes());
                let at = NIBBLE_BYTES + 16 * NR + 4 * NR + 4 * l;
                out[at..at + 4].copy_from_slice(&dmin.to_le_bytes());
            }
        }
        Ok(Q4kMatrix { n, k, nb, panels })
    }

    /// `x · selfᵀ` for `x` of shape `[..., k]` (f32): `[..., n]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, xs) = input_rows(x, self.n, self.k)?;
        let input = QuantizedInput::new(&xs);
        let mut out = vec![0f32; m * self.n];
        let out_ptr = SendPtr(out.as_mut_ptr());
        let rows = (ROWS_BYTES / self.k).clamp(MR, m.max(MR));
        let n_panels = self.n.div_ceil(NR);
        for start in (0..m).step_by(rows) {
            let end = (start + rows).min(m);
            candle_core::utils::barrier_pool().execute_chunked(n_panels, |range| {
                let out_ptr = &out_ptr;
                for panel in range {
                    let mut row = start;
                    while row < end {
                        let mr = MR.min(end - row);
                        // SAFETY: `supported()` was checked before building a user
                        // (`Linear::new`); the panel and rows are within the matrices;
                        // each (row, column) of `out` is written by one tile only.
                        unsafe { tile_rows!(mr, tile(self, &input, row, panel, out_ptr.0)) };
                        row += mr;
                    }
                }
            });
        }
        product(out, x, self.n)
    }
}

/// Input rows quantised per block of 256: int8 values, an f32 scale per block, and the
/// sums of each 32 values times the scale (for the weights' minimums).
struct QuantizedInput {
    qs: Vec<i8>,
    d: Vec<f32>,
    sums: Vec<f32>,
}

impl QuantizedInput {
    fn new(xs: &[f32]) -> Self {
        let blocks = xs.len() / QK;
        let mut qs = vec![0i8; xs.len()];
        let mut d = vec![0f32; blocks];
        let mut sums = vec![0f32; blocks * 8];
        for (b, block) in xs.chunks_exact(QK).enumerate() {
            let amax = block.iter().fold(0f32, |a, x| a.max(x.abs()));
            let scale = amax / 127.0;
            let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            d[b] = scale;
            let out = &mut qs[b * QK..][..QK];
            for (q, x) in out.iter_mut().zip(block) {
                *q = ((x * inv).round() as i32).clamp(-127, 127) as i8;
            }
            for (s, sub) in sums[b * 8..][..8].iter_mut().zip(out.chunks_exact(32)) {
                *s = scale * sub.iter().map(|&q| i32::from(q)).sum::<i32>() as f32;
            }
        }
        QuantizedInput { qs, d, sums }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile<const M: usize>(_: &Q4kMatrix, _: &QuantizedInput, _: usize, _: usize, _: *mut f32) {
    unreachable!("Q4kMatrix is only used where `supported()`")
}

/// `out[row + i][16 · panel + l]` for `i < M`, `l < 16` (and within `n`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const M: usize>(
    w: &Q4kMatrix,
    x: &QuantizedInput,
    row: usize,
    panel: usize,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let low = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); M];
    let mut acc_min = [_mm512_setzero_ps(); M];
    for b in 0..w.nb {
        // SAFETY: block `b` of the panel is within `w.panels`.
        let base = unsafe {
            w.panels
                .as_ptr()
                .add((panel * w.nb + b) * PANEL_BLOCK_BYTES)
        };
        let mut acc_b = [_mm512_setzero_ps(); M];
        // SAFETY: the 16 rows' d and dmin of the block.
        let (d, dmin) = unsafe {
            (
                _mm512_loadu_ps(base.add(NIBBLE_BYTES + 16 * NR) as *const f32),
                _mm512_loadu_ps(base.add(NIBBLE_BYTES + 16 * NR + 4 * NR) as *const f32),
            )
        };
        for j in 0..8 {
            let mut wv = [_mm512_setzero_si512(); 8];
            // SAFETY: sub-block `j`'s 4 nibble vectors, scales and minimums.
            let (scale, min) = unsafe {
                for g in 0..4 {
                    let packed = _mm512_loadu_si512(base.add((j * 4 + g) * 64) as *const __m512i);
                    wv[g] = _mm512_and_si512(packed, low);
                    wv[g + 4] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), low);
                }
                (
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(
                        base.add(NIBBLE_BYTES + j * NR) as *const __m128i,
                    ))),
                    _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(
                        base.add(NIBBLE_BYTES + 8 * NR + j * NR) as *const __m128i,
                    ))),
                )
            };
            let min = _mm512_mul_ps(min, dmin);
            for i in 0..M {
                let r = row + i;
                // SAFETY: 32 inputs of row `r`'s sub-block `j` of block `b`, and its sum.
                let (isum, xsum) = unsafe {
                    let xp = x.qs.as_ptr().add(r * w.k + b * QK + 32 * j);
                    let mut isum = _mm512_setzero_si512();
                    for (g, wv) in wv.iter().enumerate() {
                        let xb = _mm512_set1_epi32((xp.add(4 * g) as *const i32).read_unaligned());
                        isum = _mm512_dpbusd_epi32(isum, *wv, xb);
                    }
                    (isum, *x.sums.as_ptr().add((r * w.nb + b) * 8 + j))
                };
                acc_b[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, acc_b[i]);
                acc_min[i] = _mm512_fmadd_ps(min, _mm512_set1_ps(xsum), acc_min[i]);
            }
        }
        for i in 0..M {
            let dx = x.d[(row + i) * w.nb + b];
            acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(acc_b[i], d), _mm512_set1_ps(dx), acc[i]);
        }
    }
    let col = panel * NR;
    let lanes = w.n.saturating_sub(col).min(NR);
    let mask: __mmask16 = if lanes == NR { !0 } else { (1u16 << lanes) - 1 };
    for i in 0..M {
        let v = _mm512_sub_ps(acc[i], acc_min[i]);
        // SAFETY: `lanes` elements of row `row + i` from column `col`, within `out`.
        unsafe { _mm512_mask_storeu_ps(out.add((row + i) * w.n + col), mask, v) };
    }
}

#[cfg(test)]
mod tests {
    use super::super::q8::{random_product, values};
    use super::*;
    use candle_core::Device;
    use candle_core::quantized::GgmlDType;

    #[test]
    fn the_product_is_candles_q4_k_product() {
        if !supported() {
            return; // nothing to compare on this CPU
        }
        // Remainders of the tiles and of the 16-row panels, several threads' work, one row
        // (decoding).
        for (m, n, k) in [(1, 37, 256), (7, 130, 512), (33, 16, 1536), (5, 48, 768)] {
            let (q, x, candle) = random_product(GgmlDType::Q4K, (m, n, k));
            // The exact product of the dequantised weights and the input.
            let exact = values(
                q.dequantize(&Device::Cpu)
                    .and_then(|w| x.matmul(&w.t()?.unsqueeze(0)?)),
                (m, n),
            );
            let ours = Q4kMatrix::from_q4_k(&q.data().expect("data"), n, k).expect("panels");
            let got = values(ours.forward(&x), (m, n));
            // Both quantise the input to 8 bits: compare their errors against the exact
            // product, at the scale of the values (√k for unit normal inputs).
            let unit = (k as f32).sqrt();
            let err = |a: &[f32]| {
                a.iter()
                    .zip(&exact)
                    .map(|(a, e)| (a - e).abs() / unit)
                    .fold(0f32, f32::max)
            };
            let (ours_err, candle_err) = (err(&got), err(&candle));
            assert!(
                ours_err <= 0.05 && ours_err <= 1.1 * candle_err + 1e-4,
                "{m}×{n}×{k}: ours {ours_err}, candle {candle_err}"
            );
        }
    }
}
