//! `synq-bench`: drives S sessions × C clients × M messages of P bytes through a reflector
//! over the raw protocol and prints one JSON line: deliveries/s, latency p50/p99/max, and
//! the CPU seconds of the server process (and of this load generator).
//!
//! Latency is measured from the moment a client sends a message to the moment each client
//! of the session receives it (same process, same clock). The parsing of received frames
//! is kept minimal so that the load generator is not the bottleneck.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Barrier, Notify};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Clone)]
#[command(about = "Benchmark a reflector: one JSON line on stdout")]
struct Args {
    /// Reflector base URL (the session id is appended).
    #[arg(long, default_value = "ws://127.0.0.1:8080/reflector")]
    url: String,
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Messages each client sends.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    bytes: usize,
    /// Messages per second per client; 0 = as fast as possible (bounded in-flight window).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// In-flight window per client when --rate 0.
    #[arg(long, default_value_t = 32)]
    window: u64,
    /// Ticks per second requested by the session-creating JOIN.
    #[arg(long, default_value_t = 20.0)]
    tps: f64,
    /// Idle mode: send nothing, measure the server's CPU for ticking during this many seconds.
    #[arg(long)]
    idle_seconds: Option<f64>,
    /// PID of the server, to report its CPU time.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Start this `synq` binary (`serve --listen 127.0.0.1:0`) and benchmark it.
    #[arg(long)]
    spawn: Option<String>,
    /// Extra argument for the spawned server (repeatable), e.g. --server-arg=--durability=fsync.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

struct Shared {
    t0: Instant,
    start: Barrier,
    delivered: AtomicU64,
    ticks: AtomicU64,
}

struct ClientResult {
    hist: Histogram<u64>,
    delivered: u64,
    last_delivery: Duration,
}

/// Payload: `"<client>:<send µs>:xxxx…"`; pull the send time out of a RECV frame cheaply.
fn sent_micros(frame: &str) -> Option<(u64, u64)> {
    let args = frame.find("\"args\":[")? + 8;
    let rest = &frame[args..];
    let q = rest.find('"')?;
    let payload = &rest[q + 1..];
    let mut it = payload.splitn(3, ':');
    let client = it.next()?.parse().ok()?;
    let micros = it.next()?.parse().ok()?;
    Some((client, micros))
}

async fn client(
    args: Args,
    shared: Arc<Shared>,
    session: String,
    index: u64,
    global: u64,
) -> anyhow::Result<ClientResult> {
    let url = format!("{}/{}", args.url.trim_end_matches('/'), session);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(&url, None, true)
        .await
        .with_context(|| format!("connect {url}"))?;
    let (mut sink, mut stream) = ws.split();
    let tick = if args.tps > 0.0 {
        1000.0 / args.tps
    } else {
        0.0
    };
    let join = json!({"id": session, "action": "JOIN", "args": {"name": format!("bench/{session}"), "apiKey": "none", "appId": "bench",
        "version": 1, "user": format!("v{global}"), "ticks": {"tick": tick, "delay": 0}}});
    sink.send(Message::Text(join.to_string().into())).await?;
    // Wait until this client knows all clients of its session.
    loop {
        let Some(m) = stream.next().await else {
            bail!("closed before all clients joined")
        };
        if let Message::Text(t) = m? {
            let t = t.as_str();
            if t.contains("\"what\":\"users\"") {
                let v: serde_json::Value = serde_json::from_str(t)?;
                if v["args"][2]["active"].as_u64() == Some(args.clients as u64) {
                    break;
                }
            }
        }
    }
    shared.start.wait().await;
    let expected = if args.idle_seconds.is_some() {
        0
    } else {
        (args.clients * args.messages) as u64
    };
    let own_received = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Notify::new());
    let sender = {
        let args = args.clone();
        let shared = Arc::clone(&shared);
        let own = Arc::clone(&own_received);
        let progress = Arc::clone(&progress);
        let session = session.clone();
        tokio::spawn(async move {
            if args.idle_seconds.is_some() {
                return Ok::<_, anyhow::Error>(sink);
            }
            let pad = "x".repeat(args.bytes.saturating_sub(24));
            let mut interval = (args.rate > 0.0).then(|| {
                let mut i = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                i
            });
            for k in 0..args.messages as u64 {
                match &mut interval {
                    Some(i) => {
                        i.tick().await;
                    }
                    None => {
                        while k >= own.load(Ordering::Acquire) + args.window {
                            progress.notified().await;
                        }
                    }
                }
                let micros = shared.t0.elapsed().as_micros();
                let frame = format!(
                    "{{\"id\":\"{session}\",\"action\":\"SEND\",\"args\":[0,0,\"{index}:{micros}:{pad}\",0]}}"
                );
                sink.send(Message::Text(frame.into())).await?;
            }
            Ok(sink)
        })
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut delivered = 0u64;
    let mut last_delivery = Duration::ZERO;
    while delivered < expected {
        let Some(m) = stream.next().await else { break };
        let Message::Text(t) = m? else { continue };
        let t = t.as_str();
        if t.as_bytes().get(..1) != Some(b"{") {
            continue;
        }
        if t.contains("\"action\":\"TICK\"") {
            shared.ticks.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if let Some((from, sent)) = sent_micros(t) {
            let now = shared.t0.elapsed();
            hist.saturating_record((now.as_micros() as u64).saturating_sub(sent).max(1));
            delivered += 1;
            last_delivery = now;
            shared.delivered.fetch_add(1, Ordering::Relaxed);
            if from == index {
                own_received.fetch_add(1, Ordering::Release);
                progress.notify_one();
            }
        }
    }
    if let Some(idle) = args.idle_seconds {
        let until = tokio::time::Instant::now() + Duration::from_secs_f64(idle);
        while let Ok(Some(m)) = tokio::time::timeout_at(until, stream.next()).await {
            if let Ok(Message::Text(t)) = m
                && t.as_str().contains("\"action\":\"TICK\"")
            {
                shared.ticks.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let mut sink = sender.await??;
    let _ = sink.close().await;
    Ok(ClientResult {
        hist,
        delivered,
        last_delivery,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    let mut child = None;
    if let Some(bin) = &args.spawn {
        let dir = tempfile::tempdir()?;
        let mut c = tokio::process::Command::new(bin)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--client-rate-limit",
                "0",
                "--data-dir",
            ])
            .arg(dir.path())
            .args(&args.server_args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {bin}"))?;
        let mut line = String::new();
        BufReader::new(c.stdout.take().context("stdout")?)
            .read_line(&mut line)
            .await?;
        let base = line
            .trim()
            .strip_prefix("synq: listening on http://")
            .context("no listening line")?
            .to_owned();
        args.url = format!("ws://{base}/reflector");
        args.server_pid = c.id();
        child = Some((c, dir));
    }
    let server_pid = args.server_pid.map(|p| p.to_string());
    let total = args.sessions * args.clients;
    let shared = Arc::new(Shared {
        t0: Instant::now(),
        start: Barrier::new(total + 1),
        delivered: AtomicU64::new(0),
        ticks: AtomicU64::new(0),
    });
    let run = format!("b{}", std::process::id());
    let mut tasks = Vec::with_capacity(total);
    for s in 0..args.sessions {
        for c in 0..args.clients {
            let session = format!("{run}-s{s}");
            tasks.push(tokio::spawn(client(
                args.clone(),
                Arc::clone(&shared),
                session,
                c as u64,
                (s * args.clients + c) as u64,
            )));
        }
    }
    tokio::time::timeout(Duration::from_secs_f64(args.timeout), shared.start.wait())
        .await
        .context("clients did not all join in time")?;
    let started = shared.t0.elapsed();
    let server_cpu0 = server_pid.as_deref().and_then(cpu_seconds);
    let own_cpu0 = cpu_seconds("self");
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut delivered = 0;
    let mut end = started;
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.timeout);
    let mut errors = Vec::new();
    for t in tasks {
        match tokio::time::timeout_at(deadline, t).await {
            Ok(Ok(Ok(r))) => {
                hist.add(&r.hist)?;
                delivered += r.delivered;
                end = end.max(r.last_delivery);
            }
            Ok(Ok(Err(e))) => errors.push(e.to_string()),
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(_) => errors.push("timed out".into()),
        }
    }
    if let Some(idle) = args.idle_seconds {
        end = started + Duration::from_secs_f64(idle);
    }
    let server_cpu = match (server_pid.as_deref().and_then(cpu_seconds), server_cpu0) {
        (Some(b), Some(a)) => Some(b - a),
        _ => None,
    };
    let own_cpu = match (cpu_seconds("self"), own_cpu0) {
        (Some(b), Some(a)) => Some(b - a),
        _ => None,
    };
    let duration = (end - started).as_secs_f64().max(1e-9);
    let expected = if args.idle_seconds.is_some() {
        0
    } else {
        args.sessions * args.clients * args.clients * args.messages
    };
    errors.dedup();
    let out = json!({
        "sessions": args.sessions, "clients": args.clients, "messages": args.messages, "bytes": args.bytes,
        "rate": args.rate, "tps": args.tps, "idle_seconds": args.idle_seconds,
        "server_args": args.server_args,
        "delivered": delivered, "expected": expected,
        "duration_s": round(duration, 3),
        "deliveries_per_s": round(delivered as f64 / duration, 0),
        "ticks_received": shared.ticks.load(Ordering::Relaxed),
        "latency_ms": {
            "p50": round(hist.value_at_quantile(0.5) as f64 / 1000.0, 3),
            "p99": round(hist.value_at_quantile(0.99) as f64 / 1000.0, 3),
            "max": round(hist.max() as f64 / 1000.0, 3),
        },
        "server_cpu_s": server_cpu.map(|c| round(c, 2)),
        "server_cpu_pct_of_core": server_cpu.map(|c| round(100.0 * c / duration, 1)),
        "client_cpu_s": own_cpu.map(|c| round(c, 2)),
        "errors": errors.into_iter().take(5).collect::<Vec<_>>(),
    });
    println!("{out}");
    drop(child);
    Ok(())
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}
