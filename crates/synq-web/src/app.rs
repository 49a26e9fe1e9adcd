//! The chat page: joins the room named in the URL, draws synq-chat's view of the room
//! (`synq_chat::view`) and its controls into the DOM, and runs synq-chat's relay loop
//! with the server's AI gateway (`crate::ai`) as the AI service.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, btree_map};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use synq_chat::link::{from_location, room_path};
use synq_chat::names::{friendly_name, random_token};
use synq_chat::view::{self, Person, Row, RowKind, Status};
use synq_chat::{
    APP_ID, AiMode, AiState, ChatInput, ChatModel, ChatViewData, archived_entries, relay,
};
use synq_client::{ClientConfig, SessionHandle};
use synq_relay::{BoxFut, Candidacy};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{
    Document, Element, Event, HtmlButtonElement, HtmlElement, HtmlInputElement, HtmlSelectElement,
    HtmlTextAreaElement, KeyboardEvent, Node,
};

use crate::ai::GatewayService;

fn document() -> Result<Document, String> {
    web_sys::window()
        .and_then(|w| w.document())
        .ok_or_else(|| "no document".to_owned())
}

fn by_id(doc: &Document, id: &str) -> Result<Element, String> {
    doc.get_element_by_id(id)
        .ok_or_else(|| format!("the page has no #{id}"))
}

/// Shows `text` in the status line; `kind` is `ok`, `busy` or `error`.
fn status(text: &str, kind: &str) {
    if let Ok(doc) = document()
        && let Ok(el) = by_id(&doc, "status")
    {
        el.set_text_content(Some(text));
        el.set_class_name(kind);
    }
}

/// Shows the connection's state.
fn show_status(s: &Status) {
    let kind = if s.ok() {
        "ok"
    } else if s.failed() {
        "error"
    } else {
        "busy"
    };
    status(&s.text(), kind);
}

/// The room and password from the URL (`?q=NAME#pw=PASSWORD`, synq_chat::link), made up
/// (≥ 128 bits each) and written back into the URL when missing, so the link can be
/// shared.
fn room_from_url() -> Result<(String, String), String> {
    let window = web_sys::window().ok_or("no window")?;
    let location = window.location();
    let search = location.search().unwrap_or_default();
    let hash = location.hash().unwrap_or_default();
    let (name, password) = from_location(&search, &hash);
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
    if let Ok(history) = window.history() {
        let url = room_path(&name, &password);
        let _ = history.replace_state_with_url(&JsValue::NULL, "", Some(&url));
    }
    Ok((name, password))
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
    show_status(&Status::Connecting);
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
            show_status(&Status::Failed(view::client_error(&e, &room, &origin)));
            return Ok(());
        }
    };
    let synced_ms = js_sys::Date::now() - loaded;
    if let Some(body) = doc.body() {
        let _ = body.set_attribute("data-synced-ms", &format!("{synced_ms:.0}"));
        let _ = body.set_attribute("data-view-id", session.view_id().as_str());
    }
    show_status(&Status::Connected);
    let handle = session.handle();
    let mut ui = Ui::new(&doc)?;
    wire_controls(&doc, &handle, &ui)?;
    ui.render(&handle, &me);
    let service = Arc::new(GatewayService {
        session: handle.clone(),
    });
    relay::run(
        session,
        Some(service),
        sleep,
        |event| {
            if let Some(s) = Status::after(&event, &room, &origin) {
                show_status(&s);
            }
        },
        || ui.render(&handle, &me),
    )
    .await;
    Ok(())
}

/// What the Reset button asks first.
const RESET_QUESTION: &str =
    "Reset clears the chat for everyone in the room, not only for you. Reset?";

/// The element `#id` as a `T` (an input, a button, …).
fn typed<T: JsCast>(doc: &Document, id: &str) -> Result<T, String> {
    by_id(doc, id)?
        .dyn_into::<T>()
        .map_err(|_| format!("#{id} is not the kind of element the page expects"))
}

/// Calls `f` on every `event` of `#id`, for the page's lifetime.
fn listen(
    doc: &Document,
    id: &str,
    event: &str,
    f: impl FnMut(Event) + 'static,
) -> Result<(), String> {
    let closure = Closure::<dyn FnMut(Event)>::new(f);
    by_id(doc, id)?
        .add_event_listener_with_callback(event, closure.as_ref().unchecked_ref())
        .map_err(|_| format!("cannot listen to #{id}"))?;
    closure.forget();
    Ok(())
}

/// Whether the history is scrolled to its end (within a few pixels).
fn at_bottom(out: &Element) -> bool {
    out.scroll_height() - out.scroll_top() - out.client_height() <= 24
}

fn scroll_to_bottom(out: &Element) {
    out.set_scroll_top(out.scroll_height());
}

/// The controls: send (Enter, #sendButton), stop, reset (after a confirmation), the AI's
/// mode and instructions, "again" and "reply" on rows, the reply bar, the "new messages"
/// button, copy link.
fn wire_controls(doc: &Document, handle: &SessionHandle<ChatModel>, ui: &Ui) -> Result<(), String> {
    let send = {
        let (input, handle, reply) = (ui.input.clone(), handle.clone(), ui.reply.clone());
        Rc::new(move || {
            let text = input.value();
            if !text.trim().is_empty() {
                let post = match reply.to.get() {
                    Some(to) => ChatInput::reply(text, to),
                    None => ChatInput::post(text),
                };
                let _ = handle.publish(post);
                input.set_value("");
                reply.set(None, None);
            }
        })
    };
    listen(doc, "textIn", "keydown", {
        let (send, reply) = (Rc::clone(&send), ui.reply.clone());
        move |e: Event| {
            let Some(k) = e.dyn_ref::<KeyboardEvent>() else {
                return;
            };
            if k.key() == "Enter" && !k.is_composing() {
                e.prevent_default();
                send();
            } else if k.key() == "Escape" {
                reply.set(None, None);
            }
        }
    })?;
    listen(doc, "replyCancel", "click", {
        let (reply, input) = (ui.reply.clone(), ui.input.clone());
        move |_| {
            reply.set(None, None);
            let _ = input.focus();
        }
    })?;
    listen(doc, "sendButton", "click", move |_| send())?;
    listen(doc, "stopButton", "click", {
        let handle = handle.clone();
        move |_| {
            let _ = handle.publish(ChatInput::Stop);
        }
    })?;
    listen(doc, "resetButton", "click", {
        let handle = handle.clone();
        move |_| {
            let sure = web_sys::window()
                .and_then(|w| w.confirm_with_message(RESET_QUESTION).ok())
                .unwrap_or(false);
            if sure {
                let _ = handle.publish(ChatInput::Reset);
            }
        }
    })?;
    listen(doc, "aiMode", "change", {
        let (select, handle) = (ui.mode.clone(), handle.clone());
        move |_| {
            if let Some(mode) = AiMode::parse(&select.value()) {
                let _ = handle.publish(ChatInput::SetAiMode(mode));
            }
        }
    })?;
    listen(doc, "saveInstructions", "click", {
        let (field, handle) = (ui.instructions.clone(), handle.clone());
        move |_| {
            let _ = handle.publish(ChatInput::SetInstructions(field.value().trim().to_owned()));
        }
    })?;
    // Save is offered while the field differs from the room's instructions.
    listen(doc, "instructionsIn", "input", {
        let (field, save, handle) = (ui.instructions.clone(), ui.save.clone(), handle.clone());
        move |_| {
            let saved = handle
                .read(|m| m.instructions() == field.value().trim())
                .unwrap_or(true);
            save.set_disabled(saved);
        }
    })?;
    // "Load earlier messages": the archive page before the oldest one shown, downloaded
    // and opened by this page only (archived entries are no one's replica state).
    listen(doc, "loadEarlier", "click", {
        let (handle, earlier, doc) = (handle.clone(), ui.earlier.clone(), doc.clone());
        move |_| {
            let (handle, earlier, doc) = (handle.clone(), earlier.clone(), doc.clone());
            let oldest = earlier.state.borrow().oldest.clone();
            let Some(Some(name)) =
                handle.read(|m| m.page_before(oldest.as_deref()).map(|p| p.name.clone()))
            else {
                return;
            };
            if earlier.state.borrow().busy {
                return;
            }
            earlier.state.borrow_mut().busy = true;
            earlier.button.set_disabled(true);
            wasm_bindgen_futures::spawn_local(async move {
                let loaded = handle
                    .read_file(&name)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|file| archived_entries(&file).map_err(|e| e.to_string()));
                match loaded {
                    // Still the page after the oldest shown (no reset meanwhile).
                    Ok(entries) if earlier.state.borrow().oldest == oldest => {
                        let first = earlier.rows.first_child();
                        for row in view::archived_rows(&entries, handle.view_id()) {
                            if let Some(nodes) = RowNodes::new(&doc, row) {
                                let _ = nodes.row.class_list().add_1("archived");
                                let _ = earlier.rows.insert_before(&nodes.row, first.as_ref());
                            }
                        }
                        earlier.state.borrow_mut().oldest = Some(name);
                    }
                    Ok(_) => {}
                    Err(e) => status(&format!("Could not load earlier messages: {e}"), "error"),
                }
                earlier.state.borrow_mut().busy = false;
                earlier.button.set_disabled(false);
                earlier.offer_more(&handle);
            });
        }
    })?;
    // "Again" and "Reply" on rows: one listener for the rows present and to come.
    listen(doc, "textOut", "click", {
        let (handle, reply, input) = (handle.clone(), ui.reply.clone(), ui.input.clone());
        move |e: Event| {
            let button = e
                .target()
                .and_then(|t| t.dyn_into::<Element>().ok())
                .and_then(|t| t.closest("button").ok().flatten());
            let Some(button) = button else {
                return;
            };
            let entry = button
                .closest(".entry")
                .ok()
                .flatten()
                .and_then(|row| row.get_attribute("data-entry"))
                .and_then(|id| id.parse::<u64>().ok());
            let Some(id) = entry else {
                return;
            };
            if button.class_list().contains("again") {
                let _ = handle.publish(ChatInput::Again { entry: Some(id) });
            } else if button.class_list().contains("reply") {
                let text = handle
                    .read(|m| {
                        view::page(m, handle.view_id(), "", None)
                            .row(id)
                            .map(Row::replying)
                    })
                    .flatten();
                reply.set(Some(id), text.as_deref());
                let _ = input.focus();
            }
        }
    })?;
    // The history follows the newest entries only while the reader is at its end.
    listen(doc, "textOut", "scroll", {
        let (out, follow, new_below) =
            (ui.out.clone(), Rc::clone(&ui.follow), ui.new_below.clone());
        move |_| {
            let bottom = at_bottom(&out);
            follow.set(bottom);
            if bottom {
                new_below.set_hidden(true);
            }
        }
    })?;
    listen(doc, "newBelow", "click", {
        let (out, new_below) = (ui.out.clone(), ui.new_below.clone());
        move |_| {
            scroll_to_bottom(&out);
            new_below.set_hidden(true);
        }
    })?;
    // Optional: older pages without the button still work.
    let _ = listen(doc, "copyLink", "click", move |_| {
        if let Some(w) = web_sys::window()
            && let Ok(href) = w.location().href()
        {
            let _ = w.navigator().clipboard().write_text(&href);
            status("Link copied: send it to whoever should join", "ok");
        }
    });
    Ok(())
}

fn span(doc: &Document, class: &str, text: &str) -> Option<Element> {
    let el = doc.create_element("span").ok()?;
    el.set_class_name(class);
    // Text, never markup: whatever people or the AI write is shown as typed.
    el.set_text_content(Some(text));
    Some(el)
}

/// CSS classes of a row: `entry post`, `entry ai` (plus `streaming` or `stopped`),
/// `entry notice`.
fn class(kind: RowKind) -> &'static str {
    match kind {
        RowKind::Post { .. } => "entry post",
        RowKind::Ai {
            state: AiState::Done,
        } => "entry ai",
        RowKind::Ai {
            state: AiState::Stopped,
        } => "entry ai stopped",
        RowKind::Ai {
            state: AiState::Waiting | AiState::Streaming,
        } => "entry ai streaming",
        RowKind::Notice => "entry notice",
    }
}

/// A small button of a row ("Again", "Reply").
fn row_button(
    doc: &Document,
    class: &str,
    label: &str,
    title: &str,
    text: &str,
) -> Option<Element> {
    let b = doc.create_element("button").ok()?;
    b.set_class_name(class);
    let _ = b.set_attribute("type", "button");
    let _ = b.set_attribute("aria-label", label);
    let _ = b.set_attribute("title", title);
    b.set_text_content(Some(text));
    Some(b)
}

/// The DOM of one history row, and what it shows.
struct RowNodes {
    row: Element,
    text: Element,
    shown: Row,
}

impl RowNodes {
    fn new(doc: &Document, row: Row) -> Option<RowNodes> {
        let mut nodes = RowNodes {
            row: doc.create_element("div").ok()?,
            text: span(doc, "text", "")?,
            shown: row.clone(),
        };
        nodes.fill(doc, row);
        Some(nodes)
    }

    /// Builds the row's children afresh (the row's own node stays).
    fn fill(&mut self, doc: &Document, row: Row) {
        self.row.set_class_name(class(row.kind));
        let _ = self.row.set_attribute("data-entry", &row.id.to_string());
        self.row.set_text_content(None);
        // What a reply answers, quoted above it.
        if let Some(quote) = &row.quote
            && let Ok(q) = doc.create_element("div")
        {
            q.set_class_name("quote");
            q.set_text_content(Some(quote));
            let _ = self.row.append_child(&q);
        }
        if !row.name.is_empty()
            && let Some(n) = span(doc, "name", &row.name)
        {
            let _ = self.row.append_child(&n);
        }
        self.text.set_text_content(Some(&row.text));
        let _ = self.row.append_child(&self.text);
        if row.again
            && let Some(b) = row_button(
                doc,
                "again",
                "Ask the AI again for this answer",
                "Ask the AI again (replaces this answer)",
                "Again",
            )
        {
            let _ = self.row.append_child(&b);
        }
        if row.repliable()
            && let Some(b) = row_button(
                doc,
                "reply",
                "Reply to this message",
                "Reply (a reply to the AI asks the AI)",
                "Reply",
            )
        {
            let _ = self.row.append_child(&b);
        }
        self.shown = row;
    }

    /// Shows `row`, touching only what changed (a streamed delta: the text).
    fn update(&mut self, doc: &Document, row: Row) {
        if self.shown == row {
            return;
        }
        if self.shown.name != row.name
            || self.shown.again != row.again
            || self.shown.quote != row.quote
            || self.shown.repliable() != row.repliable()
        {
            return self.fill(doc, row);
        }
        if self.shown.kind != row.kind {
            self.row.set_class_name(class(row.kind));
        }
        if self.shown.text != row.text {
            self.text.set_text_content(Some(&row.text));
        }
        self.shown = row;
    }
}

/// The bar above the input while a reply is written: "Replying to Ann: first words ✕".
#[derive(Clone)]
struct ReplyBar {
    /// The entry replied to.
    to: Rc<Cell<Option<u64>>>,
    bar: HtmlElement,
    text: Element,
}

impl ReplyBar {
    /// Starts a reply to `to`, shown as `text`; `None` ends it.
    fn set(&self, to: Option<u64>, text: Option<&str>) {
        match (to, text) {
            (Some(to), Some(text)) => {
                self.to.set(Some(to));
                set_text(&self.text, text);
                self.bar.set_hidden(false);
            }
            _ => {
                self.to.set(None);
                self.bar.set_hidden(true);
            }
        }
    }
}

/// What "load earlier messages" shows: the archive pages loaded, above the history.
#[derive(Default)]
struct EarlierState {
    /// The oldest page shown (`None`: none).
    oldest: Option<String>,
    /// The room's newest page when the pages were loaded: a new one (the history moved
    /// on) or none (a reset) starts over.
    newest: Option<String>,
    busy: bool,
}

#[derive(Clone)]
struct Earlier {
    button: HtmlButtonElement,
    /// The archived rows' container, between the button and the history.
    rows: Element,
    state: Rc<RefCell<EarlierState>>,
}

impl Earlier {
    /// Shows the button while the archive has a page before the oldest one shown.
    fn offer_more(&self, handle: &SessionHandle<ChatModel>) {
        let oldest = self.state.borrow().oldest.clone();
        let more = handle
            .read(|m| m.page_before(oldest.as_deref()).is_some())
            .unwrap_or(false);
        self.button.set_hidden(!more);
    }
}

/// The page's elements, and what they show now.
struct Ui {
    doc: Document,
    out: Element,
    welcome: Element,
    earlier: Earlier,
    rows: BTreeMap<u64, RowNodes>,
    people_list: Element,
    people: Vec<Person>,
    mode: HtmlSelectElement,
    instructions: HtmlTextAreaElement,
    /// The room's instructions as last put into the field.
    instructions_shown: String,
    save: HtmlButtonElement,
    stop: HtmlButtonElement,
    input: HtmlInputElement,
    reply: ReplyBar,
    privacy: Element,
    summary: Element,
    new_below: HtmlElement,
    /// Whether the history follows its newest entries (the reader is at its end).
    follow: Rc<Cell<bool>>,
}

impl Ui {
    fn new(doc: &Document) -> Result<Ui, String> {
        let out = by_id(doc, "textOut")?;
        out.set_text_content(None);
        let welcome = doc
            .create_element("div")
            .map_err(|_| "cannot create an element")?;
        welcome.set_class_name("welcome");
        out.append_child(&welcome)
            .map_err(|_| "cannot show the welcome line")?;
        let button: HtmlButtonElement = doc
            .create_element("button")
            .ok()
            .and_then(|b| b.dyn_into().ok())
            .ok_or("cannot create a button")?;
        button.set_id("loadEarlier");
        button.set_type("button");
        button.set_text_content(Some(view::LOAD_EARLIER));
        button.set_hidden(true);
        let rows = doc
            .create_element("div")
            .map_err(|_| "cannot create an element")?;
        rows.set_class_name("earlier");
        for node in [&button as &Element, &rows] {
            out.append_child(node)
                .map_err(|_| "cannot show the archive's place")?;
        }
        Ok(Ui {
            doc: doc.clone(),
            out,
            welcome,
            earlier: Earlier {
                button,
                rows,
                state: Rc::default(),
            },
            rows: BTreeMap::new(),
            people_list: by_id(doc, "people")?,
            people: Vec::new(),
            mode: typed(doc, "aiMode")?,
            instructions: typed(doc, "instructionsIn")?,
            instructions_shown: String::new(),
            save: typed(doc, "saveInstructions")?,
            stop: typed(doc, "stopButton")?,
            input: typed(doc, "textIn")?,
            reply: ReplyBar {
                to: Rc::new(Cell::new(None)),
                bar: typed(doc, "replyBar")?,
                text: by_id(doc, "replyText")?,
            },
            privacy: by_id(doc, "privacy")?,
            summary: by_id(doc, "aiSummary")?,
            new_below: typed(doc, "newBelow")?,
            follow: Rc::new(Cell::new(true)),
        })
    }

    /// Shows the room as it is now, changing only the nodes whose content changed.
    fn render(&mut self, handle: &SessionHandle<ChatModel>, me: &str) {
        let Some(page) = handle.read(|m| view::page(m, handle.view_id(), me, None)) else {
            return;
        };
        // For people debugging, and for the browser tests: who relays the AI now.
        if let (Some(body), Some(Some(elected))) =
            (self.doc.body(), handle.read(|m| m.elected().cloned()))
        {
            let _ = body.set_attribute("data-elected", elected.as_str());
        }
        set_text(&self.welcome, &page.welcome);
        // The entry replied to may have grown (a streamed answer) or gone (a reset).
        if let Some(to) = self.reply.to.get() {
            let text = page.row(to).map(Row::replying);
            self.reply
                .set(text.is_some().then_some(to), text.as_deref());
        }
        let mut changed = false;
        // Entries gone (a reset, the history's cap) lose their rows.
        let ids: BTreeSet<u64> = page.rows.iter().map(|r| r.id).collect();
        self.rows.retain(|id, nodes| {
            let keep = ids.contains(id);
            if !keep {
                nodes.row.remove();
                changed = true;
            }
            keep
        });
        {
            let mut earlier = self.earlier.state.borrow_mut();
            if earlier.newest != page.newest_page {
                if earlier.oldest.is_some() {
                    self.earlier.rows.set_text_content(None);
                    earlier.oldest = None;
                }
                earlier.newest = page.newest_page.clone();
            }
        }
        self.earlier.offer_more(handle);
        let mut prev: Node = self.earlier.rows.clone().into();
        for row in page.rows {
            let nodes = match self.rows.entry(row.id) {
                btree_map::Entry::Occupied(o) => {
                    let nodes = o.into_mut();
                    changed |= nodes.shown != row;
                    nodes.update(&self.doc, row);
                    nodes
                }
                btree_map::Entry::Vacant(v) => {
                    let Some(nodes) = RowNodes::new(&self.doc, row) else {
                        continue;
                    };
                    changed = true;
                    v.insert(nodes)
                }
            };
            let next = prev.next_sibling();
            if !next
                .as_ref()
                .is_some_and(|n| n.is_same_node(Some(&nodes.row)))
            {
                let _ = self.out.insert_before(&nodes.row, next.as_ref());
            }
            prev = nodes.row.clone().into();
        }
        if page.people != self.people {
            self.people_list.set_text_content(None);
            for p in &page.people {
                if let Ok(li) = self.doc.create_element("li") {
                    li.set_text_content(Some(&p.name));
                    if p.me {
                        li.set_class_name("me");
                    }
                    let _ = self.people_list.append_child(&li);
                }
            }
            self.people = page.people;
        }
        if self.mode.value() != page.mode.as_str() {
            self.mode.set_value(page.mode.as_str());
        }
        // The field follows the room's instructions unless someone is editing it here.
        if page.instructions != self.instructions_shown {
            if self.instructions.value().trim() == self.instructions_shown {
                self.instructions.set_value(&page.instructions);
            }
            self.instructions_shown = page.instructions.clone();
        }
        self.save
            .set_disabled(self.instructions.value().trim() == page.instructions);
        self.stop.set_disabled(!page.answering);
        if self.input.placeholder() != page.placeholder {
            self.input.set_placeholder(&page.placeholder);
        }
        set_text(&self.privacy, &page.privacy);
        self.privacy
            .set_class_name(if page.mode == AiMode::Off { "off" } else { "" });
        set_text(&self.summary, &page.summary);
        if self.follow.get() {
            scroll_to_bottom(&self.out);
            self.new_below.set_hidden(true);
        } else if changed {
            self.new_below.set_hidden(false);
        }
    }
}

/// Sets `el`'s text if it differs (an unchanged node is left alone).
fn set_text(el: &Element, text: &str) {
    if el.text_content().as_deref() != Some(text) {
        el.set_text_content(Some(text));
    }
}

fn sleep(d: Duration) -> BoxFut<()> {
    let ms = u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    Box::pin(gloo_timers::future::TimeoutFuture::new(ms))
}
