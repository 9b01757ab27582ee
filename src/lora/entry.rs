//! What the workstation's LoRA browser shows of each adapter file: [`LoraEntry::read`] opens the
//! file's header once and gives its type and rank (as `lora inspect` reads them), its family with
//! the evidence, trigger words, sidecar picture, and whether the loaded model takes it ([`Compat`],
//! decided by the same check that makes `generate` refuse a wrong-family adapter).
//!
//! [`LoraSource`] is the browser's seam: [`FolderSource`] scans the LoRA folders; a fixed
//! `Vec<LoraEntry>` serves tests.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::catalog::{Catalog, LoraDirs, LoraFile};
use super::family::{self, ModelWidths};
use super::file::Adapter;
use super::{header, triggers};

/// Whether an adapter can be used with the loaded model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Compat {
    /// The family check passes: `generate` takes it.
    Yes,
    /// No model to check against: insertable.
    #[default]
    Unknown,
    /// Refused, with the reason (the family check's message, or why the file cannot be read).
    No(String),
}

/// One adapter file as the browser lists it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoraEntry {
    /// The name used in `<lora:NAME>`: the file stem.
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    /// The type most of its modules have (LoRA, LoCon, LoHa, ...), from the tensor keys.
    pub kind: Option<String>,
    /// SD1.x, SDXL, ... from the tensor shapes; the metadata's claim, marked so, when the shapes
    /// do not tell.
    pub family: Option<String>,
    /// Why the family is what it is: the keys and widths it was read from.
    pub evidence: Vec<String>,
    /// The rank most of its modules have.
    pub rank: Option<u32>,
    pub triggers: Vec<String>,
    pub preview: Option<PathBuf>,
    pub compat: Compat,
}

impl LoraEntry {
    pub fn insertable(&self) -> bool {
        !matches!(self.compat, Compat::No(_))
    }

    /// Reads `file`'s header and checks it against `model` (when one is loaded).
    pub fn read(file: &LoraFile, model: Option<&ModelWidths>) -> LoraEntry {
        let mut entry = LoraEntry {
            name: file.name.clone(),
            path: file.path.clone(),
            size: file.size,
            preview: sidecar_picture(file),
            ..LoraEntry::default()
        };
        let adapter = match Adapter::open_file(&file.path) {
            Ok(a) => a,
            Err(e) => {
                entry.compat = Compat::No(e.to_string());
                return entry;
            }
        };
        let modules = header::modules(&adapter);
        entry.kind = most_common(modules.types());
        entry.rank = most_common(modules.ranks()).and_then(|r| u32::try_from(r).ok());
        let guess = family::guess(&adapter);
        entry.family = guess.family.clone().or_else(|| {
            guess
                .metadata_hint
                .as_ref()
                .map(|h| format!("{h} (metadata only)"))
        });
        entry.evidence = guess.evidence.clone();
        entry.triggers = triggers::triggers(&file.path, adapter.metadata());
        entry.triggers.truncate(8);
        entry.compat = match model {
            None => Compat::Unknown,
            Some(m) => match family::check_widths(&guess, m) {
                Ok(()) => Compat::Yes,
                Err(why) => Compat::No(why),
            },
        };
        entry
    }
}

/// The key with the largest count (the first such key on a tie).
fn most_common<K: Clone>(counts: BTreeMap<K, usize>) -> Option<K> {
    let mut best: Option<(K, usize)> = None;
    for (k, n) in counts {
        if best.as_ref().is_none_or(|(_, b)| n > *b) {
            best = Some((k, n));
        }
    }
    best.map(|(k, _)| k)
}

/// `NAME.png`, `NAME.preview.png`, ... next to the file.
fn sidecar_picture(file: &LoraFile) -> Option<PathBuf> {
    [
        "png",
        "preview.png",
        "jpg",
        "preview.jpg",
        "webp",
        "preview.webp",
    ]
    .iter()
    .map(|ext| file.path.with_extension(ext))
    .find(|p| p.exists())
}

/// What a scan gives the browser: the adapters, and the problems to show (folders that cannot be
/// scanned).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    pub entries: Vec<LoraEntry>,
    pub problems: Vec<String>,
}

impl From<Vec<LoraEntry>> for Listing {
    fn from(entries: Vec<LoraEntry>) -> Listing {
        Listing {
            entries,
            problems: Vec::new(),
        }
    }
}

/// A source of adapters for the browser. `scan` may touch the disk; call it outside of drawing.
pub trait LoraSource: Send {
    fn scan(&self) -> Listing;
    /// [`scan`](LoraSource::scan) checked against another model's widths (after a model switch).
    fn scan_for(&self, _model: Option<&ModelWidths>) -> Listing {
        self.scan()
    }
}

/// A fixed list, for tests and for front ends that already know their adapters.
impl LoraSource for Vec<LoraEntry> {
    fn scan(&self) -> Listing {
        self.clone().into()
    }
}

/// The adapters in the LoRA folders, checked against the loaded model's widths.
#[derive(Debug, Clone, Default)]
pub struct FolderSource {
    pub dirs: LoraDirs,
    pub model: Option<ModelWidths>,
}

impl LoraSource for FolderSource {
    fn scan(&self) -> Listing {
        self.scan_for(None)
    }

    fn scan_for(&self, model: Option<&ModelWidths>) -> Listing {
        let model = model.or(self.model.as_ref());
        let catalog = Catalog::scan(&self.dirs);
        let mut entries: Vec<LoraEntry> = catalog
            .adapters
            .iter()
            .map(|f| LoraEntry::read(f, model))
            .collect();
        entries.sort_by_key(|e| e.name.to_lowercase());
        Listing {
            entries,
            problems: catalog.unreadable.iter().map(|e| e.to_string()).collect(),
        }
    }
}
