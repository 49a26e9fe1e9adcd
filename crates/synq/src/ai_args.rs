//! `AiArgs`: the `synq serve` flags that configure the AI backend and the gateway's guards
//! (the command line is the binary's: synq-ai takes plain configuration structs).

use std::path::PathBuf;
use std::time::Duration;

use synq_ai::gateway::GatewayConfig;
use synq_ai::openai::OpenAiConfig;

/// The environment variable that holds the upstream API key. Only the server's environment:
/// never a flag (it would show in `ps`) and never from a client.
pub const API_KEY_ENV: &str = "SYNQ_AI_KEY";

/// Which AI answers, and how it is reached: shared by `synq serve` (which serves it to
/// participants through its gateway) and `synq bot` (which may call it itself instead of
/// the gateway of the rooms' server).
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "AI")]
pub struct AiBackendArgs {
    /// OpenAI-compatible API base to use instead of the embedded model, e.g.
    /// http://localhost:11434/v1 (Ollama) or https://api.openai.com/v1. The API key, if one
    /// is needed, is read from the SYNQ_AI_KEY environment variable.
    #[arg(long, env = "SYNQ_AI_URL", value_name = "URL")]
    pub ai_url: Option<String>,
    /// Model asked of the --ai-url service (clients cannot choose another).
    #[arg(long, env = "SYNQ_AI_MODEL", value_name = "NAME")]
    pub ai_model: Option<String>,
    /// A local GGUF file for the embedded model, instead of downloading one.
    #[arg(
        long,
        env = "SYNQ_AI_MODEL_PATH",
        value_name = "FILE.gguf",
        conflicts_with = "ai_url"
    )]
    pub ai_model_path: Option<PathBuf>,
    /// The embedded model to download and run, by name: qwen2.5-1.5b (the default: better
    /// answers, 1.1 GB download, ~1.5 GB of memory) or qwen2.5-0.5b (twice as fast, weaker
    /// answers, 0.4 GB download, ~0.8 GB of memory). See docs/ai.md for the figures.
    #[arg(
        long,
        env = "SYNQ_AI_EMBEDDED_MODEL",
        value_name = "NAME",
        value_parser = clap::builder::PossibleValuesParser::new(
            synq_ai::local::EMBEDDED_MODELS.iter().map(|m| m.name)
        ),
        conflicts_with_all = ["ai_url", "ai_model_path"]
    )]
    pub ai_embedded_model: Option<String>,
    /// Memory, in MiB, for the embedded model's KV caches of recent prompts: a chat room's
    /// next prompt, which repeats most of its previous one, is then read only from where it
    /// differs (0 = no cache).
    #[arg(long, default_value_t = 128, value_name = "MIB")]
    pub ai_prompt_cache_mb: usize,
    /// Seconds to wait for the first token of an answer from --ai-url.
    #[arg(long, default_value_t = 120)]
    pub ai_first_token_timeout: u64,
}

impl AiBackendArgs {
    /// Whether an AI was chosen on the command line (or in the environment), rather than
    /// the default: what `synq bot` calls instead of the rooms' gateway.
    pub fn chosen(&self) -> bool {
        self.ai_url.is_some() || self.ai_model_path.is_some() || self.ai_embedded_model.is_some()
    }

    /// The embedded model to download when no file is given.
    pub fn embedded_model(&self) -> synq_ai::local::HubModel {
        // clap allows only the names of EMBEDDED_MODELS.
        self.ai_embedded_model
            .as_deref()
            .and_then(synq_ai::local::embedded_model)
            .unwrap_or(synq_ai::local::DEFAULT_MODEL)
    }

    /// The upstream to use, if `--ai-url` was given. Errors say which flag to fix.
    pub fn openai_config(&self) -> anyhow::Result<Option<OpenAiConfig>> {
        let Some(url) = &self.ai_url else {
            return Ok(None);
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            anyhow::bail!(
                "--ai-url {url:?} is not an http(s) URL; give the API base, such as http://localhost:11434/v1"
            );
        }
        let Some(model) = self.ai_model.clone().filter(|m| !m.trim().is_empty()) else {
            anyhow::bail!(
                "--ai-url needs --ai-model NAME (the model the server asks for, e.g. llama3.2 for Ollama or gpt-4o-mini for OpenAI)"
            );
        };
        let mut config = OpenAiConfig::new(url.clone(), model);
        config.api_key = std::env::var(API_KEY_ENV)
            .ok()
            .filter(|k| !k.trim().is_empty());
        config.first_token_timeout = Duration::from_secs(self.ai_first_token_timeout.max(1));
        Ok(Some(config))
    }
}

/// AI options of `synq serve` (flattened into its arguments).
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "AI")]
pub struct AiArgs {
    #[command(flatten)]
    pub backend: AiBackendArgs,
    /// Largest answer, in tokens: a client's max_tokens is clamped to this.
    #[arg(long, default_value_t = 1024)]
    pub ai_max_tokens: u32,
    /// AI requests per minute per client address (IPv6: per /64 network; 0 = unlimited).
    #[arg(long, default_value_t = 30)]
    pub ai_rate_per_minute: u32,
    /// AI requests per minute per chat session (the session of the caller's AI capability;
    /// 0 = unlimited).
    #[arg(long, default_value_t = 20)]
    pub ai_session_rate_per_minute: u32,
    /// Prompt and answer tokens per UTC day over all clients (estimated, corrected by the
    /// upstream's own count when it reports one; 0 = unlimited).
    #[arg(long, default_value_t = 1_000_000)]
    pub ai_daily_token_budget: u64,
    /// Prompt and answer tokens per UTC day per client address (IPv6: per /64 network), so
    /// that one caller cannot use up the whole budget (0 = unlimited).
    #[arg(long, default_value_t = 200_000)]
    pub ai_address_daily_token_budget: u64,
    /// Web origin allowed to call the AI besides this server's own and localhost
    /// (repeatable; "*" allows any).
    #[arg(long = "ai-allowed-origin", value_name = "ORIGIN")]
    pub ai_allowed_origins: Vec<String>,
    /// Accept AI calls without an AI capability (the token the reflector hands to the
    /// participants of a live chat session). Anyone who can reach the server may then use
    /// the AI, within the per-address limits.
    #[arg(long)]
    pub ai_allow_anonymous: bool,
    /// Seconds an AI capability stays valid (participants get a new one each time they
    /// join; it is honoured only while its session is live).
    #[arg(long, default_value_t = 24 * 3600, value_name = "SECS")]
    pub ai_capability_ttl: u64,
    /// Largest AI request body, in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    pub ai_max_request_bytes: usize,
    /// Serve no AI: the AI endpoints answer 503 with an explanation.
    #[arg(long, conflicts_with_all = ["ai_url", "ai_model_path", "ai_embedded_model"])]
    pub no_ai: bool,
}

impl AiArgs {
    /// The gateway's guards as configured.
    pub fn gateway_config(&self) -> GatewayConfig {
        GatewayConfig {
            max_tokens: self.ai_max_tokens.max(1),
            max_body_bytes: self.ai_max_request_bytes,
            rate_per_minute: self.ai_rate_per_minute,
            session_rate_per_minute: self.ai_session_rate_per_minute,
            daily_token_budget: self.ai_daily_token_budget,
            address_daily_token_budget: self.ai_address_daily_token_budget,
            allowed_origins: self.ai_allowed_origins.clone(),
            // The server's one host allowlist (`synq serve --allowed-host`) is set by the
            // server, for the reflector as well.
            allowed_hosts: Vec::new(),
            allow_anonymous: self.ai_allow_anonymous,
            load_patience: Duration::from_secs(self.backend.ai_first_token_timeout.max(1)),
            operator_advice: crate::ai::advice,
        }
    }

    /// How long the AI capabilities handed to participants stay valid.
    pub fn capability_ttl(&self) -> Duration {
        Duration::from_secs(self.ai_capability_ttl.max(1))
    }
}
