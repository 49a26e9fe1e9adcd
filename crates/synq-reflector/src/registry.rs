//! The sessions a reflector holds in memory, and what they share (config, metrics,
//! where journals and persistent-data records live).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use synq_protocol::client::JoinArgs;
use tokio::sync::mpsc;

use crate::config::ReflectorConfig;
use crate::connection::ConnHandle;
use crate::island::{Command, Island};
use crate::journal::Header;
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
}

pub(crate) struct Ctx {
    pub config: ReflectorConfig,
    pub metrics: Arc<Metrics>,
    sessions: Mutex<HashMap<String, SessionHandle>>,
    next_conn: AtomicU64,
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
            config,
            metrics,
            sessions: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
        }
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<String, SessionHandle>> {
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

    /// Hand a JOIN to its session, starting (or resuming) the session if needed. Done
    /// under the registry lock so that it cannot race with the session shutting down.
    pub(crate) fn join(
        self: &Arc<Self>,
        id: &str,
        conn: ConnHandle,
        args: JoinArgs,
    ) -> SessionHandle {
        let mut sessions = self.sessions();
        let handle = sessions
            .entry(id.to_owned())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                let ctx = Arc::clone(self);
                let id = id.to_owned();
                tokio::spawn(async move {
                    Island::load(ctx, id).await.run(rx).await;
                });
                SessionHandle { tx }
            })
            .clone();
        handle.send(Command::Join {
            conn,
            args: Box::new(args),
        });
        handle
    }

    /// Whether the session is running (it has clients, or had them moments ago).
    pub(crate) fn is_live(&self, id: &str) -> bool {
        self.sessions().contains_key(id)
    }

    /// Called by an idle session: removes it unless a command (a JOIN) is waiting.
    pub(crate) fn remove_if_idle(&self, id: &str, rx: &mpsc::UnboundedReceiver<Command>) -> bool {
        let mut sessions = self.sessions();
        if !rx.is_empty() {
            return false;
        }
        sessions.remove(id);
        true
    }

    pub(crate) fn persistent_key(h: &Header) -> Option<String> {
        let app = h.app_id.as_deref()?;
        let pid = h.persistent_id.as_deref()?;
        let dev = h.developer_id.as_deref().unwrap_or("unknown_dev_id");
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '~'
                    }
                })
                .collect()
        };
        Some(format!("{}.{}.{}", clean(dev), clean(app), clean(pid)))
    }

    fn persisted_path(&self, key: &str) -> PathBuf {
        self.config
            .data_dir
            .join("persistent")
            .join(format!("{key}.url"))
    }

    /// URL of the persistent data saved by an earlier session of the same app.
    pub(crate) fn persisted_url(&self, h: Option<&Header>) -> Option<String> {
        let key = Self::persistent_key(h?)?;
        std::fs::read_to_string(self.persisted_path(&key)).ok()
    }

    pub(crate) fn save_persisted_url(&self, key: &str, url: &str) -> std::io::Result<()> {
        let path = self.persisted_path(key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, url)?;
        std::fs::rename(&tmp, &path)
    }
}
