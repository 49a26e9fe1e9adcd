//! Session leases in a JetStream key-value bucket. The bucket's `max_age` is the lease's
//! time to live: a key that nobody renews disappears, and the next node to claim the
//! session creates it again. The owner renews with a compare-and-set on the revision it
//! holds, so a node that lost its lease (another created the key after it lapsed) learns
//! it at its next renewal.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::Stats;

/// What a lease's value says: who holds it and where other nodes forward to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Holder {
    pub node: String,
    /// Random per process: a restarted node does not take its dead predecessor's lease
    /// for its own.
    pub instance: String,
    /// Base URL of the holder's cluster listener.
    pub url: String,
}

/// A lease this node holds, renewed by a task until dropped; dropping it deletes the key
/// (if this node still holds it), so the session can be claimed at once elsewhere.
pub(crate) struct NatsLease {
    valid_until: Arc<Mutex<Instant>>,
    stop: Option<oneshot::Sender<()>>,
    /// The renewing task, which deletes the key when stopped.
    task: Option<tokio::task::JoinHandle<()>>,
    ttl: Duration,
}

impl NatsLease {
    /// Starts renewing the lease created at `revision` by a request sent at `sent`.
    pub(crate) fn start(
        kv: kv::Store,
        key: String,
        value: Bytes,
        revision: u64,
        sent: Instant,
        ttl: Duration,
        stats: Arc<Stats>,
    ) -> NatsLease {
        let valid_until = Arc::new(Mutex::new(valid_after(sent, ttl)));
        let (stop, mut stopped) = oneshot::channel();
        let valid = Arc::clone(&valid_until);
        let task = tokio::spawn(async move {
            let mut revision = revision;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    () = tokio::time::sleep(ttl / 4) => {}
                }
                let sent = Instant::now();
                let renewed =
                    tokio::time::timeout(ttl / 2, kv.update(&key, value.clone(), revision)).await;
                match renewed {
                    Ok(Ok(r)) => {
                        revision = r;
                        set(&valid, valid_after(sent, ttl));
                        stats.renewals.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        // Lapsed and taken (or expired): the session's task stops at once.
                        tracing::warn!(key = %key, "session lease lost: another node holds it now, or it lapsed");
                        set(&valid, Instant::now());
                        stats.leases_lost.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    // The cluster did not answer: keep trying while the lease lasts; the
                    // session stops by itself when `valid_until` passes.
                    Ok(Err(e)) => {
                        tracing::warn!(key = %key, error = %e, "cannot renew a session lease")
                    }
                    Err(_) => tracing::warn!(key = %key, "cannot renew a session lease: no answer"),
                }
            }
            // Released: only if still ours (a failed delete leaves it to lapse).
            let _ = kv.delete_expect_revision(&key, Some(revision)).await;
        });
        NatsLease {
            valid_until,
            stop: Some(stop),
            task: Some(task),
            ttl,
        }
    }
}

/// A renewal sent at `sent` keeps the key until at least `sent + ttl` (the server counts
/// from when it received it). A quarter of the time to live is kept in hand for delays
/// between this node's check and a write landing, and for clocks that run at different
/// rates.
fn valid_after(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl * 3 / 4
}

fn set(valid: &Mutex<Instant>, until: Instant) {
    *valid.lock().unwrap_or_else(|e| e.into_inner()) = until;
}

impl synq_reflector::cluster::Lease for NatsLease {
    fn valid_until(&self) -> Instant {
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(mut self: Box<Self>) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        let task = self.task.take();
        let ttl = self.ttl;
        // Stops the renewals: the task deletes the key and ends.
        drop(self);
        Box::pin(async move {
            if let Some(task) = task {
                // A cluster that does not answer leaves the key to lapse.
                let _ = tokio::time::timeout(ttl, task).await;
            }
        })
    }
}

impl Drop for NatsLease {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
