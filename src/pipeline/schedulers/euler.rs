//! [`EulerDiscreteScheduler`]: diffusers' `EulerDiscreteScheduler` (Karras et al. 2022,
//! arXiv:2206.00364, Algorithm 2 without churn), A1111's "Euler". Linear sigma interpolation,
//! final sigma 0; `s_churn` = 0 as diffusers' pipelines use it. [`discrete_schedule`] is the
//! σ schedule the Euler-family classes (Euler, Euler a, Heun, LMS) share, schedule types included.

use super::noise_schedule::{interp, sigma_alphas_cumprod, sigma_to_t, train_sigmas};
use super::sigma_schedules::Typed;
use super::{
    euler_timesteps, At, Method, Noise, Plan, PredictionType, Sampling, SchedulerConfig,
    TimestepSpacing,
};

/// The Euler family's [`Plan`] (σ with the final 0, input scaled), as diffusers' `set_timesteps`
/// of those classes: σ interpolated at the spaced timesteps, or, for
/// a schedule type, its σ between the first and last of those, with fractional timesteps from
/// `_sigma_to_t`.
pub(super) fn discrete_schedule(cfg: &SchedulerConfig, steps: usize, typed: Option<Typed>) -> Plan {
    let steps = steps.max(1);
    let spacing = cfg.timestep_spacing.unwrap_or(TimestepSpacing::Linspace);
    let mut timesteps: Vec<f32> = euler_timesteps(cfg, spacing, steps);
    let train = train_sigmas(&sigma_alphas_cumprod(cfg));
    let mut sigmas: Vec<f64> = timesteps
        .iter()
        .map(|&t| interp(f64::from(t), &train))
        .collect();
    if let Some(typed) = typed {
        let (lo, hi) = (sigmas[sigmas.len() - 1], sigmas[0]);
        sigmas = typed.sigmas(steps, lo, hi, &train);
        let logs: Vec<f32> = train.iter().map(|s| s.ln()).collect();
        timesteps = sigmas
            .iter()
            .map(|&s| sigma_to_t(s, &logs) as f32)
            .collect();
    }
    let mut sigmas: Vec<f64> = sigmas.into_iter().map(|s| f64::from(s as f32)).collect();
    sigmas.push(0.0);
    // k-diffusion (A1111) starts from noise × σ_max whatever the spacing.
    let a1111 = typed.is_some_and(|t| t.a1111);
    Plan {
        timesteps: timesteps.into_iter().map(f64::from).collect(),
        init_noise_sigma: if a1111 {
            sigma_max_noise(&sigmas, TimestepSpacing::Linspace)
        } else {
            sigma_max_noise(&sigmas, spacing)
        },
        sigmas,
        scales_input: true,
    }
}

#[derive(Debug, Clone)]
pub struct EulerDiscreteScheduler {
    prediction: PredictionType,
}

impl EulerDiscreteScheduler {
    /// `typed`: a schedule type other than automatic (diffusers' `use_karras_sigmas` and kin).
    pub fn new(cfg: &SchedulerConfig, steps: usize, typed: Option<Typed>) -> Sampling<Self> {
        let method = EulerDiscreteScheduler {
            prediction: cfg.prediction_type,
        };
        Sampling::new(discrete_schedule(cfg, steps, typed), method)
    }
}

/// diffusers scales the initial noise by the largest sigma, or by √(σ²+1) under leading spacing.
pub(super) fn sigma_max_noise(sigmas: &[f64], spacing: TimestepSpacing) -> f32 {
    let max = sigmas.iter().copied().fold(0.0, f64::max) as f32;
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
    }
}

/// The denoised estimate x₀ from the model output at noise level σ (k-diffusion's parametrisation).
pub(super) fn predict_x0(prediction: PredictionType, sigma: f32, sample: f32, out: f32) -> f32 {
    match prediction {
        PredictionType::Epsilon => sample - sigma * out,
        PredictionType::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            out * (-sigma / s2.sqrt()) + sample / s2
        }
        PredictionType::Sample => out,
    }
}

/// The ODE slopes (x − x₀) / σ of k-diffusion's `to_d` for the model output at σ.
pub(super) fn slopes(prediction: PredictionType, sigma: f32, x: &[f32], out: &[f32]) -> Vec<f32> {
    x.iter()
        .zip(out)
        .map(|(&x, &m)| (x - predict_x0(prediction, sigma, x, m)) / sigma)
        .collect()
}

/// `x + d·dt` per element.
pub(super) fn euler_move(x: &[f32], d: &[f32], dt: f32) -> Vec<f32> {
    x.iter().zip(d).map(|(&x, &d)| x + d * dt).collect()
}

impl Method for EulerDiscreteScheduler {
    const NAME: &'static str = "EulerDiscreteScheduler";

    fn advance(&mut self, plan: &Plan, at: At<'_>, _noise: Noise<'_>) -> Vec<f32> {
        let sigma = plan.sigmas[at.i] as f32;
        let dt = plan.sigmas[at.i + 1] as f32 - sigma;
        euler_move(at.x, &slopes(self.prediction, sigma, at.x, at.out), dt)
    }
}
