//! One replica of a model: applies the ordered event stream and takes snapshots.

use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cx::{Cx, Saves, Timers};
use crate::snapshot::{Snapshot, SnapshotError, SnapshotHash};
use crate::{Model, Persisted, ViewId};

/// One event of the reflected stream, as the client decoded it. The sender of an input is
/// the one the transport authenticated (see `synq-client`), never a field of the payload.
#[derive(Debug)]
pub enum Event<M: Model> {
    /// An input from a view. `n` numbers the sender's inputs (1, 2, …): an input whose
    /// number is not above the last one applied from that view is a duplicate (a resend
    /// after a reconnect) and is dropped.
    Input {
        from: ViewId,
        n: u64,
        input: M::Input,
    },
    /// A connection of a view joined, with the view's data.
    Join { view: ViewId, data: M::ViewData },
    /// A view left. A view with several connections (a reconnect in progress) leaves
    /// when its last one does.
    Exit { view: ViewId },
}

// Derived `Clone` would require `M: Clone`; the event only holds M's associated types.
impl<M: Model> Clone for Event<M> {
    fn clone(&self) -> Self {
        match self {
            Event::Input { from, n, input } => Event::Input {
                from: from.clone(),
                n: *n,
                input: input.clone(),
            },
            Event::Join { view, data } => Event::Join {
                view: view.clone(),
                data: data.clone(),
            },
            Event::Exit { view } => Event::Exit { view: view.clone() },
        }
    }
}

/// What a replica's state is made of; this is exactly what a snapshot holds.
#[derive(Serialize, Deserialize)]
#[serde(bound = "M: Model")]
pub(crate) struct State<M: Model> {
    pub(crate) schema: String,
    pub(crate) now: u64,
    /// Events applied so far (inputs, joins, exits; not ticks).
    pub(crate) events: u64,
    pub(crate) rng: ChaCha8Rng,
    pub(crate) timers: Timers<M::Timer>,
    pub(crate) views: BTreeMap<ViewId, M::ViewData>,
    /// Open connections per view: a reconnecting view joins on its new connection before
    /// its old one's leave is announced, and stays in the session throughout.
    pub(crate) connections: BTreeMap<ViewId, u32>,
    /// Highest input number applied per view, kept after the view exits so that a late
    /// duplicate can never apply twice.
    pub(crate) last_input: BTreeMap<ViewId, u64>,
    pub(crate) model: M,
}

/// One replica of model `M`.
pub struct Replica<M: Model> {
    state: State<M>,
    saves: Saves,
}

/// What applying one event did.
#[derive(Debug)]
pub struct Applied<O> {
    /// Outputs for the local views, in the order the model emitted them.
    pub outputs: Vec<O>,
    /// Whether the event reached the model (false for duplicates and inputs from views
    /// that are not in the session).
    pub accepted: bool,
}

impl<M: Model> Replica<M> {
    /// Starts a new session's model. `seed` seeds the session's random stream (the client
    /// uses the session id, so every replica that starts the session agrees); `time` is
    /// the reflector time of the start.
    pub fn new(seed: &[u8], time: u64) -> (Self, Vec<M::Output>) {
        Self::start(seed, time, None)
    }

    /// Starts a new session's model from what an earlier session of the same room
    /// persisted ([`Model::init_persisted`]).
    pub fn new_persisted(seed: &[u8], time: u64, from: &Persisted) -> (Self, Vec<M::Output>) {
        Self::start(seed, time, Some(from))
    }

    fn start(seed: &[u8], time: u64, from: Option<&Persisted>) -> (Self, Vec<M::Output>) {
        let digest: [u8; 32] = Sha256::digest(seed).into();
        let mut rng = ChaCha8Rng::from_seed(digest);
        let mut timers = Timers::default();
        let mut outputs = Vec::new();
        let mut saves = Saves::default();
        let views = BTreeMap::new();
        let model = {
            let mut cx = Cx::<M> {
                now: time,
                rng: &mut rng,
                timers: &mut timers,
                outputs: &mut outputs,
                views: &views,
                saves: &mut saves,
            };
            match from {
                Some(from) => M::init_persisted(&mut cx, from),
                None => M::init(&mut cx),
            }
        };
        let state = State {
            schema: M::SCHEMA.to_string(),
            now: time,
            events: 0,
            rng,
            timers,
            views,
            connections: BTreeMap::new(),
            last_input: BTreeMap::new(),
            model,
        };
        (Self { state, saves }, outputs)
    }

    /// What the model handed to [`Cx::persist`] since the last call, if anything. The
    /// client calls this after every event and tick, so every replica finds it at the
    /// same point of the stream.
    pub fn take_persisted(&mut self) -> Option<Persisted> {
        self.saves.persist.take()
    }

    /// The files the model wrote ([`Cx::write_file`]) since the last call, by name, in
    /// the order written; taken like [`Replica::take_persisted`].
    pub fn take_files(&mut self) -> Vec<(String, Persisted)> {
        std::mem::take(&mut self.saves.files)
    }

    /// The model, for views to read.
    pub fn model(&self) -> &M {
        &self.state.model
    }

    /// Reflector time of the last event or tick, in ms.
    pub fn now(&self) -> u64 {
        self.state.now
    }

    /// Events applied since the session started.
    pub fn events(&self) -> u64 {
        self.state.events
    }

    /// The views in the session.
    pub fn views(&self) -> &BTreeMap<ViewId, M::ViewData> {
        &self.state.views
    }

    /// Open connections of `view` (0 when it is not in the session).
    pub fn connections(&self, view: &ViewId) -> u32 {
        self.state.connections.get(view).copied().unwrap_or(0)
    }

    /// The highest input number applied from `view` (0 if none).
    pub fn last_input(&self, view: &ViewId) -> u64 {
        self.state.last_input.get(view).copied().unwrap_or(0)
    }

    /// Advances time to `time` (a tick), firing the timers that fall due, in order.
    /// Time never goes back: an earlier `time` is treated as the current one.
    pub fn advance_to(&mut self, time: u64) -> Vec<M::Output> {
        let mut outputs = Vec::new();
        self.run_timers(time, &mut outputs);
        self.state.now = self.state.now.max(time);
        outputs
    }

    /// Applies one event of the stream at reflector time `time`, after the timers due by
    /// then.
    pub fn apply(&mut self, time: u64, event: Event<M>) -> Applied<M::Output> {
        let mut outputs = self.advance_to(time);
        // Wrapping, as release builds do: a snapshot may claim any count.
        self.state.events = self.state.events.wrapping_add(1);
        let State {
            now,
            rng,
            timers,
            views,
            connections,
            last_input,
            model,
            ..
        } = &mut self.state;
        let saves = &mut self.saves;
        let accepted = match event {
            Event::Input { from, n, input } => {
                let last = last_input.get(&from).copied().unwrap_or(0);
                if n <= last || !views.contains_key(&from) {
                    false
                } else {
                    last_input.insert(from.clone(), n);
                    let mut cx = Cx::<M> {
                        now: *now,
                        rng,
                        timers,
                        outputs: &mut outputs,
                        views,
                        saves,
                    };
                    model.input(&mut cx, &from, input);
                    true
                }
            }
            Event::Join { view, data } => {
                // Another connection of a view that is present (a reconnect whose old
                // connection has not been announced as gone yet) is not a new join.
                let count = connections.entry(view.clone()).or_insert(0);
                // A snapshot may claim any count: at u32::MAX the view stays present.
                *count = count.saturating_add(1);
                if *count > 1 {
                    false
                } else {
                    views.insert(view.clone(), data.clone());
                    let mut cx = Cx::<M> {
                        now: *now,
                        rng,
                        timers,
                        outputs: &mut outputs,
                        views,
                        saves,
                    };
                    model.view_join(&mut cx, &view, &data);
                    true
                }
            }
            Event::Exit { view } => {
                let remaining = match connections.get_mut(&view) {
                    Some(count) => {
                        *count -= 1;
                        *count
                    }
                    None => u32::MAX,
                };
                if remaining == 0 {
                    connections.remove(&view);
                }
                if remaining != 0 || views.remove(&view).is_none() {
                    false
                } else {
                    let mut cx = Cx::<M> {
                        now: *now,
                        rng,
                        timers,
                        outputs: &mut outputs,
                        views,
                        saves,
                    };
                    model.view_exit(&mut cx, &view);
                    true
                }
            }
        };
        Applied { outputs, accepted }
    }

    /// Every connection of `view` leaves: the same as applying [`Event::Exit`] once per
    /// open connection (each counts as an event), but in constant time, whatever count a
    /// snapshot claims. Nothing happens when the view has no connection.
    pub fn exit_all(&mut self, time: u64, view: &ViewId) -> Applied<M::Output> {
        let n = self.connections(view);
        if n == 0 {
            return Applied {
                outputs: Vec::new(),
                accepted: false,
            };
        }
        // All but the last exit only count down and count as events: nothing the model
        // sees (timers due by `time` run once, before the first exit, either way).
        self.state.events = self.state.events.wrapping_add(u64::from(n - 1));
        self.state.connections.insert(view.clone(), 1);
        self.apply(time, Event::Exit { view: view.clone() })
    }

    fn run_timers(&mut self, time: u64, outputs: &mut Vec<M::Output>) {
        let State {
            now,
            rng,
            timers,
            views,
            model,
            ..
        } = &mut self.state;
        let saves = &mut self.saves;
        while let Some((due, timer)) = timers.pop_due(time) {
            *now = (*now).max(due);
            let mut cx = Cx::<M> {
                now: *now,
                rng,
                timers,
                outputs,
                views,
                saves,
            };
            model.timer(&mut cx, timer);
        }
    }

    /// The replica's state as a snapshot: compact bytes and their hash.
    pub fn snapshot(&self) -> Result<Snapshot, SnapshotError> {
        Snapshot::encode(&self.state)
    }

    /// The hash of the current state (what replicas compare to detect divergence).
    pub fn hash(&self) -> Result<SnapshotHash, SnapshotError> {
        Ok(self.snapshot()?.hash)
    }

    /// A replica restored from a snapshot. Fails if the bytes are not a snapshot of this
    /// model's schema.
    pub fn restore(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let schema = Snapshot::schema(bytes)?;
        if schema != M::SCHEMA {
            return Err(SnapshotError::Schema {
                expected: M::SCHEMA.to_string(),
                found: schema,
            });
        }
        let state: State<M> = Snapshot::decode(bytes)?;
        Ok(Self {
            state,
            saves: Saves::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::{Room, RoomInput, RoomOutput, RoomViewData};

    fn view(name: &str) -> ViewId {
        ViewId(name.to_owned())
    }

    /// A room in which `alice` has `n` connections, `bob` one, and a typing timer runs.
    fn room_with(n: u32) -> Replica<Room> {
        let (mut r, _) = Replica::<Room>::new(b"seed", 0);
        let data = RoomViewData {
            name: "Alice".into(),
        };
        for _ in 0..n {
            r.apply(
                1,
                Event::Join {
                    view: view("alice"),
                    data: data.clone(),
                },
            );
        }
        r.apply(
            2,
            Event::Join {
                view: view("bob"),
                data: RoomViewData::default(),
            },
        );
        r.apply(
            3,
            Event::Input {
                from: view("alice"),
                n: 1,
                input: RoomInput::Typing,
            },
        );
        r
    }

    #[test]
    fn exit_all_is_one_exit_per_connection() {
        for n in 1..=3 {
            let mut looped = room_with(n);
            let mut at_once = room_with(n);
            let mut looped_out = Vec::new();
            while looped.connections(&view("alice")) > 0 {
                looped_out.extend(
                    looped
                        .apply(
                            50,
                            Event::Exit {
                                view: view("alice"),
                            },
                        )
                        .outputs,
                );
            }
            let applied = at_once.exit_all(50, &view("alice"));
            assert!(applied.accepted);
            assert_eq!(applied.outputs, looped_out);
            assert!(applied.outputs.contains(&RoomOutput::Left("Alice".into())));
            assert_eq!(at_once.hash().ok(), looped.hash().ok(), "{n} connections");
            assert!(!at_once.views().contains_key(&view("alice")));
        }
        let mut r = room_with(1);
        let before = r.hash().ok();
        assert!(!r.exit_all(60, &view("carol")).accepted);
        assert_eq!(
            r.hash().ok(),
            before,
            "a view that is not there: nothing happens"
        );
    }

    /// A crafted snapshot may claim 4 billion connections: leaving takes no longer for
    /// it, and joining once more does not overflow.
    #[test]
    fn a_claimed_count_near_u32_max_is_not_looped_over() {
        let mut r = room_with(1);
        r.state.connections.insert(view("alice"), u32::MAX);
        let events = r.events();
        r.apply(
            40,
            Event::Join {
                view: view("alice"),
                data: RoomViewData::default(),
            },
        );
        assert_eq!(r.connections(&view("alice")), u32::MAX);
        let applied = r.exit_all(50, &view("alice"));
        assert!(applied.accepted);
        assert_eq!(r.connections(&view("alice")), 0);
        assert!(!r.views().contains_key(&view("alice")));
        assert_eq!(r.events(), events + 1 + u64::from(u32::MAX));
    }
}

#[cfg(test)]
mod persist_tests {
    use serde::{Deserialize, Serialize};

    use crate::{Cx, Event, Model, Persisted, Replica, ViewId};

    /// Version 1 of a notes app: keeps notes, persists them 1 s after a change.
    #[derive(Default, Serialize, Deserialize)]
    struct NotesV1 {
        notes: Vec<String>,
        saving: bool,
    }

    impl Model for NotesV1 {
        type Input = String;
        type Output = ();
        type Timer = ();
        type ViewData = ();
        const SCHEMA: &'static str = "notes/1";

        fn init(_: &mut Cx<'_, Self>) -> Self {
            NotesV1::default()
        }

        fn input(&mut self, cx: &mut Cx<'_, Self>, _: &ViewId, note: String) {
            self.notes.push(note);
            if !self.saving {
                self.saving = true;
                cx.future(1000, ());
            }
        }

        fn timer(&mut self, cx: &mut Cx<'_, Self>, _: ()) {
            self.saving = false;
            cx.persist(&self.notes).expect("a Vec<String> is JSON");
        }
    }

    /// Version 2: notes have authors; it reads version 1's list of texts.
    #[derive(Default, Serialize, Deserialize)]
    struct NotesV2 {
        notes: Vec<(String, String)>,
    }

    impl Model for NotesV2 {
        type Input = String;
        type Output = ();
        type Timer = ();
        type ViewData = ();
        const SCHEMA: &'static str = "notes/2";

        fn init(_: &mut Cx<'_, Self>) -> Self {
            NotesV2::default()
        }

        fn init_persisted(cx: &mut Cx<'_, Self>, from: &Persisted) -> Self {
            match (from.schema(), from.decode::<Vec<String>>()) {
                ("notes/1", Ok(texts)) => NotesV2 {
                    notes: texts.into_iter().map(|t| (String::new(), t)).collect(),
                },
                _ => Self::init(cx),
            }
        }

        fn input(&mut self, _: &mut Cx<'_, Self>, from: &ViewId, note: String) {
            self.notes.push((from.0.clone(), note));
        }
    }

    #[test]
    fn a_later_version_starts_from_what_the_earlier_one_persisted() {
        let ann = ViewId::from("ann");
        let (mut v1, _) = Replica::<NotesV1>::new(b"s1", 0);
        v1.apply(
            10,
            Event::Join {
                view: ann.clone(),
                data: (),
            },
        );
        for (n, t) in [(1, "milk"), (2, "eggs")] {
            v1.apply(
                20 * n,
                Event::Input {
                    from: ann.clone(),
                    n,
                    input: t.into(),
                },
            );
            assert!(v1.take_persisted().is_none(), "not before the timer");
        }
        v1.advance_to(1019);
        assert!(v1.take_persisted().is_none());
        v1.advance_to(1020);
        let saved = v1.take_persisted().expect("persisted by the timer");
        assert_eq!((saved.schema(), saved.time()), ("notes/1", 1020));
        assert!(v1.take_persisted().is_none(), "taken once");
        // A snapshot does not carry it: it is not replica state.
        let restored = Replica::<NotesV1>::restore(&v1.snapshot().unwrap().bytes).unwrap();
        assert_eq!(restored.hash().unwrap(), v1.hash().unwrap());

        let bytes = saved.to_bytes().unwrap();
        let from = Persisted::from_bytes(&bytes).unwrap();
        let (a, _) = Replica::<NotesV2>::new_persisted(b"s2", 0, &from);
        let (b, _) = Replica::<NotesV2>::new_persisted(b"s2", 0, &from);
        assert_eq!(a.model().notes.len(), 2);
        assert_eq!(a.model().notes[1].1, "eggs");
        assert_eq!(a.hash().unwrap(), b.hash().unwrap());
        // Data of an unknown schema: the model starts empty, as it chose to.
        let other = Persisted::new("notes/9", 0, &5).unwrap();
        let (c, _) = Replica::<NotesV2>::new_persisted(b"s2", 0, &other);
        assert!(c.model().notes.is_empty());
    }
}
