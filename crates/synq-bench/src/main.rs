//! `synq-bench`: drives S sessions × C clients × M messages of P bytes through a reflector
//! over the raw protocol and prints one JSON line on stdout: deliveries/s, latency
//! p50/p99/max, and the CPU seconds of the server process (and of this load generator).
//! Everything else goes to stderr.
//!
//! Latency is measured from the moment a client sends a message to the moment each client
//! of the session receives it (same process, same clock). Received frames are not parsed as
//! JSON: the payload is found by position, so that the load generator is not the bottleneck.
//!
//! Phases: every client connects, JOINs, waits for its SYNC and for the `users` announcement
//! that counts all C clients of its session; then all clients start at once (a barrier). The
//! server's CPU time is read at the start and when the last client has received everything
//! (or the idle period or the overall timeout is over), before any socket is closed.

#![forbid(unsafe_code)]
// Not model code: a load generator that measures wall-clock time (clippy.toml's determinism
// rules are for model code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::net::IpAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::json;
use synq_protocol::ServerFrame;
use synq_protocol::action::{self, JoinRequest, JoinUser, SendRequest, TickConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Parser, Clone, Debug)]
#[command(about = "Benchmark a reflector over loopback: prints one JSON line on stdout")]
struct Args {
    /// Reflector base URL; the session id is appended. Loopback hosts only. Several,
    /// comma-separated (the nodes of a cluster): client k of the run connects to URL
    /// k mod n, so a session's clients are spread over the nodes.
    #[arg(long, default_value = "ws://127.0.0.1:8080/reflector")]
    url: String,
    /// With several --url: session s's clients all connect to URL s mod n (a balancer
    /// that keeps a session's clients together), instead of spreading each session's
    /// clients over the URLs.
    #[arg(long)]
    by_session: bool,
    /// Number of sessions.
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// Clients per session.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Messages each client sends.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Payload bytes per message (at least the ~24 bytes of sender index and timestamp).
    #[arg(long, default_value_t = 64)]
    bytes: usize,
    /// Messages per second per client; 0 = as fast as possible with --window messages in
    /// flight per client.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Messages a client may have sent but not yet received back, when --rate 0.
    #[arg(long, default_value_t = 32)]
    window: u64,
    /// With --rate > 0, all clients send at the same instants instead of spreading their
    /// first send over one period.
    #[arg(long)]
    burst: bool,
    /// Ticks per second asked for in JOIN (`ticks: {tick: 1000/tps}`); 0 = no idle ticks.
    #[arg(long, default_value_t = 20.0)]
    tps: f64,
    /// Idle mode: send nothing for this many seconds and measure the server's CPU for
    /// ticking S×C connected clients.
    #[arg(long)]
    idle_seconds: Option<f64>,
    /// PID of the server, to report its CPU time (utime + stime from /proc/PID/stat).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Another process whose CPU time is reported beside the server's (repeatable): the
    /// other nodes of a cluster, its NATS server.
    #[arg(long)]
    also_pid: Vec<u32>,
    /// Start this `synq` binary as `serve --listen 127.0.0.1:0 --data-dir <tmp>`, benchmark
    /// it, and kill it at the end (ignores --url and --server-pid).
    #[arg(long)]
    spawn: Option<String>,
    /// Extra argument for the spawned server (repeatable), e.g. --server-arg=--durability=fsync.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Overall time limit in seconds (joining included); what arrived by then is reported.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Worker threads of the load generator [default: number of CPUs].
    #[arg(long)]
    threads: Option<usize>,
    /// Clients connecting and joining at the same time; the others wait for a turn.
    /// Thousands of simultaneous connects overflow the listen backlog: SYNs are dropped
    /// and retried seconds later, and some handshakes outlast the server's header timeout.
    #[arg(long, default_value_t = 256)]
    join_concurrency: usize,
}

/// The user-time and system-time clock rate of /proc/PID/stat.
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of a process (all its threads), in seconds.
fn cpu_seconds(pid: &str, hz: f64) -> Option<f64> {
    cpu_split(pid, hz).map(|(u, s)| u + s)
}

/// (utime, stime) of a process (all its threads), in seconds.
fn cpu_split(pid: &str, hz: f64) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may contain spaces) start after ") ".
    let rest = stat.rsplit_once(") ")?.1;
    let mut f = rest.split_whitespace().skip(11);
    let utime: f64 = f.next()?.parse().ok()?;
    let stime: f64 = f.next()?.parse().ok()?;
    Some((utime / hz, stime / hz))
}

/// Open file descriptors of a process.
fn open_fds(pid: &str) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// Descriptors this process needs besides its clients' sockets (stdio, the runtime's
/// epoll and wake-up descriptors, a spawned server's pipe, /proc reads).
const OWN_FDS: u64 = 32;

/// Raises the open-files soft limit to the hard limit and checks that `clients` sockets
/// fit under it: one process cannot open more, and a run that hits the limit half-way
/// would measure nothing.
fn open_files_for(clients: usize) -> anyhow::Result<()> {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("synq-bench: cannot raise the open-files limit: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    let need = clients as u64 + OWN_FDS;
    if need > limit {
        bail!(
            "{clients} clients need about {need} open files, but this process may open {limit} \
             (the hard limit; raise it with `ulimit -Hn` as root or LimitNOFILE=, or run \
             several synq-bench processes with fewer sessions each)"
        );
    }
    eprintln!("synq-bench: open-files limit {limit}");
    Ok(())
}

/// Resident memory of a process (VmRSS), in KiB.
fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Refuses anything but a loopback `ws://` URL: the load is real.
fn check_loopback(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("ws://")
        .context("--url must start with ws://")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or_default()
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let ok = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !ok {
        bail!(
            "--url host {host:?} is not a loopback address; synq-bench only targets this machine"
        );
    }
    Ok(())
}

/// Flow control shared by the clients of one session, for --rate 0: a client sends only
/// while the slowest reader of its session is less than `2 × window × clients` messages behind,
/// so that fast clients cannot bury a slow reader (the server would rightly disconnect it).
struct Flow {
    sent: AtomicU64,
    delivered: Vec<Slot>,
    /// Set by a sender that waits for a slow reader; readers then wake it.
    waiting: AtomicBool,
    caught_up: Notify,
}

/// One client's delivery count, on its own cache line.
#[repr(align(64))]
#[derive(Default)]
struct Slot(AtomicU64);

impl Flow {
    fn new(clients: usize) -> Self {
        Flow {
            sent: AtomicU64::new(0),
            delivered: (0..clients).map(|_| Slot::default()).collect(),
            waiting: AtomicBool::new(false),
            caught_up: Notify::new(),
        }
    }

    /// How many session messages the slowest reader has yet to receive.
    fn lag(&self) -> u64 {
        let slowest = self
            .delivered
            .iter()
            .map(|d| d.0.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        self.sent.load(Ordering::Relaxed).saturating_sub(slowest)
    }

    /// Waits until the slowest reader is less than `limit` messages behind.
    async fn wait_for_readers(&self, limit: u64) {
        loop {
            let caught_up = self.caught_up.notified();
            tokio::pin!(caught_up);
            caught_up.as_mut().enable();
            if self.lag() < limit {
                return;
            }
            self.waiting.store(true, Ordering::Release);
            // The timeout covers a wake-up lost between a reader's check and the flag.
            let _ = tokio::time::timeout(Duration::from_millis(5), caught_up).await;
        }
    }

    /// A reader made progress: wake senders waiting for it.
    fn delivered(&self, index: usize, count: u64) {
        if let Some(slot) = self.delivered.get(index) {
            slot.0.store(count, Ordering::Relaxed);
        }
        if self.waiting.load(Ordering::Relaxed) && self.waiting.swap(false, Ordering::AcqRel) {
            self.caught_up.notify_waiters();
        }
    }
}

/// What one client reports, once.
#[derive(Default)]
struct ClientResult {
    hist: Option<Histogram<u64>>,
    delivered: u64,
    sent: u64,
    ticks: u64,
    /// Since t0.
    last_delivery: Duration,
    error: Option<String>,
}

struct Ctx {
    args: Args,
    /// The reflector URLs (--url), for client k: `urls[k % n]`.
    urls: Vec<String>,
    t0: Instant,
    /// Number of clients in all sessions.
    total: usize,
    ready: mpsc::UnboundedSender<()>,
    results: mpsc::UnboundedSender<ClientResult>,
    start: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
    /// Turns to connect and join (--join-concurrency).
    joining: tokio::sync::Semaphore,
}

/// Waits until the flag is set (or its sender is gone).
async fn wait_flag(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// The sender index and send time (ns since t0) in a RECV frame
/// `{"id":…,"action":"RECV","args":[time,seq,"<index>:<ns>:xxx…",…]}`, found by position.
fn sent_stamp(frame: &str) -> Option<(u64, u64)> {
    let args = frame.find("\"args\":[")? + 8;
    let rest = frame.get(args..)?.as_bytes();
    let q = rest.iter().position(|&b| b == b'"' || b == b'{')?;
    if rest[q] != b'"' {
        return None; // an object payload (users, tally)
    }
    let mut it = rest[q + 1..].splitn(3, |&b| b == b':');
    let index = parse_u64(it.next()?)?;
    let ns = parse_u64(it.next()?)?;
    Some((index, ns))
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The `active` count of a `users` announcement after SYNC, if the frame is one.
fn users_active(frame: &str) -> Option<u64> {
    // Ticks pass here too while a session fills: parse only what may be an announcement.
    if !frame.contains("\"what\":\"users\"") {
        return None;
    }
    match ServerFrame::parse(frame).ok()? {
        ServerFrame::Recv(m) => m.users()?.active,
        _ => None,
    }
}

fn is_sync(frame: &str) -> bool {
    matches!(ServerFrame::parse(frame), Ok(ServerFrame::Sync(_)))
}

/// The JOIN of client `global`: a string user, ticks at `tps` (0: no idle ticks).
fn join_frame(session: &str, global: u64, tps: f64) -> String {
    let tick = if tps > 0.0 { 1000.0 / tps } else { 0.0 };
    JoinRequest {
        name: format!("bench/{session}"),
        app_id: "bench".into(),
        user: JoinUser::Name(format!("v{global}")),
        ticks: Some(TickConfig {
            tick: Some(tick),
            delay: Some(0.0),
            scale: None,
        }),
        ..JoinRequest::default()
    }
    .encode(session)
}

/// The SEND of message `ns` of client `index`: the stamp first in the payload, at a
/// fixed position of the RECV that [`sent_stamp`] reads.
fn send_frame(session: &str, index: u64, ns: u64, pad: &str) -> String {
    // Fixed-width timestamp, so that every payload has the same size.
    let payload = format!("{index}:{ns:020}:{pad}");
    SendRequest::new(&payload).encode(session)
}

fn action_is(frame: &str, action: &str) -> bool {
    frame
        .find("\"action\":\"")
        .and_then(|i| frame.get(i + 10..))
        .is_some_and(|r| r.starts_with(action) && r.as_bytes().get(action.len()) == Some(&b'"'))
}

async fn client(ctx: Arc<Ctx>, session: String, index: u64, global: u64, flow: Arc<Flow>) {
    let mut stop = ctx.stop.clone();
    let result = run_client(&ctx, &session, index, global, flow).await;
    match result {
        Ok((r, ws)) => {
            let _ = ctx.results.send(r);
            // Keep the connection open (and read from it) until every client is done, so
            // that closing does not fall into the measured interval.
            if let Some((sink, mut stream)) = ws {
                let drain = async { while let Some(Ok(_)) = stream.next().await {} };
                tokio::select! {
                    _ = drain => {}
                    _ = wait_flag(&mut stop) => {}
                }
                if let Ok(mut ws) = sink.reunite(stream) {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                }
            }
        }
        Err((e, partial)) => {
            let mut r = partial.unwrap_or_default();
            r.error = Some(format!("{session}/{index}: {e:#}"));
            let _ = ctx.results.send(r);
        }
    }
}

type Halves = (SplitSink<Ws, Message>, SplitStream<Ws>);
type ClientOutcome = Result<(ClientResult, Option<Halves>), (anyhow::Error, Option<ClientResult>)>;

/// Connects, JOINs, and waits for SYNC and for the announcement that counts all clients
/// of the session.
async fn join(ctx: &Ctx, session: &str, global: u64) -> anyhow::Result<Halves> {
    // Until SYNC: waiting for the session's other clients must not hold a turn.
    let mut turn = Some(ctx.joining.acquire().await?);
    let args = &ctx.args;
    let k = if args.by_session {
        global as usize / args.clients.max(1)
    } else {
        global as usize
    };
    let url = &ctx.urls[k % ctx.urls.len()];
    let url = format!("{}/{}", url.trim_end_matches('/'), session);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(&url, None, true)
        .await
        .with_context(|| format!("connect {url}"))?;
    let (mut sink, mut stream) = ws.split();
    let join = join_frame(session, global, args.tps);
    sink.send(Message::Text(join.into())).await?;

    // SYNC, then the announcement that counts all clients of the session.
    let mut synced = false;
    loop {
        let frame = match stream.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(c))) => {
                bail!("closed while joining: {c:?}")
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed while joining"),
        };
        let frame = frame.as_str();
        if !synced {
            synced = is_sync(frame);
            if synced {
                drop(turn.take());
            }
        } else if users_active(frame) == Some(args.clients as u64) {
            break;
        }
    }
    Ok((sink, stream))
}

async fn run_client(
    ctx: &Ctx,
    session: &str,
    index: u64,
    global: u64,
    flow: Arc<Flow>,
) -> ClientOutcome {
    let args = &ctx.args;
    let mut stop = ctx.stop.clone();
    let (mut sink, mut stream) = tokio::select! {
        r = join(ctx, session, global) => r.map_err(|e| (e, None))?,
        _ = wait_flag(&mut stop) => return Err((anyhow::anyhow!("stopped before joining"), None)),
    };
    let _ = ctx.ready.send(());
    let mut start = ctx.start.clone();
    // Idle mode: until the start, read and drop what comes (ticks, announcements of later
    // joiners), as a real client would: a backlog of ticks read after the start would be
    // counted as ticks of the measured interval (a run of 19,800 clients takes a minute to
    // join on a busy machine). PULSE as in the idle phase, so that no inactivity timeout
    // hits. Not with messages: a client that has not yet seen the start would drop the
    // first messages of a client that has.
    let waiting = async {
        if args.idle_seconds.is_none() {
            std::future::pending::<()>().await;
        }
        let mut pulse = pulse_interval();
        loop {
            tokio::select! {
                m = stream.next() => match m {
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                _ = pulse.tick() => {
                    if sink.send(Message::Text(action::pulse().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
        // Ended or closed: the client's first read after the start reports it.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = wait_flag(&mut start) => {}
        _ = wait_flag(&mut stop) => {}
        () = waiting => {}
    }
    if *stop.borrow() {
        return Err((anyhow::anyhow!("stopped before the start"), None));
    }

    if args.idle_seconds.is_some() {
        return idle(ctx, sink, stream).await;
    }

    let expected = (args.clients * args.messages) as u64;
    let own = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Notify::new());
    let sender = tokio::spawn(send_loop(
        SendCtx {
            args: ctx.args.clone(),
            t0: ctx.t0,
            session: session.to_owned(),
            index,
            phase: global as f64 / ctx.total.max(1) as f64,
            own: Arc::clone(&own),
            progress: Arc::clone(&progress),
            sent: Arc::clone(&sent),
            flow: Arc::clone(&flow),
        },
        sink,
    ));
    let mut r = ClientResult {
        hist: Some(Histogram::new(3).map_err(|e| (e.into(), None))?),
        ..ClientResult::default()
    };
    let mut failure = None;
    while r.delivered < expected {
        let m = tokio::select! {
            m = stream.next() => m,
            _ = wait_flag(&mut stop) => {
                failure = Some(anyhow::anyhow!("timed out"));
                break;
            }
        };
        let frame = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(c))) => {
                failure = Some(anyhow::anyhow!("closed by the server: {c:?}"));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                failure = Some(e.into());
                break;
            }
            None => {
                failure = Some(anyhow::anyhow!("connection ended"));
                break;
            }
        };
        let frame = frame.as_str();
        if let Some((from, sent_ns)) = sent_stamp(frame) {
            let now = ctx.t0.elapsed();
            let micros = (now.as_nanos() as u64).saturating_sub(sent_ns) / 1000;
            if let Some(h) = r.hist.as_mut() {
                let _ = h.record(micros.max(1));
            }
            r.delivered += 1;
            r.last_delivery = now;
            flow.delivered(index as usize, r.delivered);
            if from == index {
                own.fetch_add(1, Ordering::Release);
                progress.notify_one();
            }
        } else if action_is(frame, "TICK") {
            r.ticks += 1;
        }
    }
    if let Some(e) = failure {
        sender.abort();
        r.sent = sent.load(Ordering::Relaxed);
        let e = e.context(format!(
            "after {} of {expected} deliveries; {} of its {} sent messages came back",
            r.delivered,
            own.load(Ordering::Relaxed),
            r.sent
        ));
        return Err((e, Some(r)));
    }
    let outcome = sender.await;
    r.sent = sent.load(Ordering::Relaxed);
    match outcome {
        Ok(Ok(sink)) => Ok((r, Some((sink, stream)))),
        Ok(Err(e)) => Err((e, Some(r))),
        Err(e) => Err((e.into(), Some(r))),
    }
}

struct SendCtx {
    args: Args,
    t0: Instant,
    session: String,
    index: u64,
    /// Where in the period this client sends first (0..1), unless --burst.
    phase: f64,
    /// Own messages received back, and a wake-up when one arrives.
    own: Arc<AtomicU64>,
    progress: Arc<Notify>,
    sent: Arc<AtomicU64>,
    flow: Arc<Flow>,
}

async fn send_loop(
    c: SendCtx,
    mut sink: SplitSink<Ws, Message>,
) -> anyhow::Result<SplitSink<Ws, Message>> {
    let SendCtx {
        args,
        t0,
        session,
        index,
        phase,
        own,
        progress,
        sent,
        flow,
    } = c;
    let head_len = format!("{index}:{}:", u64::MAX).len();
    // Twice what the clients' own windows allow in flight: only a reader that falls behind
    // the others is waited for.
    let session_window = args
        .window
        .saturating_mul(args.clients as u64)
        .saturating_mul(2);
    let pad = "x".repeat(args.bytes.saturating_sub(head_len));
    let period = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    let first = tokio::time::Instant::now()
        + match period {
            Some(p) if !args.burst => p.mul_f64(phase),
            _ => Duration::ZERO,
        };
    for k in 0..args.messages as u64 {
        match period {
            // Open loop: message k is due at first + k × period, whatever happened before.
            Some(p) => tokio::time::sleep_until(first + p * k as u32).await,
            None => {
                while k >= own.load(Ordering::Acquire) + args.window {
                    progress.notified().await;
                }
                // A slow reader elsewhere in the session: wait for it to catch up.
                flow.wait_for_readers(session_window).await;
            }
        }
        let ns = t0.elapsed().as_nanos() as u64;
        let frame = send_frame(&session, index, ns, &pad);
        flow.sent.fetch_add(1, Ordering::Relaxed);
        sink.send(Message::Text(frame.into())).await?;
        sent.fetch_add(1, Ordering::Relaxed);
    }
    Ok(sink)
}

/// A PULSE every 20 s, the first 20 s from now (the server's inactivity timeout is 60 s).
fn pulse_interval() -> tokio::time::Interval {
    tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(20),
        Duration::from_secs(20),
    )
}

/// Idle mode: count ticks until stopped; PULSE now and then so that no inactivity timeout hits.
async fn idle(
    ctx: &Ctx,
    mut sink: SplitSink<Ws, Message>,
    mut stream: SplitStream<Ws>,
) -> ClientOutcome {
    let mut r = ClientResult::default();
    let mut stop = ctx.stop.clone();
    let mut pulse = pulse_interval();
    loop {
        tokio::select! {
            m = stream.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if action_is(t.as_str(), "TICK") {
                        r.ticks += 1;
                    }
                }
                Some(Ok(Message::Close(c))) => {
                    return Err((anyhow::anyhow!("closed by the server: {c:?}"), Some(r)));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err((e.into(), Some(r))),
                None => return Err((anyhow::anyhow!("connection ended"), Some(r))),
            },
            _ = pulse.tick() => {
                if let Err(e) = sink.send(Message::Text(action::pulse().into())).await {
                    return Err((e.into(), Some(r)));
                }
            }
            _ = wait_flag(&mut stop) => break,
        }
    }
    Ok((r, Some((sink, stream))))
}

/// A server started by `--spawn`, killed when dropped.
struct Spawned {
    child: tokio::process::Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Spawned {
    async fn start(bin: &str, extra: &[String]) -> anyhow::Result<(Self, String, Vec<String>)> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("server.log");
        let data = dir.path().join("data");
        let has = |flag: &str| {
            extra
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        };
        let mut server_args: Vec<String> = Vec::new();
        // The default per-client rate limit (100/s) would cut a saturation run short.
        if !has("--client-rate-limit") {
            server_args.extend(["--client-rate-limit".into(), "0".into()]);
        }
        // Every client of the load generator comes from 127.0.0.1: the per-address caps
        // (made for a public server) and the session cap would refuse a large run.
        for flag in [
            "--max-sessions",
            "--max-sessions-per-address",
            "--max-connections-per-address",
            "--max-connections",
        ] {
            if !has(flag) {
                server_args.extend([flag.into(), "0".into()]);
            }
        }
        server_args.extend(extra.iter().cloned());
        let mut c = tokio::process::Command::new(bin)
            // No AI: the embedded model would load in the background and skew the figures.
            .args(["serve", "--listen", "127.0.0.1:0", "--no-ai", "--data-dir"])
            .arg(&data)
            .args(&server_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {bin}"))?;
        let mut out = BufReader::new(c.stdout.take().context("no stdout")?);
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(15), out.read_line(&mut line)).await;
        let spawned = Spawned {
            child: c,
            log,
            _dir: dir,
        };
        if !matches!(read, Ok(Ok(n)) if n > 0) {
            spawned.tail_log(20);
            bail!("{bin} did not print its listening line");
        }
        let addr = line
            .trim()
            .strip_prefix("synq: listening on http://")
            .with_context(|| format!("unexpected first line from {bin}: {line:?}"))?
            .trim_end_matches('/')
            .to_owned();
        // Keep reading stdout so that the server never writes into a closed pipe.
        tokio::spawn(async move {
            let mut line = String::new();
            while let Ok(n) = out.read_line(&mut line).await {
                if n == 0 {
                    break;
                }
                eprint!("server: {line}");
                line.clear();
            }
        });
        Ok((spawned, addr, server_args))
    }

    fn tail_log(&self, lines: usize) {
        if let Ok(text) = std::fs::read_to_string(&self.log) {
            let all: Vec<&str> = text.lines().collect();
            for l in &all[all.len().saturating_sub(lines)..] {
                eprintln!("server: {l}");
            }
        }
    }

    fn warnings(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|t| {
                t.lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .count()
            })
            .unwrap_or(0)
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let code = rt.enable_all().build()?.block_on(run(args))?;
    std::process::exit(code);
}

async fn run(mut args: Args) -> anyhow::Result<i32> {
    if args.sessions == 0 || args.clients == 0 {
        bail!("--sessions and --clients must be at least 1");
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a number >= 0");
    }
    if args.rate == 0.0 && args.window == 0 {
        bail!("--window must be at least 1");
    }
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        bail!("--timeout must be positive");
    }
    open_files_for(args.sessions.saturating_mul(args.clients))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.timeout);
    let hz = clock_ticks_per_second();
    let mut spawned = None;
    if let Some(bin) = args.spawn.clone() {
        let (s, addr, server_args) = Spawned::start(&bin, &args.server_args).await?;
        eprintln!(
            "synq-bench: started {bin} (pid {:?}) on {addr}",
            s.child.id()
        );
        args.url = format!("ws://{addr}/reflector");
        args.server_pid = s.child.id();
        args.server_args = server_args;
        spawned = Some(s);
    }
    let urls: Vec<String> = args.url.split(',').map(str::to_owned).collect();
    for url in &urls {
        check_loopback(url)?;
    }
    let server_pid = args.server_pid.map(|p| p.to_string());
    if let Some(pid) = &server_pid
        && cpu_seconds(pid, hz).is_none()
    {
        eprintln!("synq-bench: cannot read /proc/{pid}/stat; server CPU will be null");
    }
    let rss_before = server_pid.as_deref().and_then(rss_kib);

    let total = args.sessions * args.clients;
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (results_tx, mut results_rx) = mpsc::unbounded_channel();
    let (start_tx, start_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let run_id = format!("b{}x{nanos:08x}", std::process::id());
    let ctx = Arc::new(Ctx {
        urls,
        args: args.clone(),
        t0: Instant::now(),
        total,
        ready: ready_tx,
        results: results_tx,
        start: start_rx,
        stop: stop_rx,
        joining: tokio::sync::Semaphore::new(args.join_concurrency.max(1)),
    });
    let mut tasks = Vec::with_capacity(total);
    for s in 0..args.sessions {
        let flow = Arc::new(Flow::new(args.clients));
        for c in 0..args.clients {
            tasks.push(tokio::spawn(client(
                Arc::clone(&ctx),
                format!("{run_id}-s{s}"),
                c as u64,
                (s * args.clients + c) as u64,
                Arc::clone(&flow),
            )));
        }
    }

    // Barrier: everyone joined and saw all clients of their session.
    let mut errors: Vec<String> = Vec::new();
    let mut results: Vec<ClientResult> = Vec::with_capacity(total);
    let mut ready = 0;
    let joined_all = loop {
        if ready == total {
            break true;
        }
        tokio::select! {
            r = ready_rx.recv() => match r {
                Some(()) => ready += 1,
                None => break false,
            },
            r = results_rx.recv() => match r {
                Some(r) => {
                    if let Some(e) = &r.error {
                        eprintln!("synq-bench: a client failed while joining: {e}");
                    }
                    results.push(r);
                    break false;
                }
                None => break false,
            },
            _ = tokio::time::sleep_until(deadline) => break false,
        }
    };
    let join_s = ctx.t0.elapsed().as_secs_f64();
    eprintln!(
        "synq-bench: {ready}/{total} clients joined in {join_s:.2} s{}",
        if joined_all { "" } else { "; giving up" }
    );

    let started = ctx.t0.elapsed();
    let server_cpu0 = server_pid.as_deref().and_then(|p| cpu_split(p, hz));
    let also_pids: Vec<String> = args.also_pid.iter().map(u32::to_string).collect();
    let also_cpu0: Vec<Option<f64>> = also_pids.iter().map(|p| cpu_seconds(p, hz)).collect();
    let rss_joined = server_pid.as_deref().and_then(rss_kib);
    let fds_joined = server_pid.as_deref().and_then(open_fds);
    let own_cpu0 = cpu_seconds("self", hz);
    let mut end = started;
    if joined_all {
        let _ = start_tx.send(true);
        if let Some(idle) = args.idle_seconds {
            let until = (tokio::time::Instant::now() + Duration::from_secs_f64(idle)).min(deadline);
            // A client that fails early reports at once; the others keep idling.
            let collect = async {
                while let Some(r) = results_rx.recv().await {
                    results.push(r);
                }
            };
            let _ = tokio::time::timeout_at(until, collect).await;
            end = ctx.t0.elapsed();
        } else {
            while results.len() < total {
                tokio::select! {
                    r = results_rx.recv() => match r {
                        Some(r) => results.push(r),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => {
                        eprintln!("synq-bench: overall timeout; reporting what arrived");
                        break;
                    }
                }
            }
            end = ctx.t0.elapsed();
        }
    }
    let server_cpu1 = server_pid.as_deref().and_then(|p| cpu_split(p, hz));
    let also_cpu1: Vec<Option<f64>> = also_pids.iter().map(|p| cpu_seconds(p, hz)).collect();
    let own_cpu1 = cpu_seconds("self", hz);
    let rss_end = server_pid.as_deref().and_then(rss_kib);
    let fds_end = server_pid.as_deref().and_then(open_fds);

    // Everyone stops; late reports (partial counts) are still collected.
    let _ = stop_tx.send(true);
    let grace = tokio::time::Instant::now() + Duration::from_secs(5);
    while results.len() < total {
        match tokio::time::timeout_at(grace, results_rx.recv()).await {
            Ok(Some(r)) => results.push(r),
            _ => break,
        }
    }
    for t in tasks {
        match tokio::time::timeout_at(grace, t).await {
            Ok(_) => {}
            Err(_) => break, // dropping the remaining handles leaves them to the runtime's end
        }
    }

    let mut hist = Histogram::<u64>::new(3)?;
    let (mut delivered, mut sent, mut ticks) = (0u64, 0u64, 0u64);
    let mut last = started;
    for r in &results {
        if let Some(h) = &r.hist {
            hist.add(h)?;
        }
        delivered += r.delivered;
        sent += r.sent;
        ticks += r.ticks;
        if r.delivered > 0 {
            last = last.max(r.last_delivery);
        }
        if let Some(e) = &r.error {
            errors.push(e.clone());
        }
    }
    if results.len() < total {
        errors.push(format!(
            "{} of {total} clients never reported",
            total - results.len()
        ));
    }
    let idle_mode = args.idle_seconds.is_some();
    let expected = if idle_mode {
        0
    } else {
        (total * args.clients * args.messages) as u64
    };
    // Throughput interval: start to the last delivery; idle: the idle interval.
    let duration = if idle_mode || delivered == 0 {
        (end - started).as_secs_f64()
    } else {
        (last - started).as_secs_f64()
    }
    .max(1e-6);
    // CPU share over the interval in which it was measured.
    let cpu_interval = (end - started).as_secs_f64().max(1e-6);
    let server_split = server_cpu1
        .zip(server_cpu0)
        .map(|(b, a)| (b.0 - a.0, b.1 - a.1));
    let server_cpu = server_split.map(|(u, s)| u + s);
    let own_cpu = own_cpu1.zip(own_cpu0).map(|(b, a)| b - a);
    let n_errors = errors.len();
    errors.sort();
    errors.dedup();

    let ms = |us: u64| round(us as f64 / 1000.0, 3);
    let has_latency = !hist.is_empty();
    let out = json!({
        "sessions": args.sessions, "clients": args.clients, "messages": args.messages,
        "bytes": args.bytes, "rate": args.rate, "window": (args.rate == 0.0).then_some(args.window),
        "tps": args.tps, "idle_seconds": args.idle_seconds,
        "sent": sent, "delivered": delivered, "expected": expected,
        "duration_s": round(duration, 3),
        "deliveries_per_s": round(delivered as f64 / duration, 0),
        "latency_ms": {
            "p50": has_latency.then(|| ms(hist.value_at_quantile(0.5))),
            "p99": has_latency.then(|| ms(hist.value_at_quantile(0.99))),
            "max": has_latency.then(|| ms(hist.max())),
        },
        "ticks_received": ticks,
        "ticks_per_s": round(ticks as f64 / cpu_interval, 0),
        "server_cpu_s": server_cpu.map(|c| round(c, 2)),
        "server_cpu_pct_of_core": server_cpu.map(|c| round(100.0 * c / cpu_interval, 1)),
        "server_cpu_sys_s": server_split.map(|(_, s)| round(s, 2)),
        "client_cpu_s": own_cpu.map(|c| round(c, 2)),
        "also_cpu_pct_of_core": also_pids.iter().zip(also_cpu0.iter().zip(&also_cpu1))
            .map(|(pid, (a, b))| (pid.clone(), json!(a.zip(*b).map(|(a, b)| round(100.0 * (b - a) / cpu_interval, 1)))))
            .collect::<serde_json::Map<String, serde_json::Value>>(),
        "server_rss_mib": {
            "before": rss_before.map(|k| round(k as f64 / 1024.0, 1)),
            "joined": rss_joined.map(|k| round(k as f64 / 1024.0, 1)),
            "end": rss_end.map(|k| round(k as f64 / 1024.0, 1)),
        },
        "server_kib_per_session": rss_before.zip(rss_joined)
            .map(|(a, b)| round((b as f64 - a as f64) / args.sessions.max(1) as f64, 1)),
        "server_fds": {"joined": fds_joined, "end": fds_end},
        "join_s": round(join_s, 2),
        "server_args": args.server_args,
        "errors": n_errors,
        "first_errors": errors.iter().take(5).collect::<Vec<_>>(),
    });
    println!("{out}");

    let incomplete = !joined_all || n_errors > 0 || (!idle_mode && delivered < expected);
    if let Some(s) = spawned {
        let warnings = s.warnings();
        if warnings > 0 || incomplete {
            eprintln!("synq-bench: server log has {warnings} WARN/ERROR lines; its last lines:");
            s.tail_log(15);
        }
        s.stop().await;
    }
    Ok(if incomplete { 1 } else { 0 })
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_stamp_by_position() {
        let f = r#"{"id":"s","action":"RECV","args":[1234,56,"7:00000000000000123456:xxxx",0]}"#;
        assert_eq!(sent_stamp(f), Some((7, 123456)));
        let users = r#"{"id":"s","action":"RECV","args":[1,2,{"what":"users","active":2}]}"#;
        assert_eq!(sent_stamp(users), None);
        assert_eq!(sent_stamp(r#"{"id":"s","action":"TICK","args":5}"#), None);
        assert_eq!(sent_stamp(r#"{"args":[1,2,"x:1:"]}"#), None);
    }

    #[test]
    fn reads_users_and_actions() {
        let users =
            r#"{"id":"s","action":"RECV","args":[1,2,{"what":"users","active":2,"total":2}]}"#;
        assert_eq!(users_active(users), Some(2));
        assert!(action_is(r#"{"id":"s","action":"TICK","args":5}"#, "TICK"));
        assert!(!action_is(
            r#"{"id":"s","action":"TICKS","args":5}"#,
            "TICK"
        ));
        assert!(action_is(r#"{"id":"s","action":"SYNC","args":{}}"#, "SYNC"));
        assert!(is_sync(
            r#"{"id":"s","action":"SYNC","args":{"url":"","messages":[],"time":0,"seq":4294967280}}"#
        ));
        assert!(
            !is_sync(r#"{"id":"s","action":"SYNC","args":{}}"#),
            "no seq"
        );
        assert_eq!(
            users_active(r#"{"id":"s","action":"TICK","args":{"what":"users"}}"#),
            None
        );
    }

    /// What the bench sends, as the reflector parses it and reflects it: the stamp is
    /// where `sent_stamp` looks for it.
    #[test]
    fn its_frames_parse_and_the_stamp_survives_the_reflector() {
        use synq_protocol::client::{JoinArgs, SendArgs};
        use synq_protocol::frames::{RecvFrame, quote};
        use synq_protocol::{Action, ClientEnvelope};

        let join = join_frame("s", 7, 20.0);
        let env = ClientEnvelope::parse(&join).expect("JOIN");
        assert_eq!(env.action, Action::Join);
        let j = JoinArgs::parse(env.args).expect("JOIN args");
        assert_eq!(j.user_string().as_deref(), Some("v7"));
        assert_eq!(j.ticks.and_then(|t| t.tick), Some(50.0));
        let idle = join_frame("s", 7, 0.0);
        assert!(idle.contains(r#""ticks":{"tick":0,"delay":0}"#), "{idle}");

        let send = send_frame("s", 7, 123456, "xxxx");
        assert_eq!(
            send,
            r#"{"id":"s","action":"SEND","args":[0,0,"7:00000000000000123456:xxxx",0]}"#
        );
        let env = ClientEnvelope::parse(&send).expect("SEND");
        let tail = SendArgs::parse(env.args).expect("SEND args").tail;
        let recv = RecvFrame::new(&quote("s"), 1712, 4294967282, &tail.text);
        assert_eq!(sent_stamp(&recv.frame), Some((7, 123456)));
    }

    #[test]
    fn only_loopback() {
        assert!(check_loopback("ws://127.0.0.1:9/reflector").is_ok());
        assert!(check_loopback("ws://localhost:9/reflector").is_ok());
        assert!(check_loopback("ws://[::1]:9/reflector").is_ok());
        assert!(check_loopback("ws://10.0.0.1:9/reflector").is_err());
        assert!(check_loopback("ws://example.com/reflector").is_err());
        assert!(check_loopback("wss://127.0.0.1/reflector").is_err());
    }
}
