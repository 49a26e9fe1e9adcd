//! ChatModel without network: one test per behaviour of the AI chat.

use synq_chat::{
    AI_REQUESTS_PER_MINUTE, AiMode, AiState, ChatInput, ChatModel, ChatOutput, ChatViewData,
    EntryKind, MAX_HISTORY, PERSIST_AFTER_MS, Sampling, archived_entries,
};
use synq_model::{Event, Model, Persisted, Replica, ViewId};
use synq_relay::{Candidacy, RelayRequest, RelayResponse};

struct Room {
    r: Replica<ChatModel>,
    time: u64,
    n: std::collections::BTreeMap<String, u64>,
    outputs: Vec<ChatOutput>,
}

fn v(s: &str) -> ViewId {
    ViewId::from(s)
}

impl Room {
    fn new() -> Room {
        Room {
            r: Replica::new(b"chat-test", 0).0,
            time: 0,
            n: Default::default(),
            outputs: Vec::new(),
        }
    }

    fn apply(&mut self, e: Event<ChatModel>) -> bool {
        self.time += 10;
        let applied = self.r.apply(self.time, e);
        self.outputs.extend(applied.outputs);
        applied.accepted
    }

    fn join(&mut self, who: &str, can_relay: bool) {
        let data = ChatViewData {
            name: who.to_uppercase(),
            candidacy: Candidacy {
                can_relay,
                preference: 0,
            },
        };
        self.apply(Event::Join { view: v(who), data });
    }

    fn join_pref(&mut self, who: &str, preference: i32) {
        let data = ChatViewData {
            name: who.to_uppercase(),
            candidacy: Candidacy {
                can_relay: true,
                preference,
            },
        };
        self.apply(Event::Join { view: v(who), data });
    }

    /// Lets `ms` of reflector time pass before the next event.
    fn wait(&mut self, ms: u64) {
        self.time += ms;
    }

    fn exit(&mut self, who: &str) {
        self.apply(Event::Exit { view: v(who) });
    }

    fn input(&mut self, who: &str, input: ChatInput) -> bool {
        let n = self.n.entry(who.to_string()).or_insert(0);
        *n += 1;
        let n = *n;
        self.apply(Event::Input {
            from: v(who),
            n,
            input,
        })
    }

    fn post(&mut self, who: &str, text: &str) {
        self.input(who, ChatInput::post(text));
    }

    fn respond(&mut self, who: &str, r: RelayResponse) {
        self.input(who, ChatInput::Relay(r));
    }

    fn requests(&mut self) -> Vec<RelayRequest<synq_chat::AiRequest>> {
        let out = std::mem::take(&mut self.outputs);
        out.into_iter()
            .filter_map(|o| match o {
                ChatOutput::Request(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn m(&self) -> &ChatModel {
        self.r.model()
    }

    /// The AI entries as (text, state).
    fn answers(&self) -> Vec<(String, AiState)> {
        self.m()
            .history()
            .filter_map(|e| match &e.kind {
                EntryKind::Ai { text, state, .. } => Some((text.clone(), *state)),
                _ => None,
            })
            .collect()
    }

    fn texts(&self) -> Vec<String> {
        self.m()
            .history()
            .map(|e| match &e.kind {
                EntryKind::Post { name, text, .. } => format!("{name}: {text}"),
                EntryKind::Ai { text, .. } => format!("AI: {text}"),
                EntryKind::Joined { name } => format!("* {name} joined"),
                EntryKind::Left { name } => format!("* {name} left"),
                EntryKind::Notice { text } => format!("* {text}"),
            })
            .collect()
    }
}

fn delta(id: u64, text: &str) -> RelayResponse {
    RelayResponse::Delta {
        id,
        text: text.into(),
    }
}

#[test]
fn the_seven_steps_of_the_seed() {
    let mut room = Room::new();
    room.join("ann", true);
    room.join("bob", true);
    room.requests();
    // 1–3. Bob asks the AI; every replica adds the post and asks the relay, naming the
    // elected view.
    room.post("bob", "AI, what is 2+2?");
    let reqs = room.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].elected,
        v("ann"),
        "the first view joined is elected"
    );
    // 4–5. Only ann acts; she streams the answer back as inputs.
    room.respond("ann", delta(reqs[0].id, "It is "));
    // 6. The answer grows in the history.
    assert_eq!(room.answers(), [("It is".to_string(), AiState::Streaming)]);
    room.respond("ann", delta(reqs[0].id, "4."));
    room.respond("ann", RelayResponse::Done { id: reqs[0].id });
    // 7. Views render the finished answer.
    assert_eq!(room.answers(), [("It is 4.".to_string(), AiState::Done)]);
    assert_eq!(
        room.texts(),
        [
            "* ANN joined",
            "* BOB joined",
            "BOB: AI, what is 2+2?",
            "AI: It is 4."
        ]
    );
    assert!(room.m().relay().pending_ids().next().is_none());
}

#[test]
fn one_request_per_post_no_matter_how_many_views() {
    let mut room = Room::new();
    for who in ["a", "b", "c", "d", "e"] {
        room.join(who, true);
    }
    room.requests();
    room.post("c", "@AI hi");
    assert_eq!(room.requests().len(), 1);
    assert_eq!(room.m().relay().pending_ids().count(), 1);
}

#[test]
fn reelection_reissues_every_pending_request_to_the_new_view() {
    let mut room = Room::new();
    room.join("ann", true);
    room.join("bob", true);
    room.post("bob", "@AI one");
    room.post("bob", "@AI two");
    room.requests();
    room.exit("ann");
    let reissued = room.requests();
    assert_eq!(reissued.len(), 2);
    assert!(reissued.iter().all(|r| r.elected == v("bob")));
    assert_eq!(room.m().elected(), Some(&v("bob")));
}

#[test]
fn late_duplicate_and_unelected_responses_are_ignored() {
    let mut room = Room::new();
    room.join("ann", true);
    room.join("bob", true);
    room.post("bob", "@AI q");
    let id = room.requests()[0].id;
    // Bob is not elected.
    room.respond("bob", delta(id, "forged"));
    assert_eq!(room.answers(), [(String::new(), AiState::Waiting)]);
    room.respond("ann", delta(id, "real"));
    room.respond("ann", RelayResponse::Done { id });
    // Late and duplicate responses after Done.
    room.respond("ann", delta(id, " again"));
    room.respond("ann", RelayResponse::Done { id });
    room.respond(
        "ann",
        RelayResponse::Failed {
            id,
            reason: "x".into(),
        },
    );
    assert_eq!(room.answers(), [("real".to_string(), AiState::Done)]);
    // An unknown request id.
    room.respond("ann", delta(999, "nothing"));
    assert_eq!(room.answers().len(), 1);
}

#[test]
fn a_partial_answer_is_discarded_on_reelection_and_restarts_exactly_once() {
    let mut room = Room::new();
    room.join("ann", true);
    room.join("bob", true);
    room.post("bob", "@AI q");
    let id = room.requests()[0].id;
    room.respond("ann", delta(id, "half an ans"));
    room.exit("ann");
    assert_eq!(room.answers(), [(String::new(), AiState::Waiting)]);
    let again = room.requests();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, id);
    // Ann's in-flight rest arrives after she left: ignored (she is not in the room).
    room.respond("ann", delta(id, "wer"));
    room.respond("bob", delta(id, "the whole answer"));
    room.respond("bob", RelayResponse::Done { id });
    assert_eq!(
        room.answers(),
        [("the whole answer".to_string(), AiState::Done)]
    );
}

#[test]
fn reset_during_streaming_clears_the_history_and_ignores_the_rest_of_the_answer() {
    let mut room = Room::new();
    room.join("ann", true);
    room.post("ann", "q");
    let id = room.requests()[0].id;
    room.respond("ann", delta(id, "stre"));
    room.input("ann", ChatInput::Reset);
    room.respond("ann", delta(id, "aming"));
    room.respond("ann", RelayResponse::Done { id });
    assert_eq!(room.texts(), ["* ANN reset the chat"]);
    assert!(room.m().relay().pending_ids().next().is_none());
}

#[test]
fn the_history_is_capped_at_100_entries_and_older_ones_go_to_archive_pages() {
    let mut room = Room::new();
    room.join("ann", false);
    let mut files = Vec::new();
    for i in 0..80 {
        // Slower than the fair-use limit.
        room.wait(60_000 / AI_REQUESTS_PER_MINUTE as u64);
        room.post("ann", &format!("post {i}"));
        assert!(room.m().history().len() <= MAX_HISTORY);
        files.extend(room.r.take_files());
    }
    // 1 notice + 80 posts + 80 AI entries = 161: 3 pages of 25 archived, 86 kept.
    assert_eq!(room.m().history().len(), 161 - 3 * synq_chat::ARCHIVE_PAGE);
    let texts = room.texts();
    assert_eq!(texts.last().map(String::as_str), Some("AI: "));
    assert!(texts.contains(&"ANN: post 79".to_string()));
    assert!(!texts.contains(&"ANN: post 0".to_string()));

    // The pages, oldest first, each written once as a file of the room.
    let pages: Vec<_> = room.m().archive().cloned().collect();
    assert_eq!(pages.len(), 3);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        pages.iter().map(|p| p.name.as_str()).collect::<Vec<_>>()
    );
    assert_eq!(pages[0].first, 1);
    assert_eq!(
        pages[2].last + 1,
        room.m().history().next().map_or(0, |e| e.id)
    );
    // "Load earlier messages": the newest page first, then the ones before it.
    assert_eq!(room.m().page_before(None), pages.last());
    assert_eq!(room.m().page_before(Some(&pages[1].name)), Some(&pages[0]));
    assert_eq!(room.m().page_before(Some(&pages[0].name)), None);
    let first = archived_entries(&files[0].1).expect("page");
    assert_eq!(first.len(), synq_chat::ARCHIVE_PAGE);
    assert!(
        first
            .iter()
            .any(|e| matches!(&e.kind, EntryKind::Post { text, .. } if text == "post 0"))
    );

    // A reset forgets the archive too.
    room.input("ann", ChatInput::Reset);
    assert_eq!(room.m().archive().count(), 0);
}

#[test]
fn the_prompt_holds_who_is_here_the_instructions_the_last_20_entries_and_the_post() {
    let mut room = Room::new();
    room.join("ann", true);
    room.join("bob", false);
    room.input(
        "bob",
        ChatInput::SetInstructions("  answer in French  ".into()),
    );
    for i in 0..15 {
        room.wait(10_000);
        room.post("ann", &format!("@AI p{i}"));
        let id = room.requests()[0].id;
        room.respond("ann", delta(id, &format!("a{i}")));
        room.respond("ann", RelayResponse::Done { id });
    }
    room.post("bob", "<b>hello</b> @AI");
    let req = room.requests().remove(0).request;
    let system = &req.messages[0];
    assert_eq!(system.role, synq_chat::PromptRole::System);
    assert!(system.content.contains("You are AI"));
    assert!(system.content.contains("ANN, BOB"), "{}", system.content);
    assert!(system.content.contains("plain text"));
    assert!(
        system
            .content
            .contains("instructions for you: answer in French"),
        "{}",
        system.content
    );
    // The 20 entries before the post as turns (the last 10 posts and their 10 answers),
    // then the post.
    let turns: Vec<(synq_chat::PromptRole, &str)> = req.messages[1..]
        .iter()
        .map(|m| (m.role, m.content.as_str()))
        .collect();
    assert_eq!(turns.len(), 21, "{turns:?}");
    assert_eq!(turns[0], (synq_chat::PromptRole::User, "ANN: @AI p5"));
    assert_eq!(turns[1], (synq_chat::PromptRole::Assistant, "a5"));
    assert_eq!(turns[19], (synq_chat::PromptRole::Assistant, "a14"));
    assert_eq!(
        turns[20],
        (synq_chat::PromptRole::User, "BOB: <b>hello</b> @AI")
    );
}

#[test]
fn views_that_can_relay_are_preferred_then_join_order_then_preference() {
    let mut room = Room::new();
    room.join("phone", false);
    assert_eq!(
        room.m().elected(),
        Some(&v("phone")),
        "someone holds the requests"
    );
    room.join("laptop", true);
    assert_eq!(
        room.m().elected(),
        Some(&v("laptop")),
        "a view that can relay takes over"
    );
    room.join("tablet", true);
    assert_eq!(
        room.m().elected(),
        Some(&v("laptop")),
        "the election is sticky among equals"
    );
    room.join_pref("server", 10);
    assert_eq!(
        room.m().elected(),
        Some(&v("server")),
        "a higher preference (a bot) takes over"
    );
    room.join_pref("backup", 10);
    assert_eq!(
        room.m().elected(),
        Some(&v("server")),
        "sticky among equal preferences"
    );
    room.exit("laptop");
    assert_eq!(room.m().elected(), Some(&v("server")));
    room.join_pref("big", 20);
    room.join("other", true);
    room.exit("big");
    assert_eq!(
        room.m().elected(),
        Some(&v("server")),
        "highest preference, then the earliest joined"
    );
}

/// A bot joins while a browser tab is answering: it takes over, and the answer restarts on
/// it (the tab's partial text is dropped; the tab's late deltas are ignored).
#[test]
fn a_relay_with_a_higher_preference_takes_over_a_pending_request() {
    let mut room = Room::new();
    room.join("tab", true);
    room.post("tab", "@AI hi");
    let id = room.requests()[0].id;
    room.respond(
        "tab",
        RelayResponse::Delta {
            id,
            text: "Par".into(),
        },
    );
    room.outputs.clear();
    room.join_pref("bot", 100);
    assert_eq!(room.m().elected(), Some(&v("bot")));
    let reissued = room.requests();
    assert_eq!(reissued.len(), 1, "{reissued:?}");
    assert_eq!((reissued[0].id, &reissued[0].elected), (id, &v("bot")));
    room.respond(
        "tab",
        RelayResponse::Delta {
            id,
            text: "tial".into(),
        },
    );
    room.respond(
        "bot",
        RelayResponse::Delta {
            id,
            text: "Whole".into(),
        },
    );
    room.respond("bot", RelayResponse::Done { id });
    let answers: Vec<_> = room
        .m()
        .history()
        .filter_map(|e| match &e.kind {
            EntryKind::Ai { text, state, .. } => Some((text.clone(), *state)),
            _ => None,
        })
        .collect();
    assert_eq!(answers, [("Whole".to_string(), AiState::Done)]);
}

#[test]
fn an_ai_failure_becomes_a_short_visible_notice() {
    let mut room = Room::new();
    room.join("ann", true);
    room.post("ann", "q");
    let id = room.requests()[0].id;
    room.respond(
        "ann",
        RelayResponse::Failed {
            id,
            reason: "the AI service is unreachable".into(),
        },
    );
    assert_eq!(
        room.texts().last().map(String::as_str),
        Some("* AI could not answer: the AI service is unreachable")
    );
}

#[test]
fn inputs_from_unknown_views_are_ignored() {
    let mut room = Room::new();
    room.join("ann", true);
    assert!(!room.input("stranger", ChatInput::post("hi")));
    assert!(!room.input("stranger", ChatInput::Reset));
    assert_eq!(room.texts(), ["* ANN joined"]);
}

#[test]
fn a_request_waits_for_an_election_when_nobody_is_left() {
    let mut room = Room::new();
    room.join("ann", true);
    room.post("ann", "q");
    room.requests();
    room.exit("ann");
    assert!(room.requests().is_empty());
    room.join("bob", true);
    let reqs = room.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].elected, v("bob"));
}

/// A room of two people where Ann relays.
fn ann_and_bob() -> Room {
    let mut room = Room::new();
    room.join("ann", true);
    room.join("bob", true);
    room.requests();
    room
}

#[test]
fn alone_every_post_is_answered_and_with_others_only_posts_that_address_the_ai() {
    let mut room = Room::new();
    room.join("ann", true);
    room.post("ann", "what is the capital of France?");
    assert_eq!(room.requests().len(), 1, "alone: every post");
    room.join("bob", true);
    room.requests();
    for (text, asked) in [
        ("Bo, are you coming tonight?", false),
        ("I said AI: nothing", false),
        ("the MAIL: is late", false),
        ("@AI what time is it?", true),
        ("what do you think, @ai?", true),
        ("AI, is Ann still here?", true),
        ("ai: 2+2", true),
        ("Hey AI what's up", true),
        ("hey, ai: hello", true),
        ("@AIs are not people", false),
    ] {
        room.wait(10_000);
        room.post("bob", text);
        assert_eq!(room.requests().len(), usize::from(asked), "{text}");
    }
    // A reply to an AI answer addresses the AI.
    let answer = room
        .m()
        .history()
        .rev()
        .find(|e| matches!(e.kind, EntryKind::Ai { .. }))
        .map(|e| e.id);
    room.wait(10_000);
    room.input(
        "ann",
        ChatInput::Post {
            text: "why?".into(),
            reply_to: answer,
            to_ai: false,
        },
    );
    assert_eq!(room.requests().len(), 1);
    // So does an explicit question (an "ask the AI" action).
    room.wait(10_000);
    room.input("bob", ChatInput::ask("no address here"));
    assert_eq!(room.requests().len(), 1);
}

#[test]
fn the_ai_mode_is_a_room_setting_with_a_notice_and_off_sends_nothing() {
    let mut room = ann_and_bob();
    room.input("bob", ChatInput::SetAiMode(AiMode::Always));
    assert_eq!(room.m().ai_mode(), AiMode::Always);
    assert_eq!(
        room.texts().last().map(String::as_str),
        Some("* BOB set the AI to answer every post")
    );
    room.post("ann", "Bo, are you coming?");
    assert_eq!(room.requests().len(), 1);
    room.input("ann", ChatInput::SetAiMode(AiMode::Off));
    room.post("bob", "@AI hello?");
    assert!(room.requests().is_empty());
    assert!(!room.m().relay().pending_ids().any(|_| false));
    assert_eq!(
        room.texts().last().map(String::as_str),
        Some("BOB: @AI hello?"),
        "no AI entry in off mode"
    );
    room.input("ann", ChatInput::SetAiMode(AiMode::Addressed));
    room.input("ann", ChatInput::Reset);
    room.exit("bob");
    room.post("ann", "alone but not addressing");
    assert!(room.requests().is_empty(), "addressed mode even alone");
}

#[test]
fn stop_keeps_the_text_so_far_marks_who_stopped_and_ignores_the_rest() {
    let mut room = ann_and_bob();
    room.post("bob", "@AI tell me a story");
    let id = room.requests()[0].id;
    room.respond("ann", delta(id, "Once upon"));
    room.input("bob", ChatInput::Stop);
    assert!(!room.m().relay().is_pending(id), "the relay drops the call");
    room.respond("ann", delta(id, " a time"));
    room.respond("ann", RelayResponse::Done { id });
    let stopped = room
        .m()
        .history()
        .find_map(|e| match &e.kind {
            EntryKind::Ai {
                text,
                state,
                stopped_by,
                ..
            } => Some((text.clone(), *state, stopped_by.clone())),
            _ => None,
        })
        .expect("the answer");
    assert_eq!(
        stopped,
        ("Once upon".into(), AiState::Stopped, Some("BOB".into()))
    );
    assert!(!room.m().answering());
}

#[test]
fn again_replaces_the_answer_in_place_with_who_asked() {
    let mut room = ann_and_bob();
    room.post("bob", "@AI a joke please");
    let first = room.requests().remove(0);
    room.respond("ann", delta(first.id, "An old joke."));
    room.respond("ann", RelayResponse::Done { id: first.id });
    room.post("ann", "meh");
    let before = room.m().history().len();
    room.input("ann", ChatInput::Again { entry: None });
    let again = room.requests();
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].id, first.id);
    // Same prompt as the first time: the history before the post, not "meh". The first
    // answer is the likeliest; asked again, another one is drawn.
    assert_eq!(again[0].request.messages, first.request.messages);
    assert_eq!(first.request.sampling, Sampling::Focused);
    assert_eq!(again[0].request.sampling, Sampling::Varied);
    assert_eq!(room.m().history().len(), before, "replaced in place");
    room.respond("ann", delta(again[0].id, "A new joke."));
    room.respond("ann", RelayResponse::Done { id: again[0].id });
    let texts = room.texts();
    assert!(texts.contains(&"AI: A new joke.".to_string()), "{texts:?}");
    assert!(
        !texts.contains(&"AI: An old joke.".to_string()),
        "{texts:?}"
    );
    let by = room.m().history().find_map(|e| match &e.kind {
        EntryKind::Ai { regenerated_by, .. } => regenerated_by.clone(),
        _ => None,
    });
    assert_eq!(by.as_deref(), Some("ANN"));
    // Again during streaming cancels the old call first.
    room.input("bob", ChatInput::Again { entry: None });
    let third = room.requests().remove(0);
    room.respond("ann", delta(third.id, "Third"));
    room.input("bob", ChatInput::Again { entry: None });
    assert!(!room.m().relay().is_pending(third.id));
}

#[test]
fn a_first_answer_that_parrots_the_question_is_asked_once_more() {
    let mut room = ann_and_bob();
    room.post("bob", "@AI who said they would bring the drinks?");
    let first = room.requests().remove(0);
    assert_eq!(first.request.sampling, Sampling::Focused);
    // The echo is held back while it streams, and when it is complete, the same
    // question is asked again: nobody ever sees it.
    room.respond("ann", delta(first.id, "Bob: AI, who said they"));
    let texts = room.texts();
    assert!(
        !texts
            .iter()
            .any(|t| t.starts_with("AI") && t.contains("who said")),
        "held back while it may be an echo: {texts:?}"
    );
    room.respond("ann", delta(first.id, " would bring the drinks?"));
    room.respond("ann", RelayResponse::Done { id: first.id });
    let again = room.requests();
    assert_eq!(again.len(), 1, "asked once more");
    assert_eq!(again[0].request.messages, first.request.messages);
    assert_eq!(again[0].request.sampling, Sampling::Varied);
    let texts = room.texts();
    assert!(
        !texts
            .iter()
            .any(|t| t.contains("would bring the drinks?") && t.starts_with("AI")),
        "the echo is not shown: {texts:?}"
    );
    // Not someone's regeneration: nobody is named.
    assert!(room.m().history().all(|e| !matches!(
        &e.kind,
        EntryKind::Ai {
            regenerated_by: Some(_),
            ..
        }
    )));
    // Whatever the second draw says is the answer, even another echo: never a loop.
    room.respond(
        "ann",
        delta(again[0].id, "Who said they would bring the drinks?"),
    );
    room.respond("ann", RelayResponse::Done { id: again[0].id });
    assert!(room.requests().is_empty(), "asked once more at most");
    let texts = room.texts();
    assert!(
        texts.contains(&"AI: Who said they would bring the drinks?".to_string()),
        "{texts:?}"
    );
    // An answer that uses the post's words is an answer, shown as it streams.
    room.post("bob", "@AI who said they would bring the drinks?");
    let third = room.requests().remove(0);
    room.respond("ann", delta(third.id, "Eli said"));
    assert!(
        room.texts().contains(&"AI: Eli said".to_string()),
        "{:?}",
        room.texts()
    );
    room.respond("ann", delta(third.id, " they would bring the drinks."));
    room.respond("ann", RelayResponse::Done { id: third.id });
    assert!(room.requests().is_empty());
    assert!(
        room.texts()
            .contains(&"AI: Eli said they would bring the drinks.".to_string())
    );
}

#[test]
fn fair_use_limits_ai_requests_per_person_per_minute_with_a_notice() {
    let mut room = ann_and_bob();
    for i in 0..AI_REQUESTS_PER_MINUTE {
        room.post("bob", &format!("@AI q{i}"));
    }
    assert_eq!(room.requests().len(), AI_REQUESTS_PER_MINUTE);
    room.post("bob", "@AI one more");
    assert!(room.requests().is_empty());
    let last = room.texts().pop().expect("texts");
    assert!(last.starts_with("* BOB asked the AI 6 times"), "{last}");
    // Others are not affected, and a minute later Bob may ask again.
    room.post("ann", "@AI mine");
    assert_eq!(room.requests().len(), 1);
    room.wait(60_000);
    room.post("bob", "@AI now?");
    assert_eq!(room.requests().len(), 1);
}

#[test]
fn an_answer_that_starts_another_persons_turn_ends_there_and_its_call_stops() {
    let mut room = ann_and_bob();
    room.input("ann", ChatInput::SetAiMode(AiMode::Always));
    room.post("ann", "BOB, are you coming tonight?");
    let id = room.requests()[0].id;
    room.respond("ann", delta(id, "AI: I hope so!\nBO"));
    assert_eq!(
        room.answers(),
        [("I hope so!".to_string(), AiState::Streaming)],
        "a label is stripped and a line that may become one is held back"
    );
    room.respond("ann", delta(id, "B: Yes, I'll be there."));
    assert_eq!(room.answers(), [("I hope so!".to_string(), AiState::Done)]);
    assert!(!room.m().relay().is_pending(id), "the call is stopped");
}

#[test]
fn instructions_are_capped_and_can_be_cleared() {
    let mut room = ann_and_bob();
    room.input("ann", ChatInput::SetInstructions("x".repeat(2000)));
    assert_eq!(
        room.m().instructions().len(),
        synq_chat::MAX_INSTRUCTIONS_BYTES
    );
    room.input("bob", ChatInput::SetInstructions(String::new()));
    assert_eq!(room.m().instructions(), "");
    assert_eq!(
        room.texts().last().map(String::as_str),
        Some("* BOB cleared the room's instructions for the AI")
    );
}

#[test]
fn the_elected_views_queue_status_shows_on_the_waiting_entry_until_text_comes() {
    let mut room = Room::new();
    room.join("ann", true);
    room.join("bob", true);
    room.post("bob", "@AI one");
    room.post("bob", "@AI two");
    let ids: Vec<u64> = room.requests().iter().map(|r| r.id).collect();
    let status = |id, s: &str| RelayResponse::Status {
        id,
        status: s.into(),
    };
    assert_eq!(synq_chat::queue_status(0), "");
    assert_eq!(
        synq_chat::queue_status(2),
        "AI is answering 2 other requests first"
    );
    room.respond("ann", status(ids[0], &synq_chat::queue_status(2)));
    room.respond("ann", status(ids[1], &synq_chat::queue_status(3)));
    // Only the elected view speaks for the AI.
    room.respond("bob", status(ids[0], "forged"));
    assert_eq!(
        room.m().ai_status(ids[0]),
        Some("AI is answering 2 other requests first")
    );
    room.respond("ann", status(ids[0], &synq_chat::queue_status(1)));
    assert_eq!(
        room.m().ai_status(ids[0]),
        Some("AI is answering 1 other request first")
    );
    // Its turn: the status goes (empty), then the text replaces it.
    room.respond("ann", status(ids[0], ""));
    assert_eq!(room.m().ai_status(ids[0]), None);
    room.respond("ann", status(ids[0], "late"));
    room.respond("ann", delta(ids[0], "Hi"));
    assert_eq!(room.m().ai_status(ids[0]), None);
    // A status after text is not shown (the answer is already streaming).
    room.respond("ann", status(ids[0], "late"));
    assert_eq!(room.m().ai_status(ids[0]), None);
    // Stopping ends the wait too; a new elected view starts over without the old status.
    assert!(room.m().ai_status(ids[1]).is_some());
    room.exit("ann");
    assert_eq!(room.m().ai_status(ids[1]), None);
    room.respond("bob", status(ids[1], &synq_chat::queue_status(1)));
    assert!(room.m().ai_status(ids[1]).is_some());
    room.input("bob", ChatInput::Stop);
    assert_eq!(room.m().ai_status(ids[1]), None);
}

#[test]
fn the_history_and_settings_persist_for_the_next_version_of_the_chat() {
    let mut room = Room::new();
    room.join("ann", true);
    room.post("ann", "hello");
    let id = room.requests()[0].id;
    room.respond("ann", delta(id, "Hi Ann"));
    room.input("ann", ChatInput::SetAiMode(AiMode::Addressed));
    room.input("ann", ChatInput::SetInstructions("answer in French".into()));
    room.post("ann", "second");
    assert!(room.r.take_persisted().is_none(), "not at once: gathered");
    room.r.advance_to(room.time + PERSIST_AFTER_MS);
    let saved = room.r.take_persisted().expect("persisted after the delay");
    assert_eq!(saved.schema(), ChatModel::SCHEMA);
    let from = Persisted::from_bytes(&saved.to_bytes().expect("bytes")).expect("read back");

    // The next version of the chat starts the room from it.
    let next = Room {
        r: Replica::new_persisted(b"next-version", 0, &from).0,
        time: 0,
        n: Default::default(),
        outputs: Vec::new(),
    };
    let mut expected = room.texts();
    expected.push("* The history above was kept from an earlier version of the chat".into());
    assert_eq!(next.texts(), expected);
    assert_eq!(next.m().ai_mode(), AiMode::Addressed);
    assert_eq!(next.m().instructions(), "answer in French");
    // The answer that was streaming cannot go on in another session: it is stopped.
    assert_eq!(next.answers(), [("Hi Ann".to_owned(), AiState::Stopped)]);
    assert!(next.m().users().next().is_none(), "people join again");
    // New entries continue the ids.
    let last = room.m().history().map(|e| e.id).max();
    assert!(next.m().history().map(|e| e.id).max() > last);

    // Data the chat cannot read: the room starts empty, and says why.
    let bad = Persisted::from_bytes(br#"{"schema":"synq-chat/9","time":0,"data":[1,2]}"#)
        .expect("well-formed");
    let empty = Room {
        r: Replica::new_persisted(b"next-version", 0, &bad).0,
        time: 0,
        n: Default::default(),
        outputs: Vec::new(),
    };
    assert_eq!(empty.m().history().count(), 1);
    assert!(empty.texts()[0].contains("could not be read"));
}

/// A bot (a view that relays with a preference above 0) is in the room for good: in the
/// auto mode, one person with it is still alone (the AI answers every post), and two are
/// several; the prompt's people leave it out.
#[test]
fn a_relay_service_is_not_a_person_for_the_auto_mode() {
    let mut room = Room::new();
    room.join_pref("bot", 100);
    room.join("ann", false);
    assert!(room.m().is_service(&v("bot")));
    assert!(!room.m().is_service(&v("ann")));
    assert_eq!(room.m().people(), 1);
    room.post("ann", "what is the capital of France?");
    let asked = room.requests();
    assert_eq!(asked.len(), 1, "alone with the bot: answered");
    let system = &asked[0].request.messages[0].content;
    assert!(
        system.contains("ANN") && !system.contains("BOT"),
        "the prompt names the people, not the bot: {system}"
    );
    room.join("bob", true);
    assert_eq!(room.m().people(), 2);
    room.post("bob", "hi Ann");
    assert!(room.requests().is_empty(), "two people: not addressed");
    room.post("bob", "@AI and you?");
    assert_eq!(room.requests().len(), 1);
}
