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
    detect_by_dims(|k| t.get(k).map(|x| x.shape.len()))
}

/// [`detect`] from the header alone: `dims(kind)` is the number of dimensions of the module's
/// tensor of that kind, None when the module has none. Only OFT's blocks need more than presence.
pub fn detect_by_dims(dims: impl Fn(Kind) -> Option<usize>) -> Option<Detected> {
    let has = |k| dims(k).is_some();
    let dora = has(Kind::DoraScale);
    let d = |kind, tucker| Some(Detected { kind, tucker, dora });
    if has(Kind::Up) && has(Kind::Down) {
        return d(AdapterType::Lora, has(Kind::Mid));
    }
    if has(Kind::HadaW1A) {
        return d(AdapterType::LoHa, has(Kind::HadaT1));
    }
    if [Kind::LokrW1, Kind::LokrW1A, Kind::LokrW2, Kind::LokrW2A]
        .iter()
        .any(|k| has(*k))
    {
        return d(AdapterType::LoKr, has(Kind::LokrT2));
    }
    if has(Kind::GloraA1) {
        return d(AdapterType::Glora, false);
    }
    if let Some(n) = dims(Kind::OftBlocks) {
        return match n {
            4 => d(AdapterType::Boft, false),
            _ => d(AdapterType::DiagOft, false),
        };
    }
    if has(Kind::Ia3Weight) {
        return d(AdapterType::Ia3, false);
    }
    if has(Kind::Diff) || has(Kind::DiffB) {
        return d(AdapterType::Full, false);
    }
    if has(Kind::WNorm) || has(Kind::BNorm) {
        return d(AdapterType::Norm, false);
    }
    None
}
