//! The default model, fetched on first use from the Hugging Face hub into its standard cache.

use std::path::PathBuf;

use crate::AiError;

/// A GGUF file on the Hugging Face hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultModel {
    /// Repository id on the hub.
    pub repo: &'static str,
    /// File name in that repository.
    pub file: &'static str,
    /// sha256 of the file, when pinned (for reference; the hub checks downloads by etag).
    pub sha256: Option<&'static str>,
    /// Expected size in bytes, when pinned.
    pub size: Option<u64>,
}

/// Qwen2.5-0.5B-Instruct, Q4_K_M, from Qwen's own GGUF repository (Apache-2.0).
///
/// Why: it is the best-answering instruct model that stays interactive on 2 CPU cores.
/// SmolLM2-135M runs at about 50 tokens/s here but its answers are often wrong or
/// incoherent; 1.5B+ models answer better but fall to a few tokens/s on 2 cores (about 3×
/// the weights to read per token). Qwen2.5-0.5B follows instructions and answers short
/// factual questions well in English and other languages, and at Q4_K_M (about 400 MB) it
/// generates at roughly a quarter of SmolLM2-135M's speed, fast enough for a chat
/// participant. It uses the qwen2 architecture and a ChatML template, both supported, and
/// Q4_K_M's Q4_K/Q6_K weights have candle's batched x86 kernels, so prompts are read fast.
///
/// The hub was not reachable from the machine this was written on, so neither the hash nor
/// the size is pinned: the hub's own download checks (etag) apply.
pub const DEFAULT_MODEL: DefaultModel = DefaultModel {
    repo: "Qwen/Qwen2.5-0.5B-Instruct-GGUF",
    file: "qwen2.5-0.5b-instruct-q4_k_m.gguf",
    sha256: None,
    size: None,
};

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE" | "False"))
        .unwrap_or(false)
}

/// Told how far a download is: bytes done, bytes in all.
pub type DownloadProgress = Box<dyn Fn(u64, u64) + Send + Sync>;

/// Reports a download's progress to a [`DownloadProgress`], at most once per percent.
#[derive(Clone)]
struct Reporter {
    report: std::sync::Arc<DownloadProgress>,
    total: u64,
    done: u64,
    reported: u64,
}

impl hf_hub::api::tokio::Progress for Reporter {
    async fn init(&mut self, size: usize, _filename: &str) {
        self.total = size as u64;
        (self.report)(0, self.total);
    }

    async fn update(&mut self, size: usize) {
        self.done += size as u64;
        if self.done.saturating_sub(self.reported) >= self.total / 100 {
            self.reported = self.done;
            (self.report)(self.done, self.total);
        }
    }

    async fn finish(&mut self) {
        (self.report)(self.total, self.total);
    }
}

/// Returns the path of the default model in the Hugging Face cache (`HF_HOME`, else
/// `~/.cache/huggingface`), downloading it first if it is not there (telling `progress`
/// how far it is, or with a progress bar on the terminal without one). With
/// `HF_HUB_OFFLINE=1` only the cache is looked at.
pub async fn fetch_default_model(progress: Option<DownloadProgress>) -> Result<PathBuf, AiError> {
    let model = DEFAULT_MODEL;
    let cache = hf_hub::Cache::from_env();
    if let Some(path) = cache.model(model.repo.to_string()).get(model.file) {
        tracing::debug!(path = %path.display(), "default model found in the Hugging Face cache");
        return Ok(path);
    }
    let unavailable = |reason: String| AiError::ModelUnavailable {
        reason,
        fix: format!(
            "connect this machine to the internet once so that {}/{} can be downloaded into {}, or configure a local model file or an OpenAI-compatible service instead",
            model.repo,
            model.file,
            cache.path().display()
        ),
    };
    if offline() {
        return Err(unavailable(format!(
            "the default model {} is not in the Hugging Face cache and HF_HUB_OFFLINE is set",
            model.file
        )));
    }
    tracing::info!(
        repo = model.repo,
        file = model.file,
        "downloading the default AI model"
    );
    let api = hf_hub::api::tokio::ApiBuilder::from_env()
        .with_progress(progress.is_none())
        .build()
        .map_err(|e| unavailable(format!("cannot set up the Hugging Face client: {e}")))?;
    let repo = api.model(model.repo.to_string());
    let fetched = match progress {
        Some(report) => {
            let reporter = Reporter {
                report: std::sync::Arc::new(report),
                total: 0,
                done: 0,
                reported: 0,
            };
            repo.download_with_progress(model.file, reporter).await
        }
        None => repo.get(model.file).await,
    };
    let path = fetched.map_err(|e| {
        unavailable(format!(
            "cannot download the default model {}/{} from the Hugging Face hub: {e}",
            model.repo, model.file
        ))
    })?;
    if let Some(size) = model.size {
        let actual = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if actual != size {
            return Err(unavailable(format!(
                "the downloaded {} has {actual} bytes, expected {size}",
                path.display()
            )));
        }
    }
    Ok(path)
}
