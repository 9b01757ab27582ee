//! The `?`/F1 overlay: every binding of the keymap, by context, with its description.
//! Generated from the keymap, so it cannot fall out of date.

use super::{centered, Scroll};
use crate::tui::keymap::{Context, Keymap};
use crate::tui::theme::Theme;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};

#[derive(Debug, Clone, Default)]
pub struct Help {
    pub scroll: Scroll,
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
        let text = lines(keymap, ctx, theme);
        self.scroll
            .render(rect, buf, theme, " Keys — ↑/↓ scroll, Esc closes ", text);
    }
}
