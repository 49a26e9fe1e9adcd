//! The runtime's rules, one behaviour per test.

use serde::{Deserialize, Serialize};
use synq_model::{Cx, Event, Model, Replica, SnapshotError, TimerId, ViewId};

/// Records what happened to it, so tests can look.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Probe {
    log: Vec<String>,
    pending: Option<TimerId>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum In {
    Say(String),
    Later(u64, String),
    CancelLast,
    Rand,
}

impl Model for Probe {
    type Input = In;
    type Output = String;
    type Timer = String;
    type ViewData = String;
    const SCHEMA: &'static str = "probe/1";

    fn init(_: &mut Cx<'_, Self>) -> Self {
        Probe::default()
    }

    fn input(&mut self, cx: &mut Cx<'_, Self>, from: &ViewId, input: In) {
        match input {
            In::Say(s) => self.log.push(format!("{}@{}:{s}", from, cx.now())),
            In::Later(ms, s) => self.pending = Some(cx.future(ms, s)),
            In::CancelLast => {
                if let Some(t) = self.pending.take() {
                    let cancelled = cx.cancel(t);
                    self.log.push(format!("cancelled:{cancelled}"));
                }
            }
            In::Rand => {
                let x = cx.random();
                assert!((0.0..1.0).contains(&x));
                self.log
                    .push(format!("rand:{}", cx.random_below(1_000_000)));
            }
        }
        cx.emit(format!("input from {from}"));
    }

    fn timer(&mut self, cx: &mut Cx<'_, Self>, s: String) {
        self.log.push(format!("timer@{}:{s}", cx.now()));
    }

    fn view_join(&mut self, _: &mut Cx<'_, Self>, view: &ViewId, data: &String) {
        self.log.push(format!("join:{view}:{data}"));
    }

    fn view_exit(&mut self, _: &mut Cx<'_, Self>, view: &ViewId) {
        self.log.push(format!("exit:{view}"));
    }
}

fn v(s: &str) -> ViewId {
    ViewId::from(s)
}

fn joined(views: &[&str]) -> Replica<Probe> {
    let (mut r, _) = Replica::<Probe>::new(b"s", 0);
    for (i, name) in views.iter().enumerate() {
        r.apply(
            i as u64,
            Event::Join {
                view: v(name),
                data: format!("{name}-data"),
            },
        );
    }
    r
}

fn say(from: &str, n: u64, s: &str) -> Event<Probe> {
    Event::Input {
        from: v(from),
        n,
        input: In::Say(s.into()),
    }
}

#[test]
fn the_sender_is_the_stamped_view_and_time_is_reflector_time() {
    let mut r = joined(&["a"]);
    let applied = r.apply(120, say("a", 1, "hi"));
    assert!(applied.accepted);
    assert_eq!(applied.outputs, vec!["input from a".to_string()]);
    assert_eq!(r.model().log.last().unwrap(), "a@120:hi");
    assert_eq!(r.model().log[0], "join:a:a-data");
}

#[test]
fn inputs_from_views_not_in_the_session_are_ignored() {
    let mut r = joined(&["a"]);
    assert!(!r.apply(5, say("stranger", 1, "x")).accepted);
    r.apply(6, Event::Exit { view: v("a") });
    assert!(!r.apply(7, say("a", 1, "after exit")).accepted);
    assert!(
        r.model()
            .log
            .iter()
            .all(|l| !l.contains(":x") && !l.contains("after exit"))
    );
}

#[test]
fn a_duplicate_input_number_applies_once_even_across_exit_and_rejoin() {
    let mut r = joined(&["a"]);
    assert!(r.apply(5, say("a", 1, "one")).accepted);
    assert!(!r.apply(6, say("a", 1, "one")).accepted);
    r.apply(7, Event::Exit { view: v("a") });
    r.apply(
        8,
        Event::Join {
            view: v("a"),
            data: "again".into(),
        },
    );
    assert!(!r.apply(9, say("a", 1, "one")).accepted);
    assert!(r.apply(10, say("a", 2, "two")).accepted);
    let says: Vec<_> = r
        .model()
        .log
        .iter()
        .filter(|l| l.starts_with("a@"))
        .collect();
    assert_eq!(says, ["a@5:one", "a@10:two"]);
}

#[test]
fn timers_fire_in_due_order_at_their_due_time_before_later_events() {
    let mut r = joined(&["a"]);
    let later = |n, ms, s: &str| Event::Input {
        from: v("a"),
        n,
        input: In::Later(ms, s.into()),
    };
    r.apply(100, later(1, 500, "second"));
    r.apply(100, later(2, 200, "first"));
    r.apply(100, later(3, 200, "first-b"));
    r.apply(1000, say("a", 4, "after"));
    let tail: Vec<_> = r.model().log.iter().skip(1).cloned().collect();
    assert_eq!(
        tail,
        [
            "timer@300:first",
            "timer@300:first-b",
            "timer@600:second",
            "a@1000:after"
        ]
    );
}

#[test]
fn a_cancelled_timer_never_fires() {
    let mut r = joined(&["a"]);
    r.apply(
        0,
        Event::Input {
            from: v("a"),
            n: 1,
            input: In::Later(50, "never".into()),
        },
    );
    r.apply(
        10,
        Event::Input {
            from: v("a"),
            n: 2,
            input: In::CancelLast,
        },
    );
    r.advance_to(10_000);
    assert!(r.model().log.contains(&"cancelled:true".to_string()));
    assert!(!r.model().log.iter().any(|l| l.contains("never")));
}

#[test]
fn ticks_fire_timers_and_time_never_goes_back() {
    let mut r = joined(&["a"]);
    r.apply(
        0,
        Event::Input {
            from: v("a"),
            n: 1,
            input: In::Later(50, "t".into()),
        },
    );
    r.advance_to(49);
    assert!(!r.model().log.iter().any(|l| l.starts_with("timer")));
    r.advance_to(50);
    assert!(r.model().log.iter().any(|l| l == "timer@50:t"));
    r.advance_to(10);
    assert_eq!(r.now(), 50);
}

#[test]
fn randomness_continues_identically_after_a_snapshot() {
    let mut a = joined(&["a"]);
    a.apply(
        1,
        Event::Input {
            from: v("a"),
            n: 1,
            input: In::Rand,
        },
    );
    let snap = a.snapshot().unwrap();
    let mut b = Replica::<Probe>::restore(&snap.bytes).unwrap();
    for n in 2..6 {
        a.apply(
            n,
            Event::Input {
                from: v("a"),
                n,
                input: In::Rand,
            },
        );
        b.apply(
            n,
            Event::Input {
                from: v("a"),
                n,
                input: In::Rand,
            },
        );
    }
    assert_eq!(a.model().log, b.model().log);
    assert_eq!(a.hash().unwrap(), b.hash().unwrap());
    let draws: std::collections::BTreeSet<_> = a
        .model()
        .log
        .iter()
        .filter(|l| l.starts_with("rand"))
        .collect();
    assert_eq!(draws.len(), 5, "draws differ from one another");
}

#[test]
fn a_corrupt_truncated_or_foreign_snapshot_is_refused() {
    let snap = joined(&["a", "b"]).snapshot().unwrap();
    let truncated = &snap.bytes[..snap.bytes.len() - 3];
    assert!(matches!(
        Replica::<Probe>::restore(truncated),
        Err(SnapshotError::Decode(_))
    ));
    assert!(matches!(
        Replica::<Probe>::restore(b"garbage"),
        Err(SnapshotError::Format)
    ));
    let room = Replica::<synq_model::demo::Room>::new(b"s", 0)
        .0
        .snapshot()
        .unwrap();
    let err = Replica::<Probe>::restore(&room.bytes).err().unwrap();
    assert!(matches!(err, SnapshotError::Schema { .. }), "{err}");
    assert!(err.to_string().contains("synq-demo-room/1"));
}

#[test]
fn a_reconnecting_view_stays_until_its_last_connection_leaves() {
    let mut r = joined(&["a"]);
    let join = |d: &str| Event::Join {
        view: v("a"),
        data: d.to_string(),
    };
    let exit = || Event::Exit { view: v("a") };
    // The new connection joins before the old one's leave is announced.
    assert!(!r.apply(5, join("dup")).accepted);
    assert!(!r.apply(6, exit()).accepted);
    assert!(r.apply(7, say("a", 1, "still here")).accepted);
    assert!(r.apply(8, exit()).accepted);
    assert!(!r.apply(9, exit()).accepted);
    let joins_exits: Vec<_> = r
        .model()
        .log
        .iter()
        .filter(|l| l.starts_with("join") || l.starts_with("exit"))
        .collect();
    assert_eq!(joins_exits, ["join:a:a-data", "exit:a"]);
}
