//! The terminal view of a room: the model turned into rows (plain data, tested), and
//! their drawing with ratatui.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Position};
use ratatui::style::{Color, Modifier, Style, Stylize as _};
use ratatui::text::{Line, Span, Text};
use ratatui::widgets::{Paragraph, Wrap};
use synq_chat::{AI_NAME, AiMode, ChatModel, EntryKind};
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

/// One history entry, ready to draw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub kind: RowKind,
    /// Empty for notices.
    pub name: String,
    pub text: String,
}

/// What the history pane shows: the welcome line and the entries, oldest first.
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
}

/// The welcome line and the history as the browser shows them; `invite` is the room's
/// link (the browser has it in its address bar).
pub fn shown(m: &ChatModel, me: &ViewId, my_name: &str, invite: &str) -> Shown {
    let my_name = sanitize(m.name_of(me).unwrap_or(my_name), false);
    let others: Vec<String> = m
        .users()
        .filter(|(v, _)| *v != me)
        .map(|(_, n)| sanitize(n, false))
        .collect();
    let welcome = if others.is_empty() {
        format!(
            "Welcome, {my_name}! {AI_NAME} is here. Share the link to invite others: {}",
            sanitize(invite, false)
        )
    } else {
        format!(
            "Welcome, {my_name}! {AI_NAME} is here, along with {}.",
            others.join(", ")
        )
    };
    let rows = m
        .history()
        .map(|e| match &e.kind {
            EntryKind::Post {
                from, name, text, ..
            } => Row {
                kind: RowKind::Post { mine: from == me },
                name: sanitize(name, false),
                text: sanitize(text, true),
            },
            EntryKind::Ai {
                request,
                text,
                state,
                stopped_by,
                regenerated_by,
                ..
            } => {
                let mut text = if text.is_empty() && state.in_progress() {
                    // The place in the AI's queue, as the elected view reports it.
                    m.ai_status(*request).map_or_else(
                        || "…".to_owned(),
                        |status| format!("… ({})", sanitize(status, false)),
                    )
                } else {
                    sanitize(text, true)
                };
                if let Some(by) = regenerated_by {
                    text.push_str(&format!(
                        " (answered again at {}'s request)",
                        sanitize(by, false)
                    ));
                }
                if let Some(by) = stopped_by {
                    text.push_str(&format!(" (stopped by {})", sanitize(by, false)));
                }
                Row {
                    kind: RowKind::Ai {
                        streaming: state.in_progress(),
                    },
                    name: AI_NAME.to_owned(),
                    text,
                }
            }
            EntryKind::Joined { name } => Row {
                kind: RowKind::Notice,
                name: String::new(),
                text: format!("{} joined", sanitize(name, false)),
            },
            EntryKind::Left { name } => Row {
                kind: RowKind::Notice,
                name: String::new(),
                text: format!("{} left", sanitize(name, false)),
            },
            EntryKind::Notice { text } => Row {
                kind: RowKind::Notice,
                name: String::new(),
                text: sanitize(text, true),
            },
        })
        .collect();
    Shown {
        welcome,
        rows,
        people: m.users().count(),
        relaying: m.elected() == Some(me),
        mode: m.ai_mode(),
        instructions: sanitize(m.instructions(), false),
        answering: m.answering(),
    }
}

/// The connection as the header shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Connected,
    Reconnecting,
    /// The session ended for good; the message says why.
    Failed(String),
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
    /// `/ai MODE`.
    SetMode(AiMode),
    /// `/ai`: say when the AI answers.
    ShowMode,
    /// `/instructions TEXT` (empty: clear, from `/instructions -`).
    SetInstructions(String),
    /// `/instructions`: show the room's instructions.
    ShowInstructions,
}

/// What `/help` shows, one command a line.
pub const HELP: &str = "\
/ai always|addressed|auto|off   when the AI answers (/ai alone: show it)
/instructions TEXT              the room's instructions for the AI (alone: show; - clears)
/stop                           stop the AI's answer in progress
/again                          ask the AI again for its latest answer (replaces it)
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

    let (status, status_style) = match header.status {
        Status::Connected => ("connected".to_owned(), Style::new().fg(Color::Green)),
        Status::Reconnecting => ("reconnecting…".to_owned(), Style::new().fg(Color::Yellow)),
        Status::Failed(why) => (sanitize(why, false), Style::new().fg(Color::Red)),
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
    for row in &shown.rows {
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
        let mut row_lines = vec![Line::from(spans)];
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
        assert_eq!(typed(&mut input, "/help"), Action::None);
        let help = input.hint.clone().unwrap_or_default();
        for command in ["/ai", "/instructions", "/stop", "/again", "/reset", "/quit"] {
            assert!(help.contains(command), "/help names {command}: {help}");
        }
        assert_eq!(typed(&mut input, "/stopp"), Action::None, "not a command");
        assert!(input.hint.as_deref().unwrap_or_default().contains("/help"));
        assert!(mode_hint(AiMode::Off).contains("nothing is sent"));
        assert!(instructions_hint("Be brief.").contains("Be brief."));
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
                },
                Row {
                    kind: RowKind::Ai { streaming: true },
                    name: "AI".into(),
                    text: "Hel\nlo".into(),
                },
                Row {
                    kind: RowKind::Notice,
                    name: String::new(),
                    text: "Bob joined".into(),
                },
            ],
            people: 1,
            relaying: true,
            mode: AiMode::Auto,
            instructions: String::new(),
            answering: true,
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
                "Ann: hi",
                "AI: Hel",
                &format!("  lo{STREAMING_MARKER}"),
                "Bob joined"
            ]
        );
    }
}
