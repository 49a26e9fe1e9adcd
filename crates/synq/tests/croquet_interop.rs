//! Interop with the real Croquet client: `@croquet/croquet` 2.0.4 (its Node build, from npm)
//! joins `synq serve` through `box`. The scenario lives in `interop/croquet/harness.mjs`
//! (see that folder's README); this test starts the real `synq` binary on a free port with a
//! small `--snapshot-request-at`, runs the harness against it and asserts it succeeded.
//!
//! Needs Node.js and `npm ci --ignore-scripts` in `interop/croquet` (scripts/test.sh does it).

// Not model code: a test of the synq binary, which measures and waits on wall-clock time
// (clippy.toml's determinism rules are for model code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The harness bounds itself to this many seconds (and kills its clients).
const HARNESS_TIMEOUT_S: u64 = 60;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// Collects everything a child writes to a pipe, in a background thread.
fn collect(stream: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            b.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    buf
}

#[test]
fn real_croquet_clients_agree_through_synq() {
    let root = repo_root();
    let interop = root.join("interop/croquet");
    assert!(
        interop.join("node_modules/@croquet/croquet").is_dir(),
        "{}/node_modules is missing: run `npm ci --ignore-scripts` in {} (scripts/test.sh does this) \
         — the Croquet interop test cannot run without the real client",
        interop.display(),
        interop.display()
    );
    let node_ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        node_ok,
        "`node` (Node.js >= 18) is not on PATH: the Croquet interop test needs it"
    );

    // synq serve on a free port, with snapshots requested early
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut server = Command::new(env!("CARGO_BIN_EXE_synq"));
    server
        .args(["serve", "--listen", "127.0.0.1:0", "--no-ai", "--data-dir"])
        .arg(data_dir.path())
        .args(["--snapshot-request-at", "20"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut server = KillOnDrop(server.spawn().expect("start synq serve"));
    let server_log = collect(server.0.stderr.take().unwrap());

    // the listening line, read with a deadline
    let (tx, rx) = mpsc::channel();
    let stdout = server.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("synq: listening on ") {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let base = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(url) => url,
        Err(_) => panic!(
            "synq serve did not print its listening line within 30 s; its log:\n{}",
            server_log.lock().unwrap()
        ),
    };
    let box_url = format!("{}/", base.trim_end_matches('/'));

    // the harness: REQU from synq must cause the snapshot (no forcing), and must have been sent
    let started = Instant::now();
    let mut node = Command::new("node");
    node.current_dir(&interop)
        .arg(interop.join("harness.mjs"))
        .arg(&box_url)
        .args(["--timeout", &HARNESS_TIMEOUT_S.to_string()])
        .args(["--snapshot", "requ", "--expect-requ"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut node = KillOnDrop(node.spawn().expect("start node harness.mjs"));
    let out = collect(node.0.stdout.take().unwrap());
    let err = collect(node.0.stderr.take().unwrap());
    let limit = Duration::from_secs(HARNESS_TIMEOUT_S + 30);
    let status = loop {
        if let Some(status) = node.0.try_wait().expect("wait for node") {
            break Some(status);
        }
        if started.elapsed() > limit {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // give the output threads a moment to drain the pipes after exit
    let drain_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < drain_until && !out.lock().unwrap().ends_with('\n') {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stdout = out.lock().unwrap().clone();
    let stderr = err.lock().unwrap().clone();
    let summary_line = stdout.lines().last().unwrap_or("").to_string();
    let summary: Option<serde_json::Value> = serde_json::from_str(&summary_line).ok();
    let ok = status.is_some_and(|s| s.success())
        && summary.as_ref().and_then(|s| s["ok"].as_bool()) == Some(true);
    if !ok {
        panic!(
            "Croquet interop failed (exit: {status:?}).\n===== harness summary =====\n{summary_line}\n\
             ===== harness stderr =====\n{stderr}\n===== synq serve log =====\n{}",
            server_log.lock().unwrap()
        );
    }
    eprintln!("{stderr}");
    println!("croquet interop: {summary_line}");
}
