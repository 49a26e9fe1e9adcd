//! What a driver needs from its platform: a WebSocket, HTTP GET/PUT, timers and task
//! spawning. [`crate::native::TokioTransport`] implements it with tokio, tungstenite and
//! reqwest; [`crate::browser::BrowserTransport`] with the browser's WebSocket, fetch and
//! timers. Everything else (the protocol, reconnects, snapshots) is shared.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A boxed future; `Send` natively so that sessions run on tokio's worker threads, not in
/// the single-threaded browser.
#[cfg(not(target_arch = "wasm32"))]
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
#[cfg(target_arch = "wasm32")]
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// An open WebSocket.
#[cfg(not(target_arch = "wasm32"))]
pub type BoxSocket = Box<dyn Socket + Send>;
#[cfg(target_arch = "wasm32")]
pub type BoxSocket = Box<dyn Socket>;

/// What arrives on a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    /// The peer closed the connection with this code and reason.
    Closed {
        code: u16,
        reason: String,
    },
}

/// One WebSocket connection. `recv` must be cancel-safe: the driver drops an unfinished
/// `recv` future when something else happens first.
pub trait Socket {
    fn send(&mut self, text: String) -> BoxFut<'_, Result<(), String>>;
    /// `None` when the connection is gone without a close frame.
    fn recv(&mut self) -> BoxFut<'_, Option<Result<Incoming, String>>>;
    /// Closes cleanly (1000).
    fn close(&mut self) -> BoxFut<'_, ()>;
}

/// A platform for the driver.
pub trait Transport: 'static {
    fn connect(&self, url: &str) -> BoxFut<'static, Result<BoxSocket, String>>;
    fn get(&self, url: String) -> BoxFut<'static, Result<Vec<u8>, String>>;
    fn put(&self, url: String, body: Vec<u8>) -> BoxFut<'static, Result<(), String>>;
    fn sleep(&self, duration: Duration) -> BoxFut<'static, ()>;
    fn spawn(&self, task: BoxFut<'static, ()>);
    /// A monotonic clock in milliseconds (for send pacing only; never seen by models).
    fn now_ms(&self) -> f64;
}
