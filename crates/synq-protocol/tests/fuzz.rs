//! Fuzzing the reflector's frame parsing (client → reflector) and the clients' parsing of
//! reflector frames (reflector → client) with arbitrary text and near-valid JSON: right
//! actions and field names, values of every JSON type, numbers at the edges of every
//! range, deep nesting, long strings. The property: no panic, and every frame the
//! reflector builds from what it parsed is valid JSON.
//!
//! `SYNQ_FUZZ_CASES=1000000 cargo test --release -p synq-protocol --test fuzz` for a long
//! run; the default is small enough for CI.

mod fuzz_json;

use fuzz_json::*;
use proptest::prelude::*;
use serde_json::value::RawValue;
use synq_protocol::client::{
    JoinArgs, SaveArgs, SendArgs, SendTags, SnapArgs, TickConfig, TuttiArgs, truthy,
};
use synq_protocol::frames::{self, RecvFrame, SnapshotRef, Sync};
use synq_protocol::identity::{check_user, view_id_for_proof};
use synq_protocol::server::{LooseFrame, Reassembler, ServerFrame};
use synq_protocol::{Action, ClientEnvelope, CloseCode, seq};

fn assert_json(text: &str, what: &str) {
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        panic!("{what} built an invalid frame ({e}): {text:.300}");
    }
}

/// A JOIN `user`: a string, anything, or `{id, proof, data}` whose id matches its proof
/// (or not).
fn user() -> BoxedStrategy<String> {
    let proven = (
        "[0-9a-f]{0,40}",
        any::<bool>(),
        proptest::option::of(value()),
    )
        .prop_map(|(proof, matching, data)| {
            let id = if matching {
                view_id_for_proof(&proof)
            } else {
                proof.chars().rev().collect()
            };
            let mut f = vec![
                (
                    "id".to_owned(),
                    serde_json::to_string(&id).unwrap_or_default(),
                ),
                (
                    "proof".to_owned(),
                    serde_json::to_string(&proof).unwrap_or_default(),
                ),
            ];
            if let Some(d) = data {
                f.push(("data".to_owned(), d));
            }
            render_object(&f)
        });
    prop_oneof![2 => proven, 1 => string(), 1 => value()].boxed()
}

fn ticks() -> BoxedStrategy<String> {
    object(vec![
        ("tick", mostly(number())),
        ("delay", mostly(number())),
        ("scale", mostly(number())),
    ])
}

fn join_args() -> BoxedStrategy<String> {
    object(vec![
        ("version", mostly(Just("1".to_owned()).boxed())),
        ("apiKey", mostly(Just("\"none\"".to_owned()).boxed())),
        ("user", user()),
        ("ticks", mostly(ticks())),
        ("name", mostly(string())),
        ("appId", mostly(string())),
        ("url", mostly(string())),
        ("persistentId", mostly(string())),
        ("developerId", mostly(string())),
        ("sdk", mostly(string())),
        ("codeHash", mostly(string())),
        ("tove", mostly(string())),
        ("leaveDelay", mostly(number())),
        ("dormantDelay", mostly(number())),
        ("heraldUrl", mostly(string())),
        (
            "flags",
            mostly(object(vec![
                ("rawtime", leaf()),
                ("microverse", leaf()),
                ("other", leaf()),
            ])),
        ),
        ("location", leaf()),
    ])
}

fn send_args() -> BoxedStrategy<String> {
    array(vec![
        number(),
        number(),
        mostly(string()),
        number(),
        mostly(string()),
    ])
}

fn send_tags() -> BoxedStrategy<String> {
    mostly(object(vec![
        ("debounce", mostly(number())),
        ("msgID", mostly(string())),
    ]))
}

fn tutti_args() -> BoxedStrategy<String> {
    let first_msg = prop_oneof![
        Just("null".to_owned()),
        array(vec![number(), number(), mostly(string()), number()]),
    ];
    array(vec![
        number(),
        number(),
        mostly(string()),
        mostly(first_msg.boxed()),
        leaf(),
        mostly(Just("[\"handleSnapshotVote\"]".to_owned()).boxed()),
        mostly(string()),
    ])
}

fn snap_args() -> BoxedStrategy<String> {
    object(vec![
        ("time", mostly(number())),
        ("seq", mostly(number())),
        ("hash", mostly(string())),
        ("url", mostly(string())),
        ("dissident", leaf()),
    ])
}

fn save_args() -> BoxedStrategy<String> {
    object(vec![("url", mostly(string())), ("dissident", leaf())])
}

/// Any frame a client (or an attacker) might send.
fn client_frame() -> BoxedStrategy<String> {
    let any_action = action_lit(ACTIONS);
    prop_oneof![
        2 => garbage(),
        1 => deep(),
        1 => value(),
        3 => envelope(action_lit(&["JOIN"]), mostly(join_args()), value()),
        3 => envelope(action_lit(&["SEND"]), mostly(send_args()), send_tags()),
        2 => envelope(action_lit(&["TUTTI"]), mostly(tutti_args()), value()),
        2 => envelope(action_lit(&["SNAP"]), mostly(snap_args()), value()),
        1 => envelope(action_lit(&["SAVE"]), mostly(save_args()), value()),
        1 => envelope(action_lit(&["TICKS"]), mostly(ticks()), value()),
        1 => envelope(any_action, value(), send_tags()),
    ]
    .boxed()
}

/// Everything the reflector does with a client frame before it touches session state.
fn exercise_client_frame(text: &str) {
    let Ok(env) = ClientEnvelope::parse(text) else {
        return;
    };
    let args = env.args;
    let id = frames::quote("synq1-fuzz");
    let _ = matches!(env.action, Action::Unknown(ref a) if a.len() > 1);
    let t = TickConfig::parse(args);
    let _ = (t.tick, t.delay, t.scale);
    if let Ok(j) = JoinArgs::parse(args) {
        let _ = j.user_string();
        let _ = j.ticks.map(|t| t.tick);
        if let Some(u) = &j.user
            && let Ok(checked) = check_user(u.get())
        {
            assert_json(&checked.announced, "check_user");
            let p = frames::users_payload(1, 1, &[checked.announced.as_str()], &[u.get()]);
            assert_json(&p, "users_payload");
        }
    }
    if let Ok(s) = SendArgs::parse(args) {
        let r = RecvFrame::new(&id, u64::MAX, u32::MAX, &s.tail.text);
        assert_json(&r.frame, "RecvFrame::new");
        assert_eq!(RecvFrame::from_args(&id, r.args()).frame, r.frame);
        let raw = s.tail.with_last_replaced("1712.5");
        assert_json(&RecvFrame::new(&id, 0, 0, &raw).frame, "rawtime");
        let _ = s.latency.map(f64::is_finite);
    }
    if let Some(tags) = SendTags::parse(env.tags) {
        let _ = tags.debounce();
    }
    if let Ok(t) = TuttiArgs::parse(args) {
        let p = frames::tally_payload(
            t.send_time_raw.get(),
            &[(t.payload.clone(), u32::MAX)],
            t.tally_target.get(),
            &t.tutti_key,
            i64::MIN,
        );
        assert_json(&p, "tally_payload");
        if let Some(m) = &t.first_msg {
            assert_json(&RecvFrame::new(&id, 1, 2, &m.text).frame, "firstMsg");
        }
        let _ = (t.send_time.is_finite(), t.wants_vote);
    }
    if let Ok(s) = SnapArgs::parse(args) {
        let sync = Sync {
            snapshot: Some(SnapshotRef {
                time_raw: s.time_raw.get(),
                seq: s.seq,
                url: &s.url,
            }),
            persisted_url: None,
            time: s.time.max(0.0) as u64,
            seq: s.seq,
            tove: s.hash.as_deref(),
            reflector: "fuzz",
            timeline: &s.url,
            flags_json: "{}",
            fallback: Some(SnapshotRef {
                time_raw: s.time_raw.get(),
                seq: s.seq,
                url: &s.url,
            }),
        };
        let f = sync.frame(&id, std::iter::once("[1,2,\"x\"]"));
        assert_json(&f, "Sync::frame");
        let _ = s.dissident;
    }
    if let Ok(s) = SaveArgs::parse(args) {
        let f = Sync {
            snapshot: None,
            persisted_url: Some(&s.url),
            time: 0,
            seq: 0,
            tove: None,
            reflector: "fuzz",
            timeline: "t",
            flags_json: "{}",
            // a fallback to the start names the persisted data
            fallback: Some(SnapshotRef {
                time_raw: "0",
                seq: 0,
                url: "",
            }),
        }
        .frame(&id, std::iter::empty());
        assert_json(&f, "Sync::frame (persisted)");
    }
    assert_json(&frames::pong(args), "pong");
    if let Some(a) = args
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(a.get())
    {
        let _ = truthy(&v);
    }
    if let Action::Unknown(name) = &env.action {
        assert_json(&frames::info(&id, name, name, name), "info");
    }
}

/// Everything a client does to parse a reflector frame.
fn exercise_server_frame(text: &str) {
    if Reassembler::is_chunk(text) {
        let _ = Reassembler::new(1 << 20).push(text);
    }
    if let Ok(f) = ServerFrame::parse(text) {
        let _ = f.action();
        let messages = match f {
            ServerFrame::Recv(m) => vec![m],
            ServerFrame::Sync(s) => s.messages,
            _ => Vec::new(),
        };
        for m in messages {
            let _ = (m.what(), m.users(), m.tally(), m.rest.len());
        }
    }
    let Ok(f) = LooseFrame::parse(text) else {
        return;
    };
    if let Some(m) = f.message() {
        let _ = m.what();
    }
    let _ = f.tick_time();
    for m in f.sync_messages() {
        let _ = (m.what(), m.rest.len());
    }
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn client_frames_never_panic_the_reflector_parser(text in client_frame()) {
        exercise_client_frame(&text);
    }

    #[test]
    fn server_frames_never_panic_the_client_parser(text in server_frame()) {
        exercise_server_frame(&text);
    }

}

proptest! {
    // Each case runs 19 frames through both parsers: fewer cases by default.
    #![proptest_config(config(200))]

    /// Each action's parser fed the arguments of every other action (and anything).
    #[test]
    fn every_parser_takes_any_arguments(
        args in prop_oneof![
            join_args(), send_args(), tutti_args(), snap_args(), save_args(), ticks(),
            value(), deep()
        ],
        tags in send_tags(),
    ) {
        for action in ACTIONS {
            let frame = format!(
                "{{\"action\":{},\"args\":{args},\"tags\":{tags}}}",
                serde_json::to_string(action).unwrap_or_default()
            );
            exercise_client_frame(&frame);
            exercise_server_frame(&frame);
        }
        if let Ok(raw) = RawValue::from_string(args.clone()) {
            let _ = check_user(raw.get());
        }
    }

}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn user_checks_never_panic(u in prop_oneof![user(), garbage()]) {
        let _ = check_user(&u);
    }

    #[test]
    fn seq_and_close_helpers_are_total(
        a in any::<u32>(),
        b in any::<u32>(),
        seqs in proptest::collection::vec(any::<u32>(), 0..16),
        code in any::<u16>(),
    ) {
        let _ = seq::after(a, b);
        prop_assert!(seq::covered_by_snapshot(a, seqs.iter().copied()) <= seqs.len());
        if let Some(c) = CloseCode::from_code(code) {
            prop_assert_eq!(c.code(), code);
        }
    }
}

/// The edge cases that the generators aim at, once each, by name.
#[test]
fn known_hostile_frames_are_refused_or_parsed() {
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_args = format!("{{\"action\":\"SEND\",\"args\":{deep}}}");
    for text in [
        r#"{"action":"TICKS","args":{"tick":1e308}}"#,
        r#"{"action":"TICKS","args":{"tick":1e400}}"#,
        r#"{"action":"JOIN","args":{"version":1,"apiKey":"none","ticks":{"tick":1e308,"delay":-1}}}"#,
        r#"{"action":"SNAP","args":{"time":1e300,"seq":4294967296,"url":"x"}}"#,
        r#"{"action":"SNAP","args":{"time":-1,"seq":-1,"url":"x"}}"#,
        r#"{"action":"SEND","args":[0,0,"x",1e308],"tags":{"debounce":1e308,"msgID":"\ud800"}}"#,
        r#"{"action":"TUTTI","args":[1e308,0,"p",[1,2,"m"],true,["t"],"k"]}"#,
        r#"{"action":"SEND","action":"JOIN"}"#,
        r#"{"args":null}"#,
        "",
        " ",
        "\u{feff}{}",
        deep.as_str(),
        deep_args.as_str(),
    ] {
        exercise_client_frame(text);
        exercise_server_frame(text);
    }
}
