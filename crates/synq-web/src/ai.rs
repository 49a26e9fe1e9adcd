//! The browser's AI service: the gateway of the server the page came from (same origin,
//! streaming), for when this page is the elected relay. The answer is read with the same
//! wire types and SSE decoder as the gateway writes it with (`synq-openai`); the gateway's
//! queue position becomes the AI entry's status.

use std::cell::RefCell;
use std::rc::Rc;

use futures_util::StreamExt;
use synq_chat::{AiRequest, ChatModel, MAX_ANSWER_TOKENS, queue_status};
use synq_client::SessionHandle;
use synq_openai::{ChatCompletionRequest, Event, Message, SseDecoder};
use synq_relay::{BoxFut, Progress, RelayService, TextStream};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{AbortController, ReadableStreamDefaultReader, RequestInit, Response};

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
    decoder: SseDecoder,
    pending: std::collections::VecDeque<Result<Progress, String>>,
    done: bool,
    _abort: Abort,
}

impl RelayService<AiRequest> for GatewayService {
    fn call(&self, request: AiRequest) -> BoxFut<Result<TextStream, String>> {
        let session = self.session.clone();
        Box::pin(async move {
            let token = session.ai_token();
            // The gateway serves its own model whatever `model` says.
            let temperature = Some(request.sampling.temperature());
            let body = ChatCompletionRequest {
                model: "default".into(),
                messages: request
                    .messages
                    .into_iter()
                    .map(|m| Message {
                        role: m.role.as_str().into(),
                        content: m.content,
                    })
                    .collect(),
                max_tokens: MAX_ANSWER_TOKENS,
                stream: true,
                stream_options: None,
                temperature,
                top_p: None,
                seed: None,
            };
            let body = serde_json::to_string(&body).map_err(|e| e.to_string())?;
            let controller = AbortController::new().map_err(js_err)?;
            let init = RequestInit::new();
            init.set_method("POST");
            init.set_body(&body.into());
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
                let msg = match serde_json::from_str::<synq_openai::ErrorBody>(&text) {
                    Ok(body) => body.error.message,
                    Err(_) => format!("HTTP {status}"),
                };
                return Err(msg);
            }
            let body = resp.body().ok_or("the AI service sent no body")?;
            let reader: ReadableStreamDefaultReader = body
                .get_reader()
                .dyn_into()
                .map_err(|_| "the AI answer cannot be read".to_string())?;
            let state = Rc::new(RefCell::new(Reading {
                reader,
                decoder: SseDecoder::default(),
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
                    let events = if done {
                        s.done = true;
                        s.decoder.finish().into_iter().collect()
                    } else {
                        let Ok(value) = js_sys::Reflect::get(&chunk, &"value".into()) else {
                            continue;
                        };
                        let bytes = js_sys::Uint8Array::new(&value).to_vec();
                        s.decoder.push(&bytes)
                    };
                    for data in events {
                        match synq_openai::parse_event(&data) {
                            Ok(Event::Chunk { text: Some(t), .. }) => {
                                s.pending.push_back(Ok(Progress::Text(t)));
                            }
                            Ok(Event::Chunk {
                                queue: Some(ahead), ..
                            }) => {
                                s.pending
                                    .push_back(Ok(Progress::Status(queue_status(ahead))));
                            }
                            // Events without text (the role, the end's `finish_reason`,
                            // a usage count), or not JSON: nothing to show.
                            Ok(Event::Chunk { .. }) | Err(_) => {}
                            Ok(Event::Error(m)) => {
                                s.pending.push_back(Err(m));
                                s.done = true;
                            }
                            Ok(Event::Done) => s.done = true,
                        }
                    }
                }
            });
            Ok(stream.boxed_local())
        })
    }
}
