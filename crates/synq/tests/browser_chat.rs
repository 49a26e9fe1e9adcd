//! The chat web app in a real browser (Debian's headless Chromium, driven by
//! playwright-core from `interop/browser/*.mjs`) against the real `synq serve`, whose AI
//! gateway forwards to a real HTTP upstream speaking the OpenAI streaming API. Between the
//! script's steps these tests check what reached the upstream.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use synq_ai::testing::{FAKE_MODEL, FakeUpstream, Reply, within};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const PATIENCE: Duration = Duration::from_secs(180);

/// One Chromium at a time: on a small machine two of them (and their servers) starve
/// each other into timeouts.
static CHROMIUM: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `synq serve` with its AI gateway forwarding to `upstream`.
fn serve(dir: &Path, upstream: &FakeUpstream) -> common::Serve {
    common::serve(
        dir,
        &["--ai-url", &upstream.base_url, "--ai-model", FAKE_MODEL],
    )
}

/// A browser script (`interop/browser/NAME`) running against `base`.
struct Script {
    node: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    result: Option<Value>,
}

impl Script {
    fn start(name: &str, base: &str) -> Script {
        let root = root();
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            Path::new(&chromium).exists(),
            "Chromium is needed at {chromium} (scripts/test.sh installs Debian's `chromium`)"
        );
        assert!(
            root.join("interop/browser/node_modules/playwright-core")
                .exists(),
            "run `npm ci` in interop/browser (scripts/test.sh does)"
        );
        let mut node = Command::new("node")
            .arg(root.join("interop/browser").join(name))
            .arg(base)
            .arg(root.join("test-artifacts"))
            .env("CHROMIUM", &chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let stdin = node.stdin.take().expect("stdin");
        let lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
        Script {
            node,
            stdin,
            lines,
            result: None,
        }
    }

    /// The next step the script reached, or `None` once it has ended.
    async fn next_step(&mut self) -> Option<String> {
        while let Some(line) = self.lines.next_line().await.expect("read node") {
            println!("browser: {line}");
            if let Some(step) = line.strip_prefix("STEP ") {
                return Some(step.to_owned());
            }
            if let Some(json) = line.strip_prefix("RESULT ") {
                self.result = Some(serde_json::from_str(json).expect("json"));
            }
        }
        None
    }

    /// Lets the script go on after a step.
    async fn go_on(&mut self) {
        self.stdin.write_all(b"ok\n").await.expect("answer node");
    }

    /// Waits for the script's end; returns its result.
    async fn finish(mut self) -> Value {
        let status = self.node.wait().await.expect("node exit");
        assert!(
            status.success(),
            "the browser script failed (see its output above)"
        );
        self.result.take().expect("the script reported its result")
    }
}

/// What of the prompts' messages is text.
fn contents(request: &Value) -> Vec<String> {
    request["messages"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["content"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_chat_with_each_other_and_the_ai_exactly_once_with_failover() {
    let _one_browser = CHROMIUM.lock().await;
    let upstream = FakeUpstream::start().await;
    upstream.script([
        Reply::text(&["Hello", " from the AI."]),
        // Streams "Partial", then hangs until the elected page is gone.
        Reply::gated(&["Partial", " never", " finished"]),
    ]);
    upstream.set_default(Reply::text(&["The", " restarted", " answer."]));
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &upstream);

    let mut script = Script::start("chat.mjs", &server.base);
    let run = async {
        while let Some(step) = script.next_step().await {
            let expected = match step.as_str() {
                "answered" => 1,
                "streaming" => 2,
                "failed-over" => {
                    // The closed page's call was dropped, upstream too.
                    within(upstream.wait_disconnects(1)).await;
                    3
                }
                other => panic!("unknown step {other}"),
            };
            assert_eq!(
                upstream.request_count(),
                expected,
                "upstream requests at step {step}"
            );
            script.go_on().await;
        }
    };
    tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the browser test finished in time");
    let result = script.finish().await;
    assert_eq!(
        upstream.request_count(),
        4,
        "one request per post, plus one restart"
    );
    assert!(
        root().join("test-artifacts/chat.png").exists(),
        "a screenshot was saved"
    );
    println!("page load to synced: {} ms", result["synced_ms"]);
}

/// Two people in a room use the page's controls; each step checks the upstream: the
/// instructions reach the prompt, the AI off sends nothing, Stop drops the call, Again
/// asks the same question again, a reply to a person is not for the AI and a reply to
/// the AI's answer is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_share_the_ai_controls() {
    let _one_browser = CHROMIUM.lock().await;
    let upstream = FakeUpstream::start().await;
    upstream.script([
        Reply::text(&["Arr,", " under the palm tree."]),
        Reply::text(&["Answered because", " the mode is always."]),
        // Streams "Once upon", then waits (for a release that never comes).
        Reply::gated(&["Once upon", " a time", " there was"]),
        Reply::text(&["The story,", " told again."]),
        Reply::text(&["They lived", " happily ever after."]),
    ]);
    upstream.set_default(Reply::status(500, "no more requests were expected"));
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &upstream);

    let mut script = Script::start("controls.mjs", &server.base);
    let run = async {
        while let Some(step) = script.next_step().await {
            let requests = upstream.requests();
            match step.as_str() {
                "instructions" => {
                    assert_eq!(requests.len(), 1, "one question so far");
                    let prompt = contents(&requests[0]).join("\n");
                    assert!(
                        prompt.contains("Always answer like a pirate."),
                        "the room's instructions are in the prompt: {prompt}"
                    );
                }
                "off" => assert_eq!(requests.len(), 1, "nothing was sent while the AI is off"),
                "always" => assert_eq!(requests.len(), 2, "an unaddressed post was answered"),
                "stopped" => {
                    assert_eq!(requests.len(), 3, "the story was asked for");
                    // Stop cancels the call: the page drops it, and the gateway its
                    // upstream request.
                    within(upstream.wait_disconnects(1)).await;
                }
                "again" => {
                    assert_eq!(requests.len(), 4, "Again asked once more");
                    assert_eq!(
                        requests[3]["messages"], requests[2]["messages"],
                        "Again asks the same question"
                    );
                    // The first answer is the likeliest (greedy); Again draws another.
                    let temperature = |r: &serde_json::Value| r["temperature"].as_f64();
                    assert_eq!(temperature(&requests[2]), Some(0.0), "{}", requests[2]);
                    assert!(
                        temperature(&requests[3]).is_some_and(|t| (t - 0.7).abs() < 1e-3),
                        "{}",
                        requests[3]
                    );
                    assert!(
                        contents(&requests[3])
                            .iter()
                            .any(|c| c.contains("tell me a long story")),
                        "{:?}",
                        contents(&requests[3])
                    );
                }
                "replied" => assert_eq!(requests.len(), 4, "a reply to a person is for people"),
                "replied-to-ai" => {
                    assert_eq!(
                        requests.len(),
                        5,
                        "the reply to the answer was put to the AI"
                    );
                    let prompt = contents(&requests[4]);
                    assert!(
                        prompt
                            .last()
                            .is_some_and(|p| p.contains("and then what happened?")),
                        "{prompt:?}"
                    );
                }
                other => panic!("unknown step {other}"),
            }
            script.go_on().await;
        }
    };
    tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the browser test finished in time");
    script.finish().await;
    assert_eq!(
        upstream.request_count(),
        5,
        "no request after the reply's answer"
    );
    assert_eq!(
        upstream.disconnect_count(),
        1,
        "only the stopped call was dropped"
    );
}

/// Past 100 entries the oldest go to the room's archive; "Load earlier messages" brings
/// them back above the history, for the page that posted them and for one that joins
/// later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_loads_earlier_messages_from_the_archive() {
    let _one_browser = CHROMIUM.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::serve(dir.path(), &["--no-ai"]);
    let mut script = Script::start("earlier.mjs", &server.base);
    let run = async {
        if let Some(step) = script.next_step().await {
            panic!("unexpected step {step}");
        }
        script.finish().await
    };
    let result = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the browser script finished in time");
    assert!(result["screenshot"].is_string());
}
