//! The native driver: a tokio task that owns the WebSocket, performs downloads and
//! uploads, and feeds the [`Controller`]. It rejoins by itself after a dropped connection,
//! with the same view id, so nothing is lost or applied twice.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use synq_model::{Model, SnapshotHash, ViewId};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;

use crate::controller::{ClientConfig, Controller, Effect, SessionEvent};
use crate::error::ClientError;

/// How long to wait for the first SYNC before giving up on a join.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

enum Cmd<I> {
    Publish(I),
    Reconnect,
    Leave,
}

/// A joined session. Dropping it leaves the session.
pub struct Session<M: Model> {
    controller: Arc<Mutex<Controller<M>>>,
    cmds: mpsc::UnboundedSender<Cmd<M::Input>>,
    events: mpsc::UnboundedReceiver<SessionEvent<M::Output>>,
    view_id: ViewId,
    session_id: String,
}

/// Joins the session in `config` as a new view with `view_data`; returns once the
/// replica is synced (caught up, and this view's join applied).
pub async fn join<M: Model>(
    config: ClientConfig,
    view_data: M::ViewData,
) -> Result<Session<M>, ClientError> {
    let controller = Controller::<M>::new(config, &view_data)?;
    let view_id = controller.view_id().clone();
    let session_id = controller.session_id().to_owned();
    let controller = Arc::new(Mutex::new(controller));
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    tokio::spawn(drive(Arc::clone(&controller), cmd_rx, ev_tx));
    // Wait for Synced (or the first fatal error), keeping the other events for the app.
    let mut early = Vec::new();
    let deadline = tokio::time::sleep(JOIN_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            ev = ev_rx.recv() => match ev {
                Some(SessionEvent::Synced) => break,
                Some(SessionEvent::Failed(e)) => return Err(e),
                Some(other) => early.push(other),
                None => return Err(ClientError::Ended),
            },
            _ = &mut deadline => {
                let _ = cmd_tx.send(Cmd::Leave);
                return Err(ClientError::Unreachable {
                    url: lock(&controller).socket_url(),
                    reason: format!("not synced within {} s", JOIN_TIMEOUT.as_secs()),
                });
            }
        }
    }
    // Re-queue what arrived before Synced, in order, ahead of later events.
    let (tx, rx) = mpsc::unbounded_channel();
    for e in early {
        let _ = tx.send(e);
    }
    tokio::spawn(async move {
        while let Some(e) = ev_rx.recv().await {
            if tx.send(e).is_err() {
                break;
            }
        }
    });
    Ok(Session {
        controller,
        cmds: cmd_tx,
        events: rx,
        view_id,
        session_id,
    })
}

fn lock<M: Model>(c: &Arc<Mutex<Controller<M>>>) -> MutexGuard<'_, Controller<M>> {
    // A panic while holding the lock leaves the controller as it was between two frames.
    c.lock().unwrap_or_else(|p| p.into_inner())
}

impl<M: Model> Session<M> {
    pub fn view_id(&self) -> &ViewId {
        &self.view_id
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Sends an input to every replica (queued while reconnecting).
    pub fn publish(&self, input: M::Input) -> Result<(), ClientError> {
        self.cmds
            .send(Cmd::Publish(input))
            .map_err(|_| ClientError::Ended)
    }

    /// The next event (outputs of the model, reconnects, rejections, divergence). `None`
    /// when the session has ended.
    pub async fn next_event(&mut self) -> Option<SessionEvent<M::Output>> {
        self.events.recv().await
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
        let _ = self.cmds.send(Cmd::Reconnect);
    }

    /// Leaves the session: closes the connection cleanly.
    pub fn leave(self) {
        let _ = self.cmds.send(Cmd::Leave);
    }
}

impl<M: Model> Drop for Session<M> {
    fn drop(&mut self) {
        let _ = self.cmds.send(Cmd::Leave);
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum Done {
    /// Leave for good.
    Leave,
    /// Rejoin after this reason.
    Rejoin(String),
}

async fn drive<M: Model>(
    controller: Arc<Mutex<Controller<M>>>,
    mut cmds: mpsc::UnboundedReceiver<Cmd<M::Input>>,
    events: mpsc::UnboundedSender<SessionEvent<M::Output>>,
) {
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut ever_connected = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let url = lock(&controller).socket_url();
        let socket = match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((socket, _)) => socket,
            Err(e) => {
                if !ever_connected {
                    let _ = events.send(SessionEvent::Failed(ClientError::Unreachable {
                        url,
                        reason: e.to_string(),
                    }));
                    return;
                }
                tracing::debug!(%url, error = %e, "reconnect failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        ever_connected = true;
        backoff = Duration::from_millis(100);
        match connection(&controller, socket, &mut cmds, &events, &http, started).await {
            Done::Leave => return,
            Done::Rejoin(reason) => {
                tracing::info!(%reason, "rejoining");
                lock(&controller).connection_lost(&reason);
                forward_events(&controller, &events);
            }
        }
    }
}

fn forward_events<M: Model>(
    controller: &Arc<Mutex<Controller<M>>>,
    events: &mpsc::UnboundedSender<SessionEvent<M::Output>>,
) {
    for e in lock(controller).take_events() {
        let _ = events.send(e);
    }
}

/// Runs one connection until it ends.
async fn connection<M: Model>(
    controller: &Arc<Mutex<Controller<M>>>,
    mut socket: Socket,
    cmds: &mut mpsc::UnboundedReceiver<Cmd<M::Input>>,
    events: &mpsc::UnboundedSender<SessionEvent<M::Output>>,
    http: &reqwest::Client,
    started: Instant,
) -> Done {
    let join = lock(controller).join_frame();
    if let Err(e) = socket.send(Message::text(join)).await {
        return Done::Rejoin(format!("could not send JOIN: {e}"));
    }
    // Results of downloads and uploads come back through this channel.
    let (io_tx, mut io_rx) = mpsc::unbounded_channel::<IoResult>();
    let mut flush = tokio::time::interval(Duration::from_millis(10));
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let step: Result<(), Done> = tokio::select! {
            frame = socket.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    let r = lock(controller).on_frame(text.as_str());
                    r.map_err(|e| fail_or_rejoin(e, events))
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame.map_or((1005, String::new()), |f| (u16::from(f.code), f.reason.to_string()));
                    let e = ClientError::Closed { code, reason };
                    Err(fail_or_rejoin(e, events))
                }
                Some(Ok(_)) => Ok(()),
                Some(Err(e)) => Err(Done::Rejoin(format!("connection error: {e}"))),
                None => Err(Done::Rejoin("connection closed".into())),
            },
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Publish(input)) => {
                    let r = lock(controller).publish(&input);
                    if let Err(e) = r {
                        let _ = events.send(SessionEvent::Rejected(e.to_string()));
                    }
                    Ok(())
                }
                Some(Cmd::Reconnect) => Err(Done::Rejoin("reconnect requested".into())),
                Some(Cmd::Leave) | None => {
                    let _ = socket.close(Some(CloseFrame { code: WsCloseCode::Normal, reason: "leaving".into() })).await;
                    Err(Done::Leave)
                }
            },
            Some(io) = io_rx.recv() => match io {
                IoResult::Downloaded(Ok(bytes)) => {
                    let r = lock(controller).on_snapshot(&bytes);
                    r.map_err(|e| fail_or_rejoin(e, events))
                }
                IoResult::Downloaded(Err(reason)) => {
                    let e = lock(controller).on_snapshot_failed(&reason);
                    Err(fail_or_rejoin(e, events))
                }
                IoResult::Uploaded { url, then } => {
                    lock(controller).snapshot_uploaded(url);
                    socket.send(Message::text(then)).await.map_err(|e| Done::Rejoin(format!("send failed: {e}")))
                }
            },
            _ = flush.tick() => {
                let now = started.elapsed().as_secs_f64() * 1000.0;
                let r = lock(controller).flush(now);
                r.map_err(|e| fail_or_rejoin(e, events))
            }
        };
        if let Err(done) = step {
            return done;
        }
        let effects = lock(controller).take_effects();
        for effect in effects {
            match effect {
                Effect::Send(text) => {
                    if let Err(e) = socket.send(Message::text(text)).await {
                        return Done::Rejoin(format!("send failed: {e}"));
                    }
                }
                Effect::Download(url) => {
                    let (http, tx) = (http.clone(), io_tx.clone());
                    tokio::spawn(async move {
                        let _ = tx.send(IoResult::Downloaded(download(&http, &url).await));
                    });
                }
                Effect::Upload { url, body, then } => {
                    let (http, tx) = (http.clone(), io_tx.clone());
                    tokio::spawn(async move {
                        match upload(&http, &url, body).await {
                            Ok(()) => {
                                let _ = tx.send(IoResult::Uploaded { url, then });
                            }
                            Err(e) => tracing::warn!(%url, error = %e, "snapshot upload failed"),
                        }
                    });
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
        let _ = events.send(SessionEvent::Failed(e));
        Done::Leave
    }
}

enum IoResult {
    Downloaded(Result<Vec<u8>, String>),
    Uploaded { url: String, then: String },
}

/// GET with the Croquet client's retry schedule (100 ms, 1 s, 5 s).
async fn download(http: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let mut last = String::new();
    for delay in [0, 100, 1000, 5000] {
        tokio::time::sleep(Duration::from_millis(delay)).await;
        match http.get(url).send().await {
            Ok(r) if r.status().is_success() => {
                return r
                    .bytes()
                    .await
                    .map(|b| b.to_vec())
                    .map_err(|e| e.to_string());
            }
            Ok(r) => last = format!("HTTP {}", r.status()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

async fn upload(http: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<(), String> {
    let r = http
        .put(url)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", r.status()))
    }
}
