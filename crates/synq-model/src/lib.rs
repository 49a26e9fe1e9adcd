//! synq's deterministic model runtime.
//!
//! A model is plain Rust data that implements [`Model`]. Every participant runs a
//! [`Replica`] of it and feeds it the same ordered stream of [`Event`]s (the reflector's
//! order), so every replica holds the same state, bit for bit. A replica's state is its
//! [`Snapshot`]: compact bytes and a SHA-256 hash that replicas compare to detect
//! divergence. There is no I/O here; `synq-client` connects replicas to a reflector, and
//! the crate compiles to `wasm32-unknown-unknown`.
//!
//! Models compose by plain fields and methods: a component is a struct inside the model
//! whose methods take the parent's [`Cx`] (with `Output: From<ComponentOutput>` where the
//! component emits).
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use synq_model::{Cx, Event, Model, Replica, ViewId};
//!
//! /// A shared counter that also remembers who touched it last.
//! #[derive(Serialize, Deserialize)]
//! struct Counter {
//!     count: i64,
//!     last: Option<ViewId>,
//! }
//!
//! #[derive(Clone, Debug, Serialize, Deserialize)]
//! enum Input { Add(i64), Reset }
//!
//! #[derive(Clone, Debug, Serialize, Deserialize)]
//! struct Tick;
//!
//! impl Model for Counter {
//!     type Input = Input;
//!     type Output = i64; // the new count, for views to render
//!     type Timer = Tick;
//!     type ViewData = ();
//!     const SCHEMA: &'static str = "counter/1";
//!
//!     fn init(cx: &mut Cx<'_, Self>) -> Self {
//!         cx.future(1000, Tick); // count up by itself every second
//!         Counter { count: 0, last: None }
//!     }
//!
//!     fn input(&mut self, cx: &mut Cx<'_, Self>, from: &ViewId, input: Input) {
//!         match input {
//!             Input::Add(n) => self.count += n,
//!             Input::Reset => self.count = 0,
//!         }
//!         self.last = Some(from.clone()); // stamped by the runtime, not the payload
//!         cx.emit(self.count);
//!     }
//!
//!     fn timer(&mut self, cx: &mut Cx<'_, Self>, _: Tick) {
//!         self.count += 1;
//!         cx.future(1000, Tick);
//!         cx.emit(self.count);
//!     }
//! }
//!
//! let alice = ViewId::from("alice");
//! let (mut a, _) = Replica::<Counter>::new(b"session", 0);
//! a.apply(10, Event::Join { view: alice.clone(), data: () });
//! a.apply(20, Event::Input { from: alice.clone(), n: 1, input: Input::Add(5) });
//! a.advance_to(2500); // two timer ticks
//! assert_eq!(a.model().count, 7);
//!
//! // A late joiner restores the snapshot and is identical.
//! let snap = a.snapshot().unwrap();
//! let b = Replica::<Counter>::restore(&snap.bytes).unwrap();
//! assert_eq!(b.hash().unwrap(), snap.hash);
//! ```

#![forbid(unsafe_code)]

mod cx;
pub mod demo;
mod model;
mod persist;
mod replica;
mod snapshot;
pub mod testing;
mod view;

pub use cx::{Cx, TimerId};
pub use model::Model;
pub use persist::{MAX_PERSISTED_BYTES, PersistError, Persisted};
pub use replica::{Applied, Event, Replica};
pub use snapshot::{Snapshot, SnapshotError, SnapshotHash};
pub use view::ViewId;
