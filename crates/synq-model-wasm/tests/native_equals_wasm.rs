//! The same event log gives the same snapshot hash natively and compiled to wasm32 (run
//! under Node). Needs the `wasm32-unknown-unknown` target and `node` (`.ci/run` and
//! `scripts/test.sh` install both).

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn build_wasm() -> PathBuf {
    let root = workspace();
    // A target dir of its own: the outer `cargo test` holds the lock on the usual one.
    let target = root.join("target/wasm-check");
    let status = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-unknown-unknown",
            "-p",
            "synq-model-wasm",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .status()
        .expect("cargo runs");
    assert!(
        status.success(),
        "building synq-model-wasm for wasm32 failed (is the target installed? `rustup target add wasm32-unknown-unknown`)"
    );
    target.join("wasm32-unknown-unknown/release/synq_model_wasm.wasm")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_same_event_log_gives_the_same_hash_natively_and_in_wasm32() {
    let wasm = build_wasm();
    for (seed, events, views) in [(42u64, 2000u32, 6u32), (7, 20_000, 12)] {
        let native = hex(&synq_model_wasm::run(seed, events, views).expect("native snapshot"));
        let out = Command::new("node")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("run.mjs"))
            .arg(&wasm)
            .args([
                "hash",
                &seed.to_string(),
                &events.to_string(),
                &views.to_string(),
            ])
            .output()
            .expect("node runs (install Node.js: scripts/test.sh does)");
        assert!(
            out.status.success(),
            "node failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
        assert_eq!(
            line["hash"].as_str(),
            Some(native.as_str()),
            "seed {seed}: wasm32 diverged from native"
        );
    }
}
