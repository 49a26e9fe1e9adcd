//! A local sync-test harness without network, in the spirit of ggrs' `SyncTestSession`:
//! N replicas of a model are fed the same stream and must agree after every step, and a
//! replica restored from a snapshot taken at any point must end where the others end.
//! App authors use it to test their own models for determinism.

use crate::{Event, Model, Replica, SnapshotError, SnapshotHash};

/// Replicas disagreed, or a snapshot could not round-trip.
#[derive(Debug, thiserror::Error)]
pub enum SyncTestError {
    #[error("replica {replica} diverged after step {step}: {expected} != {found}")]
    Diverged {
        step: usize,
        replica: usize,
        expected: SnapshotHash,
        found: SnapshotHash,
    },
    #[error(
        "a replica restored from the snapshot of step {step} ended at {restored}, the uninterrupted run at {uninterrupted}"
    )]
    Replay {
        step: usize,
        uninterrupted: SnapshotHash,
        restored: SnapshotHash,
    },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// One step of a stream: an event at a reflector time, or a tick.
#[derive(Debug)]
pub enum Step<M: Model> {
    Event(u64, Event<M>),
    Tick(u64),
}

impl<M: Model> Clone for Step<M> {
    fn clone(&self) -> Self {
        match self {
            Step::Event(t, e) => Step::Event(*t, e.clone()),
            Step::Tick(t) => Step::Tick(*t),
        }
    }
}

/// Runs `replicas` replicas over `steps`, comparing hashes after every step, and checks
/// that restoring the snapshot taken after step `snapshot_at` and replaying the rest gives
/// the final hash of the uninterrupted run. Returns that hash.
pub fn sync_test<M: Model>(
    seed: &[u8],
    replicas: usize,
    steps: &[Step<M>],
    snapshot_at: Option<usize>,
) -> Result<SnapshotHash, SyncTestError> {
    let replicas = replicas.max(1);
    let mut all: Vec<Replica<M>> = (0..replicas).map(|_| Replica::new(seed, 0).0).collect();
    let mut snapshot = None;
    for (i, step) in steps.iter().enumerate() {
        for r in &mut all {
            run(r, step);
        }
        let expected = all[0].hash()?;
        for (k, r) in all.iter().enumerate().skip(1) {
            let found = r.hash()?;
            if found != expected {
                return Err(SyncTestError::Diverged {
                    step: i,
                    replica: k,
                    expected,
                    found,
                });
            }
        }
        if snapshot_at == Some(i) {
            snapshot = Some(all[0].snapshot()?);
        }
    }
    let uninterrupted = all[0].hash()?;
    if let (Some(at), Some(snap)) = (snapshot_at, snapshot) {
        let mut restored = Replica::<M>::restore(&snap.bytes)?;
        for step in &steps[at + 1..] {
            run(&mut restored, step);
        }
        let restored = restored.hash()?;
        if restored != uninterrupted {
            return Err(SyncTestError::Replay {
                step: at,
                uninterrupted,
                restored,
            });
        }
    }
    Ok(uninterrupted)
}

fn run<M: Model>(replica: &mut Replica<M>, step: &Step<M>) {
    match step {
        Step::Event(time, event) => {
            replica.apply(*time, event.clone());
        }
        Step::Tick(time) => {
            replica.advance_to(*time);
        }
    }
}

/// The final hash of one replica over an event log (what the wasm32 check compares).
pub fn final_hash<M: Model>(
    seed: &[u8],
    log: impl IntoIterator<Item = (u64, Event<M>)>,
) -> Result<SnapshotHash, SnapshotError> {
    let (mut r, _) = Replica::<M>::new(seed, 0);
    for (time, event) in log {
        r.apply(time, event);
    }
    r.hash()
}
