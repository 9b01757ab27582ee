//! What the workstation offers of the embedding folders: [`list`] reads every listed file once
//! (they are a few KB) and keeps it, or why it cannot be used; [`Listed::fits`] says whether it
//! fits a model's text encoders, with the same message a prompt using it would get.

use super::file::family_of_width;
use super::{Embedding, EmbeddingError, Library, Vectors};
use std::path::PathBuf;
use std::sync::Arc;

/// One embedding file of the folders.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    /// The word that stands for it in prompts (the file stem).
    pub name: String,
    /// The file read, or why it was refused (a pickle, a malformed file).
    pub read: Result<Arc<Embedding>, Unreadable>,
}

/// Why a listed file was not read.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    /// One word for a menu: "pickle", "unreadable".
    pub short: &'static str,
    pub message: String,
}

impl Listed {
    /// Ok when its vectors fit text encoders of `widths` (a model of `family`), else the error a
    /// prompt naming it would give.
    pub fn fits(&self, widths: &[usize], family: &str) -> Result<(), String> {
        let e = self.read.as_ref().map_err(|u| u.message.clone())?;
        e.rows_for(widths, family)
            .map(|_| ())
            .map_err(|err| err.to_string())
    }

    /// How many tokens it takes: "2 vectors", "1 vector".
    pub fn summary(&self) -> String {
        match &self.read {
            Ok(e) if e.count == 1 => "1 vector".into(),
            Ok(e) => format!("{} vectors", e.count),
            Err(u) => u.short.into(),
        }
    }

    /// What it was made for, short: "SD 1.x", "SDXL", "32 wide"; or why it was not read.
    pub fn made_for(&self) -> String {
        match &self.read {
            Ok(e) => match &e.vectors {
                Vectors::Pair { .. } => "SDXL".into(),
                Vectors::Single { width, .. } => {
                    family_of_width(*width).map_or_else(|| format!("{width} wide"), str::to_string)
                }
            },
            Err(u) => u.short.into(),
        }
    }
}

/// Every embedding in `dirs` (the first folder that has a name wins, as in prompts), by name.
pub fn list(dirs: Vec<PathBuf>) -> Vec<Listed> {
    let mut lib = Library::new(dirs);
    let names: Vec<String> = lib.names().map(str::to_string).collect();
    names
        .into_iter()
        .map(|name| {
            let read = lib.get(&name).map_err(|e| Unreadable {
                short: match e {
                    EmbeddingError::Pickle { .. } => "pickle",
                    _ => "unreadable",
                },
                message: e.to_string(),
            });
            Listed { name, read }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_embeddings_say_whether_they_fit() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let all = list(vec![root.join("embeddings"), root.join("embeddings-bad")]);
        let get = |n: &str| all.iter().find(|l| l.name == n).expect(n);
        // The tiny models' text encoders are 32 wide (SDXL: two of them).
        assert_eq!(get("stipplestyle").fits(&[32], "SD1.x"), Ok(()));
        let xl = get("stipplexl").fits(&[32], "SD1.x").unwrap_err();
        assert!(
            xl.contains("is an SDXL embedding") && xl.contains("SD1.x"),
            "{xl}"
        );
        assert_eq!(get("stipplexl").fits(&[32, 32], "SDXL"), Ok(()));
        let pickle = get("oldstyle").fits(&[32], "SD1.x").unwrap_err();
        assert!(pickle.contains("pickle"), "{pickle}");
        assert_eq!(get("stipplemulti").summary(), "5 vectors");
        assert_eq!(get("stipplestyle").summary(), "1 vector");
        assert_eq!(get("stipplexl").made_for(), "SDXL");
        assert_eq!(get("stipplestyle").made_for(), "32 wide");
        assert_eq!(get("oldstyle").made_for(), "pickle");
    }
}
