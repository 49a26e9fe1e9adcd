//! Frames captured between the real Croquet client 2.0.4 and the real Croquet reflector
//! (`tests/fixtures/croquet-2.0.4-frames.txt`, one `C->R` or `R->C` frame a line): the
//! reflector's parsers read every client frame, the clients' parser reads every reflector
//! frame, and the encoders write Croquet's own bytes for Croquet's own values.

use serde_json::{Value, json};
use synq_protocol::client::{
    JoinArgs, JoinRequest, JoinUser, SendArgs, SendRequest, SnapArgs, SnapRequest, TickConfig,
    TuttiArgs, TuttiRequest,
};
use synq_protocol::server::{ServerFrame, User};
use synq_protocol::{Action, ClientEnvelope};

const FIXTURES: &str = include_str!("fixtures/croquet-2.0.4-frames.txt");

fn frames(direction: &str) -> Vec<&'static str> {
    FIXTURES
        .lines()
        .filter_map(|l| l.strip_prefix(direction))
        .map(str::trim_start)
        .collect()
}

fn client_frame(action: &str) -> &'static str {
    frames("C->R")
        .into_iter()
        .find(|f| f.contains(&format!("\"action\":\"{action}\"")))
        .unwrap_or_else(|| panic!("no captured {action}"))
}

fn value(text: &str) -> Value {
    serde_json::from_str(text).expect("JSON")
}

#[test]
fn the_join_of_croquet_parses_and_encodes_to_the_same_bytes() {
    let text = client_frame("JOIN");
    let env = ClientEnvelope::parse(text).unwrap();
    assert_eq!(env.action, Action::Join);
    let j = JoinArgs::parse(env.args).unwrap();
    assert_eq!(j.sdk.as_deref(), Some("2.0.4"));
    assert_eq!(j.leave_delay, Some(1250.0));
    let v = value(text);
    let args = &v["args"];
    let s = |k: &str| args[k].as_str().map(str::to_owned);
    let req = JoinRequest {
        name: j.name.clone().unwrap(),
        app_id: j.app_id.clone().unwrap(),
        sdk: j.sdk.clone(),
        user: JoinUser::View {
            id: args["user"]["id"].as_str().unwrap().into(),
            data: args["user"]["data"].as_str().unwrap().into(),
            proof: None,
            room: None,
        },
        ticks: j.ticks,
        tove: j.tove.clone(),
        leave_delay: j.leave_delay,
        dormant_delay: j.dormant_delay,
        url: j.url.clone(),
        persistent_id: j.persistent_id.clone(),
        developer_id: j.developer_id.clone(),
        code_hash: j.code_hash.clone(),
        flags: Vec::new(),
    };
    assert_eq!(s("apiKey").as_deref(), Some("none"));
    assert_eq!(req.encode(v["id"].as_str().unwrap()), text);
    assert_eq!(
        j.ticks,
        Some(TickConfig {
            tick: Some(200.0),
            delay: Some(0.0),
            scale: None
        })
    );
}

#[test]
fn send_and_tutti_of_croquet_encode_to_the_same_bytes() {
    let send = client_frame("SEND");
    let v = value(send);
    let id = v["id"].as_str().unwrap();
    let args = SendArgs::parse(ClientEnvelope::parse(send).unwrap().args).unwrap();
    assert_eq!(args.latency, None);
    let req = SendRequest {
        time: v["args"][0].as_f64().unwrap(),
        payload: v["args"][2].as_str().unwrap(),
        latency: 0.0,
        tags: None,
    };
    assert_eq!(req.encode(id), send);

    let tutti = client_frame("TUTTI");
    let t = TuttiArgs::parse(ClientEnvelope::parse(tutti).unwrap().args).unwrap();
    assert_eq!(t.tutti_key, "snapshot@7212");
    let req = TuttiRequest {
        send_time: t.send_time,
        payload: &t.payload,
        first_msg: None,
        wants_vote: t.wants_vote,
        tally_target: value(t.tally_target.get()),
        tutti_key: &t.tutti_key,
    };
    assert_eq!(req.encode(id), tutti);
}

#[test]
fn the_snap_of_croquet_parses_and_reencodes_to_the_same_args() {
    let snap = client_frame("SNAP");
    let s = SnapArgs::parse(ClientEnvelope::parse(snap).unwrap().args).unwrap();
    assert_eq!((s.time, s.seq, s.dissident), (7244.0, 4294967284, false));
    let hash = s.hash.clone().unwrap();
    // Croquet adds `auditStats`, which no reflector reads: the same args without it.
    let ours = SnapRequest {
        time: s.time,
        seq: s.seq,
        hash: &hash,
        url: &s.url,
        dissident: false,
    }
    .encode("qropRv4gAQsOMeVqHXfRV3NLLmt5Fc66FH2iu1teV9w");
    let mut theirs = value(snap);
    theirs["args"].as_object_mut().unwrap().remove("auditStats");
    assert_eq!(value(&ours), theirs);
}

#[test]
fn every_captured_reflector_frame_parses() {
    let all = frames("R->C");
    assert!(all.len() >= 10);
    let mut seen = Vec::new();
    for text in all {
        let f = ServerFrame::parse(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(!matches!(f, ServerFrame::Other { .. }), "{text}");
        seen.push(f.action().to_owned());
        match f {
            ServerFrame::Sync(s) => {
                assert!(s.seq >= 4294967280);
                assert!(!s.timeline.is_empty());
                if let Some(at) = s.snapshot_seq {
                    assert_eq!(at, 4294967284);
                    assert!(s.url.ends_with(".snap"));
                }
                for m in &s.messages {
                    assert!(m.seq > 4294967280);
                }
            }
            ServerFrame::Recv(m) => {
                if let Some(u) = m.users() {
                    assert_eq!(u.active, u.total);
                    for user in u.joined.iter().chain(&u.left) {
                        assert!(matches!(
                            user,
                            User::Name(_) | User::View { data: Some(_), .. }
                        ));
                    }
                } else if let Some(t) = m.tally() {
                    assert!(t.tutti_key.is_some_and(|k| k.starts_with("snapshot@")));
                    assert!(!t.votes.is_empty());
                    assert_eq!(t.tally_target, json!(["handleSnapshotVote"]));
                    assert_eq!(t.missing_clients, Some(0));
                } else {
                    assert!(m.payload.is_string());
                }
            }
            ServerFrame::Tick(t) => assert_eq!(t, 200.0),
            ServerFrame::Pong(args) => assert!(args.is_some()),
            other => panic!("unexpected {other:?}"),
        }
    }
    for action in ["SYNC", "RECV", "TICK", "PONG"] {
        assert!(seen.iter().any(|a| a == action), "no {action}");
    }
}
