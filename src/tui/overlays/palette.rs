//! The command palette (C-p): every action with its description and keys, filtered by typing
//! and ranked (whole words, then word starts, substrings, subsequences); Enter runs the selected
//! one as if its key had been pressed.

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

/// How well `query` matches `text`, best first: a whole word, the start of a word, a substring,
/// then a case-insensitive subsequence (so "subq" finds "submit the prompt to the queue").
fn rank(query: &str, text: &str) -> Option<u8> {
    let q = query.to_lowercase();
    let t = text.to_lowercase();
    let words = || t.split(|c: char| !c.is_alphanumeric());
    if q.is_empty() || words().any(|w| w == q) {
        return Some(0);
    }
    if words().any(|w| w.starts_with(&q)) {
        return Some(1);
    }
    if t.contains(&q) {
        return Some(2);
    }
    let mut chars = t.chars();
    q.chars().all(|c| chars.any(|x| x == c)).then_some(3)
}

impl Palette {
    /// Global actions and those of the focused context.
    pub fn entries(&self, keymap: &Keymap, ctx: Context) -> Vec<Entry> {
        let mut ranked: Vec<(u8, Entry)> = keymap
            .bindings
            .iter()
            .filter(|b| b.ctx == Context::Global || b.ctx == ctx)
            .filter_map(|b| {
                let name = b.action.name().replace('_', " ");
                let r = [rank(&self.query, b.desc), rank(&self.query, &name)]
                    .into_iter()
                    .flatten()
                    .min()?;
                let keys = b
                    .keys
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ");
                Some((r, (b.ctx, b.action, b.desc, keys)))
            })
            .collect();
        // Stable: within a rank, the keymap's order.
        ranked.sort_by_key(|(r, _)| *r);
        ranked.into_iter().map(|(_, e)| e).collect()
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
