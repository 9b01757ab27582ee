//! [`EulerAncestralDiscreteScheduler`]: diffusers' `EulerAncestralDiscreteScheduler`, A1111's
//! "Euler a" (k-diffusion's `sample_euler_ancestral`, η = 1): an Euler step down to σ_down, then
//! fresh noise scaled by σ_up. Every step draws noise, the last one too (as diffusers does).

use super::euler::{predict_x0, sigma_max_noise};
use super::noise_schedule::{alphas_cumprod, interp, train_sigmas};
use super::{euler_timesteps, PredictionType, Scheduler, SchedulerConfig, TimestepSpacing};

#[derive(Debug, Clone)]
pub struct EulerAncestralDiscreteScheduler {
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    init_noise_sigma: f32,
    prediction: PredictionType,
}

impl EulerAncestralDiscreteScheduler {
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
        EulerAncestralDiscreteScheduler {
            timesteps: timesteps.into_iter().map(f64::from).collect(),
            sigmas,
            init_noise_sigma,
            prediction: cfg.prediction_type,
        }
    }
}

impl Scheduler for EulerAncestralDiscreteScheduler {
    fn name(&self) -> &'static str {
        "EulerAncestralDiscreteScheduler"
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
        noise: &mut dyn FnMut(usize) -> Vec<f32>,
    ) -> Vec<f32> {
        let (from, to) = (self.sigmas[i] as f32, self.sigmas[i + 1] as f32);
        let (from2, to2) = (from * from, to * to);
        let sigma_up = (to2 * (from2 - to2) / from2).sqrt();
        let sigma_down = (to2 - sigma_up * sigma_up).sqrt();
        let dt = sigma_down - from;
        let noise = noise(sample.len());
        assert_eq!(
            noise.len(),
            sample.len(),
            "noise source returned the wrong length"
        );
        sample
            .iter()
            .zip(model_output)
            .zip(&noise)
            .map(|((&x, &m), &z)| {
                let derivative = (x - predict_x0(self.prediction, from, x, m)) / from;
                (x + derivative * dt) + z * sigma_up
            })
            .collect()
    }
}
