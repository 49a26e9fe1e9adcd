//! The sessions a reflector holds in memory, and what they share (config, metrics,
//! where journals and persistent-data records live).

use std::collections::HashMap;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::FutureExt as _;
use synq_protocol::CloseCode;
use synq_protocol::client::JoinArgs;
use tokio::sync::mpsc;

use crate::config::ReflectorConfig;
use crate::handle::{Command, ConnHandle};
use crate::island::{Ended, Island};
use crate::metrics::Metrics;

/// A way to reach a running session.
#[derive(Clone)]
pub(crate) struct SessionHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl SessionHandle {
    /// Deliver a command; a session that has ended simply drops it.
    pub(crate) fn send(&self, cmd: Command) {
        let _ = self.tx.send(cmd);
    }

    /// Resolves when the session's task has ended.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }
}

/// A session in the registry, and the address that started it (for per-address limits).
struct Entry {
    handle: SessionHandle,
    creator: IpAddr,
}

pub(crate) struct Ctx {
    pub config: Arc<ReflectorConfig>,
    pub metrics: Arc<Metrics>,
    /// Turns to write large SYNCs.
    pub sync_gate: crate::sync_gate::SyncGate,
    sessions: Mutex<Sessions>,
    next_conn: AtomicU64,
    /// The (appId, persistentId) pairs whose files the file store takes.
    pub apps: crate::files::AppIndex,
    /// Set when the reflector stops ([`Ctx::drain`]): no session starts any more.
    draining: std::sync::atomic::AtomicBool,
    /// Connections that joined a session and have not finished closing, and a wake-up
    /// when one has: a draining reflector exits only once its clients have their close
    /// frame.
    members: AtomicU64,
    member_gone: tokio::sync::Notify,
}

#[derive(Default)]
struct Sessions {
    by_id: HashMap<String, Entry>,
    by_creator: HashMap<IpAddr, usize>,
}

impl Sessions {
    fn remove(&mut self, id: &str) {
        if let Some(e) = self.by_id.remove(id)
            && let Some(n) = self.by_creator.get_mut(&e.creator)
        {
            *n -= 1;
            if *n == 0 {
                self.by_creator.remove(&e.creator);
            }
        }
    }
}

/// A session id as it appears in the URL: URL-safe characters only, so it is also a safe
/// directory name. Croquet ids are 43-character base64url hashes.
pub fn valid_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

impl Ctx {
    pub(crate) fn new(config: ReflectorConfig, metrics: Arc<Metrics>) -> Ctx {
        Ctx {
            sync_gate: crate::sync_gate::SyncGate::new(
                config.max_syncs_per_session,
                config.max_syncs_per_address,
                Arc::clone(&metrics),
            ),
            config: Arc::new(config),
            metrics,
            sessions: Mutex::new(Sessions::default()),
            next_conn: AtomicU64::new(1),
            apps: crate::files::AppIndex::default(),
            draining: std::sync::atomic::AtomicBool::new(false),
            members: AtomicU64::new(0),
            member_gone: tokio::sync::Notify::new(),
        }
    }

    fn sessions(&self) -> MutexGuard<'_, Sessions> {
        // A panic while holding this lock cannot leave the map inconsistent (single
        // insert/remove calls), so a poisoned lock is still usable.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn next_conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn session_dir(&self, id: &str) -> PathBuf {
        self.config.data_dir.join("sessions").join(id)
    }

    /// Whether `id` names a session this reflector holds: running, or with a journal on
    /// disk. The file store accepts uploads only for such sessions.
    pub(crate) fn knows_session(&self, id: &str) -> bool {
        valid_session_id(id)
            && (self.sessions().by_id.contains_key(id)
                || self.session_dir(id).join("journal").is_file())
    }

    /// [`Ctx::knows_session`], or, in a cluster, whether any node's journal has it.
    pub(crate) async fn knows_session_anywhere(&self, id: &str) -> bool {
        if self.knows_session(id) {
            return true;
        }
        match &self.config.cluster {
            Some(cluster) => valid_session_id(id) && cluster.0.knows(id).await,
            None => false,
        }
    }

    /// Whether a session on disk was created by app `app_id` with `persistent_id` (Croquet
    /// uploads persisted data under those, without the session id). Reads every session's
    /// journal header: callers cache and throttle it.
    pub(crate) fn knows_persistent_id(&self, app_id: &str, persistent_id: &str) -> bool {
        let Ok(dirs) = std::fs::read_dir(self.config.data_dir.join("sessions")) else {
            return false;
        };
        dirs.flatten().any(|d| {
            crate::journal::read_header(&d.path()).is_some_and(|h| {
                h.app_id.as_deref() == Some(app_id)
                    && h.persistent_id.as_deref() == Some(persistent_id)
            })
        })
    }

    /// Hand a JOIN to its session, starting (or resuming) the session if needed. Done
    /// under the registry lock so that it cannot race with the session shutting down.
    /// Refused with [`CloseCode::ServerFull`] when starting the session would exceed the
    /// limits on sessions in all or per address.
    pub(crate) fn join(
        self: &Arc<Self>,
        id: &str,
        conn: ConnHandle,
        args: JoinArgs,
    ) -> Result<SessionHandle, CloseCode> {
        if let (Some(app), Some(pid)) = (&args.app_id, &args.persistent_id) {
            self.apps.remember(app, pid);
        }
        let mut sessions = self.sessions();
        let live = sessions
            .by_id
            .get(id)
            .filter(|e| !e.handle.tx.is_closed())
            .map(|e| e.handle.clone());
        let handle = match live {
            Some(h) => h,
            None if self.is_draining() => {
                // Stopping: the client asks again, through another node or once this one
                // is back.
                return Err(CloseCode::PleaseReconnect);
            }
            None => {
                // A session whose task failed is replaced (its entry may still be here).
                sessions.remove(id);
                let limit = self.config.max_sessions_per_address;
                let by_peer = sessions.by_creator.get(&conn.peer).copied().unwrap_or(0);
                // 0: unlimited, as for the other per-address limits.
                let over = |n: usize, max: usize| max != 0 && n >= max;
                if over(sessions.by_id.len(), self.config.max_sessions) || over(by_peer, limit) {
                    tracing::warn!(peer = %conn.peer, sessions = sessions.by_id.len(), by_peer, "JOIN refused: too many sessions (--max-sessions {}, --max-sessions-per-address {limit})", self.config.max_sessions);
                    Metrics::add(&self.metrics.sessions_refused, 1);
                    return Err(CloseCode::ServerFull);
                }
                let handle = self.start(id);
                // In a cluster, uploads of the app's persisted data may go to another node.
                if let (Some(cluster), Some(app), Some(pid)) =
                    (&self.config.cluster, &args.app_id, &args.persistent_id)
                {
                    let (cluster, app, pid) = (cluster.clone(), app.clone(), pid.clone());
                    tokio::spawn(async move { cluster.0.remember_app(&app, &pid).await });
                }
                sessions.by_id.insert(
                    id.to_owned(),
                    Entry {
                        handle: handle.clone(),
                        creator: conn.peer,
                    },
                );
                *sessions.by_creator.entry(conn.peer).or_default() += 1;
                handle
            }
        };
        handle.send(Command::Join {
            conn: Box::new(conn),
            args: Box::new(args),
        });
        Ok(handle)
    }

    /// Starts the task of a session. A panic in it must not leave a session that takes
    /// JOINs and never answers: the task removes the session, which ends its connections
    /// (they watch [`SessionHandle::closed`]) and lets the next JOIN start it afresh.
    fn start(self: &Arc<Self>, id: &str) -> SessionHandle {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ctx = Arc::clone(self);
        let id = id.to_owned();
        let handle = SessionHandle { tx };
        let own = handle.clone();
        tokio::spawn(async move {
            let run = AssertUnwindSafe(async {
                let Some(mut island) = ctx.open_island(&id).await else {
                    // Another node sequences it: the JOINs waiting here are dropped with
                    // the channel, and their clients asked to reconnect (to the owner).
                    ctx.forget(&id, &own);
                    return;
                };
                // The registry retires an idle session itself, under its lock, so that a
                // JOIN cannot reach a session that is ending.
                let drained = loop {
                    match island.run(&mut rx).await {
                        Ended::Idle if !ctx.remove_if_idle(&id, &rx) => island.kept(),
                        Ended::Idle | Ended::Closed => break false,
                        Ended::Lost => {
                            ctx.forget(&id, &own);
                            return;
                        }
                        Ended::Drained => break true,
                    }
                };
                island.close().await;
                if drained {
                    island.release().await;
                    // Ending the task closes the channel: the connections close with
                    // 4003, and their clients reconnect elsewhere.
                    ctx.forget(&id, &own);
                }
            });
            if let Err(panic) = run.catch_unwind().await {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(session = %id, panic = %why, "session failed; its clients are disconnected");
                Metrics::add(&ctx.metrics.session_failures, 1);
                ctx.forget(&id, &own);
            }
        });
        handle
    }

    /// The session's island: resumed from its local journal, or, in a cluster, claimed
    /// (`None`: another node sequences it, or the cluster cannot be reached).
    async fn open_island(&self, id: &str) -> Option<Island> {
        let config = Arc::clone(&self.config);
        let metrics = Arc::clone(&self.metrics);
        let Some(cluster) = &self.config.cluster else {
            return Some(Island::load(config, metrics, self.session_dir(id), id.to_owned()).await);
        };
        match cluster.0.claim(id).await {
            Ok(claim) => {
                Metrics::add(&self.metrics.cluster_claims, 1);
                Some(Island::claimed(config, metrics, id.to_owned(), claim))
            }
            Err(e) => {
                tracing::info!(session = %id, "not sequencing the session here: {e}; its clients are asked to reconnect");
                Metrics::add(&self.metrics.cluster_claims_refused, 1);
                None
            }
        }
    }

    /// Removes the session's entry if it is still the one `own` reaches (a later start
    /// may have replaced it).
    fn forget(&self, id: &str, own: &SessionHandle) {
        let mut sessions = self.sessions();
        if sessions
            .by_id
            .get(id)
            .is_some_and(|e| e.handle.tx.same_channel(&own.tx))
        {
            sessions.remove(id);
        }
    }

    /// Whether the reflector is stopping ([`Ctx::drain`]).
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Stops the reflector's sessions: no session starts any more, and each running one
    /// journals and sends what it has received, records its time, gives its lease up (in
    /// a cluster) and closes its connections with 4003, so that their clients reconnect to
    /// another node at once. Returns the number of sessions that had not ended by `within`.
    pub(crate) async fn drain(&self, within: std::time::Duration) -> usize {
        self.draining.store(true, Ordering::SeqCst);
        let handles: Vec<SessionHandle> = self
            .sessions()
            .by_id
            .values()
            .map(|e| e.handle.clone())
            .collect();
        tracing::info!(
            sessions = handles.len(),
            "stopping: ending the sessions and asking their clients to reconnect"
        );
        for h in &handles {
            h.send(Command::Drain);
        }
        let ended = async {
            futures_util::future::join_all(handles.iter().map(SessionHandle::closed)).await;
            // Their connections have been told to close: wait until they have sent the
            // close frame, or an exit now would cut them off without one.
            loop {
                let gone = self.member_gone.notified();
                if self.members.load(Ordering::SeqCst) == 0 {
                    break;
                }
                gone.await;
            }
        };
        if tokio::time::timeout(within, ended).await.is_ok() {
            return 0;
        }
        handles.iter().filter(|h| !h.tx.is_closed()).count()
    }

    /// A connection joined a session.
    pub(crate) fn member_joined(&self) {
        self.members.fetch_add(1, Ordering::SeqCst);
    }

    /// A connection that had joined a session has closed.
    pub(crate) fn member_left(&self) {
        self.members.fetch_sub(1, Ordering::SeqCst);
        self.member_gone.notify_waiters();
    }

    /// Whether the session is running (it has clients, or had them moments ago).
    pub(crate) fn is_live(&self, id: &str) -> bool {
        self.sessions().by_id.contains_key(id)
    }

    /// Removes an idle session unless a command (a JOIN) is waiting for it.
    fn remove_if_idle(&self, id: &str, rx: &mpsc::UnboundedReceiver<Command>) -> bool {
        let mut sessions = self.sessions();
        if !rx.is_empty() {
            return false;
        }
        sessions.remove(id);
        true
    }

    /// Deletes the journals of sessions that are not in memory and were last written
    /// longer ago than the retention period. Returns how many were deleted.
    pub(crate) fn sweep_journals(&self) -> usize {
        let Some(retention) = self.config.session_retention else {
            return 0;
        };
        let root = self.config.data_dir.join("sessions");
        let Ok(dirs) = std::fs::read_dir(&root) else {
            return 0;
        };
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for dir in dirs.flatten() {
            let name = dir.file_name();
            let Some(id) = name.to_str().filter(|id| valid_session_id(id)) else {
                continue;
            };
            let written = crate::journal::last_written(&dir.path())
                .or_else(|| dir.metadata().and_then(|m| m.modified()).ok());
            let age = written.and_then(|t| now.duration_since(t).ok());
            if age.is_none_or(|a| a < retention) {
                continue;
            }
            // Under the lock, so that the session cannot be started meanwhile.
            let sessions = self.sessions();
            if sessions.by_id.contains_key(id) {
                continue;
            }
            match std::fs::remove_dir_all(dir.path()) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(session = id, error = %e, "cannot delete an expired session journal")
                }
            }
            drop(sessions);
        }
        if removed > 0 {
            tracing::info!(
                removed,
                "deleted the journals of sessions unused for longer than the retention period"
            );
        }
        removed
    }
}
