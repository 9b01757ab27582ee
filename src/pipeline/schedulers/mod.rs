//! Samplers as diffusers implements them: one file per diffusers scheduler class, a shared
//! [`SchedulerConfig`] (a model's `scheduler/scheduler_config.json`), the [`Scheduler`] trait and
//! [`build_with`], which maps the A1111 sampler names of [`crate::job::Sampler`] and the schedule
//! types of [`crate::job::Schedule`] (`sigma_schedules`) to them.
//!
//! Schedules are f64 arrays holding the values diffusers computes (float32-rounded where it stores
//! float32); per-element step arithmetic is f32 in diffusers' order. Noise is always passed in.

pub mod brownian;
mod ddim;
mod ddpm;
mod deis;
mod dpmpp_2m;
mod dpmpp_2s_ancestral;
mod dpmpp_sde;
mod euler;
mod euler_ancestral;
mod euler_cfg_pp;
mod heun;
mod kdpm2;
mod lcm;
mod lms;
mod midpoint;
pub(crate) mod noise_schedule;
pub mod sigma_schedules;
mod tcd;
mod unipc;

pub use ddim::DdimScheduler;
pub use ddpm::Ddpm;
pub use deis::Deis;
pub use dpmpp_2m::DpmSolverMultistepScheduler;
pub use dpmpp_2s_ancestral::DpmPp2sAncestral;
pub use dpmpp_sde::DpmPpSde;
pub use euler::EulerDiscreteScheduler;
pub use euler_ancestral::EulerAncestralDiscreteScheduler;
pub use euler_cfg_pp::EulerCfgPp;
pub use heun::HeunDiscreteScheduler;
pub use kdpm2::Kdpm2;
pub use lcm::LcmScheduler;
pub use lms::LmsDiscreteScheduler;
pub use tcd::{Tcd, GAMMA as TCD_GAMMA};
pub use unipc::UniPcMultistepScheduler;

use crate::family::Family;
use crate::job::{Sampler, Schedule, SigmaStyle};
use brownian::BrownianNoise;
use serde::Deserialize;
use sigma_schedules::Typed;
use std::path::Path;

/// How betas grow over the training timesteps (diffusers' `beta_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// Betas linear from `beta_start` to `beta_end`.
    Linear,
    /// Square roots of the betas linear (latent diffusion, every SD model).
    ScaledLinear,
    /// The cosine ᾱ schedule of Nichol & Dhariwal 2021, capped at β = 0.999.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The added noise ε (SD1.x, SDXL).
    Epsilon,
    /// v = α·ε − σ·x₀ (SD2.x 768 models).
    VPrediction,
    /// x₀ itself.
    Sample,
}

/// Where the inference timesteps fall (Table 2 of arXiv:2305.08891).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// Evenly from the last training step down to the first, fractional for Euler.
    Linspace,
    /// Multiples of `train_steps / steps` from 0, plus `steps_offset`.
    Leading,
    /// Multiples of `train_steps / steps` counted down from the last training step.
    Trailing,
}

/// The scheduler settings a model ships (`scheduler/scheduler_config.json`). Unknown keys (the
/// class name, PNDM's `skip_prk_steps`, ...) are ignored. A missing key takes SD1.5's value, except
/// `timestep_spacing` and `clip_sample`, whose defaults belong to each scheduler class.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    /// Length of the training noise schedule.
    pub num_train_timesteps: usize,
    /// β at the first training timestep.
    pub beta_start: f64,
    /// β at the last training timestep.
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    /// Explicit betas, overriding the three fields above.
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    /// Added to the timesteps of `leading` spacing.
    pub steps_offset: usize,
    /// DDIM: use ᾱ = 1 after the last step (else the first training ᾱ).
    pub set_alpha_to_one: bool,
    /// DDIM: clamp the predicted x₀ to ±`clip_sample_range` (class default: true).
    pub clip_sample: Option<bool>,
    pub clip_sample_range: f64,
    /// `None`: the scheduler class's default (Euler, Euler a, DPM++: linspace; DDIM: leading).
    pub timestep_spacing: Option<TimestepSpacing>,
    /// Betas rescaled to zero terminal SNR (Lin et al. 2023) as diffusers' `rescale_betas_zero_snr`;
    /// a job's `--zero-snr` switches it on too ([`SchedulerConfig::for_job`], [`check_zero_snr`]).
    pub rescale_betas_zero_snr: bool,
    /// Zero terminal SNR the way A1111 applies it (set by [`build_styled`] for A1111's σ, never
    /// read from a file): ᾱ rescaled directly, the last set to 4.9e-8 (σ_max ≈ 4519).
    #[serde(skip)]
    pub zero_snr_a1111: bool,
}

impl Default for SchedulerConfig {
    /// SD1.5's `scheduler_config.json`.
    fn default() -> Self {
        SchedulerConfig {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            steps_offset: 1,
            set_alpha_to_one: false,
            clip_sample: Some(false),
            clip_sample_range: 1.0,
            timestep_spacing: None,
            rescale_betas_zero_snr: false,
            zero_snr_a1111: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("cannot read scheduler config {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("scheduler config {path} is not valid: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
    #[error("scheduler config {path}: {message}")]
    Unsupported { path: String, message: String },
    #[error("the {sampler} sampler has no schedule types: it steps through training timesteps of its own (use --schedule automatic)")]
    NoScheduleTypes { sampler: &'static str },
    #[error(
        "zero terminal SNR (--zero-snr, or rescale_betas_zero_snr in the model's scheduler config) \
         does not apply to the {sampler} sampler (diffusers' class for it has no \
         rescale_betas_zero_snr); use Euler, Euler a, DDIM, DPM++ 2M (Karras, SDE), DPM++ 3M SDE, \
         UniPC, DDPM, LCM or TCD, or --sigmas a1111 (A1111's rescaling, for its k-diffusion \
         samplers)"
    )]
    ZeroSnrSampler { sampler: &'static str },
    #[error(
        "zero terminal SNR needs a v-prediction model: at the last timestep the picture is pure \
         noise, which an {prediction} prediction cannot denoise (A1111 runs it and gives noise); \
         if the model is a v model, say so with --prediction v"
    )]
    ZeroSnrPrediction { prediction: &'static str },
    #[error(
        "{sampler} is DPM++ 2M with the Karras schedule; for the {schedule} schedule use DPM++ 2M"
    )]
    ScheduleConflict {
        sampler: &'static str,
        schedule: &'static str,
    },
}

impl SchedulerConfig {
    pub fn from_file(path: &Path) -> Result<Self, SchedulerError> {
        let text = std::fs::read_to_string(path).map_err(|source| SchedulerError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn from_json_str(text: &str) -> Result<Self, SchedulerError> {
        Self::parse(text, "scheduler_config.json")
    }

    fn parse(text: &str, path: &str) -> Result<Self, SchedulerError> {
        let json_err = |source| SchedulerError::Json {
            path: path.to_string(),
            source,
        };
        let mut value: serde_json::Value = serde_json::from_str(text).map_err(json_err)?;
        // diffusers drops keys that held the *writing* class's defaults (`_use_default_values`)
        // when another scheduler class loads the config, so e.g. PNDM's "leading" spacing does
        // not leak into Euler, which then uses its own default.
        if let Some(obj) = value.as_object_mut() {
            let defaults: Vec<String> = obj
                .get("_use_default_values")
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            for k in defaults {
                obj.remove(&k);
            }
        }
        let cfg: SchedulerConfig = serde_json::from_value(value).map_err(json_err)?;
        let unsupported = |message: String| SchedulerError::Unsupported {
            path: path.to_string(),
            message,
        };
        let n = cfg.num_train_timesteps;
        if n < 2 {
            return Err(unsupported(format!("num_train_timesteps {n} is below 2")));
        }
        if let Some(b) = &cfg.trained_betas {
            if b.len() != n {
                return Err(unsupported(format!(
                    "trained_betas has {} values, num_train_timesteps is {n}",
                    b.len()
                )));
            }
        }
        Ok(cfg)
    }
}

impl SchedulerConfig {
    /// The config a job samples with: zero terminal SNR switched on when the job asks
    /// (`--zero-snr`); a model whose config has it keeps it either way.
    pub fn for_job(&self, zero_snr: bool) -> std::borrow::Cow<'_, SchedulerConfig> {
        if zero_snr && !self.rescale_betas_zero_snr {
            std::borrow::Cow::Owned(SchedulerConfig {
                rescale_betas_zero_snr: true,
                ..self.clone()
            })
        } else {
            std::borrow::Cow::Borrowed(self)
        }
    }
}

/// Whether `sampler` can sample under `cfg`'s zero terminal SNR (when it has it): a sampler whose
/// diffusers class takes `rescale_betas_zero_snr`, and a model that does not predict epsilon.
pub fn check_zero_snr(sampler: Sampler, cfg: &SchedulerConfig) -> Result<(), SchedulerError> {
    if !cfg.rescale_betas_zero_snr {
        return Ok(());
    }
    check_zero_snr_sampler(sampler, SigmaStyle::Diffusers)?;
    check_zero_snr_prediction(cfg)
}

/// The prediction half of [`check_zero_snr`].
fn check_zero_snr_prediction(cfg: &SchedulerConfig) -> Result<(), SchedulerError> {
    if !cfg.rescale_betas_zero_snr {
        return Ok(());
    }
    // diffusers only warns; an ε prediction at ᾱ = 0 gives x₀ = (x − ε)/0.
    if cfg.prediction_type == PredictionType::Epsilon {
        return Err(SchedulerError::ZeroSnrPrediction {
            prediction: "epsilon",
        });
    }
    Ok(())
}

/// The sampler half of [`check_zero_snr`], for a job checked before its model is known: under
/// A1111's σ every sampler A1111 runs through k-diffusion takes it, as A1111 rescales for all.
pub fn check_zero_snr_sampler(sampler: Sampler, style: SigmaStyle) -> Result<(), SchedulerError> {
    if sampler.takes_zero_snr() || (style == SigmaStyle::A1111 && sampler.follows_a1111_sigmas()) {
        Ok(())
    } else {
        Err(SchedulerError::ZeroSnrSampler {
            sampler: sampler.name(),
        })
    }
}

/// What a scheduler was set up with for a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The timestep to give the UNet at each call (fractional for Euler's linspace spacing).
    pub timesteps: Vec<f64>,
    /// σ per call plus the final one (float32 values); empty for the classes without (DDIM, LCM).
    pub sigmas: Vec<f64>,
    /// Factor for the initial `randn` latents.
    pub init_noise_sigma: f32,
    /// Whether the UNet input is divided by √(σ² + 1) (the k-diffusion classes).
    pub scales_input: bool,
}

impl Plan {
    /// The classes that step in ᾱ (or λ) and never scale the input: initial noise factor 1.
    fn unscaled(timesteps: Vec<f64>, sigmas: Vec<f64>) -> Plan {
        Plan {
            timesteps,
            sigmas,
            init_noise_sigma: 1.0,
            scales_input: false,
        }
    }
}

/// DDIM's, DDPM's and LCM's `clip_sample` (`default`: the class's) as the clamp range of x₀.
fn clip_range(cfg: &SchedulerConfig, default: bool) -> Option<f32> {
    cfg.clip_sample
        .unwrap_or(default)
        .then_some(cfg.clip_sample_range as f32)
}

/// `noise(n)` checked to return `n` values.
fn draw(noise: &mut dyn FnMut(usize) -> Vec<f32>, n: usize) -> Vec<f32> {
    let z = noise(n);
    assert_eq!(z.len(), n, "noise source returned the wrong length");
    z
}

/// The noise source a step may draw from: `noise(n)` returns `n` standard normals.
pub type Noise<'a> = &'a mut dyn FnMut(usize) -> Vec<f32>;

/// What one step works on: its index, the UNet's (guided) output and the sample it was run on;
/// with [`Scheduler::step_guided`] also the unconditional output (Euler CFG++ uses it), and the
/// run's Brownian tree when [`Scheduler::use_brownian_noise`] gave it one.
pub struct At<'a> {
    pub i: usize,
    pub out: &'a [f32],
    pub x: &'a [f32],
    pub uncond: Option<&'a [f32]>,
    pub brownian: Option<&'a mut BrownianNoise>,
}

impl At<'_> {
    /// The unit-variance noise of a move from σ to `next`: the Brownian tree's increment when the
    /// run has one (zeros where `next` is 0: k-diffusion adds none there), else `n` fresh normals.
    fn sde_noise(&mut self, noise: Noise<'_>, sigma: f32, next: f32, n: usize) -> Vec<f32> {
        match self.brownian.as_deref_mut() {
            Some(_) if next <= 0.0 => vec![0.0; n],
            Some(tree) => tree.between(sigma, next),
            None => draw(noise, n),
        }
    }
}

/// The CFG pair of one UNet call and its scale, for samplers that use the unconditional
/// prediction itself (Euler CFG++).
#[derive(Debug, Clone, Copy)]
pub struct Guidance<'a> {
    pub uncond: &'a [f32],
    pub cond: &'a [f32],
    pub scale: f32,
}

impl Guidance<'_> {
    /// Classifier-free guidance as diffusers combines it: `u + scale·(c − u)`.
    pub fn combined(&self) -> Vec<f32> {
        let s = self.scale;
        self.uncond
            .iter()
            .zip(self.cond)
            .map(|(u, c)| u + s * (c - u))
            .collect()
    }
}

/// A sampler's stepping rule with its state between steps; [`Sampling`] pairs it with the
/// [`Plan`] to make a [`Scheduler`].
pub trait Method: Send + 'static {
    /// The diffusers class (or the k-diffusion / ComfyUI function) this reproduces.
    const NAME: &'static str;
    /// One step; `at.i == 0` starts a new run.
    fn advance(&mut self, plan: &Plan, at: At<'_>, noise: Noise<'_>) -> Vec<f32>;
    /// Whether this sampler takes A1111's Brownian-tree noise ([`Scheduler::use_brownian_noise`]).
    fn brownian(&self) -> bool {
        false
    }
}

/// A [`Method`] set up for one run: the scheduler [`build_with`] returns.
#[derive(Debug, Clone)]
pub struct Sampling<M> {
    plan: Plan,
    method: M,
    brownian: Option<BrownianNoise>,
}

impl<M: Method> Sampling<M> {
    pub(super) fn new(plan: Plan, method: M) -> Self {
        Sampling {
            plan,
            method,
            brownian: None,
        }
    }
}

/// One sampler run: build it for a step count, then for each `i` in `0..timesteps().len()`
/// feed the UNet `scale_model_input(x, i)` at `timesteps()[i]` and call `step` with its output.
/// Calls to `step` must come in order; `i == 0` starts a new run.
pub trait Scheduler: Send {
    /// The diffusers class this reproduces.
    fn name(&self) -> &'static str;
    /// Timesteps, σ and input scaling of this run.
    fn plan(&self) -> &Plan;
    /// The timestep to give the UNet at each step (fractional for Euler's linspace spacing).
    fn timesteps(&self) -> &[f64] {
        &self.plan().timesteps
    }
    /// Noise levels σ per step plus the final one, for schedulers that have them (not DDIM).
    fn sigmas(&self) -> Option<&[f64]> {
        let s = &self.plan().sigmas;
        (!s.is_empty()).then_some(s.as_slice())
    }
    /// Factor for the initial `randn` latents.
    fn init_noise_sigma(&self) -> f32 {
        self.plan().init_noise_sigma
    }
    /// The divisor diffusers applies to the UNet input at step `i` (1 for DDIM and DPM-Solver).
    fn input_divisor(&self, i: usize) -> f32 {
        let plan = self.plan();
        if plan.scales_input {
            let s = plan.sigmas[i] as f32;
            (s * s + 1.0).sqrt()
        } else {
            1.0
        }
    }
    /// The UNet input for step `i`: `sample / input_divisor(i)`.
    fn scale_model_input(&self, sample: &[f32], i: usize) -> Vec<f32> {
        let d = self.input_divisor(i);
        sample.iter().map(|&x| x / d).collect()
    }
    /// One step from `sample` at step `i` to the next sample. `noise(n)` must return `n` standard
    /// normals (e.g. [`crate::pipeline::rng::TorchRng::randn`]); only ancestral samplers call it.
    fn step(
        &mut self,
        model_output: &[f32],
        i: usize,
        sample: &[f32],
        noise: &mut dyn FnMut(usize) -> Vec<f32>,
    ) -> Vec<f32>;
    /// [`Self::step`] from the UNet's unconditional and conditional predictions: the one place
    /// classifier-free guidance is combined, so a sampler may use the unconditional one itself.
    fn step_guided(
        &mut self,
        guidance: Guidance<'_>,
        i: usize,
        sample: &[f32],
        noise: &mut dyn FnMut(usize) -> Vec<f32>,
    ) -> Vec<f32>;
    /// Gives an SDE sampler (DPM++ SDE, 2M SDE, 3M SDE) A1111's noise for an image of `n` latent
    /// values: k-diffusion's `BrownianTreeNoiseSampler` seeded with `seed`, over the σ range from
    /// call `first` on (img2img and the hires fix start later). Other samplers ignore it.
    fn use_brownian_noise(&mut self, seed: u64, n: usize, first: usize);
}

impl<M: Method> Scheduler for Sampling<M> {
    fn name(&self) -> &'static str {
        M::NAME
    }

    fn plan(&self) -> &Plan {
        &self.plan
    }

    fn step(&mut self, out: &[f32], i: usize, x: &[f32], noise: Noise<'_>) -> Vec<f32> {
        let at = At {
            i,
            out,
            x,
            uncond: None,
            brownian: self.brownian.as_mut(),
        };
        self.method.advance(&self.plan, at, noise)
    }

    fn step_guided(&mut self, g: Guidance<'_>, i: usize, x: &[f32], noise: Noise<'_>) -> Vec<f32> {
        let out = g.combined();
        let at = At {
            i,
            out: &out,
            x,
            uncond: Some(g.uncond),
            brownian: self.brownian.as_mut(),
        };
        self.method.advance(&self.plan, at, noise)
    }

    fn use_brownian_noise(&mut self, seed: u64, n: usize, first: usize) {
        if !self.method.brownian() {
            return;
        }
        // k-diffusion's `sigmas[sigmas > 0].min(), sigmas.max()` of the σ this run walks.
        let walked = self.plan.sigmas.get(first..).unwrap_or_default();
        let positive = walked.iter().filter(|&&s| s > 0.0).map(|&s| s as f32);
        let lo = positive.clone().fold(f32::INFINITY, f32::min);
        let hi = positive.fold(0.0, f32::max);
        self.brownian = (lo < hi).then(|| BrownianNoise::new(seed, n, lo, hi));
    }
}

/// The scheduler for an A1111 sampler name with its automatic schedule, configured from the
/// model's scheduler config the way diffusers' `XScheduler.from_config(config)` would be, and set
/// to `steps` steps (≥ 1).
pub fn build(sampler: Sampler, cfg: &SchedulerConfig, steps: usize) -> Box<dyn Scheduler> {
    make(sampler, None, cfg, steps)
}

/// [`build`] with a schedule type; `family` picks the Align Your Steps table. SGM uniform is
/// diffusers' `trailing` timestep spacing. DDIM and LCM take only the automatic schedule, and
/// DPM++ 2M Karras only its own. Zero terminal SNR (in `cfg`) is checked by [`check_zero_snr`].
pub fn build_with(
    sampler: Sampler,
    schedule: Schedule,
    family: Family,
    cfg: &SchedulerConfig,
    steps: usize,
) -> Result<Box<dyn Scheduler>, SchedulerError> {
    check_schedule(sampler, schedule)?;
    check_zero_snr(sampler, cfg)?;
    if schedule == Schedule::SgmUniform {
        let trailing = SchedulerConfig {
            timestep_spacing: Some(TimestepSpacing::Trailing),
            ..cfg.clone()
        };
        return Ok(make(sampler, None, &trailing, steps));
    }
    Ok(make(sampler, Typed::new(schedule, family), cfg, steps))
}

/// [`build_with`] with `style`'s σ: A1111's ([`SigmaStyle::A1111`]) for the samplers A1111 runs
/// through k-diffusion ([`Sampler::follows_a1111_sigmas`]), its `Automatic` being the sampler's A1111
/// default type; diffusers' otherwise.
pub fn build_styled(
    sampler: Sampler,
    schedule: Schedule,
    style: SigmaStyle,
    family: Family,
    cfg: &SchedulerConfig,
    steps: usize,
) -> Result<Box<dyn Scheduler>, SchedulerError> {
    if style == SigmaStyle::Diffusers || !sampler.follows_a1111_sigmas() {
        return build_with(sampler, schedule, family, cfg, steps);
    }
    check_schedule(sampler, schedule)?;
    // Zero terminal SNR as A1111 applies it, to every k-diffusion sampler.
    check_zero_snr_prediction(cfg)?;
    let a1111_cfg;
    let cfg = if cfg.rescale_betas_zero_snr {
        a1111_cfg = SchedulerConfig {
            zero_snr_a1111: true,
            ..cfg.clone()
        };
        &a1111_cfg
    } else {
        cfg
    };
    let schedule = if schedule.is_automatic() {
        a1111_automatic(sampler)
    } else {
        schedule
    };
    let discard = matches!(
        sampler,
        Sampler::Dpm2 | Sampler::Dpm2A | Sampler::DpmPp3mSde
    );
    let typed = Typed::a1111(schedule, family, discard);
    Ok(make(sampler, Some(typed), cfg, steps))
}

/// A1111 1.10's `Automatic` of a k-diffusion sampler (its `scheduler` sampler option; none means
/// k-diffusion's own `get_sigmas`, the `Uniform` type).
fn a1111_automatic(sampler: Sampler) -> Schedule {
    match sampler {
        Sampler::DpmPp2m
        | Sampler::DpmPp2mKarras
        | Sampler::DpmPpSde
        | Sampler::DpmPp2sA
        | Sampler::Dpm2
        | Sampler::Dpm2A => Schedule::Karras,
        Sampler::DpmPp2mSde | Sampler::DpmPp3mSde => Schedule::Exponential,
        _ => Schedule::Uniform,
    }
}

/// Whether `sampler` can walk `schedule`: the error [`build_with`] would give, before any work.
pub fn check_schedule(sampler: Sampler, schedule: Schedule) -> Result<(), SchedulerError> {
    if schedule.is_automatic() {
        return Ok(());
    }
    if !sampler.takes_schedule() {
        return Err(SchedulerError::NoScheduleTypes {
            sampler: sampler.name(),
        });
    }
    if sampler == Sampler::DpmPp2mKarras && schedule != Schedule::Karras {
        return Err(SchedulerError::ScheduleConflict {
            sampler: sampler.name(),
            schedule: schedule.name(),
        });
    }
    Ok(())
}

fn make(
    sampler: Sampler,
    typed: Option<Typed>,
    cfg: &SchedulerConfig,
    steps: usize,
) -> Box<dyn Scheduler> {
    let steps = steps.max(1);
    match sampler {
        Sampler::Euler => Box::new(EulerDiscreteScheduler::new(cfg, steps, typed)),
        Sampler::EulerA => Box::new(EulerAncestralDiscreteScheduler::new(cfg, steps, typed)),
        Sampler::Heun => Box::new(HeunDiscreteScheduler::new(cfg, steps, typed)),
        Sampler::Lms => Box::new(LmsDiscreteScheduler::new(cfg, steps, typed)),
        Sampler::Ddim => Box::new(DdimScheduler::new(cfg, steps)),
        Sampler::DpmPp2m => Box::new(DpmSolverMultistepScheduler::new(cfg, steps, typed, false)),
        Sampler::DpmPp2mKarras => {
            // A1111's σ keep their style; the sampler's own type is Karras either way.
            let karras = typed
                .filter(|t| t.a1111)
                .or_else(|| Typed::new(Schedule::Karras, Family::Sd1));
            Box::new(DpmSolverMultistepScheduler::new(cfg, steps, karras, false))
        }
        Sampler::DpmPp2mSde => Box::new(DpmSolverMultistepScheduler::new(cfg, steps, typed, true)),
        Sampler::UniPc => Box::new(UniPcMultistepScheduler::new(cfg, steps, typed)),
        Sampler::Lcm => Box::new(LcmScheduler::new(cfg, steps)),
        Sampler::Dpm2 => Box::new(Kdpm2::new(cfg, steps, typed, false)),
        Sampler::Dpm2A => Box::new(Kdpm2::new(cfg, steps, typed, true)),
        Sampler::DpmPp2sA => Box::new(DpmPp2sAncestral::new(cfg, steps, typed)),
        Sampler::DpmPpSde => Box::new(DpmPpSde::new(cfg, steps, typed)),
        Sampler::DpmPp3mSde => Box::new(DpmSolverMultistepScheduler::third_order_sde(
            cfg, steps, typed,
        )),
        Sampler::Deis => Box::new(Deis::new(cfg, steps, typed)),
        Sampler::Ddpm => Box::new(Ddpm::new(cfg, steps)),
        Sampler::Tcd => Box::new(Tcd::new(cfg, steps)),
        Sampler::EulerCfgPp => Box::new(EulerCfgPp::new(cfg, steps, typed)),
    }
}

/// Euler-family timesteps (float32, descending) for `steps` under `spacing`.
fn euler_timesteps(cfg: &SchedulerConfig, spacing: TimestepSpacing, steps: usize) -> Vec<f32> {
    let n = cfg.num_train_timesteps;
    match spacing {
        TimestepSpacing::Linspace => noise_schedule::numpy_linspace(0.0, (n - 1) as f64, steps)
            .into_iter()
            .rev()
            .map(|t| t as f32)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = n / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio) as f32 + cfg.steps_offset as f32)
                .collect()
        }
        TimestepSpacing::Trailing => {
            noise_schedule::numpy_arange_down(n as f64, n as f64 / steps as f64)
                .into_iter()
                .map(|t| t.round_ties_even() as f32 - 1.0)
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd15_config_parses_and_ignores_pndm_keys() {
        let json = r#"{"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0",
            "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
            "num_train_timesteps": 1000, "set_alpha_to_one": false, "skip_prk_steps": true,
            "steps_offset": 1, "trained_betas": null, "clip_sample": false}"#;
        assert_eq!(
            SchedulerConfig::from_json_str(json).unwrap(),
            SchedulerConfig::default()
        );
    }

    #[test]
    fn bad_configs_are_errors() {
        let err = SchedulerConfig::from_json_str(r#"{"beta_schedule": "cosine"}"#).unwrap_err();
        assert!(err.to_string().contains("cosine"), "{err}");
    }

    #[test]
    fn zero_snr_configs_parse_and_build_only_where_diffusers_has_it() {
        let v = SchedulerConfig::from_json_str(
            r#"{"rescale_betas_zero_snr": true, "prediction_type": "v_prediction",
                "timestep_spacing": "trailing"}"#,
        )
        .unwrap();
        assert!(v.rescale_betas_zero_snr);
        for s in Sampler::ALL {
            let built = build_with(s, Schedule::Automatic, Family::Sd1, &v, 4);
            assert_eq!(built.is_ok(), s.takes_zero_snr(), "{s}");
            if let Err(e) = built {
                let e = e.to_string();
                assert!(
                    e.contains(s.name()) && e.contains("zero terminal SNR"),
                    "{e}"
                );
            }
        }
        for s in [
            Sampler::Heun,
            Sampler::Lms,
            Sampler::DpmPpSde,
            Sampler::EulerCfgPp,
        ] {
            assert!(!s.takes_zero_snr(), "{s}");
        }
        // The same config off: every sampler builds.
        let plain = SchedulerConfig {
            rescale_betas_zero_snr: false,
            ..v.clone()
        };
        assert!(Sampler::ALL.iter().all(|&s| build_with(
            s,
            Schedule::Automatic,
            Family::Sd1,
            &plain,
            4
        )
        .is_ok()));
        // A job's switch turns it on; a model's config keeps it on.
        assert!(plain.for_job(true).rescale_betas_zero_snr);
        assert!(!plain.for_job(false).rescale_betas_zero_snr);
        assert!(v.for_job(false).rescale_betas_zero_snr);
    }

    #[test]
    fn zero_snr_with_an_epsilon_model_is_refused() {
        let eps = SchedulerConfig::from_json_str(r#"{"rescale_betas_zero_snr": true}"#).unwrap();
        assert_eq!(eps.prediction_type, PredictionType::Epsilon);
        for s in [Sampler::Euler, Sampler::Ddim, Sampler::DpmPp2m] {
            let err = build_with(s, Schedule::Automatic, Family::Sd1, &eps, 4)
                .err()
                .unwrap();
            assert!(
                matches!(err, SchedulerError::ZeroSnrPrediction { .. }),
                "{err}"
            );
            assert!(err.to_string().contains("v-prediction"), "{err}");
        }
        let sample = SchedulerConfig {
            prediction_type: PredictionType::Sample,
            ..eps
        };
        assert!(build_with(Sampler::Euler, Schedule::Automatic, Family::Sd1, &sample, 4).is_ok());
    }

    #[test]
    fn a1111_sigmas_under_zero_snr_are_a1111s_for_every_k_sampler() {
        let cfg = SchedulerConfig::from_json_str(
            r#"{"rescale_betas_zero_snr": true, "prediction_type": "v_prediction"}"#,
        )
        .unwrap();
        let a1111 =
            |s, schedule| build_styled(s, schedule, SigmaStyle::A1111, Family::Sd1, &cfg, 6);
        for schedule in [Schedule::Automatic, Schedule::Karras, Schedule::SgmUniform] {
            let sch = a1111(Sampler::Euler, schedule).unwrap();
            let sigmas = sch.sigmas().unwrap();
            assert!(
                sigmas.iter().all(|s| s.is_finite()),
                "{schedule}: {sigmas:?}"
            );
            // √((1 − 4.897e-8) / 4.897e-8) ≈ 4518.8: A1111's end, not diffusers' 4096.
            assert!((sigmas[0] - 4518.8).abs() < 0.5, "{schedule}: {sigmas:?}");
        }
        // A1111 rescales for every k-diffusion sampler; diffusers' refusals stay without its σ.
        assert!(a1111(Sampler::Heun, Schedule::Automatic).is_ok());
        assert!(check_zero_snr_sampler(Sampler::Heun, SigmaStyle::A1111).is_ok());
        assert!(check_zero_snr_sampler(Sampler::Heun, SigmaStyle::Diffusers).is_err());
        assert!(check_zero_snr_sampler(Sampler::Deis, SigmaStyle::A1111).is_err());
        let eps = SchedulerConfig::from_json_str(r#"{"rescale_betas_zero_snr": true}"#).unwrap();
        let built = build_styled(
            Sampler::Euler,
            Schedule::Karras,
            SigmaStyle::A1111,
            Family::Sd1,
            &eps,
            6,
        );
        assert!(built.is_err());
    }

    #[test]
    fn zero_snr_sigmas_end_at_4096_and_stay_finite() {
        let cfg = SchedulerConfig::from_json_str(
            r#"{"rescale_betas_zero_snr": true, "prediction_type": "v_prediction",
                "timestep_spacing": "trailing"}"#,
        )
        .unwrap();
        let ac = noise_schedule::alphas_cumprod(&cfg);
        assert_eq!(ac[999], 0.0);
        // √ᾱ₀ is kept.
        let plain = noise_schedule::alphas_cumprod(&SchedulerConfig::default());
        assert!((ac[0].sqrt() - plain[0].sqrt()).abs() < 1e-6);
        let sch = build(Sampler::Euler, &cfg, 4);
        let sigmas = sch.sigmas().unwrap();
        // √((1 − 2⁻²⁴) / 2⁻²⁴) ≈ 4096: finite, far above SD's 14.6.
        assert!((sigmas[0] - 4096.0).abs() < 1e-2, "{sigmas:?}");
        assert_eq!(sch.timesteps()[0], 999.0);
    }

    #[test]
    fn every_sampler_builds_with_the_requested_steps() {
        for s in Sampler::ALL {
            let sch = build(s, &SchedulerConfig::default(), 7);
            // The second-order single-step samplers call the UNet twice per step but once on
            // the last.
            let twice = [
                Sampler::Heun,
                Sampler::Dpm2,
                Sampler::Dpm2A,
                Sampler::DpmPp2sA,
                Sampler::DpmPpSde,
            ];
            let calls = if twice.contains(&s) { 13 } else { 7 };
            assert_eq!(sch.timesteps().len(), calls, "{}", sch.name());
        }
    }

    #[test]
    fn schedule_types_build_where_the_sampler_walks_sigmas() {
        let cfg = SchedulerConfig::default();
        for s in Sampler::ALL {
            for schedule in Schedule::ALL {
                let built = build_with(s, schedule, Family::Sdxl, &cfg, 5);
                let allowed = schedule.is_automatic()
                    || (s.takes_schedule()
                        && (s != Sampler::DpmPp2mKarras || schedule == Schedule::Karras));
                assert_eq!(built.is_ok(), allowed, "{s} {schedule}");
                if let Ok(sch) = built {
                    let sigmas = sch.sigmas().map(<[f64]>::to_vec).unwrap_or_default();
                    // DPM2 a's midpoint √(σ·σ_down) is σ_next but for float32 cancellation in σ_down.
                    assert!(
                        sigmas.windows(2).all(|w| w[0] >= w[1] * (1.0 - 1e-4))
                            && sigmas.iter().all(|v| v.is_finite()),
                        "{s} {schedule}: {sigmas:?}"
                    );
                }
            }
        }
        let err = build_with(Sampler::Ddim, Schedule::Karras, Family::Sd1, &cfg, 4)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("DDIM") && err.contains("automatic"), "{err}");
    }

    #[test]
    fn short_runs_stay_finite_for_every_sampler() {
        for s in Sampler::ALL {
            for (steps, schedule) in [0, 1, 2, 3]
                .into_iter()
                .flat_map(|n| Schedule::ALL.map(|k| (n, k)))
            {
                let Ok(mut sch) =
                    build_with(s, schedule, Family::Sd1, &SchedulerConfig::default(), steps)
                else {
                    continue;
                };
                let mut x = vec![sch.init_noise_sigma(); 16];
                for i in 0..sch.timesteps().len() {
                    let input = sch.scale_model_input(&x, i);
                    let out: Vec<f32> = input.iter().map(|v| 0.5 * v).collect();
                    x = sch.step(&out, i, &x, &mut |n| vec![0.25; n]);
                }
                assert!(
                    x.iter().all(|v| v.is_finite()),
                    "{} {schedule} {steps}: {x:?}",
                    sch.name()
                );
            }
        }
    }
}

#[cfg(test)]
mod brownian_tests {
    use super::*;

    /// Runs `sampler` over a fixed fake model with normals of 0.25 from the generator.
    fn run(sampler: Sampler, tree_seed: Option<u64>) -> Vec<f32> {
        let mut sch = build(sampler, &SchedulerConfig::default(), 5);
        if let Some(seed) = tree_seed {
            sch.use_brownian_noise(seed, 16, 0);
        }
        let mut x = vec![sch.init_noise_sigma(); 16];
        for i in 0..sch.timesteps().len() {
            let out: Vec<f32> = sch
                .scale_model_input(&x, i)
                .iter()
                .map(|v| 0.5 * v)
                .collect();
            x = sch.step(&out, i, &x, &mut |n| vec![0.25; n]);
        }
        x
    }

    #[test]
    fn only_the_sde_samplers_take_the_tree_and_it_depends_on_the_seed() {
        for s in Sampler::ALL {
            let (step, tree) = (run(s, None), run(s, Some(1)));
            assert!(tree.iter().all(|v| v.is_finite()), "{s}");
            assert_eq!(step != tree, s.uses_brownian_noise(), "{s}");
            if s.uses_brownian_noise() {
                assert_eq!(run(s, Some(1)), tree, "{s}: same seed");
                assert_ne!(run(s, Some(2)), tree, "{s}: other seed");
            }
        }
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn keys_that_held_the_writers_defaults_are_dropped() {
        // Written by diffusers for a PNDMScheduler: "leading" was PNDM's default, so another
        // scheduler class must fall back to its own spacing, as diffusers' from_config does.
        let text = r#"{"timestep_spacing": "leading", "steps_offset": 1,
                       "_use_default_values": ["timestep_spacing"]}"#;
        let cfg = SchedulerConfig::from_json_str(text).unwrap();
        assert_eq!(cfg.timestep_spacing, None);
        let kept = SchedulerConfig::from_json_str(r#"{"timestep_spacing": "leading"}"#).unwrap();
        assert_eq!(kept.timestep_spacing, Some(TimestepSpacing::Leading));
    }
}
