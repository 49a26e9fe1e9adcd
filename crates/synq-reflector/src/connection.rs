//! One WebSocket connection: a reader task that parses and checks what the client sends,
//! and a writer task that sends what the session produces, coalescing every frame that is
//! ready into one socket write.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use synq_protocol::client::{
    ArgsError, JoinArgs, SaveArgs, SendArgs, SendTags, SnapArgs, TickConfig, TuttiArgs,
};
use synq_protocol::{Action, ClientEnvelope, CloseCode, frames};
use tokio::time::Instant;

use crate::handle::{Command, ConnHandle, Direct, Inbox};
use crate::metrics::Metrics;
use crate::registry::{Ctx, SessionHandle};
use crate::sync_frame::SyncFrame;
use crate::sync_gate::SyncTurn;

/// Run a connection to completion. `session_id` is `None` when the URL named none.
///
/// One task does both directions: it waits for whichever comes first — a frame from the
/// client, a frame for it from the session, a deadline — so reading and writing never
/// contend for a split socket (which lost read wake-ups under concurrent traffic).
pub(crate) async fn run(
    mut socket: WebSocket,
    session_id: Option<String>,
    peer: IpAddr,
    host: Option<String>,
    ctx: Arc<Ctx>,
) {
    let conn_id = ctx.next_conn_id();
    Metrics::add_i(&ctx.metrics.clients, 1);
    // The queue takes memory only for the frames pending.
    let (handle, mut direct) = ConnHandle::new(
        conn_id,
        crate::peer::group(peer),
        host.map(Arc::from),
        ctx.config.client_backlog.max(16),
    );
    let mut conn = Conn {
        limiter: RateLimiter::new(ctx.config.client_rate_limit, ctx.config.client_burst),
        ctx: Arc::clone(&ctx),
        handle,
        session_id: session_id.clone().unwrap_or_default(),
        session: None,
    };
    let exit = match session_id {
        None => Exit::Close(CloseCode::OutdatedProtocol),
        Some(_) => conn.serve(&mut socket, &mut direct).await,
    };
    // Boxed, as the write below: the task's future is as large as its largest state, and
    // an idle connection would carry their room for its whole life.
    Box::pin(finish(socket, exit, &ctx)).await;
    if let Some(s) = conn.session.take() {
        s.send(Command::Closed { conn: conn_id });
        ctx.member_left();
    }
    Metrics::add_i(&ctx.metrics.clients, -1);
}

/// End the WebSocket as `exit` says.
async fn finish(mut socket: WebSocket, exit: Exit, ctx: &Ctx) {
    let graceful = async {
        match exit {
            Exit::Close(code) => {
                Metrics::add(&ctx.metrics.clients_rejected, 1);
                let frame = CloseFrame {
                    code: code.code(),
                    reason: Utf8Bytes::from_static(code.reason()),
                };
                let _ = socket.send(Message::Close(Some(frame))).await;
                let _ = socket.close().await;
            }
            // Answer a client's Close frame: tungstenite has queued the reply, it goes out
            // on close. Without it the client sees 1006 instead of its own code.
            Exit::Done => {
                let _ = socket.close().await;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), graceful).await;
}

enum Event {
    Out(Direct),
    /// `None`: the deadline passed.
    In(Option<Option<Result<Message, axum::Error>>>),
}

struct Conn {
    ctx: Arc<Ctx>,
    handle: ConnHandle,
    session_id: String,
    session: Option<SessionHandle>,
    limiter: RateLimiter,
}

impl Conn {
    async fn serve(&mut self, socket: &mut WebSocket, direct: &mut Inbox) -> Exit {
        let connected = Instant::now();
        let mut last_activity = connected;
        // One timer for the whole connection, moved only when needed: re-creating it on
        // every wake-up would register a timer per delivered frame.
        let timer = tokio::time::sleep_until(connected + self.ctx.config.join_timeout);
        tokio::pin!(timer);
        loop {
            let deadline = if self.session.is_some() {
                last_activity + self.ctx.config.inactivity_timeout
            } else {
                connected + self.ctx.config.join_timeout
            };
            if timer.deadline() != deadline && (timer.is_elapsed() || deadline < timer.deadline()) {
                timer.as_mut().reset(deadline);
            }
            if direct.overflowed() {
                tracing::warn!(conn = self.handle.id, session = %self.session_id, limit = self.ctx.config.client_backlog, "closing client: it fell more than --client-backlog frames behind");
                return Exit::Close(CloseCode::ClientUnresponsive);
            }
            let event = tokio::select! {
                d = direct.recv() => Event::Out(d),
                () = session_ended(&self.session) => {
                    // Sessions only end by themselves once nobody is connected: this one
                    // failed. A rejoin starts it afresh from its journal.
                    tracing::warn!(conn = self.handle.id, session = %self.session_id, "closing client: its session failed");
                    return Exit::Close(CloseCode::PleaseReconnect);
                }
                () = &mut timer => {
                    if Instant::now() < deadline {
                        // Activity moved the deadline since the timer was set.
                        timer.as_mut().reset(deadline);
                        continue;
                    }
                    Event::In(None)
                }
                r = socket.recv() => Event::In(Some(r)),
            };
            match event {
                Event::Out(item) => {
                    // Boxed: 1.5 KB that an idle connection's task would otherwise
                    // carry all the time; one allocation per batch of frames.
                    if let Some(exit) = Box::pin(self.write_batch(socket, direct, item)).await {
                        return exit;
                    }
                }
                Event::In(next) => {
                    last_activity = Instant::now();
                    if let Some(exit) = self.on_incoming(next, last_activity) {
                        return exit;
                    }
                }
            }
        }
    }

    fn on_incoming(
        &mut self,
        next: Option<Option<Result<Message, axum::Error>>>,
        now: Instant,
    ) -> Option<Exit> {
        let msg = match next {
            None if self.session.is_some() => {
                tracing::info!(conn = self.handle.id, session = %self.session_id, "closing inactive client (nothing received for {:?})", self.ctx.config.inactivity_timeout);
                return Some(Exit::Close(CloseCode::ClientInactive));
            }
            None => {
                tracing::info!(conn = self.handle.id, session = %self.session_id, "closing client that never sent JOIN");
                return Some(Exit::Close(CloseCode::NeverJoined));
            }
            Some(None) => return Some(Exit::Done),
            Some(Some(Err(e))) => {
                return Some(self.transport_error(e).map_or(Exit::Done, Exit::Close));
            }
            Some(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(text) => {
                Metrics::add(&self.ctx.metrics.frames_in, 1);
                Metrics::add(&self.ctx.metrics.bytes_in, text.len() as u64);
                if text.len() > self.ctx.config.max_frame_bytes {
                    tracing::warn!(conn = self.handle.id, session = %self.session_id, bytes = text.len(), limit = self.ctx.config.max_frame_bytes, "closing client: message larger than the limit");
                    return Some(Exit::Close(CloseCode::MessageTooLarge));
                }
                if !self.limiter.allow(now) {
                    tracing::warn!(conn = self.handle.id, session = %self.session_id, limit = self.ctx.config.client_rate_limit, "closing client: more than {} messages/s", self.ctx.config.client_rate_limit);
                    return Some(Exit::Close(CloseCode::RateLimited));
                }
                self.on_text(text.as_str()).map(Exit::Close)
            }
            Message::Binary(_) => {
                tracing::warn!(conn = self.handle.id, session = %self.session_id, "closing client: binary frame (the protocol is JSON text)");
                Some(Exit::Close(CloseCode::MalformedMessage))
            }
            Message::Ping(_) | Message::Pong(_) => None,
            Message::Close(_) => Some(Exit::Done),
        }
    }

    /// Send `first` and everything else that is ready, as one socket write. A large SYNC
    /// first waits for its turn (`SyncGate`), outside the write timeout: waiting for
    /// others is not this client failing to read.
    async fn write_batch(
        &mut self,
        socket: &mut WebSocket,
        direct: &mut Inbox,
        first: Direct,
    ) -> Option<Exit> {
        let mut next = (first, None);
        loop {
            let (item, turn) = next;
            match self.write_some(socket, direct, item, turn).await {
                Written::Exit(exit) => return Some(exit),
                Written::All => return None,
                Written::NeedsTurn(item) => {
                    let turn = self
                        .ctx
                        .sync_gate
                        .turn(Arc::from(self.session_id.as_str()), self.handle.peer)
                        .await;
                    next = (item, Some(turn));
                }
            }
        }
    }

    /// One batch: `first` (with its turn, if it is a large SYNC) and what follows, up to
    /// the next large SYNC, which is handed back to wait for its turn.
    async fn write_some(
        &mut self,
        socket: &mut WebSocket,
        direct: &mut Inbox,
        first: Direct,
        mut turn: Option<SyncTurn>,
    ) -> Written {
        let write_timeout = self.ctx.config.write_timeout;
        let conn = self.handle.id;
        let mut batch = Batch::default();
        let work = async {
            let mut item = first;
            let mut waiting = None;
            loop {
                if turn.is_none() && needs_turn(&item) {
                    waiting = Some(item);
                    break;
                }
                let more = !direct.is_empty();
                if let Some(exit) = feed(socket, item, more, &mut batch).await {
                    return Err(exit);
                }
                // The SYNC is written: its turn goes to the next joiner.
                turn = None;
                if batch.frames >= MAX_BATCH_FRAMES {
                    break;
                }
                item = match direct.try_recv() {
                    Some(d) => d,
                    None => break,
                };
            }
            match socket.flush().await {
                Ok(()) => Ok(waiting),
                Err(_) => Err(Exit::Done),
            }
        };
        // Almost every write completes at once: poll it once before arming the timeout,
        // so that the common case registers no timer.
        let outcome = {
            let mut work = std::pin::pin!(work);
            let first =
                std::future::poll_fn(|cx| std::task::Poll::Ready(work.as_mut().poll(cx))).await;
            match first {
                std::task::Poll::Ready(r) => Ok(r),
                std::task::Poll::Pending => tokio::time::timeout(write_timeout, work).await,
            }
        };
        match outcome {
            Ok(Ok(waiting)) => {
                Metrics::add(&self.ctx.metrics.frames_out, batch.frames);
                Metrics::add(&self.ctx.metrics.bytes_out, batch.bytes);
                match waiting {
                    Some(item) => Written::NeedsTurn(item),
                    None => Written::All,
                }
            }
            Ok(Err(exit)) => Written::Exit(exit),
            Err(_) => {
                tracing::warn!(
                    conn,
                    "closing client: could not take a write for {write_timeout:?}"
                );
                Written::Exit(Exit::Close(CloseCode::ClientUnresponsive))
            }
        }
    }

    fn transport_error(&self, e: axum::Error) -> Option<CloseCode> {
        let inner = e.into_inner();
        if let Some(tungstenite::Error::Capacity(c)) = inner.downcast_ref::<tungstenite::Error>() {
            tracing::warn!(conn = self.handle.id, session = %self.session_id, limit = self.ctx.config.max_frame_bytes, "closing client: {c}");
            return Some(CloseCode::MessageTooLarge);
        }
        tracing::debug!(conn = self.handle.id, session = %self.session_id, error = %inner, "connection error");
        None
    }

    fn malformed(&self, e: impl std::fmt::Display) -> Option<CloseCode> {
        tracing::warn!(conn = self.handle.id, session = %self.session_id, "closing client: {e}");
        Some(CloseCode::MalformedMessage)
    }

    /// Handle one text frame; `Some(code)` closes the connection.
    fn on_text(&mut self, text: &str) -> Option<CloseCode> {
        let env = match ClientEnvelope::parse(text) {
            Ok(env) => env,
            Err(e) => return self.malformed(e),
        };
        let conn = self.handle.id;
        let cmd = match env.action {
            Action::Join => {
                if self.session.is_some() {
                    tracing::warn!(conn, session = %self.session_id, "second JOIN on one connection ignored");
                    return None;
                }
                return match JoinArgs::parse(env.args) {
                    Ok(args) => match self.ctx.join(&self.session_id, self.handle.clone(), args) {
                        Ok(session) => {
                            self.session = Some(session);
                            self.ctx.member_joined();
                            None
                        }
                        Err(code) => Some(code),
                    },
                    Err(ArgsError::NoApiKey) => {
                        tracing::warn!(conn, session = %self.session_id, "closing client: JOIN without apiKey");
                        Some(CloseCode::BadApiKey)
                    }
                    Err(e) => {
                        tracing::warn!(conn, session = %self.session_id, "closing client: {e} (outdated client?)");
                        Some(CloseCode::OutdatedProtocol)
                    }
                };
            }
            Action::Send => {
                if self.session.is_none() {
                    tracing::debug!(conn, session = %self.session_id, "SEND before JOIN ignored");
                    return None;
                }
                match SendArgs::parse(env.args) {
                    Ok(args) => Command::Send {
                        conn,
                        args: Box::new(args),
                        tags: SendTags::parse(env.tags).map(Box::new),
                    },
                    Err(e) => return self.malformed(e),
                }
            }
            Action::Tutti => match TuttiArgs::parse(env.args) {
                Ok(args) => Command::Tutti {
                    conn,
                    args: Box::new(args),
                },
                Err(e) => return self.malformed(e),
            },
            Action::Snap => match SnapArgs::parse(env.args) {
                Ok(args) => Command::Snap {
                    conn,
                    args: Box::new(args),
                },
                Err(e) => return self.malformed(e),
            },
            Action::Save => match SaveArgs::parse(env.args) {
                Ok(args) => Command::Save {
                    conn,
                    args: Box::new(args),
                },
                Err(e) => return self.malformed(e),
            },
            Action::Ticks => Command::Ticks {
                conn,
                cfg: Box::new(TickConfig::parse(env.args)),
            },
            Action::Ping => {
                self.handle
                    .send(Direct::Frame(Utf8Bytes::from(frames::pong(env.args))));
                return None;
            }
            Action::Pulse => return None,
            Action::Log => {
                // Debug-formatted: quotes and escapes, so a client cannot forge log lines.
                let text = env.args.map(|a| a.get()).unwrap_or("");
                tracing::info!(conn, session = %self.session_id, text = ?cut(text, 500), "client log");
                return None;
            }
            Action::Unknown(name) => {
                tracing::warn!(conn, session = %self.session_id, action = ?cut(&name, 40), "unknown action ignored");
                return None;
            }
        };
        match &self.session {
            Some(s) => {
                s.send(cmd);
                None
            }
            None => {
                tracing::warn!(conn, session = %self.session_id, "closing client: session command before JOIN");
                Some(CloseCode::UnknownSession)
            }
        }
    }
}

/// At most `max` bytes of client-supplied text, for logs.
fn cut(text: &str, max: usize) -> &str {
    text.get(..text.floor_char_boundary(max)).unwrap_or(text)
}

/// Token bucket: `rate` messages per second sustained, `burst` at once.
struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    fn new(rate: u32, burst: u32) -> RateLimiter {
        let burst = f64::from(burst.max(rate).max(1));
        RateLimiter {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

enum Exit {
    /// The client left (or the connection broke).
    Done,
    /// We close the connection with this code.
    Close(CloseCode),
}

/// Frames fed but not yet flushed.
#[derive(Default)]
struct Batch {
    frames: u64,
    bytes: u64,
}

const MAX_BATCH_FRAMES: u64 = 1024;

async fn session_ended(session: &Option<SessionHandle>) {
    match session {
        Some(s) => s.closed().await,
        None => std::future::pending().await,
    }
}

async fn feed_text(sink: &mut WebSocket, text: Utf8Bytes, batch: &mut Batch) -> Option<Exit> {
    batch.frames += 1;
    batch.bytes += text.len() as u64;
    if text.len() > synq_protocol::CHUNK_SIZE {
        for part in frames::chunk(text.as_str()) {
            if sink
                .feed(Message::Text(Utf8Bytes::from(part)))
                .await
                .is_err()
            {
                return Some(Exit::Done);
            }
        }
        return None;
    }
    sink.feed(Message::Text(text))
        .await
        .err()
        .map(|_| Exit::Done)
}

/// What a batch ended with.
enum Written {
    All,
    Exit(Exit),
    /// A large SYNC that must wait for its turn before it is written.
    NeedsTurn(Direct),
}

/// Whether `item` is a SYNC large enough to wait for a turn (`SyncGate`).
fn needs_turn(item: &Direct) -> bool {
    matches!(item, Direct::Sync(frame) if frame.len() > synq_protocol::CHUNK_SIZE)
}

/// A SYNC: one frame if it is small, else `_CHUNK` pieces made one at a time as the socket
/// takes them, so that a SYNC of a large session never exists as one string.
async fn feed_sync(sink: &mut WebSocket, sync: SyncFrame, batch: &mut Batch) -> Option<Exit> {
    let total = sync.len();
    batch.frames += 1;
    batch.bytes += total as u64;
    for piece in sync.pieces(total, synq_protocol::CHUNK_SIZE) {
        if sink
            .feed(Message::Text(Utf8Bytes::from(piece)))
            .await
            .is_err()
        {
            return Some(Exit::Done);
        }
    }
    None
}

/// Feeds one queued item; `more`: other items are queued behind it.
async fn feed(sink: &mut WebSocket, item: Direct, more: bool, batch: &mut Batch) -> Option<Exit> {
    match item {
        Direct::Frame(f) => feed_text(sink, f, batch).await,
        // A client with frames queued is behind: a TICK would only add to its backlog, and
        // the frames behind it carry later times anyway.
        Direct::Tick(f) if !more => feed_text(sink, f, batch).await,
        Direct::Tick(_) => None,
        Direct::Sync(frame) => feed_sync(sink, *frame, batch).await,
        Direct::Close(code) => Some(Exit::Close(code)),
    }
}
