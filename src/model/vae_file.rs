//! A separate VAE file (`--vae`): vae-ft-mse-840000, sdxl-vae-fp16-fix and the like, in LDM naming
//! (with or without `first_stage_model.`) or diffusers naming, read in place of a model's own VAE.
//!
//! [`replace_vae`] swaps the weights of the model's VAE components, keeping their graphs; a file
//! that does not fit leaves the model as it was.

use super::assemble::{lookup, wanted_in, Part};
use super::checkpoint::Checkpoint;
use super::layout::{Component, ComponentKind, GraphFiles, Model, ModelError};
use super::ldm::Naming;
use std::path::Path;

/// How a VAE file names its weights, from its keys.
fn naming_of(file: &Checkpoint) -> Result<Naming, String> {
    let shapes = file.file_shapes();
    let has = |p: &str| shapes.keys().any(|k| k.starts_with(p));
    if has("model.diffusion_model.") {
        return Err("this is a whole checkpoint, not a VAE: give it as --model".into());
    }
    if has("first_stage_model.") {
        Ok(Naming::vae("first_stage_model.", []))
    } else if has("encoder.down.") || has("decoder.up.") {
        Ok(Naming::vae("", []))
    } else if has("decoder.up_blocks.") || has("encoder.down_blocks.") {
        Ok(Naming::Diffusers)
    } else {
        let first = shapes.keys().min().cloned().unwrap_or_default();
        Err(format!(
            "not a VAE: no `decoder.up.*`, `decoder.up_blocks.*` or `first_stage_model.*` keys \
             (first key: `{first}`)"
        ))
    }
}

/// Reads `model`'s VAE (decoder, and encoder when it has one) from `path` instead.
pub fn replace_vae(model: &mut Model, path: &Path) -> Result<(), ModelError> {
    let refuse = |message: String| ModelError::Refused {
        path: path.to_path_buf(),
        message: format!("--vae {}: {message}", path.display()),
    };
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if ext != "safetensors" {
        return Err(refuse(
            "stipple reads .safetensors VAEs only (.pt/.ckpt/.bin files are Python pickles, and \
             loading one can run code)"
                .into(),
        ));
    }
    let file = Checkpoint::open_any(path)?;
    let part = Part {
        file: &file,
        naming: naming_of(&file).map_err(refuse)?,
    };
    let mut views = Vec::new();
    let mut examples = Vec::new();
    let mut missing = 0;
    for kind in [ComponentKind::VaeDecoder, ComponentKind::VaeEncoder] {
        let Some(c) = model.components.get(&kind) else {
            continue;
        };
        let maps = std::iter::once(&c.weightmap).chain(c.cuda.as_ref().map(|g| &g.weightmap));
        match lookup(&part, kind, wanted_in(maps), &mut examples) {
            Ok(view) => views.push((kind, file.view(view)?)),
            Err(n) => missing += n,
        }
    }
    if missing > 0 {
        return Err(refuse(format!(
            "it does not fit this model's VAE: {missing} weight(s) missing or of another shape, \
             e.g.\n  {}",
            examples.join("\n  ")
        )));
    }
    for (kind, weights) in views {
        let Some(c) = model.components.remove(&kind) else {
            continue;
        };
        let rebuilt = Component::new(
            kind,
            c.dir,
            GraphFiles {
                graph: c.graph,
                weightmap: c.weightmap,
            },
            c.cuda,
            weights,
            c.config,
        )?
        .with_fused(c.fused)?;
        model.components.insert(kind, rebuilt);
    }
    model.vae = Some(path.to_path_buf());
    Ok(())
}
