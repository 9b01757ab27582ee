//! The picture an image-to-image or inpainting job starts from: [`InitImage`] (what a [`crate::job::Job`]
//! stores: paths, sha256 of the contents, denoise, resize mode, mask), [`read_picture`] (PNG, JPEG,
//! WebP; the header's size is checked before anything is decoded) and [`InitImage::load`] (resized to
//! the job's size, the mask blurred and made binary as diffusers' mask processor does).

use crate::job::RgbImage;
use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, ImageReader, Limits};
use serde::{Deserialize, Serialize};
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
    #[error("--denoise {0}: must be between 0 and 1")]
    Denoise(f64),
    #[error("denoise {denoise} with {steps} steps runs no step (diffusers runs int(steps × denoise) of them); raise --denoise or --steps")]
    NoSteps { denoise: f64, steps: u32 },
}

/// How the picture is fitted to the job's size (A1111's resize modes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Stretched to the size ("Just resize").
    #[default]
    Just,
    /// Scaled to cover the size, the overflow cut off equally on both sides ("Crop and resize").
    Crop,
    /// Scaled to fit inside, the empty bands filled with the picture's edge pixels ("Resize and fill").
    Fill,
}

impl std::str::FromStr for ResizeMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "just" => Ok(ResizeMode::Just),
            "crop" => Ok(ResizeMode::Crop),
            "fill" => Ok(ResizeMode::Fill),
            _ => Err(format!("resize mode {s:?}: use just, crop or fill")),
        }
    }
}

/// How many of the schedule's steps a denoise value runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepCount {
    /// diffusers' img2img pipelines: the last `int(steps × denoise)` steps.
    #[default]
    Diffusers,
    /// A1111: the last `int(steps × min(denoise, 0.999)) + 1` steps.
    A1111,
}

impl std::str::FromStr for StepCount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "diffusers" => Ok(StepCount::Diffusers),
            "a1111" => Ok(StepCount::A1111),
            _ => Err(format!("step count {s:?}: use diffusers or a1111")),
        }
    }
}

/// A file a job depends on, named by path and pinned by the sha256 of its contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub path: PathBuf,
    pub sha256: String,
}

/// Image-to-image settings of a job (inpainting when there is a mask, or when the picture has
/// transparent pixels: those are repainted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InitImage {
    pub image: FileRef,
    /// 0 keeps the picture, 1 redraws it entirely (diffusers' `strength`).
    pub denoise: f64,
    #[serde(default)]
    pub resize_mode: ResizeMode,
    #[serde(default)]
    pub step_count: StepCount,
    /// White repaints, black keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<FileRef>,
    /// Gaussian blur of the mask in pixels (σ) before it is made binary.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mask_blur: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
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

/// Checks a denoise value given on a command line or in a job file.
pub fn check_denoise(denoise: f64) -> Result<f64, InitError> {
    if (0.0..=1.0).contains(&denoise) {
        Ok(denoise)
    } else {
        Err(InitError::Denoise(denoise))
    }
}

impl InitImage {
    /// Reads the picture (and mask) from `path` and pins them by hash.
    pub fn from_files(
        path: &Path,
        denoise: f64,
        mask: Option<&Path>,
    ) -> Result<InitImage, InitError> {
        let denoise = check_denoise(denoise)?;
        let pin = |p: &Path| -> Result<FileRef, InitError> {
            Ok(FileRef {
                path: p.to_path_buf(),
                sha256: read_picture(p)?.sha256,
            })
        };
        Ok(InitImage {
            image: pin(path)?,
            denoise,
            resize_mode: ResizeMode::default(),
            step_count: StepCount::default(),
            mask: mask.map(pin).transpose()?,
            mask_blur: 0,
        })
    }

    /// The index of the first of `steps` schedule steps that runs.
    pub fn first_step(&self, steps: u32) -> Result<usize, InitError> {
        let denoise = check_denoise(self.denoise)?;
        let n = steps as usize;
        // f64 as Python computes `int(num_inference_steps * strength)`.
        let runs = match self.step_count {
            StepCount::Diffusers => ((f64::from(steps) * denoise) as usize).min(n),
            StepCount::A1111 => ((f64::from(steps) * denoise.min(0.999)) as usize + 1).min(n),
        };
        if runs == 0 {
            return Err(InitError::NoSteps { denoise, steps });
        }
        Ok(n - runs)
    }

    /// The picture and mask at `width`×`height`, checked against the hashes the job holds.
    pub fn load(&self, width: u32, height: u32) -> Result<Loaded, InitError> {
        let pic = read_pinned(&self.image)?;
        let mask = match &self.mask {
            Some(m) => {
                let mp = read_pinned(m)?;
                let gray: Vec<u8> = mp.rgb.pixels.chunks(3).map(luma).collect();
                Some(GrayImage::from_raw(mp.rgb.width, mp.rgb.height, gray))
            }
            // Transparent pixels are the hole to fill.
            None => pic
                .alpha
                .as_ref()
                .filter(|a| a.iter().any(|&v| v < 255))
                .map(|a| {
                    GrayImage::from_raw(
                        pic.rgb.width,
                        pic.rgb.height,
                        a.iter().map(|v| 255 - v).collect(),
                    )
                }),
        };
        let rgb = image::RgbImage::from_raw(pic.rgb.width, pic.rgb.height, pic.rgb.pixels)
            .map(|img| {
                fit(
                    &DynamicImage::ImageRgb8(img),
                    width,
                    height,
                    self.resize_mode,
                )
            })
            .map(|d| d.to_rgb8());
        let Some(rgb) = rgb else {
            return Err(InitError::Decode {
                path: self.image.path.clone(),
                message: "pixel buffer of the wrong size".into(),
            });
        };
        let mask = mask.map(|m| {
            let m = m.map(|g| {
                fit(
                    &DynamicImage::ImageLuma8(g),
                    width,
                    height,
                    self.resize_mode,
                )
            });
            binary_mask(m.map(|d| d.to_luma8()), self.mask_blur)
        });
        Ok(Loaded {
            rgb: RgbImage {
                width: rgb.width(),
                height: rgb.height(),
                pixels: rgb.into_raw(),
            },
            mask: mask.flatten(),
        })
    }
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

/// diffusers' mask processing: blurred (σ = `blur`), scaled to [0, 1], then 0 below 0.5 and 1 from it.
fn binary_mask(mask: Option<GrayImage>, blur: u32) -> Option<Vec<f32>> {
    let mask = mask?;
    let mask = if blur > 0 {
        image::imageops::blur(&mask, blur as f32)
    } else {
        mask
    };
    Some(
        mask.pixels()
            .map(|p| {
                if f32::from(p.0[0]) / 255.0 < 0.5 {
                    0.0
                } else {
                    1.0
                }
            })
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

    fn init(denoise: f64, count: StepCount) -> InitImage {
        InitImage {
            image: FileRef {
                path: "x.png".into(),
                sha256: String::new(),
            },
            denoise,
            resize_mode: ResizeMode::Just,
            step_count: count,
            mask: None,
            mask_blur: 0,
        }
    }

    #[test]
    fn first_step_follows_diffusers_and_a1111_counts() {
        // diffusers: int(20 × 0.75) = 15 steps run, from index 5; A1111: int(20 × 0.75) + 1 = 16.
        assert_eq!(init(0.75, StepCount::Diffusers).first_step(20).unwrap(), 5);
        assert_eq!(init(0.75, StepCount::A1111).first_step(20).unwrap(), 4);
        // Python's float64 product: 0.7 × 10 = 7.000000000000001 -> 7 (f32 would give 6).
        assert_eq!(init(0.7, StepCount::Diffusers).first_step(10).unwrap(), 3);
        // Denoise 1: every step (A1111 caps it at 0.999: int(19.98) + 1 = 20).
        assert_eq!(init(1.0, StepCount::Diffusers).first_step(20).unwrap(), 0);
        assert_eq!(init(1.0, StepCount::A1111).first_step(20).unwrap(), 0);
        // A1111 always runs at least one step; diffusers refuses to run none.
        assert_eq!(init(0.01, StepCount::A1111).first_step(20).unwrap(), 19);
        let err = init(0.01, StepCount::Diffusers).first_step(20).unwrap_err();
        assert!(err.to_string().contains("runs no step"), "{err}");
        assert!(matches!(
            init(1.5, StepCount::Diffusers).first_step(20),
            Err(InitError::Denoise(_))
        ));
    }

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
