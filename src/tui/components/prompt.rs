//! The prompt editor: a text buffer plus prompt-language highlighting, the parse error shown at
//! its span, `<lora:` name completion from the catalog, embedding name completion (a word being
//! typed, or `embedding:`), and Up/Down history.
//! Used twice, for the positive and the negative prompt.

use super::editor::{cursor_row, display_width, layout, TextBuffer};
use crate::tui::keymap::Action;
use crate::tui::lang::{self, Analysis, Component, Strength, Token};
use crate::tui::theme::Theme;
use ratatui::buffer::Buffer;
use ratatui::layout::{Position, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget};
use std::ops::Range;

/// What a completion menu completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionKind {
    /// A `<lora:` tag's name; accepting closes the tag.
    Lora,
    /// An embedding's name, the word itself.
    Embedding,
}

/// The open completion menu.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The name typed so far.
    pub range: Range<usize>,
    pub items: Vec<String>,
    pub selected: usize,
    pub kind: CompletionKind,
    /// Per item, what the menu shows beside the name (empty for adapters).
    pub notes: Vec<String>,
    /// Per item, why accepting it is refused (an embedding made for another model family).
    pub refusals: Vec<Option<String>>,
}

/// An embedding the editor offers while a word is typed.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingChoice {
    pub name: String,
    /// Shown beside the name: how many vectors, or that it does not fit the model.
    pub note: String,
    /// Why it cannot be used with the model (the message a prompt using it would get).
    pub refused: Option<String>,
}

/// Menu entries at most.
const MENU_LEN: usize = 8;

#[derive(Debug, Clone)]
pub struct PromptEditor {
    pub title: &'static str,
    pub buf: TextBuffer,
    pub analysis: Analysis,
    pub completion: Option<Completion>,
    /// The embeddings completion offers, usable ones first.
    pub embeddings: Vec<EmbeddingChoice>,
    history: Vec<String>,
    /// Position while browsing history; `None` when editing the draft.
    hist_pos: Option<usize>,
    draft: String,
    /// Width of the text area at the last render, for Up/Down by visual rows.
    pub width: u16,
}

/// What an editor key did, for the app to react (e.g. history reached an end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditOutcome {
    Changed,
    Moved,
    Nothing,
}

impl PromptEditor {
    pub fn new(title: &'static str, text: &str) -> PromptEditor {
        PromptEditor {
            title,
            buf: TextBuffer::new(text),
            analysis: lang::analyze(text),
            completion: None,
            embeddings: Vec::new(),
            history: Vec::new(),
            hist_pos: None,
            draft: String::new(),
            width: 40,
        }
    }

    pub fn text(&self) -> &str {
        self.buf.text()
    }

    pub fn set_history(&mut self, history: Vec<String>) {
        self.history = history;
        self.hist_pos = None;
    }

    pub fn history(&self) -> &[String] {
        &self.history
    }

    /// Records a submitted prompt (no consecutive duplicates), capped at `limit`.
    pub fn push_history(&mut self, entry: &str, limit: usize) {
        if entry.trim().is_empty() || self.history.last().is_some_and(|h| h == entry) {
            return;
        }
        self.history.push(entry.to_string());
        if self.history.len() > limit {
            let extra = self.history.len() - limit;
            self.history.drain(..extra);
        }
        self.hist_pos = None;
    }

    /// Re-parses after any change; cheap enough for prompt-sized text.
    pub fn refresh(&mut self, catalog: &[String]) {
        let (text, cursor) = (self.buf.text(), self.buf.cursor());
        self.analysis = lang::analyze(text);
        let (range, kind, typed, offered) = if let Some(range) = lang::completion_at(text, cursor) {
            let typed = text[range.clone()].to_lowercase();
            let offered: Vec<(String, String, Option<String>)> = catalog
                .iter()
                .filter(|n| n.to_lowercase().contains(&typed))
                .map(|n| (n.clone(), String::new(), None))
                .collect();
            (range, CompletionKind::Lora, typed, offered)
        } else if let Some((range, named)) = lang::embedding_completion_at(text, cursor) {
            let typed = text[range.clone()].to_lowercase();
            // A plain word offers the names it begins; after `embedding:` any name containing it.
            let offered = self
                .embeddings
                .iter()
                .filter(|e| {
                    let n = e.name.to_lowercase();
                    if named {
                        n.contains(&typed)
                    } else {
                        n.starts_with(&typed) && n != typed
                    }
                })
                .map(|e| (e.name.clone(), e.note.clone(), e.refused.clone()))
                .collect();
            (range, CompletionKind::Embedding, typed, offered)
        } else {
            self.completion = None;
            return;
        };
        let mut offered = offered;
        // Usable names first, then prefix matches: that is what people are usually typing.
        offered.sort_by_key(|(n, _, refused)| {
            (refused.is_some(), !n.to_lowercase().starts_with(&typed))
        });
        offered.truncate(MENU_LEN);
        let keep = self
            .completion
            .as_ref()
            .filter(|c| c.kind == kind)
            .map_or(0, |c| c.selected);
        self.completion = (!offered.is_empty()).then(|| Completion {
            range,
            selected: keep.min(offered.len() - 1),
            kind,
            items: offered.iter().map(|o| o.0.clone()).collect(),
            notes: offered.iter().map(|o| o.1.clone()).collect(),
            refusals: offered.into_iter().map(|o| o.2).collect(),
        });
    }

    pub fn set_text(&mut self, text: &str, catalog: &[String]) {
        self.buf.set_text(text);
        self.refresh(catalog);
    }

    /// Keys the completion menu takes while it is open: `None` when it did not use the key,
    /// `Some(Err(why))` when it refused the chosen name (an embedding for another family).
    pub fn completion_key(
        &mut self,
        code: crossterm::event::KeyCode,
        catalog: &[String],
    ) -> Option<Result<(), String>> {
        use crossterm::event::KeyCode;
        let c = self.completion.as_mut()?;
        match code {
            KeyCode::Up => c.selected = c.selected.checked_sub(1).unwrap_or(c.items.len() - 1),
            KeyCode::Down => c.selected = (c.selected + 1) % c.items.len(),
            KeyCode::Esc => self.completion = None,
            KeyCode::Tab | KeyCode::Enter => {
                let name = c.items[c.selected].clone();
                let range = c.range.clone();
                if let Some(Some(why)) = c.refusals.get(c.selected) {
                    let why = why.clone();
                    self.completion = None;
                    return Some(Err(why));
                }
                let with = match c.kind {
                    CompletionKind::Embedding => name,
                    CompletionKind::Lora => {
                        // Complete the whole tag when nothing follows the name yet.
                        let closed = self.buf.text()[range.end..].starts_with([':', '>']);
                        if closed {
                            name
                        } else {
                            format!("{name}:1>")
                        }
                    }
                };
                self.buf.replace(range, &with);
                self.completion = None;
                self.analysis = lang::analyze(self.buf.text());
                let _ = catalog;
            }
            _ => return None,
        }
        Some(Ok(()))
    }

    /// Applies an editing action; `None` for actions this component does not handle.
    pub fn apply(&mut self, action: Action, catalog: &[String]) -> Option<EditOutcome> {
        let before = self.buf.text().len();
        let text_before = self.buf.text().to_string();
        let w = self.width;
        match action {
            Action::Left => self.buf.left(),
            Action::Right => self.buf.right(),
            Action::Up => {
                if !self.buf.up(w) {
                    self.history_step(-1, catalog);
                }
            }
            Action::Down => {
                if !self.buf.down(w) {
                    self.history_step(1, catalog);
                }
            }
            Action::HistoryPrev => self.history_step(-1, catalog),
            Action::HistoryNext => self.history_step(1, catalog),
            Action::WordLeft => self.buf.word_left(),
            Action::WordRight => self.buf.word_right(),
            Action::LineStart => self.buf.line_start(),
            Action::LineEnd => self.buf.line_end(),
            Action::Backspace => self.buf.backspace(),
            Action::Delete => self.buf.delete(),
            Action::DeleteWord => self.buf.delete_word(),
            Action::KillToEnd => self.buf.kill_to_end(),
            Action::KillToStart => self.buf.kill_to_start(),
            Action::Newline => self.buf.insert_char('\n'),
            Action::Undo => {
                self.buf.undo();
            }
            Action::Redo => {
                self.buf.redo();
            }
            _ => return None,
        }
        self.refresh(catalog);
        let changed = before != self.buf.text().len() || text_before != self.buf.text();
        Some(if changed {
            EditOutcome::Changed
        } else {
            EditOutcome::Moved
        })
    }

    pub fn type_char(&mut self, c: char, catalog: &[String]) {
        self.buf.insert_char(c);
        self.hist_pos = None;
        self.refresh(catalog);
    }

    pub fn paste(&mut self, s: &str, catalog: &[String]) {
        self.buf.insert_str(s);
        self.refresh(catalog);
    }

    fn history_step(&mut self, dir: isize, catalog: &[String]) {
        if self.history.is_empty() {
            return;
        }
        let next = match (self.hist_pos, dir < 0) {
            (None, true) => {
                self.draft = self.buf.text().to_string();
                Some(self.history.len() - 1)
            }
            (None, false) => return,
            (Some(0), true) => Some(0),
            (Some(p), true) => Some(p - 1),
            (Some(p), false) if p + 1 < self.history.len() => Some(p + 1),
            (Some(_), false) => None,
        };
        self.hist_pos = next;
        let text = next.map_or(self.draft.clone(), |p| self.history[p].clone());
        self.buf.set_text(&text);
        self.refresh(catalog);
    }

    /// Changes the constant strength of the tag at the cursor by `delta` (both te and unet).
    /// Returns an explanation when it cannot.
    pub fn nudge_tag_at_cursor(&mut self, delta: f32, catalog: &[String]) -> Result<(), String> {
        let i = self
            .analysis
            .tag_at(self.buf.cursor())
            .ok_or("put the cursor on a <lora:…> tag")?;
        self.nudge_tag(i, delta, catalog)
    }

    pub fn nudge_tag(&mut self, i: usize, delta: f32, catalog: &[String]) -> Result<(), String> {
        let mut tag = self.analysis.tags.get(i).cloned().ok_or("no such tag")?;
        let r = |v: f32| ((v + delta) * 100.0).round() / 100.0;
        match (tag.te.clone(), tag.unet.clone()) {
            // Setting te carries over to unet (and on to the blocks) where they were equal.
            (Strength::Const(te), Strength::Const(unet)) if te == unet => {
                tag.set(Component::Te, Strength::Const(r(te)))
            }
            (Strength::Const(te), Strength::Const(unet)) => {
                tag.set(Component::Te, Strength::Const(r(te)));
                tag.set(Component::Unet, Strength::Const(r(unet)));
            }
            _ => return Err(format!("{} follows a schedule; edit it with F3", tag.name)),
        }
        self.rewrite_tag(i, &tag, catalog);
        Ok(())
    }

    /// Replaces tag `i` in the text by the printer's form of `tag`, as one undo step.
    pub fn rewrite_tag(&mut self, i: usize, tag: &lang::LoraTag, catalog: &[String]) {
        let Some(old) = self.analysis.tags.get(i) else {
            return;
        };
        self.buf
            .replace_keep_cursor(old.span.clone(), &lang::print(tag));
        self.refresh(catalog);
    }

    /// Draws the block with the highlighted text, the cursor, the error line and the menu.
    pub fn render(
        &mut self,
        area: Rect,
        buf: &mut Buffer,
        theme: &Theme,
        focused: bool,
    ) -> Option<Position> {
        let border = if focused {
            theme.get("ui.border.focused")
        } else {
            theme.get("ui.border")
        };
        let title = if focused {
            theme.get("ui.title.focused")
        } else {
            theme.get("ui.title")
        };
        let block = Block::default()
            .borders(Borders::ALL)
            .border_style(border)
            .title(Span::styled(format!(" {} ", self.title), title));
        let inner = block.inner(area);
        block.render(area, buf);
        if inner.width == 0 || inner.height == 0 {
            return None;
        }
        let diagnostic = self.analysis.error.as_ref().map(|e| (e, true)).or(self
            .analysis
            .warning
            .as_ref()
            .map(|w| (w, false)));
        let error_rows = u16::from(diagnostic.is_some() && inner.height > 2);
        let text_area = Rect {
            height: inner.height - error_rows,
            ..inner
        };
        self.width = text_area.width;
        let rows = layout(self.buf.text(), text_area.width);
        let crow = cursor_row(&rows, self.buf.cursor());
        let h = usize::from(text_area.height);
        if crow < self.buf.scroll {
            self.buf.scroll = crow;
        } else if crow >= self.buf.scroll + h {
            self.buf.scroll = crow + 1 - h;
        }
        let text = self.buf.text();
        let paint = paint(text, &self.analysis, theme);
        let lines: Vec<Line> = rows
            .iter()
            .skip(self.buf.scroll)
            .take(h)
            .map(|r| styled_row(text, r.clone(), &paint))
            .collect();
        Paragraph::new(lines)
            .style(theme.get("prompt.text"))
            .render(text_area, buf);
        if text.is_empty() && !focused {
            buf.set_string(
                text_area.x,
                text_area.y,
                "(empty)",
                theme.get("ui.text.muted"),
            );
        }
        if let Some((e, is_error)) = diagnostic {
            if error_rows > 0 {
                let col = text[..e.span.start.min(text.len())].chars().count() + 1;
                let mark = if is_error { '✗' } else { '!' };
                let mut msg = format!("{mark} col {col}: {}", e.message);
                if let Some(h) = &e.hint {
                    msg.push_str(" — ");
                    msg.push_str(h);
                }
                let y = inner.y + inner.height - 1;
                let style = if is_error {
                    theme.get("prompt.error.message")
                } else {
                    theme.get("ui.text.muted")
                };
                Paragraph::new(Line::styled(msg, style)).render(
                    Rect {
                        y,
                        height: 1,
                        ..inner
                    },
                    buf,
                );
            }
        }
        let cx = display_width(&text[rows[crow].start..self.buf.cursor()]) as u16;
        let pos = Position::new(
            text_area.x + cx.min(text_area.width.saturating_sub(1)),
            text_area.y + (crow - self.buf.scroll) as u16,
        );
        if focused {
            if let Some(c) = &self.completion {
                render_completion(c, pos, area, buf, theme);
            }
        }
        focused.then_some(pos)
    }
}

/// Style index per byte: 0 plain, then one per token kind, with the error painted last.
fn paint(text: &str, a: &Analysis, theme: &Theme) -> Vec<Style> {
    let base = theme.get("prompt.text");
    let mut styles = vec![base; text.len()];
    for (range, tok) in &a.tokens {
        let key = match tok {
            Token::LoraTag => "prompt.lora",
            Token::LoraName => "prompt.lora.name",
            Token::LoraValue => "prompt.lora.value",
            Token::Emphasis => "prompt.emphasis",
            Token::Weight => "prompt.weight",
            Token::Break => "prompt.break",
            Token::Escape => "prompt.escape",
        };
        let s = theme.get(key);
        for st in &mut styles[range.start.min(text.len())..range.end.min(text.len())] {
            *st = s;
        }
    }
    if let Some(e) = &a.error {
        let s = theme.get("prompt.error");
        let end = e.span.end.min(text.len()).max(e.span.start.min(text.len()));
        for st in &mut styles[e.span.start.min(text.len())..end] {
            *st = st.patch(s);
        }
    }
    styles
}

fn styled_row<'a>(text: &'a str, r: Range<usize>, paint: &[Style]) -> Line<'a> {
    let mut spans = Vec::new();
    let mut start = r.start;
    let mut i = r.start;
    while i < r.end {
        let c_len = text[i..].chars().next().map_or(1, char::len_utf8);
        let next = i + c_len;
        if next >= r.end || paint[next] != paint[start] {
            spans.push(Span::styled(&text[start..next.min(r.end)], paint[start]));
            start = next;
        }
        i = next;
    }
    Line::from(spans)
}

fn render_completion(c: &Completion, at: Position, bounds: Rect, buf: &mut Buffer, theme: &Theme) {
    let name_w = c.items.iter().map(|s| display_width(s)).max().unwrap_or(0);
    let note_w = c.notes.iter().map(|s| display_width(s)).max().unwrap_or(0);
    // Never wider than the pane: the panes drawn after it would cut it.
    let width = ((name_w + if note_w > 0 { note_w + 2 } else { 0 }) as u16 + 2).min(bounds.width);
    let height = c.items.len() as u16;
    let x = at.x.min((bounds.x + bounds.width).saturating_sub(width));
    let below = at.y + 1;
    let y = if below + height <= bounds.y + bounds.height {
        below
    } else {
        at.y.saturating_sub(height)
    };
    let area = Rect::new(x, y, width, height).intersection(*buf.area());
    Clear.render(area, buf);
    for (i, item) in c.items.iter().enumerate().take(usize::from(area.height)) {
        let style = if i == c.selected {
            theme.get("prompt.completion.selected")
        } else {
            theme.get("prompt.completion")
        };
        let note = c.notes.get(i).map_or("", String::as_str);
        let line = if note_w > 0 {
            format!(" {item:<name_w$}  {note:<note_w$} ")
        } else {
            format!(" {item:<w$} ", w = usize::from(width.saturating_sub(2)))
        };
        buf.set_stringn(
            area.x,
            area.y + i as u16,
            line,
            usize::from(area.width),
            style,
        );
    }
}
