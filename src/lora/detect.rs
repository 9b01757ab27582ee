//! Type detection per module from the set of key kinds it has, and the
//! module's decoded tensors.

use std::collections::BTreeMap;

use serde::Serialize;

use super::keys::Kind;
use super::tensor::Tensor;

/// The adapter algorithm of one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum AdapterType {
    Lora,
    LoHa,
    LoKr,
    Glora,
    DiagOft,
    Boft,
    Ia3,
    Full,
    Norm,
}

/// A detected module type with its variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Detected {
    pub kind: AdapterType,
    pub tucker: bool,
    pub dora: bool,
}

impl Detected {
    /// Display label: "LoRA", "LoCon (Tucker)", "DoRA (LoHa)", ...
    pub fn label(&self, conv: bool) -> String {
        let base = match self.kind {
            AdapterType::Lora if conv || self.tucker => "LoCon",
            AdapterType::Lora => "LoRA",
            AdapterType::LoHa => "LoHa",
            AdapterType::LoKr => "LoKr",
            AdapterType::Glora => "GLoRA",
            AdapterType::DiagOft => "OFT",
            AdapterType::Boft => "BOFT",
            AdapterType::Ia3 => "IA3",
            AdapterType::Full => "Full",
            AdapterType::Norm => "Norm",
        };
        let t = if self.tucker { " (Tucker)" } else { "" };
        if self.dora {
            format!("DoRA ({base}{t})")
        } else {
            format!("{base}{t}")
        }
    }
}

/// One module's tensors, decoded, by kind.
#[derive(Debug, Default, Clone)]
pub struct ModuleTensors {
    pub by_kind: BTreeMap<Kind, Tensor>,
}

impl ModuleTensors {
    pub fn get(&self, k: Kind) -> Option<&Tensor> {
        self.by_kind.get(&k)
    }
    pub fn has(&self, k: Kind) -> bool {
        self.by_kind.contains_key(&k)
    }
}

/// The type of a module, or None when its keys make no known type (e.g. an `alpha` alone).
pub fn detect(t: &ModuleTensors) -> Option<Detected> {
    let dora = t.has(Kind::DoraScale);
    let d = |kind, tucker| Some(Detected { kind, tucker, dora });
    if t.has(Kind::Up) && t.has(Kind::Down) {
        return d(AdapterType::Lora, t.has(Kind::Mid));
    }
    if t.has(Kind::HadaW1A) {
        return d(AdapterType::LoHa, t.has(Kind::HadaT1));
    }
    if [Kind::LokrW1, Kind::LokrW1A, Kind::LokrW2, Kind::LokrW2A]
        .iter()
        .any(|k| t.has(*k))
    {
        return d(AdapterType::LoKr, t.has(Kind::LokrT2));
    }
    if t.has(Kind::GloraA1) {
        return d(AdapterType::Glora, false);
    }
    if let Some(b) = t.get(Kind::OftBlocks) {
        return match b.shape.len() {
            4 => d(AdapterType::Boft, false),
            _ => d(AdapterType::DiagOft, false),
        };
    }
    if t.has(Kind::Ia3Weight) {
        return d(AdapterType::Ia3, false);
    }
    if t.has(Kind::Diff) || t.has(Kind::DiffB) {
        return d(AdapterType::Full, false);
    }
    if t.has(Kind::WNorm) || t.has(Kind::BNorm) {
        return d(AdapterType::Norm, false);
    }
    None
}
