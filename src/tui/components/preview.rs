//! The picture pane: the latest image (or live preview) fitted to the pane with its ratio kept
//! (small pictures scaled up), drawn in the protocol [`Graphics`] chose (kitty, sixel, iTerm2,
//! halfblocks); text when images are off. Encoding happens once per new image or pane size.

use crate::job::RgbImage;
use crate::tui::graphics::Graphics;
use crate::tui::theme::Theme;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::text::Span;
use ratatui::widgets::{Block, Borders, Paragraph, StatefulWidget, Widget, Wrap};
use ratatui_image::protocol::StatefulProtocol;
use ratatui_image::{FilterType, Resize, StatefulImage};

#[derive(Default)]
pub struct Preview {
    /// What is shown and why (e.g. "#3 image 1/2, seed 42").
    pub caption: String,
    image: Option<RgbImage>,
    /// Built lazily at draw time from `image`; dropped when the image changes.
    protocol: Option<StatefulProtocol>,
}

impl std::fmt::Debug for Preview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preview")
            .field("caption", &self.caption)
            .field("image", &self.image)
            .finish()
    }
}

impl Preview {
    pub fn show(&mut self, image: RgbImage, caption: String) {
        self.image = Some(image);
        self.caption = caption;
        self.protocol = None;
    }

    pub fn image(&self) -> Option<&RgbImage> {
        self.image.as_ref()
    }

    /// `covered`: a popup overlaps the pane. Graphics protocols draw over text, so the picture
    /// steps aside until the popup closes.
    pub fn render(
        &mut self,
        area: Rect,
        buf: &mut Buffer,
        theme: &Theme,
        picker: Option<&Graphics>,
        covered: bool,
    ) {
        let title = if self.caption.is_empty() {
            " Preview ".to_string()
        } else {
            format!(" {} ", self.caption)
        };
        let block = Block::default()
            .borders(Borders::ALL)
            .border_style(theme.get("ui.border"))
            .title(Span::styled(title, theme.get("ui.title")));
        let inner = block.inner(area);
        block.render(area, buf);
        let Some(img) = &self.image else {
            Paragraph::new("no image yet")
                .style(theme.get("ui.text.muted"))
                .render(inner, buf);
            return;
        };
        if covered {
            Paragraph::new("(picture hidden under the popup)")
                .style(theme.get("ui.text.muted"))
                .render(inner, buf);
            return;
        }
        let Some(picker) = picker else {
            let text = format!(
                "{}×{} image (pictures are off: image.protocol = \"off\")",
                img.width, img.height
            );
            Paragraph::new(text)
                .wrap(Wrap { trim: true })
                .style(theme.get("ui.text.muted"))
                .render(inner, buf);
            return;
        };
        let fitted = picker.fit((img.width, img.height), inner);
        if self.protocol.is_none() {
            if let Some(dynimg) = to_dynamic(img) {
                self.protocol = Some(picker.protocol(dynimg));
            }
        }
        if let Some(p) = self.protocol.as_mut() {
            StatefulImage::default()
                .resize(Resize::Scale(Some(FilterType::Triangle)))
                .render(fitted, buf, p);
        }
    }
}

fn to_dynamic(img: &RgbImage) -> Option<image::DynamicImage> {
    image::RgbImage::from_raw(img.width, img.height, img.pixels.clone())
        .map(image::DynamicImage::ImageRgb8)
}
