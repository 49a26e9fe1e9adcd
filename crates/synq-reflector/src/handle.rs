//! What connections and sessions exchange: a connection's [`Command`]s to its session, and
//! the frames a session sends back ([`Shared`] on the broadcast stream, [`Direct`] to one
//! connection through its [`ConnHandle`]). Its own module so that `connection`, `island`
//! and `registry` all use these types without importing one another.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use synq_protocol::CloseCode;
use synq_protocol::client::{
    JoinArgs, SaveArgs, SendArgs, SendTags, SnapArgs, TickConfig, TuttiArgs,
};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::sync_frame::SyncFrame;

pub(crate) type ConnId = u64;

/// What a connection asks of its session.
pub(crate) enum Command {
    Join {
        conn: ConnHandle,
        args: Box<JoinArgs>,
    },
    Send {
        conn: ConnId,
        args: SendArgs,
        tags: Option<SendTags>,
    },
    Tutti {
        conn: ConnId,
        args: TuttiArgs,
    },
    Snap {
        conn: ConnId,
        args: SnapArgs,
    },
    Save {
        conn: ConnId,
        args: SaveArgs,
    },
    Ticks {
        conn: ConnId,
        cfg: TickConfig,
    },
    Closed {
        conn: ConnId,
    },
}

/// A frame of the session's broadcast stream.
#[derive(Clone, Debug)]
pub(crate) enum Shared {
    /// RECV (or REQU): every active client gets it.
    Msg(Utf8Bytes),
    /// TICK: skipped by a client that still has frames queued (it is behind anyway).
    Tick(Utf8Bytes),
}

/// A frame for one connection only.
#[derive(Debug)]
pub(crate) enum Direct {
    Frame(Utf8Bytes),
    /// The SYNC (written piece by piece, never built whole), and the broadcast stream
    /// positioned right after it (active clients only).
    Sync {
        frame: SyncFrame,
        stream: Option<broadcast::Receiver<Shared>>,
    },
    Close(CloseCode),
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
    /// Cancelled when the connection must end now (e.g. its direct queue overflowed).
    kill: CancellationToken,
}

impl ConnHandle {
    pub(crate) fn new(
        id: ConnId,
        peer: IpAddr,
        host: Option<Arc<str>>,
        direct: mpsc::Sender<Direct>,
        kill: CancellationToken,
    ) -> ConnHandle {
        ConnHandle {
            id,
            peer,
            host,
            direct,
            kill,
        }
    }

    pub(crate) fn send(&self, d: Direct) {
        if self.direct.try_send(d).is_err() {
            // A client that lets even its direct queue overflow is not reading.
            self.kill.cancel();
        }
    }

    pub(crate) fn close(&self, code: CloseCode) {
        self.send(Direct::Close(code));
    }
}
