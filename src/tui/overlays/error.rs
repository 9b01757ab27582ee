//! A failure that needs acknowledging (a job failed, a file could not be read). The queue keeps
//! running underneath; Enter or Esc closes it.

use super::centered;
use crate::tui::theme::Theme;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget, Wrap};

#[derive(Debug, Clone)]
pub struct ErrorPopup {
    pub title: String,
    pub message: String,
}

impl ErrorPopup {
    pub fn render(&self, area: Rect, buf: &mut Buffer, theme: &Theme) {
        let lines = self.message.lines().count() as u16;
        let rect = centered(area, 60, lines + 5);
        Clear.render(rect, buf);
        let block = Block::default()
            .borders(Borders::ALL)
            .border_style(theme.get("ui.message.error"))
            .style(theme.get("ui.popup"))
            .title(format!(" {} ", self.title));
        Paragraph::new(format!("{}\n\nEnter/Esc: close", self.message))
            .wrap(Wrap { trim: true })
            .block(block)
            .render(rect, buf);
    }
}
