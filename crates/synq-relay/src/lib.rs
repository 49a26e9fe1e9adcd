//! Reaching the outside world from a deterministic model (the seed's "elected relay").
//!
//! A model must never call an external service, so it elects one participating view to
//! do it and takes the answer back as ordinary inputs:
//!
//! - [`Elected`] (model side) keeps one elected view among those present, preferring
//!   views that declared they can relay, and elects again when it leaves.
//! - [`Relay`] (model side) numbers pending requests, emits each to the elected view,
//!   re-issues them all on re-election (dropping partial answers), and accepts a
//!   response only from the view elected when the response is applied, once per request.
//! - [`RelayAgent`] and [`serve_request`] (view side) run the call through any
//!   [`RelayService`], batch the streamed text to at most ~10 inputs per second, and stop
//!   (cancelling the call) when the view is no longer elected.
//!
//! Nothing here is AI-specific: the request type is the app's.

#![forbid(unsafe_code)]

mod agent;
mod elected;
mod relay;

pub use agent::{
    AgentConfig, BoxFut, Progress, RelayAgent, RelayService, TextStream, serve_request,
};
pub use elected::{Candidacy, Elected};
pub use relay::{Applied, Relay, RelayRequest, RelayResponse};
