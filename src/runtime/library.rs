//! Finds the ONNX Runtime shared library and loads it once per process (one ORT Environment).
//!
//! Order: `--ort-lib`, `ORT_DYLIB_PATH`, `STIPPLE_ORT_LIB` (config), then the copy `scripts/setup`
//! put under `.ort/{gpu,cpu}/` of the project (searched from the executable and the working folder).
//! (Named `library` rather than `ort` so it cannot shadow the `ort` crate in paths.)

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Oldest ONNX Runtime whose C API (31) stipple is built against.
pub const MIN_VERSION: &str = "1.31";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime was not found. Run `scripts/setup` (or `scripts/setup --gpu`) in the stipple \
         folder, or point --ort-lib / ORT_DYLIB_PATH at libonnxruntime.so (searched: {searched})"
    )]
    NotFound { searched: String },
    #[error("{path} (from {origin}) does not exist")]
    BadPath { path: PathBuf, origin: &'static str },
    #[error(
        "cannot load ONNX Runtime from {path}: {message}. stipple needs ONNX Runtime {MIN_VERSION} or \
         newer; run `scripts/setup` to install it"
    )]
    Load { path: PathBuf, message: String },
    #[error("ONNX Runtime environment: {0}")]
    Environment(String),
    #[error("ONNX Runtime was already loaded from {loaded}; one library per process (asked for {asked})")]
    AlreadyLoaded { loaded: PathBuf, asked: PathBuf },
}

/// The loaded library; exists at most once per process.
#[derive(Debug)]
pub struct Runtime {
    pub path: PathBuf,
    /// How the path was found (`--ort-lib`, `ORT_DYLIB_PATH`, ...).
    pub origin: &'static str,
    pub version: String,
    env: ort::environment::Environment,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Runtime {
    /// Loads ONNX Runtime (once) and returns the process-wide runtime.
    pub fn get(
        explicit: Option<&Path>,
        prefer_gpu: bool,
    ) -> Result<&'static Runtime, RuntimeError> {
        let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
        let (path, origin) = locate(explicit, prefer_gpu)?;
        if let Some(rt) = RUNTIME.get() {
            if explicit.is_some() && rt.path != path {
                return Err(RuntimeError::AlreadyLoaded {
                    loaded: rt.path.clone(),
                    asked: path,
                });
            }
            return Ok(rt);
        }
        let builder = ort::init_from(&path).map_err(|e| RuntimeError::Load {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let env = builder
            .with_name("stipple")
            .build()
            .map_err(|e| RuntimeError::Environment(e.to_string()))?;
        let version = version_from_info(ort::info())
            .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
            .or_else(|| version_from_file_name(&path))
            .unwrap_or_else(|| "unknown".into());
        let rt = Runtime {
            path,
            origin,
            version,
            env,
        };
        Ok(RUNTIME.get_or_init(|| rt))
    }

    pub fn environment(&self) -> &ort::environment::Environment {
        &self.env
    }
}

fn version_from_info(info: &str) -> Option<String> {
    // "ORT Build Info: git-branch=rel-1.31.1, git-commit-id=..., build type=Release, ..."
    let branch = info.split("git-branch=").nth(1)?;
    let v = branch.split([',', ' ']).next()?;
    Some(v.trim_start_matches("rel-").to_string())
}

/// `libonnxruntime.so.1.31.1` → `1.31.1` (the wheels' builds report their branch as `HEAD`).
fn version_from_file_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let v = name.split(".so.").nth(1)?;
    v.starts_with(|c: char| c.is_ascii_digit())
        .then(|| v.to_string())
}

/// Finds the library without loading it. Returns the path and how it was found.
pub fn locate(
    explicit: Option<&Path>,
    prefer_gpu: bool,
) -> Result<(PathBuf, &'static str), RuntimeError> {
    if let Some(p) = explicit {
        return checked(p.to_path_buf(), "--ort-lib");
    }
    for (var, origin) in [
        ("ORT_DYLIB_PATH", "ORT_DYLIB_PATH"),
        ("STIPPLE_ORT_LIB", "STIPPLE_ORT_LIB"),
    ] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return checked(PathBuf::from(v), origin);
        }
    }
    let mut searched = Vec::new();
    for root in search_roots() {
        let kinds: &[&str] = if prefer_gpu {
            &["gpu", "cpu"]
        } else {
            &["cpu", "gpu"]
        };
        for kind in kinds {
            let dir = root.join(".ort").join(kind);
            searched.push(dir.display().to_string());
            if let Some(lib) = versioned_lib(&dir) {
                return Ok((lib, "scripts/setup (.ort)"));
            }
        }
    }
    Err(RuntimeError::NotFound {
        searched: searched.join(", "),
    })
}

fn checked(p: PathBuf, origin: &'static str) -> Result<(PathBuf, &'static str), RuntimeError> {
    if p.is_file() {
        Ok((p, origin))
    } else {
        Err(RuntimeError::BadPath { path: p, origin })
    }
}

/// The executable's folder and its ancestors, then the working folder and its ancestors.
fn search_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    let mut push_ancestors = |start: Option<PathBuf>| {
        if let Some(start) = start {
            for a in start.ancestors() {
                if !roots.iter().any(|r: &PathBuf| r == a) {
                    roots.push(a.to_path_buf());
                }
            }
        }
    };
    push_ancestors(
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf)),
    );
    push_ancestors(std::env::current_dir().ok());
    roots
}

/// `libonnxruntime.so.X.Y.Z` in `dir` (the wheels ship no unversioned name).
fn versioned_lib(dir: &Path) -> Option<PathBuf> {
    let rd = std::fs::read_dir(dir).ok()?;
    let mut libs: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                (n.starts_with("libonnxruntime.so.")
                    || n == "onnxruntime.dll"
                    || n.starts_with("libonnxruntime.") && n.ends_with(".dylib"))
                    && !n.contains("providers")
            })
        })
        .collect();
    libs.sort();
    libs.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_read_from_the_build_info() {
        let info = "ORT Build Info: git-branch=rel-1.31.1, git-commit-id=abc, build type=Release";
        assert_eq!(version_from_info(info).as_deref(), Some("1.31.1"));
        assert_eq!(version_from_info("nothing"), None);
    }

    #[test]
    fn an_explicit_path_that_does_not_exist_is_an_error_naming_it() {
        let err = locate(Some(Path::new("/nonexistent/libonnxruntime.so.1")), false).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/libonnxruntime.so.1"),
            "{err}"
        );
        assert!(err.to_string().contains("--ort-lib"), "{err}");
    }
}
