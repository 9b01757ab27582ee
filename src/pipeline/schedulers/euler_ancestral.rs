//! [`EulerAncestralDiscreteScheduler`]: diffusers' `EulerAncestralDiscreteScheduler`, A1111's
//! "Euler a" (k-diffusion's `sample_euler_ancestral`, η = 1): an Euler step down to σ_down, then
//! fresh noise scaled by σ_up. Every step draws noise, the last one too (as diffusers does).

use super::euler::{discrete_schedule, predict_x0};
use super::sigma_schedules::Typed;
use super::{draw, Plan, PredictionType, Scheduler, SchedulerConfig};

#[derive(Debug, Clone)]
pub struct EulerAncestralDiscreteScheduler {
    plan: Plan,
    prediction: PredictionType,
}

impl EulerAncestralDiscreteScheduler {
    /// `typed`: a schedule type other than automatic. diffusers' class has none; they are set up
    /// as its `EulerDiscreteScheduler` sets them up.
    pub fn new(cfg: &SchedulerConfig, steps: usize, typed: Option<Typed>) -> Self {
        EulerAncestralDiscreteScheduler {
            plan: discrete_schedule(cfg, steps, typed),
            prediction: cfg.prediction_type,
        }
    }
}

impl Scheduler for EulerAncestralDiscreteScheduler {
    fn name(&self) -> &'static str {
        "EulerAncestralDiscreteScheduler"
    }

    fn plan(&self) -> &Plan {
        &self.plan
    }

    fn step(
        &mut self,
        model_output: &[f32],
        i: usize,
        sample: &[f32],
        noise: &mut dyn FnMut(usize) -> Vec<f32>,
    ) -> Vec<f32> {
        let (from, to) = (self.plan.sigmas[i] as f32, self.plan.sigmas[i + 1] as f32);
        let (from2, to2) = (from * from, to * to);
        let sigma_up = (to2 * (from2 - to2) / from2).sqrt();
        let sigma_down = (to2 - sigma_up * sigma_up).sqrt();
        let dt = sigma_down - from;
        let noise = draw(noise, sample.len());
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
