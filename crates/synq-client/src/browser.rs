//! The browser transport (wasm32): the browser's WebSocket and fetch (through gloo-net),
//! its timers, and `spawn_local` (the page has one thread).

// Not model code: the browser transport (WebSocket, fetch, timers).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gloo_net::websocket::futures::WebSocket;
use gloo_net::websocket::{Message, WebSocketError};
use synq_model::Model;

use crate::controller::ClientConfig;
use crate::driver::{Session, join_with};
use crate::error::ClientError;
use crate::transport::{BoxFut, BoxSocket, Incoming, Socket, Transport};

/// Joins from a web page; see [`join_with`]. The session key is derived with the
/// browser's WebCrypto when the page has it (a secure context: https or localhost), else
/// in wasm, which is several times slower.
pub async fn join<M: Model>(
    mut config: ClientConfig,
    view_data: M::ViewData,
) -> Result<Session<M>, ClientError> {
    if config.master_key.is_none() {
        let room = crate::wire::room_id(&config.app_id, &config.session_name);
        match webcrypto_master(&config.password, &room, config.kdf_rounds).await {
            Ok(master) => config.master_key = Some(master),
            Err(why) => tracing::info!(%why, "no WebCrypto PBKDF2; deriving the key in wasm"),
        }
    }
    join_with(BrowserTransport, config, view_data).await
}

/// [`crate::crypto::derive_master`] through `crypto.subtle` (same bytes: standard
/// PBKDF2-HMAC-SHA256).
async fn webcrypto_master(
    password: &str,
    room_id: &str,
    rounds: u32,
) -> Result<crate::crypto::MasterKey, String> {
    use js_sys::{Array, Object, Reflect, Uint8Array};
    use wasm_bindgen::{JsCast, JsValue};
    use wasm_bindgen_futures::JsFuture;
    let why = |e: JsValue| format!("{e:?}");
    let crypto = Reflect::get(&js_sys::global(), &JsValue::from_str("crypto")).map_err(why)?;
    let subtle: web_sys::SubtleCrypto = Reflect::get(&crypto, &JsValue::from_str("subtle"))
        .map_err(why)?
        .dyn_into()
        .map_err(|_| "crypto.subtle is not available (not a secure context)".to_owned())?;
    let raw = Uint8Array::from(password.as_bytes());
    let usages = Array::of1(&JsValue::from_str("deriveBits"));
    let base = subtle
        .import_key_with_str("raw", &raw, "PBKDF2", false, &usages)
        .map_err(why)?;
    let base: web_sys::CryptoKey = JsFuture::from(base)
        .await
        .map_err(why)?
        .dyn_into()
        .map_err(|_| "importKey did not give a CryptoKey".to_owned())?;
    let salt = Uint8Array::from(crate::crypto::kdf_salt(room_id).as_bytes());
    let params = web_sys::Pbkdf2Params::new_with_str("PBKDF2", "SHA-256", rounds, &salt);
    let bits = subtle
        .derive_bits_with_object(params.as_ref() as &Object, &base, 256)
        .map_err(why)?;
    let bits = JsFuture::from(bits).await.map_err(why)?;
    let bytes = Uint8Array::new(&bits).to_vec();
    bytes
        .try_into()
        .map_err(|_| "deriveBits gave other than 32 bytes".to_owned())
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
