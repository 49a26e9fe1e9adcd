//! A Q8_0 matrix product with AVX-512 VNNI, for the weights that candle 0.11 multiplies
//! slowly on x86-64.
//!
//! candle's batched (repacked) x86 kernels need the input width to be a multiple of 256;
//! Qwen2.5-0.5B's is 896, so its Q8_0 weights (and the Q5_0 ones, converted to Q8_0 at load)
//! took candle's generic path: one 256-bit dot product per (row, column) pair, ~85 prompt
//! tokens/s on 2 cores. Here tiles of 4 input rows × 4 weight rows share their loads, and
//! `vpdpbusd` multiplies and adds 64 int8 pairs per instruction.
//!
//! Arithmetic: as ggml's Q8_0 × Q8_0 — each input row is quantised per block of 32 to int8
//! with an f32 scale, integer dot products per block, scaled by both blocks' scales.
//! `vpdpbusd` needs unsigned inputs: they are stored offset by 128 and the offset's share
//! (128 × the block's weight sum, itself one `vpdpbusd` per weight vector, shared by the
//! tile's rows) is subtracted in the integer accumulator, so the result is exact.

use candle_core::{Result, Tensor, bail};

const BLOCK: usize = 32;
const BLOCK_BYTES: usize = 34; // f16 scale + 32 int8
/// Input rows per tile.
const MR: usize = 4;
/// Weight rows per tile.
const NR: usize = 4;

/// Whether this CPU runs the kernel.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A weight matrix `[n, k]` in Q8_0, rearranged for the kernel: panels of 4 weight rows,
/// and per step of two blocks (64 inputs) the panel's 4 × 64 int8 weights then its 4 × 2
/// scales, so that a tile reads one sequential stream (decoding is memory-bound). `k` is
/// padded to a multiple of 64 and `n` to one of 4 with zero weights.
pub struct Q8Matrix {
    n: usize,
    k: usize,
    /// Steps of 64 inputs (`k` padded).
    steps: usize,
    panels: Vec<u8>,
}

/// Bytes of one step of one panel: 4 rows × 64 int8, then 4 rows × 2 f32 scales.
const STEP_BYTES: usize = NR * 2 * BLOCK + NR * 2 * 4;

impl Q8Matrix {
    /// From the raw Q8_0 blocks of a `[n, k]` tensor.
    pub fn from_q8_0(data: &[u8], n: usize, k: usize) -> Result<Q8Matrix> {
        if !k.is_multiple_of(BLOCK) || data.len() != n * k / BLOCK * BLOCK_BYTES {
            bail!("a Q8_0 tensor [{n}, {k}] of {} bytes", data.len());
        }
        let nb = k / BLOCK;
        let steps = nb.div_ceil(2);
        let n_panels = n.div_ceil(NR);
        let mut panels = vec![0u8; n_panels * steps * STEP_BYTES];
        for r in 0..n {
            let (panel, j) = (r / NR, r % NR);
            for b in 0..nb {
                let block = &data[(r * nb + b) * BLOCK_BYTES..][..BLOCK_BYTES];
                let step = &mut panels[(panel * steps + b / 2) * STEP_BYTES..][..STEP_BYTES];
                let at = j * 2 * BLOCK + (b % 2) * BLOCK;
                step[at..at + BLOCK].copy_from_slice(&block[2..]);
                let scale = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                let at = NR * 2 * BLOCK + (j * 2 + b % 2) * 4;
                step[at..at + 4].copy_from_slice(&scale.to_le_bytes());
            }
        }
        Ok(Q8Matrix {
            n,
            k,
            steps,
            panels,
        })
    }

    /// `x · selfᵀ` for `x` of shape `[..., k]` (f32): `[..., n]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, xs) = input_rows(x, self.n, self.k)?;
        let input = QuantizedInput::new(&xs, m, self.k, self.steps);
        let mut out = vec![0f32; m * self.n];
        let out_ptr = SendPtr(out.as_mut_ptr());
        let tiles = self.n.div_ceil(NR);
        candle_core::utils::barrier_pool().execute_chunked(tiles, |range| {
            let out_ptr = &out_ptr;
            for panel in range {
                let mut row = 0;
                while row < m {
                    let mr = MR.min(m - row);
                    // SAFETY: `supported()` was checked before building a Q8Matrix user
                    // (`Linear::new`); the panel and rows are within the matrices; each
                    // (row, column) of `out` is written by one tile only.
                    unsafe { tile_rows!(mr, tile(self, &input, row, panel, out_ptr.0)) };
                    row += mr;
                }
            }
        });
        product(out, x, self.n)
    }
}

/// The rows of `x` (`[..., k]`) for a product with an `[n, k]` matrix: their number, and
/// their values one after the other.
pub(super) fn input_rows(x: &Tensor, n: usize, k: usize) -> Result<(usize, Vec<f32>)> {
    if x.dims().last() != Some(&k) {
        bail!("input {:?} for a [{n}, {k}] matrix", x.dims());
    }
    Ok((x.elem_count() / k, x.flatten_all()?.to_vec1::<f32>()?))
}

/// The product `out` of `x` (`[..., k]`) and an `[n, k]` matrix, shaped `[..., n]`.
pub(super) fn product(out: Vec<f32>, x: &Tensor, n: usize) -> Result<Tensor> {
    let mut shape = x.dims().to_vec();
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Tensor::from_vec(out, shape, x.device())
}

/// The output of a product, written by several threads: each element by one only (see
/// `Q8Matrix::forward` and `Q4kMatrix::forward`).
pub(super) struct SendPtr(pub(super) *mut f32);
// SAFETY: the threads write disjoint elements.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// Input rows quantised per block of 32: int8 values offset by 128 (as u8), f32 scales;
/// rows padded to the matrix's steps (zero scales).
struct QuantizedInput {
    /// Bytes (and twice the scales) per row.
    row_bytes: usize,
    qs: Vec<u8>,
    d: Vec<f32>,
}

impl QuantizedInput {
    fn new(xs: &[f32], m: usize, k: usize, steps: usize) -> Self {
        let row_bytes = steps * 2 * BLOCK;
        let mut qs = vec![128u8; m * row_bytes];
        let mut d = vec![0f32; m * row_bytes / BLOCK];
        for (r, row) in xs.chunks_exact(k).enumerate() {
            for (b, block) in row.chunks_exact(BLOCK).enumerate() {
                // As candle's (ggml's) Q8_0 quantisation: the scale is kept in f16.
                let amax = block.iter().fold(0f32, |a, x| a.max(x.abs()));
                let scale = amax / 127.0;
                let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
                d[r * row_bytes / BLOCK + b] = half::f16::from_f32(scale).to_f32();
                let out = &mut qs[r * row_bytes + b * BLOCK..][..BLOCK];
                for (q, x) in out.iter_mut().zip(block) {
                    *q = ((x * inv).round() as i32 + 128).clamp(0, 255) as u8;
                }
            }
        }
        QuantizedInput { row_bytes, qs, d }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile<const M: usize>(_: &Q8Matrix, _: &QuantizedInput, _: usize, _: usize, _: *mut f32) {
    unreachable!("Q8Matrix is only used where `supported()`")
}

/// `out[row + i][4 * panel + j]` for `i < M`, `j < 4` (and within `n`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile<const M: usize>(
    w: &Q8Matrix,
    x: &QuantizedInput,
    row: usize,
    panel: usize,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let offset = _mm512_set1_epi8(-128i8); // 0x80: 128 as u8
    let zero = _mm512_setzero_si512();
    // Lanes 0-7 take the first block's scale, 8-15 the second's.
    let spread = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    let mut acc = [[_mm512_setzero_ps(); NR]; M];
    // SAFETY: the panel is within `w.panels`.
    let panel_ptr = unsafe { w.panels.as_ptr().add(panel * w.steps * STEP_BYTES) };
    for p in 0..w.steps {
        // SAFETY: step `p` of the panel, and 64 bytes / 2 scales of each row at step `p`.
        unsafe {
            let step = panel_ptr.add(p * STEP_BYTES);
            let mut wv = [zero; NR];
            let mut neg_corr = [zero; NR];
            let mut dw = [_mm512_setzero_ps(); NR];
            for j in 0..NR {
                wv[j] = _mm512_loadu_si512(step.add(j * 2 * BLOCK) as *const __m512i);
                // 128 × the weights' sum per lane, subtracted from the offset inputs' products.
                neg_corr[j] = _mm512_sub_epi32(zero, _mm512_dpbusd_epi32(zero, offset, wv[j]));
                let two = _mm_loadl_epi64(step.add(NR * 2 * BLOCK + j * 8) as *const __m128i);
                dw[j] =
                    _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_castsi128_ps(two)));
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                let r = row + i;
                let xv = _mm512_loadu_si512(
                    x.qs.as_ptr().add(r * x.row_bytes + p * 2 * BLOCK) as *const __m512i
                );
                let two = _mm_loadl_epi64(
                    x.d.as_ptr().add((r * x.row_bytes) / BLOCK + p * 2) as *const __m128i
                );
                let dx =
                    _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_castsi128_ps(two)));
                for j in 0..NR {
                    let dot = _mm512_dpbusd_epi32(neg_corr[j], xv, wv[j]);
                    acc[j] =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dx, dw[j]), acc[j]);
                }
            }
        }
    }
    let col = panel * NR;
    for (i, acc) in acc.iter().enumerate() {
        for (j, acc) in acc.iter().enumerate().take(w.n.saturating_sub(col)) {
            // SAFETY: within `out` (m × n), see the caller.
            unsafe { *out.add((row + i) * w.n + col + j) = _mm512_reduce_add_ps(*acc) };
        }
    }
}

/// For the kernels' tests: random weights `[n, k]` quantised to `dtype`, a random input
/// `[1, m, k]`, and candle's product of the two.
#[cfg(test)]
pub(super) fn random_product(
    dtype: candle_core::quantized::GgmlDType,
    (m, n, k): (usize, usize, usize),
) -> (candle_core::quantized::QTensor, Tensor, Vec<f32>) {
    use candle_core::quantized::{QMatMul, QTensor};
    use candle_core::{Device, Module};
    let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).expect("w");
    let x = Tensor::randn(0f32, 1.0, (1, m, k), &Device::Cpu).expect("x");
    let q = QTensor::quantize(&w, dtype).expect("quantize");
    let candle = QMatMul::from_qtensor(QTensor::quantize(&w, dtype).expect("quantize"))
        .and_then(|mm| mm.forward(&x))
        .and_then(|y| y.flatten_all()?.to_vec1())
        .expect("candle");
    (q, x, candle)
}

/// For the kernels' tests: `y` (`[1, m, n]`) as a vector.
#[cfg(test)]
pub(super) fn values(y: Result<Tensor>, (m, n): (usize, usize)) -> Vec<f32> {
    let y = y.expect("product");
    assert_eq!(y.dims(), &[1, m, n]);
    y.flatten_all().and_then(|y| y.to_vec1()).expect("values")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;

    #[test]
    fn the_product_is_candles_q8_0_product() {
        if !supported() {
            return; // nothing to compare on this CPU
        }
        // Odd block counts, remainders of the 4 × 4 tiles, several threads' work.
        for (m, n, k) in [(1, 37, 96), (7, 130, 64), (33, 9, 896)] {
            let (q, x, expected) = random_product(GgmlDType::Q8_0, (m, n, k));
            let ours = Q8Matrix::from_q8_0(&q.data().expect("data"), n, k).expect("matrix");
            let got = values(ours.forward(&x), (m, n));
            for (a, b) in got.iter().zip(&expected) {
                // The same integers and scales; only the order of the float sums differs.
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{m}×{n}×{k}: {a} vs {b}"
                );
            }
        }
    }
}
