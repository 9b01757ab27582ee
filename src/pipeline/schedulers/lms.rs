//! [`LmsDiscreteScheduler`]: diffusers' `LMSDiscreteScheduler` at its pipelines' order 4, A1111's
//! "LMS" (k-diffusion's `sample_lms`): a linear multistep method on the ODE slopes in σ, whose
//! coefficients integrate the Lagrange basis over each step (exactly here, by Gauss–Legendre
//! quadrature; diffusers uses scipy's `quad`, to ~1e-7 in float32).

use super::euler::{discrete_schedule, slopes};
use super::sigma_schedules::Typed;
use super::{At, Method, Noise, Plan, PredictionType, Sampling, SchedulerConfig};

/// The order diffusers' `step` defaults to.
const ORDER: usize = 4;

#[derive(Debug, Clone)]
pub struct LmsDiscreteScheduler {
    prediction: PredictionType,
    /// The last `ORDER` slopes, newest last.
    derivatives: Vec<Vec<f32>>,
}

impl LmsDiscreteScheduler {
    pub fn new(cfg: &SchedulerConfig, steps: usize, typed: Option<Typed>) -> Sampling<Self> {
        let method = LmsDiscreteScheduler {
            prediction: cfg.prediction_type,
            derivatives: Vec::new(),
        };
        Sampling::new(discrete_schedule(cfg, steps, typed), method)
    }

    /// ∫ from σ_i to σ_{i+1} of the Lagrange basis polynomial of knot `i - current` over the
    /// knots σ_i, σ_{i-1}, ..., σ_{i-order+1}.
    fn coefficient(sigmas: &[f64], order: usize, i: usize, current: usize) -> f64 {
        let basis = |tau: f64| {
            (0..order)
                .filter(|&k| k != current)
                .map(|k| (tau - sigmas[i - k]) / (sigmas[i - current] - sigmas[i - k]))
                .product::<f64>()
        };
        // Three Gauss–Legendre nodes integrate the cubic (order 4) basis exactly.
        let (a, b) = (sigmas[i], sigmas[i + 1]);
        let (mid, half) = ((a + b) / 2.0, (b - a) / 2.0);
        let node = (0.6f64).sqrt();
        half * (5.0 / 9.0 * basis(mid - half * node)
            + 8.0 / 9.0 * basis(mid)
            + 5.0 / 9.0 * basis(mid + half * node))
    }
}

impl Method for LmsDiscreteScheduler {
    const NAME: &'static str = "LMSDiscreteScheduler";

    fn advance(&mut self, plan: &Plan, at: At<'_>, _noise: Noise<'_>) -> Vec<f32> {
        let i = at.i;
        if i == 0 {
            self.derivatives.clear();
        }
        let sigma = plan.sigmas[i] as f32;
        self.derivatives
            .push(slopes(self.prediction, sigma, at.x, at.out));
        if self.derivatives.len() > ORDER {
            self.derivatives.remove(0);
        }
        let order = (i + 1).min(ORDER);
        let coeffs: Vec<f32> = (0..order)
            .map(|c| Self::coefficient(&plan.sigmas, order, i, c) as f32)
            .collect();
        let mut out = at.x.to_vec();
        // Newest slope with the first coefficient, as diffusers zips them with reversed history.
        for (c, d) in coeffs.iter().zip(self.derivatives.iter().rev()) {
            for (o, &v) in out.iter_mut().zip(d) {
                *o += c * v;
            }
        }
        out
    }
}
