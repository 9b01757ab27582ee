//! An A1111, Forge, SD.Next or ComfyUI install used as a models root (`--models-root`): checkpoints,
//! LoRAs, VAEs and embeddings are found by name in the folders those tools keep them in.
//!
//! [`ModelsRoot::resolve_checkpoint`] and [`ModelsRoot::resolve_vae`] turn a name into a path;
//! [`ModelsRoot::lora_dirs`] and [`ModelsRoot::embedding_dirs`] list the folders that exist.

use std::path::{Path, PathBuf};

const CHECKPOINTS: [&str; 2] = ["models/Stable-diffusion", "models/checkpoints"];
const LORAS: [&str; 3] = ["models/Lora", "models/LyCORIS", "models/loras"];
const VAES: [&str; 2] = ["models/VAE", "models/vae"];
/// A1111 and Forge keep embeddings beside `models/`, ComfyUI and SD.Next inside it.
const EMBEDDINGS: [&str; 2] = ["embeddings", "models/embeddings"];

#[derive(Debug, thiserror::Error)]
pub enum ModelsRootError {
    #[error("{0} has no `models/` folder (give the folder of an A1111, Forge, SD.Next or ComfyUI install)")]
    NotAnInstall(PathBuf),
    #[error("no {what} called {name:?} in {}", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound {
        what: &'static str,
        name: String,
        searched: Vec<PathBuf>,
    },
}

/// The models folders of one install.
#[derive(Debug, Clone)]
pub struct ModelsRoot {
    root: PathBuf,
}

impl ModelsRoot {
    pub fn new(root: &Path) -> Result<ModelsRoot, ModelsRootError> {
        if !root.join("models").is_dir() {
            return Err(ModelsRootError::NotAnInstall(root.to_path_buf()));
        }
        Ok(ModelsRoot {
            root: root.to_path_buf(),
        })
    }

    fn existing(&self, rels: &[&str]) -> Vec<PathBuf> {
        rels.iter()
            .map(|r| self.root.join(r))
            .filter(|p| p.is_dir())
            .collect()
    }

    /// The checkpoint folders of the install that exist.
    pub fn checkpoint_dirs(&self) -> Vec<PathBuf> {
        self.existing(&CHECKPOINTS)
    }

    /// The LoRA folders of the install that exist.
    pub fn lora_dirs(&self) -> Vec<PathBuf> {
        self.existing(&LORAS)
    }

    /// The embedding folders of the install that exist.
    pub fn embedding_dirs(&self) -> Vec<PathBuf> {
        self.existing(&EMBEDDINGS)
    }

    /// `name` as given when it exists, else a checkpoint of that name (with or without
    /// `.safetensors`, a path below the folder allowed) in the install's checkpoint folders.
    pub fn resolve_checkpoint(&self, name: &Path) -> Result<PathBuf, ModelsRootError> {
        self.resolve(name, &CHECKPOINTS, "checkpoint")
    }

    /// As [`ModelsRoot::resolve_checkpoint`], in the VAE folders.
    pub fn resolve_vae(&self, name: &Path) -> Result<PathBuf, ModelsRootError> {
        self.resolve(name, &VAES, "VAE")
    }

    fn resolve(
        &self,
        name: &Path,
        rels: &[&str],
        what: &'static str,
    ) -> Result<PathBuf, ModelsRootError> {
        if name.exists() {
            return Ok(name.to_path_buf());
        }
        let dirs = self.existing(rels);
        for d in &dirs {
            let plain = d.join(name);
            let with_ext = d.join(format!("{}.safetensors", name.display()));
            // A name may not leave the folder it is looked up in.
            for p in [plain, with_ext] {
                let inside = p
                    .canonicalize()
                    .ok()
                    .zip(d.canonicalize().ok())
                    .is_some_and(|(p, d)| p.starts_with(d));
                if p.exists() && inside {
                    return Ok(p);
                }
            }
        }
        Err(ModelsRootError::NotFound {
            what,
            name: name.display().to_string(),
            searched: rels.iter().map(|r| self.root.join(r)).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_found_in_the_folders_each_tool_uses() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        assert!(ModelsRoot::new(root).is_err());
        for d in ["models/checkpoints/sdxl", "models/loras", "models/VAE"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("models/checkpoints/sdxl/pony.safetensors"), b"x").unwrap();
        std::fs::write(root.join("models/VAE/mse.safetensors"), b"x").unwrap();
        std::fs::write(root.join("secret.safetensors"), b"x").unwrap();
        let r = ModelsRoot::new(root).unwrap();
        assert_eq!(
            r.resolve_checkpoint(Path::new("sdxl/pony")).unwrap(),
            root.join("models/checkpoints/sdxl/pony.safetensors")
        );
        assert_eq!(
            r.resolve_vae(Path::new("mse.safetensors")).unwrap(),
            root.join("models/VAE/mse.safetensors")
        );
        assert_eq!(r.lora_dirs(), vec![root.join("models/loras")]);
        let err = r
            .resolve_checkpoint(Path::new("nope"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("models/Stable-diffusion") && err.contains("\"nope\""),
            "{err}"
        );
        assert!(r.resolve_checkpoint(Path::new("../../secret")).is_err());
    }
}
