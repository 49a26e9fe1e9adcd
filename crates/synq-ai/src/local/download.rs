//! The embedded models that `synq serve` can download by name (the default among them),
//! fetched on first use from the Hugging Face hub into its standard cache.

use std::path::PathBuf;

use crate::AiError;

/// A GGUF file on the Hugging Face hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubModel {
    /// The short name that chooses it (`qwen2.5-1.5b`).
    pub name: &'static str,
    /// Repository id on the hub.
    pub repo: &'static str,
    /// File name in that repository.
    pub file: &'static str,
    /// sha256 of the file, when pinned (for reference; the hub checks downloads by etag).
    pub sha256: Option<&'static str>,
    /// Expected size in bytes, when pinned.
    pub size: Option<u64>,
}

/// Qwen2.5-0.5B-Instruct, Q4_K_M, from Qwen's own GGUF repository (Apache-2.0): twice the
/// default's speed in half its memory, with weaker answers. For small or busy servers.
///
/// Measured on 2 CPU cores with Qwen2.5-Coder-0.5B-Instruct (the same architecture, size
/// and quantisation; the hub is not reachable from the development machine): 36–55
/// tokens/s, 0.26–0.42 s to the first token of a room's next answer, 0.77 GB resident, and
/// 22 of 31 group-chat situations of `ai-eval` passed.
pub const QWEN2_5_0_5B: HubModel = HubModel {
    name: "qwen2.5-0.5b",
    repo: "Qwen/Qwen2.5-0.5B-Instruct-GGUF",
    file: "qwen2.5-0.5b-instruct-q4_k_m.gguf",
    sha256: None,
    size: None,
};

/// The default: Qwen2.5-1.5B-Instruct, Q4_K_M, from Qwen's own GGUF repository
/// (Apache-2.0).
///
/// Why, measured on 2 CPU cores with Qwen2.5-Coder-1.5B-Instruct (the same architecture,
/// size and quantisation): 26–27 of 31 group-chat situations of `ai-eval` passed (84–87 %;
/// the 0.5B 22, 71 %; the AI-participant issue asks for 75 %), 0.56–0.64 s to the first
/// token of a room's next answer, 15–23 tokens/s, 1.52 GB resident (1.3× its file, with
/// our Q4_K kernel). The 0.5B ([`QWEN2_5_0_5B`]) is twice as fast in half the memory.
/// Table and commands: `docs/ai.md`.
///
/// Neither the hash nor the size is pinned (the hub was unreachable when this was
/// written): the hub's own download checks (etag) apply.
pub const QWEN2_5_1_5B: HubModel = HubModel {
    name: "qwen2.5-1.5b",
    repo: "Qwen/Qwen2.5-1.5B-Instruct-GGUF",
    file: "qwen2.5-1.5b-instruct-q4_k_m.gguf",
    sha256: None,
    size: None,
};

/// The model `synq serve` downloads when it is given none.
pub const DEFAULT_MODEL: HubModel = QWEN2_5_1_5B;

/// Memory the default model takes once running, with our Q4_K kernel (AVX-512 VNNI) and
/// without it (candle's kernels keep a second copy of its Q4_K weights), measured with its
/// stand-in and the default prompt cache full.
const DEFAULT_MODEL_BYTES: (u64, u64) = (1_650_000_000, 2_450_000_000);
/// Memory left for the rest of the server (and the system) beside the model.
const HEADROOM_BYTES: u64 = 500_000_000;

/// The model to run when none is named, for a machine with `available` bytes of memory
/// (`None`: unknown). [`DEFAULT_MODEL`], unless it would not fit: then the smaller
/// [`QWEN2_5_0_5B`], with the reason to tell the operator. A server on a small machine
/// then starts with an AI that fits rather than being killed for memory.
pub fn default_for(available: Option<u64>) -> (HubModel, Option<String>) {
    let needs = if super::fast_kernels() {
        DEFAULT_MODEL_BYTES.0
    } else {
        DEFAULT_MODEL_BYTES.1
    };
    match available {
        Some(bytes) if bytes < needs + HEADROOM_BYTES => (
            QWEN2_5_0_5B,
            Some(format!(
                "the default model {} needs about {:.1} GB of memory with the rest of the server and this machine has {:.1} GB available: running {} instead (--ai-embedded-model chooses)",
                DEFAULT_MODEL.name,
                (needs + HEADROOM_BYTES) as f64 / 1e9,
                bytes as f64 / 1e9,
                QWEN2_5_0_5B.name
            )),
        ),
        _ => (DEFAULT_MODEL, None),
    }
}

/// Every model that can be chosen by name, the default first.
pub const EMBEDDED_MODELS: &[HubModel] = &[QWEN2_5_1_5B, QWEN2_5_0_5B];

/// The model called `name`, if there is one.
pub fn embedded_model(name: &str) -> Option<HubModel> {
    EMBEDDED_MODELS.iter().copied().find(|m| m.name == name)
}

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

/// Returns the path of `model` in the Hugging Face cache (`HF_HOME`, else
/// `~/.cache/huggingface`), downloading it first if it is not there (telling `progress`
/// how far it is, or with a progress bar on the terminal without one). With
/// `HF_HUB_OFFLINE=1` only the cache is looked at.
pub async fn fetch_model(
    model: HubModel,
    progress: Option<DownloadProgress>,
) -> Result<PathBuf, AiError> {
    let cache = hf_hub::Cache::from_env();
    if let Some(path) = cache.model(model.repo.to_string()).get(model.file) {
        tracing::debug!(path = %path.display(), "model found in the Hugging Face cache");
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
            "the model {} is not in the Hugging Face cache and HF_HUB_OFFLINE is set",
            model.file
        )));
    }
    tracing::info!(
        repo = model.repo,
        file = model.file,
        "downloading the embedded AI model"
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
            "cannot download the model {}/{} from the Hugging Face hub: {e}",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_without_memory_for_the_default_gets_the_smaller_model_and_is_told() {
        assert_eq!(
            default_for(None),
            (DEFAULT_MODEL, None),
            "unknown: the default"
        );
        assert_eq!(default_for(Some(16_000_000_000)).0, DEFAULT_MODEL);
        let (model, why) = default_for(Some(1_500_000_000));
        assert_eq!(model, QWEN2_5_0_5B);
        let why = why.expect("a reason");
        assert!(
            why.contains("1.5 GB available") && why.contains("--ai-embedded-model"),
            "{why}"
        );
    }
}
