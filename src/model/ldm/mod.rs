//! diffusers parameter names → the names of the original (LDM) single-file checkpoints, per
//! component: UNet (`model.diffusion_model.`), VAE (`first_stage_model.`), CLIP-L and OpenCLIP.
//!
//! [`Naming::sources`] gives, for one diffusers parameter, where a file of that naming keeps it (in
//! the order to try); maps are computed from the component's own parameter names, so the same code
//! reads SD1, SDXL and the tiny test models.

mod clip;
mod unet;
mod vae;

pub use unet::UnetLayout;

use super::checkpoint::Source;

/// How a single-file checkpoint names one component's parameters.
#[derive(Debug, Clone)]
pub enum Naming {
    /// `prefix` + the LDM UNet name (`input_blocks.N.M...`).
    Unet { prefix: String, layout: UnetLayout },
    /// The EMA copy of the UNet: `model_ema.` + the UNet's `diffusion_model.` name with its dots
    /// removed, as LDM's EMA module stores it.
    UnetEma { layout: UnetLayout },
    /// `prefix` + the LDM VAE name; `up_blocks` is the decoder's level count (LDM numbers them
    /// from the other end).
    Vae { prefix: String, up_blocks: usize },
    /// transformers' CLIP under `prefix`, with or without the `text_model.` level.
    ClipL { prefix: String },
    /// OpenCLIP under `prefix` (`transformer.resblocks.N`, packed `in_proj`, `text_projection`
    /// stored transposed).
    OpenClip { prefix: String },
    /// diffusers' own names (a Hugging Face folder's component file), with the fallbacks older
    /// and newer writers use.
    Diffusers,
}

impl Naming {
    /// A UNet naming whose block layout is read off `names` (the diffusers parameters).
    pub fn unet<'a>(prefix: &str, names: impl IntoIterator<Item = &'a str>) -> Naming {
        Naming::Unet {
            prefix: prefix.to_string(),
            layout: UnetLayout::from_names(names),
        }
    }

    /// A VAE naming whose decoder level count is read off `names`.
    pub fn vae<'a>(prefix: &str, names: impl IntoIterator<Item = &'a str>) -> Naming {
        Naming::Vae {
            prefix: prefix.to_string(),
            up_blocks: vae::up_blocks(names),
        }
    }

    /// The same naming with its layout read off `names`, the parameters the component's graphs
    /// read (a naming made before the template was known has an empty one).
    pub fn with_names<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Naming {
        match self {
            Naming::Unet { prefix, .. } => Naming::unet(prefix, names),
            Naming::UnetEma { .. } => Naming::UnetEma {
                layout: UnetLayout::from_names(names),
            },
            Naming::Vae { prefix, .. } => Naming::vae(prefix, names),
            other => other.clone(),
        }
    }

    /// Where a file of this naming keeps the diffusers parameter `name` of shape `shape`, in the
    /// order to try; empty when the naming has no place for it.
    pub fn sources(&self, name: &str, shape: &[usize]) -> Vec<Source> {
        let whole = |key: String| Source::Whole { key };
        match self {
            Naming::Unet { prefix, layout } => layout
                .to_ldm(name)
                .map(|n| vec![whole(format!("{prefix}{n}"))])
                .unwrap_or_default(),
            Naming::UnetEma { layout } => layout
                .to_ldm(name)
                .map(|n| {
                    let flat: String = format!("diffusion_model.{n}")
                        .chars()
                        .filter(|&c| c != '.')
                        .collect();
                    vec![whole(format!("model_ema.{flat}"))]
                })
                .unwrap_or_default(),
            Naming::Vae { prefix, up_blocks } => vae::to_ldm(name, *up_blocks)
                .map(|n| vec![whole(format!("{prefix}{n}"))])
                .unwrap_or_default(),
            Naming::ClipL { prefix } => clip::clip_l(name)
                .into_iter()
                .map(|n| whole(format!("{prefix}{n}")))
                .collect(),
            Naming::OpenClip { prefix } => clip::open_clip(name, shape)
                .map(|s| vec![s.with_prefix(prefix)])
                .unwrap_or_default(),
            Naming::Diffusers => {
                let mut out = vec![whole(name.to_string())];
                out.extend(clip::clip_l(name).into_iter().skip(1).map(whole));
                out.extend(vae::old_attention_name(name).map(whole));
                out
            }
        }
    }
}

impl Source {
    fn with_prefix(self, prefix: &str) -> Source {
        match self {
            Source::Whole { key } => Source::Whole {
                key: format!("{prefix}{key}"),
            },
            Source::Rows { key, start, end } => Source::Rows {
                key: format!("{prefix}{key}"),
                start,
                end,
            },
            Source::Transposed { key } => Source::Transposed {
                key: format!("{prefix}{key}"),
            },
        }
    }
}
