//! `stipple bake`: a model folder with adapters fused into its weights, same layout, deployable.
//!
//! [`bake`] computes ΔW against the pristine base (as a session build does), writes each changed
//! component's `weights.safetensors` in the stored dtype (f32 accumulation, one rounding), copies the
//! rest, and refuses to write into a folder that exists.

use crate::lora::{Adapter, ApplyReport};
use crate::model::layout::ComponentKind;
use crate::model::{Model, ModelError};
use crate::pipeline::adapters::{self, ActiveLora};
use crate::pipeline::PipelineError;
use crate::prompt;
use crate::safetensors_out::{Dtype as OutDtype, OutTensor};
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("{0} already exists; bake never writes into an existing folder")]
    Exists(PathBuf),
    #[error("{0}: bake writes a stipple folder from a stipple folder; a checkpoint file or diffusers folder keeps its adapters in the prompt (or use `lora merge`)")]
    NotAFolder(PathBuf),
    #[error("--lora {arg:?}: {message}")]
    Spec { arg: String, message: String },
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One `--lora FILE[:STRENGTH][:KEY=VALUE...]` argument: the strength part uses the tag grammar.
pub fn parse_lora_arg(arg: &str) -> Result<(PathBuf, prompt::LoraTag), BakeError> {
    let spec_err = |message: String| BakeError::Spec {
        arg: arg.to_string(),
        message,
    };
    let (path, spec) = match arg.find(".safetensors:") {
        Some(i) => (
            &arg[..i + ".safetensors".len()],
            &arg[i + ".safetensors:".len()..],
        ),
        None => (arg, ""),
    };
    let text = if spec.is_empty() {
        "<lora:x>".to_string()
    } else {
        format!("<lora:x:{spec}>")
    };
    let p = prompt::parse(&text).map_err(|e| spec_err(e.message.clone()))?;
    let tag = p
        .loras
        .into_iter()
        .next()
        .ok_or_else(|| spec_err("no strength".into()))?;
    if tag.is_scheduled() {
        return Err(spec_err(
            "a baked model has one strength per adapter; schedules need a prompt".into(),
        ));
    }
    Ok((PathBuf::from(path), tag))
}

/// What [`bake`] did.
pub struct BakeReport {
    pub out: PathBuf,
    pub apply: ApplyReport,
    pub changed: Vec<(ComponentKind, usize)>,
}

/// Bakes `loras` into the model at `model_dir`, writing the result to `out` (which must not exist).
pub fn bake(
    model_dir: &Path,
    loras: &[(PathBuf, prompt::LoraTag)],
    out: &Path,
) -> Result<BakeReport, BakeError> {
    if out.exists() {
        return Err(BakeError::Exists(out.to_path_buf()));
    }
    let model = Model::open(model_dir)?;
    if model.source != crate::model::ModelSource::Folder {
        return Err(BakeError::NotAFolder(model_dir.to_path_buf()));
    }
    let mut active = Vec::new();
    for (path, tag) in loras {
        let adapter = Adapter::open(path).map_err(|e| PipelineError::Adapter(e.to_string()))?;
        let mut tag = tag.clone();
        tag.name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        active.push(ActiveLora {
            tag,
            path: path.clone(),
            adapter: Arc::new(adapter),
        });
    }
    let key = adapters::strengths_at(&active, 0, 1);
    let (deltas, apply) = adapters::compute(&model, &active, &key)?;

    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BakeError::Io { path, source }
    };
    // Build in a temporary sibling and rename at the end: an interrupted bake leaves no half model.
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = parent.join(format!(
        ".{}.baking-{}",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    copy_tree(model_dir, &tmp).map_err(io(&tmp))?;
    let mut changed = Vec::new();
    for (kind, d) in &deltas {
        let comp = model
            .component(*kind)
            .ok_or_else(|| PipelineError::Job(format!("the model has no {kind}")))?;
        let dest = tmp.join(kind.dir_name()).join("weights.safetensors");
        write_patched(&comp.weights, d, &dest).map_err(io(&dest))?;
        changed.push((*kind, d.len()));
    }
    changed.sort_by_key(|(k, _)| k.dir_name());
    std::fs::rename(&tmp, out).map_err(io(out))?;
    Ok(BakeReport {
        out: out.to_path_buf(),
        apply,
        changed,
    })
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            // Reference outputs of the bundled fixture are not part of a model.
            if e.file_name() != "reference" {
                copy_tree(&p, &to.join(e.file_name()))?;
            }
        } else {
            std::fs::copy(&p, to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// Writes `base` with `deltas` added (stored dtype kept) as a new safetensors file.
fn write_patched(
    base: &crate::model::Checkpoint,
    deltas: &std::collections::HashMap<String, Vec<f32>>,
    dest: &Path,
) -> std::io::Result<()> {
    let mut names: Vec<String> = base.shapes().into_keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in &names {
        let Some(t) = base.tensor(name) else { continue };
        let dtype = match t.dtype {
            Dtype::F16 => OutDtype::F16,
            Dtype::BF16 => OutDtype::BF16,
            _ => OutDtype::F32,
        };
        let bytes = match deltas.get(name) {
            None => t.data.to_vec(),
            Some(d) => {
                let mut v = t.to_f32();
                for (x, dx) in v.iter_mut().zip(d) {
                    *x += dx;
                }
                dtype.encode(&v)
            }
        };
        tensors.push(OutTensor {
            name: name.clone(),
            dtype,
            shape: t.shape.to_vec(),
            bytes,
        });
    }
    let mut meta: BTreeMap<String, String> = base
        .metadata()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    meta.insert("stipple.baked".into(), "true".into());
    crate::safetensors_out::write(dest, &tensors, &meta)
}
