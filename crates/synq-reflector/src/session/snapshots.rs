//! Snapshots (SNAP) and the fallback, the rules on which snapshot joiners may be given,
//! and persistent data (SAVE).

use super::*;

/// The file-store key `url` names, if it is `http(s)://HOST/files/KEY` with HOST the
/// `Host` the client reached this server as (whatever host a client names, only this
/// server's store is trusted).
fn own_store_key(url: &str, host: Option<&str>) -> Option<crate::store::BlobKey> {
    let host = host?;
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let (url_host, path) = rest.split_once('/')?;
    if !url_host.eq_ignore_ascii_case(host) {
        return None;
    }
    crate::store::BlobKey::parse(path.strip_prefix("files/")?).ok()
}

/// Whether `url` names a snapshot of session `id` in the file store of the server the
/// client reached as `host`: `http(s)://HOST/files/PATH`, where PATH is one of the paths
/// Croquet and synq clients store snapshots at, for this session (see `files::owner`).
pub(super) fn snapshot_url_ok(url: &str, host: Option<&str>, id: &str) -> bool {
    own_store_key(url, host)
        .is_some_and(|key| crate::store::owner(&key) == Some(crate::store::Owner::Session(id)))
}

/// Whether `url` names persistent data of the app `app_id`, `persistent_id` in the file
/// store of the server the client reached as `host`:
/// `http(s)://HOST/files/apps/<appId>/<persistentId>/save/<name>`, where Croquet's client
/// uploads it (`persistentPath`). The next session of the app is told to download it, so
/// a participant must not be able to point it anywhere else.
pub(super) fn persisted_url_ok(
    url: &str,
    host: Option<&str>,
    app_id: &str,
    persistent_id: &str,
) -> bool {
    own_store_key(url, host).is_some_and(|key| {
        matches!(
            key.as_str().split('/').collect::<Vec<_>>()[..],
            ["apps", a, p, "save", _] if a == app_id && p == persistent_id
        )
    })
}

impl Session {
    pub(super) fn snap(&mut self, conn: ConnId, a: SnapArgs, now: Instant) {
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
    pub(super) fn check_snapshot(
        &mut self,
        conn: ConnId,
        a: &SnapArgs,
        now: Instant,
    ) -> Result<(), String> {
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

    pub(super) fn save(&mut self, conn: ConnId, a: SaveArgs) {
        if !self.is_participant(conn) {
            return;
        }
        let Some((key, header)) = self
            .header
            .as_ref()
            .and_then(|h| Some((h.persistent_key()?, h)))
        else {
            tracing::warn!(session = %self.id, conn, "SAVE refused: the session's JOIN had no appId/persistentId");
            self.close(conn, CloseCode::BadAppId);
            return;
        };
        if a.dissident {
            tracing::warn!(session = %self.id, conn, "dissident persistent data ignored");
            return;
        }
        let host = self.clients.get(&conn).and_then(|c| c.host.clone());
        let (app_id, persistent_id) = (
            header.app_id.as_deref().unwrap_or_default(),
            header.persistent_id.as_deref().unwrap_or_default(),
        );
        // Ignored, not closed: an honest client whose uploads go to another host (a proxy
        // that rewrites Host) would otherwise be cut off at every persist, and closing
        // costs an attacker nothing. What matters is that the url is never handed out.
        if !persisted_url_ok(&a.url, host.as_deref(), app_id, persistent_id) {
            tracing::warn!(
                session = %self.id,
                conn,
                "SAVE refused: url {:?} is not in this server's file store (http(s)://{}/files/apps/{app_id}/{persistent_id}/save/…)",
                a.url.get(..a.url.floor_char_boundary(200)).unwrap_or(""),
                host.as_deref().unwrap_or("<host>"),
            );
            Metrics::add(&self.metrics.saves_refused, 1);
            return;
        }
        self.effects.push(Effect::Persist { key, url: a.url });
    }
}
