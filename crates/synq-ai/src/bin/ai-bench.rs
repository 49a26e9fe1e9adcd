//! Benchmarks the embedded model on one GGUF file and prints one JSON line:
//! `cargo run --release -p synq-ai --bin ai-bench -- --model FILE.gguf --max-tokens 128 --threads 2`

#![forbid(unsafe_code)]
// Not model code: a benchmark that measures wall-clock time (clippy.toml's determinism rules
// are for model code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures_util::StreamExt;
use synq_ai::local::{LocalBackend, LocalOptions};
use synq_ai::{ChatBackend, ChatMessage, ChatRequest};

#[derive(Parser)]
#[command(about = "Time to first token and tokens/s of synq's embedded model on a GGUF file")]
struct Args {
    /// The GGUF model file.
    #[arg(long)]
    model: PathBuf,
    /// The user message.
    #[arg(
        long,
        default_value = "Write a short story about a robot who learns to paint."
    )]
    prompt: String,
    /// Upper bound on generated tokens.
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let options = LocalOptions {
        threads: args.threads,
        ..LocalOptions::default()
    };
    let started = Instant::now();
    let model = args.model.clone();
    let backend = tokio::task::spawn_blocking(move || LocalBackend::load(&model, options))
        .await
        .context("the loading thread failed")??;
    let load_s = started.elapsed().as_secs_f64();

    let request = ChatRequest::new(vec![ChatMessage::user(args.prompt.clone())])
        .max_tokens(args.max_tokens)
        .temperature(args.temperature)
        .seed(args.seed);
    // The first request after loading also pays one-time costs (thread pool start, page
    // faults on the weights): measured apart, with one token.
    let (cold_ttft, _) = run(&backend, request.clone().max_tokens(1)).await?;
    let (ttft, _) = run(&backend, request).await?;
    let stats = backend
        .last_stats()
        .context("the generation left no figures")?;
    let line = serde_json::json!({
        "model": args.model.file_name().map(|n| n.to_string_lossy().into_owned()),
        "load_s": round(load_s, 3),
        "prompt_tokens": stats.prompt_tokens,
        "ttft_ms": round(ttft.as_secs_f64() * 1000.0, 1),
        "cold_ttft_ms": round(cold_ttft.as_secs_f64() * 1000.0, 1),
        "tokens": stats.tokens,
        "tokens_per_s": round(stats.tokens_per_second(), 2),
        "threads": args.threads.unwrap_or_else(candle_core::utils::get_num_threads),
    });
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

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}
