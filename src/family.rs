//! Per-family facts (SD1.x, SDXL) in one table: VAE scaling, text encoders and what the UNet takes
//! from them, pad ids, defaults.
//!
//! Code asks [`Family::facts`] instead of matching on the family, so adding a family is one row.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The components a pipeline is made of (which ones a family has: [`Facts::encoders`], plus the
/// UNet and VAE every family has). `model::layout` re-exports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ComponentKind {
    TextEncoder,
    // snake_case would spell it `text_encoder2`; the folder (and diffusers) say `text_encoder_2`.
    #[serde(rename = "text_encoder_2")]
    TextEncoder2,
    Unet,
    VaeDecoder,
    /// Image → latent moments (image-to-image); opened when a model has it, unused by text-to-image.
    VaeEncoder,
}

impl ComponentKind {
    pub fn dir_name(self) -> &'static str {
        match self {
            ComponentKind::TextEncoder => "text_encoder",
            ComponentKind::TextEncoder2 => "text_encoder_2",
            ComponentKind::Unet => "unet",
            ComponentKind::VaeDecoder => "vae_decoder",
            ComponentKind::VaeEncoder => "vae_encoder",
        }
    }
}

impl fmt::Display for ComponentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dir_name())
    }
}

/// A base-model family. Adapters are checked against it before any weight is touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Family {
    #[serde(rename = "sd1")]
    Sd1,
    /// SD 2.x: one OpenCLIP-H text encoder (context 1024); 512 epsilon and 768 v-prediction models
    /// differ only in their scheduler's `prediction_type`.
    #[serde(rename = "sd2")]
    Sd2,
    #[serde(rename = "sdxl")]
    Sdxl,
}

/// One text encoder of a family, in the order its hidden states are concatenated.
#[derive(Debug, Clone, Copy)]
pub struct TextEncoder {
    pub component: ComponentKind,
    /// The tokenizer folder inside the model folder.
    pub tokenizer: &'static str,
    /// Pad token id (SD1's and SDXL's CLIP-L pad with EOS 49407; SDXL's OpenCLIP-bigG with "!" = 0).
    pub pad_id: u32,
    /// The pad token's text (for the bundled vocabulary, when a model has no tokenizer folder).
    pub pad_token: &'static str,
    /// The graph output the UNet is conditioned on: SD1 the final hidden state, SDXL the penultimate.
    pub hidden_output: &'static str,
}

/// What differs between families.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub name: &'static str,
    /// `vae.config.scaling_factor`
    pub vae_scale: f32,
    /// Whether the family's own VAE decodes in fp16 without overflowing (SDXL's does not; its
    /// fp16-fix retrain does).
    pub vae_fp16_safe: bool,
    /// Width of the UNet's cross-attention context (768 SD1, 2048 SDXL); the family check's evidence.
    pub context_dim: usize,
    /// The text encoders; the UNet context is their hidden states concatenated per token.
    pub encoders: &'static [TextEncoder],
    /// SDXL's added conditioning: the last encoder's pooled, projected output (this graph output,
    /// from a prompt's first chunk) goes to the UNet's `text_embeds`, with size/crop `time_ids`.
    pub pooled_output: Option<&'static str>,
    /// diffusers' `force_zeros_for_empty_prompt` when `model_index.json` does not say: an empty
    /// negative prompt conditions on zeros instead of on the encoded "".
    pub zeros_for_empty_negative: bool,
    pub default_size: (u32, u32),
    pub default_steps: u32,
    pub default_cfg: f32,
    /// Linear map from the 4 latent channels to RGB in [-1, 1], for cheap previews while sampling
    /// (the usual approximation of the VAE decoder, fitted per family).
    pub latent_rgb: [[f32; 3]; 4],
}

const SD1: Facts = Facts {
    name: "SD1.x",
    vae_scale: 0.18215,
    vae_fp16_safe: true,
    context_dim: 768,
    encoders: &[TextEncoder {
        component: ComponentKind::TextEncoder,
        tokenizer: "tokenizer",
        pad_id: 49407,
        pad_token: "<|endoftext|>",
        hidden_output: "last_hidden_state",
    }],
    pooled_output: None,
    zeros_for_empty_negative: false,
    default_size: (512, 512),
    default_steps: 20,
    default_cfg: 7.0,
    latent_rgb: [
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ],
};

const SD2: Facts = Facts {
    name: "SD2.x",
    vae_scale: 0.18215,
    vae_fp16_safe: true,
    context_dim: 1024,
    // diffusers keeps OpenCLIP-H's first 23 layers (SD2 conditions on the penultimate layer through
    // the final norm), so the graph's last hidden state is SD2's context. Its tokenizer pads with "!".
    encoders: &[TextEncoder {
        component: ComponentKind::TextEncoder,
        tokenizer: "tokenizer",
        pad_id: 0,
        pad_token: "!",
        hidden_output: "last_hidden_state",
    }],
    pooled_output: None,
    zeros_for_empty_negative: false,
    default_size: (512, 512),
    default_steps: 20,
    default_cfg: 7.0,
    // SD2 shares SD1's VAE and latent space.
    latent_rgb: SD1.latent_rgb,
};

const SDXL: Facts = Facts {
    name: "SDXL",
    vae_scale: 0.13025,
    vae_fp16_safe: false,
    context_dim: 2048,
    encoders: &[
        TextEncoder {
            component: ComponentKind::TextEncoder,
            tokenizer: "tokenizer",
            pad_id: 49407,
            pad_token: "<|endoftext|>",
            hidden_output: "penultimate_hidden_state",
        },
        TextEncoder {
            component: ComponentKind::TextEncoder2,
            tokenizer: "tokenizer_2",
            pad_id: 0,
            pad_token: "!",
            hidden_output: "penultimate_hidden_state",
        },
    ],
    pooled_output: Some("text_embeds"),
    zeros_for_empty_negative: true,
    default_size: (1024, 1024),
    default_steps: 30,
    default_cfg: 7.0,
    latent_rgb: [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ],
};

impl Family {
    /// The family whose UNet block layout this one has (SD 2.x's UNet has SD1's blocks), for
    /// block-weight vectors.
    pub fn block_layout(self) -> Family {
        match self {
            Family::Sd2 => Family::Sd1,
            f => f,
        }
    }

    pub fn facts(self) -> &'static Facts {
        match self {
            Family::Sd1 => &SD1,
            Family::Sd2 => &SD2,
            Family::Sdxl => &SDXL,
        }
    }
}
