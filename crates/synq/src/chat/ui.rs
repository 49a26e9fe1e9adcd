//! The terminal view of a room: synq-chat's view model made safe for a terminal, the
//! input line and its commands, and the drawing with ratatui.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Position};
use ratatui::style::{Color, Modifier, Style, Stylize as _};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Paragraph, Wrap};
use synq_chat::view::{self, Status};
use synq_chat::{AI_NAME, AiMode, ChatModel};
use synq_model::ViewId;

/// Shown after an AI answer while it still streams.
pub const STREAMING_MARKER: &str = " ▍";

/// Text fit for a terminal: control characters (escape sequences, carriage returns, bells)
/// would act on the terminal instead of being shown, so each becomes U+FFFD; newlines are
/// kept when `multiline`, tabs become spaces.
pub fn sanitize(text: &str, multiline: bool) -> String {
    text.chars()
        .map(|c| match c {
            '\n' if multiline => '\n',
            '\n' | '\t' => ' ',
            c if c.is_control() => '\u{FFFD}',
            c => c,
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKind {
    Post { mine: bool },
    Ai { streaming: bool },
    Notice,
}

/// One history entry, ready to draw (synq-chat's view row, made safe for a terminal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub kind: RowKind,
    /// Empty for notices.
    pub name: String,
    pub text: String,
    /// What the row replies to ("↪ Ann: first words").
    pub quote: Option<String>,
}

/// What the screen shows of the room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shown {
    pub welcome: String,
    pub rows: Vec<Row>,
    pub people: usize,
    /// Whether this participant is the one calling the AI for the room.
    pub relaying: bool,
    /// When the AI answers.
    pub mode: AiMode,
    /// The room's instructions for the AI (sanitized; empty: none).
    pub instructions: String,
    /// Whether an answer is in progress (what `/stop` stops).
    pub answering: bool,
    /// The messages `/reply N` answers, newest first: their entry and how a reply quotes
    /// them ("Ann: first words").
    pub repliable: Vec<(u64, String)>,
    /// The room's newest archive page, if any (what `/earlier` loads first).
    pub newest_page: Option<String>,
    /// Rows `/earlier` loaded from the archive, shown above the history.
    pub earlier: Vec<Row>,
}

/// The room as synq-chat's view model shows it; `invite` is the room's link (the
/// browser has it in its address bar).
pub fn shown(m: &ChatModel, me: &ViewId, my_name: &str, invite: &str) -> Shown {
    let page = view::page(m, me, my_name, Some(invite));
    let rows = rows_of(&page.rows);
    Shown {
        welcome: sanitize(&page.welcome, false),
        rows,
        people: page.people.len(),
        relaying: page.relaying,
        mode: page.mode,
        instructions: sanitize(&page.instructions, false),
        answering: page.answering,
        repliable: page
            .repliable()
            .map(|r| (r.id, sanitize(&r.who_said(), false)))
            .collect(),
        newest_page: page.newest_page,
        earlier: Vec::new(),
    }
}

/// synq-chat's rows as the screen draws them (made harmless for a terminal).
pub fn rows_of(rows: &[view::Row]) -> Vec<Row> {
    rows.iter()
        .map(|r| Row {
            kind: match r.kind {
                view::RowKind::Post { mine } => RowKind::Post { mine },
                view::RowKind::Ai { state } => RowKind::Ai {
                    streaming: state.in_progress(),
                },
                view::RowKind::Notice => RowKind::Notice,
            },
            name: sanitize(&r.name, false),
            text: sanitize(&r.text, true),
            quote: r.quote.as_deref().map(|q| sanitize(q, false)),
        })
        .collect()
}

/// Messages `/reply` lists.
const REPLY_LIST: usize = 5;

/// What `/reply` alone shows: the latest messages with their numbers.
pub fn replies_hint(shown: &Shown) -> String {
    if shown.repliable.is_empty() {
        return "Nothing to reply to yet.".to_owned();
    }
    let mut hint = String::from("/reply N TEXT replies to message N (/reply TEXT: to 1):");
    for (n, (_, said)) in shown.repliable.iter().take(REPLY_LIST).enumerate() {
        hint.push_str(&format!("\n{} {said}", n + 1));
    }
    hint
}

/// What the user typed, and where the history is scrolled to.
#[derive(Debug, Default)]
pub struct Input {
    pub line: String,
    /// Lines scrolled back from the bottom (0: follow the newest).
    pub scroll_back: u16,
    /// A one-off hint under the history (an unknown command, …).
    pub hint: Option<String>,
}

/// What a key asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Post(String),
    Reset,
    Quit,
    /// `/stop`: stop the answer in progress.
    Stop,
    /// `/again`: ask the AI again for its latest answer.
    Again,
    /// `/reply [N] TEXT`: reply to the `n`th latest message (1: the latest).
    Reply {
        n: usize,
        text: String,
    },
    /// `/reply`: list the messages one may reply to.
    ListReplies,
    /// `/ai MODE`.
    SetMode(AiMode),
    /// `/ai`: say when the AI answers.
    ShowMode,
    /// `/instructions TEXT` (empty: clear, from `/instructions -`).
    SetInstructions(String),
    /// `/instructions`: show the room's instructions.
    ShowInstructions,
    /// `/earlier`: load the archive page before the oldest shown.
    Earlier,
}

/// What `/help` shows, one command a line.
pub const HELP: &str = "\
/ai always|addressed|auto|off   when the AI answers (/ai alone: show it)
/instructions TEXT              the room's instructions for the AI (alone: show; - clears)
/stop                           stop the AI's answer in progress
/again                          ask the AI again for its latest answer (replaces it)
/reply [N] TEXT                 reply to message N, 1 the latest (/reply alone lists them;
                                a reply to the AI asks the AI)
/earlier                        load earlier messages from the room's archive
/reset                          clear the chat for everyone
/quit or Esc                    leave (//text posts /text)";

/// The line `/ai` shows.
pub fn mode_hint(mode: AiMode) -> String {
    format!(
        "The {AI_NAME} is {}: it will {}. /ai always|addressed|auto|off changes it for everyone.",
        mode.as_str(),
        mode.describe()
    )
}

/// The line `/instructions` shows.
pub fn instructions_hint(instructions: &str) -> String {
    if instructions.is_empty() {
        format!(
            "No instructions for the {AI_NAME} in this room. /instructions TEXT sets them for everyone."
        )
    } else {
        format!(
            "The room's instructions for the {AI_NAME}: {instructions} (/instructions - clears them)"
        )
    }
}

impl Input {
    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        if key.kind != KeyEventKind::Press {
            return Action::None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c' | 'd') if ctrl => return Action::Quit,
            KeyCode::Char('u') if ctrl => self.line.clear(),
            KeyCode::Esc => return Action::Quit,
            KeyCode::Enter => return self.submit(),
            KeyCode::Backspace => {
                self.line.pop();
            }
            KeyCode::PageUp => self.scroll_back = self.scroll_back.saturating_add(10),
            KeyCode::PageDown => self.scroll_back = self.scroll_back.saturating_sub(10),
            KeyCode::Up => self.scroll_back = self.scroll_back.saturating_add(1),
            KeyCode::Down => self.scroll_back = self.scroll_back.saturating_sub(1),
            KeyCode::End => self.scroll_back = 0,
            KeyCode::Char(c) if !ctrl && !c.is_control() => self.line.push(c),
            _ => {}
        }
        Action::None
    }

    /// Pasted text goes into the line (one post, even when it spans lines).
    pub fn paste(&mut self, text: &str) {
        // Terminals may turn newlines into carriage returns.
        let text = text.replace("\r\n", "\n");
        let text = text.trim_end_matches(['\r', '\n']);
        self.line.extend(
            text.chars()
                .map(|c| if matches!(c, '\r' | '\n') { ' ' } else { c })
                .filter(|c| !c.is_control()),
        );
    }

    fn submit(&mut self) -> Action {
        let line = std::mem::take(&mut self.line);
        self.hint = None;
        self.scroll_back = 0;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            return Action::None;
        }
        // `//text` posts `/text`.
        if let Some(text) = trimmed.strip_prefix("//") {
            return Action::Post(format!("/{text}"));
        }
        let Some(command) = trimmed.strip_prefix('/') else {
            return Action::Post(line);
        };
        let (word, rest) = command
            .split_once(char::is_whitespace)
            .map_or((command, ""), |(w, r)| (w, r.trim()));
        match (word, rest) {
            ("quit" | "exit", "") => Action::Quit,
            ("reset", "") => Action::Reset,
            ("stop", "") => Action::Stop,
            ("again", "") => Action::Again,
            ("earlier", "") => Action::Earlier,
            ("reply", "") => Action::ListReplies,
            ("reply", rest) => {
                let (first, text) = rest
                    .split_once(char::is_whitespace)
                    .map_or((rest, ""), |(f, t)| (f, t.trim()));
                match first.parse::<usize>() {
                    Ok(n) if n >= 1 && !text.is_empty() => Action::Reply {
                        n,
                        text: text.to_owned(),
                    },
                    Ok(_) => {
                        self.hint = Some(
                            "/reply N TEXT: N counts the messages from the latest (1); /reply lists them"
                                .to_owned(),
                        );
                        self.line = line;
                        Action::None
                    }
                    Err(_) => Action::Reply {
                        n: 1,
                        text: rest.to_owned(),
                    },
                }
            }
            ("help", "") => {
                self.hint = Some(HELP.to_owned());
                Action::None
            }
            ("ai", "") => Action::ShowMode,
            ("ai", mode) => match AiMode::parse(mode) {
                Some(mode) => Action::SetMode(mode),
                None => {
                    self.hint = Some(format!(
                        "/ai {mode}? The modes are always, addressed, auto and off."
                    ));
                    self.line = line;
                    Action::None
                }
            },
            ("instructions", "") => Action::ShowInstructions,
            ("instructions", "-") => Action::SetInstructions(String::new()),
            ("instructions", text) => Action::SetInstructions(text.to_owned()),
            _ => {
                self.hint = Some(format!(
                    "Unknown command {trimmed}: /help lists the commands (//text posts /text)"
                ));
                self.line = line;
                Action::None
            }
        }
    }
}

/// Everything the header needs besides the model.
pub struct Header<'a> {
    pub room: &'a str,
    pub server: &'a str,
    pub status: &'a Status,
    pub relay: bool,
}

/// Draws the screen; returns how far the history can be scrolled back.
pub fn draw(frame: &mut Frame, header: &Header, shown: &Shown, input: &Input) -> u16 {
    let hint_lines = input
        .hint
        .as_deref()
        .map_or(0, |h| u16::try_from(h.lines().count()).unwrap_or(u16::MAX));
    let [top, history, hint, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(hint_lines),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    let mut status = sanitize(&header.status.text(), false);
    if header.status.failed() {
        status.push_str(" (Esc quits)");
    }
    let status_style = if header.status.ok() {
        Style::new().fg(Color::Green)
    } else if header.status.failed() {
        Style::new().fg(Color::Red)
    } else {
        Style::new().fg(Color::Yellow)
    };
    let mut spans = vec![
        Span::styled(" synq chat ", Style::new().add_modifier(Modifier::REVERSED)),
        Span::raw(format!(
            " room {} on {} · ",
            sanitize(header.room, false),
            sanitize(header.server, false)
        )),
        Span::styled(status, status_style),
    ];
    if header.status == &Status::Connected {
        let people = if shown.people == 1 {
            "1 person".to_owned()
        } else {
            format!("{} people", shown.people)
        };
        spans.push(Span::raw(format!(" · {people} · ")));
        let mode = format!("AI {}", shown.mode.as_str());
        if shown.mode == AiMode::Off {
            spans.push(Span::styled(mode, Style::new().fg(Color::Yellow)));
        } else {
            spans.push(Span::raw(mode));
        }
        if shown.relaying {
            spans.push(Span::raw(" · you relay the AI"));
        } else if !header.relay {
            spans.push(Span::raw(" · not relaying"));
        }
    }
    frame.render_widget(Line::from(spans), top);

    let text = history_text(shown);
    let paragraph = Paragraph::new(text).wrap(Wrap { trim: false });
    let total = u16::try_from(paragraph.line_count(history.width)).unwrap_or(u16::MAX);
    let bottom_offset = total.saturating_sub(history.height);
    let offset = bottom_offset.saturating_sub(input.scroll_back);
    frame.render_widget(paragraph.scroll((offset, 0)), history);

    if let Some(h) = &input.hint {
        let lines: Vec<Line> = h
            .lines()
            .map(|l| Line::from(sanitize(l, false)).yellow())
            .collect();
        frame.render_widget(Text::from(lines), hint);
    }

    // The input line shows its end when it is longer than the terminal is wide.
    let prompt = "> ";
    let room_for_text = usize::from(bottom.width.saturating_sub(prompt.len() as u16 + 1));
    let chars: Vec<char> = input.line.chars().collect();
    let visible: String = chars[chars.len().saturating_sub(room_for_text)..]
        .iter()
        .collect();
    let visible = sanitize(&visible, false);
    // Display width, not characters: wide characters take two cells.
    let typed_width = u16::try_from(Span::raw(visible.as_str()).width()).unwrap_or(u16::MAX);
    let cursor_x = (bottom.x + prompt.len() as u16).saturating_add(typed_width);
    let typed = if visible.is_empty() {
        Span::raw("Enter sends · /help lists commands · Esc or /quit leaves").dim()
    } else {
        Span::raw(visible)
    };
    frame.render_widget(Line::from(vec![Span::raw(prompt).bold(), typed]), bottom);
    frame.set_cursor_position(Position::new(cursor_x.min(bottom.right()), bottom.y));
    bottom_offset
}

fn history_text(shown: &Shown) -> Text<'static> {
    let mut lines = vec![Line::styled(
        shown.welcome.clone(),
        Style::new().fg(Color::Cyan).add_modifier(Modifier::ITALIC),
    )];
    for row in shown.earlier.iter().chain(&shown.rows) {
        let (name_style, text_style) = match row.kind {
            RowKind::Post { mine: true } => (Style::new().bold().fg(Color::Green), Style::new()),
            RowKind::Post { mine: false } => (Style::new().bold().fg(Color::Blue), Style::new()),
            RowKind::Ai { .. } => (Style::new().bold().fg(Color::Magenta), Style::new()),
            RowKind::Notice => (Style::new(), Style::new().dim()),
        };
        let mut text_lines = row.text.split('\n');
        let first = text_lines.next().unwrap_or_default();
        let mut spans = Vec::new();
        if !row.name.is_empty() {
            spans.push(Span::styled(format!("{}: ", row.name), name_style));
        }
        spans.push(Span::styled(first.to_owned(), text_style));
        let mut row_lines = Vec::new();
        if let Some(quote) = &row.quote {
            row_lines.push(Line::styled(quote.clone(), Style::new().dim()));
        }
        row_lines.push(Line::from(spans));
        // Continuation lines are indented under the text, not the name.
        for more in text_lines {
            row_lines.push(Line::styled(format!("  {more}"), text_style));
        }
        if let (RowKind::Ai { streaming: true }, Some(last)) = (row.kind, row_lines.last_mut()) {
            last.push_span(Span::styled(
                STREAMING_MARKER,
                Style::new().fg(Color::Magenta),
            ));
        }
        lines.extend(row_lines);
    }
    Text::from(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn typed(input: &mut Input, text: &str) -> Action {
        for c in text.chars() {
            input.on_key(key(KeyCode::Char(c)));
        }
        input.on_key(key(KeyCode::Enter))
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(
            sanitize("a\x1b[2Jb\rc\u{7}\u{9b}d\te\nf", true),
            "a\u{FFFD}[2Jb\u{FFFD}c\u{FFFD}\u{FFFD}d e\nf"
        );
        assert_eq!(sanitize("two\nlines", false), "two lines");
    }

    #[test]
    fn commands_and_posts() {
        let mut input = Input::default();
        assert_eq!(typed(&mut input, "hello"), Action::Post("hello".into()));
        assert_eq!(input.line, "");
        assert_eq!(typed(&mut input, "  "), Action::None);
        assert_eq!(typed(&mut input, "/reset"), Action::Reset);
        assert_eq!(typed(&mut input, "//reset"), Action::Post("/reset".into()));
        assert_eq!(typed(&mut input, "/nope"), Action::None);
        assert!(input.hint.as_deref().unwrap_or_default().contains("/nope"));
        assert_eq!(input.line, "/nope", "kept to be fixed");
        input.line.clear();
        assert_eq!(typed(&mut input, "/quit"), Action::Quit);
        assert_eq!(
            input.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Action::Quit
        );
        assert_eq!(input.on_key(key(KeyCode::Esc)), Action::Quit);
        input.paste("two\nlines\x1b[0m\r\nand\rmore\n");
        assert_eq!(input.line, "two lines[0m and more");
    }

    #[test]
    fn the_ai_commands() {
        let mut input = Input::default();
        assert_eq!(typed(&mut input, "/stop"), Action::Stop);
        assert_eq!(typed(&mut input, "/again"), Action::Again);
        assert_eq!(typed(&mut input, "/ai"), Action::ShowMode);
        assert_eq!(typed(&mut input, "/ai off"), Action::SetMode(AiMode::Off));
        assert_eq!(
            typed(&mut input, " /ai  Addressed "),
            Action::SetMode(AiMode::Addressed)
        );
        assert_eq!(typed(&mut input, "/ai auto"), Action::SetMode(AiMode::Auto));
        assert_eq!(
            typed(&mut input, "/ai always"),
            Action::SetMode(AiMode::Always)
        );
        assert_eq!(typed(&mut input, "/ai sometimes"), Action::None);
        assert!(
            input
                .hint
                .as_deref()
                .unwrap_or_default()
                .contains("always, addressed, auto and off"),
            "{:?}",
            input.hint
        );
        assert_eq!(input.line, "/ai sometimes", "kept to be fixed");
        input.line.clear();
        assert_eq!(typed(&mut input, "/instructions"), Action::ShowInstructions);
        assert_eq!(
            typed(&mut input, "/instructions Answer in French.  "),
            Action::SetInstructions("Answer in French.".into())
        );
        assert_eq!(
            typed(&mut input, "/instructions -"),
            Action::SetInstructions(String::new())
        );
        assert_eq!(typed(&mut input, "/earlier"), Action::Earlier);
        assert_eq!(typed(&mut input, "/help"), Action::None);
        let help = input.hint.clone().unwrap_or_default();
        for command in [
            "/ai",
            "/instructions",
            "/stop",
            "/again",
            "/reply",
            "/earlier",
            "/reset",
            "/quit",
        ] {
            assert!(help.contains(command), "/help names {command}: {help}");
        }
        assert_eq!(typed(&mut input, "/stopp"), Action::None, "not a command");
        assert!(input.hint.as_deref().unwrap_or_default().contains("/help"));
        assert!(mode_hint(AiMode::Off).contains("nothing is sent"));
        assert!(instructions_hint("Be brief.").contains("Be brief."));
    }

    #[test]
    fn the_reply_command() {
        let mut input = Input::default();
        assert_eq!(typed(&mut input, "/reply"), Action::ListReplies);
        assert_eq!(
            typed(&mut input, "/reply 2 the park, at noon"),
            Action::Reply {
                n: 2,
                text: "the park, at noon".into()
            }
        );
        assert_eq!(
            typed(&mut input, "/reply sounds good"),
            Action::Reply {
                n: 1,
                text: "sounds good".into()
            },
            "without a number: to the latest"
        );
        assert_eq!(typed(&mut input, "/reply 3"), Action::None, "no text");
        assert!(
            input
                .hint
                .as_deref()
                .unwrap_or_default()
                .contains("/reply N TEXT")
        );
        assert_eq!(input.line, "/reply 3", "kept to be finished");
        input.line.clear();
        assert_eq!(typed(&mut input, "/reply 0 hm"), Action::None);
        input.line.clear();
        let mut shown = Shown::default();
        assert_eq!(replies_hint(&shown), "Nothing to reply to yet.");
        shown.repliable = (1..=7).map(|i| (i, format!("Ann: post {i}"))).collect();
        let hint = replies_hint(&shown);
        assert!(hint.contains("\n1 Ann: post 1\n2 Ann: post 2"), "{hint}");
        assert_eq!(hint.lines().count(), 6, "the latest five: {hint}");
    }

    #[test]
    fn rows_render_streaming_answers_with_a_marker() {
        let shown = Shown {
            welcome: "Welcome, Ann! AI is here.".into(),
            rows: vec![
                Row {
                    kind: RowKind::Post { mine: true },
                    name: "Ann".into(),
                    text: "hi".into(),
                    quote: None,
                },
                Row {
                    kind: RowKind::Ai { streaming: true },
                    name: "AI".into(),
                    text: "Hel\nlo".into(),
                    quote: None,
                },
                Row {
                    kind: RowKind::Post { mine: false },
                    name: "Bob".into(),
                    text: "why?".into(),
                    quote: Some("↪ AI: Hel lo".into()),
                },
                Row {
                    kind: RowKind::Notice,
                    name: String::new(),
                    text: "Bob joined".into(),
                    quote: None,
                },
            ],
            people: 1,
            relaying: true,
            mode: AiMode::Auto,
            instructions: String::new(),
            answering: true,
            repliable: Vec::new(),
            newest_page: None,
            earlier: vec![Row {
                kind: RowKind::Post { mine: false },
                name: "Cy".into(),
                text: "from the archive".into(),
                quote: None,
            }],
        };
        let text: Vec<String> = history_text(&shown)
            .lines
            .iter()
            .map(|l| l.spans.iter().map(|s| s.content.as_ref()).collect())
            .collect();
        assert_eq!(
            text,
            [
                "Welcome, Ann! AI is here.",
                "Cy: from the archive",
                "Ann: hi",
                "AI: Hel",
                &format!("  lo{STREAMING_MARKER}"),
                "↪ AI: Hel lo",
                "Bob: why?",
                "Bob joined"
            ]
        );
    }
}
