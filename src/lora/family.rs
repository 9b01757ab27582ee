//! Base-model family of an adapter from its tensor shapes (authoritative) with metadata as a hint,
//! checked against the loaded model before any delta is computed.
//!
//! Evidence: the cross-attention context width (`attn2.to_k`/`to_v` down input), the text-encoder
//! widths, and keys for a second text encoder (`lora_te2_`, `text_encoder_2.`: SDXL only).

use serde::Serialize;

use super::file::Adapter;
use super::{TargetComponent, TargetParam};

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
    /// Width of the second text encoder's q_proj input, when present.
    pub te2_width: Option<usize>,
    /// The file has keys for a second text encoder (SDXL's).
    pub has_te2: bool,
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

fn is_te2_key(key: &str) -> bool {
    key.starts_with("lora_te2_") || key.starts_with("text_encoder_2.")
}

pub fn guess(adapter: &Adapter) -> FamilyGuess {
    let mut g = FamilyGuess::default();
    // Keys in sorted order, so the evidence quoted is the same on every run.
    let mut tensors: Vec<_> = adapter.tensors().iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(b.0));
    for (key, info) in tensors {
        let te2 = is_te2_key(key);
        if te2 && !g.has_te2 {
            g.has_te2 = true;
            g.evidence
                .push(format!("{key} is for a second text encoder (SDXL)"));
        }
        if !DOWN_SUFFIXES.iter().any(|s| key.ends_with(s)) || info.shape.len() < 2 {
            continue;
        }
        if te2 && key.contains("q_proj") && g.te2_width.is_none() {
            g.te2_width = Some(info.shape[1]);
        }
        let is_ctx = key.contains("attn2") && (key.contains("to_k") || key.contains("to_v"));
        let is_te = key.contains("q_proj") && !te2;
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
    g.family = match g.context_width.map(family_of_context) {
        Some("unknown") | None if g.has_te2 => Some("SDXL".to_string()),
        Some(f) => Some(f.to_string()),
        None => None,
    };
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

/// The loaded model as the family check sees it: its family and the widths adapters are checked
/// against. Built from the model's parameters, so the workstation's browser and `generate` judge
/// an adapter by the same numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelWidths {
    pub family: crate::family::Family,
    /// Input width of the UNet's cross-attention `to_k` (the text context width).
    pub context: Option<usize>,
    /// Input width of the first text encoder's `q_proj`.
    pub te: Option<usize>,
    /// Input width of the second text encoder's `q_proj`.
    pub te2: Option<usize>,
    /// The model has a second text encoder.
    pub has_te2: bool,
}

impl ModelWidths {
    /// The widths of a model with these parameters.
    pub fn of(family: crate::family::Family, params: &[TargetParam]) -> ModelWidths {
        let width = |comp: TargetComponent, needle: &str| {
            params
                .iter()
                .find(|p| p.component == comp && p.name.contains(needle))
                .and_then(|p| p.shape.get(1).copied())
        };
        ModelWidths {
            family,
            context: width(TargetComponent::Unet, "attn2.to_k.weight"),
            te: width(TargetComponent::TextEncoder, "q_proj.weight"),
            te2: width(TargetComponent::TextEncoder2, "q_proj.weight"),
            has_te2: params
                .iter()
                .any(|p| p.component == TargetComponent::TextEncoder2),
        }
    }
}

/// Compares the adapter's evidence with the loaded model (whose family is `family`, from
/// `model_index.json`); Err(message with the evidence) on a mismatch.
pub fn check(
    g: &FamilyGuess,
    family: crate::family::Family,
    params: &[TargetParam],
) -> Result<(), String> {
    check_widths(g, &ModelWidths::of(family, params))
}

/// [`check`] against a model's widths.
pub fn check_widths(g: &FamilyGuess, m: &ModelWidths) -> Result<(), String> {
    let model = m.family.facts().name;
    let evidence = || g.evidence.join("; ");
    if g.has_te2 && !m.has_te2 {
        return Err(format!(
            "adapter is for SDXL (it has keys for a second text encoder), the loaded model is {model} with one text encoder; evidence: {}",
            evidence()
        ));
    }
    if let (Some(a), Some(w)) = (g.context_width, m.context) {
        if a != w {
            let adapter = match (family_of_context(a), g.has_te2) {
                ("unknown", true) => "SDXL".to_string(),
                ("unknown", false) => "another model".to_string(),
                (f, _) => f.to_string(),
            };
            return Err(format!(
                "adapter is for {adapter} (cross-attention width {a}), the loaded model is {model} (width {w}); evidence: {}",
                evidence()
            ));
        }
    }
    for (width, model_width, what) in [
        (g.te_width, m.te, "text-encoder"),
        (g.te2_width, m.te2, "second text-encoder"),
    ] {
        if let (Some(a), Some(w)) = (width, model_width) {
            if a != w {
                return Err(format!(
                    "{what} width {a} in the adapter, {w} in the loaded model ({model}); evidence: {}",
                    evidence()
                ));
            }
        }
    }
    Ok(())
}
