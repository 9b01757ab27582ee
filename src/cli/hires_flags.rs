//! `generate`'s hires-fix flags ([`HiresFlags`]) and the [`crate::job::HiresFix`] they make
//! ([`hires_fix`]), checked and the upscaler model pinned by hash before the model loads.

use super::{CliError, InitFlags};
use crate::hires::{pin_model, HiresError, HiresFix};
use crate::job::Job;
use clap::Args;
use std::path::PathBuf;

/// A1111's hires fix: the image is made at --width × --height, upscaled and redrawn.
#[derive(Args, Default)]
pub struct HiresFlags {
    /// Hires fix: upscale by this factor and redraw (default 2 when another --hires-* flag is given)
    #[arg(long, value_name = "FACTOR")]
    pub hires_scale: Option<f64>,
    /// Hires fix: the width to upscale to, instead of a factor (alone: the height keeps the ratio)
    #[arg(long, value_name = "PX")]
    pub hires_width: Option<u32>,
    /// Hires fix: the height to upscale to, instead of a factor
    #[arg(long, value_name = "PX")]
    pub hires_height: Option<u32>,
    /// Hires fix: "Latent" (default), "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic
    /// antialiased)", "Latent (nearest)", "Latent (nearest-exact)" or Lanczos
    #[arg(long, value_name = "NAME")]
    pub hires_upscaler: Option<String>,
    /// Hires fix: an ONNX image upscaler (e.g. a Real-ESRGAN export), run in tiles
    #[arg(long, value_name = "FILE.onnx")]
    pub upscaler: Option<PathBuf>,
    /// Hires fix: steps of the second pass; 0 (default) = --steps
    #[arg(long, value_name = "N")]
    pub hires_steps: Option<u32>,
    /// Hires fix: how much the second pass redraws, 0 to 1 (default 0.7)
    #[arg(long, allow_negative_numbers = true)]
    pub hires_denoise: Option<f64>,
}

impl HiresFlags {
    fn given(&self) -> bool {
        self.hires_scale.is_some()
            || self.hires_width.is_some()
            || self.hires_height.is_some()
            || self.hires_upscaler.is_some()
            || self.upscaler.is_some()
            || self.hires_steps.is_some()
            || self.hires_denoise.is_some()
    }
}

/// The hires fix the flags ask of `job` (sized from its width and height), or `None`.
pub fn hires_fix(
    f: &HiresFlags,
    init: &InitFlags,
    job: &Job,
) -> Result<Option<Box<HiresFix>>, CliError> {
    if !f.given() {
        return Ok(None);
    }
    if job.init.is_some() {
        return Err(CliError::Usage(
            "the hires fix is for text-to-image; with --init-image, set --width/--height to the \
             size you want instead"
                .into(),
        ));
    }
    let usage = |e: HiresError| match e {
        HiresError::Read { .. } => CliError::Failed(e.to_string()),
        e => CliError::Usage(e.to_string()),
    };
    let model = f
        .upscaler
        .as_deref()
        .map(pin_model)
        .transpose()
        .map_err(usage)?;
    let fix = HiresFix::new(
        f.hires_upscaler.as_deref().unwrap_or("Latent"),
        model,
        (job.width, job.height),
        f.hires_scale,
        (f.hires_width, f.hires_height),
    )
    .and_then(|fix| {
        fix.with_pass(
            f.hires_steps.unwrap_or(0),
            f.hires_denoise.unwrap_or(0.7),
            init.denoise_steps.unwrap_or_default(),
            job.steps,
        )
    })
    .map_err(usage)?;
    Ok(Some(Box::new(fix)))
}
