//! The plan layout of the samplers that call the UNet twice per step, once at σ_j and once at a
//! midpoint m_j ≤ σ_j (DPM2, DPM2 a, DPM++ 2S a, DPM++ SDE): [`with_midpoints`] builds it and
//! [`call`] says what a call index is. The last step has no midpoint (it is an Euler step to 0).

use super::euler::{euler_move, slopes};
use super::noise_schedule::{sigma_alphas_cumprod, sigma_to_t, train_sigmas};
use super::{Plan, PredictionType, SchedulerConfig};

/// Calls `[σ0, m0, σ1, m1, ..., σn-1]` and σ with the final 0, from an Euler-family plan of `n`
/// steps; `mid(σ_j, σ_j+1)` is the midpoint σ, its timestep interpolated in log σ as diffusers'
/// `_sigma_to_t`. `round`: the σ_j timesteps are rounded (diffusers' KDPM2 Karras path).
pub(super) fn with_midpoints(
    cfg: &SchedulerConfig,
    base: Plan,
    round: bool,
    mid: impl Fn(f32, f32) -> f32,
) -> Plan {
    let logs: Vec<f32> = train_sigmas(&sigma_alphas_cumprod(cfg))
        .iter()
        .map(|s| s.ln())
        .collect();
    let n = base.timesteps.len();
    let mut timesteps = Vec::with_capacity(2 * n);
    let mut sigmas = Vec::with_capacity(2 * n + 1);
    for j in 0..n {
        let t = base.timesteps[j];
        timesteps.push(if round { t.round_ties_even() } else { t });
        sigmas.push(base.sigmas[j]);
        if j + 1 < n {
            let m = mid(base.sigmas[j] as f32, base.sigmas[j + 1] as f32);
            timesteps.push(sigma_to_t(f64::from(m), &logs));
            sigmas.push(f64::from(m));
        }
    }
    sigmas.push(0.0);
    Plan {
        timesteps,
        sigmas,
        ..base
    }
}

/// What UNet call `k` of a [`with_midpoints`] plan is.
pub(super) enum Call {
    /// At σ_j, before the midpoint.
    First { sigma: f32, mid: f32, next: f32 },
    /// At the midpoint; `sigma` and `next` are the step's ends.
    Second { sigma: f32, mid: f32, next: f32 },
    /// The last call, at σ_n-1: an Euler step to 0.
    Last { sigma: f32 },
}

pub(super) fn call(plan: &Plan, k: usize) -> Call {
    let s = |i: usize| plan.sigmas[i] as f32;
    if k % 2 == 1 {
        Call::Second {
            sigma: s(k - 1),
            mid: s(k),
            next: s(k + 1),
        }
    } else if k + 2 >= plan.sigmas.len() {
        Call::Last { sigma: s(k) }
    } else {
        Call::First {
            sigma: s(k),
            mid: s(k + 1),
            next: s(k + 2),
        }
    }
}

/// The Euler step to σ = 0 that ends these samplers.
pub(super) fn euler_to_zero(
    prediction: PredictionType,
    sigma: f32,
    x: &[f32],
    out: &[f32],
) -> Vec<f32> {
    euler_move(x, &slopes(prediction, sigma, x, out), -sigma)
}

/// torch's `lerp(start, end, 0.5)` in float32 (the `end - diff * 0.5` branch).
pub(super) fn lerp_half(start: f32, end: f32) -> f32 {
    end - (end - start) * 0.5
}
