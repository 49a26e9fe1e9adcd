//! A small chat-like model used by the docs, the sync tests, the wasm32 determinism check
//! and the benchmarks. It exercises every runtime feature: inputs with stamped senders,
//! view data, timers and their cancellation, randomness and floating point.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Cx, Model, TimerId, ViewId};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Post {
    pub id: u64,
    pub from: ViewId,
    pub name: String,
    pub text: String,
    pub at: u64,
}

/// Chat-like demo state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Room {
    pub posts: Vec<Post>,
    pub names: BTreeMap<ViewId, String>,
    /// Who is typing, with the timer that clears the flag.
    pub typing: BTreeMap<ViewId, TimerId>,
    /// A running average of post lengths: floating point in the state on purpose.
    pub mean_len: f64,
    pub next_id: u64,
    pub notices: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum RoomInput {
    Post(String),
    Typing,
    Reset,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RoomTimer {
    StopTyping(ViewId),
    Notice,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RoomOutput {
    Posted(u64),
    Typing(ViewId, bool),
    Joined(String),
    Left(String),
    Reset,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RoomViewData {
    pub name: String,
}

/// Posts kept; older ones are dropped, as in the AI chat.
pub const MAX_POSTS: usize = 100;

impl Model for Room {
    type Input = RoomInput;
    type Output = RoomOutput;
    type Timer = RoomTimer;
    type ViewData = RoomViewData;
    const SCHEMA: &'static str = "synq-demo-room/1";

    fn init(cx: &mut Cx<'_, Self>) -> Self {
        cx.future(5_000, RoomTimer::Notice);
        Room::default()
    }

    fn input(&mut self, cx: &mut Cx<'_, Self>, from: &ViewId, input: RoomInput) {
        match input {
            RoomInput::Post(text) => {
                if let Some(t) = self.typing.remove(from) {
                    cx.cancel(t);
                }
                // Random ids, so the seeded stream is part of what replicas must agree on.
                let id = self.next_id * 1000 + cx.random_below(1000);
                self.next_id += 1;
                let n = self.posts.len() as f64;
                self.mean_len = (self.mean_len * n + text.len() as f64) / (n + 1.0);
                let name = self.names.get(from).cloned().unwrap_or_default();
                self.posts.push(Post {
                    id,
                    from: from.clone(),
                    name,
                    text,
                    at: cx.now(),
                });
                if self.posts.len() > MAX_POSTS {
                    self.posts.remove(0);
                }
                cx.emit(RoomOutput::Posted(id));
            }
            RoomInput::Typing => {
                if let Some(t) = self.typing.remove(from) {
                    cx.cancel(t);
                }
                let t = cx.future(3_000, RoomTimer::StopTyping(from.clone()));
                self.typing.insert(from.clone(), t);
                cx.emit(RoomOutput::Typing(from.clone(), true));
            }
            RoomInput::Reset => {
                self.posts.clear();
                self.mean_len = 0.0;
                cx.emit(RoomOutput::Reset);
            }
        }
    }

    fn timer(&mut self, cx: &mut Cx<'_, Self>, timer: RoomTimer) {
        match timer {
            RoomTimer::StopTyping(view) => {
                self.typing.remove(&view);
                cx.emit(RoomOutput::Typing(view, false));
            }
            RoomTimer::Notice => {
                self.notices += 1;
                // Jittered period from the random stream.
                let next = 4_000 + (cx.random() * 2_000.0) as u64;
                cx.future(next, RoomTimer::Notice);
            }
        }
    }

    fn view_join(&mut self, cx: &mut Cx<'_, Self>, view: &ViewId, data: &RoomViewData) {
        self.names.insert(view.clone(), data.name.clone());
        cx.emit(RoomOutput::Joined(data.name.clone()));
    }

    fn view_exit(&mut self, cx: &mut Cx<'_, Self>, view: &ViewId) {
        if let Some(t) = self.typing.remove(view) {
            cx.cancel(t);
        }
        let name = self.names.remove(view).unwrap_or_default();
        cx.emit(RoomOutput::Left(name));
    }
}

/// A reproducible pseudo-random event log for [`Room`] (for tests and benchmarks that must
/// produce the same log on every platform): `events` events among `views` views, with
/// joins, exits, posts, typing, resets and duplicates.
pub fn room_log(seed: u64, events: usize, views: usize) -> Vec<(u64, crate::Event<Room>)> {
    use crate::Event;
    // SplitMix64: tiny, portable, good enough to draw a test log.
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let views = views.max(1);
    let mut time = 0u64;
    let mut counters = vec![0u64; views];
    let mut log = Vec::with_capacity(events);
    for i in 0..events {
        time += next() % 400;
        let v = (next() % views as u64) as usize;
        let view = ViewId(format!("view{v}"));
        let event = match next() % 20 {
            0 => Event::Join {
                view,
                data: RoomViewData {
                    name: format!("user {v}"),
                },
            },
            1 => Event::Exit { view },
            2 => Event::Input {
                from: view,
                n: counters[v].max(1), // a duplicate of the last input
                input: RoomInput::Typing,
            },
            3 | 4 => {
                counters[v] += 1;
                Event::Input {
                    from: view,
                    n: counters[v],
                    input: RoomInput::Typing,
                }
            }
            5 if i % 7 == 0 => {
                counters[v] += 1;
                Event::Input {
                    from: view,
                    n: counters[v],
                    input: RoomInput::Reset,
                }
            }
            _ => {
                counters[v] += 1;
                Event::Input {
                    from: view,
                    n: counters[v],
                    input: RoomInput::Post(format!("message {i} from {v}: é ✓ {}", next() % 1000)),
                }
            }
        };
        log.push((time, event));
    }
    log
}
