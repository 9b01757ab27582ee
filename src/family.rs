//! Per-family facts (SD1.x, SDXL) in one table: VAE scaling, text-encoder widths, pad ids, defaults.
//!
//! Code asks [`Family::facts`] instead of matching on the family, so adding a family is one row.

use serde::{Deserialize, Serialize};

/// A base-model family. Adapters are checked against it before any weight is touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Family {
    #[serde(rename = "sd1")]
    Sd1,
    #[serde(rename = "sdxl")]
    Sdxl,
}

/// What differs between families.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub name: &'static str,
    /// `vae.config.scaling_factor`
    pub vae_scale: f32,
    /// Width of the UNet's cross-attention context (768 SD1, 2048 SDXL); the family check's evidence.
    pub context_dim: usize,
    /// Pad token id per text encoder (SD1 CLIP-L pads with EOS; SDXL's second encoder with "!").
    pub pad_ids: &'static [u32],
    pub default_size: (u32, u32),
    pub default_steps: u32,
    pub default_cfg: f32,
}

const SD1: Facts = Facts {
    name: "SD1.x",
    vae_scale: 0.18215,
    context_dim: 768,
    pad_ids: &[49407],
    default_size: (512, 512),
    default_steps: 20,
    default_cfg: 7.0,
};

const SDXL: Facts = Facts {
    name: "SDXL",
    vae_scale: 0.13025,
    context_dim: 2048,
    pad_ids: &[49407, 0],
    default_size: (1024, 1024),
    default_steps: 30,
    default_cfg: 7.0,
};

impl Family {
    pub fn facts(self) -> &'static Facts {
        match self {
            Family::Sd1 => &SD1,
            Family::Sdxl => &SDXL,
        }
    }
}
