//! The σ values of the schedule types other than automatic ([`Typed::sigmas`]): Karras,
//! exponential and beta as diffusers' `use_*_sigmas` compute them, simple as ComfyUI defines it,
//! NVIDIA's Align Your Steps tables resampled log-linearly, and uniform as k-diffusion's
//! `get_sigmas` (A1111). SGM uniform is a timestep spacing instead (diffusers' `trailing`), so it
//! has no σ here. [`Typed::a1111`] gives A1111's own σ of each type instead (its k-diffusion
//! schedules: the whole training range, fractional SGM uniform, AYS resampled to n points).

use super::noise_schedule::{karras_sigmas, linspace_f32, numpy_linspace};
use crate::family::Family;
use crate::job::Schedule;

/// Align Your Steps σ for 10 steps plus σ_min, as NVIDIA published them (Sabour et al. 2024,
/// arXiv:2404.14507, and the project page's "Stable Diffusion 1.5" and "SDXL" tables, three
/// decimals). diffusers' `AysSchedules` holds the same first ten values.
const AYS_SD1: [f64; 11] = [
    14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029,
];
const AYS_SDXL: [f64; 11] = [
    14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029,
];

/// The published Align Your Steps table for a model family.
pub fn ays_table(family: Family) -> &'static [f64; 11] {
    match family {
        // No table was published for SD 2.x; its schedule is SD1's (same betas and UNet levels).
        Family::Sd1 | Family::Sd2 => &AYS_SD1,
        Family::Sdxl => &AYS_SDXL,
    }
}

/// A schedule type other than automatic, and the model family (Align Your Steps has a table each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Typed {
    pub schedule: Schedule,
    pub family: Family,
    /// A1111's σ of the type rather than diffusers'; its timesteps stay fractional.
    pub a1111: bool,
    /// A1111's `discard_next_to_last_sigma` (DPM2, DPM2 a, DPM++ 3M SDE): one step more is
    /// scheduled and its next-to-last σ dropped.
    pub discard_penultimate: bool,
}

impl Typed {
    /// `None` for [`Schedule::Automatic`] (the sampler's own schedule) and for
    /// [`Schedule::SgmUniform`], which is a timestep spacing rather than a list of σ.
    pub fn new(schedule: Schedule, family: Family) -> Option<Typed> {
        let spacing = matches!(schedule, Schedule::Automatic | Schedule::SgmUniform);
        (!spacing).then_some(Typed {
            schedule,
            family,
            a1111: false,
            discard_penultimate: false,
        })
    }

    /// A1111's σ of `schedule` (not automatic: A1111's automatic is a type per sampler).
    pub fn a1111(schedule: Schedule, family: Family, discard_penultimate: bool) -> Typed {
        Typed {
            schedule,
            family,
            a1111: true,
            discard_penultimate,
        }
    }

    /// `steps` σ values, largest first, without the final 0. `sigma_min`/`sigma_max` bound
    /// Karras, exponential and beta (diffusers takes them from the sampler's own σ); the others use
    /// the training σ (`train`, ascending by timestep) or the table.
    pub fn sigmas(&self, steps: usize, sigma_min: f64, sigma_max: f64, train: &[f32]) -> Vec<f64> {
        if self.a1111 {
            return self.a1111_sigmas(steps, train);
        }
        match self.schedule {
            Schedule::Automatic | Schedule::Karras => karras_sigmas(sigma_min, sigma_max, steps),
            Schedule::Exponential => numpy_linspace(sigma_max.ln(), sigma_min.ln(), steps)
                .into_iter()
                .map(f64::exp)
                .collect(),
            Schedule::Beta => numpy_linspace(0.0, 1.0, steps)
                .into_iter()
                .map(|x| sigma_min + beta_ppf(1.0 - x, 0.6, 0.6) * (sigma_max - sigma_min))
                .collect(),
            // A spacing, not σ (see `Typed::new`); built as Karras should one be made by hand.
            Schedule::SgmUniform => karras_sigmas(sigma_min, sigma_max, steps),
            Schedule::Simple => {
                let stride = train.len() as f64 / steps as f64;
                (0..steps)
                    .map(|x| f64::from(train[train.len() - 1 - (x as f64 * stride) as usize]))
                    .collect()
            }
            Schedule::AlignYourSteps => align_your_steps(ays_table(self.family), steps),
            Schedule::Uniform => uniform(train, steps),
        }
    }

    /// Whether diffusers' multistep classes (DPM-Solver, UniPC) round the timesteps they derive
    /// from these σ: they do on their Karras path, which the schedules without a diffusers flag
    /// take too; exponential and beta timesteps are truncated instead.
    pub fn rounds_timesteps(&self) -> bool {
        !self.a1111 && !matches!(self.schedule, Schedule::Exponential | Schedule::Beta)
    }

    /// A1111 1.10's schedule functions over k-diffusion's `CompVisDenoiser`: Karras, exponential
    /// and beta between the first and last training σ; SGM uniform as fractional timesteps evenly
    /// from the last to the first, the final one dropped; Align Your Steps resampled to `steps`
    /// points ending at σ_min; simple and uniform as everywhere.
    fn a1111_sigmas(&self, steps: usize, train: &[f32]) -> Vec<f64> {
        let n = steps + usize::from(self.discard_penultimate);
        let (lo, hi) = (f64::from(train[0]), f64::from(train[train.len() - 1]));
        let mut sigmas = match self.schedule {
            Schedule::SgmUniform => {
                let mut v = uniform(train, n + 1);
                v.pop();
                v
            }
            Schedule::AlignYourSteps => resample_log_linear(ays_table(self.family), n),
            _ => Typed {
                a1111: false,
                discard_penultimate: false,
                ..*self
            }
            .sigmas(n, lo, hi, train),
        };
        if self.discard_penultimate {
            sigmas.pop();
        }
        sigmas
    }
}

/// k-diffusion's `DiscreteSchedule.get_sigmas(steps)` without its final 0, in its float32
/// arithmetic: timesteps `torch.linspace(last, 0, steps)`, and at each the log of the training σ
/// interpolated linearly between its two neighbours (`t_to_sigma`).
fn uniform(train: &[f32], steps: usize) -> Vec<f64> {
    let logs: Vec<f32> = train.iter().map(|s| s.ln()).collect();
    let last = logs.len() - 1;
    linspace_f32(last as f64, 0.0, steps)
        .into_iter()
        .map(|t| {
            let t = t.clamp(0.0, last as f32);
            let (low, high) = (t.floor() as usize, t.ceil() as usize);
            let w = t.fract();
            f64::from(((1.0 - w) * logs[low] + w * logs[high]).exp())
        })
        .collect()
}

/// The table resampled to `steps + 1` points evenly in its index, linearly in log σ (ComfyUI's
/// `loglinear_interp`), the last (σ_min) dropped: the sampler appends its final 0.
fn align_your_steps(table: &[f64; 11], steps: usize) -> Vec<f64> {
    let mut out = resample_log_linear(table, steps + 1);
    out.pop();
    out
}

/// The table at `points` points evenly in its index, linearly in log σ (`loglinear_interp`); the
/// table itself at its own length.
fn resample_log_linear(table: &[f64; 11], points: usize) -> Vec<f64> {
    let knots = table.len();
    if points == knots {
        return table.to_vec();
    }
    // Ascending in σ for the interpolation, as numpy's interp needs.
    let ys: Vec<f64> = table.iter().rev().map(|s| s.ln()).collect();
    let xs = numpy_linspace(0.0, 1.0, knots);
    let mut v: Vec<f64> = numpy_linspace(0.0, 1.0, points)
        .into_iter()
        .map(|x| np_interp(x, &xs, &ys).exp())
        .collect();
    v.reverse();
    v
}

/// `np.interp(x, xs, ys)` for ascending `xs`, clamped at the ends.
fn np_interp(x: f64, xs: &[f64], ys: &[f64]) -> f64 {
    let last = xs.len() - 1;
    if x <= xs[0] {
        return ys[0];
    }
    if x >= xs[last] {
        return ys[last];
    }
    let j = xs.partition_point(|&k| k <= x) - 1;
    let w = (x - xs[j]) / (xs[j + 1] - xs[j]);
    ys[j] + w * (ys[j + 1] - ys[j])
}

/// The quantile function of Beta(a, b) (scipy's `beta.ppf`): the CDF inverted by bisection to
/// the last bit of an f64.
pub(crate) fn beta_ppf(p: f64, a: f64, b: f64) -> f64 {
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if regularized_incomplete_beta(mid, a, b) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// I_x(a, b) by its continued fraction (modified Lentz), on the side where it converges fast.
fn regularized_incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let log_front = a * x.ln() + b * (1.0 - x).ln() - ln_beta(a, b);
    if x < (a + 1.0) / (a + b + 2.0) {
        log_front.exp() * beta_fraction(x, a, b) / a
    } else {
        1.0 - log_front.exp() * beta_fraction(1.0 - x, b, a) / b
    }
}

/// The continued fraction of the incomplete beta function, terms d_{2m+1} and d_{2m}.
fn beta_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let guard = |v: f64| if v.abs() < TINY { TINY } else { v };
    let mut c = 1.0;
    let mut d = 1.0 / guard(1.0 - (a + b) * x / (a + 1.0));
    let mut result = d;
    for m in 1..500 {
        let m = f64::from(m);
        let even = m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m));
        d = 1.0 / guard(1.0 + even * d);
        c = guard(1.0 + even / c);
        result *= d * c;
        let odd = -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0));
        d = 1.0 / guard(1.0 + odd * d);
        c = guard(1.0 + odd / c);
        let delta = d * c;
        result *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    result
}

fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// ln Γ(x) for x > 0 by the Lanczos approximation (g = 7, nine terms; ~1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = C[0];
    for (i, &c) in C.iter().enumerate().skip(1) {
        sum += c / (x + i as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_quantiles_match_scipy() {
        // Printed by scipy 1.17.1: scipy.stats.beta.ppf(p, 0.6, 0.6).
        for (p, want) in [
            (0.5, 0.500_000_000_000_000_1),
            (0.1, 0.039_584_405_588_780_85),
            (0.9, 0.960_415_594_411_219_2),
            (0.25, 0.175_680_378_652_694_98),
        ] {
            let got = beta_ppf(p, 0.6, 0.6);
            assert!((got - want).abs() < 1e-12, "ppf({p}) = {got}, want {want}");
        }
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-13);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-13);
    }

    #[test]
    fn align_your_steps_keeps_the_table_at_ten_steps_and_resamples_otherwise() {
        let t = Typed::new(Schedule::AlignYourSteps, Family::Sd1).unwrap();
        let ten = t.sigmas(10, 0.0, 0.0, &[1.0]);
        assert_eq!(ten, AYS_SD1[..10]);
        let four = t.sigmas(4, 0.0, 0.0, &[1.0]);
        assert_eq!(four.len(), 4);
        assert!((four[0] - 14.615).abs() < 1e-12, "{four:?}");
        assert!(four.windows(2).all(|w| w[0] > w[1]), "{four:?}");
        // Twenty steps: every second value is a knot of the table, the ones between are geometric means.
        let twenty = t.sigmas(20, 0.0, 0.0, &[1.0]);
        assert!((twenty[2] - AYS_SD1[1]).abs() < 1e-12);
        assert!((twenty[1] - (AYS_SD1[0] * AYS_SD1[1]).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn simple_walks_the_training_sigmas() {
        let train: Vec<f32> = (1..=1000).map(|i| i as f32 / 100.0).collect();
        let simple = Typed::new(Schedule::Simple, Family::Sd1)
            .unwrap()
            .sigmas(4, 0.0, 0.0, &train);
        assert_eq!(simple, vec![10.0, 7.5, 5.0, 2.5]);
    }
}
