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
        }
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
        assert_eq!(
            init(1.5, StepCount::Diffusers).first_step(20),
            Err(DenoiseError::Range(1.5))
        );
    }
}
