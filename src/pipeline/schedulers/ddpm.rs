//! [`Ddpm`]: diffusers' `DDPMScheduler` (Ho et al. 2020, arXiv:2006.11239) with its default
//! `variance_type="fixed_small"`, A1111's "DDPM": ancestral sampling of the posterior
//! q(x_prev | x_t, x₀) between the spaced timesteps, noise drawn at every step whose timestep is
//! above 0. Integer timesteps as DDIM's, no input scaling, no schedule types.

use super::ddim::{spaced_timesteps, x0_and_eps};
use super::noise_schedule::alphas_cumprod;
use super::{draw, At, Method, Noise, Plan, PredictionType, Sampling, SchedulerConfig};

#[derive(Debug, Clone)]
pub struct Ddpm {
    alphas_cumprod: Vec<f32>,
    prediction: PredictionType,
    clip: Option<f32>,
}

impl Ddpm {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Sampling<Self> {
        let steps = steps.clamp(1, cfg.num_train_timesteps);
        let timesteps = spaced_timesteps(cfg, steps);
        let method = Ddpm {
            alphas_cumprod: alphas_cumprod(cfg),
            prediction: cfg.prediction_type,
            clip: super::clip_range(cfg, true),
        };
        let plan = Plan::unscaled(
            timesteps.into_iter().map(|t| t as f64).collect(),
            Vec::new(),
        );
        Sampling::new(plan, method)
    }
}

impl Method for Ddpm {
    const NAME: &'static str = "DDPMScheduler";

    fn advance(&mut self, plan: &Plan, at: At<'_>, noise: Noise<'_>) -> Vec<f32> {
        let ac = &self.alphas_cumprod;
        let at_t = |t: f64| {
            usize::try_from(t as i64)
                .ok()
                .and_then(|t| ac.get(t))
                .copied()
        };
        let t = plan.timesteps[at.i];
        let a_t = at_t(t).unwrap_or(1.0);
        let a_prev = plan
            .timesteps
            .get(at.i + 1)
            .and_then(|&p| at_t(p))
            .unwrap_or(1.0);
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let current_alpha = a_t / a_prev;
        let current_beta = 1.0 - current_alpha;
        let x0_coeff = a_prev.sqrt() * current_beta / b_t;
        let x_coeff = current_alpha.sqrt() * b_prev / b_t;
        let std = (b_prev / b_t * current_beta).max(1e-20).sqrt();
        let z = (t > 0.0).then(|| draw(noise, at.x.len()));
        let sqrts = (a_t.sqrt(), b_t.sqrt());
        at.x.iter()
            .zip(at.out)
            .enumerate()
            .map(|(k, (&x, &m))| {
                let (mut x0, _) = x0_and_eps(self.prediction, sqrts, x, m);
                if let Some(r) = self.clip {
                    x0 = x0.clamp(-r, r);
                }
                let mean = x0_coeff * x0 + x_coeff * x;
                mean + z.as_ref().map_or(0.0, |z| std * z[k])
            })
            .collect()
    }
}
