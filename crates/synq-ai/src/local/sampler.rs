//! Choosing the next token: greedy at temperature 0, else nucleus (top-p) sampling from a
//! seeded generator, after a mild repeat penalty.

use candle_core::Tensor;
use candle_transformers::generation::{LogitsProcessor, Sampling};

/// Small models loop easily; a mild penalty on recently generated tokens helps without
/// hurting answers (llama.cpp's default is 1.1 over 64 tokens too).
const REPEAT_PENALTY: f32 = 1.1;
const REPEAT_WINDOW: usize = 64;

pub struct Sampler {
    processor: LogitsProcessor,
}

impl Sampler {
    pub fn new(seed: u64, temperature: f32, top_p: f32) -> Self {
        let sampling = if temperature <= 0.0 || !temperature.is_finite() {
            Sampling::ArgMax
        } else if top_p > 0.0 && top_p < 1.0 {
            Sampling::TopP {
                p: f64::from(top_p),
                temperature: f64::from(temperature),
            }
        } else {
            Sampling::All {
                temperature: f64::from(temperature),
            }
        };
        Self {
            processor: LogitsProcessor::from_sampling(seed, sampling),
        }
    }

    /// The next token given the logits and the tokens generated so far.
    pub fn sample(&mut self, logits: &Tensor, generated: &[u32]) -> candle_core::Result<u32> {
        let logits = logits.to_dtype(candle_core::DType::F32)?;
        let recent = &generated[generated.len().saturating_sub(REPEAT_WINDOW)..];
        let logits = if recent.is_empty() {
            logits
        } else {
            candle_transformers::utils::apply_repeat_penalty(&logits, REPEAT_PENALTY, recent)?
        };
        self.processor.sample(&logits)
    }
}
