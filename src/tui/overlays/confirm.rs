//! A yes/no question before something that loses work (quitting with jobs running).

use super::centered;
use crate::tui::keymap::Action;
use crate::tui::theme::Theme;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget, Wrap};

#[derive(Debug, Clone)]
pub struct Confirm {
    pub question: String,
    /// Run when the answer is yes.
    pub action: Action,
}

impl Confirm {
    pub fn render(&self, area: Rect, buf: &mut Buffer, theme: &Theme) {
        let rect = centered(area, 50, 6);
        Clear.render(rect, buf);
        let block = Block::default()
            .borders(Borders::ALL)
            .border_style(theme.get("ui.popup.border"))
            .style(theme.get("ui.popup"))
            .title(" Confirm ");
        Paragraph::new(format!("{}\n\ny: yes   n/Esc: no", self.question))
            .wrap(Wrap { trim: true })
            .block(block)
            .render(rect, buf);
    }
}
