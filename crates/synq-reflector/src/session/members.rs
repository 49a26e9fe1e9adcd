//! Who is in the session: JOIN (the room key and sender identity of synq sessions, the
//! participant and observer caps, the SYNC), leaves after the leave delay, and the
//! join/leave announcements batched over `USERS_INTERVAL_MS`.

use super::*;

impl Session {
    pub(super) fn close(&mut self, conn: ConnId, code: CloseCode) {
        self.effects.push(Effect::Close(conn, code));
    }

    /// Closes a connection that is refused at JOIN (it never becomes a client).
    pub(super) fn refuse(&mut self, conn: ConnId, code: CloseCode) {
        self.close(conn, code);
        self.departed.push(conn);
    }

    pub(super) fn join(
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
                persisted_url,
            };
            self.tick = tick_period(header.tick_ms, self.config.min_tick);
            self.records.header(&header);
            // The name is the room's name in synq: not for logs that others may read.
            tracing::info!(session = %self.id, tick = ?self.tick, persisted = ?header.persisted_url, "session created");
            tracing::debug!(session = %self.id, name = ?args.name, "session name");
            self.header = Some(header);
        }
        // leaveDelay and flags are session-wide and follow the latest JOIN (as in Croquet).
        self.leave_delay = clamped_ms(args.leave_delay);
        self.flags = args.flags.clone();
        self.flags_json = serde_json::to_string(&self.flags).unwrap_or_else(|_| "{}".into());
        self.idle_due = None;

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
            // Until the first snapshot every joiner starts from the data the session
            // started from (a snapshot takes priority); a synq joiner's fallback to the
            // session's start is that data too (see `frames::Sync`).
            persisted_url: header.and_then(|h| h.persisted_url.as_deref()),
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
    pub(super) fn hand_ai_capability(&mut self) {
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

    pub(super) fn user_joined(&mut self, user: PendingUser, now: Instant) {
        if let Some(s) = &user.string
            && let Some(i) = self.left.iter().position(|p| p.string.as_ref() == Some(s))
        {
            self.left.remove(i);
            return;
        }
        self.joined.push(user);
        self.arm_users(now);
    }

    pub(super) fn user_left(&mut self, user: PendingUser, now: Instant) {
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

    pub(super) fn arm_users(&mut self, now: Instant) {
        if self.users_due.is_none() {
            self.users_due = Some(now + Duration::from_millis(synq_protocol::USERS_INTERVAL_MS));
        }
    }

    pub(super) fn closed(&mut self, conn: ConnId, now: Instant) {
        if self.clients.contains_key(&conn) {
            self.leaves.push((now + self.leave_delay, conn));
        }
    }

    pub(super) fn remove_client(&mut self, conn: ConnId, now: Instant) {
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

    pub(super) fn announce_users(&mut self, now: Instant) {
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

    pub(super) fn is_participant(&self, conn: ConnId) -> bool {
        self.clients.get(&conn).is_some_and(|c| c.active)
    }
}
