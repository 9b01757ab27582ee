//! kohya-format LoRA files: `lora_unet_…`, `lora_te_…` (`lora_te1_`/`lora_te2_` on SDXL) with
//! `lora_up`, `lora_down` and `alpha` = rank (scale 1), the standard `ss_*`/`modelspec.*` metadata, and
//! stipple's record of sources, rank rule and per-layer reconstruction error. Written atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use super::TargetComponent;
use crate::family::Family;
use crate::safetensors_out::{self, Dtype, OutTensor};

#[derive(Debug, Error)]
pub enum WriteError {
    #[error("{0} already exists (pass --overwrite to replace it)")]
    Exists(PathBuf),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("nothing to write: no layer of the model received a change")]
    Empty,
}

/// One layer of the output, factors row-major: `up` `[O, rank]`, `down` `[rank, I·kh·kw]`.
#[derive(Debug, Clone)]
pub struct LoraLayer {
    pub component: TargetComponent,
    /// diffusers module path (no `.weight`).
    pub path: String,
    /// Shape of the target weight (torch layout).
    pub shape: Vec<usize>,
    pub rank: usize,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
    /// Rank the rule chose (equal to `rank` unless ΔW had fewer nonzero singular values).
    pub chosen_rank: usize,
    /// ‖ΔW − up·down‖_F / ‖ΔW‖_F.
    pub error: f64,
}

/// One input of a merge, as recorded in the metadata.
#[derive(Debug, Clone, Serialize)]
pub struct SourceRecord {
    pub name: String,
    pub file: String,
    pub te: f32,
    #[serde(rename = "in")]
    pub unet_in: f32,
    pub mid: f32,
    pub out: f32,
    /// Per-block weights were given (the values are in `spec`).
    pub blocks: bool,
    /// As the user wrote it: `a.safetensors:0.7` or `<lora:a:0.7>`.
    pub spec: String,
}

/// Per-layer relative reconstruction error, summarised.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ErrorSummary {
    pub layers: usize,
    pub mean: f64,
    pub median: f64,
    pub max: f64,
    pub worst: String,
}

impl ErrorSummary {
    pub fn of(layers: &[LoraLayer]) -> ErrorSummary {
        if layers.is_empty() {
            return ErrorSummary::default();
        }
        let mut errs: Vec<f64> = layers.iter().map(|l| l.error).collect();
        errs.sort_by(f64::total_cmp);
        let worst = layers
            .iter()
            .max_by(|a, b| a.error.total_cmp(&b.error))
            .map(|l| l.path.clone())
            .unwrap_or_default();
        ErrorSummary {
            layers: layers.len(),
            mean: errs.iter().sum::<f64>() / errs.len() as f64,
            median: errs[errs.len() / 2],
            max: errs[errs.len() - 1],
            worst,
        }
    }
}

/// What the file says about how it was made.
pub struct Provenance {
    pub family: Family,
    pub title: String,
    /// `merge-exact`, `merge-svd` or `extract`.
    pub method: &'static str,
    pub rank_rule: Option<String>,
    /// A dynamic rank rule was used: `ss_network_dim` is "Dynamic" as kohya's resize writes it.
    pub dynamic: bool,
    pub clamp: Option<f64>,
    pub sources: Vec<SourceRecord>,
    /// Extract: the base and tuned model folders.
    pub models: Option<(String, String)>,
}

/// The kohya module name of a layer.
pub fn kohya_stem(component: TargetComponent, path: &str, family: Family) -> String {
    let prefix = match (component, family) {
        (TargetComponent::Unet, _) => "lora_unet_",
        (TargetComponent::TextEncoder, Family::Sd1 | Family::Sd2) => "lora_te_",
        (TargetComponent::TextEncoder, Family::Sdxl) => "lora_te1_",
        (TargetComponent::TextEncoder2, _) => "lora_te2_",
    };
    format!("{prefix}{}", path.replace('.', "_"))
}

fn uniform_or_dynamic(layers: &[LoraLayer]) -> String {
    let first = layers.first().map_or(0, |l| l.rank);
    if layers.iter().all(|l| l.rank == first) {
        first.to_string()
    } else {
        "Dynamic".into()
    }
}

/// The `__metadata__` of the file.
pub fn metadata(layers: &[LoraLayer], p: &Provenance) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        m.insert(k.to_string(), v);
    };
    let dim = if p.dynamic {
        "Dynamic".into()
    } else {
        uniform_or_dynamic(layers)
    };
    put("ss_network_module", "networks.lora".into());
    put("ss_network_dim", dim.clone());
    put("ss_network_alpha", dim);
    let (version, arch) = match p.family {
        Family::Sd1 => ("sd_v1", "stable-diffusion-v1/lora"),
        Family::Sd2 => ("sd_v2", "stable-diffusion-v2-512/lora"),
        Family::Sdxl => ("sdxl_base_v1-0", "stable-diffusion-xl-v1-base/lora"),
    };
    put("ss_base_model_version", version.into());
    let v2 = if p.family == Family::Sd2 {
        "True"
    } else {
        "False"
    };
    put("ss_v2", v2.into());
    put("modelspec.sai_model_spec", "1.0.0".into());
    put("modelspec.architecture", arch.into());
    put(
        "modelspec.implementation",
        "https://github.com/Stability-AI/generative-models".into(),
    );
    put("modelspec.title", p.title.clone());
    if !p.sources.is_empty() {
        let names: Vec<&str> = p.sources.iter().map(|s| s.name.as_str()).collect();
        put("modelspec.merged_from", names.join(", "));
        put(
            "stipple.sources",
            serde_json::to_string(&p.sources).unwrap_or_default(),
        );
    }
    if let Some((base, tuned)) = &p.models {
        put(
            "stipple.extracted_from",
            serde_json::json!({"base": base, "tuned": tuned}).to_string(),
        );
    }
    put("stipple.method", p.method.into());
    if let Some(r) = &p.rank_rule {
        put("stipple.rank_rule", r.clone());
    }
    if let Some(q) = p.clamp {
        put("stipple.clamp_quantile", q.to_string());
    }
    put(
        "stipple.reconstruction_error",
        serde_json::to_string(&ErrorSummary::of(layers)).unwrap_or_default(),
    );
    m
}

/// Writes `layers` as a kohya LoRA at `dest` (refused if it exists and `overwrite` is false).
pub fn write(
    dest: &Path,
    layers: &[LoraLayer],
    provenance: &Provenance,
    dtype: Dtype,
    overwrite: bool,
) -> Result<(), WriteError> {
    if layers.is_empty() {
        return Err(WriteError::Empty);
    }
    if dest.exists() && !overwrite {
        return Err(WriteError::Exists(dest.to_path_buf()));
    }
    let mut tensors = Vec::with_capacity(3 * layers.len());
    for l in layers {
        let stem = kohya_stem(l.component, &l.path, provenance.family);
        let (up_shape, down_shape) = match l.shape[..] {
            [o, i, kh, kw] => (vec![o, l.rank, 1, 1], vec![l.rank, i, kh, kw]),
            [o, i, ..] => (vec![o, l.rank], vec![l.rank, i]),
            _ => (vec![l.up.len(), 0], vec![0, l.down.len()]),
        };
        tensors.push(OutTensor {
            name: format!("{stem}.alpha"),
            dtype: Dtype::F32,
            shape: vec![],
            bytes: (l.rank as f32).to_le_bytes().to_vec(),
        });
        tensors.push(OutTensor {
            name: format!("{stem}.lora_down.weight"),
            dtype,
            shape: down_shape,
            bytes: dtype.encode(&l.down),
        });
        tensors.push(OutTensor {
            name: format!("{stem}.lora_up.weight"),
            dtype,
            shape: up_shape,
            bytes: dtype.encode(&l.up),
        });
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let io = |source| WriteError::Io {
        path: dest.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(parent).map_err(io)?;
    safetensors_out::write_atomic(dest, &tensors, &metadata(layers, provenance)).map_err(io)
}
