//! Memory under attack: the peak RSS of a `synq serve` process under the floods of issue
//! 10, each against a fresh server, bounded in count and time, over loopback only.
//! Prints one JSON line per scenario.
//!
//! - `join_flood`: C connections JOIN one session and send P-byte messages at R/s each for
//!   T s (within the rate limit), then J more connections send one JOIN each and never
//!   read (each SYNC holds every stored message).
//! - `upload_flood`: N parallel PUTs of M MiB to `/files/…`, then D GETs that read nothing
//!   after the status line.
//! - `many_sessions`: S connections each JOIN a different session; connections that a
//!   per-address limit refuses are retried in waves (the open ones are closed first).
//! - `debounce_flood`: C connections SEND with tags `{"debounce":1000,"msgID":<unique
//!   P-byte id>}` at R/s each for T s.
//!
//!   attack-bench --spawn target/release/synq [--scenario join_flood]
//!
//! The server's memory is read from /proc/PID/status: VmHWM (the kernel's high-water mark
//! of the resident set) at the end, and VmRSS sampled every 50 ms. Nothing here depends on
//! the server's version: refusals (HTTP status, WebSocket close code, reset) are counted,
//! so the same run works against a server with and without limits.

#![forbid(unsafe_code)]
// Not model code: a benchmark that measures wall-clock time (clippy.toml's determinism rules
// are for model code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use synq_protocol::action::{JoinRequest, JoinUser, SendRequest, SendTags, TickConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Sink = SplitSink<Ws, Message>;
type Stream = SplitStream<Ws>;

const SCENARIOS: &[&str] = &[
    "join_flood",
    "upload_flood",
    "many_sessions",
    "debounce_flood",
];

#[derive(Parser, Clone, Debug)]
#[command(
    about = "Peak RSS of synq serve under the floods of issue 10; one JSON line per scenario"
)]
struct Args {
    /// The `synq` binary: each scenario starts it as `serve --listen 127.0.0.1:0 --no-ai
    /// --data-dir <tmp>` and kills it at the end.
    #[arg(long)]
    spawn: String,
    /// Run only this scenario (join_flood, upload_flood, many_sessions, debounce_flood).
    #[arg(long)]
    scenario: Option<String>,
    /// Extra argument for the spawned server (repeatable).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// join_flood / debounce_flood: connections that send.
    #[arg(long, default_value_t = 5)]
    senders: usize,
    /// join_flood / debounce_flood: bytes per message payload (join_flood) or msgID
    /// (debounce_flood).
    #[arg(long, default_value_t = 60_000)]
    message_bytes: usize,
    /// join_flood / debounce_flood: messages per second per sender (the server's default
    /// limit is 100/s).
    #[arg(long, default_value_t = 90.0)]
    rate: f64,
    /// join_flood: seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    send_seconds: f64,
    /// join_flood: connections that JOIN and never read.
    #[arg(long, default_value_t = 6)]
    joiners: usize,
    /// Seconds to keep everything open (and sample) after the flood.
    #[arg(long, default_value_t = 15.0)]
    hold_seconds: f64,
    /// upload_flood: parallel uploads.
    #[arg(long, default_value_t = 16)]
    uploads: usize,
    /// upload_flood: MiB per upload.
    #[arg(long, default_value_t = 63)]
    upload_mib: usize,
    /// upload_flood: downloads that never read.
    #[arg(long, default_value_t = 10)]
    downloads: usize,
    /// many_sessions: sessions (one connection each).
    #[arg(long, default_value_t = 5000)]
    sessions: usize,
    /// many_sessions: seconds between closing a wave and opening the next (a server that
    /// counts sessions per address frees them only once they are gone from memory).
    #[arg(long, default_value_t = 12.0)]
    wave_pause: f64,
    /// debounce_flood: seconds of sending.
    #[arg(long, default_value_t = 20.0)]
    debounce_seconds: f64,
    /// Time limit per scenario in seconds; a scenario reports what it did by then.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
}

// ---- the server and its memory ----

/// A server started for one scenario, killed when dropped.
struct Server {
    child: tokio::process::Child,
    pid: u32,
    addr: SocketAddr,
    data: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(bin: &str, extra: &[String]) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("server.log");
        let data = dir.path().join("data");
        let mut child = tokio::process::Command::new(bin)
            // No AI: the embedded model would load in the background and skew the figures.
            .args(["serve", "--listen", "127.0.0.1:0", "--no-ai", "--data-dir"])
            .arg(&data)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {bin}"))?;
        let pid = child.id().context("no pid")?;
        let mut out = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(30), out.read_line(&mut line)).await;
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            bail!("{bin} did not print its listening line");
        }
        let addr: SocketAddr = line
            .trim()
            .strip_prefix("synq: listening on http://")
            .with_context(|| format!("unexpected first line from {bin}: {line:?}"))?
            .trim_end_matches('/')
            .parse()
            .context("listening address")?;
        if !addr.ip().is_loopback() {
            bail!("the server listens on {addr}, not on loopback");
        }
        // Keep reading stdout so that the server never writes into a closed pipe.
        tokio::spawn(async move {
            let mut line = String::new();
            while let Ok(n) = out.read_line(&mut line).await {
                if n == 0 {
                    break;
                }
                line.clear();
            }
        });
        Ok(Server {
            child,
            pid,
            addr,
            data,
            log,
            _dir: dir,
        })
    }

    fn ws_url(&self, session: &str) -> String {
        format!("ws://{}/reflector/{session}", self.addr)
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Lines of the server log with WARN or ERROR (the first few, for the report).
    fn warnings(&self) -> (usize, Vec<String>) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
            .collect();
        let first = lines
            .iter()
            .take(3)
            .map(|l| strip_ansi(l).chars().take(200).collect())
            .collect();
        (lines.len(), first)
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// The log line without terminal colour codes (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

/// Samples the server's VmRSS every 50 ms until dropped.
struct Sampler {
    peak_kib: Arc<AtomicU64>,
    last_hwm_kib: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let peak_kib = Arc::new(AtomicU64::new(0));
        let last_hwm_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, h, s) = (peak_kib.clone(), last_hwm_kib.clone(), stop.clone());
        tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Some((rss, hwm)) = memory_kib(pid) {
                    p.fetch_max(rss, Ordering::Relaxed);
                    h.fetch_max(hwm, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Sampler {
            peak_kib,
            last_hwm_kib,
            stop,
        }
    }

    /// `(peak sampled VmRSS, VmHWM)` in KiB; reads once more first.
    fn peaks(&self, pid: u32) -> (u64, u64) {
        if let Some((rss, hwm)) = memory_kib(pid) {
            self.peak_kib.fetch_max(rss, Ordering::Relaxed);
            self.last_hwm_kib.fetch_max(hwm, Ordering::Relaxed);
        }
        (
            self.peak_kib.load(Ordering::Relaxed),
            self.last_hwm_kib.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Bytes and files under `dir`.
fn disk_usage(dir: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut files = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => {
                    bytes += m.len();
                    files += 1;
                }
                Err(_) => {}
            }
        }
    }
    (bytes, files)
}

// ---- refusals ----

/// What the server refused, by kind: `http_429`, `close_4105`, `reset`, `timeout`, …
#[derive(Clone, Default)]
struct Refused(Arc<Mutex<BTreeMap<String, u64>>>);

impl Refused {
    fn add(&self, kind: impl Into<String>) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(kind.into()).or_default() += 1;
        }
    }

    fn total(&self) -> u64 {
        self.0.lock().map(|m| m.values().sum()).unwrap_or(0)
    }

    fn json(&self) -> Value {
        self.0
            .lock()
            .ok()
            .and_then(|m| serde_json::to_value(&*m).ok())
            .unwrap_or(Value::Null)
    }
}

fn ws_error_kind(e: &tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(resp) => format!("http_{}", resp.status().as_u16()),
        tungstenite::Error::Io(io) => format!("io_{:?}", io.kind()).to_lowercase(),
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => "closed".into(),
        tungstenite::Error::Protocol(_) => "ws_protocol".into(),
        _ => "ws_error".into(),
    }
}

fn close_kind(frame: Option<&tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(f) => format!("close_{}", u16::from(f.code)),
        None => "close".into(),
    }
}

// ---- WebSocket clients ----

fn join_frame(session: &str, user: &str) -> Message {
    Message::text(
        JoinRequest {
            name: format!("attack/{session}"),
            app_id: "attack.bench".into(),
            user: JoinUser::Name(user.into()),
            ticks: Some(TickConfig {
                tick: Some(1000.0),
                delay: Some(0.0),
                scale: None,
            }),
            ..JoinRequest::default()
        }
        .encode(session),
    )
}

async fn connect(server: &Server, session: &str) -> Result<Ws, String> {
    let url = server.ws_url(session);
    match tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(ws_error_kind(&e)),
        Err(_) => Err("connect_timeout".into()),
    }
}

/// Connects and JOINs; waits for the SYNC (its first frame or chunk).
async fn join(server: &Server, session: &str, user: &str) -> Result<(Sink, Stream), String> {
    let ws = connect(server, session).await?;
    let (mut sink, mut stream) = ws.split();
    sink.send(join_frame(session, user))
        .await
        .map_err(|e| ws_error_kind(&e))?;
    let wait = async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Text(t))) => {
                    let t = t.as_str();
                    if t.starts_with("_CHUNK") || t.contains("\"action\":\"SYNC\"") {
                        return Ok(());
                    }
                }
                Some(Ok(Message::Close(c))) => return Err(close_kind(c.as_ref())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(ws_error_kind(&e)),
                None => return Err("closed".into()),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(30), wait).await {
        Ok(Ok(())) => Ok((sink, stream)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("join_timeout".into()),
    }
}

/// Reads and discards everything; returns how the connection ended (`None`: still open
/// when `stop` was set).
fn drain(mut stream: Stream, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Option<String>> {
    tokio::spawn(async move {
        loop {
            let next = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            match next {
                Err(_) => continue,
                Ok(Some(Ok(Message::Close(c)))) => return Some(close_kind(c.as_ref())),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Some(ws_error_kind(&e)),
                Ok(None) => return Some("closed".into()),
            }
        }
    })
}

/// Sends `frame(i)` at `rate`/s for `seconds`; stops at the first failure. Returns the
/// number sent.
async fn send_at_rate(
    sink: &mut Sink,
    rate: f64,
    seconds: f64,
    mut frame: impl FnMut(u64) -> Message,
) -> (u64, Option<String>) {
    let start = tokio::time::Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let end = start + Duration::from_secs_f64(seconds);
    let mut sent = 0u64;
    loop {
        let due = start + period.mul_f64(sent as f64);
        if due >= end {
            return (sent, None);
        }
        tokio::time::sleep_until(due).await;
        if let Err(e) = sink.send(frame(sent)).await {
            return (sent, Some(ws_error_kind(&e)));
        }
        sent += 1;
    }
}

// ---- scenarios ----

struct Run {
    server: Server,
    sampler: Sampler,
    baseline_kib: u64,
    started: Instant,
    refused: Refused,
}

impl Run {
    async fn start(args: &Args) -> anyhow::Result<Run> {
        let server = Server::start(&args.spawn, &args.server_args).await?;
        // Let the server settle before the baseline.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let baseline_kib = memory_kib(server.pid).map_or(0, |(rss, _)| rss);
        let sampler = Sampler::start(server.pid);
        Ok(Run {
            server,
            sampler,
            baseline_kib,
            started: Instant::now(),
            refused: Refused::default(),
        })
    }

    /// The JSON line: the common fields, then the scenario's.
    async fn finish(mut self, scenario: &str, args: &Args, extra: Value) -> Value {
        let (peak_sampled, hwm) = self.sampler.peaks(self.server.pid);
        let end_rss = memory_kib(self.server.pid).map_or(0, |(rss, _)| rss);
        let alive = self.server.alive();
        let (disk_bytes, disk_files) = disk_usage(&self.server.data);
        let (warnings, first_warnings) = self.server.warnings();
        let mut line = json!({
            "bench": "attack",
            "scenario": scenario,
            "server": args.spawn,
            "server_args": args.server_args,
            "peak_rss_mib": mib(hwm.max(peak_sampled)),
            "peak_sampled_rss_mib": mib(peak_sampled),
            "baseline_rss_mib": mib(self.baseline_kib),
            "end_rss_mib": mib(end_rss),
            "server_alive": alive,
            "refused": self.refused.json(),
            "refused_total": self.refused.total(),
            "data_dir_mib": mib(disk_bytes / 1024),
            "data_dir_files": disk_files,
            "duration_s": (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            "server_warnings": warnings,
            "first_server_warnings": first_warnings,
        });
        if let (Some(l), Value::Object(e)) = (line.as_object_mut(), extra) {
            l.extend(e);
        }
        self.server.stop().await;
        line
    }
}

fn payload(bytes: usize, tag: u64) -> String {
    let mut s = format!("{tag:016x}");
    s.extend(std::iter::repeat_n('x', bytes.saturating_sub(s.len())));
    s
}

/// Item 5: stored messages are copied into every SYNC of a joiner that never reads.
async fn join_flood(args: &Args) -> anyhow::Result<Value> {
    let run = Run::start(args).await?;
    let session = format!("attack-join-{}", std::process::id());
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    let mut readers = Vec::new();
    for i in 0..args.senders {
        match join(&run.server, &session, &format!("sender{i}")).await {
            Ok((sink, stream)) => {
                readers.push(drain(stream, stop.clone()));
                senders.push(sink);
            }
            Err(kind) => run.refused.add(format!("sender_join_{kind}")),
        }
    }
    let body = payload(args.message_bytes, 0);
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut sink| {
            let frame = Message::text(SendRequest::new(&body).encode(&session));
            let (rate, secs) = (args.rate, args.send_seconds);
            tokio::spawn(async move {
                let r = send_at_rate(&mut sink, rate, secs, |_| frame.clone()).await;
                (r, sink)
            })
        })
        .collect();
    let mut sent = 0;
    let mut sinks = Vec::new();
    for t in tasks {
        let ((n, err), sink) = t.await?;
        sent += n;
        if let Some(e) = err {
            run.refused.add(format!("send_{e}"));
        }
        sinks.push(sink);
    }
    let stored_mib = mib(sent * args.message_bytes as u64 / 1024);
    eprintln!("attack-bench: join_flood: sent {sent} messages ({stored_mib} MiB); joiners next");

    // Joiners: JOIN and never read.
    let mut joiners = Vec::new();
    for i in 0..args.joiners {
        match connect(&run.server, &session).await {
            Ok(mut ws) => match ws.send(join_frame(&session, &format!("joiner{i}"))).await {
                Ok(()) => joiners.push(ws),
                Err(e) => run.refused.add(format!("joiner_{}", ws_error_kind(&e))),
            },
            Err(kind) => run.refused.add(format!("joiner_{kind}")),
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(args.hold_seconds)).await;

    // Now read one frame from each joiner: did it get a SYNC, or was it closed?
    let mut joiner_outcome: BTreeMap<String, u64> = BTreeMap::new();
    for mut ws in joiners {
        let kind = match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().starts_with("_CHUNK") => "sync_chunk",
            Ok(Some(Ok(Message::Text(t)))) if t.as_str().contains("\"SYNC\"") => "sync",
            Ok(Some(Ok(Message::Close(c)))) => {
                *joiner_outcome.entry(close_kind(c.as_ref())).or_default() += 1;
                continue;
            }
            Ok(Some(Ok(_))) => "other_frame",
            Ok(Some(Err(e))) => {
                *joiner_outcome.entry(ws_error_kind(&e)).or_default() += 1;
                continue;
            }
            Ok(None) => "closed",
            Err(_) => "nothing_yet",
        };
        *joiner_outcome.entry(kind.into()).or_default() += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let mut sender_outcome: BTreeMap<String, u64> = BTreeMap::new();
    for r in readers {
        if let Some(kind) = r.await? {
            *sender_outcome.entry(kind).or_default() += 1;
        }
    }
    drop(sinks);
    Ok(run
        .finish(
            "join_flood",
            args,
            json!({
                "senders": args.senders,
                "messages_sent": sent,
                "message_bytes": args.message_bytes,
                "sent_mib": stored_mib,
                "joiners": args.joiners,
                "joiner_outcome": joiner_outcome,
                "senders_closed": sender_outcome,
            }),
        )
        .await)
}

/// Writes one `PUT` of `bytes` bytes over raw TCP; returns the status code (or why none).
async fn put(addr: SocketAddr, path: &str, bytes: usize, seed: u64) -> Result<u16, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect_{:?}", e.kind()).to_lowercase())?;
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nContent-Type: application/octet-stream\r\nContent-Length: {bytes}\r\nConnection: close\r\n\r\n"
    );
    let mut chunk = vec![b'u'; 1 << 20];
    chunk[..8].copy_from_slice(&seed.to_le_bytes());
    let write = async {
        s.write_all(head.as_bytes()).await?;
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            s.write_all(&chunk[..n]).await?;
            // Different content in every MiB, so that nothing is deduplicated.
            chunk[8] = chunk[8].wrapping_add(1);
            left -= n;
        }
        s.flush().await
    };
    // A server that refuses early may close while the body is still being written: read
    // its answer anyway.
    let wrote = write.await;
    let mut buf = vec![0u8; 512];
    let mut got = 0;
    while got < buf.len() {
        match tokio::time::timeout(Duration::from_secs(120), s.read(&mut buf[got..])).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => {
                got += n;
                if buf[..got].windows(2).any(|w| w == b"\r\n") {
                    break;
                }
            }
            Ok(Err(_)) => break,
        }
    }
    match status_code(&buf[..got]) {
        Some(code) => Ok(code),
        None => Err(match wrote {
            Err(e) => format!("write_{:?}", e.kind()).to_lowercase(),
            Ok(()) => "no_status".into(),
        }),
    }
}

fn status_code(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head).ok()?.lines().next()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A `GET` that reads the status line and nothing more; the socket is returned to be
/// held open.
async fn stalled_get(addr: SocketAddr, path: &str) -> Result<(u16, TcpStream), String> {
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    // A small receive window, so that the kernel does not read the file for us.
    let _ = socket.set_recv_buffer_size(4096);
    let mut s = socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect_{:?}", e.kind()).to_lowercase())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write_{:?}", e.kind()).to_lowercase())?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
        .await
        .map_err(|_| "no_status".to_owned())?
        .map_err(|e| format!("read_{:?}", e.kind()).to_lowercase())?;
    let code = status_code(&buf[..n]).ok_or("no_status")?;
    Ok((code, s))
}

/// Item 6: uploads and downloads held in memory.
async fn upload_flood(args: &Args) -> anyhow::Result<Value> {
    let run = Run::start(args).await?;
    let addr = run.server.addr;
    // A live session to upload into, in case the server ties uploads to sessions.
    let session = format!("attack-upload-{}", std::process::id());
    let stop = Arc::new(AtomicBool::new(false));
    let holder = match join(&run.server, &session, "uploader").await {
        Ok((sink, stream)) => Some((sink, drain(stream, stop.clone()))),
        Err(kind) => {
            run.refused.add(format!("session_join_{kind}"));
            None
        }
    };
    let bytes = args.upload_mib << 20;
    let paths: Vec<String> = (0..args.uploads)
        .map(|i| format!("/files/snapshots/{session}/attack-{i}.snap"))
        .collect();
    let t0 = Instant::now();
    let tasks: Vec<_> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let p = p.clone();
            tokio::spawn(async move { put(addr, &p, bytes, i as u64).await })
        })
        .collect();
    let mut put_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut stored = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let kind = match t.await? {
            Ok(code) => {
                if (200..300).contains(&code) {
                    stored.push(paths[i].clone());
                } else {
                    run.refused.add(format!("put_http_{code}"));
                }
                code.to_string()
            }
            Err(e) => {
                run.refused.add(format!("put_{e}"));
                e
            }
        };
        *put_status.entry(kind).or_default() += 1;
    }
    let upload_s = t0.elapsed().as_secs_f64();
    eprintln!(
        "attack-bench: upload_flood: {} of {} uploads stored in {upload_s:.1} s; downloads next",
        stored.len(),
        args.uploads
    );
    let target = stored.first().cloned().unwrap_or_else(|| paths[0].clone());
    let mut get_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut held = Vec::new();
    for _ in 0..args.downloads {
        match stalled_get(addr, &target).await {
            Ok((code, s)) => {
                if !(200..300).contains(&code) {
                    run.refused.add(format!("get_http_{code}"));
                }
                *get_status.entry(code.to_string()).or_default() += 1;
                held.push(s);
            }
            Err(e) => {
                run.refused.add(format!("get_{e}"));
                *get_status.entry(e).or_default() += 1;
            }
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(args.hold_seconds)).await;
    drop(held);
    stop.store(true, Ordering::Relaxed);
    if let Some((sink, reader)) = holder {
        let _ = reader.await;
        drop(sink);
    }
    Ok(run
        .finish(
            "upload_flood",
            args,
            json!({
                "uploads": args.uploads,
                "upload_mib": args.upload_mib,
                "uploads_stored": stored.len(),
                "upload_s": (upload_s * 10.0).round() / 10.0,
                "put_status": put_status,
                "downloads": args.downloads,
                "get_status": get_status,
            }),
        )
        .await)
}

/// Item 10: one connection per session. Sessions that a limit refuses are retried in
/// waves: the open connections are closed, then the next wave opens as many as the last
/// one could.
async fn many_sessions(args: &Args) -> anyhow::Result<Value> {
    let run = Run::start(args).await?;
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
    let pid = std::process::id();
    let stop = Arc::new(AtomicBool::new(false));
    let mut pending: Vec<usize> = (0..args.sessions).collect();
    let mut joined_total = 0usize;
    let mut max_open = 0usize;
    let mut waves = 0usize;
    let mut first_wave_refused: BTreeMap<String, u64> = BTreeMap::new();
    let mut open: Vec<(Sink, tokio::task::JoinHandle<Option<String>>)> = Vec::new();
    let server = Arc::new(run.server);
    while !pending.is_empty() && Instant::now() < deadline {
        waves += 1;
        let mut refused_now: Vec<usize> = Vec::new();
        // Connect with bounded concurrency.
        let sem = Arc::new(tokio::sync::Semaphore::new(64));
        let tasks: Vec<_> = pending
            .iter()
            .map(|&i| {
                let (server, sem) = (Arc::clone(&server), Arc::clone(&sem));
                tokio::spawn(async move {
                    let _permit = sem.acquire_owned().await;
                    let session = format!("attack-s{pid}-{i}");
                    (i, join(&server, &session, "u").await)
                })
            })
            .collect();
        for t in tasks {
            let (i, r) = t.await?;
            match r {
                Ok((sink, stream)) => {
                    open.push((sink, drain(stream, stop.clone())));
                    joined_total += 1;
                }
                Err(kind) => {
                    run.refused.add(kind.clone());
                    if waves == 1 {
                        *first_wave_refused.entry(kind).or_default() += 1;
                    }
                    refused_now.push(i);
                }
            }
        }
        let opened = open.len();
        max_open = max_open.max(opened);
        eprintln!(
            "attack-bench: many_sessions: wave {waves}: {opened} open, {} refused",
            refused_now.len()
        );
        if opened == 0 || refused_now.is_empty() || Instant::now() >= deadline {
            pending = refused_now;
            break;
        }
        // Close this wave before the next one (a per-address cap counts open connections).
        pending = refused_now;
        for (mut sink, reader) in open.drain(..) {
            let _ = sink.close().await;
            reader.abort();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(Duration::from_secs_f64(args.wave_pause).min(left)).await;
    }
    let unjoined = pending.len();
    tokio::time::sleep(Duration::from_secs_f64(args.hold_seconds.min(5.0))).await;
    stop.store(true, Ordering::Relaxed);
    for (sink, reader) in open.drain(..) {
        reader.abort();
        drop(sink);
    }
    let server = Arc::try_unwrap(server)
        .map_err(|_| anyhow::anyhow!("a connection task still holds the server"))?;
    let run = Run { server, ..run };
    Ok(run
        .finish(
            "many_sessions",
            args,
            json!({
                "sessions": args.sessions,
                "sessions_joined": joined_total,
                "sessions_never_joined": unjoined,
                "max_open_connections": max_open,
                "waves": waves,
                "first_wave_refused": first_wave_refused,
            }),
        )
        .await)
}

/// Item 9: unique, long debounce ids.
async fn debounce_flood(args: &Args) -> anyhow::Result<Value> {
    let run = Run::start(args).await?;
    let session = format!("attack-debounce-{}", std::process::id());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut readers = Vec::new();
    for c in 0..args.senders {
        match join(&run.server, &session, &format!("sender{c}")).await {
            Ok((mut sink, stream)) => {
                readers.push(drain(stream, stop.clone()));
                let (rate, secs, bytes) = (args.rate, args.debounce_seconds, args.message_bytes);
                let session = session.clone();
                tasks.push(tokio::spawn(async move {
                    let r = send_at_rate(&mut sink, rate, secs, |n| {
                        let id = payload(bytes, ((c as u64) << 48) | n);
                        let tags = SendTags {
                            debounce: Some(1000.0),
                            msg_id: Some(id),
                        };
                        Message::text(
                            SendRequest {
                                tags: Some(tags),
                                ..SendRequest::new("x")
                            }
                            .encode(&session),
                        )
                    })
                    .await;
                    (r, sink)
                }));
            }
            Err(kind) => run.refused.add(format!("sender_join_{kind}")),
        }
    }
    let mut sent = 0;
    let mut sinks = Vec::new();
    for t in tasks {
        let ((n, err), sink) = t.await?;
        sent += n;
        if let Some(e) = err {
            run.refused.add(format!("send_{e}"));
        }
        sinks.push(sink);
    }
    tokio::time::sleep(Duration::from_secs_f64(args.hold_seconds.min(5.0))).await;
    stop.store(true, Ordering::Relaxed);
    let mut closed: BTreeMap<String, u64> = BTreeMap::new();
    for r in readers {
        if let Some(kind) = r.await? {
            *closed.entry(kind).or_default() += 1;
        }
    }
    drop(sinks);
    Ok(run
        .finish(
            "debounce_flood",
            args,
            json!({
                "senders": args.senders,
                "messages_sent": sent,
                "msg_id_bytes": args.message_bytes,
                "senders_closed": closed,
            }),
        )
        .await)
}

/// The JSON line with `bench` and `scenario` first (serde_json sorts the other keys).
fn bench_first(mut line: Value) -> String {
    let head = match line.as_object_mut() {
        Some(m) => json!({"bench": m.remove("bench"), "scenario": m.remove("scenario")}),
        None => return line.to_string(),
    };
    let (head, rest) = (head.to_string(), line.to_string());
    match (head.strip_suffix('}'), rest.strip_prefix('{')) {
        (Some(h), Some(r)) if r != "}" => format!("{h},{r}"),
        _ => head,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let chosen: Vec<&str> = match &args.scenario {
        Some(s) if SCENARIOS.contains(&s.as_str()) => vec![s.as_str()],
        Some(s) => bail!("unknown scenario {s:?}; one of {}", SCENARIOS.join(", ")),
        None => SCENARIOS.to_vec(),
    };
    let mut failed = false;
    for name in chosen {
        eprintln!("attack-bench: {name} against {}", args.spawn);
        let limit = Duration::from_secs_f64(args.timeout + 120.0);
        let result = match name {
            "join_flood" => tokio::time::timeout(limit, join_flood(&args)).await,
            "upload_flood" => tokio::time::timeout(limit, upload_flood(&args)).await,
            "many_sessions" => tokio::time::timeout(limit, many_sessions(&args)).await,
            _ => tokio::time::timeout(limit, debounce_flood(&args)).await,
        };
        match result {
            Ok(Ok(line)) => println!("{}", bench_first(line)),
            Ok(Err(e)) => {
                failed = true;
                eprintln!("attack-bench: {name} failed: {e:#}");
            }
            Err(_) => {
                failed = true;
                eprintln!("attack-bench: {name} did not finish in time");
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}
