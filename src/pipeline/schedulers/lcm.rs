//! [`LcmScheduler`]: diffusers' `LCMScheduler` (Luo et al. 2023, arXiv:2310.04378), A1111's and
//! ComfyUI's "LCM", for LCM-distilled models and LCM-LoRAs: each step jumps to the consistency
//! model's x₀ estimate and re-noises it to the next timestep with fresh noise (not after the last).
//! Timesteps are picked from the 50-step distillation schedule; above 50 steps that schedule is
//! made `steps` long instead (diffusers refuses them).

use super::noise_schedule::alphas_cumprod;
use super::{draw, At, Method, Noise, Plan, PredictionType, Sampling, SchedulerConfig};

/// diffusers' `original_inference_steps` default: the distillation schedule's length.
const ORIGINAL_STEPS: usize = 50;
/// diffusers' `timestep_scaling` default for the boundary-condition scalings.
const TIMESTEP_SCALING: f32 = 10.0;

/// `steps` (1 ≤ steps ≤ n) of the distillation schedule's timesteps, as LCM and TCD pick them.
pub(super) fn distilled_timesteps(n: usize, steps: usize) -> Vec<f64> {
    let original = ORIGINAL_STEPS.max(steps).min(n);
    let k = n / original;
    // The distillation timesteps k-1, 2k-1, ..., counted down, sampled at floor(i * original / steps).
    let origin: Vec<usize> = (1..=original).rev().map(|i| i * k - 1).collect();
    (0..steps)
        .map(|i| origin[(i as f64 * original as f64 / steps as f64).floor() as usize] as f64)
        .collect()
}

#[derive(Debug, Clone)]
pub struct LcmScheduler {
    alphas_cumprod: Vec<f32>,
    prediction: PredictionType,
    clip: Option<f32>,
}

impl LcmScheduler {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Sampling<Self> {
        let n = cfg.num_train_timesteps;
        let steps = steps.clamp(1, n);
        let timesteps = distilled_timesteps(n, steps);
        let method = LcmScheduler {
            alphas_cumprod: alphas_cumprod(cfg),
            prediction: cfg.prediction_type,
            clip: super::clip_range(cfg, false),
        };
        Sampling::new(Plan::unscaled(timesteps, Vec::new()), method)
    }
}

impl Method for LcmScheduler {
    const NAME: &'static str = "LCMScheduler";

    fn advance(&mut self, plan: &Plan, at: At<'_>, noise: Noise<'_>) -> Vec<f32> {
        let (i, sample, model_output) = (at.i, at.x, at.out);
        let t = plan.timesteps[i] as usize;
        let a_t = self.alphas_cumprod[t];
        let (sqrt_a, sqrt_b) = (a_t.sqrt(), (1.0 - a_t).sqrt());
        let scaled = t as f32 * TIMESTEP_SCALING;
        let c_skip = 0.25 / (scaled * scaled + 0.25);
        let c_out = scaled / (scaled * scaled + 0.25).sqrt();
        let denoised: Vec<f32> = sample
            .iter()
            .zip(model_output)
            .map(|(&x, &m)| {
                let mut x0 = match self.prediction {
                    PredictionType::Epsilon => (x - sqrt_b * m) / sqrt_a,
                    PredictionType::Sample => m,
                    PredictionType::VPrediction => sqrt_a * x - sqrt_b * m,
                };
                if let Some(r) = self.clip {
                    x0 = x0.clamp(-r, r);
                }
                c_out * x0 + c_skip * x
            })
            .collect();
        let Some(&next) = plan.timesteps.get(i + 1) else {
            return denoised;
        };
        let a_prev = self.alphas_cumprod[next as usize];
        let (sqrt_a_prev, sqrt_b_prev) = (a_prev.sqrt(), (1.0 - a_prev).sqrt());
        let noise = draw(noise, sample.len());
        denoised
            .iter()
            .zip(&noise)
            .map(|(&d, &z)| sqrt_a_prev * d + sqrt_b_prev * z)
            .collect()
    }
}
