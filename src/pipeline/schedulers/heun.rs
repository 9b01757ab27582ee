//! [`HeunDiscreteScheduler`]: diffusers' `HeunDiscreteScheduler` (Karras et al. 2022,
//! arXiv:2206.00364, Algorithm 1 without churn), A1111's "Heun". Two UNet calls per step: an Euler
//! step, then the average of both slopes; the last step is Euler only (final σ 0). Its timestep
//! list repeats every timestep after the first, so `2 * steps - 1` UNet calls in all.

use super::euler::{discrete_schedule, predict_x0};
use super::sigma_schedules::Typed;
use super::{Plan, PredictionType, Scheduler, SchedulerConfig};

#[derive(Debug, Clone)]
pub struct HeunDiscreteScheduler {
    /// Timesteps `[t0, t1, t1, t2, t2, ...]`, σ `[σ0, σ1, σ1, ..., σn-1, σn-1, 0]`.
    plan: Plan,
    prediction: PredictionType,
    /// Between the two halves of a step: the first slope, dt and the sample it started from.
    pending: Option<(Vec<f32>, f32, Vec<f32>)>,
}

impl HeunDiscreteScheduler {
    pub fn new(cfg: &SchedulerConfig, steps: usize, typed: Option<Typed>) -> Self {
        let s = discrete_schedule(cfg, steps, typed);
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
        HeunDiscreteScheduler {
            plan: Plan {
                timesteps,
                sigmas,
                ..s
            },
            prediction: cfg.prediction_type,
            pending: None,
        }
    }
}

impl Scheduler for HeunDiscreteScheduler {
    fn name(&self) -> &'static str {
        "HeunDiscreteScheduler"
    }

    fn plan(&self) -> &Plan {
        &self.plan
    }

    fn step(
        &mut self,
        model_output: &[f32],
        i: usize,
        sample: &[f32],
        _noise: &mut dyn FnMut(usize) -> Vec<f32>,
    ) -> Vec<f32> {
        if i == 0 {
            self.pending = None;
        }
        match self.pending.take() {
            None => {
                let (sigma, next) = (self.plan.sigmas[i] as f32, self.plan.sigmas[i + 1] as f32);
                let derivative: Vec<f32> = sample
                    .iter()
                    .zip(model_output)
                    .map(|(&x, &m)| (x - predict_x0(self.prediction, sigma, x, m)) / sigma)
                    .collect();
                let dt = next - sigma;
                let out = sample
                    .iter()
                    .zip(&derivative)
                    .map(|(&x, &d)| x + d * dt)
                    .collect();
                self.pending = Some((derivative, dt, sample.to_vec()));
                out
            }
            Some((first, dt, start)) => {
                // The second call is at the σ the first half stepped to.
                let next = self.plan.sigmas[i] as f32;
                sample
                    .iter()
                    .zip(model_output)
                    .zip(first.iter().zip(&start))
                    .map(|((&x, &m), (&d1, &x0))| {
                        let d2 = (x - predict_x0(self.prediction, next, x, m)) / next;
                        x0 + (d1 + d2) / 2.0 * dt
                    })
                    .collect()
            }
        }
    }
}
