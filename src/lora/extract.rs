//! A LoRA from two models: ΔW = tuned − base for every Linear and convolution weight, truncated by
//! SVD with the merge's rank rules. A fixed rank uses a randomized SVD (Gaussian sketch of rank + 10
//! columns, 2 power iterations; its error is still exact); dynamic rules need the full spectrum.

use rayon::prelude::*;
use thiserror::Error;

use super::linalg::{self, NoConvergence};
use super::svd::{self, Shape, Source};
use super::write::LoraLayer;
use super::{BaseFn, TargetParam};

#[derive(Debug, Error)]
pub enum ExtractError {
    #[error("{0}")]
    Options(String),
    #[error("the tuned model has no weight {0} (both models must have the same architecture)")]
    Missing(String),
    #[error("{name}: the base has {base} values, the tuned model {tuned}")]
    Size {
        name: String,
        base: usize,
        tuned: usize,
    },
    #[error("{module}: {source}")]
    Svd {
        module: String,
        source: NoConvergence,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExtractOptions {
    pub svd: svd::Options,
    /// Layers with max|ΔW| ≤ this are left out (kohya's `--min_diff` works per text encoder; this is
    /// per layer). 0 leaves out only identical weights.
    pub min_diff: f32,
}

/// The extracted layers and how many candidate weights were identical (within `min_diff`).
#[derive(Debug)]
pub struct Extracted {
    pub layers: Vec<LoraLayer>,
    pub unchanged: usize,
}

/// Weights a LoRA layer can replace: 2-D (Linear) and 4-D (conv) `.weight`s, without the text
/// encoder's embedding tables, which are lookups rather than products.
pub fn candidates(params: &[TargetParam]) -> impl Iterator<Item = &TargetParam> {
    params.iter().filter(|p| {
        p.name.ends_with(".weight")
            && matches!(p.shape.len(), 2 | 4)
            && !p.name.ends_with("token_embedding.weight")
            && !p.name.ends_with("position_embedding.weight")
    })
}

/// Extracts `tuned − base` over `params` (the base model's list).
pub fn extract(
    params: &[TargetParam],
    base: &BaseFn,
    tuned: &BaseFn,
    opts: &ExtractOptions,
) -> Result<Extracted, ExtractError> {
    opts.svd.rule.validate().map_err(ExtractError::Options)?;
    let todo: Vec<&TargetParam> = candidates(params).collect();
    let results: Vec<Result<Option<LoraLayer>, ExtractError>> = todo
        .par_iter()
        .map(|p| layer(p, base, tuned, opts))
        .collect();
    let mut layers = Vec::new();
    let mut unchanged = 0;
    for r in results {
        match r? {
            Some(l) => layers.push(l),
            None => unchanged += 1,
        }
    }
    layers.sort_by(|a, b| (a.component, &a.path).cmp(&(b.component, &b.path)));
    Ok(Extracted { layers, unchanged })
}

fn layer(
    p: &TargetParam,
    base: &BaseFn,
    tuned: &BaseFn,
    opts: &ExtractOptions,
) -> Result<Option<LoraLayer>, ExtractError> {
    let Some(shape) = Shape::of(&p.shape) else {
        return Ok(None);
    };
    let b = base(p.component, &p.name).ok_or_else(|| ExtractError::Missing(p.name.clone()))?;
    let t = tuned(p.component, &p.name).ok_or_else(|| ExtractError::Missing(p.name.clone()))?;
    if b.len() != t.len() || b.len() != shape.o * shape.c {
        return Err(ExtractError::Size {
            name: p.name.clone(),
            base: b.len(),
            tuned: t.len(),
        });
    }
    let diff: Vec<f32> = t.iter().zip(&b).map(|(x, y)| x - y).collect();
    if diff.iter().all(|d| d.abs() <= opts.min_diff) {
        return Ok(None);
    }
    let path = p.name.trim_end_matches(".weight").to_string();
    let a = linalg::from_rows(&diff, shape.o, shape.c);
    let t = svd::truncate(
        &shape,
        Source::Dense(a),
        &opts.svd,
        super::merge::seed(&path),
    )
    .map_err(|source| ExtractError::Svd {
        module: path.clone(),
        source,
    })?;
    Ok(Some(LoraLayer {
        component: p.component,
        path,
        shape: p.shape.clone(),
        rank: t.rank,
        up: t.up,
        down: t.down,
        chosen_rank: t.chosen,
        error: t.error,
    }))
}
