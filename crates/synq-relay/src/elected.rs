//! One elected view among the views in a session.

use serde::{Deserialize, Serialize};
use synq_model::ViewId;

/// What a view says about relaying when it joins (part of its view data).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidacy {
    /// The view can reach the external service (it has network access and wants to).
    pub can_relay: bool,
    /// Among views that can relay, a higher preference wins, and takes the election over
    /// when it joins (e.g. a server-side bot over a phone). Views of people declare 0; an
    /// app may treat a view that can relay with a preference above 0 as a service rather
    /// than a person (synq-chat does).
    pub preference: i32,
}

/// Tracks the views in join order and keeps one of them elected.
///
/// The election is sticky: the elected view keeps its role until it exits, except that a
/// joining view replaces it if it can relay and the elected view cannot, or if both can
/// relay and the newcomer's preference is higher (a service such as `synq bot` takes over
/// from a browser tab; its pending requests restart on it). Among views that can relay,
/// the highest preference wins, then the earliest joined; if none can relay, the earliest
/// joined is elected (so that someone at least holds the requests).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Elected {
    views: Vec<(ViewId, Candidacy)>,
    elected: Option<ViewId>,
}

impl Elected {
    /// The elected view, if any view is present.
    pub fn elected(&self) -> Option<&ViewId> {
        self.elected.as_ref()
    }

    /// The views in join order.
    pub fn views(&self) -> impl Iterator<Item = &ViewId> {
        self.views.iter().map(|(v, _)| v)
    }

    /// A view joined. Returns the newly elected view if the election changed.
    pub fn join(&mut self, view: &ViewId, candidacy: Candidacy) -> Option<ViewId> {
        if !self.views.iter().any(|(v, _)| v == view) {
            self.views.push((view.clone(), candidacy));
        }
        let current = self.elected.as_ref().and_then(|e| self.candidacy(e));
        let takes_over = candidacy.can_relay
            && current.is_none_or(|c| !c.can_relay || candidacy.preference > c.preference);
        if self.elected.is_none() || takes_over {
            return self.elect();
        }
        None
    }

    /// A view left. Returns the newly elected view if the elected one left (or `None` if
    /// the election did not change or nobody is left).
    pub fn exit(&mut self, view: &ViewId) -> Option<ViewId> {
        self.views.retain(|(v, _)| v != view);
        if self.elected.as_ref() == Some(view) {
            self.elected = None;
            return self.elect();
        }
        None
    }

    /// What `view` declared when it joined (`None`: not present).
    pub fn candidacy(&self, view: &ViewId) -> Option<Candidacy> {
        self.views.iter().find(|(v, _)| v == view).map(|(_, c)| *c)
    }

    fn elect(&mut self) -> Option<ViewId> {
        let best = self
            .views
            .iter()
            .enumerate()
            .filter(|(_, (_, c))| c.can_relay)
            // Highest preference; on a tie the earliest joined (max_by keeps the last max,
            // so compare the index reversed).
            .max_by(|(i, (_, a)), (j, (_, b))| a.preference.cmp(&b.preference).then(j.cmp(i)))
            .map(|(_, (v, _))| v.clone())
            .or_else(|| self.views.first().map(|(v, _)| v.clone()));
        if best == self.elected {
            return None;
        }
        self.elected = best.clone();
        best
    }
}
