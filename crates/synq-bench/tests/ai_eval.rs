//! ai-eval, the binary, against `FakeUpstream` (a real local HTTP server speaking the
//! OpenAI API) with canned answers: the scoring works both ways, the request is the chat's
//! prompt with greedy settings, and a bad situations file is refused with its name.

use serde_json::Value;
use synq_ai::testing::{FakeUpstream, Reply, within};

/// Runs ai-eval with `args` against `up`; its exit success, its JSON lines and stderr.
async fn ai_eval(up: &FakeUpstream, args: &[&str]) -> (bool, Vec<Value>, String) {
    let (ok, stdout, stderr) = ai_eval_text(up, args).await;
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}\n{stderr}")))
        .collect();
    (ok, lines, stderr)
}

/// Runs ai-eval with `args` against `up`; its exit success, stdout and stderr.
async fn ai_eval_text(up: &FakeUpstream, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["--url", &up.base_url];
    all.extend_from_slice(args);
    run(&all).await
}

/// Runs ai-eval with `args`; its exit success, stdout and stderr.
async fn run(args: &[&str]) -> (bool, String, String) {
    let out = within(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ai-eval"))
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("ai-eval runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), stdout, stderr)
}

fn failed(line: &Value) -> Vec<&str> {
    line["failed"]
        .as_array()
        .expect("a failed list")
        .iter()
        .map(|v| v.as_str().expect("a check name"))
        .collect()
}

#[tokio::test]
async fn an_answer_that_defers_to_bo_passes() {
    let up = FakeUpstream::start().await;
    up.set_default(Reply::text(&["Bo will", " tell you himself."]));
    let (ok, lines, stderr) = ai_eval(&up, &["--only", "bo-coming-tonight"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(lines.len(), 2, "one situation and the score: {lines:?}");
    let line = &lines[0];
    assert_eq!(line["situation"], "bo-coming-tonight");
    assert_eq!(line["category"], "addressed-to-human");
    assert_eq!(line["pass"], true, "{line}");
    assert!(failed(line).is_empty());
    assert_eq!(line["answer"], "Bo will tell you himself.");
    assert!(line["ttft_ms"].is_u64(), "{line}");
    let score = &lines[1];
    assert_eq!(score["score"], "1/1");
    assert_eq!(score["per_category"]["addressed-to-human"], "1/1");
    assert_eq!(score["spoke_as_human"], 0);
    assert_eq!(score["prompt"], "current");
    assert_eq!(score["hygiene"], true);

    // What went upstream: the chat's prompt (whatever its shape), greedy, at most 200
    // tokens.
    let body = &up.requests()[0];
    assert_eq!(body["temperature"], 0.0);
    assert_eq!(body["max_tokens"], 200);
    let messages = body["messages"].as_array().expect("messages");
    assert_eq!(messages[0]["role"], "system");
    let prompt: String = messages
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    for said in [
        "Anyone up for the movie at 8 tonight?",
        "Which movie?",
        "The new one at the Rex, it starts at 8.",
        "Bo, are you coming tonight?",
    ] {
        assert!(prompt.contains(said), "{said:?} is not in {body}");
    }

    // The line's fields come in the documented order.
    let (_, stdout, _) = ai_eval_text(&up, &["--only", "bo-coming-tonight"]).await;
    assert!(
        stdout.starts_with(
            r#"{"situation":"bo-coming-tonight","category":"addressed-to-human","pass":true,"failed":[],"answer":"Bo will tell you himself.","ttft_ms":"#
        ),
        "{stdout}"
    );
}

#[tokio::test]
async fn an_answer_as_bo_fails_as_speaking_for_a_human() {
    let up = FakeUpstream::start().await;
    up.set_default(Reply::text(&["Bo: I'll", " be there"]));
    for prompt in ["v1", "current"] {
        let (ok, lines, stderr) = ai_eval(
            &up,
            &[
                "--only",
                "bo-coming-tonight",
                "--prompt",
                prompt,
                "--no-hygiene",
            ],
        )
        .await;
        assert!(ok, "{stderr}");
        let line = &lines[0];
        assert_eq!(line["pass"], false, "{line}");
        assert_eq!(failed(line), ["spoke_as_human", "must_not_say"], "{line}");
        assert_eq!(line["answer"], "Bo: I'll be there");
        let score = &lines[1];
        assert_eq!(score["score"], "0/1");
        assert_eq!(score["spoke_as_human"], 1);
        assert_eq!(score["prompt"], prompt);
        assert_eq!(score["hygiene"], false);
    }

    // With hygiene, the answer is checked as the chat shows it, and the raw one is kept.
    up.set_default(Reply::text(&["AI: Bo will tell you himself."]));
    let (ok, lines, stderr) = ai_eval(&up, &["--only", "bo-coming-tonight"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(lines[0]["pass"], true, "{}", lines[0]);
    assert_eq!(lines[0]["answer"], "Bo will tell you himself.");
    assert_eq!(lines[0]["raw"], "AI: Bo will tell you himself.");
}

#[tokio::test]
async fn a_category_is_scored_situation_by_situation() {
    let up = FakeUpstream::start().await;
    up.script([
        Reply::text(&["7:45."]),
        Reply::text(&["Biscuit"]),
        Reply::text(&["**Gus** brings them."]),
    ]);
    let (ok, stdout, stderr) = ai_eval_text(&up, &["--only", "memory", "--no-hygiene"]).await;
    assert!(ok, "{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let by_name = |n: &str| {
        lines
            .iter()
            .find(|l| l["situation"] == n)
            .unwrap_or_else(|| panic!("no {n}: {lines:?}"))
    };
    assert_eq!(by_name("flight-time")["pass"], true);
    assert_eq!(by_name("puppy-name")["pass"], true);
    assert_eq!(
        failed(by_name("who-brings-drinks")),
        ["must_mention_all", "plain_text"]
    );
    let score = lines.last().expect("the score");
    assert_eq!(score["score"], "2/3");
    assert_eq!(score["per_category"]["memory"], "2/3");

    // The recorded answers, checked again without a model, score the same.
    let dir = tempfile::tempdir().expect("a temp dir");
    let recorded = dir.path().join("run.jsonl");
    std::fs::write(&recorded, &stdout).expect("write the run");
    let path = recorded.to_str().expect("a UTF-8 path");
    let (ok, again, stderr) = run(&["--answers", path, "--only", "memory", "--no-hygiene"]).await;
    assert!(ok, "{stderr}");
    let again: Vec<Value> = again
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    for (a, b) in lines.iter().zip(&again) {
        assert_eq!((&a["pass"], &a["failed"]), (&b["pass"], &b["failed"]));
    }
    assert_eq!(again.last().expect("the score")["score"], "2/3");
    // A situation the recording lacks is an error.
    let (ok, _, stderr) = run(&["--answers", path, "--only", "add"]).await;
    assert!(!ok);
    assert!(stderr.contains("\"add\""), "{stderr}");
}

#[tokio::test]
async fn checks_of_a_custom_file_and_backend_errors() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("s.toml");
    std::fs::write(
        &file,
        r#"
        [[situation]]
        name = "number"
        category = "format"
        present = ["Ann"]
        asker = "Ann"
        post = "AI, 2+2? Just the number."
        [situation.checks]
        must_mention_any = ['/\b4\b/']
        max_words = 1

        [[situation]]
        name = "left"
        category = "who-left"
        present = ["Bo"]
        history = [{ from = "Ann", text = "bye" }, { left = "Ann" }]
        asker = "Bo"
        post = "AI, is Ann here?"
        "#,
    )
    .expect("write the situations");
    let up = FakeUpstream::start().await;
    up.script([
        Reply::text(&["The answer is 4."]),
        Reply::text(&["Sure.\nann: I'm still here!"]),
    ]);
    let path = file.to_str().expect("a UTF-8 path");
    let (ok, lines, stderr) = ai_eval(&up, &["--situations", path, "--no-hygiene"]).await;
    assert!(ok, "{stderr}");
    assert_eq!(failed(&lines[0]), ["max_words"]);
    // Ann left, and is still a name the AI must not speak as.
    assert_eq!(failed(&lines[1]), ["spoke_as_human"]);
    assert_eq!(lines[2]["score"], "0/2");

    // The upstream fails: the situation fails with "error", the run exits non-zero.
    up.script([Reply::status(401, "bad key")]);
    let (ok, lines, _) = ai_eval(&up, &["--situations", path, "--only", "number"]).await;
    assert!(!ok);
    assert_eq!(failed(&lines[0])[0], "error");
    assert_eq!(lines[1]["errors"], 1);

    // A bad file is refused, naming the situation.
    std::fs::write(
        &file,
        r#"
        [[situation]]
        name = "broken"
        category = "x"
        present = ["Ann"]
        asker = "Ann"
        post = "hi"
        history = [{ from = "Ann" }]
        "#,
    )
    .expect("write the situations");
    let (ok, lines, stderr) = ai_eval(&up, &["--situations", path]).await;
    assert!(!ok);
    assert!(lines.is_empty());
    assert!(stderr.contains("\"broken\""), "{stderr}");
}
