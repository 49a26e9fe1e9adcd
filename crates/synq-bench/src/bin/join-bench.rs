//! Late-join benchmark: how long a new client takes to be synced when the session holds N
//! events since its last snapshot (each in its own message, the worst case: nothing
//! bundled). A writer sends the N inputs through the real client controller; then a new
//! client joins through `synq_client::join` and the time to `Synced` is measured.
//! Prints one JSON line.
//!
//!   join-bench --spawn target/release/synq --events 10000
//!   join-bench --url http://127.0.0.1:8080 --events 100000

#![forbid(unsafe_code)]
// Not model code: a benchmark that measures wall-clock time (clippy.toml's determinism rules
// are for model code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use synq_client::{ClientConfig, Controller, Effect, join};
use synq_model::demo::{Room, RoomInput, RoomViewData};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// A `synq` binary to start on a temporary data dir.
    #[arg(long)]
    spawn: Option<String>,
    /// Or a running server's base URL.
    #[arg(long)]
    url: Option<String>,
    /// Events (inputs, one per message) since the last snapshot.
    #[arg(long, default_value_t = 10_000)]
    events: u64,
    /// Bytes of text per post.
    #[arg(long, default_value_t = 64)]
    bytes: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (_server, base) = match (&args.spawn, &args.url) {
        (Some(bin), _) => {
            let (child, base) = spawn(bin, args.events).await?;
            (Some(child), base)
        }
        (None, Some(url)) => (None, url.clone()),
        _ => bail!("give --spawn PATH or --url URL"),
    };
    let session = format!("join-bench-{}", std::process::id());
    let mut cfg = ClientConfig::for_server(&base, "synq.bench", &session, "bench-password");
    cfg.snapshot_every = None;
    cfg.max_sends_per_sec = 1e9;

    // The writer: the real controller, one input per message.
    let writer = Arc::new(Mutex::new(Controller::<Room>::new(
        cfg.clone(),
        &RoomViewData {
            name: "writer".into(),
        },
    )?));
    let url = writer
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .socket_url();
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .with_context(|| format!("connect {url}"))?;
    let (mut tx, mut rx) = ws.split();
    let join_frame = writer
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .join_frame();
    tx.send(Message::text(join_frame)).await?;
    let (applied_tx, mut applied_rx) = tokio::sync::watch::channel(0u64);
    let reader_ctl = Arc::clone(&writer);
    tokio::spawn(async move {
        while let Some(Ok(msg)) = rx.next().await {
            if let Message::Text(t) = msg {
                let Ok(mut c) = reader_ctl.lock() else { break };
                if let Err(e) = c.on_frame(t.as_str()) {
                    eprintln!("join-bench: writer: {e}");
                    break;
                }
                let applied = if c.is_synced() {
                    c.replica().map_or(0, |r| r.last_input(c.view_id()))
                } else {
                    0
                };
                c.take_events();
                let _ = applied_tx.send(applied + u64::from(c.is_synced()));
            }
        }
    });
    // Synced: the watch value is at least 1.
    applied_rx.wait_for(|v| *v >= 1).await?;
    let text = "x".repeat(args.bytes);
    let t_write = Instant::now();
    let mut clock = 0.0;
    for sent in 0..args.events {
        // At most 1000 in flight: a writer that falls 4096 frames behind its own echo is
        // disconnected by the reflector as unresponsive.
        if sent % 100 == 0 {
            tx.flush().await?;
            applied_rx.wait_for(|v| v + 1000 >= sent).await?;
        }
        let effects = {
            let mut c = writer.lock().map_err(|_| anyhow::anyhow!("lock"))?;
            c.publish(&RoomInput::Post(text.clone()))?;
            clock += 1000.0;
            c.flush(clock)?;
            c.take_effects()
        };
        for e in effects {
            if let Effect::Send(f) = e {
                tx.feed(Message::text(f)).await?;
            }
        }
    }
    tx.flush().await?;
    let n = args.events;
    tokio::time::timeout(Duration::from_secs(600), applied_rx.wait_for(|v| *v > n))
        .await
        .context("the writer's inputs did not all come back")??;
    let write_s = t_write.elapsed().as_secs_f64();

    // The late joiner.
    let t0 = Instant::now();
    let late = join::<Room>(
        cfg,
        RoomViewData {
            name: "late".into(),
        },
    )
    .await?;
    let join_s = t0.elapsed().as_secs_f64();
    let (_, events) = late.progress().context("no replica")?;
    println!(
        "{{\"bench\":\"late-join\",\"events_since_snapshot\":{n},\"messages\":{n},\"bytes_per_post\":{},\"replica_events\":{events},\"join_s\":{join_s:.3},\"events_per_s\":{:.0},\"write_s\":{write_s:.2}}}",
        args.bytes,
        n as f64 / join_s
    );
    Ok(())
}

async fn spawn(bin: &str, events: u64) -> anyhow::Result<(tokio::process::Child, String)> {
    let dir = std::env::temp_dir().join(format!("synq-join-bench-{}", std::process::id()));
    let cap = (events * 2 + 1000).to_string();
    let mut child = tokio::process::Command::new(bin)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--client-rate-limit",
            "0",
            // The embedded AI model would load in the background and skew the figures.
            "--no-ai",
        ])
        .args([
            "--snapshot-request-at",
            &cap,
            "--max-messages",
            &cap,
            "--data-dir",
        ])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {bin}"))?;
    let mut out = BufReader::new(child.stdout.take().context("stdout")?);
    let mut line = String::new();
    out.read_line(&mut line).await?;
    let addr = line
        .trim()
        .strip_prefix("synq: listening on ")
        .with_context(|| format!("unexpected first line {line:?}"))?
        .to_owned();
    Ok((child, addr))
}
