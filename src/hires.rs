//! What a [`crate::job::Job`] holds for A1111's hires fix: [`HiresFix`] (target size, upscaler,
//! second-pass steps and denoise) and which steps of the second pass run
//! ([`HiresFix::second_pass`]), and A1111's latent upscale modes ([`LatentMode`]). The upscaling
//! itself is `image::resample`'s and `image::upscale`'s; the second pass is the pipeline's.

use crate::init_image::{check_denoise, DenoiseError, FileRef, StepCount};
use serde::{Deserialize, Serialize};

/// The name of Pillow's Lanczos resize among the upscalers, as A1111 calls it.
pub const LANCZOS: &str = "Lanczos";

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HiresError {
    #[error(transparent)]
    Denoise(#[from] DenoiseError),
    #[error("hires upscaler {0:?}: use Lanczos, one of A1111's latent modes ({modes}) or --upscaler FILE.onnx", modes = latent_names())]
    UnknownUpscaler(String),
    #[error("hires upscaler {name:?} is a built-in one; --upscaler FILE.onnx names a model upscaler, give one of them")]
    TwoUpscalers { name: String },
    #[error(
        "hires size {width}x{height}: must be positive multiples of 8 and at most 16384 a side"
    )]
    Size { width: u32, height: u32 },
    #[error("--hires-scale {0}: must be a number above 0")]
    Scale(f64),
    #[error("--hires-steps {0}: must be at most 1000")]
    Steps(u32),
    #[error("cannot read the upscaler {path}: {message}")]
    Read {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("{path} changed since the job was made (sha256 {found}, the job has {expected})")]
    Changed {
        path: std::path::PathBuf,
        expected: String,
        found: String,
    },
}

/// An upscaler model file named by path and pinned by the sha256 of its contents.
pub fn pin_model(path: &std::path::Path) -> Result<FileRef, HiresError> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).map_err(|e| HiresError::Read {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let sha256 = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(FileRef {
        path: path.to_path_buf(),
        sha256,
    })
}

/// Checks that a pinned model file still has the contents the job was made with.
pub fn check_pinned(f: &FileRef) -> Result<(), HiresError> {
    let now = pin_model(&f.path)?;
    if now.sha256 != f.sha256 {
        return Err(HiresError::Changed {
            path: f.path.clone(),
            expected: f.sha256.clone(),
            found: now.sha256,
        });
    }
    Ok(())
}

fn latent_names() -> String {
    LatentMode::ALL
        .iter()
        .map(|m| format!("{:?}", m.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A1111's latent upscale modes (`shared.latent_upscale_modes`): torch's interpolation mode and
/// whether it is antialiased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LatentMode {
    #[serde(rename = "Latent")]
    Bilinear,
    #[serde(rename = "Latent (antialiased)")]
    BilinearAa,
    #[serde(rename = "Latent (bicubic)")]
    Bicubic,
    #[serde(rename = "Latent (bicubic antialiased)")]
    BicubicAa,
    #[serde(rename = "Latent (nearest)")]
    Nearest,
    #[serde(rename = "Latent (nearest-exact)")]
    NearestExact,
}

impl LatentMode {
    pub const ALL: [LatentMode; 6] = [
        LatentMode::Bilinear,
        LatentMode::BilinearAa,
        LatentMode::Bicubic,
        LatentMode::BicubicAa,
        LatentMode::Nearest,
        LatentMode::NearestExact,
    ];

    /// The name A1111 shows and writes as `Hires upscaler`.
    pub fn name(self) -> &'static str {
        match self {
            LatentMode::Bilinear => "Latent",
            LatentMode::BilinearAa => "Latent (antialiased)",
            LatentMode::Bicubic => "Latent (bicubic)",
            LatentMode::BicubicAa => "Latent (bicubic antialiased)",
            LatentMode::Nearest => "Latent (nearest)",
            LatentMode::NearestExact => "Latent (nearest-exact)",
        }
    }

    /// The mode named `s` (A1111's name, case-insensitively).
    pub fn from_name(s: &str) -> Option<LatentMode> {
        let want = s.trim().to_ascii_lowercase();
        LatentMode::ALL
            .into_iter()
            .find(|m| m.name().to_ascii_lowercase() == want)
    }
}

/// How the first pass is brought to the hires size.
#[derive(Debug, Clone, PartialEq)]
pub enum Upscaler<'a> {
    /// The latents resized by torch's interpolation, as A1111's "Latent" modes.
    Latent(LatentMode),
    /// The decoded picture resized by Pillow's Lanczos, then encoded.
    Lanczos,
    /// The decoded picture through an ONNX image model (tiled), fitted by Lanczos, then encoded.
    Model(&'a FileRef),
}

/// A1111's hires fix: the job's image is made at its size, upscaled to `width` × `height` and
/// redrawn there as image-to-image at `denoise`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HiresFix {
    /// A1111's upscaler name: a latent mode, `Lanczos`, or the model's name with `model`.
    pub upscaler: String,
    /// An ONNX image upscaler (input and output `[1, 3, H, W]` in 0..1), pinned by hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<FileRef>,
    /// The size of the second pass (and of the image).
    pub width: u32,
    pub height: u32,
    /// The factor the size came from (A1111's `Hires upscale`), when given as one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// Steps of the second pass; 0 = the job's steps (A1111's meaning).
    #[serde(default)]
    pub steps: u32,
    pub denoise: f64,
    #[serde(default)]
    pub step_count: StepCount,
}

impl HiresFix {
    /// The hires fix of a `width` × `height` job: the target size from `scale` or the explicit size
    /// (one side given: the other keeps the ratio, as A1111's "resize width/height to"), the
    /// upscaler checked.
    pub fn new(
        upscaler: &str,
        model: Option<FileRef>,
        (width, height): (u32, u32),
        scale: Option<f64>,
        size: (Option<u32>, Option<u32>),
    ) -> Result<HiresFix, HiresError> {
        if let Some(s) = scale.filter(|s| !s.is_finite() || *s <= 0.0) {
            return Err(HiresError::Scale(s));
        }
        let round8 = |v: f64| ((v / 8.0).round() * 8.0).max(8.0) as u32;
        let ratio = f64::from(width) / f64::from(height.max(1));
        let (tw, th, scale) = match size {
            (Some(w), Some(h)) => (w, h, None),
            (Some(w), None) => (w, round8(f64::from(w) / ratio), None),
            (None, Some(h)) => (round8(f64::from(h) * ratio), h, None),
            (None, None) => {
                let s = scale.unwrap_or(2.0);
                (
                    round8(f64::from(width) * s),
                    round8(f64::from(height) * s),
                    Some(s),
                )
            }
        };
        let upscaler = match &model {
            Some(m) => {
                if upscaler != LANCZOS && LatentMode::from_name(upscaler).is_none() {
                    upscaler.to_string()
                } else if upscaler == "Latent" {
                    // The default name when only --upscaler is given: the model's file name.
                    m.path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "model".into())
                } else {
                    return Err(HiresError::TwoUpscalers {
                        name: upscaler.into(),
                    });
                }
            }
            None => upscaler.to_string(),
        };
        let fix = HiresFix {
            upscaler,
            model,
            width: tw,
            height: th,
            scale,
            steps: 0,
            denoise: 0.7,
            step_count: StepCount::default(),
        };
        fix.check()?;
        Ok(fix)
    }

    /// Checks what a job file or a command line may have got wrong.
    /// This fix with its second pass set: `steps` (0 = the job's), `denoise` and how steps are
    /// counted, checked as the generator will run it after a job of `job_steps`. What the command
    /// line and the workstation both build a fix with.
    pub fn with_pass(
        mut self,
        steps: u32,
        denoise: f64,
        step_count: StepCount,
        job_steps: u32,
    ) -> Result<HiresFix, HiresError> {
        self.steps = steps;
        self.denoise = denoise;
        self.step_count = step_count;
        self.check()?;
        self.second_pass(job_steps)?;
        Ok(self)
    }

    pub fn check(&self) -> Result<(), HiresError> {
        let ok = |v: u32| v > 0 && v.is_multiple_of(8) && v <= 16384;
        if !ok(self.width) || !ok(self.height) {
            return Err(HiresError::Size {
                width: self.width,
                height: self.height,
            });
        }
        if self.steps > 1000 {
            return Err(HiresError::Steps(self.steps));
        }
        check_denoise(self.denoise)?;
        self.upscaler().map(|_| ())
    }

    /// Which upscaler the name and model say.
    pub fn upscaler(&self) -> Result<Upscaler<'_>, HiresError> {
        if let Some(m) = &self.model {
            return Ok(Upscaler::Model(m));
        }
        if self.upscaler.eq_ignore_ascii_case(LANCZOS) {
            return Ok(Upscaler::Lanczos);
        }
        LatentMode::from_name(&self.upscaler)
            .map(Upscaler::Latent)
            .ok_or_else(|| HiresError::UnknownUpscaler(self.upscaler.clone()))
    }

    /// The second pass of a job of `steps` steps: (schedule length, index of the first step that
    /// runs). diffusers' count: a schedule of the hires steps, of which the last
    /// `int(steps × denoise)` run; A1111's: a schedule of `int(steps / min(denoise, 0.999))`, of
    /// which the last `steps` run (A1111 passes the hires steps as the steps to run).
    pub fn second_pass(&self, steps: u32) -> Result<(u32, usize), HiresError> {
        let denoise = check_denoise(self.denoise)?;
        let wanted = if self.steps == 0 { steps } else { self.steps };
        let total = match self.step_count {
            StepCount::Diffusers => wanted,
            StepCount::A1111 => (f64::from(wanted) / denoise.min(0.999)) as u32,
        };
        let runs = match self.step_count {
            StepCount::Diffusers => (f64::from(wanted) * denoise) as u32,
            StepCount::A1111 => wanted,
        }
        .min(total);
        if runs == 0 || total > 1000 {
            return Err(DenoiseError::NoSteps {
                denoise,
                steps: wanted,
            }
            .into());
        }
        Ok((total, (total - runs) as usize))
    }

    /// The steps that run in the second pass (for progress reports).
    pub fn runs(&self, steps: u32) -> u32 {
        self.second_pass(steps)
            .map_or(0, |(total, first)| total - first as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(upscaler: &str) -> HiresFix {
        HiresFix::new(upscaler, None, (64, 48), Some(2.0), (None, None)).unwrap()
    }

    #[test]
    fn size_comes_from_the_scale_or_one_side_keeping_the_ratio() {
        let f = fix("Latent");
        assert_eq!((f.width, f.height, f.scale), (128, 96, Some(2.0)));
        let f = HiresFix::new("Latent", None, (64, 48), None, (Some(160), None)).unwrap();
        assert_eq!((f.width, f.height, f.scale), (160, 120, None));
        let f = HiresFix::new("Latent", None, (64, 48), Some(1.5), (None, None)).unwrap();
        assert_eq!((f.width, f.height), (96, 72));
        assert!(HiresFix::new("Latent", None, (64, 48), Some(0.0), (None, None)).is_err());
        assert!(HiresFix::new("Latent", None, (64, 48), None, (Some(100), Some(64))).is_err());
    }

    #[test]
    fn upscaler_names_are_checked() {
        assert_eq!(
            fix("Latent (bicubic)").upscaler(),
            Ok(Upscaler::Latent(LatentMode::Bicubic))
        );
        assert_eq!(fix("lanczos").upscaler(), Ok(Upscaler::Lanczos));
        let err = HiresFix::new("ESRGAN", None, (64, 64), None, (None, None)).unwrap_err();
        assert!(err.to_string().contains("Latent (nearest-exact)"), "{err}");
        let model = FileRef {
            path: "x/4x-tiny.onnx".into(),
            sha256: "00".into(),
        };
        let f = HiresFix::new("Latent", Some(model.clone()), (64, 64), None, (None, None)).unwrap();
        assert_eq!(f.upscaler, "4x-tiny");
        assert!(matches!(f.upscaler(), Ok(Upscaler::Model(_))));
        assert!(HiresFix::new("Lanczos", Some(model), (64, 64), None, (None, None)).is_err());
    }

    #[test]
    fn second_pass_steps_follow_the_count_rule() {
        let mut f = fix("Latent");
        f.denoise = 0.5;
        assert_eq!(f.second_pass(10), Ok((10, 5)));
        f.steps = 6;
        assert_eq!(f.second_pass(10), Ok((6, 3)));
        f.step_count = StepCount::A1111;
        // A1111: int(6 / 0.5) = 12 steps of which the last 6 run.
        assert_eq!(f.second_pass(10), Ok((12, 6)));
        f.denoise = 1.0;
        assert_eq!(f.second_pass(10), Ok((6, 0)));
        f.step_count = StepCount::Diffusers;
        f.denoise = 0.1;
        assert!(f.second_pass(4).is_err());
    }
}
