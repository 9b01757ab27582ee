//! The contract between front ends and the engine: a [`Job`] goes in, [`Event`]s come out.
//!
//! A `Job` is plain data (serde), so the TUI, `stipple generate` and `stipple batch` build the same
//! value and the PNG's `stipple` chunk can store it whole for lossless replay.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

pub use crate::init_image::InitImage;

/// Identifies one submitted job for the lifetime of an engine.
pub type JobId = u64;

/// The samplers stipple offers, named as A1111 shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Sampler {
    #[serde(rename = "Euler")]
    Euler,
    #[serde(rename = "Euler a")]
    EulerA,
    #[serde(rename = "DDIM")]
    Ddim,
    #[serde(rename = "DPM++ 2M")]
    DpmPp2m,
    #[serde(rename = "DPM++ 2M Karras")]
    DpmPp2mKarras,
}

impl Sampler {
    pub const ALL: [Sampler; 5] = [
        Sampler::Euler,
        Sampler::EulerA,
        Sampler::Ddim,
        Sampler::DpmPp2m,
        Sampler::DpmPp2mKarras,
    ];

    /// The name A1111 shows (and writes into the `parameters` chunk).
    pub fn name(self) -> &'static str {
        match self {
            Sampler::Euler => "Euler",
            Sampler::EulerA => "Euler a",
            Sampler::Ddim => "DDIM",
            Sampler::DpmPp2m => "DPM++ 2M",
            Sampler::DpmPp2mKarras => "DPM++ 2M Karras",
        }
    }

    /// A spelling without spaces for command lines (`euler-a`, `dpmpp-2m-karras`).
    pub fn slug(self) -> &'static str {
        match self {
            Sampler::Euler => "euler",
            Sampler::EulerA => "euler-a",
            Sampler::Ddim => "ddim",
            Sampler::DpmPp2m => "dpmpp-2m",
            Sampler::DpmPp2mKarras => "dpmpp-2m-karras",
        }
    }
}

impl fmt::Display for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown sampler name; lists the known ones.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown sampler {given:?}; known samplers: {}", known_samplers())]
pub struct UnknownSampler {
    pub given: String,
}

fn known_samplers() -> String {
    Sampler::ALL
        .iter()
        .map(|s| format!("{} ({})", s.slug(), s.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for Sampler {
    type Err = UnknownSampler;

    /// Accepts the A1111 name or the slug, case-insensitively, with `_`, `-` and spaces alike.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = |x: &str| {
            x.to_ascii_lowercase()
                .replace(['_', '-', ' '], "")
                .replace("++", "pp")
        };
        let want = norm(s);
        Sampler::ALL
            .into_iter()
            .find(|c| norm(c.name()) == want || norm(c.slug()) == want)
            .ok_or_else(|| UnknownSampler {
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
}

fn one() -> u32 {
    1
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
        let err = "heun".parse::<Sampler>().unwrap_err().to_string();
        assert!(err.contains("heun") && err.contains("euler-a"), "{err}");
    }

    #[test]
    fn job_round_trips_through_json_with_a1111_sampler_names() {
        let job = Job {
            prompt: "a red fox".into(),
            negative: String::new(),
            sampler: Sampler::DpmPp2mKarras,
            steps: 4,
            cfg: 7.0,
            width: 64,
            height: 64,
            seed: 1,
            batch: 1,
            init: None,
        };
        let text = serde_json::to_string(&job).unwrap();
        assert!(text.contains("\"DPM++ 2M Karras\""), "{text}");
        assert_eq!(serde_json::from_str::<Job>(&text).unwrap(), job);
    }
}
