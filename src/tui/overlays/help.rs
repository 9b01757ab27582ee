//! The `?`/F1 overlay: every binding of the keymap, by context, with its description.
//! Generated from the keymap, so it cannot fall out of date.

use super::centered;
use crate::tui::keymap::{Context, Keymap};
use crate::tui::theme::Theme;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget};

#[derive(Debug, Clone, Default)]
pub struct Help {
    pub scroll: u16,
    /// The furthest scroll that still fills the box, as of the last frame; keys stop there.
    pub max_scroll: std::cell::Cell<u16>,
}

impl Help {
    /// Scrolls by `delta` lines, never past the last line.
    pub fn scroll_by(&mut self, delta: i32) {
        let to = (i32::from(self.scroll) + delta).clamp(0, i32::from(self.max_scroll.get()));
        self.scroll = to as u16;
    }
}

/// The help text, the focused context first.
pub fn lines(keymap: &Keymap, first: Context, theme: &Theme) -> Vec<Line<'static>> {
    let mut order = vec![first];
    order.extend(Context::ALL.iter().copied().filter(|c| *c != first));
    let mut out = Vec::new();
    for ctx in order {
        out.push(Line::styled(
            ctx.title().to_string(),
            theme.get("help.section"),
        ));
        for b in keymap.in_context(ctx) {
            let keys = b
                .keys
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ");
            out.push(Line::from(vec![
                Span::styled(format!("  {keys:<16}"), theme.get("help.key")),
                Span::raw(b.desc),
            ]));
        }
        out.push(Line::raw(""));
    }
    out
}

impl Help {
    pub fn render(
        &self,
        area: Rect,
        buf: &mut Buffer,
        theme: &Theme,
        keymap: &Keymap,
        ctx: Context,
    ) {
        let rect = centered(area, 72, area.height.saturating_sub(2));
        Clear.render(rect, buf);
        let block = Block::default()
            .borders(Borders::ALL)
            .border_style(theme.get("ui.popup.border"))
            .style(theme.get("ui.popup"))
            .title(" Keys — ↑/↓ scroll, Esc closes ");
        let text = lines(keymap, ctx, theme);
        let room = block.inner(rect).height;
        let max = u16::try_from(text.len())
            .unwrap_or(u16::MAX)
            .saturating_sub(room);
        self.max_scroll.set(max);
        Paragraph::new(text)
            .block(block)
            .scroll((self.scroll.min(max), 0))
            .render(rect, buf);
    }
}
