//! [`DpmPpSde`]: diffusers' `DPMSolverSDEScheduler` (k-diffusion's `sample_dpmpp_sde`, r = 1/2,
//! η = 1), A1111's "DPM++ SDE": per step two ancestral DPM-Solver++ half steps, the first to the
//! log-midpoint of σ_j and σ_j+1, the second over the whole step with the midpoint's x₀; the last
//! step is Euler to 0.
//!
//! Noise: diffusers and k-diffusion query a Brownian motion W(σ) (torchsde's Brownian tree) for
//! the increments over [σ_mid, σ_j] and [σ_j+1, σ_j], normalised to unit variance. With
//! [`super::Scheduler::use_brownian_noise`] (A1111's way, the default of a job) those are the
//! values of A1111's tree ([`BrownianNoise`]). Without it ("step" noise) stipple samples the same
//! motion at those points from the seed's generator: two standard normals z₁, z₂ per step (z₁
//! the first increment, z₂ the one from σ_mid to σ_j+1), so the second query is
//! (√a·z₁ + √b·z₂)/√(a+b) with a, b the two interval lengths: the tree's law, not its numbers.

use super::brownian::BrownianNoise;
use super::euler::{discrete_schedule, predict_x0};
use super::midpoint::{call, euler_to_zero, with_midpoints, Call};
use super::sigma_schedules::Typed;
use super::{draw, At, Method, Noise, Plan, PredictionType, Sampling, SchedulerConfig};

#[derive(Debug, Clone)]
pub struct DpmPpSde {
    prediction: PredictionType,
    /// Between the two calls of a step: its start sample and the second Brownian normal z₂.
    pending: Option<(Vec<f32>, Vec<f32>)>,
    /// The first Brownian normal z₁ of the step.
    first: Vec<f32>,
}

fn t_of(sigma: f32) -> f32 {
    -sigma.ln()
}

fn sigma_of(t: f32) -> f32 {
    (-t).exp()
}

/// diffusers' midpoint: σ_fn(t + (t_next − t)/2).
fn midpoint(sigma: f32, next: f32) -> f32 {
    let t = t_of(sigma);
    sigma_of(t + (t_of(next) - t) * 0.5)
}

/// One ancestral DPM-Solver++(1) move of `x` from σ_fn(t) towards σ_fn(t_to) with x₀ `denoised`,
/// plus `noise`·σ_up: the update both half steps make.
fn half_step(x: &[f32], denoised: &[f32], t: f32, t_to: f32, noise: &[f32]) -> Vec<f32> {
    let (from, to) = (sigma_of(t), sigma_of(t_to));
    let up = to.min((to * to * (from * from - to * to) / (from * from)).sqrt());
    let down = (to * to - up * up).sqrt();
    let t_down = t_of(down);
    let ratio = sigma_of(t_down) / from;
    let c = (t - t_down).exp_m1();
    x.iter()
        .zip(denoised)
        .zip(noise)
        .map(|((&x, &d), &z)| (ratio * x - c * d) + z * up)
        .collect()
}

impl DpmPpSde {
    pub fn new(cfg: &SchedulerConfig, steps: usize, typed: Option<Typed>) -> Sampling<Self> {
        let base = discrete_schedule(cfg, steps, typed);
        let plan = with_midpoints(cfg, base, false, midpoint);
        let method = DpmPpSde {
            prediction: cfg.prediction_type,
            pending: None,
            first: Vec::new(),
        };
        Sampling::new(plan, method)
    }

    /// k-diffusion's `sample_dpmpp_sde` with A1111's Brownian tree: the noise of each half step is
    /// the tree's `noise_sampler(σ_fn(t), σ_fn(s))` over the σ that half step moves between.
    fn with_tree(
        &mut self,
        plan: &Plan,
        i: usize,
        (out, x): (&[f32], &[f32]),
        tree: &mut BrownianNoise,
    ) -> Vec<f32> {
        match call(plan, i) {
            Call::Last { sigma } => euler_to_zero(self.prediction, sigma, x, out),
            Call::First { sigma, next, .. } => {
                let t = t_of(sigma);
                let t_mid = t + (t_of(next) - t) * 0.5;
                let z = tree.between(sigma_of(t), sigma_of(t_mid));
                self.pending = Some((x.to_vec(), Vec::new()));
                half_step(x, &self.denoised(sigma, x, out), t, t_mid, &z)
            }
            Call::Second { sigma, mid, next } => {
                let start = self.pending.take().map_or_else(|| x.to_vec(), |p| p.0);
                let (t, t_next) = (t_of(sigma), t_of(next));
                let z = tree.between(sigma_of(t), sigma_of(t_next));
                half_step(&start, &self.denoised(mid, x, out), t, t_next, &z)
            }
        }
    }

    fn denoised(&self, sigma: f32, x: &[f32], out: &[f32]) -> Vec<f32> {
        x.iter()
            .zip(out)
            .map(|(&x, &m)| predict_x0(self.prediction, sigma, x, m))
            .collect()
    }
}

impl Method for DpmPpSde {
    const NAME: &'static str = "DPMSolverSDEScheduler";

    fn brownian(&self) -> bool {
        true
    }

    fn advance(&mut self, plan: &Plan, at: At<'_>, noise: Noise<'_>) -> Vec<f32> {
        let (i, out, x) = (at.i, at.out, at.x);
        if let Some(tree) = at.brownian {
            return self.with_tree(plan, i, (out, x), tree);
        }
        match call(plan, i) {
            Call::Last { sigma } => euler_to_zero(self.prediction, sigma, x, out),
            Call::First { sigma, next, .. } => {
                let z1 = draw(noise, x.len());
                let z2 = draw(noise, x.len());
                let t = t_of(sigma);
                let t_mid = t + (t_of(next) - t) * 0.5;
                let moved = half_step(x, &self.denoised(sigma, x, out), t, t_mid, &z1);
                self.first = z1;
                self.pending = Some((x.to_vec(), z2));
                moved
            }
            Call::Second { sigma, mid, next } => {
                let (start, z2) = self
                    .pending
                    .take()
                    .unwrap_or_else(|| (x.to_vec(), vec![0.0; x.len()]));
                // W(σ_j) − W(σ_j+1) from its two parts, over unit variance.
                let (a, b) = (sigma - mid, mid - next);
                let (wa, wb, norm) = (a.sqrt(), b.sqrt(), (sigma - next).sqrt());
                let z: Vec<f32> = self
                    .first
                    .iter()
                    .zip(&z2)
                    .map(|(&z1, &z2)| (wa * z1 + wb * z2) / norm)
                    .collect();
                let denoised = self.denoised(mid, x, out);
                half_step(&start, &denoised, t_of(sigma), t_of(next), &z)
            }
        }
    }
}
