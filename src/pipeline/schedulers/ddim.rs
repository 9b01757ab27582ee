//! [`DdimScheduler`]: diffusers' `DDIMScheduler` with η = 0 (Song et al. 2020, arXiv:2010.02502),
//! A1111's "DDIM". Integer timesteps, no input scaling, deterministic (never draws noise).

use super::noise_schedule::alphas_cumprod;
use super::{At, Method, Noise, Plan, PredictionType, Sampling, SchedulerConfig, TimestepSpacing};

/// The integer timesteps of the ᾱ-stepping classes (DDIM, DDPM) for `steps` ≤ train steps,
/// under the config's spacing (their class default: leading).
pub(super) fn spaced_timesteps(cfg: &SchedulerConfig, steps: usize) -> Vec<i64> {
    let n = cfg.num_train_timesteps;
    match cfg.timestep_spacing.unwrap_or(TimestepSpacing::Leading) {
        TimestepSpacing::Linspace => {
            super::noise_schedule::numpy_linspace(0.0, (n - 1) as f64, steps)
                .into_iter()
                .rev()
                .map(|t| t.round_ties_even() as i64)
                .collect()
        }
        TimestepSpacing::Leading => (0..steps)
            .rev()
            .map(|i| (i * (n / steps) + cfg.steps_offset) as i64)
            .collect(),
        TimestepSpacing::Trailing => {
            super::noise_schedule::numpy_arange_down(n as f64, n as f64 / steps as f64)
                .into_iter()
                .map(|t| t.round_ties_even() as i64 - 1)
                .collect()
        }
    }
}

/// (x₀, ε) from a model output at ᾱ, given (√ᾱ, √(1−ᾱ)), in diffusers' float32 order.
pub(super) fn x0_and_eps(
    prediction: PredictionType,
    (sqrt_a, sqrt_b): (f32, f32),
    x: f32,
    m: f32,
) -> (f32, f32) {
    match prediction {
        PredictionType::Epsilon => ((x - sqrt_b * m) / sqrt_a, m),
        PredictionType::VPrediction => (sqrt_a * x - sqrt_b * m, sqrt_a * m + sqrt_b * x),
        PredictionType::Sample => (m, (x - sqrt_a * m) / sqrt_b),
    }
}

#[derive(Debug, Clone)]
pub struct DdimScheduler {
    /// ᾱ at each step's timestep and at the timestep it steps to (float32).
    alpha_prod: Vec<(f32, f32)>,
    prediction: PredictionType,
    clip: Option<f32>,
}

impl DdimScheduler {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Sampling<Self> {
        let n = cfg.num_train_timesteps;
        let steps = steps.clamp(1, n);
        let timesteps = spaced_timesteps(cfg, steps);
        let ac = alphas_cumprod(cfg);
        let final_alpha = if cfg.set_alpha_to_one { 1.0 } else { ac[0] };
        let at = |t: i64| usize::try_from(t).ok().and_then(|t| ac.get(t)).copied();
        // diffusers steps back by train/steps whatever the spacing.
        let stride = (n / steps) as i64;
        let alpha_prod = timesteps
            .iter()
            .map(|&t| {
                (
                    at(t).unwrap_or(final_alpha),
                    at(t - stride).unwrap_or(final_alpha),
                )
            })
            .collect();
        let plan = Plan::unscaled(
            timesteps.into_iter().map(|t| t as f64).collect(),
            Vec::new(),
        );
        let method = DdimScheduler {
            alpha_prod,
            prediction: cfg.prediction_type,
            clip: super::clip_range(cfg, true),
        };
        Sampling::new(plan, method)
    }
}

impl Method for DdimScheduler {
    const NAME: &'static str = "DDIMScheduler";

    fn advance(&mut self, _plan: &Plan, at: At<'_>, _noise: Noise<'_>) -> Vec<f32> {
        let (sample, model_output) = (at.x, at.out);
        let (a_t, a_prev) = self.alpha_prod[at.i];
        let (sqrt_a, sqrt_b) = (a_t.sqrt(), (1.0 - a_t).sqrt());
        let (sqrt_a_prev, dir) = (a_prev.sqrt(), (1.0 - a_prev).sqrt());
        sample
            .iter()
            .zip(model_output)
            .map(|(&x, &m)| {
                let (mut x0, eps) = x0_and_eps(self.prediction, (sqrt_a, sqrt_b), x, m);
                if let Some(r) = self.clip {
                    x0 = x0.clamp(-r, r);
                }
                sqrt_a_prev * x0 + dir * eps
            })
            .collect()
    }
}
