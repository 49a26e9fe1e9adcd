//! `synq bot` end to end: the real binary in a room of a real `synq serve`, whose AI
//! gateway forwards to a real HTTP upstream that counts its calls; the people in the room
//! cannot reach any AI themselves (they join without a relay service).

// Not model code: a test of the synq binary, which reads its log on a thread (clippy.toml's
// determinism rules are for model code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

mod common;

use synq_ai::testing::{FAKE_MODEL, FakeUpstream, Reply};
use synq_chat::link::room_link;
use synq_chat::native::Participant;
use synq_chat::{APP_ID, AiState, ChatModel, EntryKind};
use synq_client::ClientConfig;
use tokio::sync::mpsc;

/// Joins derive the room key with the full PBKDF2 rounds (the bot's own, which the
/// participants must match), on a machine that may be busy.
const PATIENCE: Duration = Duration::from_secs(60);
const PASSWORD: &str = "bot-room-password";
const BOT: &str = "Relay Bot";

/// A running `synq bot`, its stderr (the log) read line by line.
struct Bot {
    /// `None` once it has been waited for.
    child: Option<Child>,
    log: mpsc::UnboundedReceiver<String>,
    /// Every line so far, for failure messages.
    seen: Vec<String>,
}

impl Bot {
    fn start(args: &[&str]) -> Bot {
        Bot::start_with_env(args, &[])
    }

    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Bot {
        let mut child = Command::new(env!("CARGO_BIN_EXE_synq"))
            .arg("bot")
            .args(["--name", BOT])
            .args(args)
            .env("RUST_LOG", "info")
            // Its AI is the one the test gives it, whatever the environment says.
            .env_remove("SYNQ_AI_URL")
            .env_remove("SYNQ_AI_MODEL")
            .env_remove("SYNQ_AI_KEY")
            .env_remove("SYNQ_AI_MODEL_PATH")
            .env_remove("SYNQ_AI_EMBEDDED_MODEL")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start synq bot");
        let stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let (tx, log) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Bot {
            child: Some(child),
            log,
            seen: Vec::new(),
        }
    }

    /// Waits until `n` lines of its log (from its start) contain `needle`.
    async fn logged(&mut self, needle: &str, n: usize) {
        let wait = async {
            loop {
                if self.seen.iter().filter(|l| l.contains(needle)).count() >= n {
                    return true;
                }
                match self.log.recv().await {
                    Some(line) => self.seen.push(line),
                    None => return false,
                }
            }
        };
        match tokio::time::timeout(PATIENCE, wait).await {
            Ok(true) => {}
            Ok(false) => panic!("synq bot ended before logging {needle:?}: {:#?}", self.seen),
            Err(_) => panic!("synq bot did not log {needle:?} {n}×: {:#?}", self.seen),
        }
    }

    async fn line(&mut self, needle: &str) {
        self.logged(needle, 1).await;
    }

    /// SIGKILL: no goodbye.
    fn kill(mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill");
        child.wait().expect("wait");
    }

    /// SIGTERM, and its exit status.
    async fn terminate(mut self) -> (ExitStatus, Vec<String>) {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        let status = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::task::spawn_blocking(move || child.wait()),
        )
        .await
        .expect("synq bot exits within 10 s of SIGTERM")
        .expect("join")
        .expect("wait");
        // The rest of its log.
        while let Some(line) = self.log.recv().await {
            self.seen.push(line);
        }
        (status, std::mem::take(&mut self.seen))
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn join(base: &str, room: &str, name: &str) -> Participant {
    let config = ClientConfig::for_server(base, APP_ID, room, PASSWORD);
    // No AI service: these participants cannot answer anything.
    tokio::time::timeout(PATIENCE, Participant::join(config, name, None))
        .await
        .expect("joined in time")
        .expect("join")
}

async fn wait(p: &mut Participant, what: &str, pred: impl Fn(&ChatModel) -> bool) {
    if tokio::time::timeout(PATIENCE, p.until(&pred))
        .await
        .is_err()
    {
        let history = p.read(|m| {
            m.history()
                .map(|e| format!("{:?}", e.kind))
                .collect::<Vec<_>>()
        });
        panic!("timed out waiting for {what}; history: {history:#?}");
    }
}

fn answers(m: &ChatModel) -> Vec<(String, AiState)> {
    m.history()
        .filter_map(|e| match &e.kind {
            EntryKind::Ai { text, state, .. } => Some((text.clone(), *state)),
            _ => None,
        })
        .collect()
}

fn people(m: &ChatModel) -> Vec<String> {
    m.users().map(|(_, n)| n.to_owned()).collect()
}

fn bot_is_elected(m: &ChatModel) -> bool {
    m.elected()
        .and_then(|v| m.name_of(v))
        .is_some_and(|n| n == BOT)
}

#[tokio::test]
async fn the_bot_answers_for_a_room_that_cannot_once_per_post_across_a_kill_and_leaves_on_sigterm()
{
    let upstream = FakeUpstream::start().await;
    // The first call streams "Partial" and then hangs; later ones answer in full.
    upstream.script([Reply::gated(&["Partial", " answer", " never finished"])]);
    upstream.set_default(Reply::text(&["The", " whole", " answer."]));
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::serve(
        dir.path(),
        &["--ai-url", &upstream.base_url, "--ai-model", FAKE_MODEL],
    );
    let room = "bot-room";
    let mut ann = join(&server.base, room, "Ann").await;
    let mut bob = join(&server.base, room, "Bob").await;

    // One process, two rooms, one of them from a links file (with a comment).
    let links = dir.path().join("links");
    std::fs::write(
        &links,
        format!(
            "# rooms of the bot\n\n{}\n",
            room_link(&server.base, room, PASSWORD)
        ),
    )
    .expect("write links");
    let links = links.to_str().expect("utf-8 path").to_owned();
    let other = room_link(&server.base, "other-room", PASSWORD);
    let mut bot = Bot::start(&["--links", &links, &other]);
    bot.line("joined").await;
    bot.line("elected").await;
    for p in [&mut ann, &mut bob] {
        wait(p, "the bot in the room, elected", |m| {
            people(m).len() == 3 && bot_is_elected(m)
        })
        .await;
    }

    ann.post("@AI tell me something").expect("post");
    for p in [&mut ann, &mut bob] {
        wait(p, "the partial answer", |m| {
            answers(m) == [("Partial".to_string(), AiState::Streaming)]
        })
        .await;
    }
    bot.line("answering post").await;
    assert_eq!(
        upstream.request_count(),
        1,
        "one upstream call for the post"
    );
    let system = upstream.requests()[0]["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        system.contains("Ann, Bob") && !system.contains(BOT),
        "the AI is told who is here, people and not the bot: {system}"
    );

    // Killed mid-answer: its call to the gateway, and the gateway's upstream call, end;
    // nobody left can answer, so the answer waits, its partial text gone.
    bot.kill();
    tokio::time::timeout(PATIENCE, upstream.wait_disconnects(1))
        .await
        .expect("the killed bot's upstream call was cancelled");
    for p in [&mut ann, &mut bob] {
        wait(p, "the bot gone and the answer waiting again", |m| {
            people(m).len() == 2 && answers(m) == [(String::new(), AiState::Waiting)]
        })
        .await;
    }

    // Restarted: it takes the room over again and answers the post anew, once.
    let mut bot = Bot::start(&["--links", &links, &other]);
    bot.line("answering post").await;
    for p in [&mut ann, &mut bob] {
        wait(p, "the restarted answer", |m| {
            answers(m) == [("The whole answer.".to_string(), AiState::Done)]
        })
        .await;
        let texts: Vec<String> = p
            .read(|m| m.history().map(|e| format!("{:?}", e.kind)).collect())
            .unwrap_or_default();
        assert!(
            !texts.iter().any(|t| t.contains("Partial")),
            "the partial answer is gone: {texts:#?}"
        );
    }
    assert_eq!(
        upstream.request_count(),
        2,
        "the killed attempt and its one re-issue"
    );

    // Another post: one more upstream call, one more answer.
    bob.post("@AI and one more thing").expect("post");
    for p in [&mut ann, &mut bob] {
        wait(p, "the second answer", |m| {
            answers(m).len() == 2 && answers(m)[1] == ("The whole answer.".into(), AiState::Done)
        })
        .await;
    }
    assert_eq!(upstream.request_count(), 3, "one upstream call per post");
    let h_ann = ann.read(|m| m.history().cloned().collect::<Vec<_>>());
    let h_bob = bob.read(|m| m.history().cloned().collect::<Vec<_>>());
    assert_eq!(h_ann, h_bob, "both participants see the same history");

    // SIGTERM, once it is in both rooms: it leaves them and exits 0, promptly.
    bot.logged("joined", 2).await;
    let (status, log) = bot.terminate().await;
    assert!(status.success(), "exit status {status:?}; log: {log:#?}");
    assert_eq!(
        log.iter().filter(|l| l.contains(" left")).count(),
        2,
        "it says it left each room: {log:#?}"
    );
    for p in [&mut ann, &mut bob] {
        wait(p, "the bot's leave", |m| {
            let mut here = people(m);
            here.sort();
            here == ["Ann", "Bob"]
        })
        .await;
        let left = p.read(|m| {
            m.history()
                .any(|e| matches!(&e.kind, EntryKind::Left { name } if name == BOT))
        });
        assert_eq!(left, Some(true), "the room shows that the bot left");
    }
}

/// A participant that can relay (as every browser tab can) holds the election; the bot
/// takes it over when it joins, answers a post that a person alone gets answered, and
/// hands the election back when it leaves.
#[tokio::test]
async fn the_bot_takes_the_election_over_from_a_participant_that_relays_and_hands_it_back() {
    let upstream = FakeUpstream::start().await;
    upstream.set_default(Reply::text(&["Hi", " there."]));
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::serve(
        dir.path(),
        &["--ai-url", &upstream.base_url, "--ai-model", FAKE_MODEL],
    );
    let room = "tab-room";
    let config = ClientConfig::for_server(&server.base, APP_ID, room, PASSWORD);
    let gateway = synq_ai::openai::OpenAiBackend::new(synq_ai::openai::OpenAiConfig::new(
        format!("{}/ai/v1", server.base),
        "chosen-by-the-server",
    ))
    .expect("backend");
    let service = std::sync::Arc::new(synq_chat::native::AiService(std::sync::Arc::new(gateway)));
    let mut tab = tokio::time::timeout(PATIENCE, Participant::join(config, "Tab", Some(service)))
        .await
        .expect("joined in time")
        .expect("join");
    let tab_id = tab.handle().view_id().clone();
    wait(&mut tab, "the tab elected", |m| {
        m.elected() == Some(&tab_id)
    })
    .await;

    let mut bot = Bot::start(&[&room_link(&server.base, room, PASSWORD)]);
    bot.line("elected").await;
    wait(&mut tab, "the bot elected", bot_is_elected).await;
    // Not addressed to the AI: in the auto mode a person alone with the bot is still
    // alone, and gets an answer.
    tab.post("what is the capital of France?").expect("post");
    bot.line("answering post").await;
    wait(&mut tab, "the answer", |m| {
        answers(m) == [("Hi there.".to_string(), AiState::Done)]
    })
    .await;
    assert_eq!(upstream.request_count(), 1);

    let (status, log) = bot.terminate().await;
    assert!(status.success(), "exit status {status:?}; log: {log:#?}");
    wait(&mut tab, "the tab elected again", |m| {
        m.elected() == Some(&tab_id) && people(m) == ["Tab"]
    })
    .await;
}

/// The delays of the bot's "reconnecting in Xs" lines so far.
fn delays(log: &[String]) -> Vec<f64> {
    log.iter()
        .filter_map(|l| l.split("reconnecting in ").nth(1))
        .filter_map(|rest| rest.trim().strip_suffix('s')?.parse().ok())
        .collect()
}

/// Started before its server: it keeps trying, waiting longer each time up to
/// --max-backoff, and joins once the server is up.
#[tokio::test]
async fn the_bot_keeps_trying_with_a_capped_backoff_until_the_server_is_up() {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let room = "early-room";
    let mut bot = Bot::start(&["--max-backoff", "2", &room_link(&base, room, PASSWORD)]);
    bot.logged("cannot join", 3).await;
    bot.logged("reconnecting in", 3).await;
    let waits = delays(&bot.seen);
    assert!(
        waits.len() >= 3 && waits.iter().all(|w| (0.5..=2.0).contains(w)),
        "waits of 0.5 s to 2 s (the cap): {waits:?}"
    );
    assert!(
        waits[2] >= 1.0,
        "the third wait is at least half the cap: {waits:?}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let _server = serve_on(port, dir.path(), &["--no-ai"]);
    bot.line("joined").await;
    bot.line("elected").await;
    let mut ann = join(&base, room, "Ann").await;
    wait(&mut ann, "the bot in the room", bot_is_elected).await;
}

/// `synq serve` on `port` with `dir` (a restart keeps both), killed when dropped.
fn serve_on(port: u16, dir: &std::path::Path, args: &[&str]) -> KillOnDrop {
    let mut server = Command::new(env!("CARGO_BIN_EXE_synq"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start synq serve");
    let stdout = server.stdout.take().expect("stdout");
    let server = KillOnDrop(server);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the listening line");
    assert!(line.contains(&format!(":{port}")), "{line}");
    server
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Its server is killed and comes back on the same address: the bot's session rejoins by
/// itself, with the new server's AI capability, and answers the next post.
#[tokio::test]
async fn the_bot_rejoins_after_its_server_restarts_and_answers_again() {
    let upstream = FakeUpstream::start().await;
    upstream.set_default(Reply::text(&["Back", " again."]));
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let ai = [
        "--ai-url",
        upstream.base_url.as_str(),
        "--ai-model",
        FAKE_MODEL,
    ];
    let server = serve_on(port, dir.path(), &ai);
    let room = "restart-room";
    let mut bot = Bot::start(&[&room_link(&base, room, PASSWORD)]);
    bot.line("elected").await;

    drop(server);
    bot.line("connection lost").await;
    let _server = serve_on(port, dir.path(), &ai);
    bot.line("reconnected").await;

    let mut ann = join(&base, room, "Ann").await;
    wait(&mut ann, "the bot in the room, elected", bot_is_elected).await;
    ann.post("are you there?").expect("post");
    wait(&mut ann, "the answer", |m| {
        answers(m) == [("Back again.".to_string(), AiState::Done)]
    })
    .await;
    assert_eq!(upstream.request_count(), 1);
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// With --ai-url, the bot calls its own AI service (with its own key) instead of the room
/// server's gateway, and never hands that service the room's AI capability.
#[tokio::test]
async fn with_its_own_ai_the_bot_calls_it_with_its_key_and_not_the_rooms_gateway() {
    let gateway_upstream = FakeUpstream::start().await;
    let own = FakeUpstream::start().await;
    own.set_default(Reply::text(&["From", " the bot's", " own AI."]));
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::serve(
        dir.path(),
        &[
            "--ai-url",
            &gateway_upstream.base_url,
            "--ai-model",
            FAKE_MODEL,
        ],
    );
    let room = "own-ai-room";
    let mut ann = join(&server.base, room, "Ann").await;
    let mut bot = Bot::start_with_env(
        &[
            "--ai-url",
            &own.base_url,
            "--ai-model",
            "bots-model",
            &room_link(&server.base, room, PASSWORD),
        ],
        &[("SYNQ_AI_KEY", "the-bots-key")],
    );
    bot.line("elected").await;
    wait(&mut ann, "the bot elected", bot_is_elected).await;
    ann.post("hello").expect("post");
    wait(&mut ann, "the answer", |m| {
        answers(m) == [("From the bot's own AI.".to_string(), AiState::Done)]
    })
    .await;
    assert_eq!(own.request_count(), 1);
    assert_eq!(
        gateway_upstream.request_count(),
        0,
        "the gateway was not used"
    );
    assert_eq!(own.requests()[0]["model"], "bots-model");
    let auth = own
        .last_headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok().map(str::to_owned));
    assert_eq!(
        auth.as_deref(),
        Some("Bearer the-bots-key"),
        "its own key, not the room's capability"
    );
}
