//! Votes (TUTTI): the first message of a vote sent once, tallies completed when every
//! client voted or after `TALLY_INTERVAL_MS`, completed and too old votes ignored.

use super::*;

impl Session {
    pub(super) fn tutti(&mut self, conn: ConnId, a: TuttiArgs, now: Instant) {
        if !self.is_participant(conn) {
            return;
        }
        let time = self.clock.now(now);
        if !self.tallies.contains_key(&a.tutti_key) {
            if a.send_time < self.tally_history_limit(time) {
                tracing::debug!(session = %self.id, key = %a.tutti_key, "vote too old; ignored");
                return;
            }
            if self.completed.iter().any(|(k, _)| *k == a.tutti_key) {
                tracing::debug!(session = %self.id, key = %a.tutti_key, "vote for a completed tally; ignored");
                return;
            }
            if let Some(first) = &a.first_msg {
                let Some(tail) = self.client_tail(conn, first, now) else {
                    return;
                };
                self.broadcast(&tail, true, now);
            }
            self.tallies.insert(
                a.tutti_key.clone(),
                Tally {
                    send_time: a.send_time,
                    send_time_raw: a.send_time_raw.get().to_owned(),
                    wants_vote: a.wants_vote,
                    target: a.tally_target.get().to_owned(),
                    votes: Vec::new(),
                    expecting: self.clients.len() as i64,
                    due: now + Duration::from_millis(synq_protocol::TALLY_INTERVAL_MS),
                },
            );
        }
        let Some(t) = self.tallies.get_mut(&a.tutti_key) else {
            return;
        };
        match t.votes.iter_mut().find(|(v, _)| *v == a.payload) {
            Some((_, n)) => *n += 1,
            None => t.votes.push((a.payload, 1)),
        }
        t.expecting -= 1;
        if t.expecting <= 0 {
            self.complete_tally(&a.tutti_key, now);
        }
    }

    pub(super) fn tally_history_limit(&mut self, time: u64) -> f64 {
        let age_limit = time as f64 - synq_protocol::MAX_TALLY_AGE_MS as f64 + 1.0;
        self.completed.retain(|(_, t)| *t >= age_limit);
        self.completed_sentinel
            .map_or(age_limit, |s| s.max(age_limit))
    }

    pub(super) fn complete_tally(&mut self, key: &str, now: Instant) {
        let Some(t) = self.tallies.remove(key) else {
            return;
        };
        if t.wants_vote || t.votes.len() > 1 {
            let payload =
                frames::tally_payload(&t.send_time_raw, &t.votes, &t.target, key, t.expecting);
            self.broadcast_own(&payload, now);
        }
        self.completed.push_back((key.to_owned(), t.send_time));
        while self.completed.len() > synq_protocol::MAX_COMPLETED_TALLIES {
            if let Some((_, st)) = self.completed.pop_front() {
                self.completed_sentinel = Some(self.completed_sentinel.map_or(st, |s| s.max(st)));
            }
        }
    }
}
