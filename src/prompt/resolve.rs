//! LoRA names → files. [`LoraDirs`] is the caller's list of LoRA folders; [`Catalog::scan`] lists the
//! adapters in them (name, path, size; the TUI browser shows it) and [`Catalog::resolve`] /
//! [`Catalog::resolve_prompt`] look names up: file stem, then path relative to a folder, ignoring case.
//!
//! Names only ever match files found by walking inside the folders, so no name can reach outside
//! them: `..` and absolute names are refused, and symlinks whose target lies outside their folder
//! are not followed. Only `.safetensors` files are adapters; pickle files (`.ckpt`, `.pt`, `.pth`,
//! `.bin`) are refused by name because loading them can run code.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::error::PromptError;
use super::lora_tag::LoraTag;
use super::parse::Prompt;
use super::suggest::closest;

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
pub struct Adapter {
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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no LoRA named `{name}` in the LoRA folders")]
    NotFound {
        name: String,
        suggestions: Vec<String>,
    },
    #[error("`{name}` matches several LoRAs: {}", candidates.join(", "))]
    Ambiguous {
        name: String,
        candidates: Vec<String>,
    },
    #[error(
        "`{rel_path}` is a pickle file ({ext}); it is refused because loading it can run code"
    )]
    Pickle { rel_path: String, ext: String },
    #[error("`{rel_path}` is a link to a file outside the LoRA folders; it is refused")]
    OutsideFolder { rel_path: String },
    #[error("`{name}` points outside the LoRA folders; names are looked up inside them only")]
    Escapes { name: String },
}

impl ResolveError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ResolveError::NotFound { suggestions, .. } if !suggestions.is_empty() => {
                let q: Vec<String> = suggestions.iter().map(|s| format!("`{s}`")).collect();
                Some(format!("did you mean {}?", q.join(" or ")))
            }
            ResolveError::NotFound { .. } => {
                Some("names are file stems or paths relative to a LoRA folder".into())
            }
            ResolveError::Ambiguous { .. } => {
                Some("write the path relative to the LoRA folder to pick one".into())
            }
            ResolveError::Pickle { .. } => Some("convert it to .safetensors".into()),
            ResolveError::OutsideFolder { .. } => Some("copy the file into a LoRA folder".into()),
            ResolveError::Escapes { .. } => {
                Some("use a name relative to a LoRA folder, without `..`".into())
            }
        }
    }
}

/// The adapters (and refused files) in a set of LoRA folders, at scan time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    pub adapters: Vec<Adapter>,
    pub refused: Vec<Refused>,
    /// Folders that could not be read (missing, not a folder, no permission).
    pub unreadable: Vec<PathBuf>,
}

fn ext_lower(p: &Path) -> String {
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
                cat.unreadable.push(root.clone());
                continue;
            };
            if !canon_root.is_dir() {
                cat.unreadable.push(root.clone());
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
                self.adapters.push(Adapter {
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

    /// The adapter a tag name means: a unique file stem, else a unique relative path (with or
    /// without `.safetensors`), compared without case.
    pub fn resolve(&self, name: &str) -> Result<&Adapter, ResolveError> {
        let norm = name.trim().replace('\\', "/");
        let escapes = norm.starts_with('/')
            || norm.split('/').any(|c| c == "..")
            || norm.chars().nth(1) == Some(':'); // A Windows drive; `:` cannot reach here from a tag.
        if escapes {
            return Err(ResolveError::Escapes {
                name: name.to_string(),
            });
        }
        let parts: Vec<&str> = norm
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        let want = parts.join("/").to_lowercase();
        let want_no_ext = want
            .strip_suffix(".safetensors")
            .unwrap_or(&want)
            .to_string();
        let no_ext = |rel: &str| {
            rel.rsplit_once('.')
                .map_or(rel.to_string(), |(a, _)| a.to_string())
        };

        let by_stem: Vec<&Adapter> = if want_no_ext.contains('/') {
            Vec::new()
        } else {
            self.adapters
                .iter()
                .filter(|a| a.name.to_lowercase() == want_no_ext)
                .collect()
        };
        let found = if by_stem.is_empty() {
            self.adapters
                .iter()
                .filter(|a| no_ext(&a.rel_path.to_lowercase()) == want_no_ext)
                .collect()
        } else {
            by_stem
        };
        match found.as_slice() {
            [one] => return Ok(one),
            [] => {}
            many => {
                return Err(ResolveError::Ambiguous {
                    name: name.to_string(),
                    candidates: many.iter().map(|a| a.rel_path.clone()).collect(),
                })
            }
        }
        let refused = self.refused.iter().find(|r| {
            let rel = r.rel_path.to_lowercase();
            r.name.to_lowercase() == want_no_ext || rel == want || no_ext(&rel) == want_no_ext
        });
        if let Some(r) = refused {
            return Err(match r.reason {
                Refusal::Pickle => ResolveError::Pickle {
                    rel_path: r.rel_path.clone(),
                    ext: ext_lower(Path::new(&r.rel_path)),
                },
                Refusal::OutsideFolder => ResolveError::OutsideFolder {
                    rel_path: r.rel_path.clone(),
                },
            });
        }
        let names = self
            .adapters
            .iter()
            .flat_map(|a| [a.name.as_str(), a.rel_path.as_str()]);
        let mut suggestions: Vec<String> = closest(&want_no_ext, names, 3)
            .into_iter()
            .map(str::to_string)
            .collect();
        suggestions.dedup();
        Err(ResolveError::NotFound {
            name: name.to_string(),
            suggestions,
        })
    }

    /// Resolves every tag of a prompt; the first failure is an error at that tag's name.
    pub fn resolve_prompt<'a>(
        &'a self,
        prompt: &'a Prompt,
    ) -> Result<Vec<(&'a LoraTag, &'a Adapter)>, PromptError> {
        prompt
            .loras
            .iter()
            .map(|tag| {
                self.resolve(&tag.name).map(|a| (tag, a)).map_err(|e| {
                    PromptError::new(tag.name_span.clone(), e.to_string()).hint_opt(e.hint())
                })
            })
            .collect()
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
    use crate::prompt::parse::parse;

    fn touch(p: &Path, bytes: usize) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, vec![0u8; bytes]).unwrap();
    }

    fn setup() -> (tempfile::TempDir, LoraDirs) {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        let b = t.path().join("b");
        touch(&a.join("Detail.safetensors"), 10);
        touch(&a.join("style/ink.safetensors"), 20);
        touch(&a.join("style/old.ckpt"), 5);
        touch(&a.join("readme.txt"), 5);
        touch(&b.join("ink.safetensors"), 30);
        touch(&b.join("pixel art.safetensors"), 40);
        touch(&t.path().join("secret.safetensors"), 1);
        fs::create_dir_all(&b).unwrap();
        (t, LoraDirs::new([a, b]))
    }

    #[test]
    fn lists_adapters_with_sizes() {
        let (_t, dirs) = setup();
        let cat = Catalog::scan(&dirs);
        let list: Vec<(&str, &str, u64, usize)> = cat
            .adapters
            .iter()
            .map(|a| (a.name.as_str(), a.rel_path.as_str(), a.size, a.root))
            .collect();
        assert_eq!(
            list,
            [
                ("Detail", "Detail.safetensors", 10, 0),
                ("ink", "style/ink.safetensors", 20, 0),
                ("ink", "ink.safetensors", 30, 1),
                ("pixel art", "pixel art.safetensors", 40, 1)
            ]
        );
        assert_eq!(cat.refused.len(), 1);
    }

    #[test]
    fn resolves_by_stem_then_relative_path_ignoring_case() {
        let (_t, dirs) = setup();
        let cat = Catalog::scan(&dirs);
        assert_eq!(cat.resolve("detail").unwrap().size, 10);
        assert_eq!(cat.resolve("DETAIL.safetensors").unwrap().size, 10);
        assert_eq!(cat.resolve("Pixel Art").unwrap().size, 40);
        assert_eq!(cat.resolve("style/INK").unwrap().size, 20);
        assert_eq!(cat.resolve("style\\ink").unwrap().size, 20);
        assert!(
            matches!(cat.resolve("ink"), Err(ResolveError::Ambiguous { candidates, .. }) if candidates.len() == 2)
        );
    }

    #[test]
    fn refuses_escapes_pickles_and_unknown_names() {
        let (_t, dirs) = setup();
        let cat = Catalog::scan(&dirs);
        assert!(matches!(
            cat.resolve("../secret"),
            Err(ResolveError::Escapes { .. })
        ));
        assert!(matches!(
            cat.resolve("style/../../secret"),
            Err(ResolveError::Escapes { .. })
        ));
        assert!(matches!(
            cat.resolve("/etc/passwd"),
            Err(ResolveError::Escapes { .. })
        ));
        assert!(matches!(
            cat.resolve("secret"),
            Err(ResolveError::NotFound { .. })
        ));
        let e = cat.resolve("old").unwrap_err();
        assert!(
            matches!(&e, ResolveError::Pickle { ext, .. } if ext == "ckpt"),
            "{e:?}"
        );
        assert!(e.to_string().contains("can run code"));
        assert!(matches!(
            cat.resolve("style/old.ckpt"),
            Err(ResolveError::Pickle { .. })
        ));
        match cat.resolve("detial") {
            Err(ResolveError::NotFound { suggestions, .. }) => assert_eq!(suggestions, ["Detail"]),
            other => panic!("{other:?}"),
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_out_of_the_folder_are_refused() {
        let (t, dirs) = setup();
        let a = &dirs.roots[0];
        std::os::unix::fs::symlink(
            t.path().join("secret.safetensors"),
            a.join("leak.safetensors"),
        )
        .unwrap();
        std::os::unix::fs::symlink(t.path(), a.join("up")).unwrap();
        std::os::unix::fs::symlink(a.join("Detail.safetensors"), a.join("alias.safetensors"))
            .unwrap();
        std::os::unix::fs::symlink(a, a.join("style/loop")).unwrap();
        let cat = Catalog::scan(&dirs);
        assert!(matches!(
            cat.resolve("leak"),
            Err(ResolveError::OutsideFolder { .. })
        ));
        assert!(matches!(
            cat.resolve("up/secret"),
            Err(ResolveError::NotFound { .. })
        ));
        assert_eq!(cat.resolve("alias").unwrap().size, 10);
        assert!(cat.adapters.iter().all(|x| !x.rel_path.starts_with("up/")));
    }

    #[test]
    fn prompt_errors_point_at_the_name() {
        let (_t, dirs) = setup();
        let cat = Catalog::scan(&dirs);
        let text = "a <lora:detial:0.5> <lora:style/ink>";
        let p = parse(text).unwrap();
        let e = cat.resolve_prompt(&p).unwrap_err();
        assert_eq!(&text[e.span.clone()], "detial");
        assert_eq!(e.hint.as_deref(), Some("did you mean `Detail`?"));
        let p = parse("<lora:style/ink><lora:Detail>").unwrap();
        let ok = cat.resolve_prompt(&p).unwrap();
        assert_eq!(ok.iter().map(|(_, a)| a.size).collect::<Vec<_>>(), [20, 10]);
    }

    #[test]
    fn missing_folders_are_reported_not_fatal() {
        let cat = Catalog::scan(&LoraDirs::new(["/nonexistent/stipple/loras"]));
        assert!(cat.adapters.is_empty());
        assert_eq!(cat.unreadable.len(), 1);
    }
}
