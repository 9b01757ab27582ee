//! `lora inspect`: what an adapter file holds without a model: types per module, ranks/alphas, module
//! counts per component, family guess with evidence, trigger words, metadata summary and hashes.
//!
//! Hashes: SHA-256 of the file (AutoV2 = first 10 hex), and of the tensor data after the header
//! (AutoV3 = its first 12 hex, the value Civitai stores and A1111-style infotexts carry).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::detect::{detect, ModuleTensors};
use super::family::{self, FamilyGuess};
use super::file::Adapter;
use super::keys::{split_key, Kind};
use super::tensor::Tensor;
use super::{triggers, Component};

#[derive(Debug, Serialize)]
pub struct ModuleInfo {
    /// The module's name as spelled in the file.
    pub name: String,
    pub component: Component,
    pub label: String,
    pub rank: Option<usize>,
    pub alpha: Option<f32>,
}

#[derive(Debug, Serialize)]
pub struct Inspection {
    pub path: String,
    pub sha256: String,
    pub autov2: String,
    pub tensor_sha256: String,
    pub autov3: String,
    pub tensors: usize,
    pub modules: Vec<ModuleInfo>,
    pub types: BTreeMap<String, usize>,
    pub per_component: BTreeMap<String, usize>,
    pub ranks: BTreeMap<usize, usize>,
    pub alphas: Vec<f32>,
    pub family: FamilyGuess,
    pub triggers: Vec<String>,
    /// Short metadata values (long JSON blobs such as ss_tag_frequency are summarised by length).
    pub metadata: BTreeMap<String, String>,
    pub unrecognised_keys: Vec<String>,
    pub warnings: Vec<String>,
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn component_of(stem: &str) -> Component {
    if stem.starts_with("lora_te2_") || stem.starts_with("text_encoder_2.") {
        Component::TextEncoder2
    } else if stem.starts_with("lora_te")
        || stem.starts_with("text_encoder.")
        || stem.starts_with("lycoris_encoder_")
        || stem.starts_with("lycoris_text_model_")
    {
        Component::TextEncoder
    } else {
        Component::Unet
    }
}

fn rank_of(t: &ModuleTensors) -> Option<usize> {
    let first = |k| t.get(k).and_then(|x: &Tensor| x.shape.first().copied());
    first(Kind::Down)
        .or_else(|| first(Kind::HadaW1B))
        .or_else(|| first(Kind::LokrW2B))
        .or_else(|| first(Kind::LokrW1B))
        .or_else(|| first(Kind::GloraA2))
}

/// Inspects an opened adapter (reads every tensor once for the NaN/Inf check).
pub fn inspect(adapter: &Adapter) -> Inspection {
    let raw = adapter.raw_bytes();
    let sha = hex(&Sha256::digest(raw));
    let tsha = hex(&Sha256::digest(&raw[adapter.data_start()..]));
    let mut groups: BTreeMap<&str, ModuleTensors> = BTreeMap::new();
    let mut unrecognised = Vec::new();
    let mut warnings = Vec::new();
    for key in adapter.tensors().keys() {
        let Ok(t) = adapter.tensor(key) else { continue };
        let bad = t.data.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            warnings.push(format!("{key}: {bad} NaN/Inf values"));
        }
        match split_key(key) {
            Some((stem, kind)) if kind != Kind::Unsupported => {
                groups.entry(stem).or_default().by_kind.insert(kind, t);
            }
            _ => unrecognised.push(key.clone()),
        }
    }
    let mut modules = Vec::new();
    let (mut types, mut per_component, mut ranks) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let mut alphas: Vec<f32> = Vec::new();
    for (stem, t) in &groups {
        let Some(det) = detect(t) else {
            unrecognised.extend(t.by_kind.keys().map(|k| format!("{stem} ({k:?})")));
            continue;
        };
        let conv = t
            .by_kind
            .values()
            .any(|x| x.shape.len() == 4 && x.shape[2..].iter().product::<usize>() > 1);
        let label = det.label(conv);
        let rank = rank_of(t);
        let alpha = t.get(Kind::Alpha).and_then(Tensor::scalar);
        *types.entry(label.clone()).or_insert(0) += 1;
        let component = component_of(stem);
        *per_component.entry(format!("{component:?}")).or_insert(0) += 1;
        if let Some(r) = rank {
            *ranks.entry(r).or_insert(0) += 1;
        }
        if let Some(a) = alpha {
            if !alphas.contains(&a) {
                alphas.push(a);
            }
        }
        modules.push(ModuleInfo {
            name: stem.to_string(),
            component,
            label,
            rank,
            alpha,
        });
    }
    let metadata = adapter
        .metadata()
        .iter()
        .map(|(k, v)| {
            let v = if v.chars().count() > 200 {
                format!("<{} characters>", v.len())
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect();
    Inspection {
        path: adapter.path().display().to_string(),
        autov2: sha[..10].to_uppercase(),
        sha256: sha,
        autov3: tsha[..12].to_uppercase(),
        tensor_sha256: tsha,
        tensors: adapter.tensors().len(),
        modules,
        types,
        per_component,
        ranks,
        alphas,
        family: family::guess(adapter),
        triggers: triggers::triggers(adapter.path(), adapter.metadata()),
        metadata,
        unrecognised_keys: unrecognised,
        warnings,
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.path)?;
        writeln!(
            f,
            "  sha256 {}  AutoV2 {}  AutoV3 {}",
            self.sha256, self.autov2, self.autov3
        )?;
        let types: Vec<String> = self
            .types
            .iter()
            .map(|(k, v)| format!("{k} ×{v}"))
            .collect();
        writeln!(
            f,
            "  {} tensors, {} modules: {}",
            self.tensors,
            self.modules.len(),
            types.join(", ")
        )?;
        let comps: Vec<String> = self
            .per_component
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(f, "  per component: {}", comps.join(", "))?;
        let ranks: Vec<String> = self
            .ranks
            .iter()
            .map(|(r, n)| format!("{r} (×{n})"))
            .collect();
        writeln!(
            f,
            "  ranks: {}  alphas: {:?}",
            ranks.join(", "),
            self.alphas
        )?;
        match &self.family.family {
            Some(fam) => writeln!(f, "  family: {fam} ({})", self.family.evidence.join("; "))?,
            None => writeln!(f, "  family: not determined from shapes")?,
        }
        if let Some(h) = &self.family.metadata_hint {
            writeln!(f, "  metadata family hint: {h}")?;
        }
        if !self.triggers.is_empty() {
            writeln!(f, "  trigger words: {}", self.triggers.join(", "))?;
        }
        for (k, v) in &self.metadata {
            writeln!(f, "  {k}: {v}")?;
        }
        if !self.unrecognised_keys.is_empty() {
            writeln!(
                f,
                "  {} unrecognised keys, e.g. {}",
                self.unrecognised_keys.len(),
                self.unrecognised_keys[0]
            )?;
        }
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        Ok(())
    }
}
