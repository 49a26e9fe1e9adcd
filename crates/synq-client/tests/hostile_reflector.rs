//! The native client against a real WebSocket server that plays a hostile reflector.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use synq_client::controller::MAX_CHUNKED_FRAME_BYTES;
use synq_client::{ClientConfig, ClientError};
use synq_model::demo::{Room, RoomViewData};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// A reflector that answers JOIN with `_CHUNK` pieces of 1 MB and never sends the last
/// one: the client's join fails with a protocol error once the pieces pass
/// [`MAX_CHUNKED_FRAME_BYTES`], and the client hangs up, so the server's stream ends
/// soon after (bounded by what the sockets' buffers hold), rather than the client
/// buffering forever.
#[tokio::test]
async fn endless_chunk_pieces_fail_the_join_instead_of_filling_memory() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut ws = tokio_tungstenite::accept_async(tcp).await?;
        let join = match ws.next().await {
            Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
            other => anyhow::bail!("expected the client's JOIN, got {other:?}"),
        };
        anyhow::ensure!(join.contains(r#""action":"JOIN""#), "not a JOIN: {join}");
        let body = "x".repeat(1_000_000);
        let first = Message::text(format!("_CHUNK10{body}"));
        let more = Message::text(format!("_CHUNK00{body}"));
        let mut sent = 0usize;
        let mut next = first;
        // Until the client is gone (a write fails).
        while ws.send(next).await.is_ok() {
            sent += body.len();
            next = more.clone();
            anyhow::ensure!(sent < 1 << 30, "the client took 1 GiB of pieces");
        }
        Ok::<usize, anyhow::Error>(sent)
    });

    let mut config = ClientConfig::for_server(&format!("http://{addr}"), "app", "room", "pw");
    config.kdf_rounds = 1;
    let joined = tokio::time::timeout(
        Duration::from_secs(60),
        synq_client::join::<Room>(config, RoomViewData::default()),
    )
    .await?;
    let err = joined.err().expect("the join fails");
    assert!(
        matches!(&err, ClientError::Protocol(m) if m.contains("_CHUNK") && m.contains("larger than")),
        "{err}"
    );

    let sent = tokio::time::timeout(Duration::from_secs(30), server).await???;
    // Past the limit, only what the kernel's socket buffers and the WebSocket layers
    // held before the client hung up (a few MB on loopback).
    assert!(sent > MAX_CHUNKED_FRAME_BYTES, "sent {sent}");
    assert!(
        sent < MAX_CHUNKED_FRAME_BYTES + (32 << 20),
        "the server could send {sent} bytes: the client kept reading"
    );
    Ok(())
}
