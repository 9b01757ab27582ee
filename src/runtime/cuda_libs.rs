//! Finding the CUDA 13 / cuDNN 9 libraries the CUDA execution provider loads, and preloading them.
//!
//! [`find`] searches `STIPPLE_CUDA_LIBS`, `LD_LIBRARY_PATH`, the `nvidia/*/lib` folders of Python
//! environments (where the `nvidia-*` wheels put them) and `/usr/local/cuda*/lib64`; [`preload`]
//! loads what was found, so the user needs no `LD_LIBRARY_PATH`. `doctor` prints [`CudaLibs`].

use std::path::{Path, PathBuf};

/// The libraries ONNX Runtime's CUDA provider opens (the `ort` crate's lists, Linux names).
pub const LIBS: &[&str] = &[
    "libcudart.so.13",
    "libcublasLt.so.13",
    "libcublas.so.13",
    "libcurand.so.10",
    "libcufft.so.12",
    "libcudnn.so.9",
    "libcudnn_graph.so.9",
    "libcudnn_ops.so.9",
    "libcudnn_heuristic.so.9",
    "libcudnn_adv.so.9",
    "libcudnn_cnn.so.9",
    "libcudnn_engines_precompiled.so.9",
    "libcudnn_engines_runtime_compiled.so.9",
];

/// Where each library was found, and which were not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CudaLibs {
    pub found: Vec<(String, PathBuf)>,
    pub missing: Vec<String>,
}

fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["STIPPLE_CUDA_LIBS", "LD_LIBRARY_PATH"] {
        if let Some(v) = std::env::var_os(var) {
            dirs.extend(std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()));
        }
    }
    let mut prefixes: Vec<PathBuf> = ["VIRTUAL_ENV", "CONDA_PREFIX"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .collect();
    prefixes.extend(["/usr", "/usr/local"].map(PathBuf::from));
    if let Some(home) = std::env::var_os("HOME") {
        prefixes.push(Path::new(&home).join(".local"));
    }
    // Virtual environments under /opt (e.g. /opt/torch/.venv) are common on GPU boxes.
    if let Ok(rd) = std::fs::read_dir("/opt") {
        for e in rd.flatten() {
            prefixes.push(e.path().join(".venv"));
            prefixes.push(e.path());
        }
    }
    for prefix in prefixes {
        for lib in ["lib", "lib64"] {
            let Ok(rd) = std::fs::read_dir(prefix.join(lib)) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name();
                if !name.to_string_lossy().starts_with("python3") {
                    continue;
                }
                for site in ["site-packages", "dist-packages"] {
                    let nv = e.path().join(site).join("nvidia");
                    if let Ok(rd) = std::fs::read_dir(&nv) {
                        dirs.extend(rd.flatten().map(|d| d.path().join("lib")));
                    }
                }
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/usr/local") {
        dirs.extend(
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("cuda"))
                .map(|e| e.path().join("lib64")),
        );
    }
    dirs
}

/// Looks for every library of [`LIBS`].
pub fn find() -> CudaLibs {
    let dirs = candidate_dirs();
    let mut out = CudaLibs::default();
    for lib in LIBS {
        match dirs.iter().map(|d| d.join(lib)).find(|p| p.is_file()) {
            Some(p) => out.found.push((lib.to_string(), p)),
            None => out.missing.push(lib.to_string()),
        }
    }
    out
}

/// Loads every library found (in dependency order), so the provider resolves them by name.
pub fn preload(libs: &CudaLibs) -> Result<(), String> {
    for (name, path) in &libs.found {
        ort::util::preload_dylib(path).map_err(|e| format!("{name} ({}): {e}", path.display()))?;
    }
    Ok(())
}
