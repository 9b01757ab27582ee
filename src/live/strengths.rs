//! The strengths of a prompt's adapters: [`ActiveLora`] (a tag with its opened file),
//! [`strengths_at`] a step as a [`StrengthKey`], and [`strengths_of`] one adapter at a key, with the
//! model parameters adapters may target ([`target_params`], [`base_weights`]). Shared by the fused
//! path (`pipeline`) and live stepping; it sits below both.

use crate::lora::{self, Adapter, Strengths, TargetComponent, TargetParam};
use crate::model::layout::ComponentKind;
use crate::model::Model;
use crate::prompt::LoraTag;
use std::path::PathBuf;
use std::sync::Arc;

/// One adapter of a prompt.
#[derive(Clone)]
pub struct ActiveLora {
    pub tag: LoraTag,
    pub path: PathBuf,
    pub adapter: Arc<Adapter>,
}

/// The strengths of every adapter at one step, split by what they force to be rebuilt.
#[derive(Debug, Clone, PartialEq)]
pub struct StrengthKey {
    /// Per adapter: text-encoder strength.
    pub te: Vec<f32>,
    /// Per adapter: in, mid, out.
    pub unet: Vec<[f32; 3]>,
}

impl StrengthKey {
    pub fn te_active(&self) -> bool {
        self.te.iter().any(|&s| s != 0.0)
    }
    pub fn unet_active(&self) -> bool {
        self.unet.iter().flatten().any(|&s| s != 0.0)
    }
}

/// Strengths at 0-based `step` of `steps`.
pub fn strengths_at(loras: &[ActiveLora], step: usize, steps: usize) -> StrengthKey {
    StrengthKey {
        te: loras.iter().map(|l| l.tag.te.at(step, steps)).collect(),
        unet: loras
            .iter()
            .map(|l| {
                [
                    l.tag.in_.at(step, steps),
                    l.tag.mid.at(step, steps),
                    l.tag.out.at(step, steps),
                ]
            })
            .collect(),
    }
}

/// The lora module's component of a model component (the UNet and both text encoders).
pub fn lora_component(kind: ComponentKind) -> Option<TargetComponent> {
    match kind {
        ComponentKind::TextEncoder => Some(TargetComponent::TextEncoder),
        ComponentKind::TextEncoder2 => Some(TargetComponent::TextEncoder2),
        ComponentKind::Unet => Some(TargetComponent::Unet),
        ComponentKind::VaeDecoder | ComponentKind::VaeEncoder => None,
    }
}

pub fn model_kind(c: TargetComponent) -> ComponentKind {
    match c {
        TargetComponent::TextEncoder => ComponentKind::TextEncoder,
        TargetComponent::TextEncoder2 => ComponentKind::TextEncoder2,
        TargetComponent::Unet => ComponentKind::Unet,
    }
}

/// The parameters adapters may target: every base weight of the text encoders and the UNet.
pub fn target_params(model: &Model) -> Vec<TargetParam> {
    let mut out = Vec::new();
    for (kind, comp) in &model.components {
        let Some(component) = lora_component(*kind) else {
            continue;
        };
        let mut shapes: Vec<_> = comp.weights.shapes().into_iter().collect();
        shapes.sort();
        out.extend(shapes.into_iter().map(|(name, shape)| TargetParam {
            component,
            name,
            shape,
        }));
    }
    out
}

/// The pristine base weights of the model as f32, by component and diffusers name.
pub fn base_weights(
    model: &Model,
) -> impl Fn(TargetComponent, &str) -> Option<Vec<f32>> + Sync + '_ {
    move |c: TargetComponent, name: &str| {
        model
            .component(model_kind(c))?
            .weights
            .tensor(name)
            .map(|t| t.to_f32())
    }
}

/// The engine's strengths of adapter `i` at `key`: te, in/mid/out, block weights, DyLoRA rank.
pub fn strengths_of(l: &ActiveLora, key: &StrengthKey, i: usize) -> Strengths {
    let [unet_in, unet_mid, unet_out] = key.unet[i];
    let blocks: Option<Arc<lora::BlockFn>> = l.tag.lbw.clone().map(|lbw| {
        let f: Arc<lora::BlockFn> = Arc::new(move |c: TargetComponent, name: &str| match c {
            TargetComponent::Unet => lbw.weight_for_unet_module(name),
            _ => lbw.text_encoder_weight(),
        });
        f
    });
    Strengths {
        te: key.te[i],
        unet_in,
        unet_mid,
        unet_out,
        blocks,
        dyn_rank: l.tag.dyn_.map(|d| d as usize),
    }
}
