//! The browser transport (wasm32): the browser's WebSocket and fetch (through gloo-net),
//! its timers, and `spawn_local` (the page has one thread).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gloo_net::websocket::futures::WebSocket;
use gloo_net::websocket::{Message, WebSocketError};
use synq_model::Model;

use crate::controller::ClientConfig;
use crate::driver::{Session, join_with};
use crate::error::ClientError;
use crate::transport::{BoxFut, BoxSocket, Incoming, Socket, Transport};

/// Joins from a web page; see [`join_with`].
pub async fn join<M: Model>(
    config: ClientConfig,
    view_data: M::ViewData,
) -> Result<Session<M>, ClientError> {
    join_with(BrowserTransport, config, view_data).await
}

/// WebSocket + fetch + timers of the browser.
pub struct BrowserTransport;

struct BrowserSocket(Option<WebSocket>);

impl Socket for BrowserSocket {
    fn send(&mut self, text: String) -> BoxFut<'_, Result<(), String>> {
        Box::pin(async move {
            let ws = self.0.as_mut().ok_or("socket closed")?;
            ws.send(Message::Text(text))
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn recv(&mut self) -> BoxFut<'_, Option<Result<Incoming, String>>> {
        Box::pin(async move {
            let ws = self.0.as_mut()?;
            loop {
                return match ws.next().await? {
                    Ok(Message::Text(t)) => Some(Ok(Incoming::Text(t))),
                    Ok(Message::Bytes(_)) => continue,
                    Err(WebSocketError::ConnectionClose(ev)) if ev.code != 1006 => {
                        Some(Ok(Incoming::Closed {
                            code: ev.code,
                            reason: ev.reason,
                        }))
                    }
                    Err(e) => Some(Err(e.to_string())),
                };
            }
        })
    }

    fn close(&mut self) -> BoxFut<'_, ()> {
        Box::pin(async move {
            if let Some(ws) = self.0.take() {
                let _ = ws.close(Some(1000), Some("leaving"));
            }
        })
    }
}

impl Transport for BrowserTransport {
    fn connect(&self, url: &str) -> BoxFut<'static, Result<BoxSocket, String>> {
        let url = url.to_owned();
        Box::pin(async move {
            let ws = WebSocket::open(&url).map_err(|e| e.to_string())?;
            Ok(Box::new(BrowserSocket(Some(ws))) as BoxSocket)
        })
    }

    fn get(&self, url: String) -> BoxFut<'static, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let r = gloo_net::http::Request::get(&url)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !r.ok() {
                return Err(format!("HTTP {}", r.status()));
            }
            let limit = crate::controller::MAX_SNAPSHOT_BYTES;
            let declared = r.headers().get("content-length");
            if declared
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n > limit as u64)
            {
                return Err(format!("larger than {limit} bytes"));
            }
            let body = r.binary().await.map_err(|e| e.to_string())?;
            if body.len() > limit {
                return Err(format!("larger than {limit} bytes"));
            }
            Ok(body)
        })
    }

    fn put(&self, url: String, body: Vec<u8>) -> BoxFut<'static, Result<(), String>> {
        Box::pin(async move {
            let body = js_sys::Uint8Array::from(body.as_slice());
            let r = gloo_net::http::Request::put(&url)
                .header("content-type", "application/octet-stream")
                .body(body)
                .map_err(|e| e.to_string())?
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if r.ok() {
                Ok(())
            } else {
                Err(format!("HTTP {}", r.status()))
            }
        })
    }

    fn sleep(&self, duration: Duration) -> BoxFut<'static, ()> {
        let ms = u32::try_from(duration.as_millis()).unwrap_or(u32::MAX);
        Box::pin(gloo_timers::future::TimeoutFuture::new(ms))
    }

    fn spawn(&self, task: BoxFut<'static, ()>) {
        wasm_bindgen_futures::spawn_local(task);
    }

    fn now_ms(&self) -> f64 {
        js_sys::Date::now()
    }
}
