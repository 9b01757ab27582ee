//! [`DpmPp2sAncestral`]: k-diffusion's `sample_dpmpp_2s_ancestral` (η = 1; Lu et al. 2022,
//! arXiv:2211.01095, DPM-Solver++(2S) with ancestral noise), A1111's "DPM++ 2S a"; diffusers has
//! no class for it. Each step goes from σ_j to σ_down by the single-step second-order solver
//! (a UNet call at the log-midpoint of σ_j and σ_down), then adds noise σ_up; the last step is
//! Euler to 0. σ as the Euler family's, schedule types included.

use super::euler::discrete_schedule;
use super::euler::predict_x0;
use super::euler_ancestral::ancestral_step;
use super::midpoint::{call, euler_to_zero, with_midpoints, Call};
use super::sigma_schedules::Typed;
use super::{draw, At, Method, Noise, Plan, PredictionType, Sampling, SchedulerConfig};

#[derive(Debug, Clone)]
pub struct DpmPp2sAncestral {
    prediction: PredictionType,
    /// The sample the step started from, between its two calls.
    start: Option<Vec<f32>>,
}

/// k-diffusion's `t_fn` and `sigma_fn`: t = −ln σ.
fn t_of(sigma: f32) -> f32 {
    -sigma.ln()
}

fn sigma_of(t: f32) -> f32 {
    (-t).exp()
}

/// (t, t_next, h, σ_fn(s)) of the step from σ to σ_down: t_next = t_fn(σ_down), s = t + h/2.
fn midpoint(sigma: f32, next: f32) -> (f32, f32, f32, f32) {
    let (down, _) = ancestral_step(sigma, next);
    let (t, t_next) = (t_of(sigma), t_of(down));
    let h = t_next - t;
    (t, t_next, h, sigma_of(t + 0.5 * h))
}

impl DpmPp2sAncestral {
    pub fn new(cfg: &SchedulerConfig, steps: usize, typed: Option<Typed>) -> Sampling<Self> {
        let base = discrete_schedule(cfg, steps, typed);
        let plan = with_midpoints(cfg, base, false, |s, next| midpoint(s, next).3);
        let method = DpmPp2sAncestral {
            prediction: cfg.prediction_type,
            start: None,
        };
        Sampling::new(plan, method)
    }
}

impl Method for DpmPp2sAncestral {
    const NAME: &'static str = "k-diffusion sample_dpmpp_2s_ancestral";

    fn advance(&mut self, plan: &Plan, at: At<'_>, noise: Noise<'_>) -> Vec<f32> {
        let At { i, out, x, .. } = at;
        match call(plan, i) {
            Call::Last { sigma } => euler_to_zero(self.prediction, sigma, x, out),
            Call::First { sigma, next, .. } => {
                self.start = Some(x.to_vec());
                let (t, _, h, s) = midpoint(sigma, next);
                let ratio = s / sigma_of(t);
                let c = (-h * 0.5).exp_m1();
                x.iter()
                    .zip(out)
                    .map(|(&x, &m)| ratio * x - c * predict_x0(self.prediction, sigma, x, m))
                    .collect()
            }
            Call::Second { sigma, mid, next } => {
                let start = self.start.take().unwrap_or_else(|| x.to_vec());
                let (_, up) = ancestral_step(sigma, next);
                let (t, t_next, h, _) = midpoint(sigma, next);
                let ratio = sigma_of(t_next) / sigma_of(t);
                let c = (-h).exp_m1();
                let z = draw(noise, x.len());
                start
                    .iter()
                    .zip(x.iter().zip(out))
                    .zip(&z)
                    .map(|((&x0, (&x, &m)), &z)| {
                        let denoised = predict_x0(self.prediction, mid, x, m);
                        (ratio * x0 - c * denoised) + z * up
                    })
                    .collect()
            }
        }
    }
}
