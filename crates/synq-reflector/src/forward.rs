//! A connection forwarded to the node that sequences its session (in a cluster): the
//! client's frames go to the owner's cluster listener and the owner's frames come back,
//! unchanged, so Croquet and synq clients cannot tell. The owner applies every limit to
//! the client's own address, which the forward names (and which the owner believes only
//! with the cluster's token).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use synq_protocol::CloseCode;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame as UpCloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as UpMessage};

use crate::metrics::Metrics;

/// The header that carries the cluster's token.
pub(crate) const TOKEN_HEADER: &str = "x-synq-cluster-token";
/// The header that names the client's address.
pub(crate) const FOR_HEADER: &str = "x-synq-forwarded-for";
/// The header that names the `Host` the client asked for (snapshot URLs are built on it).
pub(crate) const HOST_HEADER: &str = "x-synq-forwarded-host";

/// How long the owner may take to accept the forwarded connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and as whom a connection is forwarded.
pub(crate) struct Forward {
    /// `ws://owner:port/reflector/<path>?<query>`.
    pub url: String,
    pub peer: IpAddr,
    pub host: Option<String>,
    pub token: String,
    /// The largest message either side may send (as the client's own limit).
    pub max_message: usize,
    /// A write to either side that makes no progress for this long ends the relay
    /// (`--client-write-timeout-secs`): a client that stops reading must not hold the
    /// relay, and its connection to the owner, for good.
    pub write_timeout: Duration,
}

/// Relays `client` to the owner until either side ends. A client whose owner cannot be
/// reached (it just died; its lease has not lapsed yet) is asked to reconnect, and is
/// placed again then.
pub(crate) async fn run(client: WebSocket, fwd: Forward, metrics: Arc<Metrics>) {
    Metrics::add(&metrics.cluster_forwards, 1);
    Metrics::add_i(&metrics.cluster_forwarding, 1);
    relay(client, fwd).await;
    Metrics::add_i(&metrics.cluster_forwarding, -1);
}

async fn relay(mut client: WebSocket, fwd: Forward) {
    let mut upstream = match connect(&fwd).await {
        Ok(up) => up,
        Err(e) => {
            tracing::info!(url = %fwd.url, error = %e, "cannot reach the node that owns the session; asking the client to reconnect");
            close(
                &mut client,
                CloseCode::PleaseReconnect.code(),
                CloseCode::PleaseReconnect.reason(),
            )
            .await;
            return;
        }
    };
    let limit = fwd.write_timeout;
    loop {
        tokio::select! {
            m = client.recv() => match m {
                Some(Ok(Message::Text(t))) => {
                    if !written(limit, upstream.send(UpMessage::text(t.as_str()))).await {
                        break;
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    if !written(limit, upstream.send(UpMessage::Binary(b))).await {
                        break;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let frame = frame.map(|f| UpCloseFrame {
                        code: f.code.into(),
                        reason: f.reason.as_str().into(),
                    });
                    let _ = tokio::time::timeout(limit, upstream.close(frame)).await;
                    // Answer the client's close: tungstenite queued the reply, it goes out
                    // on close (without it the client sees 1006 instead of its own code).
                    let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
                    return;
                }
                // Each side answers its own pings.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Err(_)) | None => {
                    let _ = tokio::time::timeout(limit, upstream.close(None)).await;
                    return;
                }
            },
            m = upstream.next() => match m {
                Some(Ok(UpMessage::Text(t))) => {
                    if !written(limit, client.send(Message::Text(Utf8Bytes::from(t.as_str())))).await {
                        let _ = tokio::time::timeout(limit, upstream.close(None)).await;
                        return;
                    }
                }
                Some(Ok(UpMessage::Binary(b))) => {
                    if !written(limit, client.send(Message::Binary(b))).await {
                        let _ = tokio::time::timeout(limit, upstream.close(None)).await;
                        return;
                    }
                }
                Some(Ok(UpMessage::Close(frame))) => {
                    let (code, reason) = frame.map_or((1000, String::new()), |f| {
                        (u16::from(f.code), f.reason.as_str().to_owned())
                    });
                    close(&mut client, code, &reason).await;
                    return;
                }
                Some(Ok(_)) => {}
                // The owner went away without a close frame (it died): the client
                // reconnects, to the node that takes the session over.
                Some(Err(_)) | None => break,
            },
        }
    }
    close(
        &mut client,
        CloseCode::PleaseReconnect.code(),
        CloseCode::PleaseReconnect.reason(),
    )
    .await;
}

/// Whether a write completed within `limit`.
async fn written<E>(limit: Duration, write: impl Future<Output = Result<(), E>>) -> bool {
    matches!(tokio::time::timeout(limit, write).await, Ok(Ok(())))
}

type Upstream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(fwd: &Forward) -> Result<Upstream, tungstenite::Error> {
    let mut req = fwd.url.as_str().into_client_request()?;
    let headers = req.headers_mut();
    let value =
        |s: &str| HeaderValue::from_str(s).map_err(|e| tungstenite::Error::HttpFormat(e.into()));
    headers.insert(TOKEN_HEADER, value(&fwd.token)?);
    headers.insert(FOR_HEADER, value(&fwd.peer.to_string())?);
    if let Some(host) = &fwd.host {
        headers.insert(HOST_HEADER, value(host)?);
    }
    let config = WebSocketConfig::default()
        .max_message_size(Some(fwd.max_message))
        .max_frame_size(Some(fwd.max_message));
    let connecting = tokio_tungstenite::connect_async_with_config(req, Some(config), true);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(tungstenite::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the owner did not answer",
        ))),
    }
}

async fn close(client: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    };
    let graceful = async {
        let _ = client.send(Message::Close(Some(frame))).await;
        let _ = client.close().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), graceful).await;
}
