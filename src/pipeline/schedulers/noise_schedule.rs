//! The training noise schedule and the numpy/torch helpers the diffusers schedulers build on:
//! `alphas_cumprod` (zero-terminal-SNR rescaled when the config says so; `sigma_alphas_cumprod` for
//! the σ classes), `train_sigmas`, `interp`, `sigma_to_t`, `karras_sigmas`, spacing helpers.
//! Values are rounded to f32 wherever diffusers holds them in float32 tensors, so schedules match it.

use super::{BetaSchedule, SchedulerConfig};

/// `torch.linspace(start, end, n, dtype=float32)` as torch's CPU kernel forms each value: the
/// first half counts up from `start`, the second half down from `end` (the vectorised kernel can
/// differ in the last bit for some elements; that stays far below the tolerances here).
pub(crate) fn linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - i - 1) as f32
            }
        })
        .collect()
}

/// Betas as diffusers' `__init__` builds them (float32).
fn betas(cfg: &SchedulerConfig) -> Vec<f32> {
    let n = cfg.num_train_timesteps;
    if let Some(trained) = &cfg.trained_betas {
        return trained.iter().map(|&b| b as f32).collect();
    }
    match cfg.beta_schedule {
        BetaSchedule::Linear => linspace_f32(cfg.beta_start, cfg.beta_end, n),
        BetaSchedule::ScaledLinear => linspace_f32(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), n)
            .into_iter()
            .map(|b| b * b)
            .collect(),
        BetaSchedule::SquaredcosCapV2 => {
            // Nichol & Dhariwal 2021 cosine schedule, computed in double then stored as float32.
            let alpha_bar = |t: f64| {
                ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                    .cos()
                    .powi(2)
            };
            (0..n)
                .map(|i| {
                    let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                    (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                })
                .collect()
        }
    }
}

/// `cumprod(1 - betas)`: torch accumulates a float32 cumprod in double and rounds each output.
fn cumprod(betas: &[f32]) -> Vec<f32> {
    let mut acc = 1.0f64;
    betas
        .iter()
        .map(|&b| {
            acc *= f64::from(1.0 - b);
            acc as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr(betas)` (Lin et al. 2023, arXiv:2305.08891, Algorithm 1)
/// in its float32 order: √ᾱ shifted so the last is 0 and scaled so the first is kept, then back
/// to betas (the last becomes 1, so ᾱ ends at exactly 0).
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let root: Vec<f32> = cumprod(betas).into_iter().map(f32::sqrt).collect();
    let (first, last) = (root[0], root[root.len() - 1]);
    let scale = first / (first - last);
    let bar: Vec<f32> = root
        .iter()
        .map(|&r| {
            let v = (r - last) * scale;
            v * v
        })
        .collect();
    std::iter::once(1.0 - bar[0])
        .chain(bar.windows(2).map(|w| 1.0 - w[1] / w[0]))
        .collect()
}

/// ᾱ = `cumprod(1 - betas)` as the scheduler classes hold it, with the betas rescaled to zero
/// terminal SNR when the config asks (`rescale_betas_zero_snr`; the last ᾱ is then 0).
pub(crate) fn alphas_cumprod(cfg: &SchedulerConfig) -> Vec<f32> {
    let betas = betas(cfg);
    if cfg.rescale_betas_zero_snr {
        cumprod(&rescale_zero_terminal_snr(&betas))
    } else {
        cumprod(&betas)
    }
}

/// The ᾱ the σ-based classes (Euler, Euler a, DPM-Solver, UniPC) build their σ from: under zero
/// terminal SNR diffusers sets the last to 2⁻²⁴ so that σ_max (≈ 4096) is finite.
pub(crate) fn sigma_alphas_cumprod(cfg: &SchedulerConfig) -> Vec<f32> {
    if cfg.rescale_betas_zero_snr && cfg.zero_snr_a1111 {
        return a1111_zero_snr(&cumprod(&betas(cfg)));
    }
    let mut ac = alphas_cumprod(cfg);
    if cfg.rescale_betas_zero_snr {
        if let Some(last) = ac.last_mut() {
            *last = 2f32.powi(-24);
        }
    }
    ac
}

/// A1111's zero terminal SNR (`rescale_zero_terminal_snr_abar`, applied to the model's float32
/// ᾱ for every k-diffusion sampler): √ᾱ shifted so the last is 0 and scaled so the first is kept,
/// squared, the last then set to 4.8973451890853435e-8 so σ_max (≈ 4519) is finite.
pub(crate) fn a1111_zero_snr(alphas_cumprod: &[f32]) -> Vec<f32> {
    let roots: Vec<f32> = alphas_cumprod.iter().map(|a| a.sqrt()).collect();
    let (first, last) = (roots[0], roots[roots.len() - 1]);
    let scale = first / (first - last);
    let mut out: Vec<f32> = roots
        .iter()
        .map(|&r| {
            let v = (r - last) * scale;
            v * v
        })
        .collect();
    if let Some(end) = out.last_mut() {
        *end = 4.897_345e-8;
    }
    out
}

/// `((1 - ᾱ) / ᾱ) ** 0.5` in float32, indexed by training timestep (ascending).
pub(crate) fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|&a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// `np.interp(x, arange(len(fp)), fp)`: linear interpolation on integer knots, clamped at the ends.
pub(crate) fn interp(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return f64::from(fp[0]);
    }
    if x >= last as f64 {
        return f64::from(fp[last]);
    }
    let j = x.floor() as usize;
    let (lo, hi) = (f64::from(fp[j]), f64::from(fp[j + 1]));
    if x == j as f64 {
        return lo;
    }
    (hi - lo) * (x - j as f64) + lo
}

/// diffusers' `_sigma_to_t`: the fractional training timestep whose log-sigma brackets
/// `log(sigma)`, linearly interpolated. `log_sigmas` are float32 logs of the training sigmas;
/// numpy subtracts the two bracketing float32 logs in float32, which this repeats.
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // Last index whose log-sigma is <= log(sigma) (0 when none is), kept below the final knot.
    let low = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - f64::from(l) >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low], log_sigmas[low + 1]);
    let w = ((f64::from(lo) - log_sigma) / f64::from(lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// Karras et al. 2022 (arXiv:2206.00364, eq. 5) sigmas with ρ = 7, from `sigma_max` down to `sigma_min`.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    const RHO: f64 = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / RHO), sigma_max.powf(1.0 / RHO));
    numpy_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|ramp| (max_inv + ramp * (min_inv - max_inv)).powf(RHO))
        .collect()
}

/// `np.linspace(start, stop, n)` (endpoint included): `i * step + start`, last value exact.
pub(crate) fn numpy_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i == n - 1 {
                stop
            } else {
                i as f64 * step + start
            }
        })
        .collect()
}

/// `np.arange(start, 0, -step)` for a float step: `ceil(start / step)` values `start - i·step`.
pub(crate) fn numpy_arange_down(start: f64, step: f64) -> Vec<f64> {
    let len = ((0.0 - start) / -step).ceil().max(0.0) as usize;
    (0..len).map(|i| start + i as f64 * -step).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd15_schedule_ends_match_diffusers() {
        // Printed by diffusers 0.42.1 (DDIMScheduler with SD1.5's betas).
        let ac = alphas_cumprod(&SchedulerConfig::default());
        assert_eq!(ac[0], 0.999_15);
        assert_eq!(ac[999], 0.004_660_095);
        assert_eq!(train_sigmas(&ac)[999], 14.614_647);
    }

    #[test]
    fn zero_snr_schedule_ends_match_diffusers() {
        // Printed by diffusers 0.42.1 (DDIMScheduler, SD1.5's betas, rescale_betas_zero_snr;
        // scripts/reference_zero_snr.py keeps them in zero_snr.json). Not bit for bit near the
        // end: torch's float32 `sqrt` on the CPU that made them is one ulp off the correctly
        // rounded root for 182 of the 1000 √ᾱ, and √ᾱ − √ᾱ_T cancels there (ᾱ[998] moves by
        // 2.9e-7 relative; the largest move, 3.8e-6, is at ᾱ[989]).
        let cfg = SchedulerConfig {
            rescale_betas_zero_snr: true,
            ..SchedulerConfig::default()
        };
        let ac = alphas_cumprod(&cfg);
        let want = [
            (0, 0.999_149_978_160_858_2),
            (1, 0.998_233_497_142_791_7),
            (998, 1.967_963_356_719_337_8e-7),
            (999, 0.0),
        ];
        for (i, w) in want {
            let got = f64::from(ac[i]);
            assert!((got - w).abs() <= 1e-6 * w, "ᾱ[{i}] {got} vs {w}");
        }
        let sigma = sigma_alphas_cumprod(&cfg);
        assert_eq!(sigma[999], 2f32.powi(-24));
        assert_eq!(sigma[..999], ac[..999]);
        // Without the flag nothing changes.
        assert_eq!(
            sigma_alphas_cumprod(&SchedulerConfig::default()),
            alphas_cumprod(&SchedulerConfig::default())
        );
    }

    #[test]
    fn sigma_to_t_inverts_the_training_sigmas() {
        let s = train_sigmas(&alphas_cumprod(&SchedulerConfig::default()));
        let logs: Vec<f32> = s.iter().map(|v| v.ln()).collect();
        assert!((sigma_to_t(f64::from(s[500]), &logs) - 500.0).abs() < 1e-3);
        assert_eq!(sigma_to_t(1e-6, &logs), 0.0);
        assert_eq!(sigma_to_t(1e6, &logs), 999.0);
    }
}
