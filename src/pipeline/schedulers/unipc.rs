//! [`UniPcMultistepScheduler`]: diffusers' `UniPCMultistepScheduler` with its defaults (Zhao et
//! al. 2023, arXiv:2302.04867): order 2, `bh2`, data prediction, the UniC corrector after every
//! step but the first, lower order on the first and last step. A1111's "UniPC".

use super::dpmpp_2m::{alpha_sigma, data_prediction, lambda, multistep_schedule};
use super::sigma_schedules::Typed;
use super::{At, Method, Noise, Plan, PredictionType, Sampling, SchedulerConfig};

#[derive(Debug, Clone)]
pub struct UniPcMultistepScheduler {
    prediction: PredictionType,
    /// Data predictions x₀ of the last two steps, newest last.
    history: Vec<Vec<f32>>,
    /// The sample the previous predictor started from, and the order it used.
    last: Option<(Vec<f32>, usize)>,
}

impl UniPcMultistepScheduler {
    pub fn new(cfg: &SchedulerConfig, steps: usize, typed: Option<Typed>) -> Sampling<Self> {
        let method = UniPcMultistepScheduler {
            prediction: cfg.prediction_type,
            history: Vec::new(),
            last: None,
        };
        Sampling::new(multistep_schedule(cfg, steps, typed), method)
    }

    /// The ρ of the corrector of order 2: the solution of `R ρ = b` with `R = [[1, 1], [r, 1]]`.
    fn corrector_rhos(hh: f32, r: f32) -> (f32, f32) {
        let b_h = hh.exp_m1();
        let phi0 = b_h / hh - 1.0;
        let b1 = phi0 / b_h;
        let phi1 = phi0 / hh - 0.5;
        let b2 = phi1 * 2.0 / b_h;
        let rho0 = (b1 - b2) / (1.0 - r);
        (rho0, b1 - rho0)
    }
}

impl Method for UniPcMultistepScheduler {
    const NAME: &'static str = "UniPCMultistepScheduler";

    fn advance(&mut self, plan: &Plan, at: At<'_>, _noise: Noise<'_>) -> Vec<f32> {
        let (i, sample, model_output) = (at.i, at.x, at.out);
        let lambda_at = |i: usize| {
            let (a, s) = alpha_sigma(plan.sigmas[i] as f32);
            lambda(a, s)
        };
        if i == 0 {
            self.history.clear();
            self.last = None;
        }
        let (alpha_i, sigma_i) = alpha_sigma(plan.sigmas[i] as f32);
        let x0 = data_prediction(self.prediction, alpha_i, sigma_i, sample, model_output);

        // UniC: correct this sample with the model output at it, from the previous step's start.
        let corrected = match (&self.last, self.history.last()) {
            (Some((last_sample, order)), Some(m0)) => {
                let (alpha_s0, sigma_s0) = alpha_sigma(plan.sigmas[i - 1] as f32);
                let h = lambda(alpha_i, sigma_i) - lambda(alpha_s0, sigma_s0);
                let hh = -h;
                let (h_phi_1, b_h) = (hh.exp_m1(), hh.exp_m1());
                let ratio = sigma_i / sigma_s0;
                let older = (*order == 2).then(|| &self.history[self.history.len() - 2]);
                let (rho_d1, rho_t, r) = match older {
                    Some(_) => {
                        let r = (lambda_at(i - 2) - lambda(alpha_s0, sigma_s0)) / h;
                        let (r0, r1) = Self::corrector_rhos(hh, r);
                        (r0, r1, r)
                    }
                    None => (0.0, 0.5, 1.0),
                };
                (0..sample.len())
                    .map(|k| {
                        let base = ratio * last_sample[k] - alpha_i * h_phi_1 * m0[k];
                        let corr = older.map_or(0.0, |m1| rho_d1 * ((m1[k] - m0[k]) / r));
                        base - alpha_i * b_h * (corr + rho_t * (x0[k] - m0[k]))
                    })
                    .collect()
            }
            _ => sample.to_vec(),
        };

        self.history.push(x0);
        if self.history.len() > 2 {
            self.history.remove(0);
        }
        // Order 2 once there is a history, 1 on the first and the last step.
        let order = if i == 0 || i + 1 == plan.timesteps.len() {
            1
        } else {
            2
        };
        // UniP: the predictor from the corrected sample.
        let (alpha_t, sigma_t) = alpha_sigma(plan.sigmas[i + 1] as f32);
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_i, sigma_i);
        let hh = -h;
        let (h_phi_1, b_h) = (hh.exp_m1(), hh.exp_m1());
        let ratio = sigma_t / sigma_i;
        let m0 = &self.history[self.history.len() - 1];
        let out = if order == 2 {
            let m1 = &self.history[self.history.len() - 2];
            let r = (lambda_at(i - 1) - lambda(alpha_i, sigma_i)) / h;
            (0..sample.len())
                .map(|k| {
                    let base = ratio * corrected[k] - alpha_t * h_phi_1 * m0[k];
                    base - alpha_t * b_h * (0.5 * ((m1[k] - m0[k]) / r))
                })
                .collect()
        } else {
            (0..sample.len())
                .map(|k| ratio * corrected[k] - alpha_t * h_phi_1 * m0[k])
                .collect()
        };
        self.last = Some((corrected, order));
        out
    }
}
