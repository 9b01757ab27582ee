//! The LoRA engine: adapter files → per-parameter weight deltas `Σ strength·ΔW` (f32, torch layout),
//! with a report of what was applied. The model's patch step adds the deltas to pristine base weights.
//!
//! Public surface: [`Adapter`], [`compute_deltas`], [`inspect()`], and the types they take and return;
//! [`catalog`] and [`entry`] list the adapter files of the LoRA folders for every front end.

use std::collections::HashMap;
use std::sync::Arc;

use rayon::prelude::*;
use serde::Serialize;
use thiserror::Error;

pub mod bench;
pub mod catalog;
pub mod delta;
pub mod detect;
pub mod entry;
pub mod extract;
pub mod family;
pub mod file;
pub mod header;
pub mod inspect;
pub mod keys;
pub mod linalg;
pub mod merge;
pub mod peft;
pub mod planned;
pub mod region;
pub mod report;
pub mod svd;
pub mod tensor;
pub mod terms;
pub mod triggers;
pub mod walk;
pub mod write;

pub use delta::DeltaError;
pub use detect::{AdapterType, Detected};
pub use file::{Adapter, FileError};
pub use inspect::{inspect, Inspection};
pub use merge::{merge, MergeError, MergeOptions, Mode};
pub use region::Region;
pub use report::{AdapterReport, Applied, ApplyReport, Skipped};

use walk::Walk;

/// A model component adapters can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum TargetComponent {
    TextEncoder,
    TextEncoder2,
    Unet,
}

/// One parameter of the base model that adapters may target, by its diffusers name in torch layout:
/// UNet `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight`, text encoder
/// `text_model.encoder.layers.0.self_attn.q_proj.weight` (always with the `text_model.` level).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetParam {
    pub component: TargetComponent,
    pub name: String,
    pub shape: Vec<usize>,
}

/// Base-weight lookup: f32 torch layout, for weight-dependent types (DoRA, OFT, BOFT, GLoRA, IA3).
pub type BaseFn<'a> = dyn Fn(TargetComponent, &str) -> Option<Vec<f32>> + Sync + 'a;

/// The loaded model as the engine sees it.
pub struct ModelParams<'a> {
    pub family: crate::family::Family,
    pub params: Vec<TargetParam>,
    pub base: &'a BaseFn<'a>,
}

/// Per-block multiplier (LBW-style): gets the component and diffusers parameter name, returns a factor.
pub type BlockFn = dyn Fn(TargetComponent, &str) -> f32 + Send + Sync;

/// Strengths of one adapter. The UNet region multipliers follow [`region`]; `blocks` multiplies on top.
#[derive(Clone)]
pub struct Strengths {
    pub te: f32,
    pub unet_in: f32,
    pub unet_mid: f32,
    pub unet_out: f32,
    pub blocks: Option<Arc<BlockFn>>,
    /// DyLoRA: use only the first `dyn_rank` ranks of LoRA factors (alpha kept).
    pub dyn_rank: Option<usize>,
}

impl Strengths {
    /// The same strength everywhere.
    pub fn uniform(s: f32) -> Strengths {
        Strengths {
            te: s,
            unet_in: s,
            unet_mid: s,
            unet_out: s,
            blocks: None,
            dyn_rank: None,
        }
    }

    /// Strength for one parameter.
    pub fn for_param(&self, component: TargetComponent, name: &str) -> f32 {
        let base = match region::region(component, name) {
            Region::TextEncoder => self.te,
            Region::In => self.unet_in,
            Region::Mid => self.unet_mid,
            Region::Out => self.unet_out,
        };
        base * self.blocks.as_ref().map_or(1.0, |f| f(component, name))
    }
}

impl Default for Strengths {
    fn default() -> Self {
        Strengths::uniform(1.0)
    }
}

impl std::fmt::Debug for Strengths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Strengths")
            .field("te", &self.te)
            .field("unet_in", &self.unet_in)
            .field("unet_mid", &self.unet_mid)
            .field("unet_out", &self.unet_out)
            .field("blocks", &self.blocks.is_some())
            .field("dyn_rank", &self.dyn_rank)
            .finish()
    }
}

/// Σ strength·ΔW per target parameter, f32, torch layout (same shape as the param).
#[derive(Debug, Default)]
pub struct Deltas {
    pub by_param: HashMap<(TargetComponent, String), Vec<f32>>,
}

#[derive(Debug, Error)]
pub enum LoraError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{adapter}: refused, wrong base model: {message}")]
    Family { adapter: String, message: String },
    #[error("{0}")]
    Mismatch(Box<ShapeMismatch>),
    #[error("{adapter}: {module}: {source}")]
    Module {
        adapter: String,
        module: String,
        source: DeltaError,
    },
}

/// A key whose shape does not fit the target parameter: both shapes, for the message.
#[derive(Debug, Error)]
#[error("{adapter}: {module}: adapter gives {what} of shape {got:?}, but the model's {param} has shape {want:?}")]
pub struct ShapeMismatch {
    pub adapter: String,
    pub module: String,
    pub what: String,
    pub got: Vec<usize>,
    pub param: String,
    pub want: Vec<usize>,
}

struct ModuleResult {
    id: usize,
    label: String,
    strength: f32,
    out: delta::Out,
    warnings: Vec<String>,
}

/// Computes the summed deltas of all adapters, or an error and nothing (no half-application).
///
/// Family checks for every adapter run first, before any delta is computed. Modules are computed in
/// parallel (rayon); weight-dependent types see the pristine base weight.
pub fn compute_deltas(
    adapters: &[(&Adapter, Strengths)],
    model: &ModelParams,
) -> Result<(Deltas, ApplyReport), LoraError> {
    let mut walk = Walk::new(adapters, model)?;
    let mut reports = std::mem::take(&mut walk.reports);
    let mut deltas = Deltas::default();
    for ((ai, a), rep) in walk.adapters.iter().enumerate().zip(&mut reports) {
        let results: Vec<Result<Option<ModuleResult>, LoraError>> = a
            .groups
            .par_iter()
            .map(|(&id, _)| module_delta(&walk, ai, id))
            .collect();
        for r in results {
            let Some(m) = r? else { continue };
            let module = walk.index.module(m.id);
            rep.warnings.extend(m.warnings);
            *rep.types.entry(m.label.clone()).or_default() += 1;
            for (suffix, d) in [(".weight", m.out.weight), (".bias", m.out.bias)] {
                let Some(d) = d else { continue };
                let name = format!("{}{suffix}", module.path);
                rep.applied
                    .push(walk.applied(module.component, &name, &m.label, m.strength));
                match deltas.by_param.entry((module.component, name)) {
                    std::collections::hash_map::Entry::Occupied(mut e) => {
                        e.get_mut().iter_mut().zip(&d).for_each(|(a, b)| *a += b);
                    }
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(d);
                    }
                }
            }
        }
    }
    Ok((deltas, ApplyReport { adapters: reports }))
}

/// ΔW of module `id` of adapter `ai` (weight and bias), at its strength.
fn module_delta(walk: &Walk, ai: usize, id: usize) -> Result<Option<ModuleResult>, LoraError> {
    let Some(p) = walk.prepare(ai, id)? else {
        return Ok(None);
    };
    prepared_delta(p, id).map(Some)
}

/// ΔW of a prepared module (weight and bias), at `p.mu`.
fn prepared_delta(p: walk::Prepared<'_>, id: usize) -> Result<ModuleResult, LoraError> {
    let out = if p.adds_nothing() {
        delta::Out::default()
    } else {
        p.with_ctx(|ctx| delta::compute(p.det, ctx))
            .map_err(|e| match e {
                DeltaError::Shape { what, got, want } => {
                    LoraError::Mismatch(Box::new(ShapeMismatch {
                        adapter: p.adapter.name(),
                        module: p.module.path.clone(),
                        what,
                        got,
                        param: if want == p.target.shape {
                            p.wname.clone()
                        } else {
                            p.bname.clone()
                        },
                        want,
                    }))
                }
                source => p.module_error(source),
            })?
    };
    Ok(ModuleResult {
        id,
        label: p.label,
        strength: p.mu,
        out,
        warnings: p.warnings,
    })
}
