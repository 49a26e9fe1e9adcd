//! What a model may use while it handles an event: time, randomness, timers, outputs.

use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;
use serde::{Deserialize, Serialize};

use crate::{Model, PersistError, Persisted, ViewId};

/// Identifies a pending timer so that it can be cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TimerId(pub u64);

/// Pending timers in firing order: due time, then the order they were set in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound = "T: Serialize + serde::de::DeserializeOwned")]
pub(crate) struct Timers<T> {
    pub(crate) next_id: u64,
    pub(crate) pending: BTreeMap<(u64, TimerId), T>,
}

impl<T> Default for Timers<T> {
    fn default() -> Self {
        Self {
            next_id: 0,
            pending: BTreeMap::new(),
        }
    }
}

impl<T> Timers<T> {
    /// The earliest timer due at or before `time`, removed.
    pub(crate) fn pop_due(&mut self, time: u64) -> Option<(u64, T)> {
        let (&(due, id), _) = self.pending.first_key_value()?;
        if due > time {
            return None;
        }
        self.pending.remove(&(due, id)).map(|t| (due, t))
    }
}

/// The model's handle on the runtime during one event.
pub struct Cx<'a, M: Model> {
    pub(crate) now: u64,
    pub(crate) rng: &'a mut ChaCha8Rng,
    pub(crate) timers: &'a mut Timers<M::Timer>,
    pub(crate) outputs: &'a mut Vec<M::Output>,
    pub(crate) views: &'a BTreeMap<ViewId, M::ViewData>,
    pub(crate) saves: &'a mut Saves,
}

/// What the model handed to [`Cx::persist`] and [`Cx::write_file`] until the client takes
/// it. Not replica state: every replica makes it at the same event, and no snapshot holds
/// it.
#[derive(Default)]
pub(crate) struct Saves {
    /// The last [`Cx::persist`].
    pub(crate) persist: Option<Persisted>,
    /// [`Cx::write_file`]s, by name, in the order written.
    pub(crate) files: Vec<(String, Persisted)>,
}

impl<M: Model> Cx<'_, M> {
    /// Reflector time of the event being handled, in milliseconds. The same on every replica.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// A uniformly distributed number in `[0, 1)` from the session's random stream.
    pub fn random(&mut self) -> f64 {
        // 53 random bits scaled exactly: identical on every platform.
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniformly distributed integer in `[0, n)`; 0 when `n` is 0.
    pub fn random_below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Rejection sampling: no modulo bias, and no platform-dependent `usize`.
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.rng.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// 64 random bits.
    pub fn random_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Delivers `timer` to [`Model::timer`] `delay_ms` from now (reflector time).
    pub fn future(&mut self, delay_ms: u64, timer: impl Into<M::Timer>) -> TimerId {
        let id = TimerId(self.timers.next_id);
        self.timers.next_id += 1;
        let due = self.now.saturating_add(delay_ms);
        self.timers.pending.insert((due, id), timer.into());
        id
    }

    /// Cancels a pending timer; returns whether it was still pending.
    pub fn cancel(&mut self, id: TimerId) -> bool {
        let key = self
            .timers
            .pending
            .keys()
            .find(|(_, tid)| *tid == id)
            .copied();
        key.is_some_and(|k| self.timers.pending.remove(&k).is_some())
    }

    /// Tells the local views something. Outputs never leave the device.
    pub fn emit(&mut self, output: impl Into<M::Output>) {
        self.outputs.push(output.into());
    }

    /// Saves `data` as what this room keeps across versions of the model: the first
    /// session of a later `SCHEMA` in the same room starts from it
    /// ([`Model::init_persisted`]). The last call of an event wins; each call costs every
    /// client a vote and one client an upload, so call it from a timer that gathers
    /// changes (a few seconds) rather than on every input.
    pub fn persist(&mut self, data: &impl serde::Serialize) -> Result<(), PersistError> {
        self.saves.persist = Some(Persisted::new(M::SCHEMA, self.now, data)?);
        Ok(())
    }

    /// Writes `data` to the room's file `name` (JSON, sealed for the room, in the server's
    /// file store; at most [`crate::MAX_PERSISTED_BYTES`]) for views to read back later
    /// with the client's `read_file`, in any later session of the room: what the model
    /// no longer holds but people may want to see (a chat's older messages). Files are
    /// written once: give each a name that is never used again (the model's `SCHEMA` and
    /// a counter), and keep the names in the model.
    pub fn write_file(
        &mut self,
        name: &str,
        data: &impl serde::Serialize,
    ) -> Result<(), PersistError> {
        let file = Persisted::new(M::SCHEMA, self.now, data)?;
        self.saves.files.push((name.to_owned(), file));
        Ok(())
    }

    /// The views in the session, in id order, with the data they joined with.
    pub fn views(&self) -> &BTreeMap<ViewId, M::ViewData> {
        self.views
    }
}
