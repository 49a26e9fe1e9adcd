//! The chat web app in a real browser (Debian's headless Chromium, driven by
//! playwright-core from `interop/browser/chat.mjs`) against the real `synq serve`, whose AI
//! gateway forwards to a real HTTP upstream speaking the OpenAI streaming API. Between the
//! script's steps this test checks how many requests reached the upstream.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use synq_ai::testing::{FAKE_MODEL, FakeUpstream, Reply};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const PATIENCE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_chat_with_each_other_and_the_ai_exactly_once_with_failover() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
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

    let upstream = FakeUpstream::start().await;
    upstream.script([
        Reply::text(&["Hello", " from the AI."]),
        // Streams "Partial", then hangs until the elected page is gone.
        Reply::gated(&["Partial", " never", " finished"]),
    ]);
    upstream.set_default(Reply::text(&["The", " restarted", " answer."]));

    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Command::new(env!("CARGO_BIN_EXE_synq"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ai-url",
            &upstream.base_url,
            "--ai-model",
            FAKE_MODEL,
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start synq serve");
    let mut out = BufReader::new(server.stdout.take().expect("stdout")).lines();
    let line = out.next_line().await.expect("read").expect("a line");
    let base = line
        .strip_prefix("synq: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

    let shots = root.join("test-artifacts");
    let mut node = Command::new("node")
        .arg(root.join("interop/browser/chat.mjs"))
        .arg(&base)
        .arg(&shots)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut stdin = node.stdin.take().expect("stdin");
    let mut lines = BufReader::new(node.stdout.take().expect("stdout")).lines();
    let mut result = None;
    let run = async {
        while let Some(line) = lines.next_line().await.expect("read node") {
            println!("browser: {line}");
            if let Some(step) = line.strip_prefix("STEP ") {
                let expected = match step {
                    "answered" => 1,
                    "streaming" => 2,
                    "failed-over" => 3,
                    other => panic!("unknown step {other}"),
                };
                assert_eq!(
                    upstream.request_count(),
                    expected,
                    "upstream requests at step {step}"
                );
                stdin.write_all(b"ok\n").await.expect("answer node");
            } else if let Some(json) = line.strip_prefix("RESULT ") {
                result = Some(serde_json::from_str::<serde_json::Value>(json).expect("json"));
            }
        }
    };
    tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the browser test finished in time");
    let status = node.wait().await.expect("node exit");
    assert!(
        status.success(),
        "the browser script failed (see its output above)"
    );
    let result = result.expect("the script reported its result");
    assert_eq!(
        upstream.request_count(),
        4,
        "one request per post, plus one restart"
    );
    assert!(shots.join("chat.png").exists(), "a screenshot was saved");
    println!("page load to synced: {} ms", result["synced_ms"]);
}
