//! Where the LoRA browser gets its adapters. [`LoraCatalog`] is the seam: [`FsCatalog`] reads what
//! the file system offers (name, size, safetensors header metadata, A1111/Civitai sidecars); the
//! engine's `lora::inspect` can implement the same trait later with exact type and family.

use crate::family::Family;
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Whether an adapter can be used with the loaded model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compat {
    Yes,
    /// Not known (no family in the metadata, or no model loaded): insertable.
    Unknown,
    /// Refused, with the evidence.
    No(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoraEntry {
    /// The name used in `<lora:NAME>`: the file stem.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    /// LoRA, LoHa, LoKr, ... when the metadata says.
    pub kind: Option<String>,
    /// Base model family (sd15, sdxl, ...) when the metadata says.
    pub family: Option<String>,
    pub rank: Option<u32>,
    pub triggers: Vec<String>,
    pub preview: Option<PathBuf>,
    pub compat: Compat,
}

impl LoraEntry {
    pub fn insertable(&self) -> bool {
        !matches!(self.compat, Compat::No(_))
    }
}

/// A source of adapters. `scan` may touch the disk; the TUI calls it outside of drawing.
pub trait LoraCatalog: Send {
    fn scan(&self) -> Vec<LoraEntry>;
}

/// A fixed list, for tests and for front ends that already know their adapters.
impl LoraCatalog for Vec<LoraEntry> {
    fn scan(&self) -> Vec<LoraEntry> {
        self.clone()
    }
}

/// Adapters found in folders, with the model family to check them against.
pub struct FsCatalog {
    pub folders: Vec<PathBuf>,
    pub model_family: Option<Family>,
}

/// The spelling the catalog uses for a model family (as in `model_index.json`).
pub fn family_slug(f: Family) -> &'static str {
    match f {
        Family::Sd1 => "sd1",
        Family::Sdxl => "sdxl",
    }
}

impl LoraCatalog for FsCatalog {
    fn scan(&self) -> Vec<LoraEntry> {
        let mut out = Vec::new();
        for folder in &self.folders {
            let Ok(entries) = std::fs::read_dir(folder) else {
                tracing::warn!(folder = %folder.display(), "cannot read LoRA folder");
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                if path
                    .extension()
                    .is_some_and(|x| x.eq_ignore_ascii_case("safetensors"))
                {
                    out.push(read_entry(&path, self.model_family.map(family_slug)));
                }
            }
        }
        out.sort_by_key(|e| e.name.to_lowercase());
        out
    }
}

fn read_entry(path: &Path, model_family: Option<&str>) -> LoraEntry {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("?")
        .to_string();
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let meta = header_metadata(path).unwrap_or_default();
    let get = |k: &str| meta.get(k).and_then(Value::as_str).map(str::to_string);
    let kind = get("ss_network_module").map(|m| {
        if m.contains("lycoris") {
            get("ss_network_args")
                .and_then(|a| serde_json::from_str::<Value>(&a).ok())
                .and_then(|a| a.get("algo").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| "LyCORIS".into())
        } else {
            "LoRA".into()
        }
    });
    let family = get("modelspec.architecture")
        .or_else(|| get("ss_base_model_version"))
        .map(|f| normalise_family(&f));
    let rank = get("ss_network_dim").and_then(|d| d.parse().ok());
    // The LoRA engine's rules for trigger words (modelspec, sidecars, ss_tag_frequency), so the
    // browser offers what `lora inspect` reports.
    let strings: std::collections::BTreeMap<String, String> = meta
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
        .collect();
    let mut triggers = crate::lora::triggers::triggers(path, &strings);
    triggers.truncate(8);
    let preview = [
        "png",
        "preview.png",
        "jpg",
        "preview.jpg",
        "webp",
        "preview.webp",
    ]
    .iter()
    .map(|ext| path.with_extension(ext))
    .find(|p| p.exists());
    let compat = match (family.as_deref(), model_family) {
        (Some(f), Some(m)) if f == m => Compat::Yes,
        (Some(f), Some(m)) => Compat::No(format!("made for {f}, the model is {m}")),
        _ => Compat::Unknown,
    };
    LoraEntry {
        name,
        path: path.to_path_buf(),
        size,
        kind,
        family,
        rank,
        triggers,
        preview,
        compat,
    }
}

/// sd1, sd2, sdxl, ... from the spellings kohya and modelspec use.
fn normalise_family(f: &str) -> String {
    let f = f.to_lowercase();
    if f.contains("xl") {
        "sdxl".into()
    } else if f.contains("v2") || f.contains("2.") {
        "sd2".into()
    } else if f.contains("v1") || f.contains("1.5") || f.contains("sd1") {
        "sd1".into()
    } else {
        f
    }
}

/// The JSON header's `__metadata__` of a safetensors file, read without touching the tensors.
fn header_metadata(path: &Path) -> Option<serde_json::Map<String, Value>> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    // Real headers are kilobytes; a huge value means this is not a safetensors file.
    if len > 64 << 20 {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).ok()?;
    let v: Value = serde_json::from_slice(&header).ok()?;
    v.get("__metadata__")?.as_object().cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_header_metadata_and_sidecars() {
        let dir = tempfile::tempdir().unwrap();
        let header = br#"{"__metadata__":{"ss_network_module":"networks.lora","ss_network_dim":"16","ss_base_model_version":"sdxl_base_v1-0"}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        std::fs::write(dir.path().join("ink.safetensors"), &bytes).unwrap();
        std::fs::write(
            dir.path().join("ink.json"),
            r#"{"activation text": "ink style, lineart"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("ink.png"), b"").unwrap();
        std::fs::write(dir.path().join("junk.safetensors"), b"nope").unwrap();
        let cat = FsCatalog {
            folders: vec![dir.path().to_path_buf()],
            model_family: Some(Family::Sd1),
        };
        let e = cat.scan();
        assert_eq!(e.len(), 2);
        let ink = &e[0];
        assert_eq!(ink.kind.as_deref(), Some("LoRA"));
        assert_eq!(ink.family.as_deref(), Some("sdxl"));
        assert_eq!(ink.rank, Some(16));
        assert_eq!(ink.triggers, vec!["ink style", "lineart"]);
        assert!(ink.preview.is_some());
        assert!(!ink.insertable());
        assert_eq!(e[1].compat, Compat::Unknown);
    }
}
