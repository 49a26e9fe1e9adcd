//! The client's protocol logic without I/O: feed it the reflector's frames and the results
//! of downloads; it drives the replica and says what to send, fetch and upload. The
//! native and browser drivers only move bytes, so both behave the same.

use std::collections::{BTreeMap, VecDeque};

use serde_json::{Value, json};
use synq_model::{Event, Model, Persisted, Replica, SnapshotHash, ViewId};
use synq_protocol::action::{
    self, JoinRequest, JoinUser, SaveRequest, SendRequest, SendTags, SnapRequest, TickConfig,
    TuttiRequest,
};
use synq_protocol::identity::view_id_for_proof;
use synq_protocol::seq;
use synq_protocol::server::{
    FrameError, Reassembler, ServerFrame, StreamMessage, SyncArgs, Tally, User, Users,
};

use crate::crypto::{Purpose, SessionKey, random_hex};
use crate::error::ClientError;
use crate::wire::{Body, Wire, room_id, session_id};

/// A silent connection sends a PULSE this often (the Croquet client's interval; the
/// reflector closes connections silent for 60 s).
pub const KEEPALIVE_MS: f64 = 25_000.0;

/// Largest step of session time one frame may make (a year). The replica runs every
/// timer that falls due on the way, so a reflector time of `1e308` would keep a model
/// with a periodic timer busy forever; no live session goes a year without a message or
/// a tick.
pub const MAX_TIME_JUMP_MS: u64 = 366 * 24 * 3600 * 1000;

/// Largest plaintext of one bundle of inputs. Sealed and base64-encoded it stays well
/// under the reflector's frame limit (64 KiB by default).
pub const MAX_BUNDLE_BYTES: usize = 32 * 1024;

/// Largest snapshot a client downloads (the reflector's file store takes 64 MiB files by
/// default).
pub const MAX_SNAPSHOT_BYTES: usize = 64 * 1024 * 1024;

/// Default of [`ClientConfig::max_chunked_frame_bytes`]: three times the messages a
/// session keeps by default (`synq serve --max-session-bytes`, 32 MiB, the fallback's
/// share included). A SYNC holds those (as `[time, seq, payload]`, shorter than the RECVs
/// they are counted as) plus the reflector's own join and leave events, which that cap
/// does not count.
pub const MAX_CHUNKED_FRAME_BYTES: usize = 96 * 1024 * 1024;

/// What a client needs to know to join.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// WebSocket base of the reflector, e.g. `ws://127.0.0.1:8080/reflector`.
    pub reflector_url: String,
    /// HTTP base of the file store, e.g. `http://127.0.0.1:8080/files`.
    pub files_url: String,
    pub app_id: String,
    pub session_name: String,
    pub password: String,
    /// Reflector ticks per second (set by the session's first JOIN).
    pub tps: f64,
    /// PBKDF2 rounds (see [`crate::crypto::PBKDF2_ROUNDS`]).
    pub kdf_rounds: u32,
    /// The session's master key when the caller derived it already (the web page does,
    /// with WebCrypto: [`crate::crypto::derive_master`] of the same password, session and
    /// rounds); `None` derives it here.
    pub master_key: Option<crate::crypto::MasterKey>,
    /// Ask for a snapshot after this many events since the last one (`None`: only when
    /// the reflector asks).
    pub snapshot_every: Option<u64>,
    /// Sends per second at most; inputs published in between are bundled.
    pub max_sends_per_sec: f64,
    /// Largest frame reassembled from `_CHUNK` pieces (a late joiner's SYNC); a reflector
    /// that sends more fails the session with [`ClientError::Protocol`] rather than
    /// filling memory. Raise it with the reflector's `--max-session-bytes`.
    pub max_chunked_frame_bytes: usize,
}

impl ClientConfig {
    /// A config for a `synq serve` at `base` (`http://host:port`): reflector at
    /// `/reflector`, files at `/files`.
    pub fn for_server(base: &str, app_id: &str, session_name: &str, password: &str) -> Self {
        let base = base.trim_end_matches('/');
        let ws = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            base.to_owned()
        };
        ClientConfig {
            reflector_url: format!("{ws}/reflector"),
            files_url: format!("{base}/files"),
            app_id: app_id.to_owned(),
            session_name: session_name.to_owned(),
            password: password.to_owned(),
            tps: 20.0,
            kdf_rounds: crate::crypto::PBKDF2_ROUNDS,
            master_key: None,
            snapshot_every: Some(5_000),
            max_sends_per_sec: 30.0,
            max_chunked_frame_bytes: MAX_CHUNKED_FRAME_BYTES,
        }
    }
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Send this text frame on the socket.
    Send(String),
    /// GET this URL and pass the body to [`Controller::on_snapshot`].
    Download(String),
    /// PUT `body` to `url`; when it succeeded, send `then` (if any) on the socket.
    Upload {
        url: String,
        body: Vec<u8>,
        then: Option<String>,
    },
}

/// What happened in the session, for the app.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent<O> {
    /// An output of the model for the local views (only once synced).
    Output(O),
    /// The replica has caught up and this view's join has been applied: inputs flow.
    Synced,
    /// The connection was lost; the client is rejoining.
    Reconnecting(String),
    /// A message was dropped by every replica alike (undecryptable, forged sender,
    /// undecodable input).
    Rejected(String),
    /// Replicas disagree: the snapshot vote found more than one state.
    Diverged {
        /// This replica's snapshot hash and its keyed vote.
        mine: String,
        my_vote: String,
        /// The votes of the majority and of the others, with their counts.
        votes: Vec<(String, u32)>,
    },
    /// This replica uploaded a snapshot.
    SnapshotUploaded { url: String },
    /// This replica uploaded what the model persisted ([`synq_model::Cx::persist`]) for
    /// later versions of the room.
    PersistedUploaded { url: String },
    /// This replica uploaded a file the model wrote ([`synq_model::Cx::write_file`]).
    FileUploaded { url: String },
    /// The session started from what an earlier session of the room persisted, written
    /// by model `schema`.
    Restored { schema: String },
    /// A notice from the reflector.
    Info(String),
    /// The session ended for good (wrong password, fatal close).
    Failed(ClientError),
}

enum Phase {
    /// JOIN sent, waiting for SYNC.
    AwaitingSync,
    /// Waiting for the snapshot download; messages are held meanwhile.
    Loading {
        /// The file is the room's persisted data, the session's start (not a snapshot).
        persisted: bool,
        snapshot_seq: u32,
        held: Vec<StreamMessage>,
        time: u64,
        /// What to load if this snapshot does not: an older snapshot `(url, seq)`, or
        /// (url empty) a replay of `held` from the session's start.
        fallback: Option<(String, u32)>,
    },
    Running,
}

/// What a vote is about.
#[derive(Debug, Clone, PartialEq)]
enum Voted {
    Snapshot,
    /// What the model persisted for later versions.
    Persisted,
    /// A file the model wrote, by name.
    File(String),
}

/// A state this replica voted on: a snapshot, what the model persisted, or a file.
struct PendingSnapshot {
    voted: Voted,
    bytes: Vec<u8>,
    hash: String,
    vote: String,
    time: u64,
    seq: u32,
}

/// A reflector frame the client cannot read: the connection cannot go on.
fn frame_error(e: FrameError) -> ClientError {
    ClientError::Protocol(match e {
        FrameError::ChunkTooLarge { .. } => {
            format!("{e} (ClientConfig::max_chunked_frame_bytes)")
        }
        _ => e.to_string(),
    })
}

/// The client state machine of one session.
pub struct Controller<M: Model> {
    config: ClientConfig,
    session_id: String,
    /// The room across model versions: the JOIN's `persistentId`.
    room_id: String,
    key: SessionKey,
    me: ViewId,
    proof: String,
    sealed_view_data: String,
    tove: String,
    phase: Phase,
    replica: Option<Replica<M>>,
    timeline: Option<String>,
    last_seq: Option<u32>,
    own_join_seen: bool,
    synced: bool,
    queued: Vec<Vec<u8>>,
    /// Sent inputs not yet seen in the stream, by number: resent after a rejoin.
    unacked: BTreeMap<u64, Vec<u8>>,
    next_n: u64,
    last_send_ms: Option<f64>,
    /// When anything was last sent on this connection (for the keepalive).
    last_activity_ms: Option<f64>,
    events_since_snapshot: u64,
    poll_sent_at: Option<u64>,
    pending_snapshots: BTreeMap<String, PendingSnapshot>,
    effects: VecDeque<Effect>,
    events: VecDeque<SessionEvent<M::Output>>,
    chunks: Reassembler,
    loaded_snapshot: Option<String>,
    /// The AI capability the reflector handed this view (synq sessions), for its server's
    /// AI gateway.
    ai_token: Option<String>,
}

impl<M: Model> Controller<M> {
    /// A controller for a new view of the session in `config`, with `view_data`.
    pub fn new(config: ClientConfig, view_data: &M::ViewData) -> Result<Self, ClientError> {
        let session_id = session_id(&config.app_id, &config.session_name, M::SCHEMA);
        let room_id = room_id(&config.app_id, &config.session_name);
        let key = match &config.master_key {
            Some(master) => SessionKey::from_master(master, &room_id, &session_id),
            None => SessionKey::derive(&config.password, &room_id, &session_id, config.kdf_rounds),
        };
        let proof = random_hex(16).map_err(|e| ClientError::Crypto(e.to_string()))?;
        let me = ViewId(view_id_for_proof(&proof));
        let data =
            postcard::to_stdvec(view_data).map_err(|e| ClientError::Encode(e.to_string()))?;
        let crypto = |e: crate::crypto::CryptoError| ClientError::Crypto(e.to_string());
        let sealed_view_data = key.seal_view_data(me.as_str(), &data).map_err(crypto)?;
        let tove = key
            .seal_text(Purpose::SessionCheck, session_id.as_bytes())
            .map_err(crypto)?;
        let chunks = Reassembler::new(config.max_chunked_frame_bytes);
        Ok(Controller {
            config,
            session_id,
            room_id,
            key,
            me,
            proof,
            sealed_view_data,
            tove,
            phase: Phase::AwaitingSync,
            replica: None,
            timeline: None,
            last_seq: None,
            own_join_seen: false,
            synced: false,
            queued: Vec::new(),
            unacked: BTreeMap::new(),
            next_n: 1,
            last_send_ms: None,
            last_activity_ms: None,
            events_since_snapshot: 0,
            poll_sent_at: None,
            pending_snapshots: BTreeMap::new(),
            effects: VecDeque::new(),
            events: VecDeque::new(),
            chunks,
            loaded_snapshot: None,
            ai_token: None,
        })
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    pub fn view_id(&self) -> &ViewId {
        &self.me
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The replica, once it exists (after SYNC, or after the snapshot loaded).
    pub fn replica(&self) -> Option<&Replica<M>> {
        self.replica.as_ref()
    }

    /// The URL of the snapshot this replica was loaded from, if it was.
    pub fn loaded_snapshot(&self) -> Option<&str> {
        self.loaded_snapshot.as_deref()
    }

    /// The latest AI capability from the reflector: sent as `Authorization: Bearer …` to
    /// the server's AI gateway when this view relays an AI request.
    pub fn ai_token(&self) -> Option<&str> {
        self.ai_token.as_deref()
    }

    /// The socket URL of this session.
    pub fn socket_url(&self) -> String {
        format!(
            "{}/{}",
            self.config.reflector_url.trim_end_matches('/'),
            self.session_id
        )
    }

    /// The JOIN frame for a (re)connection. Call [`Controller::connection_lost`] first
    /// when rejoining.
    pub fn join_frame(&self) -> String {
        let tick = 1000.0 / self.config.tps.clamp(1.0 / 30.0, 60.0);
        JoinRequest {
            name: format!("{}/{}", self.config.app_id, self.config.session_name),
            app_id: self.config.app_id.clone(),
            sdk: Some(concat!("synq-client/", env!("CARGO_PKG_VERSION")).to_owned()),
            user: JoinUser::View {
                id: self.me.as_str().to_owned(),
                data: self.sealed_view_data.clone(),
                proof: Some(self.proof.clone()),
                room: Some(self.key.room_key().to_owned()),
            },
            ticks: Some(TickConfig {
                tick: Some(tick),
                delay: Some(0.0),
                scale: None,
            }),
            tove: Some(self.tove.clone()),
            // A reconnect within this time keeps the view in the session.
            leave_delay: Some(1250.0),
            // The reflector hands a new session what the room's last session persisted.
            persistent_id: Some(self.room_id.clone()),
            ..JoinRequest::default()
        }
        .encode(&self.session_id)
    }

    /// The connection dropped: the next SYNC is a rejoin.
    pub fn connection_lost(&mut self, reason: &str) {
        self.synced = false;
        self.own_join_seen = false;
        self.chunks.reset();
        self.last_send_ms = None;
        self.last_activity_ms = None;
        if !matches!(self.phase, Phase::Running) {
            // A half-loaded replica is not worth keeping.
            self.replica = None;
            self.last_seq = None;
        }
        self.phase = Phase::AwaitingSync;
        self.events
            .push_back(SessionEvent::Reconnecting(reason.to_owned()));
    }

    pub fn take_effects(&mut self) -> Vec<Effect> {
        self.effects.drain(..).collect()
    }

    pub fn take_events(&mut self) -> Vec<SessionEvent<M::Output>> {
        self.events.drain(..).collect()
    }

    /// Queues an input; it is sent (bundled with others) by [`Controller::flush`] once
    /// the session is synced.
    pub fn publish(&mut self, input: &M::Input) -> Result<(), ClientError> {
        let bytes = postcard::to_stdvec(input).map_err(|e| ClientError::Encode(e.to_string()))?;
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(ClientError::InputTooLarge {
                size: bytes.len(),
                limit: MAX_BUNDLE_BYTES,
            });
        }
        self.queued.push(bytes);
        Ok(())
    }

    /// Whether inputs wait to be sent (the driver only runs its send timer then).
    pub fn has_queued(&self) -> bool {
        self.synced && !self.queued.is_empty()
    }

    /// Sends queued inputs, at most `max_sends_per_sec` times per second, and a PULSE
    /// when nothing was sent for [`KEEPALIVE_MS`] (the reflector drops clients that stay
    /// silent for a minute). `now_ms` is any monotonic clock of the driver.
    pub fn flush(&mut self, now_ms: f64) -> Result<(), ClientError> {
        let activity = *self.last_activity_ms.get_or_insert(now_ms);
        if !self.synced || self.queued.is_empty() {
            if now_ms - activity >= KEEPALIVE_MS {
                self.last_activity_ms = Some(now_ms);
                self.effects.push_back(Effect::Send(action::pulse()));
            }
            return Ok(());
        }
        self.last_activity_ms = Some(now_ms);
        let interval = 1000.0 / self.config.max_sends_per_sec.max(0.1);
        if self.last_send_ms.is_some_and(|t| now_ms - t < interval) {
            return Ok(());
        }
        self.last_send_ms = Some(now_ms);
        let queued = std::mem::take(&mut self.queued);
        let mut batch = Vec::new();
        let mut size = 0;
        for input in queued {
            let n = self.next_n;
            self.next_n = self.next_n.saturating_add(1);
            size += input.len() + 4;
            self.unacked.insert(n, input);
            batch.push(n);
            if size >= MAX_BUNDLE_BYTES / 2 {
                self.send_inputs(&std::mem::take(&mut batch))?;
                size = 0;
            }
        }
        if !batch.is_empty() {
            self.send_inputs(&batch)?;
        }
        Ok(())
    }

    /// Seals and sends the unacknowledged inputs with these consecutive numbers.
    fn send_inputs(&mut self, numbers: &[u64]) -> Result<(), ClientError> {
        let Some(&first_n) = numbers.first() else {
            return Ok(());
        };
        let inputs = numbers
            .iter()
            .filter_map(|n| self.unacked.get(n).cloned())
            .collect();
        self.send_wire(Body::Inputs { first_n, inputs }, None)
    }

    fn send_wire(&mut self, body: Body, tags: Option<SendTags>) -> Result<(), ClientError> {
        let wire = Wire {
            view: self.me.0.clone(),
            body,
        };
        let plain = postcard::to_stdvec(&wire).map_err(|e| ClientError::Encode(e.to_string()))?;
        let sealed = self
            .key
            .seal_text(Purpose::Message, &plain)
            .map_err(|e| ClientError::Crypto(e.to_string()))?;
        let frame = SendRequest {
            tags,
            ..SendRequest::new(&sealed)
        }
        .encode(&self.session_id);
        self.effects.push_back(Effect::Send(frame));
        Ok(())
    }

    /// Handles one text frame from the reflector. An `Err` means the connection cannot
    /// go on: rejoin if [`ClientError::is_transient`], else give up.
    pub fn on_frame(&mut self, text: &str) -> Result<(), ClientError> {
        // Frames over 1 MB arrive in `_CHUNK<first><last>` pieces.
        if Reassembler::is_chunk(text) {
            return match self.chunks.push(text).map_err(frame_error)? {
                Some(whole) => self.on_frame(&whole),
                None => Ok(()),
            };
        }
        match ServerFrame::parse(text).map_err(frame_error)? {
            ServerFrame::Sync(sync) => self.on_sync(sync),
            ServerFrame::Recv(m) => match &mut self.phase {
                Phase::AwaitingSync => Ok(()),
                Phase::Loading { held, .. } => {
                    held.push(m);
                    Ok(())
                }
                Phase::Running => {
                    self.apply_message(m)?;
                    self.after_progress();
                    Ok(())
                }
            },
            ServerFrame::Tick(t) => {
                if let Phase::Running = &self.phase {
                    let t = self.checked_time(t)?;
                    if let Some(r) = &mut self.replica {
                        let outputs = r.advance_to(t);
                        self.emit(outputs);
                    }
                }
                Ok(())
            }
            ServerFrame::Requ => {
                self.on_snapshot_request();
                Ok(())
            }
            ServerFrame::AiCap { token } => {
                // Goes into an HTTP header: base64url only, bounded.
                if !token.is_empty()
                    && token.len() <= 1024
                    && token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    self.ai_token = Some(token);
                }
                Ok(())
            }
            ServerFrame::Info(info) => {
                self.events
                    .push_back(SessionEvent::Info(format!("reflector: {}", info.msg)));
                Ok(())
            }
            ServerFrame::Pong(_) | ServerFrame::Other { .. } => Ok(()),
        }
    }

    fn on_sync(&mut self, sync: SyncArgs) -> Result<(), ClientError> {
        if let Some(tove) = &sync.tove {
            let ok = self
                .key
                .open_text(Purpose::SessionCheck, tove)
                .is_ok_and(|id| id == self.session_id.as_bytes());
            if !ok {
                return Err(ClientError::WrongPassword);
            }
        }
        let SyncArgs {
            url,
            messages,
            time,
            seq: sync_seq,
            timeline,
            snapshot_seq,
            persisted,
            fallback,
            ..
        } = sync;
        let time = time.max(0.0) as u64;

        // Rejoin on the same timeline: keep the replica, apply only what is new.
        if let (Some(_), Some(last)) = (&self.replica, self.last_seq)
            && self.timeline.as_deref() == Some(timeline.as_str())
        {
            let covered = last == sync_seq
                || messages
                    .first()
                    .is_some_and(|m| m.seq == last.wrapping_add(1) || !seq::after(last, m.seq));
            if covered {
                self.phase = Phase::Running;
                for m in messages {
                    if seq::after(last, m.seq) {
                        self.apply_message(m)?;
                    }
                }
                self.finish_sync(time)?;
                return Ok(());
            }
        }
        self.timeline = Some(timeline);
        self.replica = None;
        // The session starts from the room's persisted data: only from this server's
        // file store, and only this room's (every replica decides alike).
        let persisted_url = match (url.is_empty(), persisted) {
            (false, true) => {
                let own = self.own_persisted_url(&url);
                if own.is_none() {
                    self.reject(format!(
                        "the room's saved data is not in this server's file store ({:?}); starting empty",
                        url.get(..url.floor_char_boundary(200)).unwrap_or("")
                    ));
                }
                own
            }
            _ => None,
        };
        if let Some(url) = persisted_url {
            self.load(
                url,
                Phase::Loading {
                    persisted: true,
                    snapshot_seq: sync_seq,
                    held: messages,
                    time,
                    fallback: None,
                },
            );
        } else if url.is_empty() || persisted {
            let (replica, _) = Replica::<M>::new(self.session_id.as_bytes(), 0);
            self.replica = Some(replica);
            self.last_seq = None;
            self.phase = Phase::Running;
            for m in messages {
                self.apply_message(m)?;
            }
            self.last_seq = Some(sync_seq);
            self.finish_sync(time)?;
        } else {
            let snapshot_seq = snapshot_seq.unwrap_or(sync_seq);
            let fallback = fallback.and_then(|f| {
                if f.url.is_empty() {
                    return Some((String::new(), f.seq));
                }
                // An older snapshot, or the persisted data the session started from.
                self.own_snapshot_url(&f.url)
                    .or_else(|| self.own_persisted_url(&f.url))
                    .map(|u| (u, f.seq))
            });
            // Snapshots are fetched from this client's own server only, whatever host the
            // SNAP named: the reflector's word decides which file, not where from.
            let url = self.own_snapshot_url(&url).ok_or_else(|| {
                ClientError::Snapshot(format!(
                    "the session's snapshot is not in this server's file store: {:?}",
                    url.get(..url.floor_char_boundary(200)).unwrap_or("")
                ))
            })?;
            self.load(
                url,
                Phase::Loading {
                    persisted: false,
                    snapshot_seq,
                    held: messages,
                    time,
                    fallback,
                },
            );
        }
        Ok(())
    }

    /// Downloads `url`, the file of `loading` (a snapshot, or the room's persisted
    /// data), holding the stream's messages meanwhile.
    fn load(&mut self, url: String, loading: Phase) {
        // A snapshot is what this replica was loaded from; persisted data is the
        // session's start, as a replay's is.
        let persisted = matches!(
            loading,
            Phase::Loading {
                persisted: true,
                ..
            }
        );
        self.loaded_snapshot = (!persisted).then(|| url.clone());
        self.phase = loading;
        self.effects.push_back(Effect::Download(url));
    }

    /// `url` (any host) as the same snapshot of this session in this client's own file
    /// store, if it names one: `…/files/snapshots/<session id>/<name>`.
    fn own_snapshot_url(&self, url: &str) -> Option<String> {
        let marker = format!("/files/snapshots/{}/", self.session_id);
        let (_, name) = url.split_once(&marker)?;
        let safe = |b: u8| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'=' | b'+' | b'~' | b'@')
        };
        if name.is_empty() || name.starts_with('.') || !name.bytes().all(safe) {
            return None;
        }
        Some(format!(
            "{}/snapshots/{}/{name}",
            self.config.files_url.trim_end_matches('/'),
            self.session_id
        ))
    }

    /// `url` (any host) as this room's persisted data in this client's own file store:
    /// `…/files/apps/<app id>/<room id>/<name>`.
    fn own_persisted_url(&self, url: &str) -> Option<String> {
        let marker = format!("/files/apps/{}/{}/", self.config.app_id, self.room_id);
        let (_, name) = url.split_once(&marker)?;
        let safe = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/');
        if name.is_empty()
            || name.starts_with('.')
            || name.contains("..")
            || !name.bytes().all(safe)
        {
            return None;
        }
        Some(format!("{}/{name}", self.persisted_base()))
    }

    /// Where this room's persisted data goes in this client's file store.
    fn persisted_base(&self) -> String {
        format!(
            "{}/apps/{}/{}",
            self.config.files_url.trim_end_matches('/'),
            self.config.app_id,
            self.room_id
        )
    }

    /// The session starts from the room's persisted data (`sealed`, or nothing when it
    /// did not download): every replica starts alike from the same bytes, and one that
    /// does not open or parse is ignored by all of them alike.
    fn start_persisted(&mut self, sealed: Option<&[u8]>) -> Result<(), ClientError> {
        let Phase::Loading { held, time, .. } = std::mem::replace(&mut self.phase, Phase::Running)
        else {
            return Ok(());
        };
        let loaded = match sealed {
            None => Err("it did not download".to_owned()),
            Some(sealed) => self
                .key
                .open(Purpose::Persisted, sealed)
                .map_err(|e| format!("it does not decrypt ({e})"))
                .and_then(|bytes| Persisted::from_bytes(&bytes).map_err(|e| e.to_string())),
        };
        let seed = self.session_id.clone().into_bytes();
        let replica = match loaded {
            Ok(from) => {
                self.events.push_back(SessionEvent::Restored {
                    schema: from.schema().to_owned(),
                });
                Replica::<M>::new_persisted(&seed, 0, &from).0
            }
            Err(why) => {
                self.reject(format!(
                    "the room's saved data from an earlier version did not load ({why}); starting empty"
                ));
                Replica::<M>::new(&seed, 0).0
            }
        };
        self.replica = Some(replica);
        self.last_seq = None;
        for m in held {
            self.apply_message(m)?;
        }
        self.finish_sync(time)
    }

    /// The snapshot download finished.
    pub fn on_snapshot(&mut self, sealed: &[u8]) -> Result<(), ClientError> {
        let Phase::Loading {
            snapshot_seq,
            persisted,
            ..
        } = &self.phase
        else {
            return Ok(());
        };
        if *persisted {
            return self.start_persisted(Some(sealed));
        }
        let snapshot_seq = *snapshot_seq;
        let restored = self
            .key
            .open(Purpose::Snapshot, sealed)
            .map_err(|e| format!("it does not decrypt ({e}): a wrong password, or a damaged file"))
            .and_then(|bytes| Replica::<M>::restore(&bytes).map_err(|e| e.to_string()));
        let replica = match restored {
            Ok(r) => r,
            Err(why) => return self.load_fallback(why),
        };
        let Phase::Loading { held, time, .. } = std::mem::replace(&mut self.phase, Phase::Running)
        else {
            return Ok(());
        };
        self.replica = Some(replica);
        self.last_seq = Some(snapshot_seq);
        for m in held {
            if seq::after(snapshot_seq, m.seq) {
                self.apply_message(m)?;
            }
        }
        self.finish_sync(time)?;
        Ok(())
    }

    /// The snapshot download failed.
    pub fn on_snapshot_failed(&mut self, reason: &str) -> Result<(), ClientError> {
        if let Phase::Loading {
            persisted: true, ..
        } = &self.phase
        {
            tracing::warn!(session = %self.session_id, %reason, "the room's saved data did not download");
            return self.start_persisted(None);
        }
        self.load_fallback(format!("download failed: {reason}"))
    }

    /// The snapshot did not load (`why`): load the fallback the SYNC named instead, an
    /// older snapshot or a replay from the start; without one the join fails.
    fn load_fallback(&mut self, why: String) -> Result<(), ClientError> {
        let phase = std::mem::replace(&mut self.phase, Phase::AwaitingSync);
        let Phase::Loading {
            held,
            time,
            fallback: Some((url, seq)),
            ..
        } = phase
        else {
            return Err(ClientError::Snapshot(why));
        };
        let persisted_start = self.own_persisted_url(&url);
        let from = if url.is_empty() || persisted_start.is_some() {
            "a replay from the start"
        } else {
            "the snapshot before it"
        };
        self.reject(format!(
            "the session's snapshot did not load ({why}); joining from {from}"
        ));
        if let Some(url) = persisted_start {
            // The session started from the room's persisted data: so does the replay.
            self.load(
                url,
                Phase::Loading {
                    persisted: true,
                    snapshot_seq: seq,
                    held,
                    time,
                    fallback: None,
                },
            );
        } else if url.is_empty() {
            let (replica, _) = Replica::<M>::new(self.session_id.as_bytes(), 0);
            self.replica = Some(replica);
            self.last_seq = None;
            self.loaded_snapshot = None;
            self.phase = Phase::Running;
            for m in held {
                self.apply_message(m)?;
            }
            self.finish_sync(time)?;
        } else {
            self.load(
                url,
                Phase::Loading {
                    persisted: false,
                    snapshot_seq: seq,
                    held,
                    time,
                    fallback: None,
                },
            );
        }
        Ok(())
    }

    fn finish_sync(&mut self, time: u64) -> Result<(), ClientError> {
        let time = self.checked_time(time as f64)?;
        if let Some(r) = &mut self.replica {
            r.advance_to(time);
        }
        self.after_progress();
        Ok(())
    }

    /// A reflector time as the replica's time, refused if it jumps too far ahead (see
    /// [`MAX_TIME_JUMP_MS`]). Negative times count as 0.
    fn checked_time(&self, time: f64) -> Result<u64, ClientError> {
        let now = self.replica.as_ref().map_or(0, |r| r.now());
        let limit = now.saturating_add(MAX_TIME_JUMP_MS);
        // `as` saturates (and maps NaN to 0), so huge values compare as u64::MAX.
        let t = time.max(0.0) as u64;
        if t > limit {
            return Err(ClientError::Protocol(format!(
                "the reflector's time jumps from {now} ms to {time} ms"
            )));
        }
        Ok(t)
    }

    /// Applies one message of the stream, in order.
    fn apply_message(&mut self, m: StreamMessage) -> Result<(), ClientError> {
        if let Some(last) = self.last_seq {
            let expected = last.wrapping_add(1);
            if m.seq != expected {
                if !seq::after(last, m.seq) {
                    return Ok(()); // already applied
                }
                return Err(ClientError::Gap {
                    expected,
                    got: m.seq,
                });
            }
        }
        let time = self.checked_time(m.time)?;
        self.last_seq = Some(m.seq);
        self.events_since_snapshot += 1;
        match &m.payload {
            Value::String(text) => {
                let sender = m.rest.last().and_then(Value::as_str).map(str::to_owned);
                self.apply_payload(time, m.seq, text, sender)
            }
            // Reflector events carry no sender stamp (a synq reflector refuses object
            // payloads from clients, and stamps every client message with a string).
            Value::Object(_) if m.rest.last().is_some_and(Value::is_string) => {
                self.reject(format!(
                    "message {} poses as a reflector event but was sent by {}",
                    m.seq,
                    m.rest.last().and_then(Value::as_str).unwrap_or_default()
                ));
                Ok(())
            }
            Value::Object(_) => {
                if let Some(users) = m.users() {
                    self.apply_users(time, users);
                } else if let Some(tally) = m.tally() {
                    self.on_tally(tally);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn reject(&mut self, why: String) {
        tracing::warn!(session = %self.session_id, "message dropped: {why}");
        self.events.push_back(SessionEvent::Rejected(why));
    }

    fn apply_payload(
        &mut self,
        time: u64,
        seq: u32,
        text: &str,
        sender: Option<String>,
    ) -> Result<(), ClientError> {
        let Some(sender) = sender else {
            self.reject(format!(
                "message {seq} has no authenticated sender (not a synq reflector?)"
            ));
            return Ok(());
        };
        let plain = match self.key.open_text(Purpose::Message, text) {
            Ok(p) => p,
            Err(e) => {
                self.reject(format!("message {seq} from {sender}: {e}"));
                return Ok(());
            }
        };
        let wire: Wire = match postcard::from_bytes(&plain) {
            Ok(w) => w,
            Err(e) => {
                self.reject(format!(
                    "message {seq} from {sender} is not a synq message: {e}"
                ));
                return Ok(());
            }
        };
        if wire.view != sender {
            self.reject(format!(
                "message {seq} claims to come from {} but the reflector says {sender}",
                wire.view
            ));
            return Ok(());
        }
        let from = ViewId(sender);
        match wire.body {
            Body::Inputs { first_n, inputs } => {
                // Snapshots are due by model events, not by (bundled) messages.
                self.events_since_snapshot += inputs.len().saturating_sub(1) as u64;
                for (i, bytes) in inputs.into_iter().enumerate() {
                    // Numbers past u64::MAX: every replica drops the rest alike.
                    let Some(n) = first_n.checked_add(i as u64) else {
                        self.reject(format!("inputs from {from} numbered past the last number"));
                        break;
                    };
                    if from == self.me {
                        self.unacked.remove(&n);
                    }
                    let input: M::Input = match postcard::from_bytes(&bytes) {
                        Ok(input) => input,
                        Err(e) => {
                            self.reject(format!("input {n} from {from} does not decode: {e}"));
                            continue;
                        }
                    };
                    let Some(r) = &mut self.replica else {
                        continue;
                    };
                    let applied = r.apply(
                        time,
                        Event::Input {
                            from: from.clone(),
                            n,
                            input,
                        },
                    );
                    self.emit(applied.outputs);
                }
            }
            Body::SnapshotPoll => self.on_poll(time, seq),
        }
        Ok(())
    }

    fn apply_users(&mut self, time: u64, users: Users) {
        let Users {
            active,
            joined,
            left,
            ..
        } = users;
        // Only views whose data opens with the session key are participants (a synq
        // reflector announces every user as `{id, data}`: anything else is skipped).
        let mut joins = Vec::new();
        for entry in &joined {
            let User::View { id, data } = entry else {
                continue;
            };
            match self.key.open_view_data(id, data.as_deref().unwrap_or("")) {
                Ok(plain) => {
                    let data = postcard::from_bytes(&plain).unwrap_or_default();
                    joins.push((ViewId(id.clone()), data));
                }
                Err(e) => self.reject(format!("view {id} joined without the session key: {e}")),
            }
        }
        let Some(r) = &mut self.replica else {
            return;
        };
        // Every active connection just joined: the session was resumed by new views, and
        // the views of its snapshot are gone (the reflector never announces the last
        // leave of a session).
        let mut outputs = Vec::new();
        if active.is_some_and(|a| a as usize == joined.len()) && !joined.is_empty() {
            let stale: Vec<ViewId> = r.views().keys().cloned().collect();
            for view in stale {
                // In one step: a snapshot may claim billions of connections.
                outputs.extend(r.exit_all(time, &view).outputs);
            }
        }
        for (view, data) in joins {
            if view == self.me {
                self.own_join_seen = true;
            }
            outputs.extend(r.apply(time, Event::Join { view, data }).outputs);
        }
        for entry in left {
            if let User::View { id, .. } = entry {
                outputs.extend(r.apply(time, Event::Exit { view: ViewId(id) }).outputs);
            }
        }
        self.emit(outputs);
    }

    /// After every event and tick: the model's outputs for the views, and what it
    /// persisted (voted on, as snapshots are: replicas that are catching up drop it).
    fn emit(&mut self, outputs: Vec<M::Output>) {
        // Taken in any case, so that what a replica made while catching up is dropped.
        let (persisted, files) = self
            .replica
            .as_mut()
            .map_or((None, Vec::new()), |r| (r.take_persisted(), r.take_files()));
        if !self.synced {
            return;
        }
        self.events
            .extend(outputs.into_iter().map(SessionEvent::Output));
        if let Some(p) = persisted {
            self.vote_on(Voted::Persisted, &p);
        }
        for (name, file) in files {
            self.vote_on(Voted::File(name), &file);
        }
    }

    /// Votes on persisted data or a file as on a snapshot; the majority's lowest view
    /// uploads it (and SAVEs persisted data's URL). Keyed by its time (and a file by its
    /// name), the same on every replica.
    fn vote_on(&mut self, voted: Voted, p: &Persisted) {
        let bytes = match p.to_bytes() {
            Ok(b) => b,
            Err(e) => {
                self.reject(format!("the model's data is not saved: {e}"));
                return;
            }
        };
        let hash = SnapshotHash::of(&bytes);
        let vote = self.key.vote(&hash.0);
        let tutti_key = match &voted {
            Voted::File(name) => format!(
                "synq-file@{}/{}",
                p.time(),
                self.key.file_storage_name(name)
            ),
            _ => format!("synq-persist@{}", p.time()),
        };
        let seq = self.last_seq.unwrap_or(0);
        self.send_vote(
            tutti_key,
            "synqPersist",
            PendingSnapshot {
                voted,
                bytes,
                hash: hash.to_hex(),
                vote,
                time: p.time(),
                seq,
            },
        );
    }

    /// Sends this replica's vote (TUTTI `key`, tally target `target`) and keeps what it
    /// voted on until the tally.
    fn send_vote(&mut self, key: String, target: &str, pending: PendingSnapshot) {
        let payload = json!({"vote": pending.vote, "viewId": self.me.as_str()}).to_string();
        let frame = TuttiRequest {
            send_time: pending.time as f64,
            payload: &payload,
            first_msg: None,
            wants_vote: true,
            tally_target: json!([target]),
            tutti_key: &key,
        }
        .encode(&self.session_id);
        self.effects.push_back(Effect::Send(frame));
        self.pending_snapshots.insert(key, pending);
        while self.pending_snapshots.len() > 4 {
            self.pending_snapshots.pop_first();
        }
    }

    /// Called after a batch of progress: becomes synced, resends, asks for snapshots.
    fn after_progress(&mut self) {
        if !matches!(self.phase, Phase::Running) {
            return;
        }
        if !self.synced && self.own_join_seen {
            self.synced = true;
            if let Some(r) = &self.replica {
                self.next_n = self.next_n.max(r.last_input(&self.me).saturating_add(1));
            }
            // Inputs sent on a lost connection and never seen: send them again (the
            // replicas drop any that did arrive, by number).
            let numbers: Vec<u64> = self.unacked.keys().copied().collect();
            for chunk in numbers.chunks(64) {
                if let Err(e) = self.send_inputs(chunk) {
                    self.reject(format!("could not resend inputs: {e}"));
                }
            }
            self.events.push_back(SessionEvent::Synced);
        }
        if let (true, Some(every)) = (self.synced, self.config.snapshot_every)
            && self.events_since_snapshot >= every
            && self.is_among_lowest(1)
            && self
                .poll_sent_at
                .is_none_or(|at| self.events_since_snapshot >= at + every)
        {
            self.send_poll();
        }
    }

    fn is_among_lowest(&self, k: usize) -> bool {
        self.replica
            .as_ref()
            .is_some_and(|r| r.views().keys().take(k).any(|v| *v == self.me))
    }

    fn send_poll(&mut self) {
        self.poll_sent_at = Some(self.events_since_snapshot);
        // Polls of several views within 5 s are reflected once.
        let tags = SendTags {
            debounce: Some(5000.0),
            msg_id: Some("pollForSnapshot".into()),
        };
        if let Err(e) = self.send_wire(Body::SnapshotPoll, Some(tags)) {
            self.reject(format!("could not ask for a snapshot: {e}"));
        }
    }

    /// REQU: the reflector's buffer is filling up. The three lowest views ask everyone to
    /// snapshot (the reflector debounces the polls to one).
    fn on_snapshot_request(&mut self) {
        if self.synced && self.is_among_lowest(3) {
            self.send_poll();
        }
    }

    /// Every replica reaches the poll at the same point of the stream: snapshot, vote.
    fn on_poll(&mut self, time: u64, seq: u32) {
        self.events_since_snapshot = 0;
        self.poll_sent_at = None;
        if !self.synced {
            return;
        }
        let Some(r) = &self.replica else {
            return;
        };
        let snap = match r.snapshot() {
            Ok(s) => s,
            Err(e) => {
                self.reject(format!("snapshot failed: {e}"));
                return;
            }
        };
        let vote = self.key.vote(&snap.hash.0);
        self.send_vote(
            format!("synq-snapshot@{seq}"),
            "synqSnapshot",
            PendingSnapshot {
                voted: Voted::Snapshot,
                bytes: snap.bytes,
                hash: snap.hash.to_hex(),
                vote,
                time,
                seq,
            },
        );
    }

    /// The tally of a snapshot vote: the lowest view of the majority uploads.
    fn on_tally(&mut self, tally: Tally) {
        let Some(key) = tally.tutti_key else {
            return;
        };
        let Some(pending) = self.pending_snapshots.remove(&key) else {
            return;
        };
        let mut by_vote: BTreeMap<String, (u32, Vec<String>)> = BTreeMap::new();
        for (ballot, count) in &tally.votes {
            let Ok(b) = serde_json::from_str::<Value>(ballot) else {
                continue;
            };
            let (Some(vote), Some(view)) = (
                b.get("vote").and_then(Value::as_str),
                b.get("viewId").and_then(Value::as_str),
            ) else {
                continue;
            };
            let count = u32::try_from(*count).unwrap_or(u32::MAX);
            let e = by_vote.entry(vote.to_owned()).or_default();
            e.0 = e.0.saturating_add(count);
            e.1.push(view.to_owned());
        }
        // Majority; a tie goes to the smaller vote, the same choice everywhere.
        let Some(majority) = by_vote
            .iter()
            .max_by(|a, b| a.1.0.cmp(&b.1.0).then_with(|| b.0.cmp(a.0)))
            .map(|(v, _)| v.clone())
        else {
            return;
        };
        if by_vote.len() > 1 {
            self.events.push_back(SessionEvent::Diverged {
                mine: pending.hash.clone(),
                my_vote: pending.vote.clone(),
                votes: by_vote.iter().map(|(v, (c, _))| (v.clone(), *c)).collect(),
            });
        }
        if pending.vote != majority {
            return;
        }
        let uploader = by_vote
            .get(&majority)
            .and_then(|(_, views)| views.iter().min().cloned());
        if uploader.as_deref() != Some(self.me.as_str()) {
            return;
        }
        // What is sealed how, and where it goes; then the same upload for all three.
        let vote = &pending.vote[..32.min(pending.vote.len())];
        let (sealed, what, url) = match &pending.voted {
            Voted::File(name) => (
                self.key.seal_file(name, &pending.bytes),
                format!("the file {name:?}"),
                self.file_url(name),
            ),
            Voted::Persisted => (
                self.key.seal(Purpose::Persisted, &pending.bytes),
                "the persisted data".to_owned(),
                format!("{}/save/{:010}_{vote}", self.persisted_base(), pending.time),
            ),
            Voted::Snapshot => (
                self.key.seal(Purpose::Snapshot, &pending.bytes),
                "the snapshot".to_owned(),
                format!(
                    "{}/snapshots/{}/{:010}_{}-{vote}.snap",
                    self.config.files_url.trim_end_matches('/'),
                    self.session_id,
                    pending.time,
                    pending.seq,
                ),
            ),
        };
        let body = match sealed {
            Ok(b) => b,
            Err(e) => {
                self.reject(format!("could not encrypt {what}: {e}"));
                return;
            }
        };
        // Persisted data is SAVEd and a snapshot SNAPped once uploaded; a file is only
        // stored.
        let then = match pending.voted {
            Voted::File(_) => None,
            Voted::Persisted => Some(
                SaveRequest {
                    url: &url,
                    dissident: false,
                }
                .encode(&self.session_id),
            ),
            Voted::Snapshot => Some(
                SnapRequest {
                    time: pending.time as f64,
                    seq: pending.seq,
                    hash: &pending.vote,
                    url: &url,
                    dissident: false,
                }
                .encode(&self.session_id),
            ),
        };
        self.effects.push_back(Effect::Upload { url, body, then });
    }

    /// The driver uploaded a snapshot, persisted data or a file (and sent its SNAP or
    /// SAVE).
    pub fn snapshot_uploaded(&mut self, url: String) {
        let event = if url.starts_with(&format!("{}/data/", self.persisted_base())) {
            SessionEvent::FileUploaded { url }
        } else if url.starts_with(&format!("{}/", self.persisted_base())) {
            SessionEvent::PersistedUploaded { url }
        } else {
            SessionEvent::SnapshotUploaded { url }
        };
        self.events.push_back(event);
    }

    /// Where the room's file `name` ([`synq_model::Cx::write_file`]) is, in this client's
    /// file store.
    pub fn file_url(&self, name: &str) -> String {
        format!(
            "{}/data/{}",
            self.persisted_base(),
            self.key.file_storage_name(name)
        )
    }

    /// The room's file `name`, from the bytes downloaded from [`Controller::file_url`].
    pub fn open_file(&self, name: &str, sealed: &[u8]) -> Result<Persisted, ClientError> {
        let bytes = self.key.open_file(name, sealed).map_err(|e| {
            ClientError::Snapshot(format!("the file {name:?} does not decrypt: {e}"))
        })?;
        Persisted::from_bytes(&bytes)
            .map_err(|e| ClientError::Snapshot(format!("the file {name:?} is not valid: {e}")))
    }
}

#[cfg(test)]
mod scripted;

#[cfg(test)]
mod tests {
    use super::*;
    use synq_model::demo::{Room, RoomViewData};

    fn controller() -> Controller<Room> {
        let mut cfg = ClientConfig::for_server("http://127.0.0.1:1", "app", "room", "pw");
        cfg.kdf_rounds = 1;
        Controller::new(cfg, &RoomViewData::default()).expect("controller")
    }

    #[test]
    fn a_silent_connection_sends_a_pulse_every_25_seconds() {
        let mut c = controller();
        c.flush(0.0).expect("flush");
        assert!(c.take_effects().is_empty());
        c.flush(24_000.0).expect("flush");
        assert!(c.take_effects().is_empty());
        c.flush(25_000.0).expect("flush");
        assert_eq!(
            c.take_effects(),
            [Effect::Send(r#"{"action":"PULSE"}"#.into())]
        );
        c.flush(30_000.0).expect("flush");
        assert!(c.take_effects().is_empty(), "not again before another 25 s");
    }

    #[test]
    fn chunk_pieces_past_the_limit_fail_the_connection_and_are_dropped() {
        let mut cfg = ClientConfig::for_server("http://127.0.0.1:1", "app", "room", "pw");
        cfg.kdf_rounds = 1;
        cfg.max_chunked_frame_bytes = 1000;
        let mut c = Controller::<Room>::new(cfg, &RoomViewData::default()).expect("controller");
        // A frame of exactly the limit is reassembled.
        let info = r#"{"id":"s","action":"INFO","args":{"msg":""}}"#;
        let info = info.replace(
            r#""msg":"""#,
            &format!(r#""msg":"{}""#, "x".repeat(1000 - info.len())),
        );
        assert_eq!(info.len(), 1000);
        c.on_frame(&format!("_CHUNK10{}", &info[..600]))
            .expect("first");
        c.on_frame(&format!("_CHUNK01{}", &info[600..]))
            .expect("last");
        assert!(matches!(c.take_events()[..], [SessionEvent::Info(_)]));
        // Pieces that never end are refused once they pass it.
        let piece = "y".repeat(300);
        c.on_frame(&format!("_CHUNK10{piece}")).expect("300");
        c.on_frame(&format!("_CHUNK00{piece}")).expect("600");
        c.on_frame(&format!("_CHUNK00{piece}")).expect("900");
        let err = c.on_frame(&format!("_CHUNK00{piece}")).expect_err("1200");
        assert!(
            matches!(&err, ClientError::Protocol(m) if m.contains("larger than 1000 bytes")),
            "{err}"
        );
        assert!(
            !err.is_transient(),
            "a reflector that does this is not rejoined"
        );
        // What was buffered is gone: the next piece has no first.
        let err = c
            .on_frame(&format!("_CHUNK01{piece}"))
            .expect_err("no first");
        assert!(err.to_string().contains("without its first"), "{err}");
    }

    /// A Room snapshot in which `view` claims `u32::MAX` connections (which needs the
    /// password to plant): the count 2 after its id in the snapshot's map of connections
    /// becomes the varint of `u32::MAX`.
    fn snapshot_claiming_u32_max_connections(view: &str) -> Vec<u8> {
        let (mut r, _) = Replica::<Room>::new(b"s", 0);
        for _ in 0..2 {
            let data = RoomViewData::default();
            r.apply(
                1,
                Event::Join {
                    view: ViewId(view.into()),
                    data,
                },
            );
        }
        let bytes = r.snapshot().expect("snapshot").bytes;
        let mut count = vec![view.len() as u8];
        count.extend(view.as_bytes());
        count.push(2);
        let at = bytes
            .windows(count.len())
            .position(|w| w == count)
            .expect("the count")
            + count.len()
            - 1;
        let mut hostile = bytes[..at].to_vec();
        hostile.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
        hostile.extend(&bytes[at + 1..]);
        hostile
    }

    #[test]
    fn a_snapshot_claiming_billions_of_connections_is_cleared_in_one_step() {
        let mut c = controller();
        let replica = Replica::<Room>::restore(&snapshot_claiming_u32_max_connections("old"))
            .expect("restores");
        assert_eq!(replica.connections(&ViewId("old".into())), u32::MAX);
        let events = replica.events();
        c.replica = Some(replica);
        c.phase = Phase::Running;
        // The session was resumed by new views: every active connection just joined, so
        // the snapshot's views are gone (this looped once per claimed connection).
        let users = Users {
            joined: vec![User::View {
                id: c.me.as_str().to_owned(),
                data: Some(c.sealed_view_data.clone()),
            }],
            active: Some(1),
            ..Users::default()
        };
        c.apply_users(10, users);
        let r = c.replica().expect("replica");
        assert_eq!(r.views().keys().collect::<Vec<_>>(), [c.view_id()]);
        // As many exits as claimed connections, then the join.
        assert_eq!(r.events(), events + u64::from(u32::MAX) + 1);
        assert!(c.own_join_seen);
    }

    #[test]
    fn the_join_frame_proves_the_view_id_and_hides_view_data_and_session_check() {
        let c = controller();
        let join: serde_json::Value = serde_json::from_str(&c.join_frame()).expect("json");
        let user = &join["args"]["user"];
        let proof = user["proof"].as_str().expect("proof");
        assert_eq!(user["id"], view_id_for_proof(proof));
        assert_eq!(user["id"], c.view_id().as_str());
        assert!(
            join["args"]["tove"]
                .as_str()
                .is_some_and(|t| !t.contains("room"))
        );
        assert!(c.socket_url().ends_with(c.session_id()));
    }
}
