//! Interop with the real Croquet client: `@croquet/croquet` 2.0.4 (its Node build, from npm)
//! joins `synq serve` through `box`. The scenario lives in `interop/croquet/harness.mjs`
//! (see that folder's README); this test starts the real `synq` binary on a free port with a
//! small `--snapshot-request-at`, runs the harness against it and asserts it succeeded. The
//! persistence scenario (`persist.mjs`: data saved by one code version of an app reaches the
//! next version's session) runs in two phases with a restart of `synq serve` between them.
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
    collect_lines(stream).0
}

/// Like [`collect`], and also hands every line to the returned receiver as it comes.
fn collect_lines(
    stream: impl Read + Send + 'static,
) -> (Arc<Mutex<String>>, mpsc::Receiver<String>) {
    let buf = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
            b.lock().unwrap().push_str(&line);
            let _ = tx.send(std::mem::take(&mut line));
        }
    });
    (buf, rx)
}

/// A running `synq serve`, killed when dropped.
struct Server {
    _child: KillOnDrop,
    /// `http://127.0.0.1:PORT`
    base: String,
    log: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
}

impl Server {
    /// Starts the real `synq` binary on `listen` with `data_dir` and `extra` arguments, and
    /// waits for its listening line.
    fn start(data_dir: &Path, listen: &str, extra: &[&str]) -> Server {
        let mut server = Command::new(env!("CARGO_BIN_EXE_synq"));
        server
            .args(["serve", "--listen", listen, "--no-ai", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = KillOnDrop(server.spawn().expect("start synq serve"));
        let (log, lines) = collect_lines(child.0.stderr.take().unwrap());
        let (tx, rx) = mpsc::channel();
        let stdout = child.0.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("synq: listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url.trim_end_matches('/').to_string(),
            Err(_) => panic!(
                "synq serve did not print its listening line within 30 s; its log:\n{}",
                log.lock().unwrap()
            ),
        };
        Server {
            _child: child,
            base,
            log,
            lines,
        }
    }

    /// What a Croquet app passes as `box`.
    fn box_url(&self) -> String {
        format!("{}/", self.base)
    }

    /// Waits until the server logs a line containing `text`.
    fn wait_for_log(&self, text: &str, within: Duration) -> bool {
        let until = Instant::now() + within;
        if self.log.lock().unwrap().contains(text) {
            return true;
        }
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }
}

/// Runs `node <script> <args>` in `dir` (bounded to `timeout_s` + 30 s) and returns whether
/// it succeeded (exit 0 and a last stdout line `{"ok":true,…}`), that line, and its stderr.
fn run_node(dir: &Path, script: &str, args: &[String], timeout_s: u64) -> (bool, String, String) {
    let started = Instant::now();
    let mut node = Command::new("node");
    node.current_dir(dir)
        .arg(dir.join(script))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut node = KillOnDrop(node.spawn().expect("start node"));
    let out = collect(node.0.stdout.take().unwrap());
    let err = collect(node.0.stderr.take().unwrap());
    let limit = Duration::from_secs(timeout_s + 30);
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
    (ok, summary_line, stderr)
}

/// The interop folder, after checking that Node and the real client are there.
fn interop_dir() -> PathBuf {
    let interop = repo_root().join("interop/croquet");
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
    interop
}

#[test]
fn real_croquet_clients_agree_through_synq() {
    let interop = interop_dir();
    // synq serve on a free port, with snapshots requested early
    let data_dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(
        data_dir.path(),
        "127.0.0.1:0",
        &["--snapshot-request-at", "20"],
    );
    // the harness: REQU from synq must cause the snapshot (no forcing), and must have been sent
    let args = [
        server.box_url(),
        "--timeout".into(),
        HARNESS_TIMEOUT_S.to_string(),
        "--snapshot".into(),
        "requ".into(),
        "--expect-requ".into(),
    ];
    let (ok, summary_line, stderr) = run_node(&interop, "harness.mjs", &args, HARNESS_TIMEOUT_S);
    if !ok {
        panic!(
            "Croquet interop failed.\n===== harness summary =====\n{summary_line}\n\
             ===== harness stderr =====\n{stderr}\n===== synq serve log =====\n{}",
            server.log.lock().unwrap()
        );
    }
    eprintln!("{stderr}");
    println!("croquet interop: {summary_line}");
}

/// `persistSession` with the real client: the data version 1 of an app saved is handed to
/// version 2's session (another session id: its code differs) in SYNC, also to a second
/// joiner before any snapshot, and across a restart of `synq serve` with the same data dir.
#[test]
fn real_croquet_persisted_data_reaches_the_next_app_version_through_synq() {
    let interop = interop_dir();
    let data_dir = tempfile::tempdir().expect("temp dir");
    let state = data_dir.path().join("persist-v1.json");
    let v1_server = Server::start(data_dir.path(), "127.0.0.1:0", &[]);
    let phase = |server: &Server, phase: &str| {
        let args = [
            server.box_url(),
            "--phase".into(),
            phase.into(),
            "--state".into(),
            state.display().to_string(),
            "--timeout".into(),
            HARNESS_TIMEOUT_S.to_string(),
        ];
        let (ok, summary_line, stderr) =
            run_node(&interop, "persist.mjs", &args, HARNESS_TIMEOUT_S);
        if !ok {
            panic!(
                "Croquet persistence interop ({phase}) failed.\n===== summary =====\n{summary_line}\n\
                 ===== persist.mjs stderr =====\n{stderr}\n===== synq serve log =====\n{}",
                server.log.lock().unwrap()
            );
        }
        eprintln!("{stderr}");
        println!("croquet persistence interop ({phase}): {summary_line}");
    };
    phase(&v1_server, "v1");
    // The SAVE may still be on its way when the clients have left: wait for the reflector
    // to record it before restarting.
    assert!(
        v1_server.wait_for_log("persistent data registered", Duration::from_secs(10)),
        "synq serve did not record version 1's SAVE; its log:\n{}",
        v1_server.log.lock().unwrap()
    );
    let recorded: Vec<String> = std::fs::read_dir(data_dir.path().join("persistent"))
        .expect("the persistent data directory")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect();
    let expected_prefix = format!("{}files/apps/io.synq.interop.persist/", v1_server.box_url());
    assert!(
        matches!(&recorded[..], [url] if url.starts_with(&expected_prefix) && url.contains("/save/")),
        "recorded persistent data {recorded:?}, expected one url under {expected_prefix}"
    );

    // A restart on the same address (the saved url names it) with the same data dir.
    let listen = v1_server.base.trim_start_matches("http://").to_string();
    drop(v1_server);
    let v2_server = Server::start(data_dir.path(), &listen, &[]);
    phase(&v2_server, "v2");
}
