//! A real `nats-server -js` for tests (Debian's package `nats-server`, which
//! scripts/test.sh installs): this crate's tests and the cluster tests of `synq`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A `nats-server -js` on a free loopback port, with its storage in a temporary
/// directory; killed when dropped. Panics when it cannot start (a test's setup).
pub struct NatsServer {
    child: Child,
    /// `nats://127.0.0.1:PORT`
    pub url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts the server and returns once it says it is ready.
    pub fn start() -> NatsServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nats-server (Debian package nats-server; scripts/test.sh installs it)");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        while !lines
            .next()
            .expect("nats-server ended before it was ready")
            .expect("nats-server's log")
            .contains("Server is ready")
        {}
        // Keep reading its log: a Go program whose stderr pipe is closed exits.
        std::thread::spawn(move || lines.for_each(drop));
        NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
