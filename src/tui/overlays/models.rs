//! The model picker (F9): the checkpoints, diffusers folders and stipple folders of the model
//! folders with family, precision, size and whether a fused CUDA UNet exists, filtered by typing.
//! Enter picks one; it loads in the engine with the next job. Unusable files show why.

use super::centered;
use crate::tui::components::wrap_select;
use crate::tui::model_folders::{human_size, ModelEntry, ModelListing};
use crate::tui::theme::Theme;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget, Wrap};
use std::path::PathBuf;

#[derive(Debug, Clone, Default)]
pub struct ModelPicker {
    pub listing: ModelListing,
    pub filter: String,
    /// Index into [`visible`](Self::visible).
    pub selected: usize,
    /// The model in use, marked in the list.
    pub current: PathBuf,
}

impl ModelPicker {
    /// A picker over `listing` with the model in use selected.
    pub fn new(listing: ModelListing, current: PathBuf) -> ModelPicker {
        let mut p = ModelPicker {
            listing,
            current,
            ..ModelPicker::default()
        };
        p.selected = p
            .visible()
            .iter()
            .position(|e| p.is_current(e))
            .unwrap_or(0);
        p
    }

    fn is_current(&self, e: &ModelEntry) -> bool {
        let canon = |p: &PathBuf| p.canonicalize().unwrap_or_else(|_| p.clone());
        canon(&e.path) == canon(&self.current)
    }

    /// Entries whose name, family, kind or precision contain the filter (case-insensitive).
    pub fn visible(&self) -> Vec<&ModelEntry> {
        let f = self.filter.to_lowercase();
        self.listing
            .entries
            .iter()
            .filter(|e| {
                f.is_empty()
                    || [
                        Some(e.name.as_str()),
                        e.family,
                        Some(e.kind),
                        e.dtype.as_deref(),
                    ]
                    .into_iter()
                    .flatten()
                    .any(|s| s.to_lowercase().contains(&f))
            })
            .collect()
    }

    pub fn current_entry(&self) -> Option<&ModelEntry> {
        self.visible().get(self.selected).copied()
    }

    pub fn select(&mut self, delta: isize) {
        self.selected = wrap_select(self.selected, delta, self.visible().len());
    }

    /// Adds `Some(c)` to the filter or takes its last character (`None`); back to the first match.
    pub fn edit_filter(&mut self, c: Option<char>) {
        match c {
            Some(c) => self.filter.push(c),
            None => {
                self.filter.pop();
            }
        }
        self.selected = 0;
    }

    pub fn render(&self, area: Rect, buf: &mut Buffer, theme: &Theme) {
        let rect = centered(area, 96, 22);
        Clear.render(rect, buf);
        let block = Block::default()
            .borders(Borders::ALL)
            .border_style(theme.get("ui.popup.border"))
            .style(theme.get("ui.popup"))
            .title(format!(" Models > {}▏ ", self.filter));
        let inner = block.inner(rect);
        block.render(rect, buf);
        if inner.height < 4 {
            return;
        }
        let list_h = usize::from(inner.height - 3);
        let visible = self.visible();
        let mut lines: Vec<Line> = Vec::new();
        for p in &self.listing.problems {
            lines.push(Line::styled(p.clone(), theme.get("ui.message.error")));
        }
        if visible.is_empty() {
            lines.push(Line::styled(
                "no model here: put checkpoints (.safetensors) in a model folder \
                 (config model_folders, or --models-root)",
                theme.get("ui.text.muted"),
            ));
        }
        let room = list_h.saturating_sub(lines.len());
        let first = (self.selected + 1).saturating_sub(room);
        for (i, e) in visible.iter().enumerate().skip(first).take(room) {
            let mark = if self.is_current(e) { "●" } else { " " };
            let text = format!(
                "{mark} {:<30.30} {:<6} {:<4} {:>8} {:<10} {}",
                e.name,
                e.family.unwrap_or("?"),
                e.dtype.as_deref().unwrap_or(""),
                human_size(e.size),
                e.kind,
                if e.fused_cuda { "fused CUDA" } else { "" },
            );
            let mut style = if e.usable() {
                theme.get("ui")
            } else {
                theme.get("lora.incompatible")
            };
            if i == self.selected {
                style = style.patch(theme.get("ui.selection"));
            }
            lines.push(Line::styled(text, style));
        }
        Paragraph::new(lines).render(
            Rect::new(inner.x, inner.y, inner.width, inner.height - 3),
            buf,
        );
        let detail = match self.current_entry() {
            Some(e) => match &e.problem {
                Some(why) => vec![
                    Span::styled(
                        format!("{}: ", e.path.display()),
                        theme.get("ui.text.muted"),
                    ),
                    Span::styled(why.clone(), theme.get("ui.message.error")),
                ],
                None => vec![
                    Span::styled(e.path.display().to_string(), theme.get("ui.text.muted")),
                    Span::raw("   Enter: use it (loads with the next job)  Esc: close"),
                ],
            },
            None => vec![Span::raw("Esc: close")],
        };
        Paragraph::new(Line::from(detail))
            .wrap(Wrap { trim: true })
            .render(
                Rect::new(inner.x, inner.y + inner.height - 3, inner.width, 3),
                buf,
            );
    }
}
