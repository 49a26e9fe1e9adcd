//! Connection-level attacks against the real `synq serve`: slowloris (connections that
//! never finish their headers), idle connections, connection floods from one address or
//! from many, downloads that are never read, and WebSocket upgrades and uploads from
//! foreign pages and DNS-rebinding pages.

use std::net::SocketAddr;
use std::time::Duration;

mod common;

use common::{open_session, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const PATIENCE: Duration = Duration::from_secs(30);

async fn connect_from(addr: SocketAddr, local: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{local}:0").parse().expect("local addr"))
        .expect("bind");
    socket.connect(addr).await.expect("connect")
}

/// Reads until the server closes; everything it sent.
async fn read_until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(PATIENCE, tcp.read(&mut buf))
            .await
            .expect("the server closes the connection in time")
        {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// `GET /healthz` on `tcp`, kept alive; true if it answered `ok`.
async fn healthz_on(tcp: &mut TcpStream) -> bool {
    if tcp
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"ok\n") {
        match tokio::time::timeout(PATIENCE, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    got.starts_with(b"HTTP/1.1 200")
}

async fn healthz_from(addr: SocketAddr, local: &str) -> bool {
    let mut tcp = connect_from(addr, local).await;
    healthz_on(&mut tcp).await
}

/// A connection the server closes without answering anything.
async fn refused(addr: SocketAddr, local: &str) -> bool {
    let mut tcp = connect_from(addr, local).await;
    let _ = tcp
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Retries until `from` gets a `/healthz` answer again (a slot was given back).
async fn served_again(addr: SocketAddr, from: &str) -> bool {
    tokio::time::timeout(PATIENCE, async {
        loop {
            if healthz_from(addr, from).await {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn connections_that_never_finish_their_headers_are_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(
        dir.path(),
        &[
            "--no-ai",
            "--header-timeout-secs",
            "2",
            "--max-connections-per-address",
            "0",
        ],
    );
    let mut held = Vec::new();
    for _ in 0..2000 {
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-A: ")
            .await
            .expect("write half a request");
        held.push(tcp);
    }
    assert!(
        healthz_from(server.addr, "127.0.0.1").await,
        "/healthz answers while 2000 connections hold half a request"
    );
    for tcp in &mut held {
        let answer = read_until_closed(tcp).await;
        assert!(
            !answer.starts_with(b"HTTP/1.1 200"),
            "a half request is never served"
        );
    }
    assert!(healthz_from(server.addr, "127.0.0.1").await);
}

#[tokio::test]
async fn idle_kept_alive_connections_are_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &["--no-ai", "--header-timeout-secs", "1"]);
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    assert!(healthz_on(&mut tcp).await);
    assert!(read_until_closed(&mut tcp).await.is_empty());
}

#[tokio::test]
async fn one_address_cannot_take_more_than_its_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(
        dir.path(),
        &[
            "--no-ai",
            "--max-connections-per-address",
            "3",
            "--header-timeout-secs",
            "60",
        ],
    );
    // WebSockets count: two of them and one kept-alive HTTP connection fill the cap.
    let ws1 = open_session(server.addr, "capped").await;
    let _ws2 = open_session(server.addr, "capped").await;
    let mut held = TcpStream::connect(server.addr).await.expect("connect");
    assert!(healthz_on(&mut held).await);
    assert!(
        refused(server.addr, "127.0.0.1").await,
        "a fourth connection is closed at once"
    );
    assert!(
        healthz_from(server.addr, "127.0.0.2").await,
        "other addresses are still served"
    );
    drop(ws1);
    assert!(
        served_again(server.addr, "127.0.0.1").await,
        "a closed WebSocket gives its slot back"
    );
}

#[tokio::test]
async fn the_global_connection_cap_refuses_extra_connections_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(
        dir.path(),
        &[
            "--no-ai",
            "--max-connections",
            "3",
            "--max-connections-per-address",
            "0",
            "--header-timeout-secs",
            "60",
        ],
    );
    let mut held = Vec::new();
    for from in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        let mut tcp = connect_from(server.addr, from).await;
        assert!(healthz_on(&mut tcp).await);
        held.push(tcp);
    }
    assert!(refused(server.addr, "127.0.0.4").await);
    held.pop();
    assert!(served_again(server.addr, "127.0.0.4").await);
}

#[tokio::test]
async fn a_download_that_is_never_read_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &["--no-ai", "--http-write-timeout-secs", "1"]);
    let _ws = open_session(server.addr, "unread").await;
    const SIZE: usize = 48 << 20;
    let status = reqwest::Client::new()
        .put(format!("{}/files/snapshots/unread/big", server.base))
        .body(vec![9u8; SIZE])
        .send()
        .await
        .expect("PUT")
        .status();
    assert_eq!(status, 201);
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut tcp = socket.connect(server.addr).await.expect("connect");
    tcp.write_all(b"GET /files/snapshots/unread/big HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("request");
    // Nothing to wait for: the client is the one not reading. Give the server several
    // write timeouts to notice, then read what is left.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let got = read_until_closed(&mut tcp).await;
    assert!(
        got.len() < SIZE,
        "the server gave up on the reader ({} of {SIZE} bytes came)",
        got.len()
    );
}

async fn ws_status(addr: SocketAddr, origin: Option<&str>) -> u16 {
    ws_answer(addr, None, origin).await.0
}

/// The status and body of a WebSocket upgrade that names `host` (default: the address
/// connected to) and comes from `origin`.
async fn ws_answer(addr: SocketAddr, host: Option<&str>, origin: Option<&str>) -> (u16, String) {
    let mut req = format!("ws://{addr}/reflector/origincheck")
        .into_client_request()
        .expect("request");
    if let Some(h) = host {
        req.headers_mut()
            .insert("Host", h.parse().expect("header value"));
    }
    if let Some(o) = origin {
        req.headers_mut()
            .insert("Origin", o.parse().expect("header value"));
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((_, res)) => (res.status().as_u16(), String::new()),
        Err(tungstenite::Error::Http(res)) => {
            let body = String::from_utf8_lossy(res.body().as_deref().unwrap_or_default());
            (res.status().as_u16(), body.into_owned())
        }
        Err(e) => panic!("WebSocket connect failed: {e}"),
    }
}

/// DNS rebinding: a page at `http://evil.example:PORT` whose name the attacker made
/// resolve to this server. For the browser the server is then the page's own origin
/// (`Origin` and `Host` agree), so only the host name gives it away.
#[tokio::test]
async fn dns_rebinding_pages_cannot_open_websockets_or_upload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(
        dir.path(),
        &["--no-ai", "--allowed-host", "chat.example.org"],
    );
    let port = server.addr.port();
    let evil = format!("evil.example:{port}");
    let evil_origin = format!("http://{evil}");
    let (status, body) = ws_answer(server.addr, Some(&evil), Some(&evil_origin)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--allowed-host"), "{body}");
    // Without Origin too (as the AI gateway): a client that names a host this server is
    // not has been pointed at it by someone else's DNS.
    assert_eq!(ws_answer(server.addr, Some(&evil), None).await.0, 403);

    // The page's own origin, localhost, clients without Origin, and the listed name (as
    // a reverse proxy passes it on) still connect.
    assert_eq!(ws_status(server.addr, Some(&server.base)).await, 101);
    let local = format!("localhost:{port}");
    let local_origin = format!("http://{local}");
    assert_eq!(
        ws_answer(server.addr, Some(&local), Some(&local_origin))
            .await
            .0,
        101
    );
    assert_eq!(ws_status(server.addr, None).await, 101, "native client");
    assert_eq!(
        ws_answer(
            server.addr,
            Some("chat.example.org"),
            Some("https://chat.example.org")
        )
        .await
        .0,
        101,
        "listed with --allowed-host"
    );

    // Uploads: the same.
    let _ws = open_session(server.addr, "rebinding").await;
    let http = reqwest::Client::new();
    let put = |name: &str, host: &str, origin: Option<&str>| {
        let mut req = http
            .put(format!("{}/files/snapshots/rebinding/{name}", server.base))
            .header("Host", host)
            .body(name.to_owned());
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        async move { req.send().await.expect("PUT").status().as_u16() }
    };
    assert_eq!(put("a", &evil, Some(&evil_origin)).await, 403);
    assert_eq!(
        put("b", "chat.example.org", Some("https://chat.example.org")).await,
        201
    );
    assert_eq!(put("c", &local, None).await, 201);

    // One list for the whole server: the AI gateway (here switched off: 503) answers
    // for the listed name and refuses the other.
    let ai = |host: &str| {
        let req = http
            .get(format!("{}/ai/v1/models", server.base))
            .header("Host", host);
        async move { req.send().await.expect("GET").status().as_u16() }
    };
    assert_eq!(ai(&evil).await, 403);
    assert_eq!(ai("chat.example.org").await, 503);
}

#[tokio::test]
async fn websockets_from_foreign_web_pages_are_refused_before_upgrading() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(
        dir.path(),
        &["--no-ai", "--allowed-origin", "https://app.example.com"],
    );
    assert_eq!(
        ws_status(server.addr, Some("https://evil.example")).await,
        403
    );
    assert_eq!(ws_status(server.addr, Some("null")).await, 403);
    assert_eq!(
        ws_status(server.addr, Some(&server.base)).await,
        101,
        "same origin"
    );
    assert_eq!(ws_status(server.addr, None).await, 101, "native client");
    assert_eq!(
        ws_status(server.addr, Some("https://app.example.com")).await,
        101,
        "allow-listed"
    );
}
