//! Sequencing messages: the sender stamp and content check of synq sessions, `rawtime`,
//! debounce, and the caps on what a session retains (REQU, then refusal with an INFO).

use super::*;

/// Longest `debounce` message id that is remembered (Croquet's are short names).
pub(super) const MAX_DEBOUNCE_ID: usize = 128;

impl Session {
    pub(super) fn send(
        &mut self,
        conn: ConnId,
        args: SendArgs,
        tags: Option<SendTags>,
        now: Instant,
    ) {
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
    pub(super) fn client_tail(
        &mut self,
        conn: ConnId,
        tail: &MessageTail,
        now: Instant,
    ) -> Option<String> {
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
    pub(super) fn debounced(&mut self, msg_id: &str, ms: f64, now: Instant) -> bool {
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
    pub(super) fn broadcast(&mut self, tail: &str, from_client: bool, now: Instant) -> bool {
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
    pub(super) fn drop_fallback(&mut self) -> bool {
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
    pub(super) fn broadcast_own(&mut self, payload: &str, now: Instant) {
        if self.flags.contains_key("rawtime") {
            let tail = format!("{payload},{}", self.clock.raw(now));
            self.broadcast(&tail, false, now);
        } else {
            self.broadcast(payload, false, now);
        }
    }

    pub(super) fn request_snapshot(&mut self, time: u64) {
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

    pub(super) fn info_all(&mut self, code: &str, msg: &str, level: &str) {
        let frame = Utf8Bytes::from(frames::info(&self.id_json, code, msg, level));
        // In stream order for active clients (so it follows the messages it is about),
        // directly to the others.
        self.outbox.push(Out::Broadcast(Shared::Msg(frame.clone())));
        for (id, _) in self.clients.iter().filter(|(_, c)| !c.active) {
            self.outbox.push(Out::Frame(*id, frame.clone()));
        }
    }
}
