//! What the workstation offers of the embedding folders: [`list`] reads every listed file once
//! (they are a few KB) and keeps it, or why it cannot be used; [`Listed::refusal`] says, in one
//! status line, why it does not fit a model's text encoders.

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
    /// Why it cannot be used with a model of `family` whose text encoders have `widths` (none
    /// known: only an unreadable file is refused); `None` when it fits. One status line.
    pub fn refusal(&self, widths: Option<&[usize]>, family: &str) -> Option<String> {
        let why = match (&self.read, widths) {
            (Err(u), _) => u.message.clone(),
            (Ok(e), Some(w)) if e.rows_for(w, family).is_err() => {
                format!("{}, the model is {family}", e.kind())
            }
            _ => return None,
        };
        Some(format!("{} cannot be used: {why}", self.name))
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
                message: match e {
                    EmbeddingError::Pickle { .. } => "a pickle file, which can run code when \
                        loaded: convert it to .safetensors"
                        .into(),
                    other => other.to_string(),
                },
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
        let sd1: Option<&[usize]> = Some(&[32]);
        assert_eq!(get("stipplestyle").refusal(sd1, "SD1.x"), None);
        assert_eq!(get("stipplestyle").refusal(None, "SD1.x"), None);
        let xl = get("stipplexl").refusal(sd1, "SD1.x").unwrap();
        assert!(
            xl.starts_with("stipplexl cannot be used: an SDXL embedding")
                && xl.ends_with("the model is SD1.x"),
            "{xl}"
        );
        assert_eq!(get("stipplexl").refusal(Some(&[32, 32]), "SDXL"), None);
        let pickle = get("oldstyle").refusal(None, "SD1.x").unwrap();
        assert!(pickle.contains("a pickle file"), "{pickle}");
        assert_eq!(get("stipplemulti").summary(), "5 vectors");
        assert_eq!(get("stipplestyle").summary(), "1 vector");
        assert_eq!(get("stipplexl").made_for(), "SDXL");
        assert_eq!(get("stipplestyle").made_for(), "32 wide");
        assert_eq!(get("oldstyle").made_for(), "pickle");
    }
}
