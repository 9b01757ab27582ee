//! The inpainting mask editor (`m` on a gallery picture): the picture in half-blocks under a grid
//! of mask dots, shapes (rectangles, ellipses) drawn with the keys between two corners, added or
//! subtracted, inverted or cleared, or a mask file loaded as `--mask` reads it ([`MaskEditor::load`]).
//! [`MaskEditor::mask_image`] is the mask at the picture's size; [`MaskEditor::file_as_is`] the
//! loaded file while nothing was drawn over it.

use super::centered;
use crate::image::init::InitError;
use crate::init_image::{FileRef, ResizeMode};
use crate::job::RgbImage;
use crate::tui::theme::Theme;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget, Wrap};

/// Mask dots across the picture; a terminal cell shows two dots stacked (half-blocks).
const DOTS_ACROSS: u32 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Rectangle,
    Ellipse,
}

/// A mask file loaded into the editor: its pixels are the mask wherever no shape was drawn since.
#[derive(Debug, Clone)]
pub struct LoadedMask {
    /// The file, pinned by the sha256 of its contents as `--mask` pins it.
    pub file: FileRef,
    /// Its size in pixels.
    pub size: (u32, u32),
    /// Its grey (255 repaints) at the picture's size.
    grey: Vec<u8>,
    /// Dots a shape changed since: there the dots decide.
    touched: Vec<bool>,
    inverted: bool,
}

#[derive(Debug, Clone)]
pub struct MaskEditor {
    pub image: RgbImage,
    /// Which picture, for titles and messages.
    pub caption: String,
    /// Mask dots across and down.
    pub size: (u32, u32),
    /// Row-major; `true` repaints.
    pub dots: Vec<bool>,
    pub cursor: (u32, u32),
    /// The first corner of the shape being drawn.
    pub anchor: Option<(u32, u32)>,
    pub shape: Shape,
    /// Shapes take away from the mask instead of adding.
    pub subtract: bool,
    /// A mask read from a file (`o`), under what is drawn after.
    pub loaded: Option<LoadedMask>,
}

impl MaskEditor {
    pub fn new(image: RgbImage, caption: String) -> MaskEditor {
        let w = DOTS_ACROSS;
        let h = ((f64::from(image.height) / f64::from(image.width.max(1)) * f64::from(w)).round()
            as u32)
            .clamp(8, 2 * DOTS_ACROSS);
        MaskEditor {
            image,
            caption,
            size: (w, h),
            dots: vec![false; (w * h) as usize],
            cursor: (w / 2, h / 2),
            anchor: None,
            shape: Shape::Rectangle,
            subtract: false,
            loaded: None,
        }
    }

    /// Makes the mask the picture `rgb` read from `file` (white repaints, grey as its luma, as the
    /// loader takes a mask). A mask of another size than the picture is refused with the loader's
    /// error when `same_size` (only masked, outpainting), else fitted over the picture by `mode`
    /// as the loader fits it. What was drawn before is replaced.
    pub fn load(
        &mut self,
        file: FileRef,
        rgb: &RgbImage,
        mode: ResizeMode,
        same_size: bool,
    ) -> Result<(), InitError> {
        let (pw, ph) = (self.image.width, self.image.height);
        let size = (rgb.width, rgb.height);
        if size != (pw, ph) && same_size {
            return Err(InitError::MaskSize {
                path: file.path.clone(),
                mask: size,
                picture: (pw, ph),
            });
        }
        let bad = || InitError::Decode {
            path: file.path.clone(),
            message: "pixel buffer of the wrong size".into(),
        };
        let grey: Vec<u8> = rgb.pixels.chunks_exact(3).map(luma).collect();
        let grey = if size == (pw, ph) {
            grey
        } else {
            let g = image::GrayImage::from_raw(size.0, size.1, grey).ok_or_else(bad)?;
            crate::image::init::fit(&image::DynamicImage::ImageLuma8(g), pw, ph, mode)
                .to_luma8()
                .into_raw()
        };
        if grey.len() != (pw * ph) as usize {
            return Err(bad());
        }
        self.loaded = Some(LoadedMask {
            file,
            size,
            grey,
            touched: vec![false; self.dots.len()],
            inverted: false,
        });
        self.anchor = None;
        let (gw, gh) = self.size;
        for y in 0..gh {
            for x in 0..gw {
                let p = self.pixel_of(x, y);
                self.dots[(y * gw + x) as usize] = self.loaded_value(p).is_some_and(|v| v >= 128);
            }
        }
        Ok(())
    }

    /// The loaded file, while nothing was drawn over it, inverted or cleared: the job takes it as
    /// `--mask FILE` would.
    pub fn file_as_is(&self) -> Option<&FileRef> {
        self.loaded
            .as_ref()
            .filter(|l| !l.inverted && !l.touched.contains(&true))
            .map(|l| &l.file)
    }

    /// The pixel index of the picture under the centre of dot (x, y).
    fn pixel_of(&self, x: u32, y: u32) -> usize {
        let (gw, gh) = self.size;
        let px = ((f64::from(x) + 0.5) / f64::from(gw) * f64::from(self.image.width)) as u32;
        let py = ((f64::from(y) + 0.5) / f64::from(gh) * f64::from(self.image.height)) as u32;
        (py.min(self.image.height - 1) * self.image.width + px.min(self.image.width - 1)) as usize
    }

    /// The loaded mask's grey at pixel `p`, inverted as asked; `None` without one.
    fn loaded_value(&self, p: usize) -> Option<u8> {
        let l = self.loaded.as_ref()?;
        let g = *l.grey.get(p)?;
        Some(if l.inverted { 255 - g } else { g })
    }

    pub fn move_cursor(&mut self, dx: i32, dy: i32) {
        let (w, h) = self.size;
        self.cursor.0 = (self.cursor.0 as i32 + dx).clamp(0, w as i32 - 1) as u32;
        self.cursor.1 = (self.cursor.1 as i32 + dy).clamp(0, h as i32 - 1) as u32;
    }

    /// The first press sets a corner; the second draws the shape between it and the cursor.
    pub fn corner(&mut self) {
        match self.anchor.take() {
            None => self.anchor = Some(self.cursor),
            Some(a) => {
                let value = !self.subtract;
                for y in 0..self.size.1 {
                    for x in 0..self.size.0 {
                        if self.inside(a, self.cursor, x, y) {
                            let i = (y * self.size.0 + x) as usize;
                            self.dots[i] = value;
                            if let Some(l) = &mut self.loaded {
                                l.touched[i] = true;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Whether dot (x, y) lies in the shape spanned by corners `a` and `b` (both included).
    fn inside(&self, a: (u32, u32), b: (u32, u32), x: u32, y: u32) -> bool {
        let (x0, x1) = (a.0.min(b.0), a.0.max(b.0));
        let (y0, y1) = (a.1.min(b.1), a.1.max(b.1));
        if x < x0 || x > x1 || y < y0 || y > y1 {
            return false;
        }
        match self.shape {
            Shape::Rectangle => true,
            Shape::Ellipse => {
                let (cx, cy) = (f64::from(x0 + x1) / 2.0, f64::from(y0 + y1) / 2.0);
                let (rx, ry) = (
                    f64::from(x1 - x0) / 2.0 + 0.5,
                    f64::from(y1 - y0) / 2.0 + 0.5,
                );
                let (dx, dy) = ((f64::from(x) - cx) / rx, (f64::from(y) - cy) / ry);
                dx * dx + dy * dy <= 1.0
            }
        }
    }

    pub fn toggle_shape(&mut self) {
        self.shape = match self.shape {
            Shape::Rectangle => Shape::Ellipse,
            Shape::Ellipse => Shape::Rectangle,
        };
    }

    pub fn invert(&mut self) {
        self.dots.iter_mut().for_each(|d| *d = !*d);
        if let Some(l) = &mut self.loaded {
            l.inverted = !l.inverted;
        }
    }

    /// Clears the dots and drops a loaded mask.
    pub fn clear(&mut self) {
        self.dots.iter_mut().for_each(|d| *d = false);
        self.anchor = None;
        self.loaded = None;
    }

    /// Whether nothing repaints (a loaded mask: no pixel at one half or above).
    pub fn is_empty(&self) -> bool {
        if self.loaded.is_some() {
            return !self.mask_image().pixels.iter().any(|&v| v >= 128);
        }
        !self.dots.contains(&true)
    }

    /// The mask at the picture's size: white where a dot is set (nearest dot), black elsewhere; a
    /// loaded mask's own pixels where no shape was drawn over them.
    pub fn mask_image(&self) -> RgbImage {
        let (w, h) = (self.image.width, self.image.height);
        let (gw, gh) = self.size;
        let mut pixels = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            let gy = (u64::from(y) * u64::from(gh) / u64::from(h.max(1))) as u32;
            for x in 0..w {
                let gx = (u64::from(x) * u64::from(gw) / u64::from(w.max(1))) as u32;
                let dot = (gy * gw + gx) as usize;
                let untouched = self.loaded.as_ref().is_some_and(|l| !l.touched[dot]);
                let v = match self.loaded_value((y * w + x) as usize) {
                    Some(v) if untouched => v,
                    _ if self.dots[dot] => 255,
                    _ => 0,
                };
                pixels.extend_from_slice(&[v, v, v]);
            }
        }
        RgbImage {
            width: w,
            height: h,
            pixels,
        }
    }

    /// The picture's colour at dot (x, y), tinted where the mask repaints or a shape is pending.
    fn colour(&self, x: u32, y: u32) -> Color {
        let gw = self.size.0;
        let i = self.pixel_of(x, y) * 3;
        let p = self.image.pixels.get(i..i + 3).unwrap_or(&[0, 0, 0]);
        let pending = self
            .anchor
            .is_some_and(|a| self.inside(a, self.cursor, x, y));
        let masked = self.dots[(y * gw + x) as usize];
        let (r, g, b) = (p[0], p[1], p[2]);
        if pending {
            Color::Rgb(r / 2 + 127, g / 2 + 127, b / 4)
        } else if masked {
            Color::Rgb(r / 2 + 127, g / 3, b / 3)
        } else {
            Color::Rgb(r, g, b)
        }
    }

    pub fn render(&self, area: Rect, buf: &mut Buffer, theme: &Theme) {
        let (gw, gh) = self.size;
        let rows = gh.div_ceil(2);
        let rect = centered(area, gw as u16 + 2, rows as u16 + 4);
        Clear.render(rect, buf);
        let mode = match (self.shape, self.subtract) {
            (Shape::Rectangle, false) => "add rectangle",
            (Shape::Rectangle, true) => "subtract rectangle",
            (Shape::Ellipse, false) => "add ellipse",
            (Shape::Ellipse, true) => "subtract ellipse",
        };
        let block = Block::default()
            .borders(Borders::ALL)
            .border_style(theme.get("ui.popup.border"))
            .style(theme.get("ui.popup"))
            .title(match &self.loaded {
                Some(l) => {
                    let name = l.file.path.file_name().map_or_else(
                        || l.file.path.display().to_string(),
                        |n| n.to_string_lossy().into_owned(),
                    );
                    let edited = if self.file_as_is().is_some() {
                        ""
                    } else {
                        " (edited)"
                    };
                    format!(" Mask {} · {mode} · {name}{edited} ", self.caption)
                }
                None => format!(" Mask {} · {mode} ", self.caption),
            });
        let inner = block.inner(rect);
        block.render(rect, buf);
        // A terminal smaller than the grid shows it scaled down, its ratio kept; the cursor's dot
        // is shown where it falls.
        let room = (
            u32::from(inner.width),
            2 * u32::from(inner.height.saturating_sub(2)),
        );
        let scale = (f64::from(room.0) / f64::from(gw))
            .min(f64::from(room.1) / f64::from(gh))
            .min(1.0);
        let (dw, dh) = (
            ((f64::from(gw) * scale) as u32).max(1),
            ((f64::from(gh) * scale) as u32).max(1),
        );
        let cursor = (self.cursor.0 * dw / gw, self.cursor.1 * dh / gh);
        let colour = |u: u32, v: u32| {
            if (u, v) == cursor {
                Color::Rgb(255, 255, 255)
            } else {
                self.colour(u * gw / dw, v * gh / dh)
            }
        };
        for row in 0..dh.div_ceil(2) {
            for u in 0..dw {
                let top = colour(u, 2 * row);
                let bottom = if 2 * row + 1 < dh {
                    colour(u, 2 * row + 1)
                } else {
                    Color::Reset
                };
                if let Some(cell) = buf.cell_mut((inner.x + u as u16, inner.y + row as u16)) {
                    cell.set_symbol("▀")
                        .set_style(Style::default().fg(top).bg(bottom));
                }
            }
        }
        let help = if self.anchor.is_some() {
            "move to the other corner, Space draws the shape · Esc drops the corner"
        } else {
            "arrows move (S- ×4) · Space corner · e shape · a/s add/subtract · v invert · c clear · o load a file · Enter use · Esc cancel"
        };
        let y = inner.y + inner.height.saturating_sub(2);
        Paragraph::new(Line::styled(help, theme.get("ui.text.muted")))
            .wrap(Wrap { trim: true })
            .render(Rect::new(inner.x, y, inner.width, 2.min(inner.height)), buf);
    }
}

/// ITU-R 601 luma in PIL's fixed point (`convert("L")`), as the picture loader reads a mask.
fn luma(p: &[u8]) -> u8 {
    let (r, g, b) = (u32::from(p[0]), u32::from(p[1]), u32::from(p[2]));
    ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn editor(w: u32, h: u32) -> MaskEditor {
        MaskEditor::new(
            RgbImage {
                width: w,
                height: h,
                pixels: vec![100; (w * h * 3) as usize],
            },
            "#1.1".into(),
        )
    }

    #[test]
    fn a_rectangle_between_two_corners_becomes_white_pixels_at_the_picture_size() {
        let mut e = editor(128, 64);
        assert_eq!(e.size, (64, 32));
        e.cursor = (0, 0);
        e.corner();
        e.cursor = (31, 31);
        e.corner();
        let m = e.mask_image();
        assert_eq!((m.width, m.height), (128, 64));
        let at = |x: u32, y: u32| m.pixels[((y * 128 + x) * 3) as usize];
        // Dots 0..=31 across of 64 are the left half of the picture, all rows.
        assert_eq!(
            (at(0, 0), at(63, 63), at(64, 0), at(127, 63)),
            (255, 255, 0, 0)
        );
        e.invert();
        let m = e.mask_image();
        assert_eq!(m.pixels[0], 0);
        assert_eq!(m.pixels[(64 * 3) as usize], 255);
    }

    #[test]
    fn a_loaded_mask_inverts_as_its_own_pixels_and_clear_drops_it() {
        let mut e = editor(8, 8);
        // Greys 0, 100, 200 and 255 along each row of an 8×8 picture.
        let grey = [0u8, 100, 200, 255, 0, 0, 0, 0];
        let rgb = RgbImage {
            width: 8,
            height: 8,
            pixels: (0..64).flat_map(|i| [grey[i % 8]; 3]).collect(),
        };
        let file = FileRef {
            path: "m.png".into(),
            sha256: "00".into(),
        };
        e.load(file.clone(), &rgb, ResizeMode::Just, true).unwrap();
        assert_eq!(e.file_as_is(), Some(&file));
        assert_eq!(e.mask_image().pixels, rgb.pixels, "the file's own greys");
        e.invert();
        assert!(e.file_as_is().is_none());
        let inverted: Vec<u8> = rgb.pixels.iter().map(|v| 255 - v).collect();
        assert_eq!(e.mask_image().pixels, inverted);
        e.clear();
        assert!(e.loaded.is_none() && e.is_empty());
        // Another size where the mask must match the picture: the loader's error, nothing loaded.
        let small = RgbImage {
            width: 4,
            height: 4,
            pixels: vec![255; 48],
        };
        let err = e.load(file, &small, ResizeMode::Just, true).unwrap_err();
        assert!(err.to_string().contains("is 4x4, the picture 8x8"), "{err}");
        assert!(e.loaded.is_none());
    }

    #[test]
    fn ellipses_subtract_and_clear() {
        let mut e = editor(64, 64);
        e.invert();
        e.subtract = true;
        e.toggle_shape();
        e.cursor = (16, 16);
        e.corner();
        e.cursor = (47, 47);
        e.corner();
        let dot = |e: &MaskEditor, x: u32, y: u32| e.dots[(y * e.size.0 + x) as usize];
        assert!(!dot(&e, 32, 32), "the centre is taken away");
        assert!(
            dot(&e, 16, 16),
            "an ellipse leaves its bounding box's corners"
        );
        assert!(dot(&e, 0, 0));
        e.clear();
        assert!(e.is_empty());
        e.move_cursor(-1000, 1000);
        assert_eq!(e.cursor, (0, 63));
    }
}
