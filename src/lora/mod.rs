//! The LoRA engine: adapter files → per-parameter weight deltas `Σ strength·ΔW` (f32, torch layout),
//! with a report of what was applied. The model's patch step adds the deltas to pristine base weights.
//!
//! Public surface: [`Adapter`], [`compute_deltas`], [`inspect()`], and the types they take and return;
//! [`catalog`] and [`entry`] list the adapter files of the LoRA folders for every front end.

use std::collections::{BTreeMap, HashMap};
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
pub mod triggers;
pub mod write;

pub use delta::DeltaError;
pub use detect::{AdapterType, Detected};
pub use file::{Adapter, FileError};
pub use inspect::{inspect, Inspection};
pub use merge::{merge, MergeError, MergeOptions, Mode};
pub use region::Region;
pub use report::{AdapterReport, Applied, ApplyReport, Skipped};

use detect::ModuleTensors;
use keys::{KeyIndex, Kind};

/// A model component adapters can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Component {
    TextEncoder,
    TextEncoder2,
    Unet,
}

/// One parameter of the base model that adapters may target, by its diffusers name in torch layout:
/// UNet `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight`, text encoder
/// `text_model.encoder.layers.0.self_attn.q_proj.weight` (always with the `text_model.` level).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetParam {
    pub component: Component,
    pub name: String,
    pub shape: Vec<usize>,
}

/// Base-weight lookup: f32 torch layout, for weight-dependent types (DoRA, OFT, BOFT, GLoRA, IA3).
pub type BaseFn<'a> = dyn Fn(Component, &str) -> Option<Vec<f32>> + Sync + 'a;

/// The loaded model as the engine sees it.
pub struct ModelParams<'a> {
    pub family: crate::family::Family,
    pub params: Vec<TargetParam>,
    pub base: &'a BaseFn<'a>,
}

/// Per-block multiplier (LBW-style): gets the component and diffusers parameter name, returns a factor.
pub type BlockFn = dyn Fn(Component, &str) -> f32 + Send + Sync;

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
    pub fn for_param(&self, component: Component, name: &str) -> f32 {
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
    pub by_param: HashMap<(Component, String), Vec<f32>>,
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

/// What every module computation of one adapter shares.
struct Job<'a> {
    adapter: &'a Adapter,
    strengths: &'a Strengths,
    model: &'a ModelParams<'a>,
    index: &'a KeyIndex,
    params: &'a HashMap<(Component, &'a str), &'a TargetParam>,
    peft: Option<&'a peft::PeftAlpha>,
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
    let Setup {
        index,
        params,
        reports,
    } = setup(adapters, model)?;
    let mut deltas = Deltas::default();
    let mut report = ApplyReport::default();
    for ((adapter, strengths), mut rep) in adapters.iter().zip(reports) {
        let groups = group_keys(adapter, &index, &mut rep);
        let peft = peft::PeftAlpha::from_metadata(adapter.metadata());
        let job = Job {
            adapter,
            strengths,
            model,
            index: &index,
            params: &params,
            peft: peft.as_ref(),
        };
        let results: Vec<Result<Option<ModuleResult>, LoraError>> = groups
            .par_iter()
            .map(|(&id, kinds)| module_delta(&job, id, kinds))
            .collect();
        for r in results {
            let Some(m) = r? else { continue };
            let module = index.module(m.id);
            rep.warnings.extend(m.warnings);
            *rep.types.entry(m.label.clone()).or_default() += 1;
            for (suffix, d) in [(".weight", m.out.weight), (".bias", m.out.bias)] {
                let Some(d) = d else { continue };
                let name = format!("{}{suffix}", module.path);
                rep.applied.push(applied(
                    &params,
                    module.component,
                    &name,
                    &m.label,
                    m.strength,
                ));
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
        skip_incomplete(&groups, &index, &mut rep);
        report.adapters.push(rep);
    }
    Ok((deltas, report))
}

/// What every application starts with: the family checks (a refusal comes before anything is
/// computed), the model's key index, its parameters by (component, name), one report per adapter.
pub(crate) struct Setup<'m> {
    pub index: KeyIndex,
    pub params: HashMap<(Component, &'m str), &'m TargetParam>,
    pub reports: Vec<AdapterReport>,
}

pub(crate) fn setup<'m>(
    adapters: &[(&Adapter, Strengths)],
    model: &'m ModelParams,
) -> Result<Setup<'m>, LoraError> {
    let guesses = check_families(adapters.iter().map(|(a, _)| *a), model)?;
    let reports = adapters
        .iter()
        .zip(guesses)
        .map(|((adapter, _), family)| AdapterReport {
            name: adapter.name(),
            family,
            ..Default::default()
        })
        .collect();
    Ok(Setup {
        index: KeyIndex::build(&model.params),
        params: model
            .params
            .iter()
            .map(|p| ((p.component, p.name.as_str()), p))
            .collect(),
        reports,
    })
}

/// The report line of one patched parameter.
pub(crate) fn applied(
    params: &HashMap<(Component, &str), &TargetParam>,
    component: Component,
    name: &str,
    label: &str,
    strength: f32,
) -> Applied {
    Applied {
        component,
        param: name.to_string(),
        label: label.to_string(),
        shape: params
            .get(&(component, name))
            .map(|p| p.shape.clone())
            .unwrap_or_default(),
        strength,
    }
}

/// Family checks for every adapter, before anything is computed (shared by apply, merge).
pub(crate) fn check_families<'a>(
    adapters: impl Iterator<Item = &'a Adapter>,
    model: &ModelParams,
) -> Result<Vec<family::FamilyGuess>, LoraError> {
    let widths = family::ModelWidths::of(model.family, &model.params);
    adapters
        .map(|a| {
            let g = family::guess(a);
            family::check_widths(&g, &widths).map_err(|message| LoraError::Family {
                adapter: a.name(),
                message,
            })?;
            Ok(g)
        })
        .collect()
}

/// An adapter's keys grouped by the model module they name; unplaceable keys go to `rep.skipped`.
pub(crate) fn group_keys<'a>(
    adapter: &'a Adapter,
    index: &KeyIndex,
    rep: &mut AdapterReport,
) -> BTreeMap<usize, BTreeMap<Kind, &'a str>> {
    let mut groups: BTreeMap<usize, BTreeMap<Kind, &str>> = BTreeMap::new();
    for key in adapter.tensors().keys() {
        match index.parse(key) {
            Some((_, Kind::Unsupported)) => {
                rep.skip(key, "known key kind that stipple does not apply")
            }
            Some((id, kind)) => {
                if let Some(prev) = groups.entry(id).or_default().insert(kind, key) {
                    rep.skip(
                        prev,
                        "a second key of the same kind for one module; the other one is used",
                    );
                }
            }
            None => rep.skip(key, "no module of the model has this name"),
        }
    }
    groups
}

/// Reports the keys of modules whose kinds make no complete adapter type.
pub(crate) fn skip_incomplete(
    groups: &BTreeMap<usize, BTreeMap<Kind, &str>>,
    index: &KeyIndex,
    rep: &mut AdapterReport,
) {
    for (id, kinds) in groups {
        if detect::detect_by_dims(|k| kinds.contains_key(&k).then_some(1)).is_none() {
            for key in kinds.values() {
                rep.skip(
                    key,
                    &format!(
                        "module {} has no complete adapter type",
                        index.module(*id).path
                    ),
                );
            }
        }
    }
}

/// A module's decoded tensors (PEFT alpha filled in from the file's metadata) with warnings about
/// non-finite values.
pub(crate) fn load_module(
    adapter: &Adapter,
    kinds: &BTreeMap<Kind, &str>,
    peft: Option<&peft::PeftAlpha>,
    module: &keys::ModuleRef,
) -> Result<(ModuleTensors, Vec<String>), FileError> {
    let mut t = ModuleTensors::default();
    let mut warnings = Vec::new();
    for (kind, key) in kinds {
        let x = adapter.tensor(key)?;
        let bad = x.data.iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            warnings.push(format!("{key}: {bad} NaN/Inf values"));
        }
        t.by_kind.insert(*kind, x);
    }
    if let (Some(p), false, Some(down)) = (peft, t.has(Kind::Alpha), t.get(Kind::Down)) {
        let rank = down.shape.first().copied().unwrap_or(0);
        if let Some(a) = p.alpha(module.component, &module.path, rank) {
            t.by_kind
                .insert(Kind::Alpha, tensor::Tensor::new(vec![], vec![a]));
        }
    }
    Ok((t, warnings))
}

fn module_delta(
    job: &Job,
    id: usize,
    kinds: &BTreeMap<Kind, &str>,
) -> Result<Option<ModuleResult>, LoraError> {
    let Job {
        adapter,
        strengths,
        model,
        index,
        params,
        peft,
    } = *job;
    let module = index.module(id);
    let wname = format!("{}.weight", module.path);
    let bname = format!("{}.bias", module.path);
    let Some(target) = params.get(&(module.component, wname.as_str())) else {
        return Ok(None);
    };
    let (t, warnings) = load_module(adapter, kinds, peft, module)?;
    let Some(det) = detect::detect(&t) else {
        return Ok(None);
    };
    let mu = strengths.for_param(module.component, &wname);
    let conv = target.shape.len() == 4 && target.shape[2..].iter().product::<usize>() > 1;
    let label = det.label(conv);
    let linear_in_mu = !det.dora && !matches!(det.kind, AdapterType::DiagOft | AdapterType::Boft);
    if mu == 0.0 && linear_in_mu {
        return Ok(Some(ModuleResult {
            id,
            label,
            strength: mu,
            out: delta::Out::default(),
            warnings,
        }));
    }
    let needs_base = det.dora
        || matches!(
            det.kind,
            AdapterType::DiagOft | AdapterType::Boft | AdapterType::Glora | AdapterType::Ia3
        );
    let base = if needs_base {
        (model.base)(module.component, &wname)
    } else {
        None
    };
    let ctx = delta::Ctx {
        t: &t,
        shape: &target.shape,
        bias_shape: params
            .get(&(module.component, bname.as_str()))
            .map(|p| p.shape.as_slice()),
        base: base.as_deref(),
        mu,
        dyn_rank: strengths.dyn_rank,
    };
    let out = delta::compute(det, &ctx).map_err(|e| match e {
        DeltaError::Shape { what, got, want } => LoraError::Mismatch(Box::new(ShapeMismatch {
            adapter: adapter.name(),
            module: module.path.clone(),
            what,
            got,
            param: if want == target.shape {
                wname.clone()
            } else {
                bname.clone()
            },
            want,
        })),
        source => LoraError::Module {
            adapter: adapter.name(),
            module: module.path.clone(),
            source,
        },
    })?;
    Ok(Some(ModuleResult {
        id,
        label,
        strength: mu,
        out,
        warnings,
    }))
}
