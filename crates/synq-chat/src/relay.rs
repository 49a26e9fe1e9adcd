//! The relay loop of a chat participant, one for the browser and native participants:
//! it follows the session's events, calls the AI for the requests the room assigns to
//! this view, stops calls that are no longer this view's (a re-election, Stop, a reset),
//! and tells the view after every step so that it can draw. What differs between the
//! browser and native code is a parameter: the AI service (the page's `fetch`, or
//! synq-ai's HTTP client) and the timer. The calls run inside the loop's own future
//! (no spawn): when a view drops the loop (it leaves, or is killed), its calls stop too.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _, select};
use synq_client::{Session, SessionEvent, SessionHandle};
use synq_relay::{AgentConfig, BoxFut, RelayAgent, RelayRequest, RelayService};

use crate::model::{ChatInput, ChatModel, ChatOutput};
use crate::prompt::AiRequest;

/// Largest answer asked of the AI, in tokens: a chat answer, not an essay (and a bound on
/// what one post may cost).
pub const MAX_ANSWER_TOKENS: u32 = 400;

/// A timer: the relay batches streamed text into a delta every so often.
pub type Sleep = fn(Duration) -> BoxFut<()>;

/// Runs `session` until it ends. With a `service`, this view calls the AI when it is
/// elected to. `on_event` gets the session's events other than the model's outputs
/// (synced, reconnecting, failed, diverged…); `on_step` runs after every event or
/// finished call, when the model may have changed.
pub async fn run<S>(
    mut session: Session<ChatModel>,
    service: Option<Arc<S>>,
    sleep: Sleep,
    mut on_event: impl FnMut(SessionEvent<ChatOutput>),
    mut on_step: impl FnMut(),
) where
    S: RelayService<AiRequest> + Send + Sync + 'static,
{
    let handle = session.handle();
    let me = handle.view_id().clone();
    let mut agent = RelayAgent::new(me.clone());
    let mut calls: FuturesUnordered<BoxFut<()>> = FuturesUnordered::new();
    let assigned = |h: &SessionHandle<ChatModel>| {
        h.read(|m| m.relay().assigned_to(&me).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let start = |agent: &mut RelayAgent,
                 calls: &mut FuturesUnordered<BoxFut<()>>,
                 req: RelayRequest<AiRequest>| {
        let Some(service) = &service else {
            return;
        };
        let publisher = handle.clone();
        let publish = move |r| {
            let _ = publisher.publish(ChatInput::Relay(r));
        };
        if let Some(call) = agent.on_request(
            Arc::clone(service),
            req,
            AgentConfig::default(),
            publish,
            sleep,
        ) {
            calls.push(call);
        }
    };
    // Requests already assigned to this view (it may have been elected while catching up).
    for req in assigned(&handle) {
        start(&mut agent, &mut calls, req);
    }
    loop {
        select! {
            ev = session.next_event().fuse() => match ev {
                None => break,
                Some(SessionEvent::Output(ChatOutput::Request(req))) => {
                    start(&mut agent, &mut calls, req);
                }
                Some(SessionEvent::Output(_)) => {}
                Some(SessionEvent::Synced) => {
                    for req in assigned(&handle) {
                        start(&mut agent, &mut calls, req);
                    }
                    on_event(SessionEvent::Synced);
                }
                Some(other) => on_event(other),
            },
            () = calls.select_next_some() => {}
        }
        // Stop calls for requests that are no longer this view's (re-election, reset,
        // done, stopped).
        let mine: Vec<u64> = assigned(&handle).iter().map(|r| r.id).collect();
        agent.retain(|id| mine.contains(&id));
        on_step();
    }
}
