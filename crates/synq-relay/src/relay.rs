//! Pending requests to an external service and the answers the elected view streams back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use synq_model::ViewId;

/// What the elected view publishes back (an input of the app's model).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayResponse {
    /// More text of the answer to request `id`, in order.
    Delta { id: u64, text: String },
    /// The answer to `id` is complete.
    Done { id: u64 },
    /// The request failed; `reason` is short and shown to people.
    Failed { id: u64, reason: String },
    /// How the call is doing before its answer comes (e.g. its place in the service's
    /// queue), short and shown to people; empty: nothing to say any more.
    Status { id: u64, status: String },
}

impl RelayResponse {
    pub fn id(&self) -> u64 {
        match self {
            RelayResponse::Delta { id, .. }
            | RelayResponse::Done { id }
            | RelayResponse::Failed { id, .. }
            | RelayResponse::Status { id, .. } => *id,
        }
    }
}

/// What the model should tell its views (an output of the app's model).
#[derive(Debug, Clone, PartialEq)]
pub struct RelayRequest<R> {
    pub id: u64,
    /// Only this view acts on the request.
    pub elected: ViewId,
    pub request: R,
}

/// What applying a response did, for the app's model to reflect in its own state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The answer so far (all deltas of the current attempt).
    Streaming {
        id: u64,
        text: String,
    },
    Done {
        id: u64,
        text: String,
    },
    Failed {
        id: u64,
        reason: String,
    },
    /// The call's status changed (the request stays pending).
    Status {
        id: u64,
        status: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Pending<R> {
    request: R,
    /// The view the request was issued to.
    assigned: Option<ViewId>,
    /// The answer of the current attempt so far.
    text: String,
}

/// A numbered list of pending requests, each answered exactly once by the elected view.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(bound = "R: Serialize + serde::de::DeserializeOwned")]
pub struct Relay<R> {
    next_id: u64,
    pending: BTreeMap<u64, Pending<R>>,
}

impl<R> Default for Relay<R> {
    fn default() -> Self {
        Relay {
            next_id: 1,
            pending: BTreeMap::new(),
        }
    }
}

impl<R: Clone> Relay<R> {
    /// Adds a request and returns its id, with the request to emit to the views if a view
    /// is elected (otherwise it waits for an election).
    pub fn request(
        &mut self,
        elected: Option<&ViewId>,
        request: R,
    ) -> (u64, Option<RelayRequest<R>>) {
        let id = self.next_id;
        self.next_id += 1;
        self.pending.insert(
            id,
            Pending {
                request: request.clone(),
                assigned: elected.cloned(),
                text: String::new(),
            },
        );
        let out = elected.map(|e| RelayRequest {
            id,
            elected: e.clone(),
            request,
        });
        (id, out)
    }

    /// A new view was elected: every pending request restarts on it, and partial answers
    /// are discarded. Returns the requests to emit and the ids whose partial answers were
    /// dropped.
    pub fn reelect(&mut self, elected: Option<&ViewId>) -> (Vec<RelayRequest<R>>, Vec<u64>) {
        let mut issue = Vec::new();
        let mut restarted = Vec::new();
        for (id, p) in &mut self.pending {
            if p.assigned.as_ref() == elected {
                continue;
            }
            if !p.text.is_empty() {
                restarted.push(*id);
            }
            p.text.clear();
            p.assigned = elected.cloned();
            if let Some(e) = elected {
                issue.push(RelayRequest {
                    id: *id,
                    elected: e.clone(),
                    request: p.request.clone(),
                });
            }
        }
        (issue, restarted)
    }

    /// Applies a response from `from`. Accepted only from the view the request is
    /// assigned to, which is the elected view at the time it is applied, and only while
    /// the request is pending (so at most one Done or Failed per id).
    pub fn respond(
        &mut self,
        from: &ViewId,
        elected: Option<&ViewId>,
        response: RelayResponse,
    ) -> Option<Applied> {
        if elected != Some(from) {
            return None;
        }
        let id = response.id();
        let p = self.pending.get_mut(&id)?;
        if p.assigned.as_ref() != Some(from) {
            return None;
        }
        match response {
            RelayResponse::Delta { text, .. } => {
                p.text.push_str(&text);
                Some(Applied::Streaming {
                    id,
                    text: p.text.clone(),
                })
            }
            RelayResponse::Done { .. } => {
                let p = self.pending.remove(&id)?;
                Some(Applied::Done { id, text: p.text })
            }
            RelayResponse::Failed { reason, .. } => {
                self.pending.remove(&id);
                Some(Applied::Failed { id, reason })
            }
            RelayResponse::Status { status, .. } => Some(Applied::Status { id, status }),
        }
    }

    /// Forgets request `id` (stopped by a participant, or ended by the app); late answers
    /// to it are ignored, and the view serving it stops its call (it serves only pending
    /// requests). Returns whether it was pending.
    pub fn cancel(&mut self, id: u64) -> bool {
        self.pending.remove(&id).is_some()
    }

    /// Forgets every pending request (a reset); late answers to them are ignored.
    pub fn clear(&mut self) {
        self.pending.clear();
    }

    pub fn is_pending(&self, id: u64) -> bool {
        self.pending.contains_key(&id)
    }

    /// The pending request `id`.
    pub fn get(&self, id: u64) -> Option<&R> {
        self.pending.get(&id).map(|p| &p.request)
    }

    pub fn pending_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.pending.keys().copied()
    }

    /// The requests currently assigned to `view` (what an agent that starts late, or
    /// that just became elected, has to serve).
    pub fn assigned_to<'a>(
        &'a self,
        view: &'a ViewId,
    ) -> impl Iterator<Item = RelayRequest<R>> + 'a {
        self.pending
            .iter()
            .filter(move |(_, p)| p.assigned.as_ref() == Some(view))
            .map(move |(id, p)| RelayRequest {
                id: *id,
                elected: view.clone(),
                request: p.request.clone(),
            })
    }
}
