//! What connections and sessions exchange: a connection's [`Command`]s to its session, and
//! the frames a session sends back ([`Shared`] on the broadcast stream, [`Direct`] to one
//! connection through its [`ConnHandle`]). Its own module so that `connection`, `island`
//! and `registry` all use these types without importing one another.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use axum::extract::ws::Utf8Bytes;
use synq_protocol::CloseCode;
use synq_protocol::client::{
    JoinArgs, SaveArgs, SendArgs, SendTags, SnapArgs, TickConfig, TuttiArgs,
};

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
    /// The reflector is stopping: end the session once what it has received is journaled
    /// and sent, and give it up.
    Drain,
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

/// A connection's queue of [`Direct`]s: bounded by `--client-backlog`, and holding
/// memory only for what is pending (a tokio channel keeps blocks of 32 slots allocated,
/// about 3 KB per connection, which was a tenth of what an idle session cost).
#[derive(Debug)]
struct Queue {
    state: Mutex<QueueState>,
    /// At most this many frames pending; one more and the connection must end.
    capacity: usize,
    /// Set when the connection must end (its queue overflowed). A flag, not a wakeable
    /// token: the reader checks it after each batch, and is woken when it is set.
    overflowed: AtomicBool,
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Direct>,
    /// The connection's task waiting for a frame.
    reader: Option<Waker>,
    /// The reader is gone: frames are dropped.
    closed: bool,
}

/// Capacity a drained queue keeps; a larger one (after a burst) is given back.
const QUEUE_KEEP: usize = 16;

impl Queue {
    fn state(&self) -> MutexGuard<'_, QueueState> {
        // A panic while the lock was held cannot leave the queue inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The connection's end of its queue. Dropping it closes the queue.
#[derive(Debug)]
pub(crate) struct Inbox {
    queue: Arc<Queue>,
}

impl Inbox {
    /// The next frame, when there is one.
    pub(crate) async fn recv(&mut self) -> Direct {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Direct> {
        let mut st = self.queue.state();
        match st.items.pop_front() {
            Some(d) => {
                shrink_if_drained(&mut st.items);
                Poll::Ready(d)
            }
            None => {
                if !st.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    st.reader = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    /// The next frame if one is ready.
    pub(crate) fn try_recv(&mut self) -> Option<Direct> {
        let mut st = self.queue.state();
        let d = st.items.pop_front();
        shrink_if_drained(&mut st.items);
        d
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.state().items.is_empty()
    }

    /// Whether the queue overflowed: the client fell `--client-backlog` frames behind.
    pub(crate) fn overflowed(&self) -> bool {
        self.queue.overflowed.load(Ordering::Relaxed)
    }
}

fn shrink_if_drained(items: &mut VecDeque<Direct>) {
    if items.is_empty() && items.capacity() > QUEUE_KEEP {
        items.shrink_to(QUEUE_KEEP);
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut st = self.queue.state();
        st.closed = true;
        st.items = VecDeque::new();
        st.reader = None;
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
    queue: Arc<Queue>,
}

impl ConnHandle {
    /// A connection's handle and the queue it reads, which holds at most `backlog` frames.
    pub(crate) fn new(
        id: ConnId,
        peer: IpAddr,
        host: Option<Arc<str>>,
        backlog: usize,
    ) -> (ConnHandle, Inbox) {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            capacity: backlog,
            overflowed: AtomicBool::new(false),
        });
        let inbox = Inbox {
            queue: Arc::clone(&queue),
        };
        (
            ConnHandle {
                id,
                peer,
                host,
                queue,
            },
            inbox,
        )
    }

    /// Queues `d`; a client whose queue is full (`--client-backlog` frames) is not
    /// reading and is closed. A connection that has ended drops it.
    pub(crate) fn send(&self, d: Direct) {
        let reader = {
            let mut st = self.queue.state();
            if st.closed {
                return;
            }
            if st.items.len() >= self.queue.capacity {
                self.queue.overflowed.store(true, Ordering::Relaxed);
            } else {
                st.items.push_back(d);
            }
            st.reader.take()
        };
        if let Some(w) = reader {
            w.wake();
        }
    }

    pub(crate) fn close(&self, code: CloseCode) {
        self.send(Direct::Close(code));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(backlog: usize) -> (ConnHandle, Inbox) {
        ConnHandle::new(1, IpAddr::from([127, 0, 0, 1]), None, backlog)
    }

    fn frame(text: &str) -> Direct {
        Direct::Frame(Utf8Bytes::from(text.to_owned()))
    }

    fn text(d: Option<Direct>) -> String {
        match d {
            Some(Direct::Frame(f)) => f.as_str().to_owned(),
            other => panic!("not a frame: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_connection_gets_its_frames_in_order_and_is_woken_for_them() {
        let (h, mut inbox) = handle(16);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(text(Some(inbox.recv().await)));
            }
            (got, inbox)
        });
        for t in ["a", "b", "c"] {
            tokio::task::yield_now().await;
            h.send(frame(t));
        }
        let (got, mut inbox) = reader.await.expect("reader");
        assert_eq!(got, ["a", "b", "c"]);
        assert!(inbox.is_empty());
        assert!(inbox.try_recv().is_none());
        assert!(!inbox.overflowed());
    }

    #[test]
    fn a_client_that_falls_a_backlog_behind_is_marked_and_its_queue_stays_bounded() {
        let (h, mut inbox) = handle(3);
        for t in ["a", "b", "c", "d", "e"] {
            h.send(frame(t));
        }
        assert!(inbox.overflowed());
        let got: Vec<String> =
            std::iter::from_fn(|| inbox.try_recv().map(|d| text(Some(d)))).collect();
        assert_eq!(got, ["a", "b", "c"], "no frame beyond the backlog is kept");
    }

    #[test]
    fn a_drained_queue_gives_back_what_a_burst_took_and_an_ended_connection_takes_nothing() {
        let (h, mut inbox) = handle(10_000);
        for _ in 0..1000 {
            h.send(frame("x"));
        }
        while inbox.try_recv().is_some() {}
        assert!(inbox.queue.state().items.capacity() <= QUEUE_KEEP);
        let queue = Arc::clone(&inbox.queue);
        drop(inbox);
        h.send(frame("late"));
        assert!(queue.state().items.is_empty());
        assert!(!queue.overflowed.load(Ordering::Relaxed));
    }

    #[test]
    fn queued_items_stay_small() {
        // Every idle session holds a block of 32 commands; a connection's queue holds its
        // pending `Direct`s: their size is a good part of what an idle session costs.
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
