//! Starting the real `synq serve` binary for the tests of this crate.
#![allow(dead_code)] // each test file uses its own part of this

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};

/// A running `synq serve` on a free port; killed when dropped.
pub struct Serve {
    pub child: Child,
    pub addr: SocketAddr,
    /// `http://ADDR`
    pub base: String,
    stderr: Option<BufReader<ChildStderr>>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `synq serve --listen 127.0.0.1:0 --data-dir DATA_DIR ARGS…` and waits for its
/// `synq: listening on` line. Its stderr is discarded.
pub fn serve(data_dir: &Path, args: &[&str]) -> Serve {
    start(data_dir, args, &[], false)
}

/// Like [`serve`], with extra environment and stderr kept for [`Serve::stderr_line`].
pub fn serve_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Serve {
    start(data_dir, args, env, true)
}

fn start(data_dir: &Path, args: &[&str], env: &[(&str, &str)], keep_stderr: bool) -> Serve {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_synq"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(if keep_stderr {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start synq serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the listening line");
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("synq: listening on http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from synq serve: {line:?}"));
    let stderr = child.stderr.take().map(BufReader::new);
    Serve {
        child,
        addr,
        base: format!("http://{addr}"),
        stderr,
    }
}

impl Serve {
    /// The next stderr line that contains `needle` (log lines start with a timestamp;
    /// needs [`serve_with`]).
    pub fn stderr_containing(&mut self, needle: &str) -> String {
        self.next_stderr(needle, |line| line.contains(needle))
    }

    /// The next stderr line that starts with `prefix` (needs [`serve_with`]).
    pub fn stderr_line(&mut self, prefix: &str) -> String {
        self.next_stderr(prefix, |line| line.starts_with(prefix))
    }

    fn next_stderr(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let stderr = self.stderr.as_mut().expect("started with serve_with");
        let mut line = String::new();
        loop {
            line.clear();
            let n = stderr.read_line(&mut line).expect("stderr");
            assert!(n > 0, "synq serve ended before printing {what:?}");
            if wanted(&line) {
                return line;
            }
        }
    }
}

/// A raw WebSocket to the reflector, for tests that speak the protocol themselves.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame as JSON (other frames skipped); panics after `patience` or if the
/// connection ends.
pub async fn next_json(ws: &mut Ws, patience: std::time::Duration) -> serde_json::Value {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(patience, ws.next())
            .await
            .expect("frame in time")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).expect("json"),
            Some(Ok(_)) => continue,
            other => panic!("connection ended: {other:?}"),
        }
    }
}

/// The close code the connection ends with, skipping other frames (0: it ended without a
/// close frame).
pub async fn close_code(ws: &mut Ws, patience: std::time::Duration) -> u16 {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(patience, ws.next())
            .await
            .expect("the connection ends in time")
        {
            Some(Ok(Message::Close(frame))) => return frame.map_or(0, |f| u16::from(f.code)),
            None | Some(Err(_)) => return 0,
            Some(Ok(_)) => {}
        }
    }
}

/// Joins `session` as a Croquet client would and returns once its SYNC arrived: the
/// session then exists on the server (e.g. for uploads to its file store).
pub async fn open_session(addr: SocketAddr, session: &str) -> Ws {
    open_app_session(addr, session, "t", None).await
}

/// Like [`open_session`], for Croquet app `app_id` with an optional `persistentId`.
pub async fn open_app_session(
    addr: SocketAddr,
    session: &str,
    app_id: &str,
    persistent_id: Option<&str>,
) -> Ws {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/reflector/{session}"))
        .await
        .expect("connect");
    let join = serde_json::json!({"id": session, "action": "JOIN", "args": {"name": "t/s", "apiKey": "none", "appId": app_id, "persistentId": persistent_id, "version": 1, "user": "u", "ticks": {"tick": 1000}}});
    ws.send(Message::Text(join.to_string().into()))
        .await
        .expect("send JOIN");
    while next_json(&mut ws, std::time::Duration::from_secs(10)).await["action"] != "SYNC" {}
    ws
}
