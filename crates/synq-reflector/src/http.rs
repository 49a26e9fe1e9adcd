//! Accepting HTTP connections: connection caps, header and write timeouts.
//!
//! Every connection (HTTP or WebSocket) holds a file descriptor and some memory, and is
//! opened by whoever can reach the port. So: a global cap and a per-address cap (over the
//! caps, a new connection is closed at once, before reading anything, so the server keeps
//! answering everyone else); the request head must arrive within the header timeout
//! (which also ends idle keep-alive connections); and a write that makes no progress for
//! the write timeout (a client that stops reading) ends the connection.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Sleep;
use tower_service::Service;

/// Limits of the HTTP listener.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Time allowed for a request's head (request line and headers), counted from the
    /// first byte read for it or, on a kept-alive connection, from the end of the
    /// previous response: it is also the idle timeout between requests.
    pub header_timeout: Duration,
    /// A write (response or WebSocket frame) that makes no progress for this long ends
    /// the connection.
    pub write_timeout: Duration,
    /// Open connections in total (0 = unlimited).
    pub max_connections: usize,
    /// Open connections per address (IPv6: per /64; 0 = unlimited).
    pub max_connections_per_address: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_connections_per_address: 256,
        }
    }
}

/// Serve `router` on `listener` with the default [`HttpLimits`] until the process ends.
pub async fn serve(listener: TcpListener, router: Router) -> io::Result<()> {
    serve_with(listener, router, HttpLimits::default()).await
}

/// Serve `router` on `listener` until the process ends. Handlers can extract the peer as
/// `ConnectInfo<SocketAddr>`. HTTP/1.1 only (with WebSocket upgrades).
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
) -> io::Result<()> {
    let slots = Arc::new(Slots::new(
        limits.max_connections,
        limits.max_connections_per_address,
    ));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut refused_log = RateLog::default();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors (or a transient network error): wait a little
                // instead of spinning; the caps should keep this from happening.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = slots.acquire(peer.ip()) else {
            // Dropping the socket closes it before anything is read or allocated.
            drop(tcp);
            refused_log.note(peer.ip(), &slots);
            continue;
        };
        // Frames are small and latency-sensitive, and the writer already coalesces them:
        // Nagle's algorithm would hold a frame until the client's next packet ACKs the
        // previous one (measured: +1 send interval, up to 40 ms, with two senders).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let io = TokioIo::new(ConnIo {
            io: tcp,
            _slot: slot,
            write_timeout: limits.write_timeout,
            stall: None,
        });
        let router = router.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut router = router.clone();
            async move { router.call(req).await }
        });
        // `with_upgrades`: the connection (and its slot) lives on as a WebSocket.
        let conn = builder.serve_connection(io, service).with_upgrades();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "HTTP connection ended: {e}");
            }
        });
    }
}

/// Open connections, in total and per address group.
struct Slots {
    max: usize,
    per_address: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl Slots {
    fn new(max: usize, per_address: usize) -> Slots {
        Slots {
            max,
            per_address,
            open: Mutex::new((0, HashMap::new())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<IpAddr, usize>)> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let group = crate::peer::group(ip);
        let mut open = self.lock();
        if self.max != 0 && open.0 >= self.max {
            return None;
        }
        let here = open.1.entry(group).or_insert(0);
        if self.per_address != 0 && *here >= self.per_address {
            return None;
        }
        *here += 1;
        open.0 += 1;
        Some(Slot {
            slots: Arc::clone(self),
            group,
        })
    }
}

/// One open connection; given back when dropped (with the socket).
struct Slot {
    slots: Arc<Slots>,
    group: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.group) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.group);
            }
        }
    }
}

/// Logs refused connections at most once per 10 s (a flood must not flood the log).
#[derive(Default)]
struct RateLog {
    last: Option<Instant>,
    refused: u64,
}

impl RateLog {
    fn note(&mut self, ip: IpAddr, slots: &Slots) {
        self.refused += 1;
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(10))
        {
            return;
        }
        self.last = Some(Instant::now());
        let (total, per) = {
            let open = slots.lock();
            (
                open.0,
                open.1.get(&crate::peer::group(ip)).copied().unwrap_or(0),
            )
        };
        tracing::warn!(
            refused = self.refused,
            last_from = %ip,
            open = total,
            open_from_that_address = per,
            max = slots.max,
            max_per_address = slots.per_address,
            "connections refused: over the connection caps (--max-connections, --max-connections-per-address)"
        );
        self.refused = 0;
    }
}

/// A TCP connection holding its slot, whose writes fail if they make no progress for
/// `write_timeout` (the peer stopped reading).
struct ConnIo<T> {
    io: T,
    _slot: Slot,
    write_timeout: Duration,
    stall: Option<Pin<Box<Sleep>>>,
}

impl<T> ConnIo<T> {
    fn stalled<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let timeout = self.write_timeout;
        let sleep = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<R>(&mut self, p: Poll<io::Result<R>>, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        match p {
            Poll::Ready(r) => {
                self.stall = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.stalled(cx),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ConnIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ConnIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.io).poll_write(cx, buf);
        this.progress(p, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.progress(p, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let p = Pin::new(&mut this.io).poll_flush(cx);
        this.progress(p, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_in_total_and_per_address() {
        let slots = Arc::new(Slots::new(3, 2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let a1 = slots.acquire(a).unwrap();
        let _a2 = slots.acquire(a).unwrap();
        assert!(slots.acquire(a).is_none(), "per-address cap");
        let _b1 = slots.acquire(b).unwrap();
        assert!(slots.acquire(b).is_none(), "global cap");
        drop(a1);
        assert!(
            slots.acquire(b).is_some(),
            "a closed connection frees its slot"
        );
    }
}
