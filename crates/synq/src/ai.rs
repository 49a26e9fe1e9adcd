//! Which AI backend `synq serve` uses: an OpenAI-compatible upstream (`--ai-url`), the
//! embedded model (default), or none (`--no-ai`).

use std::sync::Arc;

use anyhow::Context as _;
use synq_ai::gateway::{AiArgs, BackendSlot, BackendState};
use synq_ai::local;
use synq_ai::openai::{OpenAiBackend, OpenAiConfig};

/// Chooses the AI backend and says on stderr which one serves, or why none does.
pub fn start(args: &AiArgs, upstream: Option<OpenAiConfig>) -> anyhow::Result<BackendSlot> {
    if args.no_ai {
        eprintln!("synq: AI: disabled (--no-ai)");
        return Ok(BackendSlot::new(BackendState::Unavailable(
            "this server runs without AI (started with --no-ai)".into(),
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
/// puts it in `slot`; on failure puts the reason and the fix there and on stderr. `synq
/// serve` serves everything else meanwhile, and the chat shows a notice instead of an
/// answer until the model is ready.
async fn start_local_backend(slot: BackendSlot, args: AiArgs) {
    let fix = "To fix: run with --ai-model-path FILE.gguf (a local GGUF chat model), or \
               --ai-url URL --ai-model NAME for an OpenAI-compatible service (e.g. Ollama: \
               --ai-url http://localhost:11434/v1 --ai-model llama3.2)";
    let path = match args.ai_model_path.clone() {
        Some(path) => path,
        None => {
            let m = local::DEFAULT_MODEL;
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
            match local::fetch_default_model(Some(Box::new(progress))).await {
                Ok(path) => path,
                Err(e) => {
                    let why = with_fix(e.to_string(), fix);
                    slot.set(BackendState::Unavailable(why.clone()));
                    eprintln!("synq: AI: none: {why}");
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
        Ok(Err(e)) => {
            let why = with_fix(e.to_string(), fix);
            slot.set(BackendState::Unavailable(why.clone()));
            eprintln!("synq: AI: none: {why}");
        }
        Err(e) => {
            let why = format!("loading the embedded AI model failed: {e}. {fix}");
            slot.set(BackendState::Unavailable(why.clone()));
            eprintln!("synq: AI: none: {why}");
        }
    }
}

/// The error with our advice, unless it already gives all of it.
fn with_fix(error: String, fix: &str) -> String {
    if error.contains("--ai-model-path") && error.contains("--ai-model ") {
        error
    } else {
        format!("{error}. {fix}")
    }
}
