//! [`LmsDiscreteScheduler`]: diffusers' `LMSDiscreteScheduler` at its pipelines' order 4, A1111's
//! "LMS" (k-diffusion's `sample_lms`): a linear multistep method on the ODE slopes in σ, whose
//! coefficients integrate the Lagrange basis over each step (exactly here, by Gauss–Legendre
//! quadrature; diffusers uses scipy's `quad`, to ~1e-7 in float32).

use super::euler::{discrete_schedule, predict_x0};
use super::sigma_schedules::Typed;
use super::{Plan, PredictionType, Scheduler, SchedulerConfig};

/// The order diffusers' `step` defaults to.
const ORDER: usize = 4;

#[derive(Debug, Clone)]
pub struct LmsDiscreteScheduler {
    plan: Plan,
    prediction: PredictionType,
    /// The last `ORDER` slopes, newest last.
    derivatives: Vec<Vec<f32>>,
}

impl LmsDiscreteScheduler {
    pub fn new(cfg: &SchedulerConfig, steps: usize, typed: Option<Typed>) -> Self {
        LmsDiscreteScheduler {
            plan: discrete_schedule(cfg, steps, typed),
            prediction: cfg.prediction_type,
            derivatives: Vec::new(),
        }
    }

    /// ∫ from σ_i to σ_{i+1} of the Lagrange basis polynomial of knot `i - current` over the
    /// knots σ_i, σ_{i-1}, ..., σ_{i-order+1}.
    fn coefficient(&self, order: usize, i: usize, current: usize) -> f64 {
        let basis = |tau: f64| {
            (0..order)
                .filter(|&k| k != current)
                .map(|k| {
                    (tau - self.plan.sigmas[i - k])
                        / (self.plan.sigmas[i - current] - self.plan.sigmas[i - k])
                })
                .product::<f64>()
        };
        // Three Gauss–Legendre nodes integrate the cubic (order 4) basis exactly.
        let (a, b) = (self.plan.sigmas[i], self.plan.sigmas[i + 1]);
        let (mid, half) = ((a + b) / 2.0, (b - a) / 2.0);
        let node = (0.6f64).sqrt();
        half * (5.0 / 9.0 * basis(mid - half * node)
            + 8.0 / 9.0 * basis(mid)
            + 5.0 / 9.0 * basis(mid + half * node))
    }
}

impl Scheduler for LmsDiscreteScheduler {
    fn name(&self) -> &'static str {
        "LMSDiscreteScheduler"
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
            self.derivatives.clear();
        }
        let sigma = self.plan.sigmas[i] as f32;
        let derivative = sample
            .iter()
            .zip(model_output)
            .map(|(&x, &m)| (x - predict_x0(self.prediction, sigma, x, m)) / sigma)
            .collect();
        self.derivatives.push(derivative);
        if self.derivatives.len() > ORDER {
            self.derivatives.remove(0);
        }
        let order = (i + 1).min(ORDER);
        let coeffs: Vec<f32> = (0..order)
            .map(|c| self.coefficient(order, i, c) as f32)
            .collect();
        let mut out = sample.to_vec();
        // Newest slope with the first coefficient, as diffusers zips them with reversed history.
        for (c, d) in coeffs.iter().zip(self.derivatives.iter().rev()) {
            for (o, &v) in out.iter_mut().zip(d) {
                *o += c * v;
            }
        }
        out
    }
}
