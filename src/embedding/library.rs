//! The embedding folders: [`Library::refresh`] lists the files (recursively, as A1111 walks its
//! folder; the first folder that has a name wins), [`Library::get`] reads one when a prompt uses it
//! and keeps it while the file is unchanged (size and mtime).

use super::{Embedding, EmbeddingError};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// Extensions listed as embeddings: `.safetensors`, and the pickle formats, which are listed so a
/// prompt that names one gets the refusal instead of silence.
const EXTENSIONS: [&str; 5] = ["safetensors", "pt", "bin", "ckpt", "pth"];

/// How deep subfolders are followed.
const MAX_DEPTH: usize = 8;

#[derive(Debug, Clone, PartialEq)]
struct Listed {
    path: PathBuf,
    size: u64,
    mtime: Option<SystemTime>,
}

/// The embeddings of some folders.
#[derive(Debug, Default)]
pub struct Library {
    dirs: Vec<PathBuf>,
    /// By name (file stem).
    files: BTreeMap<String, Listed>,
    loaded: HashMap<PathBuf, (Listed, Arc<Embedding>)>,
    stamp: u64,
}

impl Library {
    /// The embeddings in `dirs` (folders that do not exist are skipped).
    pub fn new(dirs: Vec<PathBuf>) -> Library {
        let mut lib = Library {
            dirs,
            ..Library::default()
        };
        lib.refresh();
        lib
    }

    /// The folders searched, in order.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Lists the folders again. Returns whether anything changed (a file added, removed or
    /// rewritten), which [`Library::stamp`] then says too.
    pub fn refresh(&mut self) -> bool {
        let mut files = BTreeMap::new();
        for d in &self.dirs {
            walk(d, 0, &mut files);
        }
        let mut h = DefaultHasher::new();
        for (name, l) in &files {
            (name, &l.path, l.size, l.mtime).hash(&mut h);
        }
        let stamp = h.finish();
        let changed = stamp != self.stamp || files != self.files;
        self.files = files;
        self.stamp = stamp;
        self.loaded
            .retain(|p, (l, _)| self.files.values().any(|f| &f.path == p && f == l));
        changed
    }

    /// Changes whenever the listed files change: part of the key of cached conditioning.
    pub fn stamp(&self) -> u64 {
        self.stamp
    }

    /// Every name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The listed name `name` stands for: itself, or the one name equal to it ignoring case and a
    /// file extension (ComfyUI's `embedding:EasyNegative.safetensors`).
    pub fn lookup(&self, name: &str) -> Option<&str> {
        let base = strip_extension(name);
        if let Some((k, _)) = self.files.get_key_value(base) {
            return Some(k);
        }
        let lower = base.to_lowercase();
        self.files
            .keys()
            .find(|k| k.to_lowercase() == lower)
            .map(String::as_str)
    }

    /// The embedding called `name` (a listed name), read now or kept from before.
    pub fn get(&mut self, name: &str) -> Result<Arc<Embedding>, EmbeddingError> {
        let Some(listed) = self.files.get(name).cloned() else {
            return Err(self.not_found(name));
        };
        if let Some((l, e)) = self.loaded.get(&listed.path) {
            if *l == listed {
                return Ok(e.clone());
            }
        }
        let e = Arc::new(Embedding::read(&listed.path, name)?);
        self.loaded.insert(listed.path.clone(), (listed, e.clone()));
        Ok(e)
    }

    /// The error for a name that is not listed, with the closest names.
    pub fn not_found(&self, name: &str) -> EmbeddingError {
        let searched = if self.dirs.is_empty() {
            "no embedding folder (give --embeddings DIR, `embedding_folders` in the config, or --models-root)"
                .to_string()
        } else {
            self.dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        EmbeddingError::NotFound {
            name: name.to_string(),
            searched,
            hint: crate::prompt::did_you_mean(name, self.names()),
        }
    }
}

fn strip_extension(name: &str) -> &str {
    match name.rsplit_once('.') {
        Some((stem, ext)) if EXTENSIONS.contains(&ext.to_ascii_lowercase().as_str()) => stem,
        _ => name,
    }
}

/// Adds the embedding files under `dir` to `files` (names already there keep their file).
fn walk(dir: &Path, depth: usize, files: &mut BTreeMap<String, Listed>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let hidden = e.file_name().to_string_lossy().starts_with('.');
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if hidden {
            continue;
        }
        if meta.is_dir() {
            if depth < MAX_DEPTH {
                walk(&path, depth + 1, files);
            }
            continue;
        }
        let ext = path
            .extension()
            .map(|x| x.to_string_lossy().to_ascii_lowercase());
        let (Some(ext), Some(stem)) = (ext, path.file_stem()) else {
            continue;
        };
        // A1111 skips empty files too.
        if !EXTENSIONS.contains(&ext.as_str()) || meta.len() == 0 {
            continue;
        }
        files
            .entry(stem.to_string_lossy().into_owned())
            .or_insert(Listed {
                path,
                size: meta.len(),
                mtime: meta.modified().ok(),
            });
    }
}
