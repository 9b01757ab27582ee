//! Typed keys that decide whether a session or a cache entry must be rebuilt: what the sessions
//! have fused in ([`FusedKey`]), which adapters a live UNet's factors come from ([`FactorsKey`]) and
//! what its session was built for ([`LiveSessionKey`]). Strengths are compared by their bits.

use crate::live::strengths::{ActiveLora, StrengthKey};
use std::path::PathBuf;

/// One adapter as a session has it fused: its file, its strength(s) there, its block weights and
/// its DyLoRA rank.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FusedAdapter {
    path: PathBuf,
    /// The strengths' bits: te alone for a text encoder, in/mid/out for the UNet.
    strengths: Vec<u32>,
    /// The block-weight values' bits.
    lbw: Option<Vec<u32>>,
    dyn_rank: Option<u32>,
}

impl FusedAdapter {
    fn of(l: &ActiveLora, strengths: &[f32]) -> Self {
        FusedAdapter {
            path: l.path.clone(),
            strengths: bits(strengths),
            lbw: l.tag.lbw.as_ref().map(|b| bits(&b.values)),
            dyn_rank: l.tag.dyn_,
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// The adapters fused into one part (the text encoders, or the UNet); `None` when unknown (after a
/// failed upload, or deltas set by hand), which no wanted state equals, so the next change
/// rewrites everything.
pub type Fusion = Option<Vec<FusedAdapter>>;

/// What the text-encoder and UNet sessions currently have fused in, so a session is rebuilt only
/// when its part of the adapter strengths changes. Adapters at strength 0 are left out: the base.
/// `te` covers every text encoder of the family (they share the `te` strength).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FusedKey {
    pub te: Fusion,
    pub unet: Fusion,
    /// (latent height, latent width, context length) the UNet session was built for, with
    /// static shapes.
    pub unet_dims: Option<[i64; 4]>,
}

impl Default for FusedKey {
    /// The pristine base weights.
    fn default() -> Self {
        FusedKey {
            te: Some(Vec::new()),
            unet: Some(Vec::new()),
            unet_dims: None,
        }
    }
}

impl FusedKey {
    /// What fusing `loras` at `key`'s strengths gives.
    pub fn of(loras: &[ActiveLora], key: &StrengthKey) -> FusedKey {
        let mut te = Vec::new();
        let mut unet = Vec::new();
        for (i, l) in loras.iter().enumerate() {
            if key.te[i] != 0.0 {
                te.push(FusedAdapter::of(l, &[key.te[i]]));
            }
            if key.unet[i].iter().any(|&s| s != 0.0) {
                unet.push(FusedAdapter::of(l, &key.unet[i]));
            }
        }
        FusedKey {
            te: Some(te),
            unet: Some(unet),
            unet_dims: None,
        }
    }

    pub fn with_dims(mut self, dims: Option<[i64; 4]>) -> FusedKey {
        self.unet_dims = dims;
        self
    }

    /// Nothing known about either part (the UNet's shapes are kept).
    pub fn unknown(unet_dims: Option<[i64; 4]>) -> FusedKey {
        FusedKey {
            te: None,
            unet: None,
            unet_dims,
        }
    }
}

/// The adapters of `loras` as a patch program is planned for them, in order: files, block weights
/// and DyLoRA ranks, strengths left out (a change of strengths alone keeps the set).
pub fn adapter_set(loras: &[ActiveLora]) -> Vec<FusedAdapter> {
    loras.iter().map(|l| FusedAdapter::of(l, &[])).collect()
}

/// Which adapters (file and DyLoRA rank) a live UNet's factors come from.
pub type FactorsKey = Vec<(PathBuf, Option<u32>)>;

/// What a live UNet session was built for: its branch layers, the adapters statically fused into
/// its weights and its static shapes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LiveSessionKey {
    pub layers: Vec<String>,
    pub fused_unet: Fusion,
    pub dims: Option<[i64; 4]>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_strength_bits_and_unknown_matches_nothing() {
        let a = StrengthKey {
            te: vec![0.5],
            unet: vec![[1.0, 1.0, 1.0]],
        };
        let loras: Vec<ActiveLora> = Vec::new();
        // No adapters: the pristine state whatever the strengths.
        assert_eq!(FusedKey::of(&loras, &a), FusedKey::default());
        assert_ne!(FusedKey::unknown(None), FusedKey::default());
        let x = FusedAdapter {
            path: PathBuf::from("a.safetensors"),
            strengths: bits(&[1.0, 1.0, 1.0]),
            lbw: None,
            dyn_rank: None,
        };
        let y = FusedAdapter {
            strengths: bits(&[1.0, 0.75, 1.0]),
            ..x.clone()
        };
        assert_ne!(x, y);
        let mut set = std::collections::HashSet::new();
        set.insert(x.clone());
        assert!(set.contains(&x) && !set.contains(&y));
    }
}
