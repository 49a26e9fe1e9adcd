//! One session's task ("island" in Croquet's reflector): the I/O around a [`Session`].
//! It owns the session's journal, its command receiver, its one timer and the handles of
//! its connections (the fan-out); the session's rules are all in [`Session`]. The timer
//! also closes the journal's file once the session stops writing (see
//! [`crate::journal::KEEP_OPEN`]).
//!
//! Work is done in batches: the task takes every command that is waiting, hands them to
//! the session, writes the journal once for the whole batch, and only then sends what the
//! session produced. That order is what makes a broadcast message durable before any
//! client has seen it. Broadcast frames (RECV, TICK, REQU) are encoded once by the
//! session and shared by all recipients; SYNC, INFO and closes go to one connection.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cluster::{Claim, Lease};
use crate::config::ReflectorConfig;
use crate::handle::{Command, ConnHandle, ConnId, Direct};
use crate::journal::{Journal, JournalError, Records, Recovered, SessionJournal};
use crate::metrics::Metrics;
use crate::session::{Effect, Input, Out, Session};

pub(crate) struct Island {
    session: Session,
    config: Arc<ReflectorConfig>,
    metrics: Arc<Metrics>,
    journal: Option<Box<dyn SessionJournal>>,
    /// In a cluster: the lease that lets this node sequence the session.
    lease: Option<Box<dyn Lease>>,
    /// The connections the session knows, and those refused at JOIN until their close
    /// is sent.
    conns: HashMap<ConnId, ConnHandle>,
    /// The connections that get broadcasts: active clients whose SYNC is queued. Each
    /// has its own queue; a broadcast frame is queued to each (shared, not copied).
    subscribers: Vec<ConnHandle>,
}

/// The journal is lost to this node (see [`Ended::Lost`]).
struct Lost;

/// Why [`Island::run`] returned.
pub(crate) enum Ended {
    /// The session has had no client for its idle grace period: the registry may retire it.
    Idle,
    /// Nobody can send it commands any more.
    Closed,
    /// In a cluster: this node may no longer sequence the session (its lease lapsed, or
    /// another node appended to its journal). Nothing more was sent; the clients must
    /// reconnect, to the new owner.
    Lost,
    /// The reflector is stopping ([`Command::Drain`]): everything received so far is
    /// journaled and sent; the session is to be closed and given up.
    Drained,
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl Island {
    /// Opens (or resumes from its journal in `dir`) the session `id`.
    pub(crate) async fn load(
        config: Arc<ReflectorConfig>,
        metrics: Arc<Metrics>,
        dir: PathBuf,
        id: String,
    ) -> Island {
        let durability = config.durability;
        let opened = tokio::task::spawn_blocking(move || Journal::open(&dir, durability)).await;
        let (journal, rec) = match opened {
            Ok(Ok((j, r))) => (Some(Box::new(j) as Box<dyn SessionJournal>), r),
            Ok(Err(e)) => {
                tracing::error!(session = %id, error = %e, "cannot open session journal; this session will not survive a restart");
                Metrics::add(&metrics.journal_errors, 1);
                (None, Recovered::default())
            }
            Err(e) => {
                tracing::error!(session = %id, error = %e, "journal loader failed");
                (None, Recovered::default())
            }
        };
        Island::new(config, metrics, id, journal, None, rec)
    }

    /// The session `id` in a cluster, as this node claimed it.
    pub(crate) fn claimed(
        config: Arc<ReflectorConfig>,
        metrics: Arc<Metrics>,
        id: String,
        claim: Claim,
    ) -> Island {
        let Claim {
            lease,
            journal,
            recovered,
        } = claim;
        Island::new(config, metrics, id, Some(journal), Some(lease), recovered)
    }

    fn new(
        config: Arc<ReflectorConfig>,
        metrics: Arc<Metrics>,
        id: String,
        journal: Option<Box<dyn SessionJournal>>,
        lease: Option<Box<dyn Lease>>,
        rec: Recovered,
    ) -> Island {
        if rec.header.is_some() {
            tracing::info!(session = %id, messages = rec.messages.len(), seq = ?rec.last_seq, time = rec.time, snapshot = rec.snapshot.is_some(), "session resumed from journal");
        }
        let records = match journal {
            Some(_) => Records::default(),
            None => Records::disabled(),
        };
        Island {
            session: Session::new(
                Arc::clone(&config),
                Arc::clone(&metrics),
                id,
                rec,
                records,
                now(),
            ),
            config,
            metrics,
            journal,
            lease,
            conns: HashMap::new(),
            subscribers: Vec::new(),
        }
    }

    /// Runs the session until it has been idle long enough (the registry then retires
    /// it, or calls this again if a JOIN is on its way) or nobody can reach it.
    pub(crate) async fn run(&mut self, rx: &mut mpsc::UnboundedReceiver<Command>) -> Ended {
        // Grown on demand: idle sessions keep no batch buffer of their own.
        let mut batch = Vec::new();
        // One timer, moved to the next deadline only when that changes (not re-created on
        // every wake-up: that would register a timer per message).
        let far = || Instant::now() + Duration::from_secs(3600);
        let timer = tokio::time::sleep_until(far());
        tokio::pin!(timer);
        let mut drained = false;
        loop {
            // The session's next deadline, or closing a journal file that fell quiet.
            let journal_due = self.journal.as_ref().and_then(|j| j.open_until());
            let lease_due = self.lease.as_ref().map(|l| l.valid_until());
            let due = self
                .session
                .next_deadline()
                .into_iter()
                .chain(journal_due)
                .chain(lease_due)
                .min()
                .map_or_else(far, Instant::from_std);
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            tokio::select! {
                n = rx.recv_many(&mut batch, 512) => {
                    if n == 0 {
                        return Ended::Closed;
                    }
                    for cmd in batch.drain(..) {
                        if matches!(cmd, Command::Drain) {
                            drained = true;
                        } else {
                            self.handle(cmd).await;
                        }
                    }
                }
                () = &mut timer => {}
            }
            self.session.poll(now(), self.audience());
            // Checked after the batch was handled and before anything of it is sent: a
            // node paused past its lease (another may own the session now) sends nothing.
            if !self.holds_lease() {
                return self.lost("its lease lapsed");
            }
            if self.install_compaction().await.is_err() || self.flush().await.is_err() {
                return self.lost(
                    "another node appended to its journal, or the cluster did not take the batch",
                );
            }
            if drained {
                return Ended::Drained;
            }
            if let Some(j) = &mut self.journal {
                j.close_idle(now());
            }
            if self.session.is_idle(now()) {
                return Ended::Idle;
            }
        }
    }

    /// Whether this node may sequence the session now (always, outside a cluster).
    fn holds_lease(&self) -> bool {
        self.lease.as_ref().is_none_or(|l| now() < l.valid_until())
    }

    fn lost(&self, why: &str) -> Ended {
        tracing::warn!(session = %self.session.id(), "this node no longer sequences the session: {why}; its clients are asked to reconnect");
        Metrics::add(&self.metrics.cluster_sessions_lost, 1);
        Ended::Lost
    }

    /// Gives the session's lease up (in a cluster), after [`Island::close`]: another node
    /// may claim the session at once instead of after the lease's time.
    pub(crate) async fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release().await;
        }
    }

    /// The registry did not retire the idle session (a JOIN is waiting).
    pub(crate) fn kept(&mut self) {
        self.session.kept(now());
    }

    /// The session ends: its time is journaled. By reference: an `Island` moved into this
    /// future would be held twice by the session's task for its whole life (a task is as
    /// large as its largest state).
    pub(crate) async fn close(&mut self) {
        if !self.holds_lease() {
            return;
        }
        let _ = self.install_compaction().await;
        let time = self.session.finish(now());
        let _ = self.commit_journal().await;
        tracing::info!(session = %self.session.id(), time, seq = self.session.seq(), "session closed (idle)");
    }

    async fn handle(&mut self, cmd: Command) {
        let input = match cmd {
            Command::Join { conn, args } => {
                let persisted_url = match self.session.persisted_key(&args) {
                    Some(key) => persisted_url(&self.config, &key).await,
                    None => None,
                };
                let input = Input::Join {
                    conn: conn.id,
                    host: conn.host.clone(),
                    args,
                    persisted_url,
                };
                self.conns.insert(conn.id, *conn);
                input
            }
            Command::Send { conn, args, tags } => Input::Send {
                conn,
                args: *args,
                tags: tags.map(|t| *t),
            },
            Command::Tutti { conn, args } => Input::Tutti { conn, args: *args },
            Command::Snap { conn, args } => Input::Snap { conn, args: *args },
            Command::Save { conn, args } => Input::Save { conn, args: *args },
            Command::Ticks { conn, cfg } => Input::Ticks { conn, cfg: *cfg },
            Command::Closed { conn } => Input::Closed { conn },
            // Taken by `run`.
            Command::Drain => return,
        };
        self.session.handle(input, now());
        for effect in self.session.take_effects() {
            match effect {
                Effect::Close(conn, code) => {
                    if let Some(c) = self.conns.get(&conn) {
                        c.close(code);
                    }
                }
                Effect::Persist { key, url } => self.persist(&key, &url).await,
            }
        }
    }

    async fn persist(&mut self, key: &str, url: &str) {
        let config = Arc::clone(&self.config);
        let saved = match &config.cluster {
            Some(cluster) => cluster
                .0
                .save_persisted(key, url)
                .await
                .map_err(|e| std::io::Error::other(e.to_string())),
            None => save_persisted(&config.data_dir, key, url),
        };
        let id = self.session.id();
        match saved {
            Ok(()) => tracing::info!(session = %id, url = %url, "persistent data registered"),
            Err(e) => {
                tracing::error!(session = %id, error = %e, "cannot record persistent data");
                Metrics::add(&self.metrics.journal_errors, 1);
            }
        }
    }

    /// Replaces the journal with the compaction a snapshot made (a local journal does it on
    /// a blocking thread; this session waits, its commands queue). `Err`: the journal is
    /// lost to this node.
    async fn install_compaction(&mut self) -> Result<(), Lost> {
        let Some(image) = self.session.records().take_compaction() else {
            return Ok(());
        };
        let Some(journal) = &mut self.journal else {
            return Ok(());
        };
        let result = journal.replace(image).await;
        self.journal_result(result, "cannot compact the session journal")
    }

    async fn commit_journal(&mut self) -> Result<(), Lost> {
        let Some(journal) = &mut self.journal else {
            return Ok(());
        };
        let result = journal.append(self.session.records(), now()).await;
        self.journal_result(
            result,
            "journal write failed; messages are still delivered but may not survive a restart",
        )
    }

    /// A local journal's failure is logged and the session goes on (its messages are
    /// still delivered); a lost cluster journal stops the session.
    fn journal_result(&self, result: Result<(), JournalError>, what: &str) -> Result<(), Lost> {
        match result {
            Ok(()) => Ok(()),
            Err(JournalError::Lost(why)) => {
                tracing::warn!(session = %self.session.id(), "session journal lost: {why}");
                Err(Lost)
            }
            Err(e) => {
                tracing::error!(session = %self.session.id(), error = %e, "{what}");
                Metrics::add(&self.metrics.journal_errors, 1);
                Ok(())
            }
        }
    }

    /// Make the batch durable, then send what it produced.
    async fn flush(&mut self) -> Result<(), Lost> {
        if self.session.has_outbox() {
            self.commit_journal().await?;
        }
        self.deliver();
        for conn in self.session.take_departed() {
            self.conns.remove(&conn);
            self.subscribers.retain(|c| c.id != conn);
        }
        Ok(())
    }

    // The fan-out is `deliver` and `audience`: nothing else touches `subscribers`.

    /// Sends the session's outbox, in order, to the subscribers and to single connections.
    fn deliver(&mut self) {
        if !self.session.has_clients() {
            self.subscribers.clear();
        }
        let mut outbox = self.session.take_outbox();
        for out in outbox.drain(..) {
            match out {
                Out::Broadcast(frame) => {
                    for c in &self.subscribers {
                        c.send(Direct::from(frame.clone()));
                    }
                }
                Out::Sync { conn, frame } => {
                    // Subscribing here, between broadcasts, is what makes the first RECV
                    // this client sees carry exactly SYNC.seq + 1.
                    let Some(active) = self.session.client(conn) else {
                        continue;
                    };
                    if let Some(c) = self.conns.get(&conn) {
                        c.send(Direct::Sync(Box::new(frame)));
                        if active && !self.subscribers.iter().any(|s| s.id == conn) {
                            self.subscribers.push(c.clone());
                        }
                    }
                }
                Out::Frame(conn, frame) => {
                    if self.session.client(conn).is_some()
                        && let Some(c) = self.conns.get(&conn)
                    {
                        c.send(Direct::Frame(frame));
                    }
                }
            }
        }
        self.session.return_outbox(outbox);
    }

    /// Whether anyone gets broadcasts (ticks for nobody are not made).
    fn audience(&self) -> bool {
        !self.subscribers.is_empty()
    }
}

/// The URL of the data an earlier session of the app persisted: in the cluster, or in the
/// data directory.
async fn persisted_url(config: &ReflectorConfig, key: &str) -> Option<String> {
    match &config.cluster {
        Some(cluster) => cluster.0.read_persisted(key).await,
        None => read_persisted(&config.data_dir, key),
    }
}

fn persisted_path(data_dir: &Path, key: &str) -> PathBuf {
    data_dir.join("persistent").join(format!("{key}.url"))
}

/// URL of the persistent data saved by an earlier session of the same app.
fn read_persisted(data_dir: &Path, key: &str) -> Option<String> {
    std::fs::read_to_string(persisted_path(data_dir, key)).ok()
}

fn save_persisted(data_dir: &Path, key: &str, url: &str) -> std::io::Result<()> {
    let path = persisted_path(data_dir, key);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, url)?;
    std::fs::rename(&tmp, &path)
}
