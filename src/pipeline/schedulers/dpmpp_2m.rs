//! [`DpmSolverMultistepScheduler`]: diffusers' `DPMSolverMultistepScheduler` with
//! `algorithm_type="dpmsolver++"`, `solver_order=2`, midpoint solver (Lu et al. 2022,
//! arXiv:2211.01095), A1111's "DPM++ 2M" and, with Karras sigmas, "DPM++ 2M Karras"; with
//! `algorithm_type="sde-dpmsolver++"` "DPM++ 2M SDE" (noise every step, the last too: fresh
//! normals as diffusers draws them, or A1111's Brownian tree, k-diffusion's query (σ_i, σ_i+1)).
//! First-order on the first and the last step (final sigma 0), second-order in between.

use super::noise_schedule::{
    interp, numpy_arange_down, numpy_linspace, sigma_alphas_cumprod, sigma_to_t, train_sigmas,
};
use super::sigma_schedules::Typed;
use super::{At, Method, Noise, Plan, PredictionType, Sampling, SchedulerConfig, TimestepSpacing};

#[derive(Debug, Clone)]
pub struct DpmSolverMultistepScheduler {
    prediction: PredictionType,
    /// `algorithm_type="sde-dpmsolver++"`: each step adds fresh noise (A1111's "DPM++ 2M SDE").
    sde: bool,
    /// The data prediction x₀ of the previous step (the multistep history).
    previous_x0: Option<Vec<f32>>,
    /// `solver_order=3` (with `sde`: A1111's "DPM++ 3M SDE"), and the x₀ of the step before the
    /// previous one.
    third_order: bool,
    older_x0: Option<Vec<f32>>,
}

/// The multistep classes' schedule (DPM-Solver, UniPC): integer timesteps over `steps + 1` spaced
/// points, or, for a schedule type, its σ over the whole training range with timesteps from
/// `_sigma_to_t` (rounded where diffusers rounds them, then truncated to int64); σ plus the final 0.
pub(super) fn multistep_schedule(
    cfg: &SchedulerConfig,
    steps: usize,
    typed: Option<Typed>,
) -> Plan {
    let steps = steps.max(1);
    let n = cfg.num_train_timesteps;
    // diffusers' lambda_min_clipped defaults to -inf, so the schedule spans all n timesteps.
    let timesteps: Vec<f64> = match cfg.timestep_spacing.unwrap_or(TimestepSpacing::Linspace) {
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
    let train = train_sigmas(&sigma_alphas_cumprod(cfg));
    let (timesteps, mut sigmas): (Vec<f64>, Vec<f64>) = match typed {
        Some(typed) => {
            let logs: Vec<f32> = train.iter().map(|s| s.ln()).collect();
            let (lo, hi) = (f64::from(train[0]), f64::from(train[n - 1]));
            let s = typed.sigmas(steps, lo, hi, &train);
            let round = typed.rounds_timesteps()
                && cfg.beta_schedule != super::BetaSchedule::SquaredcosCapV2;
            let t = s
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
            (t, s.into_iter().map(|v| f64::from(v as f32)).collect())
        }
        None => {
            let s = timesteps
                .iter()
                .map(|&t| f64::from(interp(t, &train) as f32))
                .collect();
            (timesteps, s)
        }
    };
    sigmas.push(0.0);
    // diffusers hands the UNet int64 timesteps; k-diffusion (A1111) fractional ones.
    if typed.is_some_and(|t| t.a1111) {
        return Plan::unscaled(timesteps, sigmas);
    }
    Plan::unscaled(timesteps.into_iter().map(f64::trunc).collect(), sigmas)
}

impl DpmSolverMultistepScheduler {
    /// `typed`: a schedule type other than automatic (DPM++ 2M Karras passes Karras).
    pub fn new(
        cfg: &SchedulerConfig,
        steps: usize,
        typed: Option<Typed>,
        sde: bool,
    ) -> Sampling<Self> {
        let method = DpmSolverMultistepScheduler {
            prediction: cfg.prediction_type,
            sde,
            previous_x0: None,
            third_order: false,
            older_x0: None,
        };
        Sampling::new(multistep_schedule(cfg, steps, typed), method)
    }

    /// `algorithm_type="sde-dpmsolver++"`, `solver_order=3`: A1111's "DPM++ 3M SDE". Third order
    /// from the third step on, except on the last step and, under 15 steps, the one before.
    pub fn third_order_sde(
        cfg: &SchedulerConfig,
        steps: usize,
        typed: Option<Typed>,
    ) -> Sampling<Self> {
        let mut s = Self::new(cfg, steps, typed, true);
        s.method.third_order = true;
        s
    }

    /// diffusers' `multistep_dpm_solver_third_order_update` for `sde-dpmsolver++`, from the x₀
    /// of this step and the two before (`m`, newest first) at λ `lambdas` = (λ_s0, λ_s1, λ_s2).
    #[allow(clippy::too_many_arguments)]
    fn third_order_update(
        x: &[f32],
        m: [&[f32]; 3],
        lambdas: (f32, f32, f32),
        (alpha_t, sigma_t, sigma_s0): (f32, f32, f32),
        h: f32,
        noise: &[f32],
    ) -> Vec<f32> {
        let (l0, l1, l2) = lambdas;
        let (r0, r1) = ((l0 - l1) / h, (l1 - l2) / h);
        let e2 = 1.0 - (-2.0 * h).exp();
        let ratio = sigma_t / sigma_s0 * (-h).exp();
        let c0 = alpha_t * e2;
        let c1 = alpha_t * (e2 / (-2.0 * h) + 1.0);
        let c2 = alpha_t * ((1.0 - (-2.0 * h).exp() - 2.0 * h) / ((2.0 * h) * (2.0 * h)) - 0.5);
        let c_noise = sigma_t * (1.0 - (-2.0 * h).exp()).sqrt();
        (0..x.len())
            .map(|k| {
                let d1_0 = (1.0 / r0) * (m[0][k] - m[1][k]);
                let d1_1 = (1.0 / r1) * (m[1][k] - m[2][k]);
                let d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1);
                let d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1);
                ratio * x[k] + c0 * m[0][k] + c1 * d1 + c2 * d2 + c_noise * noise[k]
            })
            .collect()
    }
}

/// (α_t, σ_t) of the VP process for a k-diffusion σ, in float32 as diffusers computes them.
pub(super) fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// λ = log(α/σ), the half log-SNR; +∞ at σ = 0.
pub(super) fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

impl Method for DpmSolverMultistepScheduler {
    const NAME: &'static str = "DPMSolverMultistepScheduler";

    fn brownian(&self) -> bool {
        self.sde
    }

    fn advance(&mut self, plan: &Plan, mut at: At<'_>, noise: Noise<'_>) -> Vec<f32> {
        let (i, sample, model_output) = (at.i, at.x, at.out);
        let (sigma, next) = (plan.sigmas[i] as f32, plan.sigmas[i + 1] as f32);
        if i == 0 {
            self.previous_x0 = None;
            self.older_x0 = None;
        }
        let (alpha_s0, sigma_s0) = alpha_sigma(plan.sigmas[i] as f32);
        let (alpha_t, sigma_t) = alpha_sigma(plan.sigmas[i + 1] as f32);
        let x0 = data_prediction(self.prediction, alpha_s0, sigma_s0, sample, model_output);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let h = lambda(alpha_t, sigma_t) - lambda_s0;
        let n = plan.timesteps.len();
        let last = i + 1 == n;
        let third = self.third_order && !last && !(i + 2 == n && n < 15);
        if let (true, Some(m1), Some(m2)) = (third, &self.previous_x0, &self.older_x0) {
            let lambda_at = |j: usize| {
                let (a, s) = alpha_sigma(plan.sigmas[j] as f32);
                lambda(a, s)
            };
            let lambdas = (lambda_s0, lambda_at(i - 1), lambda_at(i - 2));
            let noise = at.sde_noise(noise, sigma, next, sample.len());
            let scales = (alpha_t, sigma_t, sigma_s0);
            let out = Self::third_order_update(sample, [&x0, m1, m2], lambdas, scales, h, &noise);
            self.older_x0 = self.previous_x0.replace(x0);
            return out;
        }
        // D1 = (x0_s0 - x0_s1) / r0 with r0 = h_prev / h, second order (midpoint) between the
        // first step and the last.
        let d1_scale = match (&self.previous_x0, last) {
            (Some(_), false) => {
                let (alpha_s1, sigma_s1) = alpha_sigma(plan.sigmas[i - 1] as f32);
                let r0 = (lambda_s0 - lambda(alpha_s1, sigma_s1)) / h;
                Some(1.0 / r0)
            }
            _ => None,
        };
        let prev = self.previous_x0.as_deref().unwrap_or(&[]);
        let d1 = |k: usize| d1_scale.map_or(0.0, |inv_r0| inv_r0 * (x0[k] - prev[k]));
        let out: Vec<f32> = if self.sde {
            let noise = at.sde_noise(noise, sigma, next, sample.len());
            let e = (-h).exp();
            let (ratio, c0) = (sigma_t / sigma_s0 * e, alpha_t * (1.0 - (-2.0 * h).exp()));
            let c_noise = sigma_t * (1.0 - (-2.0 * h).exp()).sqrt();
            (0..sample.len())
                .map(|k| ratio * sample[k] + c0 * x0[k] + 0.5 * c0 * d1(k) + c_noise * noise[k])
                .collect()
        } else {
            let ratio = sigma_t / sigma_s0;
            let c0 = alpha_t * ((-h).exp() - 1.0);
            (0..sample.len())
                .map(|k| ratio * sample[k] - c0 * x0[k] - 0.5 * c0 * d1(k))
                .collect()
        };
        self.older_x0 = self.previous_x0.replace(x0);
        out
    }
}

/// diffusers' `convert_model_output` for the data-predicting solvers: x₀ from the model output.
pub(super) fn data_prediction(
    prediction: PredictionType,
    alpha: f32,
    sigma: f32,
    sample: &[f32],
    model_output: &[f32],
) -> Vec<f32> {
    sample
        .iter()
        .zip(model_output)
        .map(|(&x, &m)| match prediction {
            PredictionType::Epsilon => (x - sigma * m) / alpha,
            PredictionType::VPrediction => alpha * x - sigma * m,
            PredictionType::Sample => m,
        })
        .collect()
}
