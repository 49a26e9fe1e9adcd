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

mod members;
mod messages;
mod snapshots;
mod tallies;
#[cfg(test)]
mod tests;
mod ticks;

use ticks::{Clock, clamped_ms, tick_period};

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
        /// [`Session::persisted_key`] asked for it: kept only by the JOIN that creates the
        /// session.
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

    /// The key of the persistent data a JOIN of `args` would create the session from
    /// (the task reads the URL recorded under it and passes it in [`Input::Join`]). `None`
    /// once the session exists: what it started from was fixed, and journaled, when it was
    /// created — a later SAVE is for the app's next session, not this one (as in Croquet).
    pub(crate) fn persisted_key(&self, args: &JoinArgs) -> Option<String> {
        if self.header.is_some() {
            return None;
        }
        crate::journal::persistent_key(
            args.app_id.as_deref(),
            args.persistent_id.as_deref(),
            args.developer_id.as_deref(),
        )
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
}

impl Drop for Session {
    /// Also on a panic: the server-wide counts must not keep a failed session's share.
    fn drop(&mut self) {
        Metrics::add_i(&self.metrics.stored_bytes, -(self.retained_bytes as i64));
        Metrics::add_i(&self.metrics.sessions, -1);
    }
}
