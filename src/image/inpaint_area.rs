//! "Only masked" inpainting (A1111's inpaint area, diffusers' `padding_mask_crop`): [`crop_region`]
//! finds the part of the picture to redraw, [`fill_resize`] brings it to the job's size and
//! [`PasteBack`] puts the redrawn part back over the picture, blended by the mask.

use super::resample::lanczos;
use crate::job::RgbImage;

/// A rectangle of the picture, `x1..x2` × `y1..y2` in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x1: u32,
    pub y1: u32,
    pub x2: u32,
    pub y2: u32,
}

impl Region {
    pub fn width(&self) -> u32 {
        self.x2 - self.x1
    }
    pub fn height(&self) -> u32 {
        self.y2 - self.y1
    }
}

/// The bounding box of the mask's non-zero pixels (`mask` is `width`×`height`, one byte a pixel)
/// grown by `pad` on every side, then widened in the short direction to the aspect of the job's
/// `job_w`×`job_h` and shifted back inside the picture, as diffusers' `get_crop_region` does.
/// `None` when the mask is empty.
pub fn crop_region(
    mask: &[u8],
    (width, height): (u32, u32),
    pad: u32,
    (job_w, job_h): (u32, u32),
) -> Option<Region> {
    let (w, h) = (width as usize, height as usize);
    let set = |x: usize, y: usize| mask[y * w + x] != 0;
    let cols: Vec<usize> = (0..w).filter(|&x| (0..h).any(|y| set(x, y))).collect();
    let rows: Vec<usize> = (0..h).filter(|&y| (0..w).any(|x| set(x, y))).collect();
    let (&left, &right) = (cols.first()?, cols.last()?);
    let (&top, &bottom) = (rows.first()?, rows.last()?);
    let pad = i64::from(pad);
    let (wi, hi) = (i64::from(width), i64::from(height));
    let mut x1 = (left as i64 - pad).max(0);
    let mut y1 = (top as i64 - pad).max(0);
    let mut x2 = (right as i64 + 1 + pad).min(wi);
    let mut y2 = (bottom as i64 + 1 + pad).min(hi);
    let crop_ratio = (x2 - x1) as f64 / (y2 - y1) as f64;
    let job_ratio = f64::from(job_w) / f64::from(job_h);
    // Widen one direction, centred; past an edge the box moves back in (and is cut at the size).
    let widen = |a: &mut i64, b: &mut i64, want: f64, limit: i64| {
        let diff = (want - (*b - *a) as f64) as i64;
        *a -= diff.div_euclid(2);
        *b += diff - diff.div_euclid(2);
        if *b >= limit {
            let over = *b - limit;
            *b -= over;
            *a -= over;
        }
        if *a < 0 {
            *b -= *a;
            *a = 0;
        }
        *b = (*b).min(limit);
    };
    if crop_ratio > job_ratio {
        widen(&mut y1, &mut y2, (x2 - x1) as f64 / job_ratio, hi);
    } else {
        widen(&mut x1, &mut x2, (y2 - y1) as f64 * job_ratio, wi);
    }
    Some(Region {
        x1: x1 as u32,
        y1: y1 as u32,
        x2: x2 as u32,
        y2: y2 as u32,
    })
}

/// The pixels of `img` inside `r`.
pub fn crop(img: &RgbImage, r: Region) -> RgbImage {
    let w = img.width as usize;
    let mut pixels = Vec::with_capacity((r.width() * r.height() * 3) as usize);
    for y in r.y1..r.y2 {
        let row = y as usize * w;
        pixels.extend_from_slice(&img.pixels[(row + r.x1 as usize) * 3..(row + r.x2 as usize) * 3]);
    }
    RgbImage {
        width: r.width(),
        height: r.height(),
        pixels,
    }
}

/// `img` scaled (Pillow's Lanczos) to fit inside `width`×`height` and centred, the empty bands
/// repeating its edge rows or columns (diffusers' "fill" resize; a plain resize when the aspects
/// agree).
pub fn fill_resize(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (sw, sh) = (u64::from(img.width), u64::from(img.height));
    let (w, h) = (u64::from(width), u64::from(height));
    // width/height < sw/sh: the picture is wider, full width.
    let wider = w * sh < sw * h;
    let (rw, rh) = if wider {
        (w, (sh * w / sw).max(1))
    } else {
        ((sw * h / sh).max(1), h)
    };
    place(&lanczos(img, rw as u32, rh as u32), width, height, true)
}

/// `img` scaled (Pillow's Lanczos) to cover `width`×`height`, the overflow cut off equally on both
/// sides (diffusers' "crop" resize, the inverse of [`fill_resize`]).
pub fn crop_resize(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (sw, sh) = (u64::from(img.width), u64::from(img.height));
    let (w, h) = (u64::from(width), u64::from(height));
    let wider_target = w * sh > sw * h;
    let (rw, rh) = if wider_target {
        (w, (sh * w / sw).max(1))
    } else {
        ((sw * h / sh).max(1), h)
    };
    place(&lanczos(img, rw as u32, rh as u32), width, height, false)
}

/// `img` centred on a `width`×`height` canvas (integer offsets as Pillow's paste); outside it the
/// nearest edge pixel when `extend`, else black.
fn place(img: &RgbImage, width: u32, height: u32, extend: bool) -> RgbImage {
    let (iw, ih) = (i64::from(img.width), i64::from(img.height));
    let (ox, oy) = (
        i64::from(width) / 2 - iw / 2,
        i64::from(height) / 2 - ih / 2,
    );
    let mut pixels = vec![0u8; (width * height * 3) as usize];
    for y in 0..i64::from(height) {
        for x in 0..i64::from(width) {
            let (sx, sy) = (x - ox, y - oy);
            let inside = (0..iw).contains(&sx) && (0..ih).contains(&sy);
            if !inside && !extend {
                continue;
            }
            let (sx, sy) = (sx.clamp(0, iw - 1), sy.clamp(0, ih - 1));
            let s = ((sy * iw + sx) * 3) as usize;
            let d = ((y * i64::from(width) + x) * 3) as usize;
            pixels[d..d + 3].copy_from_slice(&img.pixels[s..s + 3]);
        }
    }
    RgbImage {
        width,
        height,
        pixels,
    }
}

/// A grey plane as an RGB picture (the three channels equal), for the RGB resamplers.
pub fn grey_to_rgb(grey: &[u8], width: u32, height: u32) -> RgbImage {
    RgbImage {
        width,
        height,
        pixels: grey.iter().flat_map(|&g| [g, g, g]).collect(),
    }
}

/// What "only masked" needs after decoding: the picture at its own size, the mask (0..255, after
/// the blur) and the region that was redrawn.
#[derive(Debug, Clone)]
pub struct PasteBack {
    pub original: RgbImage,
    pub mask: Vec<u8>,
    pub region: Region,
}

impl PasteBack {
    /// The picture with the redrawn `image` (at the job's size) scaled back onto the region and
    /// mixed in by the mask: where the mask is 0 the picture is unchanged, where 255 it is the
    /// redrawn image (diffusers' `apply_overlay`).
    pub fn apply(&self, image: &RgbImage) -> RgbImage {
        let r = self.region;
        let redrawn = crop_resize(image, r.width(), r.height());
        let mut out = self.original.clone();
        let w = out.width as usize;
        for y in r.y1..r.y2 {
            for x in r.x1..r.x2 {
                let i = y as usize * w + x as usize;
                let m = u32::from(self.mask[i]);
                if m == 0 {
                    continue;
                }
                let j = ((y - r.y1) * r.width() + (x - r.x1)) as usize;
                for c in 0..3 {
                    let (a, b) = (
                        u32::from(redrawn.pixels[j * 3 + c]),
                        u32::from(out.pixels[i * 3 + c]),
                    );
                    out.pixels[i * 3 + c] = ((a * m + b * (255 - m) + 127) / 255) as u8;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_with(width: u32, height: u32, rect: (u32, u32, u32, u32)) -> Vec<u8> {
        let mut m = vec![0u8; (width * height) as usize];
        for y in rect.1..rect.3 {
            for x in rect.0..rect.2 {
                m[(y * width + x) as usize] = 255;
            }
        }
        m
    }

    #[test]
    fn region_is_the_padded_box_widened_to_the_jobs_aspect() {
        // Box 30..58 × 8..24 (28×16), padding 4: 26..62 × 4..28 (36×24); a square job widens the
        // height to 36, centred (6 above, 6 below), then moved down inside the picture.
        let m = mask_with(64, 64, (30, 8, 58, 24));
        let r = crop_region(&m, (64, 64), 4, (64, 64)).unwrap();
        assert_eq!(
            r,
            Region {
                x1: 26,
                y1: 0,
                x2: 62,
                y2: 36
            }
        );
        assert_eq!((r.width(), r.height()), (36, 36));
        // A wide job on the same mask: the width grows instead (24 × 2 = 48), pushed back inside.
        let r = crop_region(&m, (64, 64), 4, (128, 64)).unwrap();
        assert_eq!((r.width(), r.height()), (48, 24));
        assert_eq!(r.x2, 64);
        // Padding past the picture is cut at its edges; an empty mask has no region.
        let r = crop_region(&m, (64, 64), 100, (64, 64)).unwrap();
        assert_eq!(
            r,
            Region {
                x1: 0,
                y1: 0,
                x2: 64,
                y2: 64
            }
        );
        assert_eq!(crop_region(&[0; 16], (4, 4), 2, (8, 8)), None);
    }

    #[test]
    fn paste_back_changes_only_the_masked_pixels() {
        let original = RgbImage {
            width: 8,
            height: 8,
            pixels: (0..192).map(|i| i as u8).collect(),
        };
        let mask = mask_with(8, 8, (2, 2, 4, 4));
        let region = crop_region(&mask, (8, 8), 1, (16, 16)).unwrap();
        let redrawn = RgbImage {
            width: 16,
            height: 16,
            pixels: vec![255; 16 * 16 * 3],
        };
        let p = PasteBack {
            original: original.clone(),
            mask: mask.clone(),
            region,
        };
        let out = p.apply(&redrawn);
        for (i, m) in mask.iter().enumerate() {
            let (a, b) = (
                &out.pixels[i * 3..i * 3 + 3],
                &original.pixels[i * 3..i * 3 + 3],
            );
            if *m == 0 {
                assert_eq!(a, b, "pixel {i}");
            } else {
                assert_eq!(a, [255, 255, 255], "pixel {i}");
            }
        }
    }

    #[test]
    fn fill_and_crop_resize_invert_each_other_on_the_aspect() {
        let img = RgbImage {
            width: 4,
            height: 2,
            pixels: (0..24).map(|i| (i * 10) as u8).collect(),
        };
        // 4×2 into 8×8: scaled to 8×4 at rows 2..6, the bands repeat the edge rows.
        let f = fill_resize(&img, 8, 8);
        assert_eq!(f.pixels[0..24], f.pixels[2 * 24..3 * 24]);
        assert_eq!(f.pixels[7 * 24..8 * 24], f.pixels[5 * 24..6 * 24]);
        // And back: the bands are cut off again.
        let back = crop_resize(&f, 4, 2);
        assert_eq!((back.width, back.height), (4, 2));
        let scaled = lanczos(&img, 8, 4);
        assert_eq!(crop_resize(&scaled, 8, 4).pixels, scaled.pixels);
    }
}
