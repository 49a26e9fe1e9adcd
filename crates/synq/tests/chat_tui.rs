//! `synq chat` against a real `synq serve` whose AI gateway forwards to a fake upstream:
//! the real binary posts, relays the AI request itself and prints the answer.

// Not model code: a test of the synq binary, which measures and waits on wall-clock time
// (clippy.toml's determinism rules are for model code).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use synq_ai::testing::{FAKE_MODEL, FakeUpstream, Reply, within};

fn serve(data_dir: &std::path::Path, ai_url: &str) -> common::Serve {
    common::serve(data_dir, &["--ai-url", ai_url, "--ai-model", FAKE_MODEL])
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `synq chat ARGS…`, as a script would run it.
async fn chat(args: &[&str]) -> Run {
    chat_with_password_env(args, None).await
}

async fn chat_with_password_env(args: &[&str], password: Option<&str>) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_synq"));
    match password {
        Some(p) => cmd.env("SYNQ_PASSWORD", p),
        None => cmd.env_remove("SYNQ_PASSWORD"),
    };
    let out = cmd
        .arg("chat")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), out)
        .await
        .expect("synq chat finished in time")
        .expect("run synq chat");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn say_and_wait_for_the_answer_twice_in_one_room_then_a_wrong_password_fails() {
    let upstream = FakeUpstream::start().await;
    upstream.set_default(Reply::text(&["Hello", " from", " the fake AI."]));
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &upstream.base_url);
    let addr = server.base.strip_prefix("http://").expect("an http base");
    let link = format!("http://{addr}/?q=room1#pw=secret");

    for round in 1..=2 {
        let started = Instant::now();
        let run = chat(&[&link, "--say", "hello", "--wait-answer", "--timeout", "60"]).await;
        assert!(run.ok, "round {round}: exit status; stderr: {}", run.stderr);
        assert_eq!(
            run.stdout.trim(),
            "Hello from the fake AI.",
            "round {round}"
        );
        eprintln!("round {round}: {:?}", started.elapsed());
    }
    assert_eq!(upstream.request_count(), 2, "one upstream request per post");
    // The second prompt carries the first exchange: both runs were in the same room.
    let messages = upstream.requests()[1]["messages"].clone();
    let turns: Vec<(&str, &str)> = messages
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| Some((m["role"].as_str()?, m["content"].as_str()?)))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        turns.contains(&("assistant", "Hello from the fake AI.")),
        "the first answer is in the second prompt: {turns:?}"
    );

    // The same room, another password: refused, with a message that says so.
    let wrong = format!("http://{addr}/?q=room1#pw=not-the-secret");
    let run = chat(&[&wrong, "--say", "hello", "--wait-answer", "--timeout", "60"]).await;
    assert!(!run.ok, "a wrong password fails; stdout: {}", run.stdout);
    assert!(run.stderr.contains("Wrong password"), "{}", run.stderr);
    assert_eq!(upstream.request_count(), 2, "nothing was posted");

    // --server/--room with the password from the environment, and a bad link.
    let by_flags = ["--server", &server.base, "--room", "room1", "--say", "bye"];
    let run = chat(&by_flags).await;
    assert!(!run.ok);
    assert!(run.stderr.contains("password is missing"), "{}", run.stderr);
    let run = chat_with_password_env(&by_flags, Some("secret")).await;
    assert!(run.ok, "{}", run.stderr);
    let run = chat(&[&format!("http://{addr}/#pw=secret"), "--say", "x"]).await;
    assert!(!run.ok);
    assert!(run.stderr.contains("names no room"), "{}", run.stderr);
}

#[tokio::test]
async fn an_ai_failure_is_a_clear_error_and_the_screen_needs_a_terminal() {
    let upstream = FakeUpstream::start().await;
    upstream.set_default(Reply::status(400, "this model is on strike"));
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &upstream.base_url);
    let link = format!("{}/?q=strike#pw=secret", server.base);
    let started = Instant::now();
    let run = chat(&[&link, "--say", "hello?", "--wait-answer"]).await;
    eprintln!("failed answer after {:?}", started.elapsed());
    assert!(!run.ok, "stdout: {}", run.stdout);
    assert!(run.stderr.contains("AI could not answer"), "{}", run.stderr);
    assert_eq!(run.stdout, "");

    // Without --say, stdin and stdout must be a terminal (here they are not).
    let run = chat(&[&link]).await;
    assert!(!run.ok);
    assert!(run.stderr.contains("needs a terminal"), "{}", run.stderr);
}

/// A browser page and `synq chat` in one room: the terminal participant does not relay,
/// so the browser calls the AI for it, and each sees the other's entries.
#[tokio::test]
async fn a_browser_and_the_terminal_share_a_room() {
    use tokio::io::AsyncBufReadExt as _;

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let playwright = root.join("interop/browser/node_modules/playwright-core");
    if !std::path::Path::new(&chromium).exists() || !playwright.exists() {
        // scripts/test.sh installs both; CI must not skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "Chromium ({chromium}) and interop/browser's npm packages are needed"
        );
        eprintln!("no Chromium or no playwright-core: skipping (scripts/test.sh installs them)");
        return;
    }
    let upstream = FakeUpstream::start().await;
    upstream.set_default(Reply::text(&["Relayed", " by", " the", " browser."]));
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &upstream.base_url);
    let page = reqwest::get(format!("{}/", server.base))
        .await
        .expect("GET /")
        .text()
        .await
        .expect("the page");
    if page.contains("SYNQ_SKIP_WEB") {
        assert!(
            std::env::var_os("CI").is_none(),
            "synq was built without the web app"
        );
        eprintln!("synq was built with SYNQ_SKIP_WEB=1, without the web app: skipping");
        return;
    }
    let link = format!("{}/?q=mixed#pw=secret", server.base);
    let mut node = tokio::process::Command::new("node")
        .arg(root.join("interop/browser/room.mjs"))
        .arg(&link)
        .arg("hello from a terminal")
        .env("CHROMIUM", &chromium)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = tokio::io::BufReader::new(node.stdout.take().expect("stdout")).lines();
    let next = async |lines: &mut tokio::io::Lines<_>| {
        tokio::time::timeout(Duration::from_secs(90), lines.next_line())
            .await
            .expect("the browser script answered in time")
            .expect("read the browser script")
            .expect("a line from the browser script")
    };
    assert_eq!(next(&mut lines).await, "READY");

    let run = chat(&[
        &link,
        "--name",
        "Term",
        "--no-relay",
        "--say",
        "hello from a terminal",
        "--wait-answer",
    ])
    .await;
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "Relayed by the browser.");
    assert_eq!(upstream.request_count(), 1);

    let line = next(&mut lines).await;
    let entries = line
        .strip_prefix("ENTRIES ")
        .unwrap_or_else(|| panic!("unexpected line from the browser script: {line}"));
    let entries: Vec<String> = serde_json::from_str(entries).expect("entries JSON");
    // The page shows the name and the text in spans of their own.
    assert!(
        entries.contains(&"Termhello from a terminal".to_owned()),
        "{entries:?}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e.contains("Relayed by the browser.")),
        "{entries:?}"
    );
    let status = node.wait().await.expect("node exits");
    assert!(status.success());
}

/// A terminal to drive the interactive screen in: a tmux server of its own.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// A 100×30 terminal named `chat` running `program`, on a tmux server of its own.
    fn start(tag: &str, program: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("synq-chat-test-{}-{tag}", std::process::id()),
        };
        let started = tmux.cmd(&[
            "new-session",
            "-d",
            "-s",
            "chat",
            "-x",
            "100",
            "-y",
            "30",
            program,
        ]);
        assert!(started.status.success(), "{started:?}");
        tmux
    }

    /// Types `line` and Enter.
    fn enter(&self, line: &str) {
        self.cmd(&["send-keys", "-t", "chat", "-l", line]);
        self.cmd(&["send-keys", "-t", "chat", "Enter"]);
    }

    fn available() -> bool {
        Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "chat"]).stdout)
            .into_owned()
    }

    fn alive(&self) -> bool {
        self.cmd(&["has-session", "-t", "chat"]).status.success()
    }

    async fn wait_for(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let screen = self.screen();
            if screen.contains(what) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {what:?}; it shows:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[tokio::test]
async fn the_interactive_screen_in_a_terminal() {
    if !Tmux::available() {
        eprintln!("tmux is not installed: skipping the interactive test");
        return;
    }
    let upstream = FakeUpstream::start().await;
    upstream.set_default(Reply::text(&["Hi", " Tess,", " nice", " to", " meet you."]));
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &upstream.base_url);
    let link = format!("{}/?q=tui#pw=secret", server.base);
    let program = format!("{} chat '{link}' --name Tess", env!("CARGO_BIN_EXE_synq"));
    let tmux = Tmux::start("screen", &program);
    let screen = tmux
        .wait_for(&format!(
            "Welcome, Tess! AI is here. Share the link to invite others: {link}"
        ))
        .await;
    assert!(screen.contains("room tui on"), "{screen}");
    assert!(screen.contains("Connected"), "{screen}");
    assert!(screen.contains("> Enter sends"), "{screen}");

    tmux.cmd(&["send-keys", "-t", "chat", "-l", "Hello AI"]);
    tmux.cmd(&["send-keys", "-t", "chat", "Enter"]);
    tmux.wait_for("Tess: Hello AI").await;
    tmux.wait_for("AI: Hi Tess, nice to meet you.").await;

    // Someone else posts, with an escape sequence that must not reach the terminal.
    let run = chat(&[&link, "--name", "Sam", "--no-relay", "--say", "\x1b[2Jboo"]).await;
    assert!(run.ok, "{}", run.stderr);
    let screen = tmux.wait_for("Sam: \u{FFFD}[2Jboo").await;
    assert!(screen.contains("Sam joined"), "{screen}");
    tmux.wait_for("Sam left").await;

    // A paste of two lines is one post (bracketed paste), not two.
    tmux.cmd(&["set-buffer", "pasted\ntwo lines"]);
    tmux.cmd(&["paste-buffer", "-p", "-t", "chat"]);
    tmux.cmd(&["send-keys", "-t", "chat", "Enter"]);
    tmux.wait_for("Tess: pasted two lines").await;

    tmux.cmd(&["send-keys", "-t", "chat", "-l", "/reset"]);
    tmux.cmd(&["send-keys", "-t", "chat", "Enter"]);
    let screen = tmux.wait_for("Tess reset the chat").await;
    assert!(!screen.contains("Hello AI"), "{screen}");

    tmux.cmd(&["send-keys", "-t", "chat", "Escape"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.alive() {
        assert!(Instant::now() < deadline, "Esc quits:\n{}", tmux.screen());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The AI's controls typed on the screen, with the AI behind a fake upstream: `/ai off`
/// sends nothing, `/instructions` reach the prompt, `/stop` ends a slow answer (and its
/// upstream call), `/again` answers the same question anew.
#[tokio::test]
async fn the_ai_commands_on_the_interactive_screen() {
    if !Tmux::available() {
        eprintln!("tmux is not installed: skipping the interactive test");
        return;
    }
    let upstream = FakeUpstream::start().await;
    upstream.script([
        Reply::text(&["Bonjour", " Tess."]),
        // "Once", then nothing until a release that never comes.
        Reply::gated(&["Once", " upon", " a time"]),
        Reply::text(&["A story,", " told again."]),
        Reply::text(&["And then", " the end."]),
    ]);
    upstream.set_default(Reply::status(500, "no more requests were expected"));
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path(), &upstream.base_url);
    let link = format!("{}/?q=tui-ai#pw=secret", server.base);
    let program = format!("{} chat '{link}' --name Tess", env!("CARGO_BIN_EXE_synq"));
    let tmux = Tmux::start("ai", &program);
    let screen = tmux.wait_for("Welcome, Tess!").await;
    assert!(screen.contains("1 person · AI auto"), "{screen}");

    // Off: said in the header, and a post asks nothing of the AI.
    tmux.enter("/ai off");
    tmux.wait_for("Tess set the AI to stay silent (nothing is sent to the AI)")
        .await;
    tmux.wait_for("1 person · AI off").await;
    tmux.enter("Anyone there?");
    let screen = tmux.wait_for("Tess: Anyone there?").await;
    assert!(
        !screen.lines().any(|l| l.starts_with("AI:")),
        "no answer: {screen}"
    );
    assert_eq!(upstream.request_count(), 0, "nothing was sent to the AI");
    tmux.enter("/ai");
    tmux.wait_for("The AI is off: it will stay silent").await;
    tmux.enter("/again");
    tmux.wait_for("AI is off in this room: /ai auto turns it on.")
        .await;

    tmux.enter("/ai auto");
    tmux.wait_for("Tess set the AI to answer every post").await;
    tmux.wait_for("1 person · AI auto").await;

    // Instructions: shown, and in the next prompt.
    tmux.enter("/instructions Answer in French.");
    tmux.wait_for("Tess set the room's instructions for the AI: Answer in French.")
        .await;
    tmux.enter("/instructions");
    tmux.wait_for(
        "The room's instructions for the AI: Answer in French. (/instructions - clears them)",
    )
    .await;
    tmux.enter("Hello?");
    tmux.wait_for("AI: Bonjour Tess.").await;
    let prompt: Vec<String> = upstream.requests()[0]["messages"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["content"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        prompt.iter().any(|c| c.contains("Answer in French.")),
        "the instructions are in the prompt: {prompt:?}"
    );

    // Stop during a slow answer: the text so far stays, marked; the call is dropped.
    tmux.enter("Tell me a story");
    tmux.wait_for("AI: Once ▍").await;
    tmux.enter("/stop");
    tmux.wait_for("AI: Once (stopped by Tess)").await;
    within(upstream.wait_disconnects(1)).await;
    assert_eq!(upstream.request_count(), 2);
    tmux.enter("/stop");
    tmux.wait_for("Nothing to stop").await;

    // Again: the stopped answer is replaced by a new one to the same question.
    tmux.enter("/again");
    let screen = tmux
        .wait_for("AI: A story, told again. (answered again at Tess's request)")
        .await;
    assert!(!screen.contains("AI: Once"), "replaced in place: {screen}");
    assert_eq!(upstream.request_count(), 3);
    let requests = upstream.requests();
    assert_eq!(
        requests[2]["messages"], requests[1]["messages"],
        "the same question again"
    );
    // The first answer is the likeliest (greedy); asked again, another is drawn.
    let temperature = |r: &serde_json::Value| r["temperature"].as_f64();
    assert_eq!(temperature(&requests[1]), Some(0.0), "{}", requests[1]);
    assert!(
        temperature(&requests[2]).is_some_and(|t| (t - 0.7).abs() < 1e-3),
        "{}",
        requests[2]
    );

    // Replies, while the AI answers only when addressed: to a person, it is for people;
    // to the AI's answer, it asks the AI. Both show what they reply to.
    tmux.enter("/ai addressed");
    tmux.wait_for("Tess set the AI to answer when addressed")
        .await;
    let run = chat(&[
        &link,
        "--name",
        "Sam",
        "--no-relay",
        "--say",
        "lunch at noon?",
    ])
    .await;
    assert!(run.ok, "{}", run.stderr);
    tmux.wait_for("Sam: lunch at noon?").await;
    tmux.enter("/reply");
    let screen = tmux.wait_for("1 Sam: lunch at noon?").await;
    assert!(screen.contains("2 AI: A story, told again."), "{screen}");
    tmux.enter("/reply 1 yes, at noon");
    let screen = tmux.wait_for("Tess: yes, at noon").await;
    assert!(
        screen.contains("↪ Sam: lunch at noon?"),
        "the quote: {screen}"
    );
    assert_eq!(
        upstream.request_count(),
        3,
        "a reply to Sam is not for the AI"
    );
    tmux.enter("/reply 9 hello?");
    tmux.wait_for("No message 9 to reply to: /reply lists them.")
        .await;
    tmux.cmd(&["send-keys", "-t", "chat", "C-u"]);
    // 1 is Tess's reply, 2 Sam's post, 3 the AI's story.
    tmux.enter("/reply 3 what happened next?");
    let screen = tmux.wait_for("AI: And then the end.").await;
    assert!(
        screen.contains("↪ AI: A story, told again."),
        "the quote: {screen}"
    );
    assert!(screen.contains("Tess: what happened next?"), "{screen}");
    assert_eq!(
        upstream.request_count(),
        4,
        "the reply to the answer asked the AI"
    );

    tmux.enter("/instructions -");
    tmux.wait_for("Tess cleared the room's instructions for the AI")
        .await;
    tmux.enter("/help");
    let screen = tmux.wait_for("/ai always|addressed|auto|off").await;
    for command in [
        "/instructions TEXT",
        "/stop",
        "/again",
        "/reply [N] TEXT",
        "/reset",
    ] {
        assert!(screen.contains(command), "/help lists {command}: {screen}");
    }
    tmux.cmd(&["send-keys", "-t", "chat", "Escape"]);
}

/// `/earlier` on the screen: past 100 entries the oldest go to the room's archive, and
/// `/earlier` shows them above the history again (scrolled back to, as a reader would).
#[tokio::test]
async fn earlier_messages_come_back_from_the_archive_on_the_screen() {
    if !Tmux::available() {
        eprintln!("tmux is not installed: skipping the interactive test");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::serve(dir.path(), &["--no-ai", "--client-rate-limit", "0"]);
    let link = format!("{}/?q=archive#pw=secret", server.base);
    let program = format!("{} chat '{link}' --name Tess", env!("CARGO_BIN_EXE_synq"));
    let tmux = Tmux::start("earlier", &program);
    tmux.wait_for("Welcome, Tess!").await;
    tmux.enter("/earlier");
    tmux.wait_for("Nothing earlier").await;
    tmux.enter("/ai off");
    tmux.wait_for("Tess set the AI to stay silent").await;
    // 1 join + 1 setting + 110 posts: the oldest 25 entries leave the history.
    for i in 0..110 {
        tmux.enter(&format!("note {i}"));
    }
    tmux.wait_for("Tess: note 109").await;
    tmux.enter("/earlier");
    tmux.wait_for("25 earlier messages above").await;
    for _ in 0..15 {
        tmux.cmd(&["send-keys", "-t", "chat", "PageUp"]);
    }
    let top = tmux.wait_for("Tess: note 0").await;
    assert!(top.contains("Tess joined"), "{top}");
    tmux.enter("/earlier");
    tmux.wait_for("Nothing earlier").await;
}
