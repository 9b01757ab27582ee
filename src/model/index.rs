//! `model_index.json`: a model's family, precision, latent scale, default size and components.
//! Its own module because the templates and the folder reader both read it.

use crate::family::{ComponentKind, Family};
use serde::{Deserialize, Serialize};

/// `model_index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelIndex {
    pub format: u32,
    pub family: Family,
    /// `fp32` or `fp16`: the dtype of the UNet and text encoders.
    pub dtype: String,
    /// Image pixels per latent pixel (8 for real models).
    pub vae_scale_factor: u32,
    /// The VAE's `scaling_factor`; when absent, the family's.
    pub vae_scaling_factor: Option<f32>,
    pub default_width: Option<u32>,
    pub default_height: Option<u32>,
    pub components: Vec<ComponentKind>,
    /// diffusers' pipeline setting (SDXL): an empty negative prompt conditions on zeros. When
    /// absent, the family's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_zeros_for_empty_prompt: Option<bool>,
}
