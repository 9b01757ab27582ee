//! The models a user has, for the workstation's model picker: [`scan`] walks the model folders for
//! single-file checkpoints, diffusers folders and stipple folders and opens each one's header only
//! (family, precision, size, whether ONNX Runtime's fused CUDA UNet exists, adapter widths).
//! Files that are not models (a LoRA, a pickle) are listed with the reason, never opened twice.

use crate::lora::family::ModelWidths;
use crate::model::layout::{ComponentKind, Model, ModelSource, OpenOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// How deep below a model folder checkpoints are looked for (A1111 users sort them into subfolders).
const MAX_DEPTH: usize = 3;

/// One model on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    /// The file's name without `.safetensors`, or the folder's name.
    pub name: String,
    pub path: PathBuf,
    /// "checkpoint", "diffusers" or "stipple" (what kind of thing it is on disk).
    pub kind: &'static str,
    /// Bytes on disk (the file, or every file of the folder).
    pub size: u64,
    /// Everything below is `None` for an entry that cannot be opened (see `problem`).
    pub family: Option<&'static str>,
    /// The weights' precision: the checkpoint's dominant dtype, or the folder template's.
    pub dtype: Option<String>,
    /// ONNX Runtime's fused CUDA UNet exists for it (shipped with the template or in the folder).
    pub fused_cuda: bool,
    /// What adapters are checked against.
    pub widths: Option<ModelWidths>,
    /// Why it cannot be used, in one line.
    pub problem: Option<String>,
}

impl ModelEntry {
    pub fn usable(&self) -> bool {
        self.problem.is_none()
    }
}

/// A scan: the models found and the folders that could not be read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelListing {
    pub entries: Vec<ModelEntry>,
    pub problems: Vec<String>,
}

/// What a path was when it was opened: size and modification time.
type Stamp = (u64, Option<SystemTime>);

/// Opened entries by path and [`Stamp`], so a rescan opens only what changed.
#[derive(Debug, Default)]
pub struct ScanCache {
    seen: Mutex<HashMap<PathBuf, (Stamp, ModelEntry)>>,
}

/// The models in `folders` (in order; each once), plus `extra` paths listed even when they lie
/// outside them (the model in use). Sorted by name; unusable entries keep their reason.
pub fn scan(folders: &[PathBuf], extra: &[PathBuf], cache: &ScanCache) -> ModelListing {
    let mut listing = ModelListing::default();
    let mut candidates: Vec<PathBuf> = Vec::new();
    for dir in folders {
        if let Err(e) = walk(dir, 0, &mut candidates) {
            listing
                .problems
                .push(format!("model folder {}: {e}", dir.display()));
        }
    }
    candidates.extend(extra.iter().filter(|p| p.exists()).cloned());
    let mut unique: Vec<PathBuf> = Vec::new();
    for c in candidates {
        let key = c.canonicalize().unwrap_or(c);
        if !unique.contains(&key) {
            unique.push(key);
        }
    }
    listing.entries = unique.iter().map(|p| cache.entry(p)).collect();
    listing
        .entries
        .sort_by_key(|e| (e.name.to_lowercase(), e.path.clone()));
    listing
}

/// Collects model candidates below `dir`: `.safetensors`/`.ckpt`/`.pt` files and folders with a
/// `model_index.json` (not entered further). Hidden entries are skipped.
fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if dir.join("model_index.json").is_file() {
        out.push(dir.to_path_buf());
        return Ok(());
    }
    let mut children: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    children.sort();
    for p in children {
        if p.is_dir() {
            if depth < MAX_DEPTH {
                // A subfolder that cannot be read is skipped; its parent was readable.
                let _ = walk(&p, depth + 1, out);
            }
        } else if has_ext(&p, &["safetensors", "ckpt", "pt", "bin", "pth"]) {
            out.push(p);
        }
    }
    Ok(())
}

fn has_ext(p: &Path, exts: &[&str]) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

impl ScanCache {
    fn entry(&self, path: &Path) -> ModelEntry {
        let meta = std::fs::metadata(path).ok();
        let size = if path.is_dir() {
            folder_size(path)
        } else {
            meta.as_ref().map_or(0, |m| m.len())
        };
        let mtime = meta.and_then(|m| m.modified().ok());
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((stamp, e)) = seen.get(path) {
            if *stamp == (size, mtime) {
                return e.clone();
            }
        }
        let entry = read_entry(path, size);
        seen.insert(path.to_path_buf(), ((size, mtime), entry.clone()));
        entry
    }
}

fn folder_size(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                folder_size(&p)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}

/// Opens `path` as a model (headers only) and describes it.
fn read_entry(path: &Path, size: u64) -> ModelEntry {
    let file = path.is_file();
    let name = if file {
        path.file_stem()
    } else {
        path.file_name()
    }
    .map(|n| n.to_string_lossy().into_owned())
    .unwrap_or_else(|| path.display().to_string());
    let mut entry = ModelEntry {
        name,
        path: path.to_path_buf(),
        kind: if file { "checkpoint" } else { "folder" },
        size,
        family: None,
        dtype: None,
        fused_cuda: false,
        widths: None,
        problem: None,
    };
    if file && !has_ext(path, &["safetensors"]) {
        entry.problem = Some(
            "a pickle file (.ckpt/.pt/.bin) is never loaded: it can run code; use the .safetensors"
                .into(),
        );
        return entry;
    }
    // fp16 graphs are the ones that may have a fused CUDA UNet; the widths are the same either way.
    let opts = OpenOptions {
        prefer_fp16: true,
        ..OpenOptions::default()
    };
    match Model::open_with(path, opts) {
        Ok(model) => describe(&mut entry, &model),
        Err(e) => entry.problem = Some(first_line(&e.to_string())),
    }
    entry
}

fn describe(entry: &mut ModelEntry, model: &Model) {
    entry.family = Some(model.index.family.facts().name);
    let (kind, template) = match &model.source {
        ModelSource::SingleFile { template } => ("checkpoint", Some(*template)),
        ModelSource::Diffusers { template } => ("diffusers", Some(*template)),
        ModelSource::Folder => ("stipple", None),
    };
    entry.kind = kind;
    entry.dtype = match (kind, template) {
        ("checkpoint", _) => checkpoint_dtype(&model.dir),
        (_, Some(t)) => Some(template_precision(t).to_string()),
        _ => None,
    };
    entry.fused_cuda = model
        .component(ComponentKind::Unet)
        .is_some_and(|u| u.cuda.is_some());
    entry.widths = Some(ModelWidths::of(
        model.index.family,
        &crate::live::strengths::target_params(model),
    ));
}

/// The dtype holding most of a checkpoint's bytes (F16 for most downloads).
fn checkpoint_dtype(path: &Path) -> Option<String> {
    let ck = crate::model::Checkpoint::open_any(path).ok()?;
    ck.dominant_dtype().map(|d| format!("{d:?}"))
}

fn template_precision(template: &str) -> &'static str {
    if template.ends_with("fp16") {
        "F16"
    } else {
        "F32"
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_string()
}

/// A byte count as people read it: 2.1 GB, 14 MB.
pub fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.0} MB", b / 1e6)
    } else {
        format!("{:.0} KB", b / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    #[test]
    fn a_folder_of_checkpoints_lists_models_and_says_why_others_are_not() {
        let tmp = tempfile::tempdir().unwrap();
        let sub = tmp.path().join("sdxl");
        std::fs::create_dir_all(&sub).unwrap();
        let single = fixtures().join("single-file");
        std::fs::copy(
            single.join("tiny-sd15.safetensors"),
            tmp.path().join("a.safetensors"),
        )
        .unwrap();
        std::fs::copy(
            single.join("tiny-sdxl.safetensors"),
            sub.join("b.safetensors"),
        )
        .unwrap();
        std::fs::write(tmp.path().join("old.ckpt"), b"\x80\x02pickle").unwrap();
        std::fs::copy(
            fixtures().join("lora/kohya_ldm.safetensors"),
            tmp.path().join("style.safetensors"),
        )
        .unwrap();
        std::fs::write(tmp.path().join(".hidden.safetensors"), b"x").unwrap();
        let cache = ScanCache::default();
        let l = scan(&[tmp.path().to_path_buf()], &[], &cache);
        let names: Vec<&str> = l.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "old", "style"], "{l:#?}");
        let a = &l.entries[0];
        assert_eq!(
            (a.kind, a.family, a.dtype.as_deref()),
            ("checkpoint", Some("SD1.x"), Some("F16")),
            "{a:#?}"
        );
        assert!(a.usable() && a.widths.is_some());
        assert_eq!(l.entries[1].family, Some("SDXL"));
        assert!(l.entries[2].problem.as_deref().unwrap().contains("pickle"));
        let lora = &l.entries[3];
        assert!(!lora.usable(), "a LoRA is not a model: {lora:#?}");
        assert!(l.problems.is_empty());
    }

    #[test]
    fn folders_are_listed_as_models_and_a_missing_folder_is_a_problem() {
        let cache = ScanCache::default();
        let missing = PathBuf::from("/nonexistent/stipple-models");
        let tiny = fixtures().join("tiny-sd15");
        let l = scan(&[missing], &[tiny.clone(), tiny], &cache);
        assert_eq!(l.entries.len(), 1, "the same model once: {l:#?}");
        let e = &l.entries[0];
        assert_eq!((e.kind, e.family), ("stipple", Some("SD1.x")));
        assert!(e.size > 0);
        assert_eq!(l.problems.len(), 1);
        assert!(l.problems[0].contains("/nonexistent/stipple-models"));
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_size(2_132_000_000), "2.1 GB");
        assert_eq!(human_size(14_000_000), "14 MB");
        assert_eq!(human_size(9_000), "9 KB");
    }
}
