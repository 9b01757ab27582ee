//! [`DpmSolverMultistepScheduler`]: diffusers' `DPMSolverMultistepScheduler` with
//! `algorithm_type="dpmsolver++"`, `solver_order=2`, midpoint solver (Lu et al. 2022,
//! arXiv:2211.01095), A1111's "DPM++ 2M" and, with Karras sigmas, "DPM++ 2M Karras".
//! First-order on the first and the last step (final sigma 0), second-order in between.

use super::noise_schedule::{
    alphas_cumprod, interp, karras_sigmas, numpy_arange_down, numpy_linspace, sigma_to_t,
    train_sigmas,
};
use super::{PredictionType, Scheduler, SchedulerConfig, TimestepSpacing};

#[derive(Debug, Clone)]
pub struct DpmSolverMultistepScheduler {
    timesteps: Vec<f64>,
    /// One per step plus the final 0 (float32 values).
    sigmas: Vec<f64>,
    prediction: PredictionType,
    /// The data prediction x₀ of the previous step (the multistep history).
    previous_x0: Option<Vec<f32>>,
}

impl DpmSolverMultistepScheduler {
    pub fn new(cfg: &SchedulerConfig, steps: usize, karras: bool) -> Self {
        let steps = steps.max(1);
        let n = cfg.num_train_timesteps;
        // diffusers' lambda_min_clipped defaults to -inf, so the schedule spans all n timesteps.
        let mut timesteps: Vec<f64> =
            match cfg.timestep_spacing.unwrap_or(TimestepSpacing::Linspace) {
                TimestepSpacing::Linspace => {
                    let mut t: Vec<f64> = numpy_linspace(0.0, (n - 1) as f64, steps + 1)
                        .into_iter()
                        .map(f64::round_ties_even)
                        .rev()
                        .collect();
                    t.pop();
                    t
                }
                TimestepSpacing::Leading => {
                    let ratio = n / (steps + 1);
                    (1..=steps)
                        .rev()
                        .map(|i| (i * ratio + cfg.steps_offset) as f64)
                        .collect()
                }
                TimestepSpacing::Trailing => numpy_arange_down(n as f64, n as f64 / steps as f64)
                    .into_iter()
                    .map(|t| t.round_ties_even() - 1.0)
                    .collect(),
            };
        let train = train_sigmas(&alphas_cumprod(cfg));
        let mut sigmas: Vec<f64> = if karras {
            let logs: Vec<f32> = train.iter().map(|s| s.ln()).collect();
            let (lo, hi) = (f64::from(train[0]), f64::from(train[n - 1]));
            let s = karras_sigmas(lo, hi, steps);
            let round = cfg.beta_schedule != super::BetaSchedule::SquaredcosCapV2;
            timesteps = s
                .iter()
                .map(|&sigma| {
                    let t = sigma_to_t(sigma, &logs);
                    if round {
                        t.round_ties_even()
                    } else {
                        t
                    }
                })
                .collect();
            s.into_iter().map(|v| f64::from(v as f32)).collect()
        } else {
            timesteps
                .iter()
                .map(|&t| f64::from(interp(t, &train) as f32))
                .collect()
        };
        sigmas.push(0.0);
        DpmSolverMultistepScheduler {
            // diffusers hands the UNet int64 timesteps.
            timesteps: timesteps.into_iter().map(f64::trunc).collect(),
            sigmas,
            prediction: cfg.prediction_type,
            previous_x0: None,
        }
    }
}

/// (α_t, σ_t) of the VP process for a k-diffusion σ, in float32 as diffusers computes them.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// λ = log(α/σ), the half log-SNR; +∞ at σ = 0.
fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

impl Scheduler for DpmSolverMultistepScheduler {
    fn name(&self) -> &'static str {
        "DPMSolverMultistepScheduler"
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f64]> {
        Some(&self.sigmas)
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn input_divisor(&self, _i: usize) -> f32 {
        1.0
    }

    fn step(
        &mut self,
        model_output: &[f32],
        i: usize,
        sample: &[f32],
        _noise: &mut dyn FnMut(usize) -> Vec<f32>,
    ) -> Vec<f32> {
        if i == 0 {
            self.previous_x0 = None;
        }
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i] as f32);
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1] as f32);
        let x0: Vec<f32> = sample
            .iter()
            .zip(model_output)
            .map(|(&x, &m)| match self.prediction {
                PredictionType::Epsilon => (x - sigma_s0 * m) / alpha_s0,
                PredictionType::VPrediction => alpha_s0 * x - sigma_s0 * m,
                PredictionType::Sample => m,
            })
            .collect();
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda(alpha_t, sigma_t) - lambda_s0;
        let ratio = sigma_t / sigma_s0;
        let c0 = alpha_t * ((-h).exp() - 1.0);
        let last = i + 1 == self.timesteps.len();
        let out = match (&self.previous_x0, last) {
            (Some(prev), false) => {
                // Second order (midpoint): D1 = (x0_s0 - x0_s1) / r0 with r0 = h_prev / h.
                let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1] as f32);
                let r0 = (lambda_s0 - lambda(alpha_s1, sigma_s1)) / h;
                let (inv_r0, c1) = (1.0 / r0, 0.5 * c0);
                sample
                    .iter()
                    .zip(&x0)
                    .zip(prev)
                    .map(|((&x, &m0), &m1)| ratio * x - c0 * m0 - c1 * (inv_r0 * (m0 - m1)))
                    .collect()
            }
            // First order (DPM-Solver++ 1 = DDIM) on the first step and, with final σ = 0, the last.
            _ => sample
                .iter()
                .zip(&x0)
                .map(|(&x, &m0)| ratio * x - c0 * m0)
                .collect(),
        };
        self.previous_x0 = Some(x0);
        out
    }
}
