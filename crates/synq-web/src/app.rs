//! The chat page: joins the room named in the URL, renders the history as text, and
//! relays AI requests when this page is the elected view.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_channel::mpsc;
use futures_util::{FutureExt, StreamExt, select};
use synq_chat::{
    AI_NAME, APP_ID, AiState, ChatInput, ChatModel, ChatOutput, ChatViewData, EntryKind,
};
use synq_client::{ClientConfig, ClientError, Session, SessionEvent, SessionHandle};
use synq_relay::{AgentConfig, BoxFut, Candidacy, RelayAgent};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{Document, Element, HtmlInputElement, KeyboardEvent};

use crate::ai::GatewayService;
use crate::names::{friendly_name, random_token};

fn document() -> Result<Document, String> {
    web_sys::window()
        .and_then(|w| w.document())
        .ok_or_else(|| "no document".to_owned())
}

fn by_id(doc: &Document, id: &str) -> Result<Element, String> {
    doc.get_element_by_id(id)
        .ok_or_else(|| format!("the page has no #{id}"))
}

/// Shows the connection state; `kind` is `ok`, `busy` or `error`.
fn status(text: &str, kind: &str) {
    if let Ok(doc) = document()
        && let Ok(el) = by_id(&doc, "status")
    {
        el.set_text_content(Some(text));
        el.set_class_name(kind);
    }
}

/// `?q=NAME#pw=PASSWORD` from the URL, made up (≥ 128 bits each) and written back into
/// the URL when missing, so the link can be shared.
fn room_from_url() -> Result<(String, String), String> {
    let window = web_sys::window().ok_or("no window")?;
    let location = window.location();
    let search = location.search().unwrap_or_default();
    let hash = location.hash().unwrap_or_default();
    let param = |s: &str, key: &str| -> Option<String> {
        s.trim_start_matches(['?', '#'])
            .split('&')
            .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
            .map(|v| {
                js_sys::decode_uri_component(v)
                    .ok()
                    .and_then(|s| s.as_string())
                    .unwrap_or_else(|| v.to_owned())
            })
            .filter(|v| !v.is_empty())
    };
    let name = param(&search, "q");
    let password = param(&hash, "pw");
    if let (Some(n), Some(p)) = (&name, &password) {
        return Ok((n.clone(), p.clone()));
    }
    let name = match name {
        Some(n) => n,
        None => random_token()?,
    };
    let password = match password {
        Some(p) => p,
        None => random_token()?,
    };
    let url = format!("/?q={name}#pw={password}");
    if let Ok(history) = window.history() {
        let _ = history.replace_state_with_url(&JsValue::NULL, "", Some(&url));
    }
    Ok((name, password))
}

fn friendly_error(e: &ClientError) -> String {
    match e {
        ClientError::WrongPassword => "Wrong password: this room was created with a different password. Check that you copied the whole link, including the part after #.".into(),
        ClientError::Unreachable { .. } => "Cannot reach the synq server. Is it running? Reload the page to try again.".into(),
        other => format!("The chat stopped: {other}"),
    }
}

pub async fn run() -> Result<(), String> {
    let doc = document()?;
    let loaded = js_sys::Date::now();
    let (room, password) = match room_from_url() {
        Ok(r) => r,
        Err(e) => {
            status(&e, "error");
            return Ok(());
        }
    };
    let origin = web_sys::window()
        .ok_or("no window")?
        .location()
        .origin()
        .map_err(|_| "no origin")?;
    let me = friendly_name();
    status("Connecting…", "busy");
    let config = ClientConfig::for_server(&origin, APP_ID, &room, &password);
    let data = ChatViewData {
        name: me.clone(),
        candidacy: Candidacy {
            can_relay: true,
            preference: 0,
        },
    };
    let session = match synq_client::join::<ChatModel>(config, data).await {
        Ok(s) => s,
        Err(e) => {
            status(&friendly_error(&e), "error");
            return Ok(());
        }
    };
    let synced_ms = js_sys::Date::now() - loaded;
    if let Some(body) = doc.body() {
        let _ = body.set_attribute("data-synced-ms", &format!("{synced_ms:.0}"));
        let _ = body.set_attribute("data-view-id", session.view_id().as_str());
    }
    status("Connected", "ok");
    let handle = session.handle();
    wire_controls(&doc, &handle)?;
    render(&doc, &handle, &me);
    pump(session, doc, me).await;
    Ok(())
}

/// Send on Enter and on #sendButton, reset on #resetButton, copy the link on #copyLink.
fn wire_controls(doc: &Document, handle: &SessionHandle<ChatModel>) -> Result<(), String> {
    let input: HtmlInputElement = by_id(doc, "textIn")?
        .dyn_into()
        .map_err(|_| "#textIn is not an input")?;
    let send = {
        let (input, handle) = (input.clone(), handle.clone());
        Rc::new(move || {
            let text = input.value();
            if !text.trim().is_empty() {
                let _ = handle.publish(ChatInput::post(text));
                input.set_value("");
            }
        })
    };
    let on_key = {
        let send = Rc::clone(&send);
        Closure::<dyn FnMut(KeyboardEvent)>::new(move |e: KeyboardEvent| {
            if e.key() == "Enter" {
                e.prevent_default();
                send();
            }
        })
    };
    input
        .add_event_listener_with_callback("keydown", on_key.as_ref().unchecked_ref())
        .map_err(|_| "cannot listen to #textIn")?;
    on_key.forget();
    let on_send = Closure::<dyn FnMut()>::new(move || send());
    by_id(doc, "sendButton")?
        .add_event_listener_with_callback("click", on_send.as_ref().unchecked_ref())
        .map_err(|_| "cannot listen to #sendButton")?;
    on_send.forget();
    let on_reset = {
        let handle = handle.clone();
        Closure::<dyn FnMut()>::new(move || {
            let _ = handle.publish(ChatInput::Reset);
        })
    };
    by_id(doc, "resetButton")?
        .add_event_listener_with_callback("click", on_reset.as_ref().unchecked_ref())
        .map_err(|_| "cannot listen to #resetButton")?;
    on_reset.forget();
    let on_copy = Closure::<dyn FnMut()>::new(move || {
        if let Some(w) = web_sys::window()
            && let Ok(href) = w.location().href()
        {
            let _ = w.navigator().clipboard().write_text(&href);
            status("Link copied: send it to whoever should join", "ok");
        }
    });
    if let Ok(button) = by_id(doc, "copyLink") {
        let _ = button.add_event_listener_with_callback("click", on_copy.as_ref().unchecked_ref());
    }
    on_copy.forget();
    Ok(())
}

fn div(doc: &Document, class: &str) -> Option<Element> {
    let el = doc.create_element("div").ok()?;
    el.set_class_name(class);
    Some(el)
}

fn span(doc: &Document, class: &str, text: &str) -> Option<Element> {
    let el = doc.create_element("span").ok()?;
    el.set_class_name(class);
    // Text, never markup: whatever people or the AI write is shown as typed.
    el.set_text_content(Some(text));
    Some(el)
}

fn render(doc: &Document, handle: &SessionHandle<ChatModel>, me: &str) {
    let Ok(out) = by_id(doc, "textOut") else {
        return;
    };
    let Some((welcome, entries)) = handle.read(|m| {
        let others: Vec<String> = m
            .users()
            .filter(|(v, _)| *v != handle.view_id())
            .map(|(_, n)| n.to_owned())
            .collect();
        let welcome = if others.is_empty() {
            format!("Welcome, {me}! {AI_NAME} is here. Share the link to invite others.")
        } else {
            format!(
                "Welcome, {me}! {AI_NAME} is here, along with {}.",
                others.join(", ")
            )
        };
        let entries: Vec<(String, String, String)> = m
            .history()
            .map(|e| match &e.kind {
                EntryKind::Post { name, text, .. } => {
                    ("entry post".into(), name.clone(), text.clone())
                }
                EntryKind::Ai {
                    text,
                    state,
                    stopped_by,
                    regenerated_by,
                    ..
                } => {
                    let class = match state {
                        AiState::Done => "entry ai",
                        AiState::Stopped => "entry ai stopped",
                        _ => "entry ai streaming",
                    };
                    let mut text = if text.is_empty() && state.in_progress() {
                        "…".to_owned()
                    } else {
                        text.clone()
                    };
                    if let Some(by) = regenerated_by {
                        text.push_str(&format!(" (answered again at {by}'s request)"));
                    }
                    if let Some(by) = stopped_by {
                        text.push_str(&format!(" (stopped by {by})"));
                    }
                    (class.into(), AI_NAME.to_owned(), text)
                }
                EntryKind::Joined { name } => (
                    "entry notice".into(),
                    String::new(),
                    format!("{name} joined"),
                ),
                EntryKind::Left { name } => {
                    ("entry notice".into(), String::new(), format!("{name} left"))
                }
                EntryKind::Notice { text } => ("entry notice".into(), String::new(), text.clone()),
            })
            .collect();
        (welcome, entries)
    }) else {
        return;
    };
    // For people debugging, and for the browser tests: who relays the AI now.
    if let (Some(body), Some(Some(elected))) = (doc.body(), handle.read(|m| m.elected().cloned())) {
        let _ = body.set_attribute("data-elected", elected.as_str());
    }
    out.set_text_content(None);
    if let Some(w) = div(doc, "welcome") {
        w.set_text_content(Some(&welcome));
        let _ = out.append_child(&w);
    }
    for (class, name, text) in entries {
        let Some(row) = div(doc, &class) else {
            continue;
        };
        if !name.is_empty()
            && let Some(n) = span(doc, "name", &name)
        {
            let _ = row.append_child(&n);
        }
        if let Some(t) = span(doc, "text", &text) {
            let _ = row.append_child(&t);
        }
        let _ = out.append_child(&row);
    }
    out.set_scroll_top(out.scroll_height());
}

fn sleep(d: Duration) -> BoxFut<()> {
    let ms = u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    Box::pin(gloo_timers::future::TimeoutFuture::new(ms))
}

/// Renders on every change and relays AI requests while this page is elected.
async fn pump(mut session: Session<ChatModel>, doc: Document, me: String) {
    let handle = session.handle();
    let view = handle.view_id().clone();
    let service = Arc::new(GatewayService {
        session: handle.clone(),
    });
    let mut agent = RelayAgent::new(view.clone());
    let (relay_tx, mut relay_rx) = mpsc::unbounded();
    let start = |agent: &mut RelayAgent, req| {
        let tx = relay_tx.clone();
        let publish = move |r| {
            let _ = tx.unbounded_send(r);
        };
        if let Some(call) = agent.on_request(
            Arc::clone(&service),
            req,
            AgentConfig::default(),
            publish,
            sleep,
        ) {
            wasm_bindgen_futures::spawn_local(call);
        }
    };
    let assigned = |h: &SessionHandle<ChatModel>| {
        h.read(|m| m.relay().assigned_to(&view).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    for req in assigned(&handle) {
        start(&mut agent, req);
    }
    loop {
        select! {
            ev = session.next_event().fuse() => match ev {
                None => break,
                Some(SessionEvent::Output(ChatOutput::Request(req))) => start(&mut agent, req),
                Some(SessionEvent::Output(_)) => {}
                Some(SessionEvent::Synced) => {
                    status("Connected", "ok");
                    for req in assigned(&handle) {
                        start(&mut agent, req);
                    }
                }
                Some(SessionEvent::Reconnecting(_)) => status("Reconnecting…", "busy"),
                Some(SessionEvent::Failed(e)) => {
                    status(&friendly_error(&e), "error");
                    break;
                }
                Some(SessionEvent::Diverged { .. }) => status("Out of sync with the others: reload the page", "error"),
                Some(_) => {}
            },
            response = relay_rx.next() => {
                if let Some(r) = response {
                    let _ = handle.publish(ChatInput::Relay(r));
                }
            }
        }
        let mine: Vec<u64> = assigned(&handle).iter().map(|r| r.id).collect();
        agent.retain(|id| mine.contains(&id));
        render(&doc, &handle, &me);
    }
}
