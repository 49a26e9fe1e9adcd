//! A real reflector on a loopback port and a raw WebSocket client speaking the protocol.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use synq_protocol::server::{LooseFrame as ServerFrame, StreamMessage};
use synq_reflector::{Reflector, ReflectorConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for an event before failing (never a sleep: we wait *for* something).
pub const PATIENCE: Duration = Duration::from_secs(10);

pub struct Server {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub reflector_metrics: std::sync::Arc<synq_reflector::metrics::Metrics>,
}

pub async fn start(tune: impl FnOnce(&mut ReflectorConfig)) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ReflectorConfig::new(dir.path());
    tune(&mut config);
    let reflector = Reflector::new(config).expect("reflector");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let reflector_metrics = reflector.metrics();
    let router = reflector.router();
    tokio::spawn(async move {
        let _ = synq_reflector::serve(listener, router).await;
    });
    Server {
        addr,
        dir,
        reflector_metrics,
    }
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub session: String,
}

/// How a connection ended.
#[derive(Debug, PartialEq)]
pub enum Ended {
    Closed(u16),
    Dropped,
}

impl Client {
    pub async fn connect(server: &Server, session: &str) -> Client {
        Self::connect_path(server, &format!("/reflector/{session}"), session).await
    }

    pub async fn connect_path(server: &Server, path: &str, session: &str) -> Client {
        let url = format!("ws://{}{}", server.addr, path);
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        Client {
            ws,
            session: session.to_owned(),
        }
    }

    pub async fn send_raw(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::Text(text.into().into()))
            .await
            .expect("send");
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_raw(v.to_string()).await;
    }

    pub fn join_args(user: Value, tick: f64) -> Value {
        json!({"name": "test/app", "apiKey": "none", "appId": "test", "version": 1,
               "user": user, "ticks": {"tick": tick, "delay": 0}, "tove": "TOVE", "leaveDelay": 300})
    }

    /// JOIN and return the SYNC.
    pub async fn join_with(&mut self, args: Value) -> ServerFrame {
        let id = self.session.clone();
        self.send_json(json!({"id": id, "action": "JOIN", "args": args}))
            .await;
        self.expect_action("SYNC").await
    }

    pub async fn join(&mut self, user: &str) -> ServerFrame {
        self.join_with(Self::join_args(json!(user), 1000.0)).await
    }

    pub async fn send_msg(&mut self, payload: &str) {
        let id = self.session.clone();
        self.send_json(json!({"id": id, "action": "SEND", "args": [0, 0, payload, 0]}))
            .await;
    }

    /// Next protocol frame (PINGs/PONGs at WebSocket level are skipped).
    pub async fn next(&mut self) -> Result<ServerFrame, Ended> {
        loop {
            let m = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("no frame from the reflector in time");
            match m {
                Some(Ok(Message::Text(t))) => {
                    return Ok(ServerFrame::parse(t.as_str()).expect("reflector sent invalid JSON"));
                }
                Some(Ok(Message::Close(c))) => {
                    return Err(Ended::Closed(c.map_or(1005, |f| u16::from(f.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(Ended::Dropped),
            }
        }
    }

    pub async fn frame(&mut self) -> ServerFrame {
        self.next().await.expect("connection ended unexpectedly")
    }

    /// Skip frames (ticks and others) until one with `action`.
    pub async fn expect_action(&mut self, action: &str) -> ServerFrame {
        loop {
            let f = self.frame().await;
            if f.action == action {
                return f;
            }
        }
    }

    /// Next stream message (RECV), skipping ticks.
    pub async fn recv(&mut self) -> StreamMessage {
        loop {
            let f = self.frame().await;
            if let Some(m) = f.message() {
                return m;
            }
        }
    }

    /// Next message sent by a client (skips the reflector's own users/tally messages).
    pub async fn recv_client(&mut self) -> StreamMessage {
        loop {
            let m = self.recv().await;
            if m.payload.is_string() {
                return m;
            }
        }
    }

    /// Next users announcement.
    pub async fn users(&mut self) -> Value {
        loop {
            let m = self.recv().await;
            if m.what() == Some("users") {
                return m.payload;
            }
        }
    }

    /// Read until the connection ends; returns how.
    pub async fn expect_end(&mut self) -> Ended {
        loop {
            if let Err(e) = self.next().await {
                return e;
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }
}

/// A minimal HTTP/1.1 request over a raw socket: the path is sent exactly as given
/// (client libraries would normalise `..` away, hiding what we test).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    let mut buf = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf))
        .await
        .expect("http timeout")
        .expect("read");
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no header end");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut rest = buf[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        rest = dechunk(&rest);
    }
    (status, head, rest)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}
