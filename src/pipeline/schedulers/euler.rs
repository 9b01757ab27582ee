//! [`EulerDiscreteScheduler`]: diffusers' `EulerDiscreteScheduler` (Karras et al. 2022,
//! arXiv:2206.00364, Algorithm 2 without churn), A1111's "Euler". Linear sigma interpolation,
//! final sigma 0, no Karras sigmas; `s_churn` = 0 as diffusers' pipelines use it.

use super::noise_schedule::{alphas_cumprod, interp, train_sigmas};
use super::{euler_timesteps, PredictionType, Scheduler, SchedulerConfig, TimestepSpacing};

#[derive(Debug, Clone)]
pub struct EulerDiscreteScheduler {
    timesteps: Vec<f64>,
    /// One per step plus the final 0 (float32 values).
    sigmas: Vec<f64>,
    init_noise_sigma: f32,
    prediction: PredictionType,
}

impl EulerDiscreteScheduler {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Self {
        let steps = steps.max(1);
        let spacing = cfg.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
        let timesteps = euler_timesteps(cfg, spacing, steps);
        let train = train_sigmas(&alphas_cumprod(cfg));
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| f64::from(interp(f64::from(t), &train) as f32))
            .collect();
        sigmas.push(0.0);
        let init_noise_sigma = sigma_max_noise(&sigmas, spacing);
        EulerDiscreteScheduler {
            timesteps: timesteps.into_iter().map(f64::from).collect(),
            sigmas,
            init_noise_sigma,
            prediction: cfg.prediction_type,
        }
    }
}

/// diffusers scales the initial noise by the largest sigma, or by √(σ²+1) under leading spacing.
pub(super) fn sigma_max_noise(sigmas: &[f64], spacing: TimestepSpacing) -> f32 {
    let max = sigmas.iter().copied().fold(0.0, f64::max) as f32;
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
    }
}

/// The denoised estimate x₀ from the model output at noise level σ (k-diffusion's parametrisation).
pub(super) fn predict_x0(prediction: PredictionType, sigma: f32, sample: f32, out: f32) -> f32 {
    match prediction {
        PredictionType::Epsilon => sample - sigma * out,
        PredictionType::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            out * (-sigma / s2.sqrt()) + sample / s2
        }
        PredictionType::Sample => out,
    }
}

impl Scheduler for EulerDiscreteScheduler {
    fn name(&self) -> &'static str {
        "EulerDiscreteScheduler"
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn input_divisor(&self, i: usize) -> f32 {
        let s = self.sigmas[i] as f32;
        (s * s + 1.0).sqrt()
    }

    fn step(
        &mut self,
        model_output: &[f32],
        i: usize,
        sample: &[f32],
        _noise: &mut dyn FnMut(usize) -> Vec<f32>,
    ) -> Vec<f32> {
        let sigma = self.sigmas[i] as f32;
        let dt = self.sigmas[i + 1] as f32 - sigma;
        sample
            .iter()
            .zip(model_output)
            .map(|(&x, &m)| {
                let derivative = (x - predict_x0(self.prediction, sigma, x, m)) / sigma;
                x + derivative * dt
            })
            .collect()
    }
}
