//! Interop with the browser build of `@multisynq/client` 1.1.0 (from npm): a small counter
//! app of ours (`interop/multisynq/counter.mjs`) in Debian's headless Chromium, two browser
//! contexts in one session through `synq serve` as Multisynq's `box`, each seeing the
//! other's increments in one agreed order.
//!
//! Needs Node.js, Chromium, and `npm ci --ignore-scripts` in `interop/multisynq` and
//! `interop/browser` (playwright-core); scripts/test.sh does all of it.

// Not model code: a test of the synq binary, which waits on wall-clock time.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// counter.mjs waits at most 30 s for any one thing; the whole run takes a few seconds.
const PATIENCE: Duration = Duration::from_secs(120);

#[test]
fn two_browsers_with_multisynq_share_a_counter_through_synq() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "Chromium is needed at {chromium} (scripts/test.sh installs Debian's `chromium`)"
    );
    for (dir, package) in [
        ("interop/multisynq", "@multisynq/client"),
        ("interop/browser", "playwright-core"),
    ] {
        assert!(
            root.join(dir).join("node_modules").join(package).exists(),
            "run `npm ci --ignore-scripts` in {dir} (scripts/test.sh does)"
        );
    }
    let data_dir = tempfile::tempdir().expect("temp dir");
    let server = common::serve(data_dir.path(), &["--no-ai"]);

    let started = Instant::now();
    let mut node = Command::new("node")
        .arg(root.join("interop/multisynq/counter.mjs"))
        .arg(&server.base)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start node counter.mjs");
    // Read both pipes to their end (the script exits, or is killed at the deadline).
    let mut stdout = node.stdout.take().expect("stdout");
    let mut stderr = node.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = node.try_wait().expect("wait for node") {
            break Some(status);
        }
        if started.elapsed() > PATIENCE {
            let _ = node.kill();
            let _ = node.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    let summary: Option<serde_json::Value> = out
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok());
    let ok = status.is_some_and(|s| s.success())
        && summary.as_ref().and_then(|s| s["ok"].as_bool()) == Some(true);
    assert!(
        ok,
        "Multisynq browser interop failed (exit: {status:?}).\n===== stdout =====\n{out}\n===== stderr =====\n{err}"
    );
    assert_eq!(
        summary.and_then(|s| s["count"].as_u64()),
        Some(20),
        "both pages' increments"
    );
    println!("multisynq browser interop: {}", out.trim());
}
