//! The contract between front ends and the engine: a [`Job`] goes in, [`Event`]s come out.
//!
//! A `Job` is plain data (serde), so the TUI, `stipple generate` and `stipple batch` build the same
//! value and the PNG's `stipple` chunk can store it whole for lossless replay.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

pub use crate::hires::HiresFix;
pub use crate::init_image::InitImage;

/// Identifies one submitted job for the lifetime of an engine.
pub type JobId = u64;

/// The samplers stipple offers, named as A1111 shows them. Each is one diffusers scheduler class
/// (see [`crate::pipeline::schedulers::build`]); the noise levels it walks are the [`Schedule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Sampler {
    #[serde(rename = "Euler")]
    Euler,
    #[serde(rename = "Euler a")]
    EulerA,
    #[serde(rename = "Heun")]
    Heun,
    #[serde(rename = "LMS")]
    Lms,
    #[serde(rename = "DDIM")]
    Ddim,
    #[serde(rename = "DPM++ 2M")]
    DpmPp2m,
    /// A1111's pre-1.9 name for DPM++ 2M with the Karras schedule; kept so old jobs replay.
    #[serde(rename = "DPM++ 2M Karras")]
    DpmPp2mKarras,
    #[serde(rename = "DPM++ 2M SDE")]
    DpmPp2mSde,
    #[serde(rename = "UniPC")]
    UniPc,
    #[serde(rename = "LCM")]
    Lcm,
    #[serde(rename = "DPM2")]
    Dpm2,
    #[serde(rename = "DPM2 a")]
    Dpm2A,
    #[serde(rename = "DPM++ 2S a")]
    DpmPp2sA,
    #[serde(rename = "DPM++ SDE")]
    DpmPpSde,
    #[serde(rename = "DPM++ 3M SDE")]
    DpmPp3mSde,
    #[serde(rename = "DEIS")]
    Deis,
    #[serde(rename = "DDPM")]
    Ddpm,
    #[serde(rename = "TCD")]
    Tcd,
    /// ComfyUI's `euler_cfg_pp`; uses the unconditional prediction itself (small CFG scales).
    #[serde(rename = "Euler CFG++")]
    EulerCfgPp,
}

impl Sampler {
    pub const ALL: [Sampler; 19] = [
        Sampler::Euler,
        Sampler::EulerA,
        Sampler::Heun,
        Sampler::Lms,
        Sampler::Ddim,
        Sampler::DpmPp2m,
        Sampler::DpmPp2mKarras,
        Sampler::DpmPp2mSde,
        Sampler::UniPc,
        Sampler::Lcm,
        Sampler::Dpm2,
        Sampler::Dpm2A,
        Sampler::DpmPp2sA,
        Sampler::DpmPpSde,
        Sampler::DpmPp3mSde,
        Sampler::Deis,
        Sampler::Ddpm,
        Sampler::Tcd,
        Sampler::EulerCfgPp,
    ];

    /// The name A1111 shows (and writes into the `parameters` chunk).
    pub fn name(self) -> &'static str {
        self.names().0
    }

    /// A spelling without spaces for command lines (`euler-a`, `dpmpp-2m-sde`).
    pub fn slug(self) -> &'static str {
        self.names().1
    }
}

impl Named for Sampler {
    const ALL: &'static [Self] = &Sampler::ALL;

    fn names(self) -> (&'static str, &'static str) {
        match self {
            Sampler::Euler => ("Euler", "euler"),
            Sampler::EulerA => ("Euler a", "euler-a"),
            Sampler::Heun => ("Heun", "heun"),
            Sampler::Lms => ("LMS", "lms"),
            Sampler::Ddim => ("DDIM", "ddim"),
            Sampler::DpmPp2m => ("DPM++ 2M", "dpmpp-2m"),
            Sampler::DpmPp2mKarras => ("DPM++ 2M Karras", "dpmpp-2m-karras"),
            Sampler::DpmPp2mSde => ("DPM++ 2M SDE", "dpmpp-2m-sde"),
            Sampler::UniPc => ("UniPC", "unipc"),
            Sampler::Lcm => ("LCM", "lcm"),
            Sampler::Dpm2 => ("DPM2", "dpm2"),
            Sampler::Dpm2A => ("DPM2 a", "dpm2-a"),
            Sampler::DpmPp2sA => ("DPM++ 2S a", "dpmpp-2s-a"),
            Sampler::DpmPpSde => ("DPM++ SDE", "dpmpp-sde"),
            Sampler::DpmPp3mSde => ("DPM++ 3M SDE", "dpmpp-3m-sde"),
            Sampler::Deis => ("DEIS", "deis"),
            Sampler::Ddpm => ("DDPM", "ddpm"),
            Sampler::Tcd => ("TCD", "tcd"),
            Sampler::EulerCfgPp => ("Euler CFG++", "euler-cfg-pp"),
        }
    }
}

impl Sampler {
    /// Whether the sampler walks a σ schedule, so a [`Schedule`] other than automatic applies.
    /// DDIM, DDPM, LCM and TCD step between training timesteps of their own.
    pub fn takes_schedule(self) -> bool {
        !matches!(
            self,
            Sampler::Ddim | Sampler::Lcm | Sampler::Ddpm | Sampler::Tcd
        )
    }
}

impl Sampler {
    /// Whether zero terminal SNR (`--zero-snr`, `rescale_betas_zero_snr`) applies: the samplers
    /// whose diffusers class takes `rescale_betas_zero_snr` (Euler, Euler a, DDIM, the DPM-Solver
    /// multistep ones, UniPC, DDPM, LCM, TCD). The others are refused rather than guessed at.
    pub fn takes_zero_snr(self) -> bool {
        matches!(
            self,
            Sampler::Euler
                | Sampler::EulerA
                | Sampler::Ddim
                | Sampler::DpmPp2m
                | Sampler::DpmPp2mKarras
                | Sampler::DpmPp2mSde
                | Sampler::DpmPp3mSde
                | Sampler::UniPc
                | Sampler::Ddpm
                | Sampler::Lcm
                | Sampler::Tcd
        )
    }
}

impl Sampler {
    /// The samplers A1111 runs through k-diffusion, whose σ [`SigmaStyle::A1111`] changes; the
    /// others (UniPC, DEIS, Euler CFG++, DDIM, LCM, DDPM, TCD) keep diffusers' σ under either style.
    pub fn follows_a1111_sigmas(self) -> bool {
        matches!(
            self,
            Sampler::Euler
                | Sampler::EulerA
                | Sampler::Heun
                | Sampler::Lms
                | Sampler::Dpm2
                | Sampler::Dpm2A
                | Sampler::DpmPp2sA
                | Sampler::DpmPp2m
                | Sampler::DpmPp2mKarras
                | Sampler::DpmPpSde
                | Sampler::DpmPp2mSde
                | Sampler::DpmPp3mSde
        )
    }

    /// The SDE samplers, which A1111 gives k-diffusion's Brownian-tree noise (its
    /// `brownian_noise` sampler option): DPM++ SDE, DPM++ 2M SDE and DPM++ 3M SDE.
    pub fn uses_brownian_noise(self) -> bool {
        matches!(
            self,
            Sampler::DpmPpSde | Sampler::DpmPp2mSde | Sampler::DpmPp3mSde
        )
    }
}

impl fmt::Display for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown sampler name; lists the known ones.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown sampler {given:?}; known samplers: {}", known::<Sampler>())]
pub struct UnknownSampler {
    pub given: String,
}

/// The enums named both A1111's way and by a slug.
trait Named: Copy + 'static {
    const ALL: &'static [Self];
    /// (A1111's name, slug).
    fn names(self) -> (&'static str, &'static str);
}

/// Every value as `slug (Name)`, for error messages.
fn known<T: Named>() -> String {
    T::ALL
        .iter()
        .map(|v| format!("{} ({})", v.names().1, v.names().0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The value whose name or slug is `s`, compared case-insensitively, with `_`, `-` and spaces
/// alike and `++` as `pp`.
fn lookup<T: Named>(s: &str) -> Option<T> {
    let norm = |x: &str| {
        x.to_ascii_lowercase()
            .replace(['_', '-', ' '], "")
            .replace("++", "pp")
    };
    let want = norm(s);
    T::ALL.iter().copied().find(|v| {
        let (name, slug) = v.names();
        norm(name) == want || norm(slug) == want
    })
}

impl FromStr for Sampler {
    type Err = UnknownSampler;

    /// Accepts the A1111 name or the slug, case-insensitively, with `_`, `-` and spaces alike.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        lookup(s).ok_or_else(|| UnknownSampler {
            given: s.to_string(),
        })
    }
}

/// Reads a sampler the way A1111 before 1.9 named it, with the schedule type as a suffix
/// (`DPM++ 2M SDE Karras`, `Euler a Exponential`), besides the plain names: the sampler and, where
/// a suffix was split off, its schedule. `DPM++ 2M Karras` stays the sampler of that name.
pub fn parse_sampler(s: &str) -> Result<(Sampler, Option<Schedule>), UnknownSampler> {
    if let Ok(sampler) = s.parse::<Sampler>() {
        return Ok((sampler, None));
    }
    let trimmed = s.trim_end();
    for schedule in Schedule::ALL {
        if schedule == Schedule::Automatic {
            continue;
        }
        for suffix in [schedule.name(), schedule.slug()] {
            let n = trimmed.len().saturating_sub(suffix.len());
            let (head, tail) = (trimmed.get(..n), trimmed.get(n..));
            if let (Some(head), Some(tail)) = (head, tail) {
                let separated = head.ends_with([' ', '-', '_']);
                if separated && tail.eq_ignore_ascii_case(suffix) {
                    if let Ok(sampler) = head.trim_end_matches([' ', '-', '_']).parse::<Sampler>() {
                        return Ok((sampler, Some(schedule)));
                    }
                }
            }
        }
    }
    Err(UnknownSampler {
        given: s.to_string(),
    })
}

/// The noise levels a sampler walks, A1111's "Schedule type" (1.9+), independent of the sampler.
/// `Automatic` is the sampler's own (diffusers' default for its class; Karras for DPM++ 2M Karras).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Schedule {
    #[default]
    #[serde(rename = "Automatic")]
    Automatic,
    /// Karras et al. 2022 (arXiv:2206.00364), ρ = 7.
    #[serde(rename = "Karras")]
    Karras,
    /// Evenly spaced in log σ.
    #[serde(rename = "Exponential")]
    Exponential,
    /// Evenly spaced training timesteps counted down from the last: diffusers' `trailing`
    /// spacing, which its docs give for A1111's "sgm_uniform" (whose timesteps are the same
    /// before rounding).
    #[serde(rename = "SGM Uniform")]
    SgmUniform,
    /// Every (train / steps)-th training σ, counted down from the largest (ComfyUI's "simple").
    #[serde(rename = "Simple")]
    Simple,
    /// Beta(0.6, 0.6) quantiles between σ_min and σ_max (arXiv:2407.12173).
    #[serde(rename = "Beta")]
    Beta,
    /// NVIDIA's Align Your Steps tables (arXiv:2404.14507), log-linearly resampled.
    #[serde(rename = "Align Your Steps")]
    AlignYourSteps,
    /// The training σ log-interpolated at timesteps evenly from the last to the first
    /// (k-diffusion's `get_sigmas`): A1111's "Uniform", which is also what A1111's "Automatic"
    /// gives Euler, Euler a, LMS and Heun.
    #[serde(rename = "Uniform")]
    Uniform,
}

impl Schedule {
    pub const ALL: [Schedule; 8] = [
        Schedule::Automatic,
        Schedule::Karras,
        Schedule::Exponential,
        Schedule::SgmUniform,
        Schedule::Simple,
        Schedule::Beta,
        Schedule::AlignYourSteps,
        Schedule::Uniform,
    ];

    /// The name A1111 shows (its infotext's `Schedule type`).
    pub fn name(self) -> &'static str {
        self.names().0
    }

    /// The command-line spelling (`sgm-uniform`, `ays`).
    pub fn slug(self) -> &'static str {
        self.names().1
    }

    pub fn is_automatic(&self) -> bool {
        *self == Schedule::Automatic
    }
}

impl Named for Schedule {
    const ALL: &'static [Self] = &Schedule::ALL;

    fn names(self) -> (&'static str, &'static str) {
        match self {
            Schedule::Automatic => ("Automatic", "automatic"),
            Schedule::Karras => ("Karras", "karras"),
            Schedule::Exponential => ("Exponential", "exponential"),
            Schedule::SgmUniform => ("SGM Uniform", "sgm-uniform"),
            Schedule::Simple => ("Simple", "simple"),
            Schedule::Beta => ("Beta", "beta"),
            Schedule::AlignYourSteps => ("Align Your Steps", "ays"),
            Schedule::Uniform => ("Uniform", "uniform"),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown schedule type; lists the known ones.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown schedule type {given:?}; known: {}", known::<Schedule>())]
pub struct UnknownSchedule {
    pub given: String,
}

impl FromStr for Schedule {
    type Err = UnknownSchedule;

    /// The A1111 name or the slug, spelled as loosely as sampler names.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        lookup(s).ok_or_else(|| UnknownSchedule {
            given: s.to_string(),
        })
    }
}

/// Where the SDE samplers ([`Sampler::uses_brownian_noise`]) take their per-step noise from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SdeNoise {
    /// A1111's: k-diffusion's `BrownianTreeNoiseSampler` (torchsde's Brownian tree) seeded with
    /// the image's seed, so a seed gives A1111's picture (with its CPU RNG source).
    #[default]
    Brownian,
    /// Fresh normals from the image's generator at every step, as diffusers' multistep SDE
    /// schedulers draw them (stipple before the Brownian tree).
    Step,
}

impl SdeNoise {
    pub const ALL: [SdeNoise; 2] = [SdeNoise::Brownian, SdeNoise::Step];

    /// The command-line and infotext spelling.
    pub fn name(self) -> &'static str {
        self.names().1
    }

    pub fn is_brownian(&self) -> bool {
        *self == SdeNoise::Brownian
    }
}

impl Named for SdeNoise {
    const ALL: &'static [Self] = &SdeNoise::ALL;

    fn names(self) -> (&'static str, &'static str) {
        match self {
            SdeNoise::Brownian => ("Brownian tree", "brownian"),
            SdeNoise::Step => ("per step", "step"),
        }
    }
}

impl fmt::Display for SdeNoise {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown SDE noise source; lists the known ones.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown SDE noise {given:?}; known: {}", known::<SdeNoise>())]
pub struct UnknownSdeNoise {
    pub given: String,
}

impl FromStr for SdeNoise {
    type Err = UnknownSdeNoise;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        lookup(s).ok_or_else(|| UnknownSdeNoise {
            given: s.to_string(),
        })
    }
}

/// Whose σ a schedule type means for the k-diffusion samplers: diffusers' (the default, what the
/// image references check) or A1111's, which differ for some schedule types (see the README's
/// "A1111's own σ").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SigmaStyle {
    /// diffusers' scheduler classes: `Automatic` is the class's default; Karras, exponential
    /// and beta bounded by the sampler's spaced timesteps; SGM uniform as `trailing` spacing.
    #[default]
    Diffusers,
    /// A1111 1.10 through k-diffusion: `Automatic` is the sampler's A1111 default, every type
    /// bounded by the whole training range, fractional SGM uniform timesteps, Align Your Steps
    /// resampled to n points, DPM2 / DPM2 a / DPM++ 3M SDE without the next-to-last σ.
    A1111,
}

impl SigmaStyle {
    pub const ALL: [SigmaStyle; 2] = [SigmaStyle::Diffusers, SigmaStyle::A1111];

    /// The command-line and infotext spelling.
    pub fn name(self) -> &'static str {
        self.names().1
    }

    pub fn is_diffusers(&self) -> bool {
        *self == SigmaStyle::Diffusers
    }

    /// The display spelling (`A1111`, `diffusers`).
    pub fn names_a1111(self) -> &'static str {
        self.names().0
    }
}

impl Named for SigmaStyle {
    const ALL: &'static [Self] = &SigmaStyle::ALL;

    fn names(self) -> (&'static str, &'static str) {
        match self {
            SigmaStyle::Diffusers => ("diffusers", "diffusers"),
            SigmaStyle::A1111 => ("A1111", "a1111"),
        }
    }
}

impl fmt::Display for SigmaStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown σ style; lists the known ones.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown sigma style {given:?}; known: {}", known::<SigmaStyle>())]
pub struct UnknownSigmaStyle {
    pub given: String,
}

impl FromStr for SigmaStyle {
    type Err = UnknownSigmaStyle;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        lookup(s).ok_or_else(|| UnknownSigmaStyle {
            given: s.to_string(),
        })
    }
}

/// One request for images. Everything needed to reproduce them, nothing about the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Positive prompt, in stipple's prompt language (LoRA tags, emphasis, BREAK).
    pub prompt: String,
    #[serde(default)]
    pub negative: String,
    pub sampler: Sampler,
    /// Left out of the JSON when automatic, so jobs written before it existed keep their hash.
    #[serde(default, skip_serializing_if = "Schedule::is_automatic")]
    pub schedule: Schedule,
    /// The SDE samplers' noise; left out of the JSON when Brownian (the default), so jobs keep
    /// their form and hashes. Older jobs of these samplers ran with per-step noise: replaying one
    /// exactly needs `step`.
    #[serde(default, skip_serializing_if = "SdeNoise::is_brownian")]
    pub sde_noise: SdeNoise,
    /// Sample with the noise schedule rescaled to zero terminal SNR (A1111's "Noise schedule for
    /// sampling: Zero Terminal SNR"), for v-prediction models trained that way; the model's
    /// scheduler config may say so too. Left out of the JSON when off, so jobs keep their hashes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub zero_snr: bool,
    /// Whose σ the schedule type means; left out of the JSON when diffusers' (the default), so
    /// jobs keep their form and hashes.
    #[serde(default, skip_serializing_if = "SigmaStyle::is_diffusers")]
    pub sigmas: SigmaStyle,
    pub steps: u32,
    pub cfg: f32,
    pub width: u32,
    pub height: u32,
    /// Seed of the first image; image `i` of the batch uses `seed + i` (A1111's convention).
    pub seed: u64,
    #[serde(default = "one")]
    pub batch: u32,
    /// Image-to-image or inpainting: the picture to start from (absent for text-to-image, and then
    /// left out of the JSON, so text-to-image jobs keep their form and hashes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitImage>,
    /// A1111's hires fix: made at `width` × `height`, then upscaled and redrawn (absent, and left
    /// out of the JSON, without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hires: Option<Box<HiresFix>>,
}

fn one() -> u32 {
    1
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What the engine reports while working on a job. Every job ends with exactly one of
/// `Finished`, `Failed` or `Cancelled`.
#[derive(Debug, Clone)]
pub enum Event {
    Started {
        id: JobId,
        images: u32,
        steps: u32,
    },
    Step(Progress),
    /// A cheap look at the image being sampled (e.g. latent→RGB), small and sent at a few Hz at most;
    /// front ends show the latest one and may drop any.
    Preview {
        id: JobId,
        /// Which image of the batch (0-based).
        image: u32,
        step: u32,
        preview: RgbImage,
    },
    Image {
        id: JobId,
        index: u32,
        seed: u64,
        image: RgbImage,
        infotext: String,
    },
    Finished {
        id: JobId,
    },
    Failed {
        id: JobId,
        message: String,
    },
    Cancelled {
        id: JobId,
    },
}

/// Progress of one sampling step.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub id: JobId,
    /// Which image of the batch (0-based).
    pub image: u32,
    /// Steps done so far in this image (1..=steps).
    pub step: u32,
    pub steps: u32,
    /// Measured over the steps of this image so far.
    pub it_per_s: f32,
}

/// An 8-bit RGB image, row-major, no padding.
#[derive(Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl fmt::Debug for RgbImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RgbImage({}x{})", self.width, self.height)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_names_parse_in_every_spelling() {
        for s in Sampler::ALL {
            assert_eq!(s.name().parse::<Sampler>().unwrap(), s);
            assert_eq!(s.slug().parse::<Sampler>().unwrap(), s);
        }
        assert_eq!(
            "dpm++_2m_karras".parse::<Sampler>().unwrap(),
            Sampler::DpmPp2mKarras
        );
        assert_eq!("EULER_A".parse::<Sampler>().unwrap(), Sampler::EulerA);
        let err = "hune".parse::<Sampler>().unwrap_err().to_string();
        assert!(err.contains("hune") && err.contains("euler-a"), "{err}");
    }

    #[test]
    fn schedule_names_parse_in_every_spelling() {
        for s in Schedule::ALL {
            assert_eq!(s.name().parse::<Schedule>().unwrap(), s);
            assert_eq!(s.slug().parse::<Schedule>().unwrap(), s);
        }
        assert_eq!(
            "sgm_uniform".parse::<Schedule>().unwrap(),
            Schedule::SgmUniform
        );
        let err = "karas".parse::<Schedule>().unwrap_err().to_string();
        assert!(
            err.contains("karas") && err.contains("sgm-uniform"),
            "{err}"
        );
    }

    #[test]
    fn old_a1111_names_split_into_sampler_and_schedule() {
        assert_eq!(
            parse_sampler("DPM++ 2M SDE Karras").unwrap(),
            (Sampler::DpmPp2mSde, Some(Schedule::Karras))
        );
        assert_eq!(
            parse_sampler("euler-a-exponential").unwrap(),
            (Sampler::EulerA, Some(Schedule::Exponential))
        );
        assert_eq!(
            parse_sampler("LMS Karras").unwrap(),
            (Sampler::Lms, Some(Schedule::Karras))
        );
        // The name that is itself a sampler stays one.
        assert_eq!(
            parse_sampler("DPM++ 2M Karras").unwrap(),
            (Sampler::DpmPp2mKarras, None)
        );
        assert!(parse_sampler("Karras").is_err());
        assert!(parse_sampler("DPM++ 9M Karras").is_err());
        assert!(parse_sampler("Euler aKarras").is_err());
    }

    #[test]
    fn job_round_trips_through_json_with_a1111_sampler_names() {
        let job = Job {
            prompt: "a red fox".into(),
            negative: String::new(),
            sampler: Sampler::DpmPp2mKarras,
            schedule: Schedule::Automatic,
            sde_noise: Default::default(),
            zero_snr: false,
            sigmas: Default::default(),
            steps: 4,
            cfg: 7.0,
            width: 64,
            height: 64,
            seed: 1,
            batch: 1,
            init: None,
            hires: None,
        };
        let text = serde_json::to_string(&job).unwrap();
        assert!(text.contains("\"DPM++ 2M Karras\""), "{text}");
        assert!(!text.contains("schedule"), "automatic is left out: {text}");
        assert_eq!(serde_json::from_str::<Job>(&text).unwrap(), job);
        let job = Job {
            sampler: Sampler::DpmPp2mSde,
            schedule: Schedule::AlignYourSteps,
            ..job
        };
        let text = serde_json::to_string(&job).unwrap();
        assert!(text.contains("\"Align Your Steps\""), "{text}");
        assert!(
            !text.contains("sde_noise"),
            "Brownian noise is left out: {text}"
        );
        assert_eq!(serde_json::from_str::<Job>(&text).unwrap(), job);
        let job = Job {
            sde_noise: SdeNoise::Step,
            ..job
        };
        let text = serde_json::to_string(&job).unwrap();
        assert!(text.contains("\"sde_noise\":\"step\""), "{text}");
        assert_eq!(serde_json::from_str::<Job>(&text).unwrap(), job);
    }

    #[test]
    fn sde_noise_names_parse_and_only_sde_samplers_use_the_tree() {
        assert_eq!("brownian".parse::<SdeNoise>().unwrap(), SdeNoise::Brownian);
        assert_eq!("Step".parse::<SdeNoise>().unwrap(), SdeNoise::Step);
        let err = "tree".parse::<SdeNoise>().unwrap_err().to_string();
        assert!(err.contains("brownian") && err.contains("step"), "{err}");
        let sde: Vec<Sampler> = Sampler::ALL
            .into_iter()
            .filter(|s| s.uses_brownian_noise())
            .collect();
        assert_eq!(
            sde,
            [Sampler::DpmPp2mSde, Sampler::DpmPpSde, Sampler::DpmPp3mSde]
        );
    }
}
