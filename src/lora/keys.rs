//! Key schemes → canonical modules. The lookup is built forward from the model's own parameter names:
//! for each module every spelling a file could use is generated (kohya diffusers/LDM names, `lycoris_`,
//! text-encoder prefixes, diffusers/peft dotted names, attention processors); underscores are never guessed back into dots.

use std::collections::HashMap;

use serde::Serialize;

use super::{TargetComponent, TargetParam};
use crate::model::ldm::UnetLayout;

/// What one file key holds for its module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Kind {
    Up,
    Down,
    Mid,
    Alpha,
    Scale,
    DoraScale,
    HadaW1A,
    HadaW1B,
    HadaW2A,
    HadaW2B,
    HadaT1,
    HadaT2,
    LokrW1,
    LokrW1A,
    LokrW1B,
    LokrW2,
    LokrW2A,
    LokrW2B,
    LokrT2,
    GloraA1,
    GloraA2,
    GloraB1,
    GloraB2,
    OftBlocks,
    Rescale,
    Ia3Weight,
    OnInput,
    Diff,
    DiffB,
    WNorm,
    BNorm,
    /// Known but not applied (PEFT DoRA magnitude, T-LoRA, sparse bias, ...): reported as skipped.
    Unsupported,
}

/// Suffixes, tried longest first. Every up/down spelling of §2.1 maps to the same two kinds.
const SUFFIXES: &[(&str, Kind)] = &[
    (".lora_linear_layer.down.weight", Kind::Down),
    (".lora_linear_layer.up.weight", Kind::Up),
    (".lora_A.default.weight", Kind::Down),
    (".lora_B.default.weight", Kind::Up),
    (".lora_magnitude_vector", Kind::Unsupported),
    (".lora.down.weight", Kind::Down),
    (".lora_down.weight", Kind::Down),
    ("_lora.down.weight", Kind::Down),
    (".lora.up.weight", Kind::Up),
    (".lora_up.weight", Kind::Up),
    (".lora_mid.weight", Kind::Mid),
    ("_lora.up.weight", Kind::Up),
    (".lora_A.weight", Kind::Down),
    (".lora_B.weight", Kind::Up),
    (".bias_indices", Kind::Unsupported),
    (".bias_values", Kind::Unsupported),
    (".dora_scale", Kind::DoraScale),
    (".oft_blocks", Kind::OftBlocks),
    (".hada_w1_a", Kind::HadaW1A),
    (".hada_w1_b", Kind::HadaW1B),
    (".hada_w2_a", Kind::HadaW2A),
    (".hada_w2_b", Kind::HadaW2B),
    (".lokr_w1_a", Kind::LokrW1A),
    (".lokr_w1_b", Kind::LokrW1B),
    (".lokr_w2_a", Kind::LokrW2A),
    (".lokr_w2_b", Kind::LokrW2B),
    (".bias_size", Kind::Unsupported),
    (".a1.weight", Kind::GloraA1),
    (".a2.weight", Kind::GloraA2),
    (".b1.weight", Kind::GloraB1),
    (".b2.weight", Kind::GloraB2),
    (".on_input", Kind::OnInput),
    (".bm.weight", Kind::Unsupported),
    (".lora_B.bias", Kind::Unsupported),
    (".hada_t1", Kind::HadaT1),
    (".hada_t2", Kind::HadaT2),
    (".lokr_w1", Kind::LokrW1),
    (".lokr_w2", Kind::LokrW2),
    (".lokr_t2", Kind::LokrT2),
    (".rescale", Kind::Rescale),
    (".diff_b", Kind::DiffB),
    (".w_norm", Kind::WNorm),
    (".b_norm", Kind::BNorm),
    (".lora_A", Kind::Down),
    (".lora_B", Kind::Up),
    (".weight", Kind::Ia3Weight),
    (".alpha", Kind::Alpha),
    (".scale", Kind::Scale),
    (".diff", Kind::Diff),
];

/// A module of the base model that adapters can target: its component and diffusers path (no `.weight`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ModuleRef {
    pub component: TargetComponent,
    pub path: String,
}

/// Every spelling of every model module → module id.
pub struct KeyIndex {
    spellings: HashMap<String, usize>,
    modules: Vec<ModuleRef>,
}

fn u(s: &str) -> String {
    s.replace('.', "_")
}

impl KeyIndex {
    pub fn build(params: &[TargetParam]) -> KeyIndex {
        let layout = UnetLayout::from_names(
            params
                .iter()
                .filter(|p| p.component == TargetComponent::Unet)
                .map(|p| p.name.as_str()),
        );
        let mut idx = KeyIndex {
            spellings: HashMap::new(),
            modules: Vec::new(),
        };
        for p in params {
            let Some(path) = p.name.strip_suffix(".weight") else {
                continue;
            };
            let id = idx.modules.len();
            idx.modules.push(ModuleRef {
                component: p.component,
                path: path.to_string(),
            });
            for s in spellings(p.component, path, &layout) {
                // First registration wins; a collision between two real modules would be a naming bug.
                idx.spellings.entry(s).or_insert(id);
            }
        }
        idx
    }

    pub fn module(&self, id: usize) -> &ModuleRef {
        &self.modules[id]
    }

    pub fn lookup(&self, spelling: &str) -> Option<usize> {
        self.spellings.get(spelling).copied()
    }

    /// Splits a file key into (module id, kind); None when no model module has that spelling.
    pub fn parse(&self, key: &str) -> Option<(usize, Kind)> {
        for (suffix, kind) in SUFFIXES {
            if let Some(stem) = key.strip_suffix(suffix) {
                if let Some(id) = self.lookup(stem) {
                    return Some((id, *kind));
                }
            }
        }
        None
    }
}

/// Splits a key by its longest known suffix without a model (for `inspect`): (module stem, kind).
pub fn split_key(key: &str) -> Option<(&str, Kind)> {
    SUFFIXES.iter().find_map(|(suffix, kind)| {
        key.strip_suffix(suffix)
            .filter(|s| !s.is_empty())
            .map(|s| (s, *kind))
    })
}

/// All spellings a file may use for one module.
pub fn spellings(component: TargetComponent, path: &str, layout: &UnetLayout) -> Vec<String> {
    let mut out = Vec::new();
    match component {
        TargetComponent::Unet => {
            out.push(format!("lora_unet_{}", u(path)));
            out.push(format!("lycoris_{}", u(path)));
            out.push(format!("unet.{path}"));
            out.push(path.to_string());
            if let Some(ldm) = layout.to_ldm(path) {
                out.push(format!("lora_unet_{}", u(&ldm)));
                out.push(format!("diffusion_model.{ldm}"));
            }
            for attn in [".attn1.", ".attn2."] {
                if let Some((head, tail)) = path.split_once(attn) {
                    if matches!(tail, "to_q" | "to_k" | "to_v" | "to_out.0") {
                        let t = tail.trim_end_matches(".0");
                        out.push(format!("unet.{head}{attn}processor.{t}"));
                        out.push(format!("{head}{attn}processor.{t}"));
                    }
                }
            }
        }
        TargetComponent::TextEncoder | TargetComponent::TextEncoder2 => {
            let bodies: Vec<&str> = match path.strip_prefix("text_model.") {
                Some(inner) => vec![path, inner],
                None => vec![path],
            };
            let (kohya, dotted): (&[&str], &str) = if component == TargetComponent::TextEncoder {
                (&["lora_te_", "lora_te1_"], "text_encoder.")
            } else {
                (&["lora_te2_"], "text_encoder_2.")
            };
            for b in bodies {
                for k in kohya {
                    out.push(format!("{k}{}", u(b)));
                }
                out.push(format!("{dotted}{b}"));
                if component == TargetComponent::TextEncoder {
                    out.push(format!("lycoris_{}", u(b)));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Vec<TargetParam> {
        let p = |c, n: &str| TargetParam {
            component: c,
            name: n.into(),
            shape: vec![4, 4],
        };
        vec![
            p(
                TargetComponent::Unet,
                "down_blocks.0.resnets.0.conv1.weight",
            ),
            p(
                TargetComponent::Unet,
                "down_blocks.0.resnets.1.conv1.weight",
            ),
            p(
                TargetComponent::Unet,
                "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight",
            ),
            p(
                TargetComponent::Unet,
                "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0.weight",
            ),
            p(
                TargetComponent::TextEncoder,
                "text_model.encoder.layers.0.self_attn.q_proj.weight",
            ),
            p(
                TargetComponent::TextEncoder2,
                "text_model.encoder.layers.0.mlp.fc1.weight",
            ),
        ]
    }

    #[test]
    fn every_scheme_parses_to_its_module() {
        let idx = KeyIndex::build(&params());
        let q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q";
        let cases = [
            ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight", q, Kind::Up),
            ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight", q, Kind::Down),
            ("lycoris_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.hada_w1_a", q, Kind::HadaW1A),
            ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight", q, Kind::Down),
            ("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight", q, Kind::Up),
            ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora.down.weight", q, Kind::Down),
            ("lycoris_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.weight", q, Kind::Ia3Weight),
            ("lycoris_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.alpha", q, Kind::Alpha),
            (
                "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight",
                "up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0",
                Kind::Down,
            ),
            ("lora_unet_input_blocks_1_0_in_layers_2.lora_mid.weight", "down_blocks.0.resnets.0.conv1", Kind::Mid),
            ("lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha", "text_model.encoder.layers.0.self_attn.q_proj", Kind::Alpha),
            ("lora_te_encoder_layers_0_self_attn_q_proj.alpha", "text_model.encoder.layers.0.self_attn.q_proj", Kind::Alpha),
            ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha", "text_model.encoder.layers.0.self_attn.q_proj", Kind::Alpha),
            ("lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", "text_model.encoder.layers.0.mlp.fc1", Kind::Up),
            (
                "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight",
                "text_model.encoder.layers.0.self_attn.q_proj",
                Kind::Up,
            ),
            ("text_encoder_2.text_model.encoder.layers.0.mlp.fc1.lora_B.weight", "text_model.encoder.layers.0.mlp.fc1", Kind::Up),
        ];
        for (key, module, kind) in cases {
            let (id, k) = idx
                .parse(key)
                .unwrap_or_else(|| panic!("{key} did not parse"));
            assert_eq!((idx.module(id).path.as_str(), k), (module, kind), "{key}");
        }
        let te2 = idx
            .parse("lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha")
            .map(|(i, _)| idx.module(i).component);
        assert_eq!(te2, Some(TargetComponent::TextEncoder2));
        assert!(idx
            .parse("lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight")
            .is_none());
    }
}
