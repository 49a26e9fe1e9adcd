//! ai-eval: the chat AI's quality harness. Group-chat situations (who is in the room, what
//! was said, who asks what) go through the chat's real prompt builder to a real backend;
//! the answer as shown is checked. Prints one JSON line per situation, then the score.
//!
//! ```sh
//! cargo run --release -p synq-bench --bin ai-eval -- --model-path FILE.gguf --threads 2
//! cargo run --release -p synq-bench --bin ai-eval -- --url http://localhost:11434/v1 --model llama3.2
//! ```
//!
//! See crates/synq-bench/README.md ("ai-eval") for the situations file and the checks.

#![forbid(unsafe_code)]
// Not model code: a harness that calls AI backends (clippy.toml's determinism rules are for
// model code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod checks;
mod prompt_v1;
mod prompt_v2;
mod situations;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{ArgGroup, Parser, ValueEnum};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;
use synq_ai::local::{LocalBackend, LocalOptions};
use synq_ai::openai::{OpenAiBackend, OpenAiConfig};
use synq_ai::{ChatBackend, ChatMessage, ChatRequest, Role};
use synq_chat::prompt::{self, AiRequest, PromptInput, PromptMessage, PromptRole, Sampling};

use situations::Loaded;

#[derive(Parser)]
#[command(
    about = "Checks the chat AI's answers to group-chat situations, through the chat's real prompt builder and a real backend",
    group(ArgGroup::new("backend").required(true).args(["url", "model_path", "answers"]))
)]
struct Args {
    /// An OpenAI-compatible API base (e.g. http://localhost:11434/v1, or a synq serve
    /// started with --ai-allow-anonymous: http://127.0.0.1:8080/ai/v1).
    #[arg(long)]
    url: Option<String>,
    /// The model to ask for at --url.
    #[arg(long, default_value = "default", requires = "url")]
    model: String,
    /// The environment variable holding the API key for --url (sent as a bearer token).
    #[arg(long, requires = "url")]
    api_key_env: Option<String>,
    /// A GGUF chat model run by synq's embedded backend.
    #[arg(long)]
    model_path: Option<PathBuf>,
    /// No model: check the answers recorded by an earlier run (its stdout; the model's
    /// raw answer of each situation) again, e.g. after a change of the checks or of the
    /// hygiene. Greedy answers to an unchanged prompt are the same.
    #[arg(long, value_name = "FILE.jsonl")]
    answers: Option<PathBuf>,
    /// A situations file (TOML); default: the bundled ai-eval/situations.toml.
    #[arg(long)]
    situations: Option<PathBuf>,
    /// Which prompt builder: the chat's (current), the first milestone's (v1) or the second's (v2).
    #[arg(long, value_enum, default_value_t = PromptKind::Current)]
    prompt: PromptKind,
    /// Check the model's raw answer instead of the answer as the chat shows it.
    #[arg(long)]
    no_hygiene: bool,
    /// Run only these situations, by name or category (repeatable, or comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// CPU threads of the embedded model (default: candle's, the physical cores).
    #[arg(long, requires = "model_path")]
    threads: Option<usize>,
    /// Sampling temperature; 0 (the default) is greedy, so that answers do not change
    /// from run to run. The chat asks the embedded model at its default, 0.7: measure that
    /// with several `--seed`s.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// The sampling seed of every request (with `--temperature` above 0).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Upper bound on each answer's tokens.
    #[arg(long, default_value_t = 200)]
    max_tokens: u32,
    /// Show a first answer that parrots a post as it is, instead of asking once more at
    /// temperature 0.7 as the chat does (`synq_chat::hygiene::repeats_a_post`).
    #[arg(long)]
    no_echo_retry: bool,
    /// Add the prompt's messages to each situation's line.
    #[arg(long)]
    show_prompt: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PromptKind {
    /// `synq_chat::prompt::build`, as the chat sends it.
    Current,
    /// The milestone's original prompt (commit e078000).
    V1,
    /// The second milestone's single-transcript prompt (commit f75f796).
    V2,
}

impl PromptKind {
    fn name(self) -> &'static str {
        match self {
            PromptKind::Current => "current",
            PromptKind::V1 => "v1",
            PromptKind::V2 => "v2",
        }
    }
}

/// The last line: the score.
#[derive(Serialize)]
struct Score {
    /// "passed/total".
    score: String,
    passed: usize,
    total: usize,
    percent: f64,
    /// "passed/total" per category.
    per_category: BTreeMap<String, String>,
    /// Situations whose answer spoke as a human.
    spoke_as_human: usize,
    /// Situations the backend gave no complete answer to.
    errors: usize,
    model: String,
    prompt: &'static str,
    hygiene: bool,
    temperature: f32,
    seed: u64,
    max_tokens: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = match &args.situations {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => situations::BUNDLED.to_owned(),
    };
    let mut all = situations::parse(&text)?;
    if !args.only.is_empty() {
        for want in &args.only {
            if !all
                .iter()
                .any(|s| &s.situation.name == want || &s.situation.category == want)
            {
                bail!("--only {want:?}: no situation has this name or category");
            }
        }
        all.retain(|s| {
            args.only
                .iter()
                .any(|w| w == &s.situation.name || w == &s.situation.category)
        });
    }

    let (source, model) = source(&args).await?;
    let hygiene = !args.no_hygiene;
    let mut passed = 0;
    let mut per_category: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut spoke_as_human = 0;
    let mut errors = 0;
    for (i, s) in all.iter().enumerate() {
        let started = Instant::now();
        let line = evaluate(&source, s, &args, hygiene).await?;
        let pass = line.pass;
        passed += usize::from(pass);
        let cat = per_category
            .entry(s.situation.category.clone())
            .or_default();
        cat.0 += usize::from(pass);
        cat.1 += 1;
        spoke_as_human += usize::from(line.failed.contains(&"spoke_as_human"));
        errors += usize::from(line.failed.contains(&"error"));
        eprintln!(
            "ai-eval: {}/{} {}: {} ({:.1} s)",
            i + 1,
            all.len(),
            s.situation.name,
            if pass { "pass" } else { "FAIL" },
            started.elapsed().as_secs_f64()
        );
        println!("{}", serde_json::to_string(&line)?);
    }
    let total = all.len();
    let per_category: BTreeMap<String, String> = per_category
        .into_iter()
        .map(|(c, (p, t))| (c, format!("{p}/{t}")))
        .collect();
    let score = Score {
        score: format!("{passed}/{total}"),
        passed,
        total,
        percent: (passed as f64 * 1000.0 / total as f64).round() / 10.0,
        per_category,
        spoke_as_human,
        errors,
        model,
        prompt: args.prompt.name(),
        hygiene,
        temperature: args.temperature,
        seed: args.seed,
        max_tokens: args.max_tokens,
    };
    println!("{}", serde_json::to_string(&score)?);
    if errors > 0 {
        eprintln!("ai-eval: {errors} situation(s) got no answer from the backend (see \"error\")");
        std::process::exit(1);
    }
    Ok(())
}

/// Where the answers come from.
enum Source {
    Backend(Arc<dyn ChatBackend>),
    /// The raw answer of each situation, recorded by an earlier run.
    Recorded(HashMap<String, String>),
}

/// The source the flags name, and how to name its model in the score line.
async fn source(args: &Args) -> anyhow::Result<(Source, String)> {
    if let Some(path) = &args.answers {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut answers = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line: Value = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
            let Some(name) = line["situation"].as_str() else {
                continue; // the score
            };
            let raw = line.get("raw").unwrap_or(&line["answer"]);
            let raw = raw
                .as_str()
                .with_context(|| format!("{} line {}: no answer", path.display(), i + 1))?;
            answers.insert(name.to_owned(), raw.to_owned());
        }
        return Ok((
            Source::Recorded(answers),
            format!("answers recorded in {}", path.display()),
        ));
    }
    let (backend, model) = backend(args).await?;
    Ok((Source::Backend(backend), model))
}

/// The backend the flags name, and how to name its model in the score line.
async fn backend(args: &Args) -> anyhow::Result<(Arc<dyn ChatBackend>, String)> {
    if let Some(url) = &args.url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("--url must be an http:// or https:// API base, not {url:?}");
        }
        let mut config = OpenAiConfig::new(url.clone(), args.model.clone());
        if let Some(var) = &args.api_key_env {
            let key = std::env::var(var)
                .ok()
                .filter(|k| !k.trim().is_empty())
                .with_context(|| format!("--api-key-env {var}: the variable is not set"))?;
            config.api_key = Some(key);
        }
        let backend = OpenAiBackend::new(config)?;
        return Ok((Arc::new(backend), format!("{} at {url}", args.model)));
    }
    let Some(path) = args.model_path.clone() else {
        bail!("give --url URL or --model-path FILE.gguf");
    };
    let options = LocalOptions {
        threads: args.threads,
        default_temperature: args.temperature,
        ..LocalOptions::default()
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let backend = tokio::task::spawn_blocking(move || LocalBackend::load(&path, options))
        .await
        .context("the model loading thread failed")??;
    Ok((Arc::new(backend), name))
}

/// The prompt the chat would send for the situation.
fn prompt_for(s: &Loaded, kind: PromptKind) -> anyhow::Result<AiRequest> {
    let sit = &s.situation;
    let history = situations::to_entries(&sit.history)?;
    Ok(match kind {
        PromptKind::Current => prompt::build(&PromptInput {
            present: &sit.present,
            history: &history,
            instructions: &sit.instructions,
            asker: &sit.asker,
            text: &sit.post,
        }),
        PromptKind::V1 => prompt_v1::build(&sit.present, &history, &sit.asker, &sit.post),
        PromptKind::V2 => prompt_v2::build(&PromptInput {
            present: &sit.present,
            history: &history,
            instructions: &sit.instructions,
            asker: &sit.asker,
            text: &sit.post,
        }),
    })
}

/// One situation's JSON line.
#[derive(Serialize)]
struct Line {
    situation: String,
    category: String,
    pass: bool,
    /// The failed checks' names.
    failed: Vec<&'static str>,
    /// The answer as shown.
    answer: String,
    /// The model's answer, when hygiene changed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<String>,
    /// The first answer (raw), when it parroted a post and was asked for once more.
    #[serde(skip_serializing_if = "Option::is_none")]
    echoed: Option<String>,
    /// What decided each failed check.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
    ttft_ms: Option<u64>,
    total_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<Vec<PromptMessage>>,
}

/// Asks the backend and checks the answer.
async fn evaluate(source: &Source, s: &Loaded, args: &Args, hygiene: bool) -> anyhow::Result<Line> {
    let request = prompt_for(s, args.prompt)?;
    let messages: Vec<ChatMessage> = request
        .messages
        .iter()
        .map(|m| ChatMessage {
            role: match m.role {
                PromptRole::System => Role::System,
                PromptRole::User => Role::User,
                PromptRole::Assistant => Role::Assistant,
            },
            content: m.content.clone(),
        })
        .collect();
    let chat = |temperature: f32| {
        ChatRequest::new(messages.clone())
            .max_tokens(args.max_tokens)
            .temperature(temperature)
            .seed(args.seed)
    };
    let people = s.people();
    let names: Vec<&str> = people.iter().map(String::as_str).collect();
    let started = Instant::now();
    let mut echoed = None;
    let (raw, ttft, error) = match source {
        Source::Backend(backend) => {
            let (raw, ttft, error) = ask(&**backend, chat(args.temperature)).await;
            // As the chat does: a first answer that parrots a post is asked once more.
            let posts = s.posts();
            let echo = error.is_none()
                && synq_chat::hygiene::repeats_a_post(
                    &synq_chat::hygiene::clean(&raw, &names),
                    &posts,
                );
            if echo && !args.no_echo_retry {
                echoed = Some(raw);
                let (raw, _, error) = ask(&**backend, chat(Sampling::Varied.temperature())).await;
                (raw, ttft, error)
            } else {
                (raw, ttft, error)
            }
        }
        Source::Recorded(answers) => match answers.get(&s.situation.name) {
            Some(raw) => (raw.clone(), None, None),
            None => bail!(
                "the recorded answers have none for situation {:?}",
                s.situation.name
            ),
        },
    };
    let total = started.elapsed();

    let shown = if hygiene {
        synq_chat::hygiene::clean(&raw, &names)
    } else {
        raw.clone()
    };
    let mut outcome = checks::run(s, &shown);
    if let Some(e) = &error {
        outcome.failed.insert(0, "error");
        outcome.notes.insert(0, format!("error: {e}"));
    }
    Ok(Line {
        situation: s.situation.name.clone(),
        category: s.situation.category.clone(),
        pass: outcome.pass(),
        failed: outcome.failed,
        raw: (shown != raw).then_some(raw),
        echoed,
        answer: shown,
        notes: outcome.notes,
        ttft_ms: ttft.map(|t| t.as_millis() as u64),
        total_ms: total.as_millis() as u64,
        prompt: args.show_prompt.then_some(request.messages),
    })
}

/// The whole answer, the time to its first text, and the error that ended it early.
async fn ask(
    backend: &dyn ChatBackend,
    request: ChatRequest,
) -> (String, Option<Duration>, Option<String>) {
    let started = Instant::now();
    let mut text = String::new();
    let mut ttft = None;
    let mut stream = match backend.stream_chat(request).await {
        Ok(stream) => stream,
        Err(e) => return (text, None, Some(e.to_string())),
    };
    while let Some(delta) = stream.next().await {
        match delta {
            Ok(delta) => {
                if ttft.is_none() && !delta.is_empty() {
                    ttft = Some(started.elapsed());
                }
                text.push_str(&delta);
            }
            Err(e) => return (text, ttft, Some(e.to_string())),
        }
    }
    (text, ttft, None)
}
