//! The browser's AI service: the gateway of the server the page came from (same origin,
//! streaming), for when this page is the elected relay.

use std::cell::RefCell;
use std::rc::Rc;

use futures_util::StreamExt;
use synq_chat::{AiRequest, ChatModel, MAX_ANSWER_TOKENS};
use synq_client::SessionHandle;
use synq_relay::{BoxFut, RelayService, TextStream};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortController, ReadableStreamDefaultReader, RequestInit, Response, TextDecoder};

use crate::sse::{SseEvent, SseLines};

pub struct GatewayService {
    /// This page's session: its AI capability goes with each call (`Authorization:
    /// Bearer …`); if the gateway refuses it, the page rejoins to get a new one.
    pub session: SessionHandle<ChatModel>,
}

fn js_err(e: wasm_bindgen::JsValue) -> String {
    e.as_string()
        .or_else(|| {
            js_sys::Reflect::get(&e, &"message".into())
                .ok()
                .and_then(|m| m.as_string())
        })
        .unwrap_or_else(|| "the AI service is unreachable".into())
}

/// Cancels the fetch when the answer stream is dropped (this page is no longer elected).
struct Abort(AbortController);
impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Reading {
    reader: ReadableStreamDefaultReader,
    decoder: TextDecoder,
    lines: SseLines,
    pending: std::collections::VecDeque<Result<String, String>>,
    done: bool,
    _abort: Abort,
}

impl RelayService<AiRequest> for GatewayService {
    fn call(&self, request: AiRequest) -> BoxFut<Result<TextStream, String>> {
        let session = self.session.clone();
        Box::pin(async move {
            let token = session.ai_token();
            let body = serde_json::json!({
                "model": "default",
                "messages": request.messages,
                "stream": true,
                "max_tokens": MAX_ANSWER_TOKENS,
            });
            let controller = AbortController::new().map_err(js_err)?;
            let init = RequestInit::new();
            init.set_method("POST");
            init.set_body(&body.to_string().into());
            init.set_signal(Some(&controller.signal()));
            let headers = web_sys::Headers::new().map_err(js_err)?;
            headers
                .set("content-type", "application/json")
                .map_err(js_err)?;
            if let Some(token) = &token {
                headers
                    .set("authorization", &format!("Bearer {token}"))
                    .map_err(js_err)?;
            }
            init.set_headers(&headers);
            let window = web_sys::window().ok_or("no window")?;
            let resp: Response =
                JsFuture::from(window.fetch_with_str_and_init("/ai/v1/chat/completions", &init))
                    .await
                    .map_err(|_| "the AI service is unreachable".to_string())?
                    .dyn_into()
                    .map_err(js_err)?;
            if !resp.ok() {
                let status = resp.status();
                if status == 401 && token.is_some() {
                    // Expired (this page stayed longer than its lifetime): a rejoin
                    // brings a new one for the next request.
                    session.reconnect();
                }
                let text = match resp.text() {
                    Ok(p) => JsFuture::from(p)
                        .await
                        .ok()
                        .and_then(|t| t.as_string())
                        .unwrap_or_default(),
                    Err(_) => String::new(),
                };
                let msg = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| {
                        v.pointer("/error/message")
                            .and_then(|m| m.as_str())
                            .map(str::to_owned)
                    })
                    .unwrap_or_else(|| format!("HTTP {status}"));
                return Err(msg);
            }
            let body = resp.body().ok_or("the AI service sent no body")?;
            let reader: ReadableStreamDefaultReader = body
                .get_reader()
                .dyn_into()
                .map_err(|_| "the AI answer cannot be read".to_string())?;
            let state = Rc::new(RefCell::new(Reading {
                reader,
                decoder: TextDecoder::new().map_err(js_err)?,
                lines: SseLines::default(),
                pending: Default::default(),
                done: false,
                _abort: Abort(controller),
            }));
            let stream = futures_util::stream::unfold(state, |state| async move {
                loop {
                    let next = state.borrow_mut().pending.pop_front();
                    if let Some(item) = next {
                        return Some((item, state));
                    }
                    if state.borrow().done {
                        return None;
                    }
                    let read = state.borrow().reader.read();
                    let chunk = match JsFuture::from(read).await {
                        Ok(c) => c,
                        Err(e) => return Some((Err(js_err(e)), state)),
                    };
                    let done = js_sys::Reflect::get(&chunk, &"done".into())
                        .ok()
                        .and_then(|d| d.as_bool())
                        .unwrap_or(true);
                    let mut s = state.borrow_mut();
                    if done {
                        s.done = true;
                        continue;
                    }
                    let Ok(value) = js_sys::Reflect::get(&chunk, &"value".into()) else {
                        continue;
                    };
                    let bytes = js_sys::Uint8Array::new(&value).to_vec();
                    let opts = web_sys::TextDecodeOptions::new();
                    opts.set_stream(true);
                    let text = s
                        .decoder
                        .decode_with_u8_array_and_options(&bytes, &opts)
                        .unwrap_or_default();
                    for ev in s.lines.push(&text) {
                        match ev {
                            SseEvent::Delta(t) => s.pending.push_back(Ok(t)),
                            SseEvent::Error(m) => {
                                s.pending.push_back(Err(m));
                                s.done = true;
                            }
                            SseEvent::Done => s.done = true,
                        }
                    }
                }
            });
            Ok(stream.boxed_local())
        })
    }
}
