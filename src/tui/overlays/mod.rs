//! Layers drawn over the screen (help, palette, confirm, error, the model picker, the mask editor). The top one gets keys first;
//! Esc closes it. Each file holds one overlay's state and drawing.

pub mod confirm;
pub mod error;
pub mod help;
pub mod mask;
pub mod models;
pub mod palette;

use ratatui::layout::Rect;

/// One layer of the overlay stack.
#[derive(Debug, Clone)]
pub enum Overlay {
    Help(help::Help),
    Palette(palette::Palette),
    Confirm(confirm::Confirm),
    Error(error::ErrorPopup),
    Models(models::ModelPicker),
    Mask(mask::MaskEditor),
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
