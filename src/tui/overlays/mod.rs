//! Layers drawn over the screen (help, palette, confirm, error, the model picker, the mask editor,
//! a file path prompt, the prompt's steps). The top one gets keys first; Esc closes it. Each file holds one overlay's
//! state and drawing; [`Scroll`] is the scrolling text box two of them share.

pub mod confirm;
pub mod error;
pub mod help;
pub mod mask;
pub mod models;
pub mod palette;
pub mod path;
pub mod steps;

use crate::tui::theme::Theme;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget};
use std::cell::Cell;

/// One layer of the overlay stack.
#[derive(Debug, Clone)]
pub enum Overlay {
    Help(help::Help),
    Palette(palette::Palette),
    Confirm(confirm::Confirm),
    Error(error::ErrorPopup),
    Models(models::ModelPicker),
    Mask(mask::MaskEditor),
    Path(path::PathPrompt),
    Steps(steps::PromptSteps),
}

/// A popup of lines that scroll: where it is, and how far it may go.
#[derive(Debug, Clone, Default)]
pub struct Scroll {
    pub at: u16,
    /// The furthest scroll that still fills the box, as of the last frame; keys stop there.
    pub max: Cell<u16>,
}

impl Scroll {
    /// Scrolls by `delta` lines, never past the last line.
    pub fn by(&mut self, delta: i32) {
        let to = (i32::from(self.at) + delta).clamp(0, i32::from(self.max.get()));
        self.at = to as u16;
    }

    /// Draws `text` in a bordered popup at `rect`, scrolled, and remembers how far it may scroll.
    pub fn render(
        &self,
        rect: Rect,
        buf: &mut Buffer,
        theme: &Theme,
        title: &str,
        text: Vec<Line<'_>>,
    ) {
        Clear.render(rect, buf);
        let block = Block::default()
            .borders(Borders::ALL)
            .border_style(theme.get("ui.popup.border"))
            .style(theme.get("ui.popup"))
            .title(title.to_string());
        let room = block.inner(rect).height;
        let max = u16::try_from(text.len())
            .unwrap_or(u16::MAX)
            .saturating_sub(room);
        self.max.set(max);
        Paragraph::new(text)
            .block(block)
            .scroll((self.at.min(max), 0))
            .render(rect, buf);
    }
}

/// A centred rectangle of at most `w`×`h` inside `area`.
pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}
