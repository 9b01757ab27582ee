//! Base-model family of an adapter from its tensor shapes (authoritative) with metadata as a hint,
//! checked against the loaded model before any delta is computed (lora-formats.md §3).
//!
//! Evidence: the cross-attention context width (`attn2.to_k`/`to_v` down input) and the text-encoder width.

use serde::Serialize;

use super::file::Adapter;
use super::{Component, TargetParam};

/// Family names by cross-attention context width.
pub fn family_of_context(width: usize) -> &'static str {
    match width {
        768 => "SD1.x",
        1024 => "SD2.x",
        2048 => "SDXL",
        1280 => "SDXL refiner",
        _ => "unknown",
    }
}

/// What the adapter file says about its base family.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FamilyGuess {
    /// Cross-attention width from `attn2.to_k`/`to_v` down factors, when present.
    pub context_width: Option<usize>,
    /// Width of the first text encoder's q_proj input, when present.
    pub te_width: Option<usize>,
    pub family: Option<String>,
    pub evidence: Vec<String>,
    /// From `ss_base_model_version` / `modelspec.architecture`; a hint only.
    pub metadata_hint: Option<String>,
}

const DOWN_SUFFIXES: [&str; 6] = [
    ".lora_down.weight",
    ".lora_A.weight",
    ".lora.down.weight",
    "_lora.down.weight",
    ".lora_linear_layer.down.weight",
    ".lora_A",
];

pub fn guess(adapter: &Adapter) -> FamilyGuess {
    let mut g = FamilyGuess::default();
    for (key, info) in adapter.tensors() {
        if !DOWN_SUFFIXES.iter().any(|s| key.ends_with(s)) || info.shape.len() < 2 {
            continue;
        }
        let is_ctx = key.contains("attn2") && (key.contains("to_k") || key.contains("to_v"));
        let is_te =
            key.contains("q_proj") && !key.contains("te2") && !key.contains("text_encoder_2");
        if is_ctx && g.context_width.is_none() {
            g.context_width = Some(info.shape[1]);
            g.evidence.push(format!(
                "{key} has input width {} (cross-attention context)",
                info.shape[1]
            ));
        }
        if is_te && g.te_width.is_none() {
            g.te_width = Some(info.shape[1]);
            g.evidence.push(format!(
                "{key} has input width {} (text encoder)",
                info.shape[1]
            ));
        }
    }
    g.family = g.context_width.map(|w| family_of_context(w).to_string());
    let md = adapter.metadata();
    g.metadata_hint = md
        .get("modelspec.architecture")
        .or_else(|| md.get("ss_base_model_version"))
        .cloned()
        .or_else(|| {
            md.get("ss_v2")
                .filter(|v| *v == "True")
                .map(|_| "sd_v2".to_string())
        });
    g
}

/// Compares the adapter's widths with the model's; Err(message with the evidence) on a mismatch.
pub fn check(
    g: &FamilyGuess,
    family: crate::family::Family,
    params: &[TargetParam],
) -> Result<(), String> {
    let model_width = |comp: Component, needle: &str| {
        params
            .iter()
            .find(|p| p.component == comp && p.name.contains(needle))
            .and_then(|p| p.shape.get(1).copied())
    };
    if let (Some(a), Some(m)) = (
        g.context_width,
        model_width(Component::Unet, "attn2.to_k.weight"),
    ) {
        if a != m {
            let facts = family.facts();
            let model = if facts.context_dim == m {
                facts.name
            } else {
                family_of_context(m)
            };
            return Err(format!(
                "adapter is for {} (cross-attention width {a}), the loaded model is {model} (width {m}); evidence: {}",
                family_of_context(a),
                g.evidence.join("; ")
            ));
        }
    }
    if let (Some(a), Some(m)) = (
        g.te_width,
        model_width(Component::TextEncoder, "q_proj.weight"),
    ) {
        if a != m {
            return Err(format!(
                "text-encoder width {a} in the adapter, {m} in the model; evidence: {}",
                g.evidence.join("; ")
            ));
        }
    }
    Ok(())
}
