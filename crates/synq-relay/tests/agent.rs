//! The view-side agent: batching of streamed text, failures, cancellation. Timers run on
//! tokio's paused clock, so the pacing is exact and the tests take no real time.

// Not model code: a test of the elected view's agent, which paces itself with tokio's clock
// (clippy.toml's determinism rules are for model code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use synq_model::ViewId;
use synq_relay::{
    AgentConfig, BoxFut, Progress, RelayAgent, RelayRequest, RelayResponse, RelayService,
    TextStream, serve_request,
};

/// Streams `n` deltas of "w " one every `every`, then ends (or fails).
struct Words {
    n: usize,
    every: Duration,
    fail: bool,
    dropped: Arc<AtomicBool>,
}

struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl RelayService<String> for Words {
    fn call(&self, request: String) -> BoxFut<Result<TextStream, String>> {
        let (n, every, fail) = (self.n, self.every, self.fail);
        let flag = DropFlag(Arc::clone(&self.dropped));
        Box::pin(async move {
            if request == "unreachable" {
                return Err("the AI service is unreachable".to_string());
            }
            let s = futures_util::stream::unfold((0, flag), move |(i, flag)| async move {
                if i == n {
                    return None;
                }
                tokio::time::sleep(every).await;
                let item = if fail && i == n / 2 {
                    Err("upstream broke".to_string())
                } else {
                    Ok(Progress::Text("w ".to_string()))
                };
                Some((item, (i + 1, flag)))
            });
            Ok(s.boxed())
        })
    }
}

fn sleep(d: Duration) -> BoxFut<()> {
    Box::pin(tokio::time::sleep(d))
}

fn words(n: usize, every_ms: u64, fail: bool) -> Words {
    Words {
        n,
        every: Duration::from_millis(every_ms),
        fail,
        dropped: Arc::default(),
    }
}

async fn run(service: &Words, request: &str) -> (Vec<RelayResponse>, Duration) {
    let mut out = Vec::new();
    let t0 = tokio::time::Instant::now();
    serve_request(
        service,
        7,
        request.to_string(),
        AgentConfig::default(),
        |r| out.push(r),
        sleep,
    )
    .await;
    (out, t0.elapsed())
}

#[tokio::test(start_paused = true)]
async fn streamed_text_is_batched_to_at_most_ten_inputs_per_second_and_arrives_whole() {
    let service = words(200, 5, false); // 200 deltas over 1 s
    let (out, took) = run(&service, "q").await;
    let deltas: Vec<&str> = out
        .iter()
        .filter_map(|r| match r {
            RelayResponse::Delta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deltas.concat(), "w ".repeat(200));
    let secs = took.as_secs_f64();
    assert!(
        deltas.len() as f64 <= secs * 10.0 + 2.0,
        "{} inputs in {secs} s",
        deltas.len()
    );
    assert!(
        deltas.len() >= 5,
        "the answer streams instead of arriving at once"
    );
    assert_eq!(out.last(), Some(&RelayResponse::Done { id: 7 }));
}

#[tokio::test(start_paused = true)]
async fn a_slow_stream_publishes_each_delta_without_waiting_for_more() {
    let service = words(3, 500, false);
    let (out, _) = run(&service, "q").await;
    assert_eq!(out.len(), 4, "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn failures_before_and_during_the_stream_are_published_as_failed() {
    let (out, _) = run(&words(10, 5, false), "unreachable").await;
    assert_eq!(
        out,
        [RelayResponse::Failed {
            id: 7,
            reason: "the AI service is unreachable".into()
        }]
    );
    let (out, _) = run(&words(10, 5, true), "q").await;
    assert!(
        matches!(out.last(), Some(RelayResponse::Failed { reason, .. }) if reason == "upstream broke")
    );
}

#[tokio::test(start_paused = true)]
async fn the_agent_acts_only_when_named_and_stopping_cancels_the_call() {
    let service = Arc::new(words(1000, 10, false));
    let dropped = Arc::clone(&service.dropped);
    let mut agent = RelayAgent::new(ViewId::from("me"));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let publish = move |r| {
        let _ = tx.send(r);
    };
    let other = RelayRequest {
        id: 1,
        elected: ViewId::from("someone-else"),
        request: "q".to_string(),
    };
    assert!(
        agent
            .on_request(
                Arc::clone(&service),
                other,
                AgentConfig::default(),
                publish.clone(),
                sleep
            )
            .is_none()
    );
    let mine = RelayRequest {
        id: 2,
        elected: ViewId::from("me"),
        request: "q".to_string(),
    };
    let call = agent
        .on_request(
            Arc::clone(&service),
            mine.clone(),
            AgentConfig::default(),
            publish.clone(),
            sleep,
        )
        .expect("named: acts");
    assert!(
        agent
            .on_request(
                Arc::clone(&service),
                mine,
                AgentConfig::default(),
                publish,
                sleep
            )
            .is_none(),
        "not twice"
    );
    let task = tokio::spawn(call);
    assert!(matches!(
        rx.recv().await,
        Some(RelayResponse::Delta { id: 2, .. })
    ));
    agent.stop_all();
    task.await.expect("the call ends when stopped");
    assert!(
        dropped.load(Ordering::SeqCst),
        "the upstream stream was dropped (call cancelled)"
    );
    assert_eq!(agent.active().count(), 0);
}

/// Says where it is in a queue (repeating itself, as a heartbeat would), then answers.
struct Queued;

impl RelayService<String> for Queued {
    fn call(&self, _: String) -> BoxFut<Result<TextStream, String>> {
        Box::pin(async move {
            let items = ["2 ahead", "2 ahead", "1 ahead", ""]
                .into_iter()
                .map(|s| Ok(Progress::Status(s.to_string())))
                .chain([Ok(Progress::Text("hi".to_string()))]);
            Ok(futures_util::stream::iter(items).boxed())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn status_changes_are_published_once_each_before_the_answer() {
    let mut out = Vec::new();
    serve_request(
        &Queued,
        7,
        "q".to_string(),
        AgentConfig::default(),
        |r| out.push(r),
        sleep,
    )
    .await;
    let status = |s: &str| RelayResponse::Status {
        id: 7,
        status: s.to_string(),
    };
    assert_eq!(
        out,
        [
            status("2 ahead"),
            status("1 ahead"),
            status(""),
            RelayResponse::Delta {
                id: 7,
                text: "hi".to_string()
            },
            RelayResponse::Done { id: 7 },
        ]
    );
}
