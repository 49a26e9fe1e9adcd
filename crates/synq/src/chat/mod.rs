//! `synq chat`: a room of the AI chat in a terminal, as a participant like any browser
//! (same app id, same `ChatModel`), relaying AI requests through the gateway of the server
//! it joined when it is elected to.

mod ui;

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use crossterm::event::Event;
use synq_ai::openai::{OpenAiBackend, OpenAiConfig};
use synq_chat::link::{Room, parse_link, room_link};
use synq_chat::names::friendly_name;
use synq_chat::native::{AiService, Participant};
use synq_chat::view::{self, Status};
use synq_chat::{AI_NAME, APP_ID, AiMode, AiState, ChatInput, ChatModel, EntryKind};
use synq_client::{ClientConfig, ClientError, SessionEvent};
use synq_model::ViewId;

#[derive(clap::Args)]
pub struct ChatArgs {
    /// The room link as the browser shows it: http://HOST:PORT/?q=ROOM#pw=PASSWORD
    #[arg(conflicts_with_all = ["server", "room"])]
    link: Option<String>,
    /// The synq server, e.g. http://127.0.0.1:8080 (with --room, instead of a link).
    #[arg(long, requires = "room", value_name = "URL")]
    server: Option<String>,
    /// The room's name (the link's ?q=…).
    #[arg(long, requires = "server", value_name = "NAME")]
    room: Option<String>,
    /// The room's password (the link's #pw=…); a link's own password wins.
    #[arg(long, env = "SYNQ_PASSWORD", hide_env_values = true, value_name = "PW")]
    password: Option<String>,
    /// Your name in the room [default: a random friendly one].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Never call the AI for the room (others in it will).
    #[arg(long)]
    no_relay: bool,
    /// Post this text and exit, without the interactive screen.
    #[arg(long, value_name = "TEXT")]
    say: Option<String>,
    /// With --say: wait for the AI's answer to the post and print it.
    #[arg(long, requires = "say")]
    wait_answer: bool,
    /// With --say: give up after this many seconds.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    timeout: u64,
}

/// Whether this run draws a screen (then nothing may be logged to the terminal).
pub fn is_interactive(args: &ChatArgs) -> bool {
    args.say.is_none()
}

/// The room named by the arguments.
fn room(args: &ChatArgs) -> anyhow::Result<(Room, String)> {
    let room = match (&args.link, &args.server, &args.room) {
        (Some(link), _, _) => parse_link(link)?,
        (None, Some(server), Some(name)) => {
            let server = server.trim().trim_end_matches('/');
            if !(server.starts_with("http://") || server.starts_with("https://")) {
                bail!("--server must be an http:// or https:// address, not {server:?}");
            }
            if name.is_empty() {
                bail!("--room needs a name");
            }
            Room {
                server: server.to_owned(),
                name: name.clone(),
                password: None,
            }
        }
        _ => bail!(
            "which room? Give its link (synq chat 'http://HOST:PORT/?q=ROOM#pw=PASSWORD') or --server, --room and --password"
        ),
    };
    let password = room
        .password
        .clone()
        .or_else(|| args.password.clone())
        .filter(|p| !p.is_empty())
        .context(
            "the room's password is missing: the link's #pw=… part, --password or SYNQ_PASSWORD",
        )?;
    Ok((room, password))
}

fn friendly_error(e: &ClientError, room: &Room) -> anyhow::Error {
    anyhow::anyhow!(view::client_error(e, &room.name, &room.server))
}

/// The AI as this participant reaches it: the gateway of the server it joined, which
/// picks the model itself.
pub(crate) fn gateway(server: &str) -> anyhow::Result<Arc<AiService>> {
    let cfg = OpenAiConfig::new(format!("{server}/ai/v1"), "default");
    let backend = OpenAiBackend::new(cfg).context("cannot set up the AI client")?;
    Ok(Arc::new(AiService(Arc::new(backend))))
}

pub async fn run(args: ChatArgs) -> anyhow::Result<()> {
    let (room, password) = room(&args)?;
    let name = args.name.clone().unwrap_or_else(friendly_name);
    let service = if args.no_relay {
        None
    } else {
        Some(gateway(&room.server)?)
    };
    let config = ClientConfig::for_server(&room.server, APP_ID, &room.name, &password);
    match &args.say {
        Some(text) => {
            let limit = Duration::from_secs(args.timeout);
            let work = say(config, &room, &name, service, text, args.wait_answer);
            match tokio::time::timeout(limit, work).await {
                Ok(result) => result,
                Err(_) if args.wait_answer && args.no_relay => bail!(
                    "no answer within {} s: is anyone in the room able to call the AI? (this participant was started with --no-relay)",
                    args.timeout
                ),
                Err(_) => bail!("gave up after {} s (--timeout)", args.timeout),
            }
        }
        None => {
            // Checked before joining, so that nobody sees a participant come and go.
            if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
                bail!(
                    "the chat screen needs a terminal; to post from a script, use --say (and --wait-answer)"
                );
            }
            let p = Participant::join(config, &name, service)
                .await
                .map_err(|e| friendly_error(&e, &room))?;
            let invite = room_link(&room.server, &room.name, &password);
            interactive(p, &room, &name, &invite, !args.no_relay).await
        }
    }
}

/// The entry of our post (the first by us after `after`), if it has arrived.
fn my_post(m: &ChatModel, me: &ViewId, after: u64) -> Option<u64> {
    m.history()
        .find(|e| e.id > after && matches!(&e.kind, EntryKind::Post { from, .. } if from == me))
        .map(|e| e.id)
}

/// How the AI's answer to the post `post` stands.
enum Answer {
    Pending,
    Done(String),
    Failed(String),
}

fn answer(m: &ChatModel, post: u64) -> Answer {
    // The model adds the answer's entry right after the post, in the same step, when it
    // asks the AI at all; a failure turns it into a notice in place.
    if !m.history().any(|e| e.id == post) {
        return Answer::Failed(format!(
            "the post is gone from the history (someone reset the chat?); {AI_NAME} did not answer"
        ));
    }
    match m.history().find(|e| e.id == post + 1).map(|e| &e.kind) {
        Some(EntryKind::Ai {
            text,
            state: AiState::Done | AiState::Stopped,
            post: p,
            ..
        }) if *p == post => Answer::Done(text.clone()),
        Some(EntryKind::Ai { post: p, .. }) if *p == post => Answer::Pending,
        Some(EntryKind::Notice { text }) => Answer::Failed(text.clone()),
        _ => Answer::Failed(format!(
            "{AI_NAME} was not asked: this room's AI mode is \"{}\" (it answers when addressed, e.g. \"@{AI_NAME} …\", when several people are here)",
            m.ai_mode().as_str()
        )),
    }
}

/// Why the session ended, from its last events.
fn ended(p: &Participant, room: &Room) -> anyhow::Error {
    p.take_events()
        .into_iter()
        .find_map(|e| match e {
            SessionEvent::Failed(e) => Some(friendly_error(&e, room)),
            _ => None,
        })
        .unwrap_or_else(|| anyhow::anyhow!("the session ended"))
}

/// `--say`: joins, posts, and with `wait_answer` prints the AI's answer.
async fn say(
    config: ClientConfig,
    room: &Room,
    name: &str,
    service: Option<Arc<AiService>>,
    text: &str,
    wait_answer: bool,
) -> anyhow::Result<()> {
    if text.trim().is_empty() {
        bail!("--say needs some text");
    }
    let mut p = Participant::join(config, name, service)
        .await
        .map_err(|e| friendly_error(&e, room))?;
    let me = p.handle().view_id().clone();
    let after = p
        .read(|m| m.history().last().map(|e| e.id))
        .flatten()
        .unwrap_or(0);
    // Waiting for the AI's answer means asking it, whoever else is in the room.
    let posted = if wait_answer {
        p.ask(text)
    } else {
        p.post(text)
    };
    posted.map_err(|e| anyhow::anyhow!("cannot post: {e}"))?;
    if p.until(|m| my_post(m, &me, after).is_some()).await.is_err() {
        return Err(ended(&p, room));
    }
    if !wait_answer {
        p.kill();
        return Ok(());
    }
    let post = p
        .read(|m| my_post(m, &me, after))
        .flatten()
        .context("the post vanished")?;
    let done = |m: &ChatModel| !matches!(answer(m, post), Answer::Pending);
    if p.until(done).await.is_err() {
        return Err(ended(&p, room));
    }
    let result = p.read(|m| answer(m, post));
    p.kill();
    match result {
        Some(Answer::Done(text)) => {
            // Scripts get the text as written, less what would act on a terminal.
            println!("{}", ui::sanitize(&text, true));
            Ok(())
        }
        Some(Answer::Failed(why)) => bail!("{}", ui::sanitize(&why, false)),
        Some(Answer::Pending) | None => bail!("the session ended before the answer"),
    }
}

/// Does what the user typed, as the room is `shown`; `true` to leave.
fn act(p: &Participant, input: &mut ui::Input, shown: &ui::Shown, action: ui::Action) -> bool {
    let hint = match action {
        ui::Action::Quit => return true,
        ui::Action::None => return false,
        ui::Action::Post(text) => return publish(p, input, ChatInput::post(text)),
        ui::Action::Reset => return publish(p, input, ChatInput::Reset),
        ui::Action::Stop if !shown.answering => {
            format!("Nothing to stop: {AI_NAME} is not answering.")
        }
        ui::Action::Stop => return publish(p, input, ChatInput::Stop),
        ui::Action::Again if shown.mode == AiMode::Off => {
            format!("{AI_NAME} is off in this room: /ai auto turns it on.")
        }
        ui::Action::Again
            if !shown
                .rows
                .iter()
                .any(|r| matches!(r.kind, ui::RowKind::Ai { .. })) =>
        {
            format!("No answer of {AI_NAME} to ask again.")
        }
        ui::Action::Again => return publish(p, input, ChatInput::Again { entry: None }),
        ui::Action::ListReplies => ui::replies_hint(shown),
        ui::Action::Reply { n, text } => match shown.repliable.get(n - 1) {
            Some((to, _)) => return publish(p, input, ChatInput::reply(text, *to)),
            None => {
                // Kept to be fixed, as an unknown command is.
                input.line = format!("/reply {n} {text}");
                format!("No message {n} to reply to: /reply lists them.")
            }
        },
        // Already so: say what it means.
        ui::Action::SetMode(mode) if mode == shown.mode => ui::mode_hint(mode),
        ui::Action::SetMode(mode) => return publish(p, input, ChatInput::SetAiMode(mode)),
        ui::Action::ShowMode => ui::mode_hint(shown.mode),
        ui::Action::SetInstructions(text) => {
            return publish(p, input, ChatInput::SetInstructions(text));
        }
        ui::Action::ShowInstructions => ui::instructions_hint(&shown.instructions),
        // Needs a download: `screen` does it.
        ui::Action::Earlier => return false,
    };
    input.hint = Some(hint);
    false
}

/// `/earlier`: loads the archive page before `oldest` into `earlier`; what to say.
async fn load_earlier(
    p: &Participant,
    me: &synq_model::ViewId,
    earlier: &mut Vec<ui::Row>,
    oldest: &mut Option<String>,
) -> String {
    let Some(Some(name)) = p.read(|m| m.page_before(oldest.as_deref()).map(|p| p.name.clone()))
    else {
        return "Nothing earlier: the room's archive has no older messages.".to_owned();
    };
    let entries = match p.handle().read_file(&name).await {
        Ok(file) => synq_chat::archived_entries(&file).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match entries {
        Ok(entries) => {
            let rows = ui::rows_of(&synq_chat::view::archived_rows(&entries, me));
            let n = rows.len();
            earlier.splice(0..0, rows);
            *oldest = Some(name);
            format!("{n} earlier messages above (/earlier for more).")
        }
        Err(e) => format!(
            "Could not load earlier messages: {}",
            ui::sanitize(&e, false)
        ),
    }
}

/// Sends `what` to the room; a failure shows as the hint. Never asks to leave.
fn publish(p: &Participant, input: &mut ui::Input, what: ChatInput) -> bool {
    if let Err(e) = p.handle().publish(what) {
        input.hint = Some(format!("not sent: {e}"));
    }
    false
}

/// Reads the terminal's events on a thread of its own (crossterm's reads block).
fn spawn_input(
    tx: tokio::sync::mpsc::UnboundedSender<std::io::Result<Event>>,
    stop: Arc<AtomicBool>,
) {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match crossterm::event::poll(Duration::from_millis(100)) {
                Ok(false) => {}
                Ok(true) => {
                    if tx.send(crossterm::event::read()).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    break;
                }
            }
        }
    });
}

async fn interactive(
    mut p: Participant,
    room: &Room,
    name: &str,
    invite: &str,
    relay: bool,
) -> anyhow::Result<()> {
    // Raw mode and the alternate screen; the panic hook it installs restores the terminal.
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    // A pasted text arrives whole, instead of as keys whose newlines would post each line.
    let _ = crossterm::execute!(std::io::stdout(), crossterm::event::EnableBracketedPaste);
    let (tx, mut keys) = tokio::sync::mpsc::unbounded_channel();
    let stop = Arc::new(AtomicBool::new(false));
    spawn_input(tx, Arc::clone(&stop));
    let result = screen(&mut terminal, &mut p, room, name, invite, relay, &mut keys).await;
    let _ = crossterm::execute!(std::io::stdout(), crossterm::event::DisableBracketedPaste);
    ratatui::restore();
    stop.store(true, Ordering::Relaxed);
    p.kill();
    result
}

async fn screen(
    terminal: &mut ratatui::DefaultTerminal,
    p: &mut Participant,
    room: &Room,
    name: &str,
    invite: &str,
    relay: bool,
    keys: &mut tokio::sync::mpsc::UnboundedReceiver<std::io::Result<Event>>,
) -> anyhow::Result<()> {
    let me = p.handle().view_id().clone();
    let mut status = Status::Connected;
    let mut input = ui::Input::default();
    let mut alive = true;
    // `/earlier`: the archive's rows loaded so far, the oldest page among them, and the
    // room's newest page then (a new page or a reset starts over).
    let mut earlier: Vec<ui::Row> = Vec::new();
    let mut oldest: Option<String> = None;
    let mut newest: Option<String> = None;
    loop {
        for event in p.take_events() {
            if let Some(s) = Status::after(&event, &room.name, &room.server) {
                status = s;
            }
        }
        let mut shown = p
            .read(|m| ui::shown(m, &me, name, invite))
            .unwrap_or_default();
        if shown.newest_page != newest {
            earlier.clear();
            oldest = None;
            newest = shown.newest_page.clone();
        }
        shown.earlier = earlier.clone();
        let header = ui::Header {
            room: &room.name,
            server: &room.server,
            status: &status,
            relay,
        };
        let mut max_back = 0;
        terminal.draw(|frame| max_back = ui::draw(frame, &header, &shown, &input))?;
        input.scroll_back = input.scroll_back.min(max_back);
        tokio::select! {
            event = keys.recv() => match event {
                Some(Ok(Event::Key(key))) => {
                    let action = input.on_key(key);
                    if action == ui::Action::Earlier {
                        input.hint = Some(load_earlier(p, &me, &mut earlier, &mut oldest).await);
                    } else if act(p, &mut input, &shown, action) {
                        return Ok(());
                    }
                }
                Some(Ok(Event::Paste(text))) => input.paste(&text),
                // Resizes and the like: just draw again.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context("cannot read the terminal"),
                None => return Ok(()),
            },
            changed = p.changed(), if alive => {
                if changed.is_err() {
                    alive = false;
                    if !status.failed() {
                        status = Status::Failed("The session ended".into());
                    }
                }
            }
        }
    }
}
