//! The view side: the elected view performs the call and publishes the answer back.

// Not model code: the elected view's side, which calls the outside world (clippy.toml's
// determinism rules are for model code: `Elected` and `Relay` are, and are checked).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::future::{AbortHandle, Abortable};
use futures_util::{FutureExt, StreamExt, select};
use synq_model::ViewId;

use crate::relay::{RelayRequest, RelayResponse};

/// A boxed future that may be sent to another thread natively.
#[cfg(not(target_arch = "wasm32"))]
pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
#[cfg(target_arch = "wasm32")]
pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + 'static>>;

/// What a call yields as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// More text of the answer.
    Text(String),
    /// How the call is doing before its answer (e.g. its place in the service's queue),
    /// short and shown to people; empty: nothing to say any more. Published only when
    /// it changes.
    Status(String),
}

/// The [`Progress`] of an answer; an `Err` ends it with a short reason. Dropping it
/// cancels the call.
#[cfg(not(target_arch = "wasm32"))]
pub type TextStream = futures_util::stream::BoxStream<'static, Result<Progress, String>>;
#[cfg(target_arch = "wasm32")]
pub type TextStream = futures_util::stream::LocalBoxStream<'static, Result<Progress, String>>;

/// Any external service the elected view can call (an AI, a search engine, …).
pub trait RelayService<R>: 'static {
    /// Starts the call. Errors before the first delta are returned here; the reason is
    /// shown to people, so keep it short.
    fn call(&self, request: R) -> BoxFut<Result<TextStream, String>>;
}

/// How the agent paces what it publishes.
#[derive(Debug, Clone, Copy)]
pub struct AgentConfig {
    /// At most this many inputs per second per answer (deltas are batched in between).
    pub max_inputs_per_sec: f64,
    /// A batch is published early when it reaches this many bytes (it must fit in one
    /// message).
    pub max_chunk_bytes: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            max_inputs_per_sec: 10.0,
            max_chunk_bytes: 8 * 1024,
        }
    }
}

/// Serves one request: calls `service`, publishes the answer as batched
/// [`RelayResponse::Delta`]s and a final `Done` (or `Failed`), and each change of the
/// call's status as a [`RelayResponse::Status`]. `sleep` is the platform's
/// timer. Drop the future to stop (the upstream call is cancelled with it).
pub async fn serve_request<R, S, P>(
    service: &S,
    id: u64,
    request: R,
    config: AgentConfig,
    mut publish: P,
    sleep: impl Fn(Duration) -> BoxFut<()>,
) where
    S: RelayService<R> + ?Sized,
    P: FnMut(RelayResponse),
{
    let mut stream = match service.call(request).await {
        Ok(s) => s,
        Err(reason) => {
            publish(RelayResponse::Failed { id, reason });
            return;
        }
    };
    let interval = Duration::from_secs_f64(1.0 / config.max_inputs_per_sec.max(0.1));
    let mut buf = String::new();
    // The window is open when a batch may be published now.
    let mut window_open = true;
    let mut window = sleep(Duration::ZERO).fuse();
    let mut status = String::new();
    loop {
        select! {
            item = stream.next().fuse() => match item {
                Some(Ok(Progress::Status(now))) => {
                    if now != status {
                        if !buf.is_empty() {
                            publish(RelayResponse::Delta { id, text: std::mem::take(&mut buf) });
                        }
                        status.clone_from(&now);
                        publish(RelayResponse::Status { id, status: now });
                    }
                }
                Some(Ok(Progress::Text(text))) => {
                    buf.push_str(&text);
                    if window_open || buf.len() >= config.max_chunk_bytes {
                        publish(RelayResponse::Delta { id, text: std::mem::take(&mut buf) });
                        window_open = false;
                        window = sleep(interval).fuse();
                    }
                }
                Some(Err(reason)) => {
                    publish(RelayResponse::Failed { id, reason });
                    return;
                }
                None => {
                    if !buf.is_empty() {
                        publish(RelayResponse::Delta { id, text: std::mem::take(&mut buf) });
                    }
                    publish(RelayResponse::Done { id });
                    return;
                }
            },
            () = window => {
                if buf.is_empty() {
                    window_open = true;
                } else {
                    publish(RelayResponse::Delta { id, text: std::mem::take(&mut buf) });
                    window = sleep(interval).fuse();
                }
            }
        }
    }
}

/// Keeps track of the calls this view is making, so that they stop when it is no
/// longer elected or the request is no longer pending.
#[derive(Debug)]
pub struct RelayAgent {
    me: ViewId,
    active: BTreeMap<u64, AbortHandle>,
}

impl RelayAgent {
    pub fn new(me: ViewId) -> Self {
        RelayAgent {
            me,
            active: BTreeMap::new(),
        }
    }

    pub fn view_id(&self) -> &ViewId {
        &self.me
    }

    /// A request was emitted by the model. If it names this view (and is not already
    /// being served), returns the call to spawn; its completion is `()` whether it ran to
    /// the end or was stopped.
    pub fn on_request<R, S, P>(
        &mut self,
        service: std::sync::Arc<S>,
        request: RelayRequest<R>,
        config: AgentConfig,
        publish: P,
        sleep: impl Fn(Duration) -> BoxFut<()> + Send + 'static,
    ) -> Option<BoxFut<()>>
    where
        R: Send + 'static,
        S: RelayService<R> + Send + Sync,
        P: FnMut(RelayResponse) + Send + 'static,
    {
        if request.elected != self.me || self.active.contains_key(&request.id) {
            return None;
        }
        let (handle, registration) = AbortHandle::new_pair();
        self.active.insert(request.id, handle);
        let id = request.id;
        let call = async move {
            serve_request(&*service, id, request.request, config, publish, sleep).await;
        };
        Some(Box::pin(Abortable::new(call, registration).map(|_| ())))
    }

    /// Stops every call whose request `keep` rejects (no longer pending, or no longer
    /// assigned to this view).
    pub fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.active.retain(|id, handle| {
            let k = keep(*id);
            if !k {
                tracing::debug!(id, "relay call stopped");
                handle.abort();
            }
            k
        });
    }

    /// Stops every call (this view was voted out, or is leaving).
    pub fn stop_all(&mut self) {
        self.retain(|_| false);
    }

    /// Ids of the calls in progress.
    pub fn active(&self) -> impl Iterator<Item = u64> + '_ {
        self.active.keys().copied()
    }
}
