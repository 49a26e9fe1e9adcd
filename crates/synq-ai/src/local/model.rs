//! Reading and checking a GGUF file, and the supported architectures.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2};

use crate::AiError;

/// The `general.architecture` values this backend runs.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2"];

/// The message of an error without the backtrace candle appends when RUST_BACKTRACE is set.
pub fn first_line(error: impl std::fmt::Display) -> String {
    let text = error.to_string();
    text.lines().next().unwrap_or_default().trim().to_string()
}

fn invalid_file(path: &Path, reason: impl std::fmt::Display) -> AiError {
    AiError::ModelUnavailable {
        reason: format!(
            "{} is not a valid, complete GGUF model file ({})",
            path.display(),
            first_line(reason)
        ),
        fix: "download the model again (an interrupted download leaves a truncated file), or give another file with --ai-model-path FILE.gguf".into(),
    }
}

/// Reads the GGUF header (metadata and tensor table) of `path` and checks that the file
/// holds all the tensor data the header announces: a truncated download fails here, with
/// its path, rather than deep inside the loader.
pub fn read_header(path: &Path) -> Result<Content, AiError> {
    let file = File::open(path).map_err(|e| AiError::ModelUnavailable {
        reason: format!("cannot open the model file {}: {e}", path.display()),
        fix: "check the path given with --ai-model-path, or let synq download its default model"
            .into(),
    })?;
    let file_len = file.metadata().map_err(|e| invalid_file(path, e))?.len();
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| invalid_file(path, e))?;

    let mut data_end = content.tensor_data_offset;
    for (name, info) in &content.tensor_infos {
        let dtype = info.ggml_dtype;
        let bytes =
            (info.shape.elem_count() / dtype.block_size()) as u64 * dtype.type_size() as u64;
        let end = content
            .tensor_data_offset
            .checked_add(info.offset)
            .and_then(|e| e.checked_add(bytes))
            .ok_or_else(|| invalid_file(path, format!("tensor {name} has an impossible offset")))?;
        data_end = data_end.max(end);
    }
    if data_end > file_len {
        return Err(invalid_file(
            path,
            format!("it is truncated: its tensors need {data_end} bytes, the file has {file_len}"),
        ));
    }
    Ok(content)
}

/// The loaded weights of one of the supported architectures.
pub enum Weights {
    Llama(quantized_llama::ModelWeights),
    Qwen2(quantized_qwen2::ModelWeights),
}

impl Weights {
    /// Loads the weights described by `content` from `path`.
    pub fn load(path: &Path, content: Content) -> Result<(Weights, usize), AiError> {
        let arch = architecture(&content);
        let context = |key: &str| {
            content
                .metadata
                .get(key)
                .and_then(|v| v.to_u32().ok())
                .map(|v| v as usize)
        };
        let file = File::open(path).map_err(|e| invalid_file(path, e))?;
        let mut reader = BufReader::new(file);
        let device = Device::Cpu;
        match arch.as_str() {
            "llama" => {
                // candle's llama precomputes rotary embeddings for MAX_SEQ_LEN positions.
                let ctx = context("llama.context_length")
                    .unwrap_or(quantized_llama::MAX_SEQ_LEN)
                    .min(quantized_llama::MAX_SEQ_LEN);
                let w = quantized_llama::ModelWeights::from_gguf(content, &mut reader, &device)
                    .map_err(|e| invalid_file(path, e))?;
                Ok((Weights::Llama(w), ctx))
            }
            "qwen2" => {
                let ctx = context("qwen2.context_length").unwrap_or(4096);
                let w = quantized_qwen2::ModelWeights::from_gguf(content, &mut reader, &device)
                    .map_err(|e| invalid_file(path, e))?;
                Ok((Weights::Qwen2(w), ctx))
            }
            other => Err(AiError::ModelUnavailable {
                reason: format!(
                    "{} is a model of architecture {other:?}, which the embedded backend does not run (supported: {})",
                    path.display(),
                    SUPPORTED_ARCHITECTURES.join(", ")
                ),
                fix: "use a GGUF of a llama or qwen2 model (SmolLM2, Llama 3.x, Qwen2.5 instruct), or serve this one with llama.cpp or Ollama and point --ai-url at it".into(),
            }),
        }
    }

    /// Logits of the next token after `tokens`, which start at position `index_pos`.
    pub fn forward(&mut self, tokens: &[u32], index_pos: usize) -> candle_core::Result<Tensor> {
        let input = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
        let logits = match self {
            Weights::Llama(w) => w.forward(&input, index_pos)?,
            Weights::Qwen2(w) => w.forward(&input, index_pos)?,
        };
        logits.squeeze(0)
    }

    /// Forgets the previous conversation.
    pub fn clear_kv_cache(&mut self) {
        match self {
            Weights::Llama(w) => w.clear_kv_cache(),
            Weights::Qwen2(w) => w.clear_kv_cache(),
        }
    }
}

/// `general.architecture`, or "" when missing.
pub fn architecture(content: &Content) -> String {
    content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default()
}
