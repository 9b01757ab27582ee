//! [`Kdpm2`]: diffusers' `KDPM2DiscreteScheduler` and `KDPM2AncestralDiscreteScheduler`
//! (k-diffusion's `sample_dpm_2` and `sample_dpm_2_ancestral`, Karras et al. 2022,
//! arXiv:2206.00364 §3 with the DPM-Solver-2 midpoint), A1111's "DPM2" and "DPM2 a". Each step
//! is an Euler step to the log-midpoint of σ_j and σ_j+1 (σ_down for "a"), a UNet call there, and
//! the step from σ_j with that slope; "a" then adds noise σ_up. The last step is Euler to 0.

use super::euler::{discrete_schedule, euler_move, slopes};
use super::euler_ancestral::ancestral_step;
use super::midpoint::{call, euler_to_zero, lerp_half, with_midpoints, Call};
use super::sigma_schedules::Typed;
use super::{draw, At, Method, Noise, Plan, PredictionType, Sampling, SchedulerConfig};

#[derive(Debug, Clone)]
pub struct Kdpm2 {
    prediction: PredictionType,
    ancestral: bool,
    /// The sample the step started from, between its two calls.
    start: Option<Vec<f32>>,
}

impl Kdpm2 {
    /// `ancestral`: DPM2 a. `typed`: a schedule type other than automatic.
    pub fn new(
        cfg: &SchedulerConfig,
        steps: usize,
        typed: Option<Typed>,
        ancestral: bool,
    ) -> Sampling<Self> {
        let round = typed.is_some_and(|t| t.rounds_timesteps());
        let base = discrete_schedule(cfg, steps, typed);
        // diffusers interpolates log σ in float32 (`sigmas.log().lerp(..., 0.5).exp()`).
        let plan = if ancestral {
            with_midpoints(cfg, base, round, |s, next| {
                let (down, _) = ancestral_step(s, next);
                lerp_half(s.ln(), down.ln()).exp()
            })
        } else {
            with_midpoints(cfg, base, round, |s, next| {
                lerp_half(next.ln(), s.ln()).exp()
            })
        };
        let method = Kdpm2 {
            prediction: cfg.prediction_type,
            ancestral,
            start: None,
        };
        Sampling::new(plan, method)
    }
}

impl Method for Kdpm2 {
    const NAME: &'static str = "KDPM2DiscreteScheduler";

    fn advance(&mut self, plan: &Plan, at: At<'_>, noise: Noise<'_>) -> Vec<f32> {
        let At { i, out, x, .. } = at;
        match call(plan, i) {
            Call::Last { sigma } => euler_to_zero(self.prediction, sigma, x, out),
            Call::First { sigma, mid, .. } => {
                self.start = Some(x.to_vec());
                euler_move(x, &slopes(self.prediction, sigma, x, out), mid - sigma)
            }
            Call::Second { sigma, mid, next } => {
                let start = self.start.take().unwrap_or_else(|| x.to_vec());
                let d = slopes(self.prediction, mid, x, out);
                if !self.ancestral {
                    return euler_move(&start, &d, next - sigma);
                }
                let (down, up) = ancestral_step(sigma, next);
                let moved = euler_move(&start, &d, down - sigma);
                let z = draw(noise, x.len());
                moved.iter().zip(&z).map(|(&v, &z)| v + z * up).collect()
            }
        }
    }
}
