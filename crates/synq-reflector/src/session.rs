//! The rules of one session, without any I/O: the clock, sequencing, join/leave batching,
//! tallies (TUTTI), debounce, snapshots and the fallback, ticks, limits and the room key
//! checks of synq sessions.
//!
//! A [`Session`] takes an [`Input`] (or a [`Session::poll`] for its timers) with the
//! current time passed in, and records what follows: frames to send ([`Session::take_outbox`],
//! sent once the batch is journaled), connections to close and persistent data to record
//! at once ([`Session::take_effects`]), and journal records ([`Session::records`]). It
//! reads no clock, holds no channel or socket and touches no file: the session's task
//! (`island`) does all of that, so the rules are unit-tested with synthetic time.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use synq_protocol::client::{
    JoinArgs, MessageTail, SaveArgs, SendArgs, SendTags, SnapArgs, TickConfig, TuttiArgs,
};
use synq_protocol::frames::{self, RecvFrame, SnapshotRef};
use synq_protocol::identity::{self, check_content, is_synq_session};
use synq_protocol::{CloseCode, INITIAL_SEQ};

use crate::config::ReflectorConfig;
use crate::handle::{ConnId, Shared};
use crate::journal::{Header, Records, Recovered, SnapshotPointer};
use crate::metrics::Metrics;
use crate::sync_frame::SyncFrame;

#[cfg(test)]
mod tests;

/// What a connection asks of its session, as the rules see it (a [`crate::handle::Command`]
/// without the connection's channel).
#[derive(Debug)]
pub(crate) enum Input {
    Join {
        conn: ConnId,
        /// The `Host` the client connected to: its snapshots must be stored there.
        host: Option<Arc<str>>,
        args: Box<JoinArgs>,
        /// The URL of the persistent data recorded for this session's app, if
        /// [`Session::persisted_key`] asked for it.
        persisted_url: Option<String>,
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

/// What to send once the batch's journal records are written, in order.
#[derive(Debug)]
pub(crate) enum Out {
    /// To every active client, on the session's stream.
    Broadcast(Shared),
    /// The SYNC of a client that joined. An active client starts reading the stream right
    /// after it (this is what makes its first RECV carry exactly SYNC.seq + 1).
    Sync { conn: ConnId, frame: SyncFrame },
    /// A frame for one connection only.
    Frame(ConnId, Utf8Bytes),
}

/// What must happen at once, before the batch is journaled or anything sent.
#[derive(Debug, PartialEq)]
pub(crate) enum Effect {
    Close(ConnId, CloseCode),
    /// Record `url` as the persistent data of the app named by `key`
    /// ([`Header::persistent_key`]).
    Persist {
        key: String,
        url: String,
    },
}

/// The session clock: integer ms since the session started, never decreasing.
#[derive(Debug)]
struct Clock {
    start: Instant,
    base: u64,
    scale: f64,
    last: u64,
}

impl Clock {
    fn new(base: u64, now: Instant) -> Clock {
        Clock {
            start: now,
            base,
            scale: 1.0,
            last: base,
        }
    }

    fn now(&mut self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
        let t = self.base + (elapsed * 1000.0 * self.scale) as u64;
        self.last = self.last.max(t);
        self.last
    }

    /// Unscaled ms since the clock started (for the `rawtime` flag).
    fn raw(&self, now: Instant) -> u64 {
        self.base + now.saturating_duration_since(self.start).as_millis() as u64
    }

    fn set_scale(&mut self, scale: f64, now: Instant) {
        self.base = self.now(now);
        self.start = now;
        self.scale = scale;
    }
}

/// A retained message: the RECV frame as broadcast, from which SYNC replays `[time, seq, …]`.
#[derive(Debug)]
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

    /// What it costs to keep: counted against the session's and the server's limits.
    fn bytes(&self) -> usize {
        self.frame.len()
    }
}

#[derive(Debug)]
struct Client {
    /// The `Host` the client connected to.
    host: Option<Arc<str>>,
    /// Joined with a user: a participant (announced, may vote, snapshot and set ticks).
    /// In synq sessions, the authenticated view id stamped on this connection's messages.
    view_id: Option<String>,
    user: Option<Box<serde_json::value::RawValue>>,
    user_string: Option<String>,
    active: bool,
}

/// A user value waiting in the join/leave batch.
#[derive(Debug)]
struct PendingUser {
    raw: String,
    string: Option<String>,
}

#[derive(Debug)]
struct Tally {
    send_time: f64,
    send_time_raw: String,
    wants_vote: bool,
    target: String,
    votes: Vec<(String, u32)>,
    expecting: i64,
    due: Instant,
}

/// One session's state and rules.
#[derive(Debug)]
pub(crate) struct Session {
    config: Arc<ReflectorConfig>,
    metrics: Arc<Metrics>,
    id: String,
    id_json: String,
    header: Option<Header>,
    clock: Clock,
    seq: u32,
    /// Messages since the fallback (or since the session's start, or the snapshot).
    messages: VecDeque<Retained>,
    /// The latest accepted snapshot: what joiners load.
    snapshot: Option<SnapshotPointer>,
    /// What a synq joiner loads if the snapshot does not load: the snapshot before it, or
    /// (url empty) a replay of every message since the session started. A SNAP that names
    /// a file that is not a snapshot (its sender had no password) can then cost joiners
    /// time, never the room.
    fallback: Option<SnapshotPointer>,
    /// `messages` start at the session's first message (none was ever dropped).
    from_start: bool,
    /// How many of `messages` (and their bytes) the latest snapshot contains: kept only
    /// for the fallback, and the first to go when the session needs room.
    covered: usize,
    covered_bytes: usize,
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
    /// msgID → (when last let through, its debounce period).
    debounce: HashMap<String, (Instant, Duration)>,
    /// Bytes of `messages`, also counted in the server-wide `stored_bytes`.
    retained_bytes: usize,
    last_snapshot_at: Option<Instant>,
    leaves: Vec<(Instant, ConnId)>,
    /// When a session without clients may be retired.
    idle_due: Option<Instant>,
    last_requ: Option<u64>,
    last_info: Option<u64>,
    last_refusal: Option<u64>,
    records: Records,
    outbox: Vec<Out>,
    effects: Vec<Effect>,
    /// Connections the session no longer knows (left, or refused at JOIN).
    departed: Vec<ConnId>,
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

/// The idle tick period for a requested one in ms: none for absent, zero, negative or NaN;
/// otherwise clamped to [`min`, `MAX_TICK_MS`] (a huge value once made the conversion to a
/// `Duration` panic and killed the session; a tiny one cost a core for 50 sessions).
fn tick_period(ms: Option<f64>, min: Duration) -> Option<Duration> {
    let min_ms = min.as_millis() as f64;
    ms.filter(|t| *t > 0.0)
        .map(|t| Duration::from_millis(t.clamp(min_ms, synq_protocol::MAX_TICK_MS) as u64))
}

/// A client-supplied delay in ms as a `Duration`, clamped to [0, 60 s].
fn clamped_ms(ms: Option<f64>) -> Duration {
    let ms = ms.filter(|d| *d > 0.0).unwrap_or(0.0).min(60_000.0);
    Duration::from_millis(ms as u64)
}

/// Longest `debounce` message id that is remembered (Croquet's are short names).
const MAX_DEBOUNCE_ID: usize = 128;

impl Session {
    /// The session `id` as its journal left it (`rec`; `Recovered::default()` for a new
    /// one), at `now`. Its journal records go to `records` (`Records::disabled()` when
    /// the session has no journal).
    pub(crate) fn new(
        config: Arc<ReflectorConfig>,
        metrics: Arc<Metrics>,
        id: String,
        rec: Recovered,
        records: Records,
        now: Instant,
    ) -> Session {
        let id_json = frames::quote(&id);
        let resumed = rec.header.is_some();
        let messages: VecDeque<Retained> = rec
            .messages
            .iter()
            .map(|m| Retained::new(m.seq, RecvFrame::from_args(&id_json, &m.args)))
            .collect();
        // Ticks are not journaled one by one (a time record is written at most once a
        // second), so clients may have seen up to a second more; start past that so time
        // never goes backwards for a client that rejoins after a restart.
        let base = if resumed { rec.time + 1000 } else { 0 };
        let retained_bytes: usize = messages.iter().map(Retained::bytes).sum();
        let covered = rec.snapshot.as_ref().map_or(0, |s| {
            synq_protocol::seq::covered_by_snapshot(s.seq, messages.iter().map(|m| m.seq))
        });
        let covered_bytes = messages.iter().take(covered).map(Retained::bytes).sum();
        Metrics::add_i(&metrics.stored_bytes, retained_bytes as i64);
        Metrics::add_i(&metrics.sessions, 1);
        Session {
            tick: rec
                .header
                .as_ref()
                .and_then(|h| tick_period(h.tick_ms, config.min_tick)),
            header: rec.header,
            id,
            id_json,
            clock: Clock::new(base, now),
            seq: rec.last_seq.unwrap_or(INITIAL_SEQ),
            messages,
            from_start: rec.snapshot.is_none()
                && rec.fallback.as_ref().is_none_or(|f| f.url.is_empty()),
            snapshot: rec.snapshot,
            fallback: rec.fallback,
            covered,
            covered_bytes,
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
            retained_bytes,
            last_snapshot_at: None,
            leaves: Vec::new(),
            // A session whose first JOIN is refused has no client to leave: it is idle
            // from the start, or it would hold its place in the registry for ever.
            idle_due: Some(now + config.idle_grace),
            last_requ: None,
            last_info: None,
            last_refusal: None,
            records,
            outbox: Vec::new(),
            effects: Vec::new(),
            departed: Vec::new(),
            config,
            metrics,
        }
    }

    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The last sequence number issued.
    pub(crate) fn seq(&self) -> u32 {
        self.seq
    }

    /// Whether `conn` is in the session: `Some(true)` for a participant, `Some(false)` for
    /// an observer.
    pub(crate) fn client(&self, conn: ConnId) -> Option<bool> {
        self.clients.get(&conn).map(|c| c.active)
    }

    pub(crate) fn has_clients(&self) -> bool {
        !self.clients.is_empty()
    }

    /// The journal records of the batch so far; the task writes (and clears) them.
    pub(crate) fn records(&mut self) -> &mut Records {
        &mut self.records
    }

    /// What to send, in order, once the batch's records are written.
    pub(crate) fn take_outbox(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.outbox)
    }

    /// Hands back an emptied outbox, so that its buffer is reused by the next batch.
    pub(crate) fn return_outbox(&mut self, outbox: Vec<Out>) {
        if self.outbox.is_empty() {
            self.outbox = outbox;
        }
    }

    pub(crate) fn has_outbox(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// What must happen at once (closes, persistent data).
    pub(crate) fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Connections the session has let go of since the last call.
    pub(crate) fn take_departed(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.departed)
    }

    /// The persistent data a JOIN of `args` would be told about, as the key to look it up
    /// by (the task reads it and passes it in [`Input::Join`]): only a session that has
    /// not begun (no message, no snapshot) starts from an earlier session's data.
    pub(crate) fn persisted_key(&self, args: &JoinArgs) -> Option<String> {
        if self.snapshot.is_some() || !self.messages.is_empty() || self.seq != INITIAL_SEQ {
            return None;
        }
        match &self.header {
            Some(h) => h.persistent_key(),
            None => Header {
                timeline: String::new(),
                tove: None,
                tick_ms: None,
                delay_ms: None,
                app_id: args.app_id.clone(),
                persistent_id: args.persistent_id.clone(),
                developer_id: args.developer_id.clone(),
                room_verifier: None,
            }
            .persistent_key(),
        }
    }

    /// The earliest time [`Session::poll`] has something to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let tallies = self.tallies.values().map(|t| t.due);
        let leaves = self.leaves.iter().map(|(t, _)| *t);
        [self.users_due, self.next_tick, self.idle_due]
            .into_iter()
            .flatten()
            .chain(tallies)
            .chain(leaves)
            .min()
    }

    /// Whether the session has had no client for its idle grace period: it may be retired.
    pub(crate) fn is_idle(&self, now: Instant) -> bool {
        self.clients.is_empty() && self.idle_due.is_some_and(|d| d <= now)
    }

    /// The session was not retired (a JOIN was on its way): it may be, once idle again.
    pub(crate) fn kept(&mut self, now: Instant) {
        self.idle_due = Some(now + self.config.idle_grace);
    }

    /// The session ends: records its time. Returns it.
    pub(crate) fn finish(&mut self, now: Instant) -> u64 {
        let time = self.clock.now(now);
        self.records.time(time);
        time
    }

    pub(crate) fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::Join {
                conn,
                host,
                args,
                persisted_url,
            } => self.join(conn, host, *args, persisted_url, now),
            Input::Send { conn, args, tags } => self.send(conn, args, tags, now),
            Input::Tutti { conn, args } => self.tutti(conn, args, now),
            Input::Snap { conn, args } => self.snap(conn, args, now),
            Input::Save { conn, args } => self.save(conn, args),
            Input::Ticks { conn, cfg } => self.ticks(conn, cfg, now),
            Input::Closed { conn } => self.closed(conn, now),
        }
    }

    /// Fires the timers that are due at `now`: leaves, the users batch, tallies, the idle
    /// tick. `audience` says whether anyone reads the stream: a tick for nobody is not
    /// made (it would cost a frame and, once a second, a journal record).
    pub(crate) fn poll(&mut self, now: Instant, audience: bool) {
        if self.leaves.iter().any(|(t, _)| *t <= now) {
            let (due, later): (Vec<_>, Vec<_>) =
                self.leaves.drain(..).partition(|(t, _)| *t <= now);
            self.leaves = later;
            for (_, conn) in due {
                self.remove_client(conn, now);
            }
        }
        if self.users_due.is_some_and(|t| t <= now) {
            self.announce_users(now);
        }
        let expired: Vec<String> = self
            .tallies
            .iter()
            .filter(|(_, t)| t.due <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.complete_tally(&key, now);
        }
        if self.next_tick.is_some_and(|t| t <= now) {
            self.tick(now, audience);
        }
    }

    fn close(&mut self, conn: ConnId, code: CloseCode) {
        self.effects.push(Effect::Close(conn, code));
    }

    /// Closes a connection that is refused at JOIN (it never becomes a client).
    fn refuse(&mut self, conn: ConnId, code: CloseCode) {
        self.close(conn, code);
        self.departed.push(conn);
    }

    fn join(
        &mut self,
        conn: ConnId,
        host: Option<Arc<str>>,
        mut args: JoinArgs,
        persisted_url: Option<String>,
        now: Instant,
    ) {
        if synq_protocol::identity::is_obsolete_synq_session(&self.id) {
            tracing::info!(session = %self.id, conn, "JOIN refused: a session of an older synq");
            self.refuse(conn, CloseCode::OutdatedProtocol);
            return;
        }
        // synq sessions: every JOIN is a view with the room key, and its id matches its
        // proof; neither the proof nor the key is announced.
        let mut view_id = None;
        let mut room_verifier = None;
        if is_synq_session(&self.id) {
            let checked = match args.user.as_deref().map(|u| identity::check_user(u.get())) {
                Some(Ok(checked)) => checked,
                Some(Err(e)) => {
                    tracing::warn!(session = %self.id, conn, error = %e, "JOIN refused");
                    self.refuse(conn, CloseCode::BadIdentity);
                    return;
                }
                None => {
                    tracing::warn!(session = %self.id, conn, "JOIN refused: no user");
                    self.refuse(conn, CloseCode::BadIdentity);
                    return;
                }
            };
            // The session's first JOIN fixes the verifier; a session without one (a journal
            // from before room keys) is never opened to a key that merely came first.
            let fixed = self.header.as_ref().map(|h| h.room_verifier.as_deref());
            if fixed.is_some_and(|v| v != Some(checked.room_verifier.as_str())) {
                tracing::info!(session = %self.id, conn, "JOIN refused: wrong room key");
                self.refuse(conn, CloseCode::WrongRoomKey);
                return;
            }
            match serde_json::value::RawValue::from_string(checked.announced) {
                Ok(raw) => args.user = Some(raw),
                Err(_) => {
                    self.refuse(conn, CloseCode::BadIdentity);
                    return;
                }
            }
            view_id = Some(checked.view_id);
            room_verifier = Some(checked.room_verifier);
        }
        // Participants and observers are counted apart: silent observers cannot fill a room.
        let participant = args.user.is_some();
        let (same_kind, limit) = if participant {
            let n = self.clients.values().filter(|c| c.active).count();
            (n, self.config.max_clients_per_session)
        } else {
            let n = self.clients.values().filter(|c| !c.active).count();
            (n, self.config.max_observers_per_session)
        };
        if same_kind >= limit {
            tracing::warn!(session = %self.id, conn, participant, limit, "JOIN refused: session full");
            self.refuse(conn, CloseCode::SessionFull);
            return;
        }
        if self.header.is_none() {
            // The JOIN that creates the session fixes its tick rate and tove.
            let tick_ms = match args.ticks {
                None => Some(synq_protocol::DEFAULT_TICK_MS),
                Some(t) => Some(t.tick.unwrap_or(synq_protocol::DEFAULT_TICK_MS)),
            }
            .filter(|t| t.is_finite());
            let header = Header {
                timeline: random_timeline(),
                tove: args.tove.clone(),
                tick_ms,
                delay_ms: args.ticks.and_then(|t| t.delay),
                app_id: args.app_id.clone(),
                persistent_id: args.persistent_id.clone(),
                developer_id: args.developer_id.clone(),
                room_verifier,
            };
            self.tick = tick_period(header.tick_ms, self.config.min_tick);
            self.records.header(&header);
            // The name is the room's name in synq: not for logs that others may read.
            tracing::info!(session = %self.id, tick = ?self.tick, "session created");
            tracing::debug!(session = %self.id, name = ?args.name, "session name");
            self.header = Some(header);
        }
        // leaveDelay and flags are session-wide and follow the latest JOIN (as in Croquet).
        self.leave_delay = clamped_ms(args.leave_delay);
        self.flags = args.flags.clone();
        self.flags_json = serde_json::to_string(&self.flags).unwrap_or_else(|_| "{}".into());
        self.idle_due = None;

        let persisted_url =
            if self.snapshot.is_none() && self.messages.is_empty() && self.seq == INITIAL_SEQ {
                persisted_url
            } else {
                None
            };
        let time = self.clock.now(now);
        let header = self.header.as_ref();
        // Croquet clients get the messages after the snapshot; synq clients all retained
        // ones, with the fallback that they start from.
        let synq = is_synq_session(&self.id);
        let skip = match (&self.snapshot, synq) {
            (Some(s), false) => {
                synq_protocol::seq::covered_by_snapshot(s.seq, self.messages.iter().map(|m| m.seq))
            }
            _ => 0,
        };
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
            reflector: &self.config.label,
            timeline: header.map_or("", |h| h.timeline.as_str()),
            flags_json: &self.flags_json,
            fallback: self
                .fallback
                .as_ref()
                .filter(|_| synq)
                .map(|s| SnapshotRef {
                    time_raw: &s.time_raw,
                    seq: s.seq,
                    url: &s.url,
                }),
        };
        let (head, tail) = sync.parts(&self.id_json);
        let frame = SyncFrame {
            head,
            messages: self
                .messages
                .iter()
                .skip(skip)
                .map(|m| (m.frame.clone(), m.args_start))
                .collect(),
            tail,
        };
        self.outbox.push(Out::Sync { conn, frame });
        Metrics::add(&self.metrics.joins, 1);

        let user_string = args.user_string();
        let active = args.user.is_some();
        tracing::debug!(session = %self.id, conn, user = ?args.user.as_ref().map(|u| u.get()), "JOIN");
        if let Some(user) = &args.user {
            self.user_joined(
                PendingUser {
                    raw: user.get().to_owned(),
                    string: user_string.clone(),
                },
                now,
            );
        }
        self.clients.insert(
            conn,
            Client {
                host,
                view_id,
                user: args.user,
                user_string,
                active,
            },
        );
        if self.next_tick.is_none() {
            self.next_tick = self.tick.map(|p| now + p);
        }
        self.hand_ai_capability();
    }

    /// synq sessions: hands the participant (an active client) that just joined the AI
    /// capability that the AI gateway asks for, as `{"id", "action": "AICAP", "args":
    /// {"token", "expires"}}`, just before its SYNC (the last one queued) so that it holds
    /// one once it is synced. A rejoin brings a new one. Croquet sessions get nothing new.
    fn hand_ai_capability(&mut self) {
        let Some(issue) = &self.config.ai_capability else {
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
            .insert(at, Out::Frame(conn, Utf8Bytes::from(frame)));
    }

    fn user_joined(&mut self, user: PendingUser, now: Instant) {
        if let Some(s) = &user.string
            && let Some(i) = self.left.iter().position(|p| p.string.as_ref() == Some(s))
        {
            self.left.remove(i);
            return;
        }
        self.joined.push(user);
        self.arm_users(now);
    }

    fn user_left(&mut self, user: PendingUser, now: Instant) {
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
        self.arm_users(now);
    }

    fn arm_users(&mut self, now: Instant) {
        if self.users_due.is_none() {
            self.users_due = Some(now + Duration::from_millis(synq_protocol::USERS_INTERVAL_MS));
        }
    }

    fn send(&mut self, conn: ConnId, args: SendArgs, tags: Option<SendTags>, now: Instant) {
        let Some(tail) = self.client_tail(conn, &args.tail, now) else {
            return;
        };
        if let Some((msg_id, ms)) = tags.as_ref().and_then(SendTags::debounce)
            && self.debounced(msg_id, ms, now)
        {
            tracing::trace!(session = %self.id, "debounced");
            return;
        }
        self.broadcast(&tail, true, now);
    }

    /// What to sequence for a client's message whose elements after `[time, seq` are
    /// `tail`, or `None` if it must not be.
    ///
    /// In synq sessions the message must be exactly the sealed payload and the latency,
    /// and the reflector appends the sending connection's view id: the last element of
    /// every client message is the reflector's stamp, on every path (SEND and TUTTI's
    /// `firstMsg`). A connection without an identity cannot send there, and one that sends
    /// anything else (an object payload posing as a reflector event, a stamp of its own) is
    /// closed. In Croquet sessions the message is passed on as it is (`rawtime` aside).
    fn client_tail(&mut self, conn: ConnId, tail: &MessageTail, now: Instant) -> Option<String> {
        let client = self.clients.get(&conn)?;
        if is_synq_session(&self.id) {
            let id = client.view_id.as_ref()?;
            if let Err(e) = check_content(tail) {
                tracing::warn!(session = %self.id, conn, "closing client: {e}");
                self.close(conn, CloseCode::MalformedMessage);
                return None;
            }
            return Some(format!("{},{}", tail.text, frames::quote(id)));
        }
        if self.flags.contains_key("rawtime") {
            let raw = self.clock.raw(now).to_string();
            return Some(tail.with_last_replaced(&raw));
        }
        Some(tail.text.clone())
    }

    /// Whether a message tagged `debounce` must be dropped: one with the same id went
    /// through less than `ms` ago. What is remembered is bounded: ids longer than
    /// [`MAX_DEBOUNCE_ID`] bytes are not debounced, periods are capped at a minute, and at
    /// most `max_debounce_ids` ids are kept (expired ones are forgotten first; when all are
    /// live, a new id is let through unremembered).
    fn debounced(&mut self, msg_id: &str, ms: f64, now: Instant) -> bool {
        if msg_id.len() > MAX_DEBOUNCE_ID {
            return false;
        }
        if let Some((last, period)) = self.debounce.get(msg_id)
            && now.saturating_duration_since(*last) < *period
        {
            return true;
        }
        if self.debounce.len() >= self.config.max_debounce_ids
            && !self.debounce.contains_key(msg_id)
        {
            self.debounce
                .retain(|_, (last, period)| now.saturating_duration_since(*last) < *period);
            if self.debounce.len() >= self.config.max_debounce_ids {
                return false;
            }
        }
        self.debounce
            .insert(msg_id.to_owned(), (now, clamped_ms(Some(ms))));
        false
    }

    /// Sequence, journal and broadcast one message whose elements after `[time, seq` are
    /// `tail`. A client's message (`from_client`) is also refused when the session or the
    /// server holds as many bytes of messages as it may; the reflector's own (joins,
    /// leaves, tallies) are small and always go through.
    fn broadcast(&mut self, tail: &str, from_client: bool, now: Instant) -> bool {
        let config = Arc::clone(&self.config);
        let cfg = &*config;
        let bytes = tail.len() + self.id_json.len() + 48;
        let metrics = Arc::clone(&self.metrics);
        let server_bytes = || {
            let b = metrics
                .stored_bytes
                .load(std::sync::atomic::Ordering::Relaxed);
            usize::try_from(b).unwrap_or(0)
        };
        let full = |session: &Session| {
            session.messages.len() >= cfg.max_messages
                || from_client
                    && (session.retained_bytes + bytes > cfg.max_session_bytes
                        || server_bytes() + bytes > cfg.max_stored_bytes)
        };
        if full(self) && self.drop_fallback() {
            tracing::info!(session = %self.id, "the session needs room: its fallback snapshot is given up");
        }
        let n = self.messages.len();
        if full(self) {
            let server_bytes = server_bytes();
            let time = self.clock.now(now);
            self.request_snapshot(time);
            Metrics::add(&self.metrics.messages_refused, 1);
            if self.last_refusal.is_none_or(|t| time >= t + 1000) {
                self.last_refusal = Some(time);
                tracing::warn!(session = %self.id, retained = n, bytes = self.retained_bytes, server_bytes, "message refused: the session holds as many messages as it may ({n} messages, {} bytes) and needs a snapshot first, or the server is at --max-stored-bytes", self.retained_bytes);
                self.info_all(
                    "SNAPSHOT_NEEDED",
                    "Cannot buffer more messages. Need snapshot.",
                    "warning",
                );
            }
            return false;
        }
        let time = self.clock.now(now);
        // Asked for by what came since the latest snapshot (the fallback's share is
        // given up when room is needed).
        let since = n - self.covered;
        if since + 1 >= cfg.snapshot_request_at
            || self.retained_bytes - self.covered_bytes + bytes > cfg.max_session_bytes / 2
        {
            self.request_snapshot(time);
            let almost_full =
                cfg.max_messages - (cfg.max_messages.saturating_sub(cfg.snapshot_request_at)) / 4;
            if since + 1 >= almost_full && self.last_info.is_none_or(|t| time >= t + 10_000) {
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
        self.records.message(rf.args());
        let retained = Retained::new(self.seq, rf);
        self.outbox
            .push(Out::Broadcast(Shared::Msg(retained.frame.clone())));
        self.retained_bytes += retained.bytes();
        Metrics::add_i(&self.metrics.stored_bytes, retained.bytes() as i64);
        self.messages.push_back(retained);
        Metrics::add(&self.metrics.messages_broadcast, 1);
        // Ticks only flow when nothing else was broadcast for a full period.
        self.next_tick = self.tick.map(|p| now + p);
        true
    }

    /// Drops the messages that only the fallback needs (those the latest snapshot
    /// contains) and the fallback with them. Returns whether there was one.
    fn drop_fallback(&mut self) -> bool {
        if self.fallback.is_none() || self.snapshot.is_none() {
            return false;
        }
        self.messages.drain(..self.covered);
        self.retained_bytes -= self.covered_bytes;
        Metrics::add_i(&self.metrics.stored_bytes, -(self.covered_bytes as i64));
        self.covered = 0;
        self.covered_bytes = 0;
        self.fallback = None;
        true
    }

    /// A message generated by the reflector itself (users, tally): `rawtime` appends.
    fn broadcast_own(&mut self, payload: &str, now: Instant) {
        if self.flags.contains_key("rawtime") {
            let tail = format!("{payload},{}", self.clock.raw(now));
            self.broadcast(&tail, false, now);
        } else {
            self.broadcast(payload, false, now);
        }
    }

    fn request_snapshot(&mut self, time: u64) {
        if self.last_requ.is_some_and(|t| time < t + 1000) {
            return;
        }
        self.last_requ = Some(time);
        tracing::info!(session = %self.id, retained = self.messages.len(), "requesting a snapshot (REQU)");
        Metrics::add(&self.metrics.snapshot_requests, 1);
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
            self.outbox.push(Out::Frame(*id, frame.clone()));
        }
    }

    fn is_participant(&self, conn: ConnId) -> bool {
        self.clients.get(&conn).is_some_and(|c| c.active)
    }

    fn tutti(&mut self, conn: ConnId, a: TuttiArgs, now: Instant) {
        if !self.is_participant(conn) {
            return;
        }
        let time = self.clock.now(now);
        if !self.tallies.contains_key(&a.tutti_key) {
            if a.send_time < self.tally_history_limit(time) {
                tracing::debug!(session = %self.id, key = %a.tutti_key, "vote too old; ignored");
                return;
            }
            if self.completed.iter().any(|(k, _)| *k == a.tutti_key) {
                tracing::debug!(session = %self.id, key = %a.tutti_key, "vote for a completed tally; ignored");
                return;
            }
            if let Some(first) = &a.first_msg {
                let Some(tail) = self.client_tail(conn, first, now) else {
                    return;
                };
                self.broadcast(&tail, true, now);
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
                    due: now + Duration::from_millis(synq_protocol::TALLY_INTERVAL_MS),
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
            self.complete_tally(&a.tutti_key, now);
        }
    }

    fn tally_history_limit(&mut self, time: u64) -> f64 {
        let age_limit = time as f64 - synq_protocol::MAX_TALLY_AGE_MS as f64 + 1.0;
        self.completed.retain(|(_, t)| *t >= age_limit);
        self.completed_sentinel
            .map_or(age_limit, |s| s.max(age_limit))
    }

    fn complete_tally(&mut self, key: &str, now: Instant) {
        let Some(t) = self.tallies.remove(key) else {
            return;
        };
        if t.wants_vote || t.votes.len() > 1 {
            let payload =
                frames::tally_payload(&t.send_time_raw, &t.votes, &t.target, key, t.expecting);
            self.broadcast_own(&payload, now);
        }
        self.completed.push_back((key.to_owned(), t.send_time));
        while self.completed.len() > synq_protocol::MAX_COMPLETED_TALLIES {
            if let Some((_, st)) = self.completed.pop_front() {
                self.completed_sentinel = Some(self.completed_sentinel.map_or(st, |s| s.max(st)));
            }
        }
    }

    fn snap(&mut self, conn: ConnId, a: SnapArgs, now: Instant) {
        if a.dissident {
            tracing::warn!(session = %self.id, conn, time = a.time, "dissident snapshot ignored (its state disagreed with the majority)");
            return;
        }
        if self.snapshot.as_ref().is_some_and(|s| a.time <= s.time) {
            tracing::debug!(session = %self.id, time = a.time, "snapshot not newer than the current one; ignored");
            return;
        }
        if self.snapshot.as_ref().is_some_and(|s| s.seq == a.seq) {
            // A client's periodic snapshot with no message since the last one: it would
            // spare joiners only ticks.
            tracing::debug!(session = %self.id, seq = a.seq, "snapshot at the seq of the current one; ignored");
            return;
        }
        if let Err(why) = self.check_snapshot(conn, &a, now) {
            tracing::warn!(session = %self.id, conn, "snapshot refused: {why}");
            Metrics::add(&self.metrics.snapshots_refused, 1);
            return;
        }
        // The snapshot being replaced becomes the fallback: only what comes before it is
        // dropped. Before the first snapshot, the fallback is a replay from the start.
        match self.snapshot.take() {
            Some(previous) => {
                let covered = synq_protocol::seq::covered_by_snapshot(
                    previous.seq,
                    self.messages.iter().map(|m| m.seq),
                );
                let dropped: usize = self.messages.drain(..covered).map(|m| m.bytes()).sum();
                self.retained_bytes -= dropped;
                Metrics::add_i(&self.metrics.stored_bytes, -(dropped as i64));
                self.fallback = Some(previous);
            }
            None => {
                self.fallback = self.from_start.then(|| SnapshotPointer {
                    time_raw: "0".into(),
                    time: 0.0,
                    seq: INITIAL_SEQ,
                    url: String::new(),
                });
            }
        }
        self.from_start = false;
        self.covered =
            synq_protocol::seq::covered_by_snapshot(a.seq, self.messages.iter().map(|m| m.seq));
        self.covered_bytes = self
            .messages
            .iter()
            .take(self.covered)
            .map(Retained::bytes)
            .sum();
        self.last_snapshot_at = Some(now);
        let snap = SnapshotPointer {
            time_raw: a.time_raw.get().to_owned(),
            time: a.time,
            seq: a.seq,
            url: a.url,
        };
        tracing::info!(session = %self.id, time = a.time, seq = a.seq, url = ?snap.url, retained = self.messages.len(), "snapshot registered");
        Metrics::add(&self.metrics.snapshots, 1);
        self.last_requ = None;
        let time = self.clock.now(now);
        if let Some(h) = &self.header {
            // Installed by the task on a blocking thread before the next write: up to the
            // session's byte cap of file I/O must not hold a runtime worker.
            self.records.compact(
                h,
                self.fallback.as_ref(),
                &snap,
                self.messages.iter().map(Retained::args),
                time,
            );
        }
        self.snapshot = Some(snap);
    }

    /// Whether a SNAP may replace the session's snapshot. Late joiners load what it names,
    /// so it must come from a participant, name a file of this server's store for this
    /// session, at a sequence number this reflector issued and a time that has passed;
    /// and a session takes at most one per `snapshot_min_interval` (each one rewrites the
    /// journal).
    fn check_snapshot(&mut self, conn: ConnId, a: &SnapArgs, now: Instant) -> Result<(), String> {
        let client = self
            .clients
            .get(&conn)
            .filter(|c| c.active)
            .ok_or("not from a participant (a JOIN with a user)")?;
        let host = client.host.clone();
        let time = self.clock.now(now);
        if !(a.time >= 0.0 && a.time <= time as f64) {
            return Err(format!("time {} is not between 0 and now ({time})", a.time));
        }
        let lower = self.snapshot.as_ref().map_or(INITIAL_SEQ, |s| s.seq);
        // Strictly after the last snapshot: each accepted snapshot rewrites the journal,
        // so each must cost its sender at least one new message.
        let issued =
            synq_protocol::seq::after(lower, a.seq) && !synq_protocol::seq::after(self.seq, a.seq);
        if !issued {
            return Err(format!(
                "seq {} was not issued since the last snapshot (last seq {})",
                a.seq, self.seq
            ));
        }
        if !snapshot_url_ok(&a.url, host.as_deref(), &self.id) {
            return Err(format!(
                "url {:?} is not in this server's file store (http(s)://{}/files/snapshots/{}/…)",
                a.url.get(..a.url.floor_char_boundary(200)).unwrap_or(""),
                host.as_deref().unwrap_or("<host>"),
                self.id
            ));
        }
        if self
            .last_snapshot_at
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.snapshot_min_interval)
        {
            return Err(
                "another snapshot was registered less than --snapshot-min-interval ago".into(),
            );
        }
        Ok(())
    }

    fn save(&mut self, conn: ConnId, a: SaveArgs) {
        if !self.is_participant(conn) {
            return;
        }
        let Some(key) = self.header.as_ref().and_then(Header::persistent_key) else {
            tracing::warn!(session = %self.id, conn, "SAVE refused: the session's JOIN had no appId/persistentId");
            self.close(conn, CloseCode::BadAppId);
            return;
        };
        if a.dissident {
            tracing::warn!(session = %self.id, conn, "dissident persistent data ignored");
            return;
        }
        self.effects.push(Effect::Persist { key, url: a.url });
    }

    fn ticks(&mut self, conn: ConnId, cfg: TickConfig, now: Instant) {
        if !self.is_participant(conn) {
            return;
        }
        if let (Some(d), Some(h)) = (cfg.delay, &mut self.header)
            && d > 0.0
        {
            h.delay_ms = Some(clamped_ms(Some(d)).as_millis() as f64);
        }
        let scale = cfg
            .scale
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or(1.0, |s| s.clamp(1.0 / 64.0, 64.0));
        self.clock.set_scale(scale, now);
        if let Some(p) = tick_period(cfg.tick, self.config.min_tick) {
            self.tick = Some(p);
            self.next_tick = Some(now + p);
        }
    }

    fn closed(&mut self, conn: ConnId, now: Instant) {
        if self.clients.contains_key(&conn) {
            self.leaves.push((now + self.leave_delay, conn));
        }
    }

    fn remove_client(&mut self, conn: ConnId, now: Instant) {
        let Some(c) = self.clients.remove(&conn) else {
            return;
        };
        self.departed.push(conn);
        if c.active
            && let Some(user) = c.user
        {
            self.user_left(
                PendingUser {
                    raw: user.get().to_owned(),
                    string: c.user_string,
                },
                now,
            );
        }
        if self.clients.is_empty() {
            self.idle_due = Some(now + self.config.idle_grace);
            self.next_tick = None;
        }
    }

    fn announce_users(&mut self, now: Instant) {
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
            self.broadcast_own(&payload, now);
        }
    }

    fn tick(&mut self, now: Instant, audience: bool) {
        let Some(period) = self.tick else {
            self.next_tick = None;
            return;
        };
        self.next_tick = Some(now + period);
        if !audience {
            return;
        }
        let time = self.clock.now(now);
        self.outbox
            .push(Out::Broadcast(Shared::Tick(Utf8Bytes::from(frames::tick(
                &self.id_json,
                time,
            )))));
        Metrics::add(&self.metrics.ticks, 1);
        if time >= self.last_time_record + 1000 {
            self.last_time_record = time;
            self.records.time(time);
        }
    }
}

impl Drop for Session {
    /// Also on a panic: the server-wide counts must not keep a failed session's share.
    fn drop(&mut self) {
        Metrics::add_i(&self.metrics.stored_bytes, -(self.retained_bytes as i64));
        Metrics::add_i(&self.metrics.sessions, -1);
    }
}

/// Whether `url` names a snapshot of session `id` in the file store of the server the
/// client reached as `host`: `http(s)://HOST/files/PATH`, where PATH is one of the paths
/// Croquet and synq clients store snapshots at, for this session (see `files::owner`).
fn snapshot_url_ok(url: &str, host: Option<&str>, id: &str) -> bool {
    let Some(host) = host else {
        return false;
    };
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return false;
    };
    let Some((url_host, path)) = rest.split_once('/') else {
        return false;
    };
    let Some(key) = path
        .strip_prefix("files/")
        .and_then(|k| crate::store::BlobKey::parse(k).ok())
    else {
        return false;
    };
    url_host.eq_ignore_ascii_case(host)
        && crate::store::owner(&key) == Some(crate::store::Owner::Session(id))
}
