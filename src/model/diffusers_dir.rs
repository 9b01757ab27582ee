//! diffusers (Hugging Face) pipeline folders: `model_index.json` with `_class_name`, one folder per
//! component with `diffusion_pytorch_model[.fp16].safetensors` or `model[.fp16].safetensors`, or
//! those weights as shards with their index (`shards.rs`).
//!
//! [`open`] reads the weights under their own names through an embedded template, the folder's
//! tokenizer (either form) and scheduler config when it has them.

use super::assemble::{self, Part};
use super::checkpoint::Checkpoint;
use super::layout::{
    check_needed, ComponentKind, Model, ModelError, ModelSource, OpenOptions, TokenizerFiles,
};
use super::ldm::Naming;
use super::shards;
use super::single_file::candidates;
use crate::family::Family;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The folder and file stem of each component's weights.
fn location(kind: ComponentKind) -> (&'static str, &'static str) {
    match kind {
        ComponentKind::TextEncoder => ("text_encoder", "model"),
        ComponentKind::TextEncoder2 => ("text_encoder_2", "model"),
        ComponentKind::Unet => ("unet", "diffusion_pytorch_model"),
        ComponentKind::VaeDecoder | ComponentKind::VaeEncoder => ("vae", "diffusion_pytorch_model"),
    }
}

/// The weights of a component folder, a file or a shard set's index: full precision first, then
/// the `fp16` variant, each as one file before shards (the order diffusers' `from_pretrained`
/// looks in).
fn weights_file(dir: &Path, folder: &str, stem: &str) -> Result<PathBuf, ModelError> {
    let d = dir.join(folder);
    let [index, index_fp16] = shards::index_names(stem);
    for name in [
        format!("{stem}.safetensors"),
        index,
        format!("{stem}.fp16.safetensors"),
        index_fp16,
    ] {
        if d.join(&name).is_file() {
            return Ok(d.join(name));
        }
    }
    if d.join(format!("{stem}.bin")).is_file() || d.join(format!("{stem}.fp16.bin")).is_file() {
        return Err(ModelError::Refused {
            path: d.clone(),
            message: format!(
                "only `{stem}.bin` is there: a Python pickle, and loading one can run code; \
                 stipple reads `.safetensors` weights only"
            ),
        });
    }
    Err(ModelError::MissingFile {
        path: d.join(format!("{stem}.safetensors")),
        what: "a component's weights",
    })
}

/// Opens a component's weights: one file, or the shards its index lists.
fn open_weights(path: &Path) -> Result<Checkpoint, ModelError> {
    if path.extension().is_some_and(|e| e == "json") {
        Ok(shards::open(path)?)
    } else {
        Ok(Checkpoint::open_any(path)?)
    }
}

/// The family of a pipeline class, or the refusal.
fn family_of(dir: &Path, class: &str) -> Result<Family, String> {
    let te_config = || -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(dir.join("text_encoder/config.json")).ok()?;
        serde_json::from_str(&text).ok()
    };
    if class.starts_with("StableDiffusionXL") {
        if !dir.join("text_encoder").is_dir() && dir.join("text_encoder_2").is_dir() {
            return Err(format!(
                "this is an SDXL refiner ({class} with only text_encoder_2); stipple runs SDXL \
                 base models and their finetunes"
            ));
        }
        return Ok(Family::Sdxl);
    }
    if class.starts_with("StableDiffusion") && !class.contains('3') {
        // SD 2.x's OpenCLIP-H is 1024 wide with gelu; SD 1.x's CLIP-L is 768 with quick_gelu.
        let te = te_config().unwrap_or_default();
        if te.get("hidden_size").and_then(|v| v.as_u64()) == Some(1024)
            || te.get("hidden_act").and_then(|v| v.as_str()) == Some("gelu")
        {
            return Ok(Family::Sd2);
        }
        return Ok(Family::Sd1);
    }
    Err(format!(
        "a {class} folder: stipple runs SD 1.x and SDXL pipelines (StableDiffusionPipeline, \
         StableDiffusionXLPipeline)"
    ))
}

pub fn open(
    dir: &Path,
    index: &serde_json::Value,
    opts: &OpenOptions,
) -> Result<Model, ModelError> {
    let refuse = |message: String| ModelError::Refused {
        path: dir.to_path_buf(),
        message,
    };
    let class = index
        .get("_class_name")
        .and_then(|c| c.as_str())
        .unwrap_or("");
    let family = family_of(dir, class).map_err(refuse)?;
    let facts = family.facts();
    let kinds: Vec<ComponentKind> = facts
        .encoders
        .iter()
        .map(|e| e.component)
        .chain([
            ComponentKind::Unet,
            ComponentKind::VaeDecoder,
            ComponentKind::VaeEncoder,
        ])
        .collect();
    let mut files: HashMap<PathBuf, Checkpoint> = HashMap::new();
    let mut paths = Vec::new();
    for &kind in &kinds {
        let (folder, stem) = location(kind);
        let p = weights_file(dir, folder, stem)?;
        if !files.contains_key(&p) {
            files.insert(p.clone(), open_weights(&p)?);
        }
        paths.push((kind, p));
    }
    let parts: HashMap<ComponentKind, Part> = paths
        .iter()
        .filter_map(|(kind, p)| {
            files.get(p).map(|file| {
                (
                    *kind,
                    Part {
                        file,
                        naming: Naming::Diffusers,
                    },
                )
            })
        })
        .collect();
    let what = format!("{} ({class})", facts.name);
    // A 9-channel `conv_in` is an inpainting UNet (SD2's and SDXL's run through a widened template).
    let inpaint = parts
        .get(&ComponentKind::Unet)
        .and_then(|p| p.file.tensor("conv_in.weight"))
        .is_some_and(|t| t.shape.get(1) == Some(&9));
    let fitted = assemble::choose(
        candidates(family, opts.prefer_fp16, inpaint)?,
        &parts,
        dir,
        &what,
    )?;
    let template = fitted.template;
    let mut model_index = template.index()?;
    if let Some(v) = index
        .get("force_zeros_for_empty_prompt")
        .and_then(|v| v.as_bool())
    {
        model_index.force_zeros_for_empty_prompt = Some(v);
    }
    let components = assemble::build(fitted, &parts, dir)?;
    check_needed(&model_index, &components, dir)?;
    let tokenizers = facts
        .encoders
        .iter()
        .map(|e| {
            let t = dir.join(e.tokenizer);
            let has = |f: &str| t.join(f).is_file();
            if (has("vocab.json") && has("merges.txt")) || has("tokenizer.json") {
                TokenizerFiles::Folder(t)
            } else {
                TokenizerFiles::Bundled { pad: e.pad_token }
            }
        })
        .collect();
    let sched = dir.join("scheduler").join("scheduler_config.json");
    let has_scheduler = sched.is_file();
    let scheduler_config = if has_scheduler {
        std::fs::read_to_string(&sched).map_err(|source| ModelError::Io {
            path: sched.clone(),
            source,
        })?
    } else {
        template.scheduler_config()?
    };
    let mut model = Model {
        dir: dir.to_path_buf(),
        index: model_index,
        components,
        tokenizers,
        scheduler_config,
        source: ModelSource::Diffusers {
            template: template.name,
        },
        vae: None,
        evidence: vec![format!(
            "{} ({class}{})",
            family.facts().name,
            if family == Family::Sd2 {
                ", text encoder width 1024"
            } else {
                ""
            }
        )],
        // A folder's scheduler config says the prediction type; without one an SD 2.x folder is
        // tested like a checkpoint file.
        prediction_pending: family == Family::Sd2 && !has_scheduler,
    };
    if model.prediction_pending && inpaint {
        model.set_prediction(
            super::prediction::Prediction::Epsilon,
            super::prediction::SD2_INPAINT,
        )?;
    }
    Ok(model)
}
