//! LoRA names → files: [`Catalog::resolve`] and [`Catalog::resolve_prompt`] look `<lora:NAME>`
//! names up in the LoRA catalog (`lora::catalog`, which walks the folders): file stem, then path
//! relative to a folder, ignoring case, with "did you mean" suggestions.
//!
//! `..` and absolute names are refused, so no name can reach outside the folders; pickle files are
//! refused by name; a LoRA folder that does not exist fails every lookup, naming the folder.

use std::path::Path;

use crate::lora::catalog::ext_lower;
pub use crate::lora::catalog::{Catalog, FolderError, LoraDirs, LoraFile, Refusal, Refused};

use super::error::PromptError;
use super::lora_tag::LoraTag;
use super::parse::Prompt;
use super::suggest::closest;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Folder(#[from] FolderError),
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
            ResolveError::Folder(e) => Some(e.hint().into()),
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

/// Name lookup over the LoRA catalog (kept here, next to the prompt's error rendering, so the
/// catalog itself knows nothing of prompts).
impl Catalog {
    /// The adapter a tag name means: a unique file stem, else a unique relative path (with or
    /// without `.safetensors`), compared without case.
    pub fn resolve(&self, name: &str) -> Result<&LoraFile, ResolveError> {
        self.check_folders()?;
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

        let by_stem: Vec<&LoraFile> = if want_no_ext.contains('/') {
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
    ) -> Result<Vec<(&'a LoraTag, &'a LoraFile)>, PromptError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::parse::parse;
    use std::fs;

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
    fn a_missing_folder_fails_every_lookup_naming_the_folder() {
        let (t, mut dirs) = setup();
        let gone = t.path().join("typo");
        dirs.roots.push(gone.clone());
        let cat = Catalog::scan(&dirs);
        let e = cat.resolve("Detail").unwrap_err();
        assert_eq!(e, ResolveError::Folder(FolderError::Missing(gone.clone())));
        assert!(e.to_string().contains(&gone.display().to_string()), "{e}");
        let text = "a <lora:Detail:0.5>";
        let pe = cat.resolve_prompt(&parse(text).unwrap()).unwrap_err();
        assert!(pe.message.contains("does not exist"), "{}", pe.message);
        assert!(pe.hint.as_deref().is_some_and(|h| h.contains("--lora-dir")));
    }
}
