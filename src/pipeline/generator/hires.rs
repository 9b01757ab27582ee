//! A1111's hires fix after the first pass ([`Generator::hires_pass`]): each image's latents are
//! upscaled (torch's interpolation for the latent modes; decode, Lanczos or an ONNX model, encode
//! for the pixel ones) and redrawn at the hires size as image-to-image, with the image's seed
//! drawn afresh as A1111 does (so the noise is diffusers' img2img pipeline's for that seed). On a
//! 9-channel inpainting UNet the second pass is diffusers' inpaint pipeline under an all-white mask.

use super::super::img2img::{add_noise, Init, RepaintAll};
use super::super::rng::TorchRng;
use super::super::schedulers;
use super::batched::{Ready, Slot};
use super::{Generator, PipelineError};
use crate::hires::{HiresFix, Upscaler};
use crate::image::resample::{interpolate, lanczos};
use crate::image::upscale::{ModelUpscaler, DEFAULT_OVERLAP, DEFAULT_TILE};
use crate::job::{Event, Job, RgbImage};
use crate::pipeline::stop::{Ended, Stop};

/// An opened upscaler model, kept for the next job that names the same file contents.
pub(super) struct CachedUpscaler {
    sha256: String,
    model: ModelUpscaler,
}

/// The job the second pass runs: the hires size, its schedule, no picture of its own. SDXL's size
/// conditioning follows the job's size, so the hires size is both original and target size, as
/// A1111's hires pass has it (its prompts are conditioned at `hr_upscale_to_x/y`).
fn second_job(job: &Job, fix: &HiresFix, total: u32) -> Job {
    Job {
        width: fix.width,
        height: fix.height,
        steps: total,
        init: None,
        hires: None,
        ..job.clone()
    }
}

/// diffusers' img2img preprocessing of a picture: x / 255 then 2x - 1, channels first.
pub(crate) fn to_chw(img: &RgbImage) -> Vec<f32> {
    let plane = (img.width * img.height) as usize;
    let mut chw = vec![0f32; 3 * plane];
    for (i, px) in img.pixels.chunks_exact(3).enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = 2.0 * (f32::from(px[c]) / 255.0) - 1.0;
        }
    }
    chw
}

impl Generator {
    /// Upscales a decoded first-pass picture to the hires size with an ONNX model (as often as
    /// needed, at most three times, as A1111), then fits it with Lanczos.
    fn model_upscale(
        &mut self,
        file: &crate::init_image::FileRef,
        img: RgbImage,
        (tw, th): (u32, u32),
    ) -> Result<RgbImage, PipelineError> {
        let err = |e: &dyn std::fmt::Display| PipelineError::Job(e.to_string());
        crate::hires::check_pinned(file).map_err(|e| err(&e))?;
        if self.upscaler.as_ref().map(|c| &c.sha256) != Some(&file.sha256) {
            self.upscaler = None;
            let model =
                ModelUpscaler::open(self.sessions.runtime(), self.sessions.opts(), &file.path)
                    .map_err(|e| err(&e))?;
            self.upscaler = Some(CachedUpscaler {
                sha256: file.sha256.clone(),
                model,
            });
        }
        let Some(up) = self.upscaler.as_mut() else {
            return Err(err(&"the upscaler did not open"));
        };
        let mut img = img;
        for _ in 0..3 {
            if img.width >= tw && img.height >= th {
                break;
            }
            img = up
                .model
                .upscale(&img, DEFAULT_TILE, DEFAULT_OVERLAP)
                .map_err(|e| err(&e))?;
        }
        Ok(if (img.width, img.height) == (tw, th) {
            img
        } else {
            lanczos(&img, tw, th)
        })
    }

    /// The second pass of `lead`'s hires fix on `slots`, whose latents are the first pass's
    /// (`h` × `w`); afterwards they hold the hires latents. Returns their latent size, or how the
    /// run ended early.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn hires_pass(
        &mut self,
        lead: &Ready<'_>,
        slots: &mut [Slot],
        rows: usize,
        (h, w): (usize, usize),
        stop: &dyn Fn() -> Stop,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Result<(usize, usize), Ended>, PipelineError> {
        let Some(fix) = &lead.job.hires else {
            return Ok(Ok((h, w)));
        };
        let bad = |e: &dyn std::fmt::Display| PipelineError::Job(e.to_string());
        let upscaler = fix.upscaler().map_err(|e| bad(&e))?;
        let (total, first) = fix.second_pass(lead.job.steps).map_err(|e| bad(&e))?;
        let job = second_job(lead.job, fix, total);
        // Read again for the second pass's step count: prompt editing switches by step.
        let second = self.ready(&job, lead.id)?;
        let factor = self.model.index.vae_scale_factor.max(1) as usize;
        let (h2, w2) = (fix.height as usize / factor, fix.width as usize / factor);
        let n2 = 4 * h2 * w2;
        self.sessions.ensure_vae_dims(&self.model, h, w)?;
        let cfg = self.scheduler.for_job(job.zero_snr).into_owned();
        // A 9-channel UNet repaints the upscaled picture all over (A1111's conditioning with no mask).
        let repaint = RepaintAll::encode(&mut self.sessions, &self.model, &job, h2, w2)?;
        for s in slots.iter_mut() {
            let mut rng = TorchRng::new(s.seed);
            let mut sched = schedulers::build_styled(
                job.sampler,
                job.schedule,
                job.sigmas,
                self.model.index.family,
                &cfg,
                total as usize,
            )?;
            if job.sde_noise.is_brownian() {
                sched.use_brownian_noise(s.seed, n2, first);
            }
            let latents = match &upscaler {
                Upscaler::Latent(mode) => {
                    let up = interpolate(&s.latents, 4, (h, w), (h2, w2), *mode);
                    let noise = rng.randn(n2);
                    add_noise(&*sched, &cfg, &up, &noise, first)
                }
                pixel => {
                    let img = self.sessions.decode(&self.model, &s.latents, h, w)?;
                    let target = (fix.width, fix.height);
                    let img = match pixel {
                        Upscaler::Model(file) => self.model_upscale(file, img, target)?,
                        _ => lanczos(&img, target.0, target.1),
                    };
                    let moments = self.sessions.encode(
                        &self.model,
                        &to_chw(&img),
                        fix.height as usize,
                        fix.width as usize,
                    )?;
                    let init = Init::from_moments(&moments, first, self.model.vae_scaling())
                        .filter(|_| moments.len() == 2 * n2)
                        .ok_or_else(|| PipelineError::Run {
                            what: "VAE encoder",
                            message: format!("gave {} values, expected {}", moments.len(), 2 * n2),
                        })?;
                    init.start(&mut rng, &*sched, &cfg).0
                }
            };
            let blend = repaint.as_ref().map(|r| r.blend(&mut rng));
            (s.rng, s.sched, s.latents, s.blend) = (rng, sched, latents, blend);
        }
        let static_shapes = self.sessions.opts().static_shapes;
        let dims =
            static_shapes.then_some([2 * rows as i64, h2 as i64, w2 as i64, second.seq as i64]);
        self.sessions.ensure_vae_dims(&self.model, h2, w2)?;
        let ended = self.sample_chunk(
            std::slice::from_ref(&second),
            slots,
            rows,
            first,
            (h2, w2),
            dims,
            stop,
            on_event,
        )?;
        Ok(match ended {
            Some(e) => Err(e),
            None => Ok((h2, w2)),
        })
    }
}
