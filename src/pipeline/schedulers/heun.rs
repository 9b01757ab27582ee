//! [`HeunDiscreteScheduler`]: diffusers' `HeunDiscreteScheduler` (Karras et al. 2022,
//! arXiv:2206.00364, Algorithm 1 without churn), A1111's "Heun". Two UNet calls per step: an Euler
//! step, then the average of both slopes; the last step is Euler only (final σ 0). Its timestep
//! list repeats every timestep after the first, so `2 * steps - 1` UNet calls in all.

use super::euler::{discrete_schedule, euler_move, slopes};
use super::sigma_schedules::Typed;
use super::{At, Method, Noise, Plan, PredictionType, Sampling, SchedulerConfig};

#[derive(Debug, Clone)]
pub struct HeunDiscreteScheduler {
    prediction: PredictionType,
    /// Between the two halves of a step: the first slope, dt and the sample it started from.
    pending: Option<(Vec<f32>, f32, Vec<f32>)>,
}

/// A plan whose every call but the first is made twice (σ and timesteps `[a0, a1, a1, a2, a2, ...]`,
/// the final σ once): the layout of diffusers' second-order classes.
pub(super) fn doubled(s: Plan) -> Plan {
    let mut timesteps = vec![s.timesteps[0]];
    for &t in &s.timesteps[1..] {
        timesteps.extend([t, t]);
    }
    let n = s.sigmas.len();
    let mut sigmas = vec![s.sigmas[0]];
    for &v in &s.sigmas[1..n - 1] {
        sigmas.extend([v, v]);
    }
    sigmas.push(s.sigmas[n - 1]);
    Plan {
        timesteps,
        sigmas,
        ..s
    }
}

impl HeunDiscreteScheduler {
    /// Timesteps `[t0, t1, t1, t2, t2, ...]`, σ `[σ0, σ1, σ1, ..., σn-1, σn-1, 0]`.
    pub fn new(cfg: &SchedulerConfig, steps: usize, typed: Option<Typed>) -> Sampling<Self> {
        let method = HeunDiscreteScheduler {
            prediction: cfg.prediction_type,
            pending: None,
        };
        Sampling::new(doubled(discrete_schedule(cfg, steps, typed)), method)
    }
}

impl Method for HeunDiscreteScheduler {
    const NAME: &'static str = "HeunDiscreteScheduler";

    fn advance(&mut self, plan: &Plan, at: At<'_>, _noise: Noise<'_>) -> Vec<f32> {
        let At { i, out, x, .. } = at;
        if i == 0 {
            self.pending = None;
        }
        match self.pending.take() {
            None => {
                let (sigma, next) = (plan.sigmas[i] as f32, plan.sigmas[i + 1] as f32);
                let derivative = slopes(self.prediction, sigma, x, out);
                let dt = next - sigma;
                let moved = euler_move(x, &derivative, dt);
                self.pending = Some((derivative, dt, x.to_vec()));
                moved
            }
            Some((first, dt, start)) => {
                // The second call is at the σ the first half stepped to.
                let next = plan.sigmas[i] as f32;
                let second = slopes(self.prediction, next, x, out);
                first
                    .iter()
                    .zip(&second)
                    .zip(&start)
                    .map(|((&d1, &d2), &x0)| x0 + (d1 + d2) / 2.0 * dt)
                    .collect()
            }
        }
    }
}
