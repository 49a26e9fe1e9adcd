//! Reading and checking a GGUF file, and the supported architectures.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;

use super::transformer::{Convert, Model};

use crate::AiError;

/// The `general.architecture` values this backend runs.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2"];

/// The message of an error without the backtrace candle appends when RUST_BACKTRACE is set.
pub fn first_line(error: impl std::fmt::Display) -> String {
    let text = error.to_string();
    text.lines().next().unwrap_or_default().trim().to_string()
}

/// What to do with a model the embedded backend cannot run.
pub(crate) const UNSUPPORTED_FIX: &str = "use a GGUF of a llama or qwen2 model (SmolLM2, Llama 3.x, Qwen2.5 instruct), or serve this one with llama.cpp or Ollama as an OpenAI-compatible service";

fn invalid_file(path: &Path, reason: impl std::fmt::Display) -> AiError {
    AiError::ModelUnavailable {
        reason: format!(
            "{} is not a valid, complete GGUF model file ({})",
            path.display(),
            first_line(reason)
        ),
        fix: "download the model again (an interrupted download leaves a truncated file), or use another file".into(),
    }
}

/// Reads the GGUF header (metadata and tensor table) of `path` and checks that the file
/// holds all the tensor data the header announces: a truncated download fails here, with
/// its path, rather than deep inside the loader.
pub fn read_header(path: &Path) -> Result<Content, AiError> {
    let file = File::open(path).map_err(|e| AiError::ModelUnavailable {
        reason: format!("cannot open the model file {}: {e}", path.display()),
        fix: "check the model file's path, or use the default model".into(),
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

/// Loads the weights described by `content` from `path`, with the model's own context
/// length.
pub fn load(
    path: &Path,
    content: &Content,
    conversion: Convert,
) -> Result<(Model, usize), AiError> {
    let arch = architecture(content);
    if !SUPPORTED_ARCHITECTURES.contains(&arch.as_str()) {
        return Err(AiError::ModelUnavailable {
            reason: format!(
                "{} is a model of architecture {arch:?}, which the embedded backend does not run (supported: {})",
                path.display(),
                SUPPORTED_ARCHITECTURES.join(", ")
            ),
            fix: UNSUPPORTED_FIX.into(),
        });
    }
    let file = File::open(path).map_err(|e| invalid_file(path, e))?;
    let mut reader = BufReader::new(file);
    let model = Model::load(content, &mut reader, conversion).map_err(|e| invalid_file(path, e))?;
    let context = model.config().context;
    Ok((model, context))
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
