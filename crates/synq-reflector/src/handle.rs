//! What connections and sessions exchange: a connection's [`Command`]s to its session, and
//! the frames a session sends back ([`Shared`] on the broadcast stream, [`Direct`] to one
//! connection through its [`ConnHandle`]). Its own module so that `connection`, `island`
//! and `registry` all use these types without importing one another.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::ws::Utf8Bytes;
use synq_protocol::CloseCode;
use synq_protocol::client::{
    JoinArgs, SaveArgs, SendArgs, SendTags, SnapArgs, TickConfig, TuttiArgs,
};
use tokio::sync::mpsc;

use crate::sync_frame::SyncFrame;

pub(crate) type ConnId = u64;

/// What a connection asks of its session. Arguments are boxed: a session's command
/// channel allocates its slots in blocks of 32 commands the size of the largest variant,
/// and every idle session holds one block (4.6 KB when TUTTI's arguments were inline).
pub(crate) enum Command {
    Join {
        conn: Box<ConnHandle>,
        args: Box<JoinArgs>,
    },
    Send {
        conn: ConnId,
        args: Box<SendArgs>,
        tags: Option<Box<SendTags>>,
    },
    Tutti {
        conn: ConnId,
        args: Box<TuttiArgs>,
    },
    Snap {
        conn: ConnId,
        args: Box<SnapArgs>,
    },
    Save {
        conn: ConnId,
        args: Box<SaveArgs>,
    },
    Ticks {
        conn: ConnId,
        cfg: Box<TickConfig>,
    },
    Closed {
        conn: ConnId,
    },
}

/// A frame of the session's broadcast: encoded once, shared by every recipient's queue.
#[derive(Clone, Debug)]
pub(crate) enum Shared {
    /// RECV (or REQU): every active client gets it.
    Msg(Utf8Bytes),
    /// TICK: skipped by a client that still has frames queued (it is behind anyway).
    Tick(Utf8Bytes),
}

/// What a session sends one connection, in the order it is written. Broadcast frames go
/// into each recipient's own queue (a pointer to the shared bytes): unlike a broadcast
/// ring of `--client-backlog` slots per session, a queue takes memory only for the frames
/// a client actually has pending, so an idle session costs little.
#[derive(Debug)]
pub(crate) enum Direct {
    Frame(Utf8Bytes),
    /// A TICK: skipped when more frames are queued behind it.
    Tick(Utf8Bytes),
    /// The SYNC (written piece by piece, never built whole). The broadcasts queued after
    /// it continue right where it ends.
    Sync(Box<SyncFrame>),
    Close(CloseCode),
}

impl From<Shared> for Direct {
    fn from(frame: Shared) -> Direct {
        match frame {
            Shared::Msg(f) => Direct::Frame(f),
            Shared::Tick(f) => Direct::Tick(f),
        }
    }
}

/// How a session reaches a connection.
#[derive(Clone, Debug)]
pub(crate) struct ConnHandle {
    pub id: ConnId,
    /// The peer's address group (IPv6: its /64), for per-address limits.
    pub peer: IpAddr,
    /// The `Host` the client connected to: snapshots must be stored there.
    pub host: Option<Arc<str>>,
    direct: mpsc::Sender<Direct>,
    /// Set when the connection must end (its queue overflowed). A flag, not a wakeable
    /// token: a full queue wakes its reader anyway, which checks the flag after each batch,
    /// and a token's waker would be registered again on every one of the connection's
    /// wake-ups.
    overflowed: Arc<AtomicBool>,
}

impl ConnHandle {
    pub(crate) fn new(
        id: ConnId,
        peer: IpAddr,
        host: Option<Arc<str>>,
        direct: mpsc::Sender<Direct>,
        overflowed: Arc<AtomicBool>,
    ) -> ConnHandle {
        ConnHandle {
            id,
            peer,
            host,
            direct,
            overflowed,
        }
    }

    /// Queues `d`; a client whose queue is full (`--client-backlog` frames) is not
    /// reading and is closed.
    pub(crate) fn send(&self, d: Direct) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.direct.try_send(d) {
            self.overflowed.store(true, Ordering::Relaxed);
        }
    }

    pub(crate) fn close(&self, code: CloseCode) {
        self.send(Direct::Close(code));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_items_stay_small() {
        // Every idle session holds a block of 32 commands, every connection one of 32
        // `Direct`s: their size is a good part of what an idle session costs.
        assert!(
            std::mem::size_of::<Command>() <= 32,
            "{}",
            std::mem::size_of::<Command>()
        );
        assert!(
            std::mem::size_of::<Direct>() <= 40,
            "{}",
            std::mem::size_of::<Direct>()
        );
    }
}
