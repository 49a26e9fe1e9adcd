//! The AI chat end to end: native participants through a real `synq serve`, whose AI
//! gateway forwards to a real HTTP upstream speaking the OpenAI streaming API.

use std::sync::Arc;
use std::time::Duration;

mod common;

use synq_ai::openai::{OpenAiBackend, OpenAiConfig};
use synq_ai::testing::{FAKE_MODEL, FakeUpstream, Reply};
use synq_chat::native::{AiService, Participant};
use synq_chat::{AiState, ChatModel, EntryKind};
use synq_client::ClientConfig;

const PATIENCE: Duration = Duration::from_secs(30);

fn serve(data_dir: &std::path::Path, ai_url: &str) -> common::Serve {
    common::serve(data_dir, &["--ai-url", ai_url, "--ai-model", FAKE_MODEL])
}

/// The AI as a participant reaches it: through the gateway of the server it joined.
fn gateway(base: &str) -> Arc<AiService> {
    let mut cfg = OpenAiConfig::new(format!("{base}/ai/v1"), "chosen-by-the-server");
    cfg.max_retries = 0;
    Arc::new(AiService(Arc::new(
        OpenAiBackend::new(cfg).expect("backend"),
    )))
}

fn config(base: &str, room: &str) -> ClientConfig {
    let mut c = ClientConfig::for_server(base, "synq.chat.test", room, "room-password");
    c.kdf_rounds = 1000;
    c
}

async fn participants(base: &str, room: &str, service: Arc<AiService>) -> Vec<Participant> {
    let mut all = Vec::new();
    for name in ["Ann", "Bob", "Cid"] {
        let p = tokio::time::timeout(
            PATIENCE,
            Participant::join(config(base, room), name, Some(Arc::clone(&service))),
        )
        .await
        .expect("joined in time")
        .expect("join");
        all.push(p);
    }
    for p in &mut all {
        wait(p, "everyone present", |m| m.users().count() == 3).await;
    }
    all
}

async fn wait(p: &mut Participant, what: &str, pred: impl Fn(&ChatModel) -> bool) {
    tokio::time::timeout(PATIENCE, p.until(pred))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("session alive");
}

fn answers(m: &ChatModel) -> Vec<(String, AiState)> {
    m.history()
        .filter_map(|e| match &e.kind {
            EntryKind::Ai { text, state, .. } => Some((text.clone(), *state)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn one_post_one_upstream_request_and_the_streamed_answer_in_every_participant() {
    let upstream = FakeUpstream::start().await;
    upstream.set_default(Reply::text(&["Hello", " there", ", Bob!"]));
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &upstream.base_url);
    let mut ps = participants(&server.base, "one", gateway(&server.base)).await;
    ps[1].post("Hi AI, I am Bob").expect("post");
    for p in &mut ps {
        wait(p, "the answer", |m| {
            answers(m) == [("Hello there, Bob!".to_string(), AiState::Done)]
        })
        .await;
    }
    assert_eq!(
        upstream.request_count(),
        1,
        "exactly one upstream request for one post"
    );
    // The server fixed the model, and the prompt named the people in the room.
    let body = &upstream.requests()[0];
    assert_eq!(body["model"], FAKE_MODEL);
    let system = body["messages"][0]["content"].as_str().unwrap_or_default();
    assert!(system.contains("Ann, Bob, Cid"), "{system}");
    let asked = body["messages"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    assert_eq!(asked, "Bob: Hi AI, I am Bob");
}

/// The status of the room's waiting AI answer, if any.
fn ai_status(m: &ChatModel) -> Option<String> {
    m.history().find_map(|e| match &e.kind {
        EntryKind::Ai { request, .. } => m.ai_status(*request).map(str::to_owned),
        _ => None,
    })
}

/// The AI service has others to answer first (a synq gateway in front of a busy embedded
/// model): the elected participant publishes its place in line, and every participant
/// sees it on the waiting answer until the answer comes.
#[tokio::test]
async fn the_ai_services_queue_position_is_shown_to_every_participant_until_the_answer() {
    let upstream = FakeUpstream::start().await;
    upstream.set_default(Reply::queued(
        &[2, 1, 0],
        Duration::from_millis(700),
        &["Your", " turn."],
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &upstream.base_url);
    let mut ps = participants(&server.base, "queue", gateway(&server.base)).await;
    ps[1].post("@AI are you busy?").expect("post");
    for p in &mut ps {
        wait(p, "the queue status", |m| {
            ai_status(m).is_some_and(|s| s.starts_with("AI is answering"))
        })
        .await;
    }
    for p in &mut ps {
        wait(p, "the answer", |m| {
            answers(m) == [("Your turn.".to_string(), AiState::Done)]
        })
        .await;
        assert_eq!(p.read(ai_status).flatten(), None, "no status once answered");
    }
}

#[tokio::test]
async fn the_elected_participant_dies_mid_answer_and_the_answer_still_arrives_exactly_once() {
    let upstream = FakeUpstream::start().await;
    // The first call streams "Partial" and then hangs; the restarted one answers in full.
    upstream.script([Reply::gated(&["Partial", " answer", " never finished"])]);
    upstream.set_default(Reply::text(&["The", " whole", " answer."]));
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &upstream.base_url);
    let mut ps = participants(&server.base, "failover", gateway(&server.base)).await;
    let elected = ps[0]
        .read(|m| m.elected().cloned())
        .flatten()
        .expect("someone is elected");
    let k = ps
        .iter()
        .position(|p| *p.handle().view_id() == elected)
        .expect("the elected view is one of the participants");
    let poster = (k + 1) % 3;
    ps[poster].post("@AI tell me something").expect("post");
    for p in &mut ps {
        wait(p, "the partial answer", |m| {
            answers(m) == [("Partial".to_string(), AiState::Streaming)]
        })
        .await;
    }
    let dead = ps.remove(k);
    dead.kill();
    tokio::time::timeout(PATIENCE, upstream.wait_disconnects(1))
        .await
        .expect("the dead participant's upstream call was cancelled");
    for p in &mut ps {
        wait(p, "the restarted answer", |m| {
            answers(m) == [("The whole answer.".to_string(), AiState::Done)]
        })
        .await;
        let texts: Vec<String> = p
            .read(|m| m.history().map(|e| format!("{:?}", e.kind)).collect())
            .unwrap_or_default();
        assert!(
            !texts.iter().any(|t| t.contains("Partial")),
            "the partial answer is gone: {texts:?}"
        );
    }
    assert_eq!(
        upstream.request_count(),
        2,
        "the first attempt and its one restart"
    );
    let hashes: Vec<_> = ps.iter().map(|p| p.handle().hash()).collect();
    assert_eq!(ps[0].read(|m| m.users().count()), Some(2));
    // The two survivors may be at different reflector times; their histories agree.
    let h0 = ps[0].read(|m| m.history().cloned().collect::<Vec<_>>());
    let h1 = ps[1].read(|m| m.history().cloned().collect::<Vec<_>>());
    assert_eq!(h0, h1, "{hashes:?}");
}

#[tokio::test]
async fn an_unreachable_ai_service_gives_a_visible_notice_instead_of_silence() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}/v1", closed.local_addr().expect("addr"));
    drop(closed);
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = FakeUpstream::start().await;
    let server = serve(dir.path(), &upstream.base_url);
    // The participants call an AI endpoint that does not answer at all.
    let mut cfg = OpenAiConfig::new(dead_url, "m");
    cfg.max_retries = 0;
    let service = Arc::new(AiService(Arc::new(
        OpenAiBackend::new(cfg).expect("backend"),
    )));
    let mut ps = participants(&server.base, "offline", service).await;
    ps[2].post("AI, anyone there?").expect("post");
    for p in &mut ps {
        wait(p, "the notice", |m| {
            m.history().any(|e| matches!(&e.kind, EntryKind::Notice { text } if text.starts_with("AI could not answer")))
        })
        .await;
        assert!(
            p.read(answers).unwrap_or_default().is_empty(),
            "no empty AI answer is left waiting"
        );
    }
}
