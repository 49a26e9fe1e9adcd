//! Which AI backend `synq serve` uses: an OpenAI-compatible upstream (`--ai-url`), the
//! embedded model (default), or none (`--no-ai`); and the operator's advice, in terms of
//! this binary's flags, for what goes wrong (on stderr and in the log only: what callers
//! and chat rooms are told never names a flag).

use std::sync::Arc;

use anyhow::Context as _;
use synq_ai::AiError;
use synq_ai::gateway::{BackendSlot, BackendState};

use crate::ai_args::AiBackendArgs;
use synq_ai::local;
use synq_ai::openai::{OpenAiBackend, OpenAiConfig};

/// Chooses the AI backend and says on stderr which one serves, or why none does.
pub fn start(
    args: &AiBackendArgs,
    no_ai: bool,
    upstream: Option<OpenAiConfig>,
) -> anyhow::Result<BackendSlot> {
    if no_ai {
        eprintln!("synq: AI: disabled (--no-ai)");
        return Ok(BackendSlot::new(BackendState::Unavailable(
            "this server runs without AI".into(),
        )));
    }
    if let Some(config) = upstream {
        eprintln!(
            "synq: AI: OpenAI-compatible service at {} with model {}{}",
            config.base_url,
            config.model,
            if config.api_key.is_some() {
                " (API key from SYNQ_AI_KEY)"
            } else {
                ""
            }
        );
        let backend = OpenAiBackend::new(config).context("cannot set up the AI client")?;
        return Ok(BackendSlot::new(BackendState::Ready(Arc::new(backend))));
    }
    let slot = BackendSlot::new(BackendState::Loading(
        "the embedded AI model is being prepared".into(),
    ));
    tokio::spawn(start_local_backend(slot.clone(), args.clone()));
    Ok(slot)
}

/// Prepares the embedded model in the background (download on first use, then load) and
/// puts it in `slot`; on failure puts the reason there, and the reason with the fix on
/// stderr. `synq
/// serve` serves everything else meanwhile, and the chat shows a notice instead of an
/// answer until the model is ready.
async fn start_local_backend(slot: BackendSlot, args: AiBackendArgs) {
    let path = match args.ai_model_path.clone() {
        Some(path) => path,
        None => {
            let (m, smaller) = args.embedded_model();
            if let Some(why) = smaller {
                eprintln!("synq: AI: {why}");
            }
            eprintln!(
                "synq: AI: embedded model {}/{} (downloaded into the Hugging Face cache on first use)",
                m.repo, m.file
            );
            slot.set(BackendState::Preparing(format!(
                "the embedded AI model ({}) is being downloaded",
                m.file
            )));
            let progress = {
                let slot = slot.clone();
                move |done: u64, total: u64| {
                    slot.set(BackendState::Preparing(format!(
                        "the embedded AI model ({}) is being downloaded: {} of {} MB",
                        m.file,
                        done / 1_000_000,
                        total / 1_000_000
                    )));
                }
            };
            match local::fetch_model(m, Some(Box::new(progress))).await {
                Ok(path) => path,
                Err(e) => {
                    unavailable(&slot, e.to_string());
                    return;
                }
            }
        }
    };
    slot.set(BackendState::Loading(format!(
        "the embedded AI model {} is loading",
        path.display()
    )));
    let load_path = path.clone();
    let options = local::LocalOptions {
        prompt_cache_bytes: args.ai_prompt_cache_mb.saturating_mul(1 << 20),
        ..local::LocalOptions::default()
    };
    let loaded =
        tokio::task::spawn_blocking(move || local::LocalBackend::load(&load_path, options)).await;
    match loaded {
        Ok(Ok(backend)) => {
            slot.set(BackendState::Ready(Arc::new(backend)));
            eprintln!("synq: AI: embedded model {}", path.display());
        }
        Ok(Err(e)) => unavailable(&slot, e.to_string()),
        Err(e) => unavailable(&slot, format!("loading the embedded AI model failed: {e}")),
    }
}

/// What to do when the embedded model cannot be had, in this binary's flags.
const MODEL_FIX: &str = "run with --ai-model-path FILE.gguf (a local GGUF chat model), or \
    --ai-url URL --ai-model NAME for an OpenAI-compatible service (e.g. Ollama: \
    --ai-url http://localhost:11434/v1 --ai-model llama3.2)";

/// No AI: callers are told why, the operator (stderr) also how to fix it.
fn unavailable(slot: &BackendSlot, why: String) {
    eprintln!("synq: AI: none: {why}. With synq serve: {MODEL_FIX}");
    slot.set(BackendState::Unavailable(why));
}

/// What the operator can do about a backend's error, in this binary's flags (the
/// gateway writes it to the log next to the error).
pub fn advice(e: &AiError) -> Option<String> {
    Some(match e {
        AiError::Unreachable { .. } => "check that the service is running and that --ai-url points at it (for Ollama: http://localhost:11434/v1)".into(),
        AiError::Unauthorized { .. } => "put a valid key in the SYNQ_AI_KEY environment variable of `synq serve`".into(),
        AiError::UnknownModel { model, .. } => format!("choose a model the service lists with --ai-model (for Ollama, `ollama pull {model}` first)"),
        AiError::Protocol { .. } => "check that --ai-url is the API base, such as http://localhost:11434/v1".into(),
        AiError::Upstream { status: 404, .. } => "--ai-url should be the API base, such as http://localhost:11434/v1".into(),
        AiError::ModelUnavailable { .. } => MODEL_FIX.into(),
        AiError::Timeout { .. } => "raise --ai-first-token-timeout if the service is slow to start answering".into(),
        _ => return None,
    })
}
