//! `synq serve --files-store`: two real nodes with their own data dirs and one shared
//! store (a `file://` directory, through object_store as S3, GCS or Azure would be) serve
//! the same files, and a node restarted with an empty disk still serves them.

use std::time::Duration;

mod common;

use common::{open_session, serve};
use reqwest::StatusCode;

const PATIENCE: Duration = Duration::from_secs(20);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .expect("client")
}

async fn put(base: &str, path: &str, body: Vec<u8>) -> StatusCode {
    client()
        .put(format!("{base}/files/{path}"))
        .body(body)
        .send()
        .await
        .expect("PUT")
        .status()
}

async fn get(base: &str, path: &str) -> (StatusCode, Vec<u8>) {
    let res = client()
        .get(format!("{base}/files/{path}"))
        .send()
        .await
        .expect("GET");
    let status = res.status();
    (status, res.bytes().await.expect("body").to_vec())
}

fn files_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => files_in(&e.path()),
                    Ok(t) if t.is_file() => 1,
                    _ => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn nodes_sharing_a_files_store_serve_each_others_files_and_survive_an_empty_disk() {
    let shared = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", shared.path().join("store").display());
    let args = ["--no-ai", "--files-store", url.as_str()];
    let (data_a, data_b, data_c) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = serve(data_a.path(), &args);
    let mut b = serve(data_b.path(), &args);

    // A snapshot of a session node A holds, several chunks long and not all one byte.
    let _ws = open_session(a.addr, "shared").await;
    let path = "snapshots/shared/0000000001_1-h.snap";
    let snapshot: Vec<u8> = (0..300_000u32).map(|k| (k * 7 % 251) as u8).collect();
    assert_eq!(
        put(&a.base, path, snapshot.clone()).await,
        StatusCode::CREATED
    );
    assert_eq!(
        files_in(&data_a.path().join("files")),
        0,
        "the file went to the shared store, not node A's disk"
    );

    let (status, body) = get(&b.base, path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body == snapshot,
        "node B serves node A's upload byte for byte"
    );

    // Write-once holds across nodes: B refuses other bytes under that key.
    let _ws_b = open_session(b.addr, "shared").await;
    assert_eq!(
        put(&b.base, path, b"something else".to_vec()).await,
        StatusCode::CONFLICT
    );
    assert_eq!(put(&b.base, path, snapshot.clone()).await, StatusCode::OK);

    // Node B's disk is lost: a node started on an empty data dir still serves the file.
    drop(_ws_b);
    b.child.kill().expect("kill");
    let _ = b.child.wait();
    let c = serve(data_c.path(), &args);
    let (status, body) = get(&c.base, path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body == snapshot,
        "the restarted node serves it byte for byte"
    );
    assert_eq!(
        get(&c.base, "snapshots/shared/missing").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn an_unusable_files_store_stops_serve_with_a_plain_message() {
    let data = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_synq"))
        .args(["serve", "--no-ai", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .args(["--files-store", "ftp://example.com/files"])
        .output()
        .expect("run synq serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot open the file store --files-store ftp://example.com/files"),
        "{stderr}"
    );
    assert!(stderr.contains("not a supported file store"), "{stderr}");
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "it never listened"
    );
}
