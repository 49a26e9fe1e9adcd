//! How many large SYNCs are written at once, per session and per client address.
//!
//! A SYNC over one `_CHUNK` is written piece by piece; each one in flight holds a piece
//! (1 MB) and the socket's buffers until its reader takes it. Joiners beyond the limits
//! wait for a turn (no piece is made until then); small SYNCs never wait. The wait does not
//! count against the connection's write timeout: it is not the joiner failing to read.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// Semaphores made on demand and forgotten when nobody holds or awaits them.
struct Gates<K> {
    per_key: usize,
    map: Mutex<HashMap<K, Arc<Semaphore>>>,
}

impl<K: Hash + Eq + Clone> Gates<K> {
    fn new(per_key: usize) -> Self {
        Gates {
            per_key,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn gate(&self, key: &K) -> Arc<Semaphore> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_key)))
            .clone()
    }

    /// Drops the semaphore of `key` if only the map still holds it.
    fn forget_if_unused(&self, key: &K) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(key).is_some_and(|s| Arc::strong_count(s) == 1) {
            map.remove(key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The limits of one reflector.
pub(crate) struct SyncGate(Arc<Limits>);

struct Limits {
    sessions: Gates<Arc<str>>,
    addresses: Gates<IpAddr>,
    metrics: Arc<Metrics>,
}

/// A turn to write a large SYNC; the next joiner's turn comes when it is dropped.
pub(crate) struct SyncTurn {
    gate: Arc<Limits>,
    session: Arc<str>,
    address: IpAddr,
    permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

impl Drop for SyncTurn {
    fn drop(&mut self) {
        if self.permits.take().is_some() {
            self.gate.metrics.syncs_writing.fetch_sub(1, Relaxed);
        }
        self.gate.sessions.forget_if_unused(&self.session);
        self.gate.addresses.forget_if_unused(&self.address);
    }
}

impl SyncGate {
    /// `0` means unlimited (as for the other per-address limits).
    pub(crate) fn new(per_session: usize, per_address: usize, metrics: Arc<Metrics>) -> SyncGate {
        let n = |v: usize| if v == 0 { Semaphore::MAX_PERMITS } else { v };
        SyncGate(Arc::new(Limits {
            sessions: Gates::new(n(per_session)),
            addresses: Gates::new(n(per_address)),
            metrics,
        }))
    }

    /// Waits for a turn: one of `per_session` for `session` and one of `per_address` for
    /// `address` (the session's first, so that a joiner waiting on a busy session does
    /// not hold its address's turn).
    pub(crate) async fn turn(&self, session: Arc<str>, address: IpAddr) -> SyncTurn {
        let this = &self.0;
        let mut turn = SyncTurn {
            gate: Arc::clone(this),
            session,
            address,
            permits: None,
        };
        this.metrics.syncs_waiting.fetch_add(1, Relaxed);
        // Counted down on every path, also when the waiting connection is dropped.
        let _waiting = scopeguard(|| {
            this.metrics.syncs_waiting.fetch_sub(1, Relaxed);
        });
        let s = this.sessions.gate(&turn.session).acquire_owned().await;
        let a = this.addresses.gate(&turn.address).acquire_owned().await;
        if let (Ok(s), Ok(a)) = (s, a) {
            turn.permits = Some((s, a));
            this.metrics.syncs_writing.fetch_add(1, Relaxed);
        }
        turn
    }

    /// Semaphores held (for tests: none once every SYNC is written).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.0.sessions.len() + self.0.addresses.len()
    }
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[tokio::test]
    async fn a_session_and_an_address_get_their_number_of_turns_then_wait() {
        let gate = SyncGate::new(2, 3, Arc::default());
        let room: Arc<str> = Arc::from("room");
        let t1 = gate.turn(room.clone(), addr(1)).await;
        let _t2 = gate.turn(room.clone(), addr(2)).await;
        // A third SYNC of the room waits until one is written.
        let third = gate.turn(room.clone(), addr(3));
        tokio::pin!(third);
        assert!(
            tokio::time::timeout(Duration::from_millis(1), third.as_mut())
                .await
                .is_err()
        );
        drop(t1);
        let _t3 = third.await;
        // One address: three turns over any sessions, then it waits.
        let _a = gate.turn(Arc::from("a"), addr(9)).await;
        let _b = gate.turn(Arc::from("b"), addr(9)).await;
        let _c = gate.turn(Arc::from("c"), addr(9)).await;
        let fourth = gate.turn(Arc::from("d"), addr(9));
        tokio::pin!(fourth);
        assert!(
            tokio::time::timeout(Duration::from_millis(1), fourth.as_mut())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn semaphores_are_forgotten_when_their_syncs_are_written() {
        let gate = SyncGate::new(2, 2, Arc::default());
        for i in 0..100u8 {
            let _t = gate.turn(Arc::from(format!("s{i}")), addr(i)).await;
        }
        assert_eq!(gate.held(), 0);
        let unlimited = SyncGate::new(0, 0, Arc::default());
        let mut turns = Vec::new();
        for _ in 0..100 {
            turns.push(unlimited.turn(Arc::from("s"), addr(1)).await);
        }
        drop(turns);
        assert_eq!(unlimited.held(), 0);
    }
}
