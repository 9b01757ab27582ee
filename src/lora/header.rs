//! What an adapter file's header says about its modules without decoding a tensor: each module as
//! the file names it, with its type, rank and component. [`modules`] is shared by `lora inspect`
//! and the LoRA catalog, so both report the same type and rank for a file.

use std::collections::BTreeMap;

use super::detect::{detect_by_dims, Detected};
use super::file::Adapter;
use super::keys::{split_key, Kind};
use super::TargetComponent;

/// One module as the file names it.
#[derive(Debug, Clone)]
pub struct FileModule<'a> {
    /// The key stem shared by the module's tensors.
    pub stem: &'a str,
    pub component: TargetComponent,
    pub detected: Detected,
    /// "LoRA", "LoCon (Tucker)", ... (a conv kernel makes a LoRA a LoCon).
    pub label: String,
    pub rank: Option<usize>,
    /// The module's keys by kind.
    pub keys: BTreeMap<Kind, &'a str>,
}

/// The modules of a file, and what could not be read as one.
#[derive(Debug, Default)]
pub struct HeaderModules<'a> {
    /// By stem.
    pub modules: Vec<FileModule<'a>>,
    /// Keys of no known kind (in key order), then `stem (Kind)` of groups that make no type.
    pub unrecognised: Vec<String>,
}

impl HeaderModules<'_> {
    /// Module count per label.
    pub fn types(&self) -> BTreeMap<String, usize> {
        let mut types = BTreeMap::new();
        for m in &self.modules {
            *types.entry(m.label.clone()).or_insert(0) += 1;
        }
        types
    }

    /// Module count per rank.
    pub fn ranks(&self) -> BTreeMap<usize, usize> {
        let mut ranks = BTreeMap::new();
        for r in self.modules.iter().filter_map(|m| m.rank) {
            *ranks.entry(r).or_insert(0) += 1;
        }
        ranks
    }
}

/// The component a key stem targets, from its prefix (kohya, diffusers, LyCORIS spellings).
pub fn component_of(stem: &str) -> TargetComponent {
    if stem.starts_with("lora_te2_") || stem.starts_with("text_encoder_2.") {
        TargetComponent::TextEncoder2
    } else if stem.starts_with("lora_te")
        || stem.starts_with("text_encoder.")
        || stem.starts_with("lycoris_encoder_")
        || stem.starts_with("lycoris_text_model_")
    {
        TargetComponent::TextEncoder
    } else {
        TargetComponent::Unet
    }
}

/// Groups the file's keys by module stem and names each module's type from its shapes.
pub fn modules(adapter: &Adapter) -> HeaderModules<'_> {
    let tensors = adapter.tensors();
    let mut groups: BTreeMap<&str, BTreeMap<Kind, &str>> = BTreeMap::new();
    let mut out = HeaderModules::default();
    for key in tensors.keys() {
        match split_key(key) {
            Some((stem, kind)) if kind != Kind::Unsupported => {
                groups.entry(stem).or_default().insert(kind, key);
            }
            _ => out.unrecognised.push(key.clone()),
        }
    }
    let shape = |key: &str| tensors.get(key).map(|t| t.shape.as_slice());
    for (stem, keys) in groups {
        let dims = |k: Kind| keys.get(&k).and_then(|key| shape(key)).map(<[usize]>::len);
        let Some(detected) = detect_by_dims(dims) else {
            out.unrecognised
                .extend(keys.keys().map(|k| format!("{stem} ({k:?})")));
            continue;
        };
        let conv = keys
            .values()
            .filter_map(|key| shape(key))
            .any(|s| s.len() == 4 && s[2..].iter().product::<usize>() > 1);
        let rank = [
            Kind::Down,
            Kind::HadaW1B,
            Kind::LokrW2B,
            Kind::LokrW1B,
            Kind::GloraA2,
        ]
        .iter()
        .find_map(|k| keys.get(k).and_then(|key| shape(key)?.first().copied()));
        out.modules.push(FileModule {
            stem,
            component: component_of(stem),
            label: detected.label(conv),
            detected,
            rank,
            keys,
        });
    }
    out
}
