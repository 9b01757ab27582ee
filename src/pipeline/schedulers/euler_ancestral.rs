//! [`EulerAncestralDiscreteScheduler`]: diffusers' `EulerAncestralDiscreteScheduler`, A1111's
//! "Euler a" (k-diffusion's `sample_euler_ancestral`, η = 1): an Euler step down to σ_down, then
//! fresh noise scaled by σ_up. Every step draws noise, the last one too (as diffusers does).

use super::euler::{discrete_schedule, predict_x0};
use super::sigma_schedules::Typed;
use super::{draw, At, Method, Noise, Plan, PredictionType, Sampling, SchedulerConfig};

#[derive(Debug, Clone)]
pub struct EulerAncestralDiscreteScheduler {
    prediction: PredictionType,
}

impl EulerAncestralDiscreteScheduler {
    /// `typed`: a schedule type other than automatic. diffusers' class has none; they are set up
    /// as its `EulerDiscreteScheduler` sets them up.
    pub fn new(cfg: &SchedulerConfig, steps: usize, typed: Option<Typed>) -> Sampling<Self> {
        let method = EulerAncestralDiscreteScheduler {
            prediction: cfg.prediction_type,
        };
        Sampling::new(discrete_schedule(cfg, steps, typed), method)
    }
}

/// k-diffusion's `get_ancestral_step` (η = 1), in float32 as diffusers: (σ_down, σ_up). (σ_up
/// ≤ σ_to but for rounding, so k-diffusion's `min(σ_to, σ_up)` is left out, as diffusers does.)
pub(super) fn ancestral_step(from: f32, to: f32) -> (f32, f32) {
    let (from2, to2) = (from * from, to * to);
    let sigma_up = (to2 * (from2 - to2) / from2).sqrt();
    ((to2 - sigma_up * sigma_up).sqrt(), sigma_up)
}

impl Method for EulerAncestralDiscreteScheduler {
    const NAME: &'static str = "EulerAncestralDiscreteScheduler";

    fn advance(&mut self, plan: &Plan, at: At<'_>, noise: Noise<'_>) -> Vec<f32> {
        let (from, to) = (plan.sigmas[at.i] as f32, plan.sigmas[at.i + 1] as f32);
        let (sigma_down, sigma_up) = ancestral_step(from, to);
        let dt = sigma_down - from;
        let noise = draw(noise, at.x.len());
        at.x.iter()
            .zip(at.out)
            .zip(&noise)
            .map(|((&x, &m), &z)| {
                let derivative = (x - predict_x0(self.prediction, from, x, m)) / from;
                (x + derivative * dt) + z * sigma_up
            })
            .collect()
    }
}
