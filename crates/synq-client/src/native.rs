//! The native transport: tokio, tungstenite for the WebSocket, reqwest for the file store.

// Not model code: the tokio transport (sockets, HTTP, timers).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use synq_model::Model;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::controller::ClientConfig;
use crate::driver::{Session, join_with};
use crate::error::ClientError;
use crate::transport::{BoxFut, BoxSocket, Incoming, Socket, Transport};

/// Joins natively (on the current tokio runtime); see [`join_with`].
pub async fn join<M: Model>(
    config: ClientConfig,
    view_data: M::ViewData,
) -> Result<Session<M>, ClientError> {
    join_with(TokioTransport::new(), config, view_data).await
}

/// tokio + tungstenite + reqwest.
pub struct TokioTransport {
    http: reqwest::Client,
    started: Instant,
}

impl TokioTransport {
    pub fn new() -> Self {
        TokioTransport {
            http: reqwest::Client::new(),
            started: Instant::now(),
        }
    }
}

impl Default for TokioTransport {
    fn default() -> Self {
        Self::new()
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct TokioSocket(Ws);

impl Socket for TokioSocket {
    fn send(&mut self, text: String) -> BoxFut<'_, Result<(), String>> {
        Box::pin(async move {
            self.0
                .send(Message::text(text))
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn recv(&mut self) -> BoxFut<'_, Option<Result<Incoming, String>>> {
        Box::pin(async move {
            loop {
                return match self.0.next().await? {
                    Ok(Message::Text(t)) => Some(Ok(Incoming::Text(t.as_str().to_owned()))),
                    Ok(Message::Close(frame)) => {
                        let (code, reason) = frame.map_or((1005, String::new()), |f| {
                            (u16::from(f.code), f.reason.to_string())
                        });
                        Some(Ok(Incoming::Closed { code, reason }))
                    }
                    Ok(_) => continue,
                    Err(e) => Some(Err(e.to_string())),
                };
            }
        })
    }

    fn close(&mut self) -> BoxFut<'_, ()> {
        Box::pin(async move {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "leaving".into(),
            };
            let _ = self.0.close(Some(frame)).await;
        })
    }
}

impl Transport for TokioTransport {
    fn connect(&self, url: &str) -> BoxFut<'static, Result<BoxSocket, String>> {
        let url = url.to_owned();
        Box::pin(async move {
            let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .map_err(|e| e.to_string())?;
            Ok(Box::new(TokioSocket(ws)) as BoxSocket)
        })
    }

    fn get(&self, url: String) -> BoxFut<'static, Result<Vec<u8>, String>> {
        let http = self.http.clone();
        Box::pin(async move {
            let mut r = http.get(&url).send().await.map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("HTTP {}", r.status()));
            }
            // A server that sends more than any snapshot can be does not get to fill memory.
            let limit = crate::controller::MAX_SNAPSHOT_BYTES;
            let too_large = || format!("larger than {limit} bytes");
            if r.content_length().is_some_and(|n| n > limit as u64) {
                return Err(too_large());
            }
            let mut body = Vec::new();
            while let Some(chunk) = r.chunk().await.map_err(|e| e.to_string())? {
                if body.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        })
    }

    fn put(&self, url: String, body: Vec<u8>) -> BoxFut<'static, Result<(), String>> {
        let http = self.http.clone();
        Box::pin(async move {
            let r = http
                .put(&url)
                .header("content-type", "application/octet-stream")
                .body(body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if r.status().is_success() {
                Ok(())
            } else {
                Err(format!("HTTP {}", r.status()))
            }
        })
    }

    fn sleep(&self, duration: Duration) -> BoxFut<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }

    fn spawn(&self, task: BoxFut<'static, ()>) {
        tokio::spawn(task);
    }

    fn now_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }
}
