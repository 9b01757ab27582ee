//! The pictures of an image-to-image or inpainting job ([`InitImage`]): [`read_picture`] (PNG, JPEG,
//! WebP; the header's size is checked before anything is decoded), [`pin`] (an [`InitImage`] naming
//! them by path and sha256) and [`load`] (resized to the job's size, the mask blurred and made
//! binary as diffusers' mask processor does).

use super::blur::gaussian_blur;
use super::inpaint_area::{crop, crop_region, fill_resize, grey_to_rgb, PasteBack};
use crate::init_image::{
    check_denoise, DenoiseError, FileRef, InitImage, InpaintArea, MaskedContent, Outpaint,
    ResizeMode,
};
use crate::job::RgbImage;
use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, ImageReader, Limits};
use sha2::{Digest, Sha256};
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// Largest width or height read (a bigger header is refused before decoding).
pub const MAX_SIDE: u32 = 16384;
/// Largest pixel count read: 64 megapixels (~200 MB as RGB).
pub const MAX_PIXELS: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a PNG, JPEG or WebP image")]
    Format { path: PathBuf },
    #[error("{path}: {width}x{height} is larger than stipple reads (at most {MAX_SIDE} pixels a side and {} megapixels)", MAX_PIXELS >> 20)]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    #[error("{path}: cannot decode the image: {message}")]
    Decode { path: PathBuf, message: String },
    #[error("{path} changed since the job was made (sha256 {found}, the job has {expected})")]
    Changed {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error("mask {path} is {}x{}, the picture {}x{}: with --inpaint-area masked or --outpaint they must be the same size", mask.0, mask.1, picture.0, picture.1)]
    MaskSize {
        path: PathBuf,
        mask: (u32, u32),
        picture: (u32, u32),
    },
    #[error(
        "{path}: --inpaint-area masked needs a mask (--mask, or transparent pixels in the picture)"
    )]
    NoMask { path: PathBuf },
    #[error("{path}: the mask is empty (all black): --inpaint-area masked has nothing to redraw")]
    EmptyMask { path: PathBuf },
    #[error(transparent)]
    Denoise(#[from] DenoiseError),
}

/// A decoded picture: RGB, the alpha channel if it has one, and the sha256 of the file.
#[derive(Debug)]
pub struct Picture {
    pub rgb: RgbImage,
    pub alpha: Option<Vec<u8>>,
    pub sha256: String,
}

/// The picture and the mask at the job's size.
pub struct Loaded {
    pub rgb: RgbImage,
    /// Per pixel 1 (repaint) or 0 (keep); `None` for plain image-to-image.
    pub mask: Option<Vec<f32>>,
    /// "Only masked": how the redrawn image goes back over the picture.
    pub paste: Option<PasteBack>,
}

/// Reads a PNG (any bit depth, palette), JPEG or WebP file. The size in the header is checked
/// against [`MAX_SIDE`] and [`MAX_PIXELS`] before decoding.
pub fn read_picture(path: &Path) -> Result<Picture, InitError> {
    let bytes = std::fs::read(path).map_err(|source| InitError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let sha256 = hex(&Sha256::digest(&bytes));
    let decode_err = |e: image::ImageError| InitError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let reader = || {
        ImageReader::new(Cursor::new(&bytes))
            .with_guessed_format()
            .map_err(|source| InitError::Read {
                path: path.to_path_buf(),
                source,
            })
    };
    let first = reader()?;
    if first.format().is_none() {
        return Err(InitError::Format {
            path: path.to_path_buf(),
        });
    }
    let (width, height) = first.into_dimensions().map_err(decode_err)?;
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(InitError::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
        });
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    let mut second = reader()?;
    second.limits(limits);
    let img = second.decode().map_err(decode_err)?;
    let alpha = img.color().has_alpha().then(|| {
        let rgba = img.to_rgba8();
        rgba.pixels().map(|p| p.0[3]).collect()
    });
    let rgb = img.to_rgb8();
    Ok(Picture {
        rgb: RgbImage {
            width: rgb.width(),
            height: rgb.height(),
            pixels: rgb.into_raw(),
        },
        alpha,
        sha256,
    })
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the picture (and mask) from `path` and pins them by hash, with the default resize mode and
/// step count.
pub fn pin(path: &Path, denoise: f64, mask: Option<&Path>) -> Result<InitImage, InitError> {
    let denoise = check_denoise(denoise)?;
    let pin = |p: &Path| -> Result<FileRef, InitError> {
        Ok(FileRef {
            path: p.to_path_buf(),
            sha256: read_picture(p)?.sha256,
        })
    };
    let mut init = InitImage::new(pin(path)?, denoise);
    init.mask = mask.map(pin).transpose()?;
    Ok(init)
}

/// The picture and mask of `init` at `width`×`height`, checked against the hashes the job holds.
/// Outpainting first widens the canvas (the new border repaints); "only masked" then takes the
/// mask's padded region instead of the whole picture; masked content "fill" paints the hole over.
pub fn load(init: &InitImage, width: u32, height: u32) -> Result<Loaded, InitError> {
    let pic = read_pinned(&init.image)?;
    let mask = match &init.mask {
        Some(m) => {
            let mp = read_pinned(m)?;
            let gray: Vec<u8> = mp.rgb.pixels.chunks(3).map(luma).collect();
            Some((gray, mp.rgb.width, mp.rgb.height, m.path.clone()))
        }
        // Transparent pixels are the hole to fill.
        None => pic
            .alpha
            .as_ref()
            .filter(|a| a.iter().any(|&v| v < 255))
            .map(|a| {
                let gray = a.iter().map(|v| 255 - v).collect();
                (gray, pic.rgb.width, pic.rgb.height, init.image.path.clone())
            }),
    };
    let placed = init.inpaint_area == InpaintArea::Masked || !init.outpaint.is_empty();
    if let (true, Some((_, mw, mh, path))) = (placed, &mask) {
        if (*mw, *mh) != (pic.rgb.width, pic.rgb.height) {
            return Err(InitError::MaskSize {
                path: path.clone(),
                mask: (*mw, *mh),
                picture: (pic.rgb.width, pic.rgb.height),
            });
        }
    }
    let mut mask = mask.map(|(gray, w, h, _)| Plane { gray, w, h });
    let mut rgb = pic.rgb;
    if !init.outpaint.is_empty() {
        (rgb, mask) = outpaint(&rgb, mask.as_ref(), init.outpaint);
    }
    let mut loaded = match init.inpaint_area {
        InpaintArea::Masked => only_masked(init, rgb, mask, (width, height))?,
        InpaintArea::Whole => whole(init, rgb, mask, (width, height))?,
    };
    if let (MaskedContent::Fill, Some(m)) = (init.masked_content, &loaded.mask) {
        loaded.rgb = super::fill::fill(&loaded.rgb, m);
    }
    Ok(loaded)
}

/// A grey picture (a mask), one byte a pixel.
struct Plane {
    gray: Vec<u8>,
    w: u32,
    h: u32,
}

/// The whole picture fitted to the job's size by the resize mode, the mask likewise.
fn whole(
    init: &InitImage,
    rgb: RgbImage,
    mask: Option<Plane>,
    (width, height): (u32, u32),
) -> Result<Loaded, InitError> {
    let bad_buffer = || InitError::Decode {
        path: init.image.path.clone(),
        message: "pixel buffer of the wrong size".into(),
    };
    let rgb =
        image::RgbImage::from_raw(rgb.width, rgb.height, rgb.pixels).ok_or_else(bad_buffer)?;
    let rgb = fit(
        &DynamicImage::ImageRgb8(rgb),
        width,
        height,
        init.resize_mode,
    )
    .to_rgb8();
    // A mask of another size than the picture is fitted the same way (a documented choice).
    let mask = match mask {
        Some(m) => {
            let g = GrayImage::from_raw(m.w, m.h, m.gray).ok_or_else(bad_buffer)?;
            let fitted = fit(
                &DynamicImage::ImageLuma8(g),
                width,
                height,
                init.resize_mode,
            );
            binary_mask(Some(fitted.to_luma8()), init.mask_blur)
        }
        None => None,
    };
    Ok(Loaded {
        rgb: RgbImage {
            width: rgb.width(),
            height: rgb.height(),
            pixels: rgb.into_raw(),
        },
        mask,
        paste: None,
    })
}

/// "Only masked": the mask (blurred) decides the region; the region of the picture and of the mask
/// are brought to the job's size, the mask made binary there; the picture and the blurred mask at
/// full size are kept for pasting back.
fn only_masked(
    init: &InitImage,
    rgb: RgbImage,
    mask: Option<Plane>,
    (width, height): (u32, u32),
) -> Result<Loaded, InitError> {
    let path = init.image.path.clone();
    let mask = mask.ok_or_else(|| InitError::NoMask { path: path.clone() })?;
    let soft = if init.mask_blur > 0 {
        gaussian_blur(
            &mask.gray,
            mask.w as usize,
            mask.h as usize,
            init.mask_blur as f32,
        )
    } else {
        mask.gray
    };
    let region = crop_region(
        &soft,
        (mask.w, mask.h),
        init.inpaint_padding,
        (width, height),
    )
    .ok_or(InitError::EmptyMask { path })?;
    let picture = fill_resize(&crop(&rgb, region), width, height);
    let grey = grey_to_rgb(&soft, mask.w, mask.h);
    let small = fill_resize(&crop(&grey, region), width, height);
    let small: Vec<u8> = small.pixels.chunks_exact(3).map(|p| p[0]).collect();
    let binary = GrayImage::from_raw(width, height, small);
    Ok(Loaded {
        rgb: picture,
        mask: binary_mask(binary, 0),
        paste: Some(PasteBack {
            original: rgb,
            mask: soft,
            region,
        }),
    })
}

/// The picture on a canvas grown by `by` on each side, the new border holding the nearest edge
/// pixels; the mask grown alike, the border white (repaint). Without a mask only the border
/// repaints.
fn outpaint(img: &RgbImage, mask: Option<&Plane>, by: Outpaint) -> (RgbImage, Option<Plane>) {
    let (w, h) = (img.width + by.left + by.right, img.height + by.up + by.down);
    let inside = |x: u32, y: u32| {
        (by.left..by.left + img.width).contains(&x) && (by.up..by.up + img.height).contains(&y)
    };
    let mut pixels = Vec::with_capacity((w * h * 3) as usize);
    let mut gray = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            let sx = x.saturating_sub(by.left).min(img.width - 1);
            let sy = y.saturating_sub(by.up).min(img.height - 1);
            let s = (sy * img.width + sx) as usize;
            pixels.extend_from_slice(&img.pixels[s * 3..s * 3 + 3]);
            gray.push(match (inside(x, y), mask) {
                (false, _) => 255,
                (true, Some(m)) => m.gray[s],
                (true, None) => 0,
            });
        }
    }
    (
        RgbImage {
            width: w,
            height: h,
            pixels,
        },
        Some(Plane { gray, w, h }),
    )
}

fn read_pinned(f: &FileRef) -> Result<Picture, InitError> {
    let pic = read_picture(&f.path)?;
    if pic.sha256 != f.sha256 {
        return Err(InitError::Changed {
            path: f.path.clone(),
            expected: f.sha256.clone(),
            found: pic.sha256,
        });
    }
    Ok(pic)
}

/// ITU-R 601 luma in PIL's fixed point (`convert("L")`).
fn luma(p: &[u8]) -> u8 {
    let (r, g, b) = (u32::from(p[0]), u32::from(p[1]), u32::from(p[2]));
    ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
}

/// diffusers' mask processing: blurred as PIL's GaussianBlur(σ = `blur`) (what A1111 and
/// `mask_processor.blur` do before), scaled to [0, 1], then 0 below 0.5 and 1 from it.
fn binary_mask(mask: Option<GrayImage>, blur: u32) -> Option<Vec<f32>> {
    let mask = mask?;
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    let mask = if blur > 0 {
        gaussian_blur(mask.as_raw(), w, h, blur as f32)
    } else {
        mask.into_raw()
    };
    Some(
        mask.iter()
            .map(|&p| if f32::from(p) / 255.0 < 0.5 { 0.0 } else { 1.0 })
            .collect(),
    )
}

/// `img` at `width`×`height` by `mode`, with Lanczos (3 lobes) resampling; unchanged when the size
/// already matches. Crop and fill place the scaled picture as A1111 does (integer sizes, centred).
pub fn fit(img: &DynamicImage, width: u32, height: u32, mode: ResizeMode) -> DynamicImage {
    let (sw, sh) = (img.width().max(1), img.height().max(1));
    if (sw, sh) == (width, height) {
        return img.clone();
    }
    let resize = |w: u32, h: u32| img.resize_exact(w.max(1), h.max(1), FilterType::Lanczos3);
    // ratio comparisons in integers: width/height > sw/sh  <=>  width·sh > sw·height.
    let wider = u64::from(width) * u64::from(sh) > u64::from(sw) * u64::from(height);
    let scaled_w = |h: u32| (u64::from(sw) * u64::from(h) / u64::from(sh)) as u32;
    let scaled_h = |w: u32| (u64::from(sh) * u64::from(w) / u64::from(sw)) as u32;
    let (rw, rh) = match mode {
        ResizeMode::Just => return resize(width, height),
        ResizeMode::Crop if wider => (width, scaled_h(width)),
        ResizeMode::Crop => (scaled_w(height), height),
        ResizeMode::Fill if wider => (scaled_w(height), height),
        ResizeMode::Fill => (width, scaled_h(width)),
    };
    let scaled = resize(rw, rh);
    let (rw, rh) = (scaled.width() as i64, scaled.height() as i64);
    // Top-left of the scaled picture on the canvas (negative when it overflows: crop).
    let (ox, oy) = (
        i64::from(width) / 2 - rw / 2,
        i64::from(height) / 2 - rh / 2,
    );
    // Each canvas pixel takes the nearest pixel of the scaled picture: inside it, itself; in fill's
    // empty bands, the edge row or column.
    let pick = |x: u32, y: u32| {
        let sx = (i64::from(x) - ox).clamp(0, rw - 1) as u32;
        let sy = (i64::from(y) - oy).clamp(0, rh - 1) as u32;
        (sx, sy)
    };
    match scaled {
        DynamicImage::ImageLuma8(g) => {
            DynamicImage::ImageLuma8(GrayImage::from_fn(width, height, |x, y| {
                let (sx, sy) = pick(x, y);
                *g.get_pixel(sx, sy)
            }))
        }
        other => {
            let rgb = other.to_rgb8();
            DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
                let (sx, sy) = pick(x, y);
                *rgb.get_pixel(sx, sy)
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 255 / w.max(2)) as u8, (y * 255 / h.max(2)) as u8, 7])
        }))
    }

    #[test]
    fn resize_modes_place_the_picture_as_a1111() {
        // A 40×20 picture onto 32×32.
        let img = gradient(40, 20);
        let just = fit(&img, 32, 32, ResizeMode::Just).to_rgb8();
        assert_eq!(just.dimensions(), (32, 32));
        // Crop: scaled to 64×32 (covers), the middle 32 columns kept: the left edge is not x = 0.
        let crop = fit(&img, 32, 32, ResizeMode::Crop).to_rgb8();
        assert!(
            crop.get_pixel(0, 16).0[0] > 40,
            "{:?}",
            crop.get_pixel(0, 16)
        );
        assert!(crop.get_pixel(31, 16).0[0] < 215);
        // Fill: scaled to 32×16 at rows 8..24; the bands repeat the edge rows.
        let fill = fit(&img, 32, 32, ResizeMode::Fill).to_rgb8();
        for x in 0..32 {
            assert_eq!(fill.get_pixel(x, 0), fill.get_pixel(x, 8));
            assert_eq!(fill.get_pixel(x, 31), fill.get_pixel(x, 23));
        }
        assert_ne!(fill.get_pixel(5, 8), fill.get_pixel(5, 23));
        // Same size: untouched.
        let same = fit(&img, 40, 20, ResizeMode::Crop);
        assert_eq!(same, img);
    }

    #[test]
    fn mask_is_blurred_then_made_binary() {
        let mut g = GrayImage::new(16, 16);
        for y in 4..12 {
            for x in 4..12 {
                g.put_pixel(x, y, image::Luma([200]));
            }
        }
        let sharp = binary_mask(Some(g.clone()), 0).unwrap();
        assert_eq!(sharp.iter().sum::<f32>(), 64.0);
        assert_eq!(sharp[4 * 16 + 4], 1.0);
        // Blurred, the square's corners fall under one half.
        let soft = binary_mask(Some(g), 2).unwrap();
        assert_eq!(soft[8 * 16 + 8], 1.0);
        assert_eq!(soft[4 * 16 + 4], 0.0);
        assert!(soft.iter().all(|&v| v == 0.0 || v == 1.0));
    }

    #[test]
    fn luma_matches_pil() {
        // PIL: (255 × 19595 + 32768) >> 16 = 76; grey stays grey.
        assert_eq!(luma(&[255, 0, 0]), 76);
        assert_eq!(luma(&[255, 255, 255]), 255);
        assert_eq!(luma(&[97, 97, 97]), 97);
    }
}
