//! Decoding with Q4_K weights: a single-row product with AVX-512 VNNI, on candle's own
//! copy of the weights.
//!
//! Why: on AVX-512 VNNI CPUs candle 0.11 multiplies Q4_K weights through a repacked copy,
//! which reads prompts fast but decodes slowly: Qwen2.5-Coder-1.5B decoded 12.5–14.9
//! tokens/s on 2 cores, and 17.0–25.3 with this product (`ai-bench`, see
//! `crates/synq-ai/README.md`). Prompts (several rows) still take candle's repacked kernel:
//! a tiled version of this one read them 1.6 times slower.
//!
//! Arithmetic: the input row is quantised per block of 256 to int8 with an f32 scale (as
//! ggml's Q8_K), and per block of the weights (8 sub-blocks of 32 4-bit values, each with a
//! 6-bit scale and minimum, and the block's f16 `d` and `dmin`):
//! `Σ x·w = dx · (d · Σⱼ scaleⱼ · Σ q4·q8 − dmin · Σⱼ minⱼ · Σ q8)`. `vpdpbusd` multiplies the
//! unsigned nibbles by the signed inputs and adds 4 products per lane: one instruction per
//! 64 values, two sub-blocks.

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Module, Result, Tensor, bail};

/// Values per block.
const QK: usize = 256;
/// f16 d, f16 dmin, 12 bytes of scales and minimums, 128 bytes of nibbles.
const BLOCK_BYTES: usize = 144;

pub use super::q8::supported;
use super::q8::{SendPtr, product};

/// A weight matrix `[n, k]` in Q4_K: one row through our product, several through
/// candle's.
pub struct Q4kMatrix {
    n: usize,
    k: usize,
    /// Blocks per row.
    nb: usize,
    tensor: Arc<QTensor>,
    candle: QMatMul,
}

impl Q4kMatrix {
    /// A Q4_K tensor `[n, k]`.
    pub fn new(tensor: QTensor) -> Result<Q4kMatrix> {
        let (n, k) = tensor.shape().dims2()?;
        if !k.is_multiple_of(QK) || tensor.data()?.len() != n * (k / QK) * BLOCK_BYTES {
            bail!("a Q4_K tensor [{n}, {k}] of {} bytes", tensor.data()?.len());
        }
        let tensor = Arc::new(tensor);
        Ok(Q4kMatrix {
            n,
            k,
            nb: k / QK,
            candle: QMatMul::from_arc(Arc::clone(&tensor))?,
            tensor,
        })
    }

    /// `x · selfᵀ` for `x` of shape `[..., k]` (f32): `[..., n]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.last() != Some(&self.k) {
            bail!("input {:?} for a [{}, {}] matrix", dims, self.n, self.k);
        }
        if x.elem_count() != self.k {
            return self.candle.forward(x);
        }
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let input = QuantizedInput::new(&xs, self.k);
        // Borrowed: candle's own bytes of the tensor, not a copy.
        let data = self.tensor.data()?;
        let mut out = vec![0f32; self.n];
        let out_ptr = SendPtr(out.as_mut_ptr());
        candle_core::utils::barrier_pool().execute_chunked(self.n, |range| {
            let out_ptr = &out_ptr;
            for col in range {
                // SAFETY: `supported()` was checked before building a Q4kMatrix user
                // (`Linear::new`); the column is within the matrix and `data` is its
                // blocks; each column of `out` is written by one call only.
                unsafe { single_row(self, &data, &input, col, out_ptr.0) };
            }
        });
        product(out, x, self.n)
    }
}

/// One input row quantised per block of 256: int8 values, an f32 scale per block, and the
/// sums of each 32 values times the scale (for the weights' minimums).
struct QuantizedInput {
    qs: Vec<i8>,
    d: Vec<f32>,
    sums: Vec<f32>,
}

impl QuantizedInput {
    fn new(xs: &[f32], k: usize) -> Self {
        let nb = k / QK;
        let mut qs = vec![0i8; k];
        let mut d = vec![0f32; nb];
        let mut sums = vec![0f32; nb * 8];
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

/// `out[0][col]` for a single input row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn single_row(w: &Q4kMatrix, data: &[u8], x: &QuantizedInput, col: usize, out: *mut f32) {
    use std::arch::x86_64::*;
    let low = _mm256_set1_epi8(0x0F);
    let zero = _mm512_setzero_si512();
    let mut acc = _mm512_setzero_ps();
    let mut min_acc = _mm256_setzero_ps();
    let wrow = &data[col * w.nb * BLOCK_BYTES..][..w.nb * BLOCK_BYTES];
    for (b, block) in wrow.chunks_exact(BLOCK_BYTES).enumerate() {
        let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
        let dmin = half::f16::from_le_bytes([block[2], block[3]]).to_f32();
        let mut isum = zero;
        let mut mins = [0f32; 8];
        for p in 0..4 {
            let (s0, m0) = scale_min(2 * p, &block[4..16]);
            let (s1, m1) = scale_min(2 * p + 1, &block[4..16]);
            mins[2 * p] = dmin * f32::from(m0);
            mins[2 * p + 1] = dmin * f32::from(m1);
            // SAFETY: 32 of the block's 128 nibble bytes, and 64 inputs of block `b`.
            let (raw, xv) = unsafe {
                (
                    _mm256_loadu_si256(block.as_ptr().add(16 + 32 * p) as *const __m256i),
                    _mm512_loadu_si512(x.qs.as_ptr().add(b * QK + 64 * p) as *const __m512i),
                )
            };
            let lo = _mm256_and_si256(raw, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
            let wv = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            let scv = _mm512_inserti64x4(
                _mm512_set1_epi32(i32::from(s0)),
                _mm256_set1_epi32(i32::from(s1)),
                1,
            );
            let dot = _mm512_dpbusd_epi32(zero, wv, xv);
            isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(dot, scv));
        }
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(d * x.d[b]), acc);
        // SAFETY: the 8 sums of block `b`, and 8 f32 of `mins`.
        let (sums, mins) = unsafe {
            (
                _mm256_loadu_ps(x.sums.as_ptr().add(b * 8)),
                _mm256_loadu_ps(mins.as_ptr()),
            )
        };
        min_acc = _mm256_fmadd_ps(mins, sums, min_acc);
    }
    let total = _mm512_reduce_add_ps(acc) - _mm512_reduce_add_ps(_mm512_zextps256_ps512(min_acc));
    // SAFETY: within `out` (1 × n), see the caller.
    unsafe { *out.add(col) = total };
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn single_row(_: &Q4kMatrix, _: &[u8], _: &QuantizedInput, _: usize, _: *mut f32) {
    unreachable!("Q4kMatrix is only used where `supported()`")
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
        // One row (decoding, ours), several rows (candle's); several threads' work.
        for (m, n, k) in [(1, 37, 256), (7, 130, 512), (33, 16, 1536)] {
            let (q, x, candle) = random_product(GgmlDType::Q4K, (m, n, k));
            // The exact product of the dequantised weights and the input.
            let exact = values(
                q.dequantize(&Device::Cpu)
                    .and_then(|w| x.matmul(&w.t()?.unsqueeze(0)?)),
                (m, n),
            );
            let got = values(Q4kMatrix::new(q).and_then(|w| w.forward(&x)), (m, n));
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
