//! `synq bot`: a headless chat participant that stays in its rooms for good and relays
//! their AI requests. It declares a higher preference in the relay election than browser
//! tabs and `synq chat` (which declare 0), so it takes over when it joins; it calls the AI
//! gateway of each room's server, or its own AI (`--ai-url`, `--ai-model-path`…). Each
//! room rejoins forever after its session ends, with a capped, jittered backoff. SIGTERM
//! or SIGINT: it leaves every room and exits 0.

use std::collections::BTreeSet;
use std::hash::{BuildHasher as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use synq_ai::ChatBackend;
use synq_ai::gateway::BackendState;
use synq_ai::openai::OpenAiBackend;
use synq_chat::link::{Room, parse_link};
use synq_chat::native::{AiService, Participant, Relaying};
use synq_chat::{APP_ID, AiState, ChatModel, EntryKind};
use synq_client::{ClientConfig, SessionEvent};
use synq_model::ViewId;
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::ai_args::AiBackendArgs;

/// Browser tabs and `synq chat` declare 0 in the relay election.
const DEFAULT_PREFERENCE: i32 = 100;
/// The first wait before rejoining a room; it doubles per failed attempt up to the cap.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// A session that lasted this long was a success: the next failure waits the least again.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// After SIGTERM, how long the sessions get to close their connections.
const LEAVE_GRACE: Duration = Duration::from_millis(300);

#[derive(clap::Args)]
pub struct BotArgs {
    /// Room links to serve, as the browser shows them: http://HOST:PORT/?q=ROOM#pw=PASSWORD
    /// (arguments show in `ps`: on a shared machine prefer --links).
    #[arg(value_name = "LINK")]
    links: Vec<String>,
    /// A file of room links, one per line; blank lines and lines starting with # are
    /// skipped.
    #[arg(long = "links", value_name = "FILE")]
    links_file: Option<PathBuf>,
    /// The bot's name in the rooms.
    #[arg(long, default_value = "synq bot", value_name = "NAME")]
    name: String,
    /// Its preference in each room's relay election: browser tabs and `synq chat` declare
    /// 0, and a higher preference takes over when it joins (of two bots, the higher one
    /// relays and the other stands by).
    #[arg(long, default_value_t = DEFAULT_PREFERENCE, allow_negative_numbers = true)]
    preference: i32,
    /// Longest wait, in seconds, before rejoining a room whose session ended (the wait
    /// doubles from 1 s per failed attempt, with random jitter).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    max_backoff: u64,
    /// The AI to call instead of the gateway of each room's server (by default the bot
    /// calls the gateway, with the AI capability the server hands it).
    #[command(flatten)]
    ai: AiBackendArgs,
}

/// A room to serve: where, and its password.
struct RoomSpec {
    room: Room,
    password: String,
}

/// Reads the rooms from the arguments and the links file; errors name the bad line.
fn rooms(args: &BotArgs) -> anyhow::Result<Vec<RoomSpec>> {
    let mut links: Vec<(String, String)> = args
        .links
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("argument {}", i + 1), l.clone()))
        .collect();
    if let Some(path) = &args.links_file {
        links.extend(read_links(path)?);
    }
    if links.is_empty() {
        bail!(
            "which rooms? Give their links (synq bot 'http://HOST:PORT/?q=ROOM#pw=PASSWORD' …) or --links FILE"
        );
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (place, link) in links {
        let room = parse_link(&link).map_err(|_| link_error(&place, &link))?;
        let Some(password) = room.password.clone().filter(|p| !p.is_empty()) else {
            bail!("{place}: the link has no password (its #pw=… part)");
        };
        if seen.insert((room.server.clone(), room.name.clone())) {
            out.push(RoomSpec { room, password });
        }
    }
    Ok(out)
}

/// Why `link` is not a room link, without its password: parse_link's own error quotes the
/// link whole, and this one goes to the journal.
fn link_error(place: &str, link: &str) -> anyhow::Error {
    let without_password = match link.split_once('#') {
        Some((before, _)) => format!("{before}#…"),
        None => link.to_owned(),
    };
    match parse_link(&without_password) {
        Err(e) => anyhow::anyhow!("{place}: {e}"),
        Ok(_) => anyhow::anyhow!("{place}: the link's #pw=… part cannot be read"),
    }
}

fn read_links(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the links file {}", path.display()))?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(i, line)| (i, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(i, line)| {
            (
                format!("{} line {}", path.display(), i + 1),
                line.to_owned(),
            )
        })
        .collect())
}

/// What the bot calls.
#[derive(Clone)]
enum Ai {
    /// The gateway of each room's own server.
    Gateway,
    /// Its own AI, the same for every room.
    Own(Arc<AiService>),
}

impl Ai {
    fn relaying(&self, server: &str, preference: i32) -> anyhow::Result<Relaying> {
        Ok(match self {
            Ai::Gateway => Relaying {
                service: crate::chat::gateway(server)?,
                preference,
                gateway: true,
            },
            Ai::Own(service) => Relaying {
                service: Arc::clone(service),
                preference,
                gateway: false,
            },
        })
    }
}

/// The bot's own AI, ready to answer (an embedded model is downloaded and loaded first:
/// a bot that joined meanwhile would take the rooms over only to fail their requests).
async fn own_ai(args: &AiBackendArgs) -> anyhow::Result<Ai> {
    if let Some(config) = args.openai_config()? {
        tracing::info!(url = %config.base_url, model = %config.model, "AI: an OpenAI-compatible service");
        let backend = OpenAiBackend::new(config).context("cannot set up the AI client")?;
        return Ok(Ai::Own(Arc::new(AiService(Arc::new(backend)))));
    }
    let slot = crate::ai::start(args, false, None)?;
    let backend: Arc<dyn ChatBackend> = loop {
        match slot.get() {
            BackendState::Ready(backend) => break backend,
            BackendState::Unavailable(why) => bail!("no AI: {why}"),
            // Loading: `settled` returns when it is done; a download reports its progress
            // in the slot (looked at once a second).
            BackendState::Loading(_) => {
                slot.settled(Duration::from_secs(3600)).await;
            }
            BackendState::Preparing(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    };
    Ok(Ai::Own(Arc::new(AiService(backend))))
}

pub async fn run(args: BotArgs) -> anyhow::Result<()> {
    let rooms = rooms(&args)?;
    // Before anything else: a SIGTERM while the model loads or the rooms are joined still
    // leaves cleanly instead of killing the process.
    let (stop_tx, stop) = watch::channel(false);
    let signals = crate::signals::stop_signals()?;
    tokio::spawn(async move {
        let which = signals.await;
        tracing::info!("{which}: leaving the rooms");
        stop_tx.send_replace(true);
    });
    let ai = if args.ai.chosen() {
        tokio::select! {
            ai = own_ai(&args.ai) => ai?,
            _ = wait_stop(stop.clone()) => return Ok(()),
        }
    } else {
        tracing::info!("AI: the gateway of each room's server");
        Ai::Gateway
    };
    let max_backoff = Duration::from_secs(args.max_backoff.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for spec in rooms {
        let span = tracing::info_span!("room", room = %spec.room.name, server = %spec.room.server);
        let relaying = ai.relaying(&spec.room.server, args.preference)?;
        let config =
            ClientConfig::for_server(&spec.room.server, APP_ID, &spec.room.name, &spec.password);
        tasks.spawn(
            serve_room(
                config,
                args.name.clone(),
                relaying,
                max_backoff,
                stop.clone(),
            )
            .instrument(span),
        );
    }
    while tasks.join_next().await.is_some() {}
    // The sessions were dropped: give them a moment to send their close frames (the
    // reflector also notices a closed socket at once, but a clean close says why).
    tokio::time::sleep(LEAVE_GRACE).await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_stop(mut stop: watch::Receiver<bool>) {
    // An error: the sender is gone, which happens only when the process is ending.
    let _ = stop.wait_for(|s| *s).await;
}

/// The wait before rejoining after `failures` failed attempts in a row (at least 1):
/// doubling from [`FIRST_BACKOFF`] up to `max`, then a random point in its upper half, so
/// that bots (and rooms) that lost the server together do not return together.
fn backoff(failures: u32, max: Duration) -> Duration {
    let ceiling = FIRST_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(max);
    // Any per-process randomness will do for jitter (RandomState's keys come from the OS).
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let half = ceiling / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(random % nanos.max(1))
}

/// Serves one room until the bot stops: joins, relays, and rejoins after the session
/// ends.
async fn serve_room(
    config: ClientConfig,
    name: String,
    relaying: Relaying,
    max_backoff: Duration,
    stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        tracing::info!("joining");
        let relaying = Relaying {
            service: Arc::clone(&relaying.service),
            ..relaying
        };
        let started = Instant::now();
        let joined = tokio::select! {
            joined = Participant::join_relaying(config.clone(), &name, Some(relaying)) => joined,
            _ = wait_stop(stop.clone()) => {
                tracing::info!("stopped before joining");
                return;
            }
        };
        match joined {
            Ok(p) => match stay(p, stop.clone()).await {
                Ended::Stopped => return,
                Ended::Session(why) => tracing::warn!("the session ended: {why}"),
            },
            Err(e) => tracing::warn!("cannot join: {e}"),
        }
        failures = if started.elapsed() >= STABLE_AFTER {
            1
        } else {
            failures.saturating_add(1)
        };
        let wait = backoff(failures, max_backoff);
        tracing::info!("reconnecting in {:.1}s", wait.as_secs_f64());
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = wait_stop(stop.clone()) => return,
        }
    }
}

enum Ended {
    /// The bot is stopping (and has left the room).
    Stopped,
    /// The session ended by itself, for this reason.
    Session(String),
}

/// What the bot is doing in a room, to log its changes.
#[derive(Default)]
struct Doing {
    elected: bool,
    /// Relay requests assigned to this bot, with the entry id of their post.
    answering: BTreeSet<(u64, u64)>,
}

fn doing(m: &ChatModel, me: &ViewId) -> Doing {
    let answering = m
        .relay()
        .assigned_to(me)
        .map(|r| (r.id, post_of(m, r.id).unwrap_or(0)))
        .collect();
    Doing {
        elected: m.elected() == Some(me),
        answering,
    }
}

/// The post that relay request `request` answers, and the state of its answer.
fn answer_of(m: &ChatModel, request: u64) -> Option<(u64, AiState)> {
    m.history().find_map(|e| match &e.kind {
        EntryKind::Ai {
            request: r,
            post,
            state,
            ..
        } if *r == request => Some((*post, *state)),
        _ => None,
    })
}

fn post_of(m: &ChatModel, request: u64) -> Option<u64> {
    answer_of(m, request).map(|(post, _)| post)
}

/// Stays in the room until the session ends or the bot stops, logging what it does.
async fn stay(mut p: Participant, stop: watch::Receiver<bool>) -> Ended {
    let me = p.handle().view_id().clone();
    tracing::info!(view = %me, "joined");
    let mut was = Doing::default();
    let mut last_failure = None;
    loop {
        for event in p.take_events() {
            match event {
                SessionEvent::Reconnecting(why) => {
                    tracing::info!("connection lost ({why}); reconnecting");
                }
                SessionEvent::Synced => tracing::info!("reconnected"),
                SessionEvent::Rejected(why) => tracing::warn!("a message was dropped: {why}"),
                SessionEvent::Diverged { mine, .. } => {
                    tracing::error!(snapshot = %mine, "this replica diverged from the others");
                }
                SessionEvent::Info(text) => tracing::info!("the reflector says: {text}"),
                SessionEvent::Failed(e) => last_failure = Some(e.to_string()),
                SessionEvent::Restored { schema } => {
                    tracing::info!(
                        "the room started from what an earlier version ({schema}) saved"
                    );
                }
                SessionEvent::Output(_)
                | SessionEvent::SnapshotUploaded { .. }
                | SessionEvent::PersistedUploaded { .. }
                | SessionEvent::FileUploaded { .. } => {}
            }
        }
        if let Some(now) = p.read(|m| doing(m, &me)) {
            log_changes(&was, &now, &p);
            was = now;
        }
        tokio::select! {
            changed = p.changed() => if changed.is_err() {
                // Its last events say why.
                for event in p.take_events() {
                    if let SessionEvent::Failed(e) = event {
                        last_failure = Some(e.to_string());
                    }
                }
                return Ended::Session(last_failure.unwrap_or_else(|| "the connection ended".into()));
            },
            _ = wait_stop(stop.clone()) => {
                p.kill();
                tracing::info!("left");
                return Ended::Stopped;
            }
        }
    }
}

fn log_changes(was: &Doing, now: &Doing, p: &Participant) {
    match (was.elected, now.elected) {
        (false, true) => tracing::info!("elected: this bot relays the room's AI requests"),
        (true, false) => tracing::info!("no longer elected: another participant relays"),
        _ => {}
    }
    for (request, post) in now.answering.difference(&was.answering) {
        tracing::info!(request, "answering post {post}");
    }
    for (request, post) in was.answering.difference(&now.answering) {
        match p.read(|m| answer_of(m, *request)).flatten() {
            Some((_, state)) => tracing::info!(request, "post {post}: answer {state:?}"),
            None => tracing::info!(request, "post {post}: request ended"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        bot: BotArgs,
    }

    fn args(argv: &[&str]) -> BotArgs {
        Cli::try_parse_from(std::iter::once("bot").chain(argv.iter().copied()))
            .map(|c| c.bot)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn rooms_come_from_arguments_and_a_links_file_once_each() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("links");
        std::fs::write(
            &file,
            "# the team's rooms\n\n  http://h:1/?q=a#pw=x  \nhttp://h:1/?q=b#pw=y\n# http://h:1/?q=c#pw=z\n",
        )
        .expect("write");
        let file = file.to_str().expect("utf-8");
        let got = rooms(&args(&["http://h:1/?q=b#pw=y", "--links", file])).expect("rooms");
        let names: Vec<_> = got
            .iter()
            .map(|r| (r.room.name.as_str(), r.password.as_str()))
            .collect();
        assert_eq!(names, [("b", "y"), ("a", "x")]);
    }

    #[test]
    fn a_bad_link_is_named_by_its_place_and_its_password_never_shown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("links");
        std::fs::write(
            &file,
            "http://h:1/?q=a#pw=x\nhttp://h:1/some/path?q=b#pw=s3cret\n",
        )
        .expect("write");
        let file = file.to_str().expect("utf-8");
        let e = rooms(&args(&["--links", file]))
            .err()
            .expect("an error")
            .to_string();
        assert!(e.contains("line 2") && e.contains("has a path"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let e = rooms(&args(&["http://h:1/?q=a"]))
            .err()
            .expect("an error")
            .to_string();
        assert!(e.contains("argument 1") && e.contains("no password"), "{e}");
        let e = rooms(&args(&["http://h:1/?q=a#pw=%zz"]))
            .err()
            .expect("an error")
            .to_string();
        assert!(e.contains("#pw=") && !e.contains("%zz"), "{e}");
        assert!(rooms(&args(&[])).is_err(), "no rooms");
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() {
        let max = Duration::from_secs(60);
        for failures in 1..=12u32 {
            let ceiling = Duration::from_secs(1 << (failures - 1).min(20)).min(max);
            for _ in 0..50 {
                let wait = backoff(failures, max);
                assert!(
                    wait >= ceiling / 2 && wait <= ceiling,
                    "{failures}: {wait:?} not in the upper half of {ceiling:?}"
                );
            }
        }
        let waits: BTreeSet<_> = (0..20).map(|_| backoff(8, max)).collect();
        assert!(waits.len() > 10, "jittered: {waits:?}");
        assert!(backoff(u32::MAX, max) <= max);
    }
}
