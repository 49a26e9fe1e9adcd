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
    /// answers, 1.1 GB download, ~1.5 GB of memory; a machine without the memory gets
    /// qwen2.5-0.5b) or qwen2.5-0.5b (twice as fast, weaker answers, 0.4 GB download,
    /// ~0.8 GB of memory). See docs/ai.md for the figures.
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

    /// The embedded model to download when no file is given, and why it is not the
    /// default when the machine lacks the memory for that.
    pub fn embedded_model(&self) -> (synq_ai::local::HubModel, Option<String>) {
        // clap allows only the names of EMBEDDED_MODELS.
        match self
            .ai_embedded_model
            .as_deref()
            .and_then(synq_ai::local::embedded_model)
        {
            Some(chosen) => (chosen, None),
            None => synq_ai::local::default_for(available_memory()),
        }
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

/// Memory available for new work, where the system says: `MemAvailable` in /proc/meminfo,
/// or less under a container's memory limit (cgroup v2 `memory.max` of this process's
/// group, or v1's `memory.limit_in_bytes`), which /proc/meminfo does not show.
fn available_memory() -> Option<u64> {
    available_memory_from(|path| std::fs::read_to_string(path).ok())
}

fn available_memory_from(read: impl Fn(&str) -> Option<String>) -> Option<u64> {
    let number = |text: String| text.trim().parse::<u64>().ok();
    let system = read("/proc/meminfo").and_then(|info| {
        let kib: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        kib.checked_mul(1024)
    });
    // v2: this process's group ("0::/path"; "/" inside a container's own namespace).
    // "max" when unlimited, which is no number. v1: a huge number when unlimited.
    let v2_dir = read("/proc/self/cgroup")
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("0::").map(|p| p.trim().to_owned()))
        })
        .map(|group| format!("/sys/fs/cgroup{}", group.trim_end_matches('/')))
        .unwrap_or_else(|| "/sys/fs/cgroup".to_owned());
    let limit_and_use = |limit: &str, used: &str| {
        read(limit)
            .and_then(number)
            .map(|limit| limit.saturating_sub(read(used).and_then(number).unwrap_or(0)))
    };
    let container = limit_and_use(
        &format!("{v2_dir}/memory.max"),
        &format!("{v2_dir}/memory.current"),
    )
    .or_else(|| {
        limit_and_use(
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        )
    });
    match (system, container) {
        (Some(s), Some(c)) => Some(s.min(c)),
        (s, c) => s.or(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files<'a>(list: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |path| {
            list.iter()
                .find(|(p, _)| *p == path)
                .map(|(_, text)| (*text).to_owned())
        }
    }

    #[test]
    fn available_memory_is_the_systems_or_less_under_a_container_limit() {
        let meminfo = "MemTotal:       24000000 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(
            available_memory_from(files(&[("/proc/meminfo", meminfo)])),
            Some(20_480_000_000)
        );
        // A 1 GiB container limit (v2, the process's own group), 200 MiB of it in use.
        let v2 = [
            ("/proc/meminfo", meminfo),
            ("/proc/self/cgroup", "0::/app.slice/synq\n"),
            ("/sys/fs/cgroup/app.slice/synq/memory.max", "1073741824\n"),
            (
                "/sys/fs/cgroup/app.slice/synq/memory.current",
                "209715200\n",
            ),
        ];
        assert_eq!(available_memory_from(files(&v2)), Some(864_026_624));
        // No limit ("max"): the system's.
        let unlimited = [
            ("/proc/meminfo", meminfo),
            ("/proc/self/cgroup", "0::/\n"),
            ("/sys/fs/cgroup/memory.max", "max\n"),
        ];
        assert_eq!(
            available_memory_from(files(&unlimited)),
            Some(20_480_000_000)
        );
        // v1.
        let v1 = [
            ("/proc/meminfo", meminfo),
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "2147483648\n",
            ),
            ("/sys/fs/cgroup/memory/memory.usage_in_bytes", "0\n"),
        ];
        assert_eq!(available_memory_from(files(&v1)), Some(2_147_483_648));
        assert_eq!(available_memory_from(files(&[])), None);
    }
}
