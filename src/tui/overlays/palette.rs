//! The command palette (C-p): every action with its description and keys, filtered by typing;
//! Enter runs the selected one as if its key had been pressed.

use super::centered;
use crate::tui::keymap::{Action, Context, Keymap};
use crate::tui::theme::Theme;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget};

#[derive(Debug, Clone, Default)]
pub struct Palette {
    pub query: String,
    pub selected: usize,
}

/// An entry: where the action applies, the action, its description and keys.
pub type Entry = (Context, Action, &'static str, String);

/// Case-insensitive subsequence match, so "subq" finds "submit the prompt to the queue".
fn matches(query: &str, text: &str) -> bool {
    let mut chars = text.chars().flat_map(char::to_lowercase);
    query
        .chars()
        .flat_map(char::to_lowercase)
        .all(|q| chars.any(|c| c == q))
}

impl Palette {
    /// Global actions and those of the focused context.
    pub fn entries(&self, keymap: &Keymap, ctx: Context) -> Vec<Entry> {
        keymap
            .bindings
            .iter()
            .filter(|b| b.ctx == Context::Global || b.ctx == ctx)
            .filter(|b| matches(&self.query, b.desc) || matches(&self.query, b.action.name()))
            .map(|b| {
                let keys = b
                    .keys
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ");
                (b.ctx, b.action, b.desc, keys)
            })
            .collect()
    }

    pub fn render(
        &self,
        area: Rect,
        buf: &mut Buffer,
        theme: &Theme,
        keymap: &Keymap,
        ctx: Context,
    ) {
        let entries = self.entries(keymap, ctx);
        let rect = centered(area, 64, 16);
        Clear.render(rect, buf);
        let block = Block::default()
            .borders(Borders::ALL)
            .border_style(theme.get("ui.popup.border"))
            .style(theme.get("ui.popup"))
            .title(format!(" > {}▏ ", self.query));
        let inner = block.inner(rect);
        block.render(rect, buf);
        let h = usize::from(inner.height);
        let first = (self.selected + 1).saturating_sub(h);
        let lines: Vec<Line> = entries
            .iter()
            .enumerate()
            .skip(first)
            .take(h)
            .map(|(i, (_, _, desc, keys))| {
                let l = Line::from(vec![
                    Span::raw(format!("{desc:<44}")),
                    Span::styled(keys.clone(), theme.get("help.key")),
                ]);
                if i == self.selected {
                    l.style(theme.get("ui.selection"))
                } else {
                    l
                }
            })
            .collect();
        Paragraph::new(lines).render(inner, buf);
    }
}
