//! ChatModel without network: one test per behaviour of the AI chat.

use synq_chat::{AiState, ChatInput, ChatModel, ChatOutput, ChatViewData, EntryKind, MAX_HISTORY};
use synq_model::{Event, Replica, ViewId};
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
        self.input(who, ChatInput::Post { text: text.into() });
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
    // 1–3. Bob posts; every replica adds it and asks the relay, naming the elected view.
    room.post("bob", "What is 2+2?");
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
    assert_eq!(room.answers(), [("It is ".to_string(), AiState::Streaming)]);
    room.respond("ann", delta(reqs[0].id, "4."));
    room.respond("ann", RelayResponse::Done { id: reqs[0].id });
    // 7. Views render the finished answer.
    assert_eq!(room.answers(), [("It is 4.".to_string(), AiState::Done)]);
    assert_eq!(
        room.texts(),
        [
            "* ANN joined",
            "* BOB joined",
            "BOB: What is 2+2?",
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
    room.post("c", "hi");
    assert_eq!(room.requests().len(), 1);
    assert_eq!(room.m().relay().pending_ids().count(), 1);
}

#[test]
fn reelection_reissues_every_pending_request_to_the_new_view() {
    let mut room = Room::new();
    room.join("ann", true);
    room.join("bob", true);
    room.post("bob", "one");
    room.post("bob", "two");
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
    room.post("bob", "q");
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
    room.post("bob", "q");
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
fn the_history_is_capped_at_100_entries() {
    let mut room = Room::new();
    room.join("ann", false);
    for i in 0..80 {
        room.post("ann", &format!("post {i}"));
    }
    // 1 notice + 80 posts + 80 AI entries, capped.
    assert_eq!(room.m().history().len(), MAX_HISTORY);
    let texts = room.texts();
    assert_eq!(texts.last().map(String::as_str), Some("AI: "));
    assert!(texts.contains(&"ANN: post 79".to_string()));
    assert!(!texts.contains(&"ANN: post 0".to_string()));
}

#[test]
fn the_prompt_holds_the_users_the_last_20_entries_and_the_text() {
    let mut room = Room::new();
    room.join("ann", true);
    room.join("bob", false);
    for i in 0..15 {
        room.post("ann", &format!("p{i}"));
        let id = room.requests()[0].id;
        room.respond("ann", delta(id, &format!("a{i}")));
        room.respond("ann", RelayResponse::Done { id });
    }
    room.post("bob", "<b>hello</b> AI");
    let req = room.requests().remove(0).request;
    let system = &req.messages[0];
    assert_eq!(system.role, synq_chat::PromptRole::System);
    assert!(system.content.contains("You are AI"));
    assert!(system.content.contains("ANN, BOB"), "{}", system.content);
    assert!(system.content.contains("plain text"));
    let last = req.messages.last().expect("messages");
    assert_eq!(
        (last.role.as_str(), last.content.as_str()),
        ("user", "BOB: <b>hello</b> AI")
    );
    // The 20 entries before the post: the last 10 posts and their 10 answers.
    let middle = &req.messages[1..req.messages.len() - 1];
    assert_eq!(middle.len(), 20);
    assert_eq!(middle[0].content, "ANN: p5");
    assert_eq!(middle[1].content, "a5");
    assert_eq!(middle[1].role, synq_chat::PromptRole::Assistant);
    assert_eq!(middle[19].content, "a14");
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
    room.join_pref("server", 10);
    assert_eq!(
        room.m().elected(),
        Some(&v("laptop")),
        "the election is sticky"
    );
    room.exit("laptop");
    assert_eq!(room.m().elected(), Some(&v("server")));
    room.join_pref("big", 20);
    room.join("other", true);
    room.exit("server");
    assert_eq!(
        room.m().elected(),
        Some(&v("big")),
        "highest preference wins"
    );
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
    assert!(!room.input("stranger", ChatInput::Post { text: "hi".into() }));
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
