//! One session ("island" in Croquet's reflector): a single task owning all of the
//! session's state. Connections send it [`Command`]s; it answers through each
//! connection's direct channel (SYNC, INFO, close) and through the session's broadcast
//! stream (RECV, TICK, REQU), whose frames are encoded once and shared by all recipients.
//!
//! Work is done in batches: the task takes every command that is waiting, applies them,
//! writes the journal once for the whole batch, and only then sends anything. That order
//! is what makes a broadcast message durable before any client has seen it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use synq_protocol::client::{
    JoinArgs, SaveArgs, SendArgs, SendTags, SnapArgs, TickConfig, TuttiArgs,
};
use synq_protocol::frames::{self, RecvFrame, SnapshotRef};
use synq_protocol::{CloseCode, INITIAL_SEQ};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;

use crate::connection::{ConnHandle, ConnId, Direct, Shared};
use crate::journal::{Header, Journal, Recovered, SnapshotPointer};
use crate::metrics::Metrics;
use crate::registry::Ctx;

/// What a connection asks of its session.
pub(crate) enum Command {
    Join {
        conn: ConnHandle,
        args: Box<JoinArgs>,
    },
    Send {
        conn: ConnId,
        args: SendArgs,
        tags: Option<SendTags>,
    },
    Tutti {
        conn: ConnId,
        args: TuttiArgs,
    },
    Snap {
        conn: ConnId,
        args: SnapArgs,
    },
    Save {
        conn: ConnId,
        args: SaveArgs,
    },
    Ticks {
        conn: ConnId,
        cfg: TickConfig,
    },
    Closed {
        conn: ConnId,
    },
}

/// The session clock: integer ms since the session started, never decreasing.
struct Clock {
    start: Instant,
    base: u64,
    scale: f64,
    last: u64,
}

impl Clock {
    fn new(base: u64) -> Clock {
        Clock {
            start: Instant::now(),
            base,
            scale: 1.0,
            last: base,
        }
    }

    fn now(&mut self) -> u64 {
        let t = self.base + (self.start.elapsed().as_secs_f64() * 1000.0 * self.scale) as u64;
        self.last = self.last.max(t);
        self.last
    }

    /// Unscaled ms since the clock started (for the `rawtime` flag).
    fn raw(&self) -> u64 {
        self.base + self.start.elapsed().as_millis() as u64
    }

    fn set_scale(&mut self, scale: f64) {
        let now = self.now();
        self.base = now;
        self.start = Instant::now();
        self.scale = scale;
    }
}

/// A retained message: the RECV frame as broadcast, from which SYNC replays `[time, seq, …]`.
struct Retained {
    seq: u32,
    frame: Utf8Bytes,
    args_start: usize,
}

impl Retained {
    fn new(seq: u32, rf: RecvFrame) -> Retained {
        let args_len = rf.args().len();
        let frame_len = rf.frame.len();
        Retained {
            seq,
            args_start: frame_len - 1 - args_len,
            frame: Utf8Bytes::from(rf.frame),
        }
    }

    fn args(&self) -> &str {
        let s = self.frame.as_str();
        &s[self.args_start..s.len() - 1]
    }
}

struct Client {
    handle: ConnHandle,
    /// In synq sessions, the authenticated view id stamped on this connection's messages.
    view_id: Option<String>,
    user: Option<Box<serde_json::value::RawValue>>,
    user_string: Option<String>,
    active: bool,
}

/// A user value waiting in the join/leave batch.
struct PendingUser {
    raw: String,
    string: Option<String>,
}

struct Tally {
    send_time: f64,
    send_time_raw: String,
    wants_vote: bool,
    target: String,
    votes: Vec<(String, u32)>,
    expecting: i64,
    due: Instant,
}

enum Out {
    Broadcast(Shared),
    Sync { conn: ConnId, frame: String },
    Direct(ConnId, Direct),
}

pub(crate) struct Island {
    ctx: Arc<Ctx>,
    id: String,
    id_json: String,
    header: Option<Header>,
    clock: Clock,
    seq: u32,
    messages: VecDeque<Retained>,
    snapshot: Option<SnapshotPointer>,
    leave_delay: Duration,
    flags: BTreeMap<String, bool>,
    flags_json: String,
    tick: Option<Duration>,
    next_tick: Option<Instant>,
    last_time_record: u64,
    clients: BTreeMap<ConnId, Client>,
    joined: Vec<PendingUser>,
    left: Vec<PendingUser>,
    users_due: Option<Instant>,
    tallies: HashMap<String, Tally>,
    completed: VecDeque<(String, f64)>,
    completed_sentinel: Option<f64>,
    debounce: HashMap<String, Instant>,
    leaves: Vec<(Instant, ConnId)>,
    idle_due: Option<Instant>,
    last_requ: Option<u64>,
    last_info: Option<u64>,
    last_refusal: Option<u64>,
    stream: broadcast::Sender<Shared>,
    journal: Option<Journal>,
    outbox: Vec<Out>,
}

fn random_timeline() -> String {
    // Croquet uses ~11 base-36 characters; any unique string works.
    let n: u64 = rand::random();
    let mut s = String::new();
    let mut v = n;
    while v > 0 {
        let d = (v % 36) as u32;
        s.push(char::from_digit(d, 36).unwrap_or('0'));
        v /= 36;
    }
    s
}

fn tick_period(ms: Option<f64>) -> Option<Duration> {
    ms.filter(|t| t.is_finite() && *t > 0.0)
        .map(|t| Duration::from_secs_f64(t.max(1.0) / 1000.0))
}

impl Island {
    pub(crate) async fn load(ctx: Arc<Ctx>, id: String) -> Island {
        let dir = ctx.session_dir(&id);
        let durability = ctx.config.durability;
        let opened = tokio::task::spawn_blocking(move || Journal::open(&dir, durability)).await;
        let (journal, rec) = match opened {
            Ok(Ok((j, r))) => (Some(j), r),
            Ok(Err(e)) => {
                tracing::error!(session = %id, error = %e, "cannot open session journal; this session will not survive a restart");
                Metrics::add(&ctx.metrics.journal_errors, 1);
                (None, Recovered::default())
            }
            Err(e) => {
                tracing::error!(session = %id, error = %e, "journal loader failed");
                (None, Recovered::default())
            }
        };
        let id_json = frames::quote(&id);
        let resumed = rec.header.is_some();
        if resumed {
            tracing::info!(session = %id, messages = rec.messages.len(), seq = ?rec.last_seq, time = rec.time, snapshot = rec.snapshot.is_some(), "session resumed from journal");
        }
        let messages = rec
            .messages
            .iter()
            .map(|m| Retained::new(m.seq, RecvFrame::from_args(&id_json, &m.args)))
            .collect();
        // Ticks are not journaled one by one (a time record is written at most once a
        // second), so clients may have seen up to a second more; start past that so time
        // never goes backwards for a client that rejoins after a restart.
        let base = if resumed { rec.time + 1000 } else { 0 };
        let (stream, _) = broadcast::channel(ctx.config.client_backlog.max(16));
        Metrics::add_i(&ctx.metrics.sessions, 1);
        Island {
            tick: rec.header.as_ref().and_then(|h| tick_period(h.tick_ms)),
            header: rec.header,
            id,
            id_json,
            clock: Clock::new(base),
            seq: rec.last_seq.unwrap_or(INITIAL_SEQ),
            messages,
            snapshot: rec.snapshot,
            leave_delay: Duration::ZERO,
            flags: BTreeMap::new(),
            flags_json: "{}".into(),
            next_tick: None,
            last_time_record: base,
            clients: BTreeMap::new(),
            joined: Vec::new(),
            left: Vec::new(),
            users_due: None,
            tallies: HashMap::new(),
            completed: VecDeque::new(),
            completed_sentinel: None,
            debounce: HashMap::new(),
            leaves: Vec::new(),
            idle_due: None,
            last_requ: None,
            last_info: None,
            last_refusal: None,
            stream,
            journal,
            outbox: Vec::new(),
            ctx,
        }
    }

    /// The session's main loop; returns when the session has been idle long enough and
    /// was removed from the registry.
    pub(crate) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut batch = Vec::with_capacity(512);
        // One timer, moved to the next deadline only when that changes (not re-created on
        // every wake-up: that would register a timer per message).
        let far = || Instant::now() + Duration::from_secs(3600);
        let timer = tokio::time::sleep_until(far());
        tokio::pin!(timer);
        loop {
            let due = self.next_due().unwrap_or_else(far);
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            tokio::select! {
                n = rx.recv_many(&mut batch, 512) => {
                    if n == 0 {
                        break;
                    }
                    for cmd in batch.drain(..) {
                        self.handle(cmd);
                    }
                }
                () = &mut timer => {}
            }
            self.fire_timers(Instant::now());
            self.flush();
            if self.clients.is_empty() && self.idle_due.is_some_and(|d| d <= Instant::now()) {
                if self.ctx.remove_if_idle(&self.id, &rx) {
                    break;
                }
                self.idle_due = None;
            }
        }
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let time = self.clock.now();
        if let Some(j) = &mut self.journal {
            j.time(time);
        }
        self.commit_journal();
        Metrics::add_i(&self.ctx.metrics.sessions, -1);
        tracing::info!(session = %self.id, time, seq = self.seq, "session closed (idle)");
    }

    fn next_due(&self) -> Option<Instant> {
        let tallies = self.tallies.values().map(|t| t.due);
        let leaves = self.leaves.iter().map(|(t, _)| *t);
        [self.users_due, self.next_tick, self.idle_due]
            .into_iter()
            .flatten()
            .chain(tallies)
            .chain(leaves)
            .min()
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Join { conn, args } => self.join(conn, *args),
            Command::Send { conn, args, tags } => self.send(conn, args, tags),
            Command::Tutti { conn, args } => self.tutti(conn, args),
            Command::Snap { conn, args } => self.snap(conn, args),
            Command::Save { conn, args } => self.save(conn, args),
            Command::Ticks { conn, cfg } => self.ticks(conn, cfg),
            Command::Closed { conn } => self.closed(conn),
        }
    }

    fn join(&mut self, conn: ConnHandle, mut args: JoinArgs) {
        // synq sessions: the view id must match its proof; the proof is not announced.
        let mut view_id = None;
        if synq_protocol::identity::is_synq_session(&self.id)
            && let Some(user) = &args.user
        {
            match synq_protocol::identity::check_user(user.get()) {
                Ok(checked) => {
                    match serde_json::value::RawValue::from_string(checked.announced) {
                        Ok(raw) => args.user = Some(raw),
                        Err(_) => {
                            conn.close(CloseCode::BadIdentity);
                            return;
                        }
                    }
                    view_id = Some(checked.view_id);
                }
                Err(e) => {
                    tracing::warn!(session = %self.id, conn = conn.id, error = %e, "JOIN refused");
                    conn.close(CloseCode::BadIdentity);
                    return;
                }
            }
        }
        if self.clients.len() >= self.ctx.config.max_clients_per_session {
            tracing::warn!(session = %self.id, conn = conn.id, limit = self.ctx.config.max_clients_per_session, "JOIN refused: session full");
            conn.close(CloseCode::SessionFull);
            return;
        }
        if self.header.is_none() {
            // The JOIN that creates the session fixes its tick rate and tove.
            let tick_ms = match args.ticks {
                None => Some(synq_protocol::DEFAULT_TICK_MS),
                Some(t) => Some(t.tick.unwrap_or(synq_protocol::DEFAULT_TICK_MS)),
            };
            let header = Header {
                timeline: random_timeline(),
                tove: args.tove.clone(),
                tick_ms,
                delay_ms: args.ticks.and_then(|t| t.delay),
                app_id: args.app_id.clone(),
                persistent_id: args.persistent_id.clone(),
                developer_id: args.developer_id.clone(),
            };
            self.tick = tick_period(header.tick_ms);
            if let Some(j) = &mut self.journal {
                j.header(&header);
            }
            tracing::info!(session = %self.id, name = ?args.name, tick_ms = ?header.tick_ms, "session created");
            self.header = Some(header);
        }
        // leaveDelay and flags are session-wide and follow the latest JOIN (as in Croquet).
        self.leave_delay = Duration::from_secs_f64(
            args.leave_delay
                .filter(|d| d.is_finite() && *d > 0.0)
                .unwrap_or(0.0)
                .min(60_000.0)
                / 1000.0,
        );
        self.flags = args.flags.clone();
        self.flags_json = serde_json::to_string(&self.flags).unwrap_or_else(|_| "{}".into());
        self.idle_due = None;

        let persisted_url =
            if self.snapshot.is_none() && self.messages.is_empty() && self.seq == INITIAL_SEQ {
                self.ctx.persisted_url(self.header.as_ref())
            } else {
                None
            };
        let time = self.clock.now();
        let header = self.header.as_ref();
        let sync = frames::Sync {
            snapshot: self.snapshot.as_ref().map(|s| SnapshotRef {
                time_raw: &s.time_raw,
                seq: s.seq,
                url: &s.url,
            }),
            persisted_url: persisted_url.as_deref(),
            time,
            seq: self.seq,
            tove: header.and_then(|h| h.tove.as_deref()),
            reflector: &self.ctx.config.label,
            timeline: header.map_or("", |h| h.timeline.as_str()),
            flags_json: &self.flags_json,
        };
        let frame = sync.frame(&self.id_json, self.messages.iter().map(Retained::args));
        self.outbox.push(Out::Sync {
            conn: conn.id,
            frame,
        });
        Metrics::add(&self.ctx.metrics.joins, 1);

        let user_string = args.user_string();
        let active = args.user.is_some();
        tracing::debug!(session = %self.id, conn = conn.id, user = ?args.user.as_ref().map(|u| u.get()), "JOIN");
        if let Some(user) = &args.user {
            self.user_joined(PendingUser {
                raw: user.get().to_owned(),
                string: user_string.clone(),
            });
        }
        self.clients.insert(
            conn.id,
            Client {
                handle: conn,
                view_id,
                user: args.user,
                user_string,
                active,
            },
        );
        if self.next_tick.is_none() {
            self.next_tick = self.tick.map(|p| Instant::now() + p);
        }
        self.hand_ai_capability();
    }

    /// synq sessions: hands the participant (an active client) that just joined the AI
    /// capability that the AI gateway asks for, as `{"id", "action": "AICAP", "args":
    /// {"token", "expires"}}`, just before its SYNC (the last one queued) so that it holds
    /// one once it is synced. A rejoin brings a new one. Croquet sessions get nothing new.
    fn hand_ai_capability(&mut self) {
        let Some(issue) = &self.ctx.config.ai_capability else {
            return;
        };
        let Some((at, conn)) = self
            .outbox
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, o)| match o {
                Out::Sync { conn, .. } => Some((i, *conn)),
                _ => None,
            })
        else {
            return;
        };
        if !synq_protocol::identity::is_synq_session(&self.id)
            || !self.clients.get(&conn).is_some_and(|c| c.active)
        {
            return;
        }
        let frame = format!(
            "{{\"id\":{},\"action\":\"AICAP\",\"args\":{}}}",
            self.id_json,
            (issue.0)(&self.id)
        );
        self.outbox
            .insert(at, Out::Direct(conn, Direct::Frame(Utf8Bytes::from(frame))));
    }

    fn user_joined(&mut self, user: PendingUser) {
        if let Some(s) = &user.string
            && let Some(i) = self.left.iter().position(|p| p.string.as_ref() == Some(s))
        {
            self.left.remove(i);
            return;
        }
        self.joined.push(user);
        self.arm_users();
    }

    fn user_left(&mut self, user: PendingUser) {
        if let Some(s) = &user.string
            && let Some(i) = self
                .joined
                .iter()
                .position(|p| p.string.as_ref() == Some(s))
        {
            self.joined.remove(i);
            return;
        }
        self.left.push(user);
        self.arm_users();
    }

    fn arm_users(&mut self) {
        if self.users_due.is_none() {
            self.users_due =
                Some(Instant::now() + Duration::from_millis(synq_protocol::USERS_INTERVAL_MS));
        }
    }

    fn send(&mut self, conn: ConnId, args: SendArgs, tags: Option<SendTags>) {
        let Some(client) = self.clients.get(&conn) else {
            return;
        };
        // synq sessions: stamp the authenticated sender as the last element; a connection
        // without an identity cannot send there.
        let stamp = if synq_protocol::identity::is_synq_session(&self.id) {
            match &client.view_id {
                Some(id) => Some(frames::quote(id)),
                None => return,
            }
        } else {
            None
        };
        if let Some((msg_id, ms)) = tags.as_ref().and_then(SendTags::debounce) {
            let now = Instant::now();
            if let Some(last) = self.debounce.get(msg_id)
                && now.duration_since(*last).as_secs_f64() * 1000.0 < ms
            {
                tracing::trace!(session = %self.id, msg_id, "debounced");
                return;
            }
            self.debounce.insert(msg_id.to_owned(), now);
        }
        if let Some(stamp) = stamp {
            let tail = format!("{},{stamp}", args.tail.text);
            self.broadcast(&tail);
        } else if self.flags.contains_key("rawtime") {
            let raw = self.clock.raw().to_string();
            let tail = args.tail.with_last_replaced(&raw);
            self.broadcast(&tail);
        } else {
            self.broadcast(&args.tail.text);
        }
    }

    /// Sequence, journal and broadcast one message whose elements after `[time, seq` are `tail`.
    fn broadcast(&mut self, tail: &str) -> bool {
        let n = self.messages.len();
        let ctx = Arc::clone(&self.ctx);
        let cfg = &ctx.config;
        if n >= cfg.max_messages {
            let time = self.clock.now();
            self.request_snapshot(time);
            Metrics::add(&self.ctx.metrics.messages_refused, 1);
            if self.last_refusal.is_none_or(|t| time >= t + 1000) {
                self.last_refusal = Some(time);
                tracing::warn!(session = %self.id, retained = n, "message refused: session holds {n} messages since its last snapshot and needs a snapshot first");
                self.info_all(
                    "SNAPSHOT_NEEDED",
                    "Cannot buffer more messages. Need snapshot.",
                    "warning",
                );
            }
            return false;
        }
        let time = self.clock.now();
        if n + 1 >= cfg.snapshot_request_at {
            self.request_snapshot(time);
            let almost_full =
                cfg.max_messages - (cfg.max_messages.saturating_sub(cfg.snapshot_request_at)) / 4;
            if n + 1 >= almost_full && self.last_info.is_none_or(|t| time >= t + 10_000) {
                self.last_info = Some(time);
                self.info_all(
                    "SNAPSHOT_NEEDED",
                    "Message buffer almost full. Need snapshot.",
                    "warning",
                );
            }
        }
        self.seq = self.seq.wrapping_add(1);
        let rf = RecvFrame::new(&self.id_json, time, self.seq, tail);
        if let Some(j) = &mut self.journal {
            j.message(rf.args());
        }
        let retained = Retained::new(self.seq, rf);
        self.outbox
            .push(Out::Broadcast(Shared::Msg(retained.frame.clone())));
        self.messages.push_back(retained);
        Metrics::add(&self.ctx.metrics.messages_broadcast, 1);
        // Ticks only flow when nothing else was broadcast for a full period.
        self.next_tick = self.tick.map(|p| Instant::now() + p);
        true
    }

    /// A message generated by the reflector itself (users, tally): `rawtime` appends.
    fn broadcast_own(&mut self, payload: &str) {
        if self.flags.contains_key("rawtime") {
            let tail = format!("{payload},{}", self.clock.raw());
            self.broadcast(&tail);
        } else {
            self.broadcast(payload);
        }
    }

    fn request_snapshot(&mut self, time: u64) {
        if self.last_requ.is_some_and(|t| time < t + 1000) {
            return;
        }
        self.last_requ = Some(time);
        tracing::info!(session = %self.id, retained = self.messages.len(), "requesting a snapshot (REQU)");
        Metrics::add(&self.ctx.metrics.snapshot_requests, 1);
        self.outbox
            .push(Out::Broadcast(Shared::Msg(Utf8Bytes::from(frames::requ(
                &self.id_json,
            )))));
    }

    fn info_all(&mut self, code: &str, msg: &str, level: &str) {
        let frame = Utf8Bytes::from(frames::info(&self.id_json, code, msg, level));
        // In stream order for active clients (so it follows the messages it is about),
        // directly to the others.
        self.outbox.push(Out::Broadcast(Shared::Msg(frame.clone())));
        for (id, _) in self.clients.iter().filter(|(_, c)| !c.active) {
            self.outbox
                .push(Out::Direct(*id, Direct::Frame(frame.clone())));
        }
    }

    fn tutti(&mut self, conn: ConnId, a: TuttiArgs) {
        if !self.clients.contains_key(&conn) {
            return;
        }
        let now = self.clock.now();
        if !self.tallies.contains_key(&a.tutti_key) {
            if a.send_time < self.tally_history_limit(now) {
                tracing::debug!(session = %self.id, key = %a.tutti_key, "vote too old; ignored");
                return;
            }
            if self.completed.iter().any(|(k, _)| *k == a.tutti_key) {
                tracing::debug!(session = %self.id, key = %a.tutti_key, "vote for a completed tally; ignored");
                return;
            }
            if let Some(first) = &a.first_msg {
                self.broadcast(&first.text);
            }
            self.tallies.insert(
                a.tutti_key.clone(),
                Tally {
                    send_time: a.send_time,
                    send_time_raw: a.send_time_raw.get().to_owned(),
                    wants_vote: a.wants_vote,
                    target: a.tally_target.get().to_owned(),
                    votes: Vec::new(),
                    expecting: self.clients.len() as i64,
                    due: Instant::now() + Duration::from_millis(synq_protocol::TALLY_INTERVAL_MS),
                },
            );
        }
        let Some(t) = self.tallies.get_mut(&a.tutti_key) else {
            return;
        };
        match t.votes.iter_mut().find(|(v, _)| *v == a.payload) {
            Some((_, n)) => *n += 1,
            None => t.votes.push((a.payload, 1)),
        }
        t.expecting -= 1;
        if t.expecting <= 0 {
            self.complete_tally(&a.tutti_key);
        }
    }

    fn tally_history_limit(&mut self, now: u64) -> f64 {
        let age_limit = now as f64 - synq_protocol::MAX_TALLY_AGE_MS as f64 + 1.0;
        self.completed.retain(|(_, t)| *t >= age_limit);
        self.completed_sentinel
            .map_or(age_limit, |s| s.max(age_limit))
    }

    fn complete_tally(&mut self, key: &str) {
        let Some(t) = self.tallies.remove(key) else {
            return;
        };
        if t.wants_vote || t.votes.len() > 1 {
            let payload =
                frames::tally_payload(&t.send_time_raw, &t.votes, &t.target, key, t.expecting);
            self.broadcast_own(&payload);
        }
        self.completed.push_back((key.to_owned(), t.send_time));
        while self.completed.len() > synq_protocol::MAX_COMPLETED_TALLIES {
            if let Some((_, st)) = self.completed.pop_front() {
                self.completed_sentinel = Some(self.completed_sentinel.map_or(st, |s| s.max(st)));
            }
        }
    }

    fn snap(&mut self, conn: ConnId, a: SnapArgs) {
        if !self.clients.contains_key(&conn) {
            return;
        }
        if a.dissident {
            tracing::warn!(session = %self.id, conn, time = a.time, "dissident snapshot ignored (its state disagreed with the majority)");
            return;
        }
        if self.snapshot.as_ref().is_some_and(|s| a.time <= s.time) {
            tracing::debug!(session = %self.id, time = a.time, "snapshot not newer than the current one; ignored");
            return;
        }
        let covered =
            synq_protocol::seq::covered_by_snapshot(a.seq, self.messages.iter().map(|m| m.seq));
        self.messages.drain(..covered);
        let snap = SnapshotPointer {
            time_raw: a.time_raw.get().to_owned(),
            time: a.time,
            seq: a.seq,
            url: a.url,
        };
        tracing::info!(session = %self.id, time = a.time, seq = a.seq, url = %snap.url, retained = self.messages.len(), "snapshot registered");
        Metrics::add(&self.ctx.metrics.snapshots, 1);
        self.last_requ = None;
        let time = self.clock.now();
        if let (Some(j), Some(h)) = (&mut self.journal, &self.header)
            && let Err(e) = j.rewrite(h, &snap, self.messages.iter().map(Retained::args), time)
        {
            tracing::error!(session = %self.id, error = %e, "cannot compact the session journal");
            Metrics::add(&self.ctx.metrics.journal_errors, 1);
        }
        self.snapshot = Some(snap);
    }

    fn save(&mut self, conn: ConnId, a: SaveArgs) {
        let Some(client) = self.clients.get(&conn) else {
            return;
        };
        let Some(key) = self.header.as_ref().and_then(Ctx::persistent_key) else {
            tracing::warn!(session = %self.id, conn, "SAVE refused: the session's JOIN had no appId/persistentId");
            client.handle.close(CloseCode::BadAppId);
            return;
        };
        if a.dissident {
            tracing::warn!(session = %self.id, conn, "dissident persistent data ignored");
            return;
        }
        match self.ctx.save_persisted_url(&key, &a.url) {
            Ok(()) => {
                tracing::info!(session = %self.id, url = %a.url, "persistent data registered")
            }
            Err(e) => {
                tracing::error!(session = %self.id, error = %e, "cannot record persistent data");
                Metrics::add(&self.ctx.metrics.journal_errors, 1);
            }
        }
    }

    fn ticks(&mut self, conn: ConnId, cfg: TickConfig) {
        if !self.clients.contains_key(&conn) {
            return;
        }
        if let (Some(d), Some(h)) = (cfg.delay, &mut self.header)
            && d > 0.0
        {
            h.delay_ms = Some(d);
        }
        let scale = cfg
            .scale
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or(1.0, |s| s.clamp(1.0 / 64.0, 64.0));
        self.clock.set_scale(scale);
        if let Some(p) = tick_period(cfg.tick) {
            self.tick = Some(p);
            self.next_tick = Some(Instant::now() + p);
        }
    }

    fn closed(&mut self, conn: ConnId) {
        if self.clients.contains_key(&conn) {
            self.leaves.push((Instant::now() + self.leave_delay, conn));
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        if self.leaves.iter().any(|(t, _)| *t <= now) {
            let (due, later): (Vec<_>, Vec<_>) =
                self.leaves.drain(..).partition(|(t, _)| *t <= now);
            self.leaves = later;
            for (_, conn) in due {
                self.remove_client(conn);
            }
        }
        if self.users_due.is_some_and(|t| t <= now) {
            self.announce_users();
        }
        let expired: Vec<String> = self
            .tallies
            .iter()
            .filter(|(_, t)| t.due <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.complete_tally(&key);
        }
        if self.next_tick.is_some_and(|t| t <= now) {
            self.tick(now);
        }
    }

    fn remove_client(&mut self, conn: ConnId) {
        let Some(c) = self.clients.remove(&conn) else {
            return;
        };
        if c.active
            && let Some(user) = c.user
        {
            self.user_left(PendingUser {
                raw: user.get().to_owned(),
                string: c.user_string,
            });
        }
        if self.clients.is_empty() {
            self.idle_due = Some(Instant::now() + self.ctx.config.idle_grace);
            self.next_tick = None;
        }
    }

    fn announce_users(&mut self) {
        self.users_due = None;
        if self.joined.is_empty() && self.left.is_empty() {
            return;
        }
        let active = self.clients.values().filter(|c| c.active).count();
        let total = self.clients.len();
        let joined = std::mem::take(&mut self.joined);
        let left = std::mem::take(&mut self.left);
        // With nobody left to tell, the batch is dropped (the VM synthesizes the exits).
        if active > 0 {
            let j: Vec<&str> = joined.iter().map(|u| u.raw.as_str()).collect();
            let l: Vec<&str> = left.iter().map(|u| u.raw.as_str()).collect();
            let payload = frames::users_payload(active, total, &j, &l);
            self.broadcast_own(&payload);
        }
    }

    fn tick(&mut self, now: Instant) {
        let Some(period) = self.tick else {
            self.next_tick = None;
            return;
        };
        self.next_tick = Some(now + period);
        if self.stream.receiver_count() == 0 {
            return;
        }
        let time = self.clock.now();
        self.outbox
            .push(Out::Broadcast(Shared::Tick(Utf8Bytes::from(frames::tick(
                &self.id_json,
                time,
            )))));
        Metrics::add(&self.ctx.metrics.ticks, 1);
        if time >= self.last_time_record + 1000 {
            self.last_time_record = time;
            if let Some(j) = &mut self.journal {
                j.time(time);
            }
        }
    }

    fn commit_journal(&mut self) {
        if let Some(j) = &mut self.journal
            && let Err(e) = j.commit()
        {
            tracing::error!(session = %self.id, error = %e, "journal write failed; messages are still delivered but may not survive a restart");
            Metrics::add(&self.ctx.metrics.journal_errors, 1);
        }
    }

    /// Make the batch durable, then send what it produced, in order.
    fn flush(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        self.commit_journal();
        let mut outbox = std::mem::take(&mut self.outbox);
        for out in outbox.drain(..) {
            match out {
                Out::Broadcast(frame) => {
                    // Err only means nobody is listening right now.
                    let _ = self.stream.send(frame);
                }
                Out::Sync { conn, frame } => {
                    if let Some(c) = self.clients.get(&conn) {
                        // Subscribing here, between broadcasts, is what makes the first
                        // RECV this client sees carry exactly SYNC.seq + 1.
                        let stream = c.active.then(|| self.stream.subscribe());
                        c.handle.send(Direct::Sync {
                            frame: Utf8Bytes::from(frame),
                            stream,
                        });
                    }
                }
                Out::Direct(conn, d) => {
                    if let Some(c) = self.clients.get(&conn) {
                        c.handle.send(d);
                    }
                }
            }
        }
        self.outbox = outbox;
    }
}
