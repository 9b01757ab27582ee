//! [`Tcd`]: diffusers' `TCDScheduler` (Zheng et al. 2024, arXiv:2402.19159), A1111's and
//! ComfyUI's "TCD", for TCD-distilled models and TCD-LoRAs: each step predicts x₀ and ε, noises
//! them to the intermediate timestep s = ⌊(1 − γ)·t_prev⌋ and re-noises from s to t_prev with fresh
//! noise (not after the last step). γ is diffusers' default 0.3 ([`GAMMA`]); timesteps as LCM's.

use super::ddim::x0_and_eps;
use super::lcm::distilled_timesteps;
use super::noise_schedule::alphas_cumprod;
use super::{draw, At, Method, Noise, Plan, PredictionType, Sampling, SchedulerConfig};

/// The stochasticity γ (diffusers' `eta` of `TCDScheduler.step`, default 0.3): 0 is
/// deterministic, 1 the multistep consistency sampler.
pub const GAMMA: f32 = 0.3;

#[derive(Debug, Clone)]
pub struct Tcd {
    alphas_cumprod: Vec<f32>,
    prediction: PredictionType,
}

impl Tcd {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Sampling<Self> {
        let n = cfg.num_train_timesteps;
        let timesteps = distilled_timesteps(n, steps.clamp(1, n));
        let method = Tcd {
            alphas_cumprod: alphas_cumprod(cfg),
            prediction: cfg.prediction_type,
        };
        Sampling::new(Plan::unscaled(timesteps, Vec::new()), method)
    }
}

impl Method for Tcd {
    const NAME: &'static str = "TCDScheduler";

    fn advance(&mut self, plan: &Plan, at: At<'_>, noise: Noise<'_>) -> Vec<f32> {
        let ac = &self.alphas_cumprod;
        let last = at.i + 1 == plan.timesteps.len();
        let t = plan.timesteps[at.i] as usize;
        let prev = plan.timesteps.get(at.i + 1).map_or(0, |&p| p as usize);
        let s = ((1.0 - GAMMA) * prev as f32).floor() as usize;
        let (a_t, a_prev, a_s) = (ac[t], ac[prev], ac[s]);
        let sqrts = (a_t.sqrt(), (1.0 - a_t).sqrt());
        let (sqrt_as, sqrt_bs) = (a_s.sqrt(), (1.0 - a_s).sqrt());
        let noised: Vec<f32> =
            at.x.iter()
                .zip(at.out)
                .map(|(&x, &m)| {
                    let (x0, eps) = x0_and_eps(self.prediction, sqrts, x, m);
                    sqrt_as * x0 + sqrt_bs * eps
                })
                .collect();
        if last {
            return noised;
        }
        let ratio = a_prev / a_s;
        let (keep, fresh) = (ratio.sqrt(), (1.0 - ratio).sqrt());
        let z = draw(noise, at.x.len());
        noised
            .iter()
            .zip(&z)
            .map(|(&d, &z)| keep * d + fresh * z)
            .collect()
    }
}
