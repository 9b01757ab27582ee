//! One catalog of LoRA files for every front end: [`Catalog::scan`] walks the LoRA folders
//! ([`LoraDirs`]) recursively and lists the adapter files in them; `prompt::resolve` looks
//! `<lora:NAME>` names up in it, and [`super::entry`] reads what each file's header says for the
//! workstation's browser.
//!
//! Files are only ever found by walking inside the folders: symlinks whose target lies outside
//! their folder are not followed. Only `.safetensors` files are adapters; pickle files (`.ckpt`,
//! `.pt`, `.pth`, `.bin`) are listed as refused because loading them can run code. A folder that
//! does not exist is kept as a [`FolderError`] naming it.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

const PICKLE_EXTS: [&str; 4] = ["ckpt", "pt", "pth", "bin"];
const MAX_DEPTH: usize = 16;

/// The folders LoRA names are looked up in, first match wins only when a name is unambiguous.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoraDirs {
    pub roots: Vec<PathBuf>,
}

impl LoraDirs {
    pub fn new(roots: impl IntoIterator<Item = impl Into<PathBuf>>) -> Self {
        LoraDirs {
            roots: roots.into_iter().map(Into::into).collect(),
        }
    }
}

/// An adapter file found in a LoRA folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraFile {
    /// File stem: what `<lora:NAME>` usually says.
    pub name: String,
    /// Path relative to its folder, `/`-separated, with the extension.
    pub rel_path: String,
    /// Where to read it (inside its folder; symlinks resolved).
    pub path: PathBuf,
    pub size: u64,
    /// Index into [`LoraDirs::roots`].
    pub root: usize,
}

/// Why a file that a name may point at is not offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `.ckpt`/`.pt`/`.pth`/`.bin`: Python pickle, which can run code when loaded.
    Pickle,
    /// A symlink whose target is outside its LoRA folder.
    OutsideFolder,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub name: String,
    pub rel_path: String,
    pub root: usize,
    pub reason: Refusal,
}

/// A LoRA folder that cannot be scanned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FolderError {
    #[error("LoRA folder `{}` does not exist", .0.display())]
    Missing(PathBuf),
    #[error("LoRA folder `{}` is not a folder", .0.display())]
    NotAFolder(PathBuf),
}

impl FolderError {
    pub fn hint(&self) -> &'static str {
        "check --lora-dir, STIPPLE_LORA_DIRS and lora_folders in config.toml"
    }
}

/// The adapters (and refused files) in a set of LoRA folders, at scan time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    pub adapters: Vec<LoraFile>,
    pub refused: Vec<Refused>,
    /// Folders that could not be scanned, in the order given.
    pub unreadable: Vec<FolderError>,
}

pub(crate) fn ext_lower(p: &Path) -> String {
    p.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

impl Catalog {
    /// Walks every folder (depth ≤ 16), sorted by folder then path.
    pub fn scan(dirs: &LoraDirs) -> Catalog {
        let mut cat = Catalog::default();
        for (root_idx, root) in dirs.roots.iter().enumerate() {
            let Ok(canon_root) = fs::canonicalize(root) else {
                cat.unreadable.push(FolderError::Missing(root.clone()));
                continue;
            };
            if !canon_root.is_dir() {
                cat.unreadable.push(FolderError::NotAFolder(root.clone()));
                continue;
            }
            let mut seen = HashSet::new();
            seen.insert(canon_root.clone());
            cat.walk(&canon_root, &canon_root, "", root_idx, 0, &mut seen);
        }
        cat.adapters.sort_by(|a, b| {
            (a.root, a.rel_path.to_lowercase()).cmp(&(b.root, b.rel_path.to_lowercase()))
        });
        cat
    }

    /// The first folder that could not be scanned, as an error.
    pub fn check_folders(&self) -> Result<(), FolderError> {
        self.unreadable.first().cloned().map_or(Ok(()), Err)
    }

    fn walk(
        &mut self,
        root: &Path,
        dir: &Path,
        rel: &str,
        root_idx: usize,
        depth: usize,
        seen: &mut HashSet<PathBuf>,
    ) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Some(fname) = entry.file_name().to_str().map(str::to_string) else {
                continue; // Not UTF-8: no prompt can name it.
            };
            let rel_path = if rel.is_empty() {
                fname.clone()
            } else {
                format!("{rel}/{fname}")
            };
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            let (target, meta) = if meta.file_type().is_symlink() {
                let Ok(t) = fs::canonicalize(&path) else {
                    continue;
                };
                let Ok(m) = fs::metadata(&t) else { continue };
                if !t.starts_with(root) {
                    if m.is_file() {
                        self.refused.push(Refused {
                            name: stem(&fname),
                            rel_path,
                            root: root_idx,
                            reason: Refusal::OutsideFolder,
                        });
                    }
                    continue;
                }
                (t, m)
            } else {
                (path.clone(), meta)
            };
            if meta.is_dir() {
                if depth < MAX_DEPTH && seen.insert(target.clone()) {
                    self.walk(root, &target, &rel_path, root_idx, depth + 1, seen);
                }
                continue;
            }
            if !meta.is_file() {
                continue;
            }
            let ext = ext_lower(Path::new(&fname));
            if ext == "safetensors" {
                self.adapters.push(LoraFile {
                    name: stem(&fname),
                    rel_path,
                    path: target,
                    size: meta.len(),
                    root: root_idx,
                });
            } else if PICKLE_EXTS.contains(&ext.as_str()) {
                self.refused.push(Refused {
                    name: stem(&fname),
                    rel_path,
                    root: root_idx,
                    reason: Refusal::Pickle,
                });
            }
        }
    }
}

fn stem(fname: &str) -> String {
    match fname.rsplit_once('.') {
        Some((s, _)) if !s.is_empty() => s.to_string(),
        _ => fname.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path, bytes: usize) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, vec![0u8; bytes]).unwrap();
    }

    #[test]
    fn scan_finds_adapters_in_subfolders_with_sizes() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        touch(&a.join("top.safetensors"), 10);
        touch(&a.join("styles/ink/deep.safetensors"), 20);
        touch(&a.join("styles/old.pt"), 5);
        touch(&a.join("notes.txt"), 5);
        let cat = Catalog::scan(&LoraDirs::new([&a]));
        let list: Vec<(&str, &str, u64)> = cat
            .adapters
            .iter()
            .map(|f| (f.name.as_str(), f.rel_path.as_str(), f.size))
            .collect();
        assert_eq!(
            list,
            [
                ("deep", "styles/ink/deep.safetensors", 20),
                ("top", "top.safetensors", 10)
            ]
        );
        assert_eq!(cat.refused.len(), 1);
        assert_eq!(cat.refused[0].reason, Refusal::Pickle);
        assert!(cat.check_folders().is_ok());
    }

    #[test]
    fn a_missing_folder_is_an_error_naming_it() {
        let t = tempfile::tempdir().unwrap();
        touch(&t.path().join("ok.safetensors"), 1);
        let gone = t.path().join("no-such-folder");
        let file = t.path().join("ok.safetensors");
        let cat = Catalog::scan(&LoraDirs::new([
            t.path().to_path_buf(),
            gone.clone(),
            file.clone(),
        ]));
        assert_eq!(
            cat.adapters.len(),
            1,
            "the folder that exists is still listed"
        );
        let e = cat.check_folders().unwrap_err();
        assert_eq!(e, FolderError::Missing(gone.clone()));
        let msg = e.to_string();
        assert!(
            msg.contains(&gone.display().to_string()) && msg.contains("does not exist"),
            "{msg}"
        );
        assert_eq!(cat.unreadable[1], FolderError::NotAFolder(file));
    }
}
