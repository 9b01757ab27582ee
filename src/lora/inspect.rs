//! `lora inspect`: what an adapter file holds without a model: types per module, ranks/alphas, module
//! counts per component, family guess with evidence, trigger words, metadata summary and hashes.
//! Types, ranks and family come from the same header reading the LoRA catalog uses.
//!
//! Hashes: SHA-256 of the file (AutoV2 = first 10 hex), and of the tensor data after the header
//! (AutoV3 = its first 12 hex, the value Civitai stores and A1111-style infotexts carry).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::family::{self, FamilyGuess};
use super::file::Adapter;
use super::keys::Kind;
use super::{header, triggers, TargetComponent};

#[derive(Debug, Serialize)]
pub struct ModuleInfo {
    /// The module's name as spelled in the file.
    pub name: String,
    pub component: TargetComponent,
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

/// Inspects an opened adapter (reads every tensor once for the NaN/Inf check).
pub fn inspect(adapter: &Adapter) -> Inspection {
    let raw = adapter.raw_bytes();
    let sha = hex(&Sha256::digest(raw));
    let tsha = hex(&Sha256::digest(&raw[adapter.data_start()..]));
    let mut warnings = Vec::new();
    for key in adapter.tensors().keys() {
        let Ok(t) = adapter.tensor(key) else { continue };
        let bad = t.data.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            warnings.push(format!("{key}: {bad} NaN/Inf values"));
        }
    }
    let header = header::modules(adapter);
    let mut per_component = BTreeMap::new();
    let mut alphas: Vec<f32> = Vec::new();
    let mut modules = Vec::new();
    for m in &header.modules {
        let alpha = m
            .keys
            .get(&Kind::Alpha)
            .and_then(|key| adapter.tensor(key).ok())
            .and_then(|t| t.scalar());
        *per_component
            .entry(format!("{:?}", m.component))
            .or_insert(0) += 1;
        if let Some(a) = alpha {
            if !alphas.contains(&a) {
                alphas.push(a);
            }
        }
        modules.push(ModuleInfo {
            name: m.stem.to_string(),
            component: m.component,
            label: m.label.clone(),
            rank: m.rank,
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
        types: header.types(),
        ranks: header.ranks(),
        modules,
        per_component,
        alphas,
        family: family::guess(adapter),
        triggers: triggers::triggers(adapter.path(), adapter.metadata()),
        metadata,
        unrecognised_keys: header.unrecognised,
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
