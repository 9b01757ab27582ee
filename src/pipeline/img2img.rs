//! Image-to-image and inpainting on top of the sampling loop, as diffusers'
//! `StableDiffusion(XL)Img2ImgPipeline` and `StableDiffusionInpaintPipeline` (4-channel UNet) do:
//! [`Init::prepare`] encodes the job's picture once; per image, [`Init::start`] gives the first
//! latents (posterior sample, then the seed's noise at the first step that runs) and [`Blend`]
//! puts the kept part of the picture back after each step of an inpainting run.

use super::error::PipelineError;
use super::rng::TorchRng;
use super::schedulers::noise_schedule::alphas_cumprod;
use super::schedulers::{Scheduler, SchedulerConfig};
use super::sessions::Sessions;
use crate::image::inpaint_area::PasteBack;
use crate::init_image::MaskedContent;
use crate::job::Job;
use crate::model::Model;

/// The encoded picture of a job, shared by every image of it.
pub struct Init {
    /// The VAE encoder's mean and log-variance (clamped to [-30, 20]), `[4, h, w]` each.
    mean: Vec<f32>,
    std: Vec<f32>,
    /// Latent-size mask (1 repaints), nearest-sampled from the pixel mask as torch's `interpolate`.
    mask: Option<Vec<f32>>,
    /// The first schedule step that runs.
    first: usize,
    /// Inpainting at denoise 1 starts from pure noise (diffusers' `is_strength_max`).
    pure_noise: bool,
    scaling: f32,
    /// A 9-channel inpainting UNet's conditioning ([`UnetCondition`]); `None` for a 4-channel UNet.
    unet_condition: Option<UnetCondition>,
    /// What the masked latents start from (latent noise and latent nothing act here; fill acted
    /// on the picture).
    content: MaskedContent,
    /// "Only masked": the decoded image goes back over the picture.
    paste: Option<PasteBack>,
}

/// What a 9-channel inpainting UNet takes besides the latents, as diffusers'
/// `StableDiffusionInpaintPipeline` gives it: the latent-size mask and the latents of the picture
/// with the repainted part zeroed. Without an init picture (text-to-image) the mask is all ones
/// and the picture is zero, A1111's conditioning for an inpainting model; the picture's posterior
/// mean is used then, so text-to-image draws nothing more from the seed's generator.
struct UnetCondition {
    mask: Vec<f32>,
    mean: Vec<f32>,
    std: Vec<f32>,
    text_to_image: bool,
}

/// What an inpainting run blends back after each step.
pub struct Blend {
    image: Vec<f32>,
    noise: Vec<f32>,
    mask: Vec<f32>,
    /// A 9-channel UNet's extra input planes (mask, masked-picture latents): it repaints by
    /// itself, so nothing is blended back.
    unet_channels: Vec<f32>,
}

impl Init {
    /// Loads, resizes and encodes the job's picture; `None` for a text-to-image job.
    pub fn prepare(
        sessions: &mut Sessions,
        model: &Model,
        job: &Job,
        h: usize,
        w: usize,
    ) -> Result<Option<Init>, PipelineError> {
        let Some(init) = &job.init else {
            return inpaint_unet_text_to_image(sessions, model, job, h, w);
        };
        let bad = |e: &dyn std::fmt::Display| PipelineError::Job(e.to_string());
        let first = init.first_step(job.steps).map_err(|e| bad(&e))?;
        let loaded = crate::image::init::load(init, job.width, job.height).map_err(|e| bad(&e))?;
        // diffusers' preprocessing: x / 255 then 2x - 1, channels first.
        let plane = (job.width * job.height) as usize;
        let mut chw = vec![0f32; 3 * plane];
        for (i, px) in loaded.rgb.pixels.chunks_exact(3).enumerate() {
            for c in 0..3 {
                chw[c * plane + i] = 2.0 * (f32::from(px[c]) / 255.0) - 1.0;
            }
        }
        let (mean, std) = encode(sessions, model, &chw, job, h, w)?;
        let factor = (job.width as usize / w).max(1);
        let nearest = |m: &[f32]| -> Vec<f32> {
            (0..h * w)
                .map(|k| m[(k / w) * factor * job.width as usize + (k % w) * factor])
                .collect()
        };
        let unet_condition = if inpaint_unet(model) {
            // No mask: all of it repaints (A1111 reads an inpainting model so).
            let pixel_mask = loaded.mask.clone().unwrap_or_else(|| vec![1.0; plane]);
            Some(masked_condition(
                sessions,
                model,
                &chw,
                &pixel_mask,
                nearest(&pixel_mask),
                job,
                (h, w),
            )?)
        } else {
            None
        };
        let mask = loaded.mask.map(|m| nearest(&m).repeat(4));
        Ok(Some(Init {
            mean,
            std,
            pure_noise: (mask.is_some() || unet_condition.is_some()) && init.denoise >= 1.0,
            mask,
            first,
            scaling: model.vae_scaling(),
            unet_condition,
            content: init.masked_content,
            paste: loaded.paste,
        }))
    }

    /// "Only masked": what pastes the decoded image back over the picture.
    pub fn paste_back(&self) -> Option<&PasteBack> {
        self.paste.as_ref()
    }

    /// Latent noise and latent nothing: the masked part of the picture's latents replaced by unit
    /// Gaussian noise (drawn last from the image's generator, so the draws before it are as
    /// without) or by zeros. `mask` is the latent-size mask of one channel.
    fn masked_content(&self, image: &mut [f32], mask: &[f32], rng: &mut TorchRng) {
        let fill: Vec<f32> = match self.content {
            MaskedContent::LatentNoise => rng.randn(image.len()),
            MaskedContent::LatentNothing => vec![0.0; image.len()],
            MaskedContent::Original | MaskedContent::Fill => return,
        };
        let plane = mask.len().max(1);
        for (i, (x, f)) in image.iter_mut().zip(fill).enumerate() {
            let m = mask[i % plane];
            *x = (1.0 - m) * *x + m * f;
        }
    }

    /// The first schedule step that runs.
    pub fn first_step(&self) -> usize {
        self.first
    }

    /// The latents to start sampling from at step [`Self::first_step`], drawing from the image's
    /// generator as diffusers does: the posterior sample, the noise and, when inpainting, the masked
    /// picture's posterior sample (unused by a 4-channel UNet, drawn to keep the generator in step).
    pub fn start(
        &self,
        rng: &mut TorchRng,
        sched: &dyn Scheduler,
        cfg: &SchedulerConfig,
    ) -> (Vec<f32>, Option<Blend>) {
        if let Some(c) = &self.unet_condition {
            return self.start_inpaint_unet(c, rng, sched, cfg);
        }
        let n = self.mean.len();
        let eps = rng.randn(n);
        let image: Vec<f32> = self
            .mean
            .iter()
            .zip(&self.std)
            .zip(&eps)
            .map(|((m, s), e)| self.scaling * (m + s * e))
            .collect();
        let noise = rng.randn(n);
        let mut start = None;
        if let Some(mask) = &self.mask {
            rng.randn(n);
            if self.content != MaskedContent::Original {
                let mut changed = image.clone();
                self.masked_content(&mut changed, mask, rng);
                start = Some(changed);
            }
        }
        let latents = if self.pure_noise {
            let s = sched.init_noise_sigma();
            noise.iter().map(|x| x * s).collect()
        } else {
            add_noise(
                sched,
                cfg,
                start.as_ref().unwrap_or(&image),
                &noise,
                self.first,
            )
        };
        // The kept part blends back from the picture itself (the masked part is never blended).
        let blend = self.mask.as_ref().map(|mask| Blend {
            image,
            noise,
            mask: mask.clone(),
            unet_channels: Vec::new(),
        });
        (latents, blend)
    }

    /// [`Self::start`] for a 9-channel UNet, drawing as diffusers' inpaint pipeline does for one:
    /// the picture's posterior sample only when it is noised (denoise below 1), the noise, then
    /// the masked picture's posterior sample. Text-to-image draws the noise alone.
    fn start_inpaint_unet(
        &self,
        c: &UnetCondition,
        rng: &mut TorchRng,
        sched: &dyn Scheduler,
        cfg: &SchedulerConfig,
    ) -> (Vec<f32>, Option<Blend>) {
        let n = self.mean.len();
        let start = if self.pure_noise {
            let s = sched.init_noise_sigma();
            Err(rng.randn(n).iter().map(|x| x * s).collect())
        } else {
            let image = self.posterior(&self.mean, &self.std, &rng.randn(n));
            Ok((image, rng.randn(n)))
        };
        let masked = if c.text_to_image {
            c.mean.iter().map(|m| self.scaling * m).collect()
        } else {
            self.posterior(&c.mean, &c.std, &rng.randn(n))
        };
        let latents = match start {
            Err(latents) => latents,
            Ok((mut image, noise)) => {
                self.masked_content(&mut image, &c.mask, rng);
                add_noise(sched, cfg, &image, &noise, self.first)
            }
        };
        let mut unet_channels = c.mask.clone();
        unet_channels.extend(masked);
        let blend = Blend {
            image: Vec::new(),
            noise: Vec::new(),
            mask: Vec::new(),
            unet_channels,
        };
        (latents, Some(blend))
    }

    /// A posterior sample `scaling · (mean + std · eps)`.
    fn posterior(&self, mean: &[f32], std: &[f32], eps: &[f32]) -> Vec<f32> {
        mean.iter()
            .zip(std)
            .zip(eps)
            .map(|((m, s), e)| self.scaling * (m + s * e))
            .collect()
    }
}

/// Whether the model's UNet is a 9-channel inpainting one.
pub fn inpaint_unet(model: &Model) -> bool {
    model
        .component(crate::model::ComponentKind::Unet)
        .and_then(|u| u.config.get("in_channels"))
        .and_then(|c| c.as_u64())
        == Some(9)
}

/// The VAE encoder's mean and standard deviation (log-variance clamped to [-30, 20]) of a picture
/// `chw` in [-1, 1].
fn encode(
    sessions: &mut Sessions,
    model: &Model,
    chw: &[f32],
    job: &Job,
    h: usize,
    w: usize,
) -> Result<(Vec<f32>, Vec<f32>), PipelineError> {
    let moments = sessions.encode(model, chw, job.height as usize, job.width as usize)?;
    let n = 4 * h * w;
    if moments.len() != 2 * n {
        return Err(PipelineError::Run {
            what: "VAE encoder",
            message: format!("gave {} values, expected {}", moments.len(), 2 * n),
        });
    }
    let (mean, logvar) = moments.split_at(n);
    let std = logvar
        .iter()
        .map(|&l| (0.5 * l.clamp(-30.0, 20.0)).exp())
        .collect();
    Ok((mean.to_vec(), std))
}

/// The 9-channel UNet's conditioning of a picture: the picture with the repainted part (mask at
/// or above one half, diffusers' binarised mask) set to 0, encoded, and the latent-size mask.
fn masked_condition(
    sessions: &mut Sessions,
    model: &Model,
    chw: &[f32],
    pixel_mask: &[f32],
    latent_mask: Vec<f32>,
    job: &Job,
    (h, w): (usize, usize),
) -> Result<UnetCondition, PipelineError> {
    let plane = pixel_mask.len();
    let masked: Vec<f32> = chw
        .iter()
        .enumerate()
        .map(|(i, &v)| if pixel_mask[i % plane] < 0.5 { v } else { 0.0 })
        .collect();
    let (mean, std) = encode(sessions, model, &masked, job, h, w)?;
    Ok(UnetCondition {
        mask: latent_mask,
        mean,
        std,
        text_to_image: false,
    })
}

/// A text-to-image job on a 9-channel inpainting UNet: everything repaints from a zero picture
/// (A1111's conditioning); `None` for other UNets.
fn inpaint_unet_text_to_image(
    sessions: &mut Sessions,
    model: &Model,
    job: &Job,
    h: usize,
    w: usize,
) -> Result<Option<Init>, PipelineError> {
    if !inpaint_unet(model) {
        return Ok(None);
    }
    let plane = (job.width * job.height) as usize;
    let zero = vec![0f32; 3 * plane];
    let (mean, std) = encode(sessions, model, &zero, job, h, w)?;
    Ok(Some(Init {
        mean: vec![0.0; 4 * h * w],
        std: vec![0.0; 4 * h * w],
        mask: None,
        first: 0,
        pure_noise: true,
        scaling: model.vae_scaling(),
        unet_condition: Some(UnetCondition {
            mask: vec![1.0; h * w],
            mean,
            std,
            text_to_image: true,
        }),
        content: MaskedContent::Original,
        paste: None,
    }))
}

/// A 9-channel UNet's conditioning when a picture of its own repaints all over (the hires fix's
/// second pass): an all-ones mask and the latents of an all-zero picture, as diffusers' inpaint
/// pipeline makes them under an all-white mask (the masked picture is the picture times 0) and
/// A1111's `inpainting_image_conditioning` with no mask.
pub(crate) struct RepaintAll {
    mean: Vec<f32>,
    std: Vec<f32>,
    scaling: f32,
}

impl RepaintAll {
    /// Encodes the zero picture at `job`'s size (latents `h` × `w`); `None` for a 4-channel UNet.
    pub(crate) fn encode(
        sessions: &mut Sessions,
        model: &Model,
        job: &Job,
        h: usize,
        w: usize,
    ) -> Result<Option<RepaintAll>, PipelineError> {
        if !inpaint_unet(model) {
            return Ok(None);
        }
        let zero = vec![0f32; 3 * (job.width * job.height) as usize];
        let (mean, std) = encode(sessions, model, &zero, job, h, w)?;
        Ok(Some(RepaintAll {
            mean,
            std,
            scaling: model.vae_scaling(),
        }))
    }

    /// The UNet's extra planes for one image: the zero picture's posterior sample is drawn from the
    /// image's generator after its start latents, where diffusers' inpaint pipeline draws it.
    pub(crate) fn blend(&self, rng: &mut TorchRng) -> Blend {
        let eps = rng.randn(self.mean.len());
        let mut unet_channels = vec![1.0; self.mean.len() / 4];
        unet_channels.extend(
            self.mean
                .iter()
                .zip(&self.std)
                .zip(eps)
                .map(|((m, s), e)| self.scaling * (m + s * e)),
        );
        Blend {
            image: Vec::new(),
            noise: Vec::new(),
            mask: Vec::new(),
            unet_channels,
        }
    }
}

impl Init {
    /// An image-to-image start from VAE encoder moments `[8, h, w]` made elsewhere (the hires
    /// fix's upscaled picture), no mask; `None` when they do not split into mean and log-variance.
    pub(crate) fn from_moments(moments: &[f32], first: usize, scaling: f32) -> Option<Init> {
        if moments.is_empty() || !moments.len().is_multiple_of(2) {
            return None;
        }
        let (mean, logvar) = moments.split_at(moments.len() / 2);
        Some(Init {
            mean: mean.to_vec(),
            std: logvar
                .iter()
                .map(|&l| (0.5 * l.clamp(-30.0, 20.0)).exp())
                .collect(),
            mask: None,
            first,
            pure_noise: false,
            scaling,
            unet_condition: None,
            content: MaskedContent::Original,
            paste: None,
        })
    }
}

impl Blend {
    /// The planes a 9-channel UNet takes after the latents (empty for a 4-channel one).
    pub fn unet_channels(&self) -> &[f32] {
        &self.unet_channels
    }

    /// After step `i` of the schedule: the kept part is the picture noised to the next step's level
    /// (the clean picture after the last step), the repainted part the sampler's latents.
    pub fn apply(
        &self,
        latents: &mut [f32],
        sched: &dyn Scheduler,
        cfg: &SchedulerConfig,
        i: usize,
    ) {
        if !self.unet_channels.is_empty() {
            return;
        }
        let next = i + 1;
        let kept = if next < sched.timesteps().len() {
            add_noise(sched, cfg, &self.image, &self.noise, next)
        } else {
            self.image.clone()
        };
        for ((x, k), m) in latents.iter_mut().zip(&kept).zip(&self.mask) {
            *x = (1.0 - m) * k + m * *x;
        }
    }
}

/// diffusers' `scheduler.add_noise(original, noise, t)` at schedule step `i`, for every scheduler
/// from its noise level σ: samplers whose latents carry σ (they divide the UNet input, Euler's
/// family) take `original + σ·noise`; the variance-preserving ones (DDIM, DPM-Solver) take
/// `(original + σ·noise) / √(σ² + 1)` = `√ᾱ·original + √(1-ᾱ)·noise`. DDIM has no σ list: its σ
/// comes from ᾱ at the step's timestep.
pub fn add_noise(
    sched: &dyn Scheduler,
    cfg: &SchedulerConfig,
    original: &[f32],
    noise: &[f32],
    i: usize,
) -> Vec<f32> {
    let variance_preserving = sched.input_divisor(i) == 1.0;
    let (a, b) = match sched.sigmas() {
        Some(s) => {
            let sigma = s[i] as f32;
            if variance_preserving {
                let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
                (alpha, sigma * alpha)
            } else {
                (1.0, sigma)
            }
        }
        None => {
            let t = sched.timesteps()[i].round() as usize;
            let ac = alphas_cumprod(cfg);
            let abar = ac.get(t).copied().unwrap_or(1.0);
            (abar.sqrt(), (1.0 - abar).sqrt())
        }
    };
    original
        .iter()
        .zip(noise)
        .map(|(o, e)| a * o + b * e)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Sampler;
    use crate::pipeline::schedulers::build;

    fn sd15() -> SchedulerConfig {
        SchedulerConfig::from_json_str(
            r#"{"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
            "beta_schedule": "scaled_linear", "steps_offset": 1, "set_alpha_to_one": false}"#,
        )
        .unwrap()
    }

    /// Each kind of scheduler noises a zero picture with unit noise to its own level: Euler to σ,
    /// DPM-Solver and DDIM to √(1-ᾱ) (both variance preserving, so √ᾱ² + √(1-ᾱ)² = 1).
    #[test]
    fn add_noise_uses_each_schedulers_noise_level() {
        let cfg = sd15();
        let ac = alphas_cumprod(&cfg);
        for sampler in [Sampler::Euler, Sampler::DpmPp2m, Sampler::Ddim] {
            let s = build(sampler, &cfg, 10);
            let got = add_noise(&*s, &cfg, &[0.0, 1.0], &[1.0, 0.0], 3);
            let t = s.timesteps()[3];
            match sampler {
                Sampler::Euler => {
                    let sigma = s.sigmas().unwrap()[3] as f32;
                    assert!((got[0] - sigma).abs() < 1e-5, "{sampler:?} {got:?}");
                    assert_eq!(got[1], 1.0);
                }
                _ => {
                    // The σ list of DPM-Solver is interpolated at fractional t; DDIM's t is whole.
                    let abar = ac[t.round() as usize];
                    let tol = if sampler == Sampler::Ddim { 1e-6 } else { 1e-2 };
                    assert!(
                        (got[0] - (1.0 - abar).sqrt()).abs() < tol,
                        "{sampler:?} {got:?}"
                    );
                    assert!((got[0].powi(2) + got[1].powi(2) - 1.0).abs() < 1e-5);
                }
            }
        }
    }

    /// Latent noise and latent nothing replace exactly the masked latents (zeros, or unit noise
    /// drawn from the generator); original leaves them and draws nothing.
    #[test]
    fn masked_content_replaces_only_the_masked_latents() {
        let mut init = Init::from_moments(&[0.5; 16], 0, 1.0).unwrap();
        let mask = [1.0, 0.0, 0.0, 1.0];
        let picture = vec![3.0f32; 8];
        let mut rng = TorchRng::new(7);
        init.content = MaskedContent::LatentNothing;
        let mut x = picture.clone();
        init.masked_content(&mut x, &mask, &mut rng);
        assert_eq!(x, [0.0, 3.0, 3.0, 0.0, 0.0, 3.0, 3.0, 0.0]);
        init.content = MaskedContent::LatentNoise;
        let mut x = picture.clone();
        init.masked_content(&mut x, &mask, &mut rng);
        let noise = TorchRng::new(7).randn(8);
        for (i, v) in x.iter().enumerate() {
            let want = if mask[i % 4] == 1.0 { noise[i] } else { 3.0 };
            assert_eq!(*v, want, "latent {i}");
        }
        init.content = MaskedContent::Original;
        let mut x = picture.clone();
        init.masked_content(&mut x, &mask, &mut rng);
        assert_eq!(x, picture);
        assert_eq!(rng.randn(1), TorchRng::new(7).randn(9)[8..].to_vec());
    }
}
