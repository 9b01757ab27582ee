//! [`EulerCfgPp`]: ComfyUI's `sample_euler_cfg_pp` (CFG++, Chung et al. 2024,
//! arXiv:2406.08070), "Euler CFG++": the Euler step re-noises the guided x₀ with the slope of the
//! *unconditional* prediction, x_next = x₀_cfg + σ_next·(x − x₀_uncond)/σ. It needs both halves of
//! the CFG pair ([`super::Scheduler::step_guided`]); its guidance scale is meant to be small
//! (about 0.5–2). σ as the Euler family's, schedule types included. Without the unconditional
//! output (plain `step`) it is Euler's step.

use super::euler::{discrete_schedule, predict_x0, slopes};
use super::sigma_schedules::Typed;
use super::{At, Method, Noise, Plan, PredictionType, Sampling, SchedulerConfig};

#[derive(Debug, Clone)]
pub struct EulerCfgPp {
    prediction: PredictionType,
}

impl EulerCfgPp {
    pub fn new(cfg: &SchedulerConfig, steps: usize, typed: Option<Typed>) -> Sampling<Self> {
        let method = EulerCfgPp {
            prediction: cfg.prediction_type,
        };
        Sampling::new(discrete_schedule(cfg, steps, typed), method)
    }
}

impl Method for EulerCfgPp {
    const NAME: &'static str = "ComfyUI sample_euler_cfg_pp";

    fn advance(&mut self, plan: &Plan, at: At<'_>, _noise: Noise<'_>) -> Vec<f32> {
        let (sigma, next) = (plan.sigmas[at.i] as f32, plan.sigmas[at.i + 1] as f32);
        let d = slopes(self.prediction, sigma, at.x, at.uncond.unwrap_or(at.out));
        at.x.iter()
            .zip(at.out)
            .zip(&d)
            .map(|((&x, &m), &d)| predict_x0(self.prediction, sigma, x, m) + d * next)
            .collect()
    }
}
