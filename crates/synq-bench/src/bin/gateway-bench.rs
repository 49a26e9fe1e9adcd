//! gateway-bench: the AI gateway's added latency to the first token, over a direct call to
//! the same upstream. Prints one JSON line.
//!
//! Runs a `FakeUpstream` and the gateway (in front of it, with the OpenAI backend) in this
//! process, both on 127.0.0.1, then alternates N streamed requests straight to the upstream
//! and N through the gateway, timing each from sending to the first content delta.
//!
//! `cargo run --release -p synq-bench --bin gateway-bench -- --requests 500`

#![forbid(unsafe_code)]
// Not model code: a benchmark that measures wall-clock time (clippy.toml's determinism rules
// are for model code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use futures_util::StreamExt;
use serde_json::json;
use synq_ai::gateway::{self, BackendSlot, BackendState, GatewayConfig, GatewayState};
use synq_ai::openai::{OpenAiBackend, OpenAiConfig};
use synq_ai::testing::{FakeUpstream, Reply};

#[derive(Parser)]
#[command(about = "The AI gateway's added latency to first token; prints one JSON line")]
struct Args {
    /// Measured requests per path (direct and through the gateway).
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Unmeasured requests per path first.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// The fake upstream's own time to first token, in milliseconds.
    #[arg(long, default_value_t = 0)]
    upstream_first_token_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let up = FakeUpstream::start().await;
    let deltas = ["Hello", " world", ", how", " are", " you?"];
    up.set_default(if args.upstream_first_token_ms > 0 {
        Reply::delayed(Duration::from_millis(args.upstream_first_token_ms), &deltas)
    } else {
        Reply::text(&deltas)
    });

    let backend = OpenAiBackend::new(OpenAiConfig::new(&up.base_url, "bench-model"))?;
    let slot = BackendSlot::new(BackendState::Ready(std::sync::Arc::new(backend)));
    let config = GatewayConfig {
        rate_per_minute: 0,
        session_rate_per_minute: 0,
        daily_token_budget: 0,
        address_daily_token_budget: 0,
        allow_anonymous: true,
        ..GatewayConfig::default()
    };
    let app = gateway::router(GatewayState::new(config, slot));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gw: SocketAddr = listener.local_addr()?;
    // As `synq serve` does (synq_reflector::serve).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });

    let client = reqwest::Client::new();
    let direct_url = format!("{}/chat/completions", up.base_url);
    let gateway_url = format!("http://{gw}/ai/v1/chat/completions");
    let mut direct = Vec::with_capacity(args.requests);
    let mut via = Vec::with_capacity(args.requests);
    for i in 0..args.warmup + args.requests {
        // Alternating keeps both paths under the same conditions (CPU frequency, caches).
        let d = first_token(&client, &direct_url).await?;
        let g = first_token(&client, &gateway_url).await?;
        if i >= args.warmup {
            direct.push(d);
            via.push(g);
        }
    }
    // Added latency per pair of neighbouring requests (gateway minus direct), so that slow
    // moments of the machine hit both sides of a difference.
    let mut added: Vec<i64> = via
        .iter()
        .zip(&direct)
        .map(|(&g, &d)| g as i64 - d as i64)
        .collect();
    let (a50, a99) = (percentile(&mut added, 0.50), percentile(&mut added, 0.99));
    let (d50, d99) = (percentile(&mut direct, 0.50), percentile(&mut direct, 0.99));
    let (g50, g99) = (percentile(&mut via, 0.50), percentile(&mut via, 0.99));
    let line = json!({
        "bench": "gateway-first-token",
        "requests": args.requests,
        "upstream_first_token_ms": args.upstream_first_token_ms,
        "direct_us": {"p50": d50, "p99": d99},
        "gateway_us": {"p50": g50, "p99": g99},
        "added_us": {"p50": a50, "p99": a99},
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    println!("{line}");
    Ok(())
}

/// Microseconds from sending a streamed request to receiving its first content delta.
async fn first_token(client: &reqwest::Client, url: &str) -> anyhow::Result<u64> {
    let body = json!({
        "model": "bench-model", "stream": true, "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
    });
    let started = Instant::now();
    let resp = client.post(url).json(&body).send().await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "{url} answered {}",
        resp.status()
    );
    let mut body = resp.bytes_stream();
    let mut seen = Vec::new();
    loop {
        let chunk = body
            .next()
            .await
            .context("the stream ended before a delta")??;
        seen.extend_from_slice(&chunk);
        if seen.windows(9).any(|w| w == b"\"content\"") {
            let us = started.elapsed().as_micros() as u64;
            // Read to the end so that the connection is reused, as a real client's would be.
            while let Some(chunk) = body.next().await {
                chunk?;
            }
            return Ok(us);
        }
    }
}

fn percentile<T: Ord + Copy + Default>(samples: &mut [T], q: f64) -> T {
    if samples.is_empty() {
        return T::default();
    }
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[i]
}
