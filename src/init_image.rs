//! What a [`crate::job::Job`] holds to start from a picture: [`InitImage`] (the picture and mask by
//! path and sha256, denoise, resize mode, step count) and which schedule steps a denoise value runs
//! ([`InitImage::first_step`]). Reading the pictures is [`crate::image::init`]'s.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DenoiseError {
    #[error("--denoise {0}: must be between 0 and 1")]
    Range(f64),
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

/// Which part of the picture an inpainting job redraws at the job's size (A1111's "Inpaint area").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InpaintArea {
    /// The whole picture, fitted to the job's size.
    #[default]
    Whole,
    /// The mask's bounding box plus the padding, widened to the job's aspect, redrawn at the job's
    /// size and pasted back over the picture at its own size ("Only masked").
    Masked,
}

impl std::str::FromStr for InpaintArea {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "whole" => Ok(InpaintArea::Whole),
            "masked" | "only-masked" => Ok(InpaintArea::Masked),
            _ => Err(format!("inpaint area {s:?}: use whole or masked")),
        }
    }
}

/// What the masked part starts from before it is noised (A1111's "Masked content").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaskedContent {
    /// The picture itself.
    #[default]
    Original,
    /// The picture with the masked part painted over from its surroundings (blurred inwards).
    Fill,
    /// The picture's latents with the masked part replaced by unit Gaussian noise.
    LatentNoise,
    /// The picture's latents with the masked part set to zero.
    LatentNothing,
}

impl MaskedContent {
    /// The name A1111's infotext uses.
    pub fn label(self) -> &'static str {
        match self {
            MaskedContent::Original => "original",
            MaskedContent::Fill => "fill",
            MaskedContent::LatentNoise => "latent noise",
            MaskedContent::LatentNothing => "latent nothing",
        }
    }
}

impl std::str::FromStr for MaskedContent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace(' ', "-").as_str() {
            "original" => Ok(MaskedContent::Original),
            "fill" => Ok(MaskedContent::Fill),
            "latent-noise" => Ok(MaskedContent::LatentNoise),
            "latent-nothing" => Ok(MaskedContent::LatentNothing),
            _ => Err(format!(
                "masked content {s:?}: use original, fill, latent-noise or latent-nothing"
            )),
        }
    }
}

/// Pixels added on each side of the picture before inpainting (outpainting).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outpaint {
    pub left: u32,
    pub right: u32,
    pub up: u32,
    pub down: u32,
}

impl Outpaint {
    /// Whether it adds nothing.
    pub fn is_empty(&self) -> bool {
        *self == Outpaint::default()
    }
}

impl std::str::FromStr for Outpaint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("outpaint {s:?}: give four pixel counts L,R,U,D (0 to 4096), e.g. 64,64,0,0")
        };
        let v: Vec<i64> = s
            .split(',')
            .map(|p| p.trim().parse::<i64>().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        if v.len() != 4 || v.iter().any(|&p| !(0..=4096).contains(&p)) {
            return Err(bad());
        }
        Ok(Outpaint {
            left: v[0] as u32,
            right: v[1] as u32,
            up: v[2] as u32,
            down: v[3] as u32,
        })
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
    /// The whole picture or only the masked part redrawn (left out of the JSON when whole, so
    /// older jobs keep their hash).
    #[serde(default, skip_serializing_if = "is_default")]
    pub inpaint_area: InpaintArea,
    /// Pixels around the mask's bounding box taken into the redrawn part ([`InpaintArea::Masked`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub inpaint_padding: u32,
    #[serde(default, skip_serializing_if = "is_default")]
    pub masked_content: MaskedContent,
    /// Canvas added around the picture and repainted.
    #[serde(default, skip_serializing_if = "Outpaint::is_empty")]
    pub outpaint: Outpaint,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Default "only masked" padding in pixels (A1111's).
pub const DEFAULT_PADDING: u32 = 32;

/// Sets the inpaint area and padding given on a command line or in a job file: padding only with
/// the masked area, never negative (default [`DEFAULT_PADDING`]).
pub fn set_area(
    init: &mut InitImage,
    area: Option<InpaintArea>,
    padding: Option<i64>,
) -> Result<(), String> {
    init.inpaint_area = area.unwrap_or_default();
    init.inpaint_padding = match (init.inpaint_area, padding) {
        (InpaintArea::Masked, None) => DEFAULT_PADDING,
        (InpaintArea::Masked, Some(p)) => u32::try_from(p)
            .ok()
            .filter(|&p| p <= 4096)
            .ok_or_else(|| format!("inpaint padding {p}: must be 0 to 4096 pixels"))?,
        (InpaintArea::Whole, Some(_)) => {
            return Err(
                "inpaint padding is for the masked inpaint area (--inpaint-area masked)".into(),
            )
        }
        (InpaintArea::Whole, None) => 0,
    };
    Ok(())
}

/// Checks a denoise value given on a command line or in a job file.
pub fn check_denoise(denoise: f64) -> Result<f64, DenoiseError> {
    if (0.0..=1.0).contains(&denoise) {
        Ok(denoise)
    } else {
        Err(DenoiseError::Range(denoise))
    }
}

impl InitImage {
    /// Image-to-image from `image` at `denoise`: just resize, diffusers' step count, no mask.
    pub fn new(image: FileRef, denoise: f64) -> InitImage {
        InitImage {
            image,
            denoise,
            resize_mode: ResizeMode::default(),
            step_count: StepCount::default(),
            mask: None,
            mask_blur: 0,
            inpaint_area: InpaintArea::Whole,
            inpaint_padding: 0,
            masked_content: MaskedContent::Original,
            outpaint: Outpaint::default(),
        }
    }

    /// Whether the job repaints part of the picture: a mask, or a canvas to outpaint (the
    /// picture's transparent pixels are found only when it is read).
    pub fn has_mask(&self) -> bool {
        self.mask.is_some() || !self.outpaint.is_empty()
    }

    /// The index of the first of `steps` schedule steps that runs.
    pub fn first_step(&self, steps: u32) -> Result<usize, DenoiseError> {
        let denoise = check_denoise(self.denoise)?;
        let n = steps as usize;
        // f64 as Python computes `int(num_inference_steps * strength)`.
        let runs = match self.step_count {
            StepCount::Diffusers => ((f64::from(steps) * denoise) as usize).min(n),
            StepCount::A1111 => ((f64::from(steps) * denoise.min(0.999)) as usize + 1).min(n),
        };
        if runs == 0 {
            return Err(DenoiseError::NoSteps { denoise, steps });
        }
        Ok(n - runs)
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
            ..InitImage::new(
                FileRef {
                    path: "x.png".into(),
                    sha256: String::new(),
                },
                denoise,
            )
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
        assert_eq!(
            init(1.5, StepCount::Diffusers).first_step(20),
            Err(DenoiseError::Range(1.5))
        );
    }

    #[test]
    fn padding_goes_with_the_masked_area_and_is_never_negative() {
        let mut i = init(0.5, StepCount::Diffusers);
        set_area(&mut i, Some(InpaintArea::Masked), None).unwrap();
        assert_eq!(i.inpaint_padding, DEFAULT_PADDING);
        set_area(&mut i, Some(InpaintArea::Masked), Some(0)).unwrap();
        assert_eq!(i.inpaint_padding, 0);
        let neg = set_area(&mut i, Some(InpaintArea::Masked), Some(-4)).unwrap_err();
        assert!(neg.contains("must be 0 to 4096"), "{neg}");
        let whole = set_area(&mut i, None, Some(8)).unwrap_err();
        assert!(whole.contains("masked inpaint area"), "{whole}");
        set_area(&mut i, None, None).unwrap();
        assert_eq!((i.inpaint_area, i.inpaint_padding), (InpaintArea::Whole, 0));
    }

    #[test]
    fn outpaint_and_content_names_parse() {
        let o: Outpaint = "64, 0,8,16".parse().unwrap();
        assert_eq!((o.left, o.right, o.up, o.down), (64, 0, 8, 16));
        for bad in ["64,0,8", "1,2,3,-4", "a,b,c,d", "1,2,3,5000"] {
            assert!(bad.parse::<Outpaint>().is_err(), "{bad}");
        }
        assert_eq!(
            "latent noise".parse::<MaskedContent>(),
            Ok(MaskedContent::LatentNoise)
        );
        assert_eq!(
            "Latent-Nothing".parse::<MaskedContent>(),
            Ok(MaskedContent::LatentNothing)
        );
        // Defaults stay out of the JSON, so jobs made before these fields keep their hash.
        let json = serde_json::to_value(init(0.5, StepCount::Diffusers)).unwrap();
        for key in [
            "inpaint_area",
            "inpaint_padding",
            "masked_content",
            "outpaint",
        ] {
            assert!(json.get(key).is_none(), "{key} in {json}");
        }
    }
}
