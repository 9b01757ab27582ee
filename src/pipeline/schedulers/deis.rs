//! [`Deis`]: diffusers' `DEISMultistepScheduler` with its defaults (Zhang & Chen 2022,
//! arXiv:2204.13902): `solver_order=2`, `logrho`, lower order on the first step and, under 15
//! steps, the last. A1111's "DEIS". The ε-form multistep update in ρ = σ/α; the schedule is the
//! multistep classes', ending at the smallest training σ (automatic) or the schedule's last σ,
//! not at 0, as diffusers does.

use super::dpmpp_2m::{alpha_sigma, data_prediction, lambda, multistep_schedule};
use super::noise_schedule::{sigma_alphas_cumprod, train_sigmas};
use super::sigma_schedules::Typed;
use super::{At, Method, Noise, Plan, PredictionType, Sampling, SchedulerConfig};

#[derive(Debug, Clone)]
pub struct Deis {
    prediction: PredictionType,
    /// The ε predictions of the previous step (the multistep history).
    previous: Option<Vec<f32>>,
}

impl Deis {
    pub fn new(cfg: &SchedulerConfig, steps: usize, typed: Option<Typed>) -> Sampling<Self> {
        let mut plan = multistep_schedule(cfg, steps, typed);
        let n = plan.sigmas.len();
        plan.sigmas[n - 1] = match typed {
            Some(_) => plan.sigmas[n - 2],
            None => f64::from(train_sigmas(&sigma_alphas_cumprod(cfg))[0]),
        };
        let method = Deis {
            prediction: cfg.prediction_type,
            previous: None,
        };
        Sampling::new(plan, method)
    }
}

/// diffusers' `ind_fn` of the logρ DEIS coefficients.
fn ind(t: f32, b: f32, c: f32) -> f32 {
    t * (-c.ln() + t.ln() - 1.0) / (b.ln() - c.ln())
}

impl Method for Deis {
    const NAME: &'static str = "DEISMultistepScheduler";

    fn advance(&mut self, plan: &Plan, at: At<'_>, _noise: Noise<'_>) -> Vec<f32> {
        let At { i, out, x, .. } = at;
        if i == 0 {
            self.previous = None;
        }
        let steps = plan.timesteps.len();
        let (alpha_s0, sigma_s0) = alpha_sigma(plan.sigmas[i] as f32);
        let (alpha_t, sigma_t) = alpha_sigma(plan.sigmas[i + 1] as f32);
        // diffusers' convert_model_output: x₀, then ε back from it.
        let x0 = data_prediction(self.prediction, alpha_s0, sigma_s0, x, out);
        let eps: Vec<f32> = x
            .iter()
            .zip(&x0)
            .map(|(&x, &d)| (x - alpha_s0 * d) / sigma_s0)
            .collect();
        let lower_final = i + 1 == steps && steps < 15;
        let next = match self.previous.as_ref().filter(|_| !lower_final) {
            None => {
                let h = lambda(alpha_t, sigma_t) - lambda(alpha_s0, sigma_s0);
                let (ratio, c) = (alpha_t / alpha_s0, sigma_t * (h.exp() - 1.0));
                x.iter()
                    .zip(&eps)
                    .map(|(&x, &e)| ratio * x - c * e)
                    .collect()
            }
            Some(m1) => {
                let (alpha_s1, sigma_s1) = alpha_sigma(plan.sigmas[i - 1] as f32);
                let (rho_t, rho_s0, rho_s1) =
                    (sigma_t / alpha_t, sigma_s0 / alpha_s0, sigma_s1 / alpha_s1);
                let coef1 = ind(rho_t, rho_s0, rho_s1) - ind(rho_s0, rho_s0, rho_s1);
                let coef2 = ind(rho_t, rho_s1, rho_s0) - ind(rho_s0, rho_s1, rho_s0);
                x.iter()
                    .zip(&eps)
                    .zip(m1)
                    .map(|((&x, &m0), &m1)| alpha_t * (x / alpha_s0 + coef1 * m0 + coef2 * m1))
                    .collect()
            }
        };
        self.previous = Some(eps);
        next
    }
}
