//! Which AI backend `synq serve` uses: an OpenAI-compatible upstream (`--ai-url`), the
//! embedded model (default), or none (`--no-ai`).

use std::sync::Arc;

use anyhow::Context as _;
use synq_ai::gateway::{AiArgs, BackendSlot, BackendState};
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

/// Prepares the embedded model in the background (download on first use, load) and puts it
/// in `slot`; on failure puts the reason and the fix there and on stderr. `synq serve`
/// serves everything else meanwhile.
async fn start_local_backend(slot: BackendSlot, args: AiArgs) {
    // The embedded model (synq_ai::local, feature `local` of synq-ai) is not wired in yet.
    // Plan, all blocking work on `tokio::task::spawn_blocking`:
    //   path = args.ai_model_path, else local::fetch_default_model(true) (progress on stderr)
    //   slot.set(Loading("loading <path>")); LocalBackend::load(&path, LocalOptions::default())
    //   Ok  → eprintln!("synq: AI: embedded model <path>"); slot.set(Ready(Arc::new(backend)))
    //   Err → Unavailable("the embedded AI model could not be downloaded/loaded: {e}. To fix:
    //         run with --ai-model-path FILE.gguf or --ai-url URL --ai-model NAME")
    let _ = &args.ai_model_path;
    let why = "the embedded AI model is not available in this build yet. To fix: run with \
               --ai-url URL --ai-model NAME, e.g. Ollama: --ai-url http://localhost:11434/v1 \
               --ai-model llama3.2";
    eprintln!("synq: AI: none: {why}");
    slot.set(BackendState::Unavailable(why.into()));
}
