//! The trait a replicated model implements.

use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Cx, Persisted, ViewId};

/// A replicated model: the same inputs in the same order give the same state on every
/// replica. Implementations must follow the determinism rules: no clock but [`Cx::now`], no
/// randomness but [`Cx::random`], no I/O, no threads, defined iteration order (`BTreeMap`,
/// `Vec`), and floating point limited to basic IEEE arithmetic.
///
/// Models and their types are `Send` so that a native client can run them on its
/// runtime's worker threads (a model is only ever used by one thread at a time).
///
/// The model's serde representation *is* its snapshot, so it must serialize the same way
/// everywhere (no `HashMap`).
pub trait Model: Serialize + DeserializeOwned + Sized + Send + 'static {
    /// What views send to the model, reflected through the reflector to every replica.
    type Input: Serialize + DeserializeOwned + Clone + Debug + Send;
    /// What the model tells its local views. Never leaves the device.
    type Output: Clone + Debug + Send;
    /// Messages a model sends to its own future ([`Cx::future`]).
    type Timer: Serialize + DeserializeOwned + Clone + Debug + Send;
    /// What a view declares about itself when it joins (a display name, capabilities).
    /// Undecodable view data is replaced by the default.
    type ViewData: Serialize + DeserializeOwned + Clone + Debug + Default + Send;

    /// Names the model and the version of its state and inputs. It is part of the session
    /// id, so replicas of incompatible models never meet in one session. Change it whenever
    /// `Self`, `Input`, `Timer` or `ViewData` change shape or meaning.
    const SCHEMA: &'static str;

    /// The initial state, created once per session by the first replica's runtime (later
    /// replicas load a snapshot or replay from the start).
    fn init(cx: &mut Cx<'_, Self>) -> Self;

    /// The initial state of a session that starts where an earlier session of the same
    /// room left off: `from` is what that session last handed to [`Cx::persist`],
    /// possibly written by an older version of the model (`from.schema()`). Every replica
    /// of the session starts from the same data. The default ignores it and calls
    /// [`Model::init`].
    fn init_persisted(cx: &mut Cx<'_, Self>, from: &Persisted) -> Self {
        let _ = from;
        Self::init(cx)
    }

    /// An input from `from`, a view that is in the session.
    fn input(&mut self, cx: &mut Cx<'_, Self>, from: &ViewId, input: Self::Input);

    /// A timer set with [`Cx::future`] is due.
    fn timer(&mut self, _cx: &mut Cx<'_, Self>, _timer: Self::Timer) {}

    /// A view joined the session.
    fn view_join(&mut self, _cx: &mut Cx<'_, Self>, _view: &ViewId, _data: &Self::ViewData) {}

    /// A view left the session (closed, or lost its connection for good).
    fn view_exit(&mut self, _cx: &mut Cx<'_, Self>, _view: &ViewId) {}
}
