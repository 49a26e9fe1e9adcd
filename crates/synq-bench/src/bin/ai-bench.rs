//! Benchmarks the embedded model on one GGUF file and prints one JSON line per run:
//! `cargo run --release -p synq-bench --bin ai-bench -- --model FILE.gguf --threads 2`
//!
//! Scenarios:
//! - `single`: one user message (`--prompt`), read with an empty prompt cache;
//! - `follow-up`: a chat room. The 19th entry (a post to the AI) is answered, then the
//!   21st post, whose prompt holds the system line and 20 entries: its time to first token
//!   with the previous prompt in the cache (`ttft_ms`), and with an empty cache
//!   (`cold_ttft_ms`). The prompts have the shape of the chat's (`synq_chat::prompt`, which
//!   this crate cannot depend on: synq-chat depends on it); `--dump-messages` writes them
//!   for `bench/llama_cpp_bench.py`.

#![forbid(unsafe_code)]
// Not model code: a benchmark that measures wall-clock time (clippy.toml's determinism rules
// are for model code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use synq_ai::local::{LocalBackend, LocalOptions};
use synq_ai::{ChatBackend, ChatMessage, ChatRequest, Role};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Single,
    FollowUp,
}

#[derive(Parser)]
#[command(about = "Time to first token and tokens/s of synq's embedded model on a GGUF file")]
struct Args {
    /// The GGUF model file.
    #[arg(long)]
    model: PathBuf,
    #[arg(long, value_enum, default_value = "single")]
    scenario: Scenario,
    /// The user message (`single`).
    #[arg(
        long,
        default_value = "Write a short story about a robot who learns to paint."
    )]
    prompt: String,
    /// Upper bound on generated tokens (of the measured request).
    #[arg(long, default_value_t = 128)]
    max_tokens: u32,
    /// CPU threads (default: candle's, the physical cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Memory for cached prompts, in MiB (default: the backend's).
    #[arg(long)]
    prompt_cache_mb: Option<usize>,
    /// `follow-up`: write the two requests' messages as JSON (`{"first": [...],
    /// "follow_up": [...]}`) to this file, for the llama.cpp script.
    #[arg(long)]
    dump_messages: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut options = LocalOptions {
        threads: args.threads,
        ..LocalOptions::default()
    };
    if let Some(mb) = args.prompt_cache_mb {
        options.prompt_cache_bytes = mb << 20;
    }
    let started = Instant::now();
    let model = args.model.clone();
    let backend = tokio::task::spawn_blocking(move || LocalBackend::load(&model, options))
        .await
        .context("the loading thread failed")??;
    let load_s = started.elapsed().as_secs_f64();
    let load_rss_mb = resident_mb();
    let gguf_mb = std::fs::metadata(&args.model)?.len() as f64 / 1e6;
    let request = |messages: Vec<ChatMessage>| {
        ChatRequest::new(messages)
            .max_tokens(args.max_tokens)
            .temperature(args.temperature)
            .seed(args.seed)
    };
    let mut line = serde_json::json!({
        "model": args.model.file_name().map(|n| n.to_string_lossy().into_owned()),
        "load_s": round(load_s, 3),
        "threads": args.threads.unwrap_or_else(candle_core::utils::get_num_threads),
        "gguf_mb": round(gguf_mb, 1),
    });
    match args.scenario {
        Scenario::Single => {
            let request = request(vec![ChatMessage::user(args.prompt.clone())]);
            // The first request after loading also pays one-time costs (thread pool start,
            // page faults on the weights): measured apart, with one token.
            let (cold_ttft, _) = run(&backend, request.clone().max_tokens(1)).await?;
            backend.clear_prompt_cache();
            let (ttft, _) = run(&backend, request).await?;
            let stats = backend.last_stats().context("no figures")?;
            line["scenario"] = "single".into();
            line["prompt_tokens"] = stats.prompt_tokens.into();
            line["ttft_ms"] = ms(ttft);
            line["cold_ttft_ms"] = ms(cold_ttft);
            line["tokens"] = stats.tokens.into();
            line["tokens_per_s"] = round(stats.tokens_per_second(), 2).into();
        }
        Scenario::FollowUp => {
            let (first, follow_up) = room_requests();
            if let Some(path) = &args.dump_messages {
                let dump = serde_json::json!({"first": first, "follow_up": follow_up});
                std::fs::write(path, dump.to_string())?;
            }
            // The room's previous request (its answer generated, as in the chat), then the
            // new post with that prompt in the cache.
            let (first_ttft, _) = run(&backend, request(first.clone()).max_tokens(48)).await?;
            let first_tokens = backend.last_stats().context("no figures")?.prompt_tokens;
            let (ttft, _) = run(&backend, request(follow_up.clone())).await?;
            let stats = backend.last_stats().context("no figures")?;
            // The same request with nothing cached.
            backend.clear_prompt_cache();
            let (cold_ttft, _) = run(&backend, request(follow_up).max_tokens(1)).await?;
            line["scenario"] = "follow-up".into();
            line["first_prompt_tokens"] = first_tokens.into();
            line["first_ttft_ms"] = ms(first_ttft);
            line["prompt_tokens"] = stats.prompt_tokens.into();
            line["cached_tokens"] = stats.cached_tokens.into();
            line["ttft_ms"] = ms(ttft);
            line["cold_ttft_ms"] = ms(cold_ttft);
            line["tokens"] = stats.tokens.into();
            line["tokens_per_s"] = round(stats.tokens_per_second(), 2).into();
        }
    }
    // Resident memory after loading, and at the end (with the prompt cache's entries).
    if let Some(rss) = load_rss_mb {
        line["load_rss_mb"] = round(rss, 1).into();
    }
    if let Some(rss) = resident_mb() {
        line["rss_mb"] = round(rss, 1).into();
    }
    println!("{line}");
    Ok(())
}

/// Time to the first delta, and the text.
async fn run(backend: &LocalBackend, request: ChatRequest) -> anyhow::Result<(Duration, String)> {
    let started = Instant::now();
    let mut stream = backend.stream_chat(request).await?;
    let mut ttft = None;
    let mut text = String::new();
    while let Some(delta) = stream.next().await {
        text.push_str(&delta?);
        ttft.get_or_insert_with(|| started.elapsed());
    }
    Ok((ttft.unwrap_or_else(|| started.elapsed()), text))
}

/// A room of three people planning a weekend, with two earlier answers of the AI; the
/// entries as the chat writes them (`Name: text`, joins in parentheses).
const ROOM: &[&str] = &[
    "(Ann joined the chat)",
    "(Bo joined the chat)",
    "Ann: Hi Bo! Are you still up for the hiking trip this weekend?",
    "Bo: Yes, absolutely. I was thinking Saturday morning, if the weather holds.",
    "(Cy joined the chat)",
    "Cy: Hey both, can I join? I have not been hiking since the spring.",
    "Ann: Of course, the more the merrier. We were looking at the lake trail.",
    "Bo: The lake trail is about 12 km with one steep climb near the end.",
    "Cy: That sounds fine. How long does it usually take?",
    "Ann: AI, how long does a 12 km hike with one steep climb usually take?",
    "AI: Most people walk 12 km in about three to four hours; add half an hour for a steep climb and breaks.",
    "Bo: So if we start at 8 we would be back by lunch.",
    "Cy: I can drive, my car has room for four people and the gear.",
    "Ann: Great, thanks Cy. I will bring sandwiches and fruit for everyone.",
    "Bo: I will bring water and a first aid kit, just in case.",
    "Cy: Should we bring rain jackets? The forecast said clouds on Saturday.",
    "Ann: AI, what should we pack for a cloudy autumn hike by a lake?",
    "AI: Pack rain jackets, a warm layer, sturdy shoes, water, snacks, a map and a charged phone.",
    "Bo: Good list. I also have a spare pair of hiking poles if anyone wants them.",
    "Cy: Yes please, my knees will thank you on the way down.",
];

fn room_prompt(entries: &[&str], asker: &str, text: &str) -> Vec<ChatMessage> {
    let system = "You are AI, the assistant in a group chat with several people. \
         People in the chat now: Ann, Bo, Cy. \
         You write only your own messages, as AI: never write a line for anyone \
         else, never start with a name and a colon, and never answer a question meant \
         for another person in their place. \
         Reply briefly (one to three sentences unless asked for more) in plain text: \
         no Markdown, no lists, no code fences.";
    // As the chat sends it (synq_chat::prompt::build): one turn per entry, the AI's
    // answers as assistant turns, then the post.
    let mut messages = vec![ChatMessage::system(system)];
    for e in entries {
        messages.push(match e.strip_prefix("AI: ") {
            Some(answer) => ChatMessage::assistant(answer),
            None => ChatMessage::user(*e),
        });
    }
    messages.push(ChatMessage::user(format!("{asker}: {text}")));
    messages
}

/// The room's 19th entry asked of the AI (18 entries before it), then its 21st (the 20
/// entries before it include the 19th and the AI's answer).
fn room_requests() -> (Vec<ChatMessage>, Vec<ChatMessage>) {
    let first = room_prompt(
        &ROOM[..18],
        "Bo",
        "AI, what time does the sun set on Saturday, roughly, in late October?",
    );
    let mut entries = ROOM[..18].to_vec();
    entries.push("Bo: AI, what time does the sun set on Saturday, roughly, in late October?");
    entries.push("AI: In late October the sun sets around six in the evening, so you have plenty of daylight.");
    let follow_up = room_prompt(
        &entries,
        "Cy",
        "AI, can you suggest a good place for lunch near the lake trail?",
    );
    debug_assert!(follow_up.iter().all(|m| m.role != Role::Assistant));
    (first, follow_up)
}

/// This process's resident memory (Linux).
fn resident_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1000.0)
}

fn ms(d: Duration) -> serde_json::Value {
    round(d.as_secs_f64() * 1000.0, 1).into()
}

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}
