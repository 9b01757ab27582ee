//! This session's outputs, newest last, each with its job and infotext, so an image can be shown
//! again or its prompt and settings sent back to the editor.

use crate::job::{Job, JobId, RgbImage};
use crate::tui::theme::Theme;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Widget, Wrap};

#[derive(Debug, Clone)]
pub struct GalleryItem {
    pub job_id: JobId,
    pub index: u32,
    pub seed: u64,
    pub image: RgbImage,
    pub infotext: String,
    pub job: Job,
}

#[derive(Debug, Clone, Default)]
pub struct Gallery {
    pub items: Vec<GalleryItem>,
    pub selected: usize,
}

impl Gallery {
    pub fn push(&mut self, item: GalleryItem) {
        self.items.push(item);
        self.selected = self.items.len() - 1;
    }

    pub fn selected(&self) -> Option<&GalleryItem> {
        self.items.get(self.selected)
    }

    pub fn select(&mut self, delta: isize) {
        if !self.items.is_empty() {
            let n = self.items.len() as isize;
            self.selected = (self.selected as isize + delta).clamp(0, n - 1) as usize;
        }
    }

    pub fn render(&self, area: Rect, buf: &mut Buffer, theme: &Theme, focused: bool) {
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
            .title(Span::styled(
                format!(" Gallery ({}) ", self.items.len()),
                title,
            ));
        let inner = block.inner(area);
        block.render(area, buf);
        if self.items.is_empty() {
            Paragraph::new("images of this session appear here")
                .style(theme.get("ui.text.muted"))
                .wrap(Wrap { trim: true })
                .render(inner, buf);
            return;
        }
        let list_h = usize::from(inner.height).min(self.items.len()).clamp(1, 3);
        let first = (self.selected + 1).saturating_sub(list_h);
        let mut lines: Vec<Line> = self
            .items
            .iter()
            .enumerate()
            .skip(first)
            .take(list_h)
            .map(|(i, it)| {
                let l = Line::raw(format!(
                    "#{}.{} seed {} {}×{}",
                    it.job_id,
                    it.index + 1,
                    it.seed,
                    it.image.width,
                    it.image.height
                ));
                if i == self.selected {
                    l.style(theme.get("ui.selection"))
                } else {
                    l
                }
            })
            .collect();
        if let Some(it) = self.selected() {
            lines.push(Line::styled(
                it.infotext.replace('\n', " ¶ "),
                theme.get("ui.text.muted"),
            ));
        }
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .render(inner, buf);
    }
}
