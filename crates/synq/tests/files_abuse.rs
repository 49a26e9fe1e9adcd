//! Attacks on the file store (`/files/…`) against the real `synq serve`: uploads that name
//! no session, racing uploads to one key, quotas, oversized and stalled uploads, foreign
//! web origins, and files that would run as pages or scripts of the server's origin.

use std::time::Duration;

mod common;

use common::{open_app_session, open_session, serve};
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PATIENCE: Duration = Duration::from_secs(20);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .expect("client")
}

async fn put(base: &str, path: &str, body: Vec<u8>, origin: Option<&str>) -> StatusCode {
    let mut req = client().put(format!("{base}/files/{path}")).body(body);
    if let Some(o) = origin {
        req = req.header("Origin", o);
    }
    req.send().await.expect("PUT").status()
}

#[tokio::test]
async fn uploads_must_name_a_session_of_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &["--no-ai"]);
    let base = &server.base;
    for path in [
        "snapshots/nosuchsession/0000000001_1-h.snap",
        "free-hosting.bin",
        "apps/com.example/snap/code/pid.nosuchsession/0000000001_1.h",
        "apps/com.example/nosuchpid/save/h",
    ] {
        assert_eq!(
            put(base, path, b"x".to_vec(), None).await,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
    let _ws = open_session(server.addr, "filesession").await;
    assert_eq!(
        put(
            base,
            "snapshots/filesession/0000000001_1-h.snap",
            b"snap".to_vec(),
            None
        )
        .await,
        StatusCode::CREATED
    );
    // Croquet with an apiKey, and persisted data of the session's app ("t", no persistentId
    // in this JOIN: refused).
    assert_eq!(
        put(
            base,
            "apps/t/snap/code/pid.filesession/0000000001_1.h",
            b"s".to_vec(),
            None
        )
        .await,
        StatusCode::CREATED
    );
    assert_eq!(
        files_in(&dir.path().join("files")),
        2,
        "only the two accepted uploads are stored"
    );
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
async fn persisted_data_goes_to_the_app_and_persistent_id_of_a_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &["--no-ai"]);
    let _ws = open_app_session(server.addr, "persisting", "com.example.app", Some("pid1")).await;
    for path in [
        "apps/com.example.app/pid1/save/h1",
        "apps/com.example.app/pid1/data/h2",
    ] {
        assert_eq!(
            put(&server.base, path, b"data".to_vec(), None).await,
            StatusCode::CREATED,
            "{path}"
        );
    }
    for path in [
        "apps/com.example.app/otherpid/save/h1",
        "apps/other.app/pid1/save/h1",
    ] {
        assert_eq!(
            put(&server.base, path, b"data".to_vec(), None).await,
            StatusCode::FORBIDDEN,
            "{path}"
        );
    }
}

#[tokio::test]
async fn downloads_cannot_run_as_pages_or_scripts_of_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &["--no-ai"]);
    let _ws = open_session(server.addr, "scripts").await;
    let path = "snapshots/scripts/evil.js";
    let js = b"alert(document.cookie)".to_vec();
    assert_eq!(
        put(&server.base, path, js.clone(), None).await,
        StatusCode::CREATED
    );
    let res = client()
        .get(format!("{}/files/{path}", server.base))
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers().clone();
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(
        h["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("sandbox")
    );
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(res.bytes().await.expect("body").as_ref(), js.as_slice());
}

#[tokio::test]
async fn of_concurrent_different_uploads_to_one_key_exactly_one_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &["--no-ai"]);
    let _ws = open_session(server.addr, "race").await;
    let path = "snapshots/race/0000000001_1-h.snap";
    const N: u8 = 8;
    let uploads = (0..N).map(|k| {
        let base = server.base.clone();
        tokio::spawn(async move { put(&base, path, vec![k; 1 << 20], None).await })
    });
    let mut statuses = Vec::new();
    for u in uploads {
        statuses.push(u.await.expect("task"));
    }
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let conflicts = statuses
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count();
    assert_eq!((created, conflicts), (1, N as usize - 1), "{statuses:?}");
    let stored = client()
        .get(format!("{}/files/{path}", server.base))
        .send()
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("body");
    assert_eq!(stored.len(), 1 << 20);
    assert!(
        stored.iter().all(|b| *b == stored[0]),
        "the stored file is one of the uploads, whole"
    );
    assert_eq!(
        put(&server.base, path, vec![stored[0]; 1 << 20], None).await,
        StatusCode::OK,
        "the same content again is fine"
    );
}

#[tokio::test]
async fn the_store_quota_counts_files_from_earlier_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let args = ["--no-ai", "--max-store-bytes", "1000000"];
    {
        let server = serve(dir.path(), &args);
        let _ws = open_session(server.addr, "quota").await;
        assert_eq!(
            put(&server.base, "snapshots/quota/a", vec![1; 600_000], None).await,
            StatusCode::CREATED
        );
        assert_eq!(
            put(&server.base, "snapshots/quota/b", vec![2; 600_000], None).await,
            StatusCode::INSUFFICIENT_STORAGE
        );
    }
    let server = serve(dir.path(), &args);
    let _ws = open_session(server.addr, "quota").await;
    assert_eq!(
        put(&server.base, "snapshots/quota/c", vec![3; 600_000], None).await,
        StatusCode::INSUFFICIENT_STORAGE,
        "after a restart the stored files still count"
    );
    assert_eq!(
        put(&server.base, "snapshots/quota/d", vec![4; 300_000], None).await,
        StatusCode::CREATED
    );
    let res = client()
        .get(format!("{}/files/snapshots/quota/b", server.base))
        .send()
        .await
        .expect("GET");
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "nothing of a refused upload is kept"
    );
}

#[tokio::test]
async fn one_address_cannot_upload_past_its_quota() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &["--no-ai", "--upload-quota-bytes", "1000000"]);
    let _ws = open_session(server.addr, "addrquota").await;
    assert_eq!(
        put(
            &server.base,
            "snapshots/addrquota/a",
            vec![1; 600_000],
            None
        )
        .await,
        StatusCode::CREATED
    );
    let res = client()
        .put(format!("{}/files/snapshots/addrquota/b", server.base))
        .body(vec![2; 600_000])
        .send()
        .await
        .expect("PUT");
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn oversized_uploads_without_a_length_are_cut_off_and_leave_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &["--no-ai", "--max-file-bytes", "1000000"]);
    let _ws = open_session(server.addr, "big").await;
    // Chunked, so the server only finds out while streaming.
    let chunks = (0..40).map(|_| Ok::<_, std::io::Error>(vec![7u8; 64 * 1024]));
    let res = client()
        .put(format!("{}/files/snapshots/big/f", server.base))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    // The server answers 413 as soon as the cap is passed; the client may still be
    // sending and see the connection close instead.
    if let Ok(res) = res {
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    let res = client()
        .get(format!("{}/files/snapshots/big/f", server.base))
        .send()
        .await
        .expect("GET");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_stalled_upload_is_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &["--no-ai", "--upload-body-timeout-secs", "1"]);
    let _ws = open_session(server.addr, "stall").await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    tcp.write_all(
        b"PUT /files/snapshots/stall/f HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n0123456789",
    )
    .await
    .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer))
        .await
        .expect("the server gives up on the upload");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test]
async fn uploads_from_foreign_web_pages_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(
        dir.path(),
        &["--no-ai", "--allowed-origin", "https://app.example.com"],
    );
    let _ws = open_session(server.addr, "origins").await;
    let own = server.base.clone();
    assert_eq!(
        put(
            &server.base,
            "snapshots/origins/a",
            b"a".to_vec(),
            Some("https://evil.example")
        )
        .await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        put(
            &server.base,
            "snapshots/origins/a",
            b"a".to_vec(),
            Some(&own)
        )
        .await,
        StatusCode::CREATED
    );
    assert_eq!(
        put(
            &server.base,
            "snapshots/origins/b",
            b"b".to_vec(),
            Some("https://app.example.com")
        )
        .await,
        StatusCode::CREATED
    );
    assert_eq!(
        put(&server.base, "snapshots/origins/c", b"c".to_vec(), None).await,
        StatusCode::CREATED,
        "native clients send no Origin"
    );
    // A browser asks first; a foreign page gets no CORS approval and never sends the PUT.
    let res = client()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/files/snapshots/origins/d", server.base),
        )
        .header("Origin", "https://evil.example")
        .header("Access-Control-Request-Method", "PUT")
        .send()
        .await
        .expect("OPTIONS");
    assert!(!res.headers().contains_key("access-control-allow-origin"));
    let res = client()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/files/snapshots/origins/d", server.base),
        )
        .header("Origin", "https://app.example.com")
        .header("Access-Control-Request-Method", "PUT")
        .send()
        .await
        .expect("OPTIONS");
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
}
