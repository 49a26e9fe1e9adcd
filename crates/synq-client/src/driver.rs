//! The session driver, shared by every platform: owns the connection, performs downloads
//! and uploads, paces sends and feeds the [`Controller`]. After a dropped connection it
//! rejoins with the same view id, so nothing is lost or applied twice.

// Not model code: the driver moves bytes between a transport and the controller.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_channel::{mpsc, oneshot};
use futures_util::{FutureExt, StreamExt, select};
use synq_model::{Model, Persisted, SnapshotHash, ViewId};

use crate::controller::{ClientConfig, Controller, Effect, SessionEvent};
use crate::error::ClientError;
use crate::transport::{BoxSocket, Incoming, Transport};

/// How long to wait for the first sync before giving up on a join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often queued inputs are looked at (the controller paces the actual sends).
const FLUSH_EVERY: Duration = Duration::from_millis(10);
/// Without queued inputs the timer only serves the keepalive.
const IDLE: Duration = Duration::from_secs(5);

/// `Send + Sync` natively (sessions live on a multi-threaded runtime); nothing in wasm32.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSendSync: Send + Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + Sync> MaybeSendSync for T {}
#[cfg(target_arch = "wasm32")]
pub trait MaybeSendSync {}
#[cfg(target_arch = "wasm32")]
impl<T> MaybeSendSync for T {}

/// The answer to a [`Session::read_file`].
type FileReply = oneshot::Sender<Result<Persisted, ClientError>>;

enum Cmd<I> {
    Publish(I),
    ReadFile(String, FileReply),
    Reconnect,
    Leave,
}

/// A joined session. Dropping it leaves the session.
pub struct Session<M: Model> {
    controller: Arc<Mutex<Controller<M>>>,
    cmds: mpsc::UnboundedSender<Cmd<M::Input>>,
    events: mpsc::UnboundedReceiver<SessionEvent<M::Output>>,
    early: std::collections::VecDeque<SessionEvent<M::Output>>,
    view_id: ViewId,
    session_id: String,
}

fn lock<M: Model>(c: &Mutex<Controller<M>>) -> MutexGuard<'_, Controller<M>> {
    // A panic while holding the lock leaves the controller as it was between two frames.
    c.lock().unwrap_or_else(|p| p.into_inner())
}

/// Joins the session in `config` as a new view with `view_data` over `transport`;
/// returns once the replica is synced (caught up, and this view's join applied).
pub async fn join_with<M: Model, T: Transport + MaybeSendSync>(
    transport: T,
    config: ClientConfig,
    view_data: M::ViewData,
) -> Result<Session<M>, ClientError> {
    let transport = Arc::new(transport);
    let controller = Controller::<M>::new(config, &view_data)?;
    let view_id = controller.view_id().clone();
    let session_id = controller.session_id().to_owned();
    let controller = Arc::new(Mutex::new(controller));
    let (cmd_tx, cmd_rx) = mpsc::unbounded();
    let (ev_tx, mut ev_rx) = mpsc::unbounded();
    transport.spawn(Box::pin(drive(
        Arc::clone(&transport),
        Arc::clone(&controller),
        cmd_rx,
        ev_tx,
    )));
    // Wait for Synced (or the first fatal error), keeping the other events for the app.
    let mut early = std::collections::VecDeque::new();
    let mut deadline = transport.sleep(JOIN_TIMEOUT).fuse();
    loop {
        select! {
            ev = ev_rx.next() => match ev {
                Some(SessionEvent::Synced) => break,
                Some(SessionEvent::Failed(e)) => return Err(e),
                Some(other) => early.push_back(other),
                None => return Err(ClientError::Ended),
            },
            _ = deadline => {
                let _ = cmd_tx.unbounded_send(Cmd::Leave);
                return Err(ClientError::Unreachable {
                    url: lock(&controller).socket_url(),
                    reason: format!("not synced within {} s", JOIN_TIMEOUT.as_secs()),
                });
            }
        }
    }
    Ok(Session {
        controller,
        cmds: cmd_tx,
        events: ev_rx,
        early,
        view_id,
        session_id,
    })
}

/// A cloneable handle on a session for publishing and reading from other tasks (the
/// [`Session`] itself owns the event stream and leaves when dropped).
pub struct SessionHandle<M: Model> {
    controller: Arc<Mutex<Controller<M>>>,
    cmds: mpsc::UnboundedSender<Cmd<M::Input>>,
    view_id: ViewId,
}

impl<M: Model> Clone for SessionHandle<M> {
    fn clone(&self) -> Self {
        SessionHandle {
            controller: Arc::clone(&self.controller),
            cmds: self.cmds.clone(),
            view_id: self.view_id.clone(),
        }
    }
}

impl<M: Model> SessionHandle<M> {
    pub fn view_id(&self) -> &ViewId {
        &self.view_id
    }

    /// See [`Session::read_file`].
    pub async fn read_file(&self, name: &str) -> Result<Persisted, ClientError> {
        read_file(&self.cmds, name).await
    }

    /// Sends an input to every replica (queued while reconnecting).
    pub fn publish(&self, input: M::Input) -> Result<(), ClientError> {
        self.cmds
            .unbounded_send(Cmd::Publish(input))
            .map_err(|_| ClientError::Ended)
    }

    /// Reads the model. `None` while no replica exists (during a rejoin from snapshot).
    pub fn read<R>(&self, f: impl FnOnce(&M) -> R) -> Option<R> {
        lock(&self.controller).replica().map(|r| f(r.model()))
    }

    /// Snapshot hash of the replica now.
    pub fn hash(&self) -> Option<SnapshotHash> {
        lock(&self.controller).replica().and_then(|r| r.hash().ok())
    }

    pub fn is_synced(&self) -> bool {
        lock(&self.controller).is_synced()
    }

    /// The AI capability the reflector handed this view, if any (see
    /// [`Controller::ai_token`]).
    pub fn ai_token(&self) -> Option<String> {
        lock(&self.controller).ai_token().map(str::to_owned)
    }

    /// Drops the connection and rejoins (e.g. to get a new AI capability).
    pub fn reconnect(&self) {
        let _ = self.cmds.unbounded_send(Cmd::Reconnect);
    }
}

impl<M: Model> Session<M> {
    /// A cloneable handle for publishing and reading from elsewhere.
    pub fn handle(&self) -> SessionHandle<M> {
        SessionHandle {
            controller: Arc::clone(&self.controller),
            cmds: self.cmds.clone(),
            view_id: self.view_id.clone(),
        }
    }

    pub fn view_id(&self) -> &ViewId {
        &self.view_id
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Sends an input to every replica (queued while reconnecting).
    pub fn publish(&self, input: M::Input) -> Result<(), ClientError> {
        self.cmds
            .unbounded_send(Cmd::Publish(input))
            .map_err(|_| ClientError::Ended)
    }

    /// Reads the room's file `name` that the model wrote ([`synq_model::Cx::write_file`]),
    /// in this session or an earlier one of the room (downloaded and opened here; not
    /// replicated: for views).
    pub async fn read_file(&self, name: &str) -> Result<Persisted, ClientError> {
        read_file(&self.cmds, name).await
    }

    /// The next event (outputs of the model, reconnects, rejections, divergence). `None`
    /// when the session has ended.
    pub async fn next_event(&mut self) -> Option<SessionEvent<M::Output>> {
        if let Some(e) = self.early.pop_front() {
            return Some(e);
        }
        self.events.next().await
    }

    /// An event if one is ready, without waiting (for render loops).
    pub fn try_next_event(&mut self) -> Option<SessionEvent<M::Output>> {
        if let Some(e) = self.early.pop_front() {
            return Some(e);
        }
        self.events.try_recv().ok()
    }

    /// Reads the model. `None` while no replica exists (during a rejoin from snapshot).
    pub fn read<R>(&self, f: impl FnOnce(&M) -> R) -> Option<R> {
        lock(&self.controller).replica().map(|r| f(r.model()))
    }

    /// Snapshot hash of the replica now (for comparisons in tests and diagnostics).
    pub fn hash(&self) -> Option<SnapshotHash> {
        lock(&self.controller).replica().and_then(|r| r.hash().ok())
    }

    /// Reflector time and events applied, for progress displays.
    pub fn progress(&self) -> Option<(u64, u64)> {
        lock(&self.controller)
            .replica()
            .map(|r| (r.now(), r.events()))
    }

    /// The URL of the snapshot this replica was loaded from (`None`: replayed from the
    /// session's start).
    pub fn loaded_snapshot(&self) -> Option<String> {
        lock(&self.controller).loaded_snapshot().map(str::to_owned)
    }

    pub fn is_synced(&self) -> bool {
        lock(&self.controller).is_synced()
    }

    /// Drops the connection and rejoins (e.g. after a network change).
    pub fn reconnect(&self) {
        let _ = self.cmds.unbounded_send(Cmd::Reconnect);
    }

    /// Leaves the session: closes the connection cleanly.
    pub fn leave(self) {
        let _ = self.cmds.unbounded_send(Cmd::Leave);
    }
}

impl<M: Model> Drop for Session<M> {
    fn drop(&mut self) {
        let _ = self.cmds.unbounded_send(Cmd::Leave);
    }
}

enum Done {
    /// Leave for good.
    Leave,
    /// Rejoin after this reason.
    Rejoin(String),
}

async fn drive<M: Model, T: Transport + MaybeSendSync>(
    transport: Arc<T>,
    controller: Arc<Mutex<Controller<M>>>,
    mut cmds: mpsc::UnboundedReceiver<Cmd<M::Input>>,
    events: mpsc::UnboundedSender<SessionEvent<M::Output>>,
) {
    let mut ever_connected = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let url = lock(&controller).socket_url();
        let socket = match transport.connect(&url).await {
            Ok(socket) => socket,
            Err(reason) => {
                if !ever_connected {
                    let _ = events.unbounded_send(SessionEvent::Failed(ClientError::Unreachable {
                        url,
                        reason,
                    }));
                    return;
                }
                tracing::debug!(%url, %reason, "reconnect failed; retrying");
                transport.sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        ever_connected = true;
        backoff = Duration::from_millis(100);
        match connection(&*transport, &controller, socket, &mut cmds, &events).await {
            Done::Leave => return,
            Done::Rejoin(reason) => {
                tracing::info!(%reason, "rejoining");
                lock(&controller).connection_lost(&reason);
                forward_events(&controller, &events);
            }
        }
    }
}

async fn read_file<I>(
    cmds: &mpsc::UnboundedSender<Cmd<I>>,
    name: &str,
) -> Result<Persisted, ClientError> {
    let (tx, rx) = oneshot::channel();
    cmds.unbounded_send(Cmd::ReadFile(name.to_owned(), tx))
        .map_err(|_| ClientError::Ended)?;
    // Dropped unanswered when the connection ends before the download does.
    rx.await.unwrap_or(Err(ClientError::Ended))
}

fn forward_events<M: Model>(
    controller: &Mutex<Controller<M>>,
    events: &mpsc::UnboundedSender<SessionEvent<M::Output>>,
) {
    for e in lock(controller).take_events() {
        let _ = events.unbounded_send(e);
    }
}

enum IoResult {
    Downloaded(Result<Vec<u8>, String>),
    Uploaded {
        url: String,
        then: Option<String>,
    },
    FileRead {
        name: String,
        bytes: Result<Vec<u8>, String>,
        reply: FileReply,
    },
}

/// Runs one connection until it ends.
async fn connection<M: Model, T: Transport + MaybeSendSync>(
    transport: &T,
    controller: &Mutex<Controller<M>>,
    mut socket: BoxSocket,
    cmds: &mut mpsc::UnboundedReceiver<Cmd<M::Input>>,
    events: &mpsc::UnboundedSender<SessionEvent<M::Output>>,
) -> Done {
    let join = lock(controller).join_frame();
    if let Err(e) = socket.send(join).await {
        return Done::Rejoin(format!("could not send JOIN: {e}"));
    }
    // Results of downloads and uploads come back through this channel.
    let (io_tx, mut io_rx) = mpsc::unbounded::<IoResult>();
    loop {
        let step: Result<Option<String>, Done> = {
            let mut recv = socket.recv().fuse();
            // The send timer runs only while inputs wait: an idle session sleeps.
            let pause = if lock(controller).has_queued() {
                FLUSH_EVERY
            } else {
                IDLE
            };
            let mut tick = transport.sleep(pause).fuse();
            select! {
                frame = recv => match frame {
                    Some(Ok(Incoming::Text(text))) => {
                        let r = lock(controller).on_frame(&text);
                        r.map(|()| None).map_err(|e| fail_or_rejoin(e, events))
                    }
                    Some(Ok(Incoming::Closed { code, reason })) => {
                        Err(fail_or_rejoin(ClientError::closed(code, reason), events))
                    }
                    Some(Err(e)) => Err(Done::Rejoin(format!("connection error: {e}"))),
                    None => Err(Done::Rejoin("connection closed".into())),
                },
                cmd = cmds.next() => match cmd {
                    Some(Cmd::Publish(input)) => {
                        let r = lock(controller).publish(&input);
                        if let Err(e) = r {
                            let _ = events.unbounded_send(SessionEvent::Rejected(e.to_string()));
                        }
                        Ok(None)
                    }
                    Some(Cmd::ReadFile(name, reply)) => {
                        let url = lock(controller).file_url(&name);
                        let (get, tx) = (download(transport, url), io_tx.clone());
                        transport.spawn(Box::pin(async move {
                            let bytes = get.await;
                            let _ = tx.unbounded_send(IoResult::FileRead { name, bytes, reply });
                        }));
                        Ok(None)
                    }
                    Some(Cmd::Reconnect) => Err(Done::Rejoin("reconnect requested".into())),
                    Some(Cmd::Leave) | None => Err(Done::Leave),
                },
                io = io_rx.next() => match io {
                    Some(IoResult::Downloaded(Ok(bytes))) => {
                        let r = lock(controller).on_snapshot(&bytes);
                        r.map(|()| None).map_err(|e| fail_or_rejoin(e, events))
                    }
                    Some(IoResult::Downloaded(Err(reason))) => {
                        let r = lock(controller).on_snapshot_failed(&reason);
                        r.map(|()| None).map_err(|e| fail_or_rejoin(e, events))
                    }
                    Some(IoResult::Uploaded { url, then }) => {
                        lock(controller).snapshot_uploaded(url);
                        Ok(then)
                    }
                    Some(IoResult::FileRead { name, bytes, reply }) => {
                        let file = bytes
                            .map_err(|reason| {
                                ClientError::Snapshot(format!("the file {name:?} did not download: {reason}"))
                            })
                            .and_then(|b| lock(controller).open_file(&name, &b));
                        let _ = reply.send(file);
                        Ok(None)
                    }
                    None => Ok(None),
                },
                _ = tick => {
                    let now = transport.now_ms();
                    let r = lock(controller).flush(now);
                    r.map(|()| None).map_err(|e| fail_or_rejoin(e, events))
                }
            }
        };
        let extra = match step {
            Ok(extra) => extra,
            Err(Done::Leave) => {
                socket.close().await;
                return Done::Leave;
            }
            Err(done) => return done,
        };
        if let Some(text) = extra
            && let Err(e) = socket.send(text).await
        {
            return Done::Rejoin(format!("send failed: {e}"));
        }
        let effects = lock(controller).take_effects();
        for effect in effects {
            match effect {
                Effect::Send(text) => {
                    if let Err(e) = socket.send(text).await {
                        return Done::Rejoin(format!("send failed: {e}"));
                    }
                }
                Effect::Download(url) => {
                    let (get, tx) = (download(transport, url), io_tx.clone());
                    transport.spawn(Box::pin(async move {
                        let _ = tx.unbounded_send(IoResult::Downloaded(get.await));
                    }));
                }
                Effect::Upload { url, body, then } => {
                    let (put, tx) = (upload(transport, url.clone(), body), io_tx.clone());
                    transport.spawn(Box::pin(async move {
                        match put.await {
                            Ok(()) => {
                                let _ = tx.unbounded_send(IoResult::Uploaded { url, then });
                            }
                            Err(e) => tracing::warn!(%url, error = %e, "upload failed"),
                        }
                    }));
                }
            }
        }
        forward_events(controller, events);
    }
}

fn fail_or_rejoin<O>(e: ClientError, events: &mpsc::UnboundedSender<SessionEvent<O>>) -> Done {
    if e.is_transient() {
        Done::Rejoin(e.to_string())
    } else {
        tracing::error!(error = %e, "session failed");
        let _ = events.unbounded_send(SessionEvent::Failed(e));
        Done::Leave
    }
}

/// GET with the Croquet client's retry schedule (100 ms, 1 s, 5 s).
/// PUT, once more after 1.2 s if refused: a file store may refuse an upload for a moment
/// (synq's refuses files of a room it has not looked up yet, for up to a second). Each
/// attempt holds its own copy of the body, hence only two.
fn upload<T: Transport>(
    transport: &T,
    url: String,
    body: Vec<u8>,
) -> crate::transport::BoxFut<'static, Result<(), String>> {
    retried(transport, &[0, 1200], |t| t.put(url.clone(), body.clone()))
}

fn download<T: Transport>(
    transport: &T,
    url: String,
) -> crate::transport::BoxFut<'static, Result<Vec<u8>, String>> {
    retried(transport, &[0, 100, 1000, 5000], |t| t.get(url.clone()))
}

/// `attempt` after each pause in `pauses_ms` until one succeeds; the last error otherwise.
/// The attempts are made up front (futures start when awaited): the transport is only
/// borrowed here.
fn retried<T: Transport, R: 'static>(
    transport: &T,
    pauses_ms: &[u64],
    attempt: impl Fn(&T) -> crate::transport::BoxFut<'static, Result<R, String>>,
) -> crate::transport::BoxFut<'static, Result<R, String>> {
    let attempts: Vec<_> = pauses_ms
        .iter()
        .map(|&ms| {
            (
                transport.sleep(Duration::from_millis(ms)),
                attempt(transport),
            )
        })
        .collect();
    Box::pin(async move {
        let mut last = String::new();
        for (pause, attempt) in attempts {
            pause.await;
            match attempt.await {
                Ok(r) => return Ok(r),
                Err(e) => last = e,
            }
        }
        Err(last)
    })
}
