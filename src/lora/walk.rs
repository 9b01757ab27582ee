//! The one walk over the modules of the adapters being applied, shared by [`super::compute_deltas`],
//! [`super::planned::plan`] and [`super::merge()`]: [`Walk::new`] checks every adapter's family
//! (a refusal comes before anything is computed) and groups its keys by the model module they name;
//! [`Walk::prepare`] loads one module's tensors and gives everything its ΔW needs ([`Prepared`]).

use std::collections::{BTreeMap, HashMap};

use super::delta::{Ctx, DeltaError};
use super::detect::{self, AdapterType, Detected, ModuleTensors};
use super::keys::{KeyIndex, Kind, ModuleRef};
use super::report::{AdapterReport, Applied};
use super::{
    family, peft, tensor, Adapter, FileError, LoraError, ModelParams, Strengths, TargetComponent,
    TargetParam,
};

/// One adapter's keys grouped by model module (module id → kind → key).
pub(crate) type Groups<'a> = BTreeMap<usize, BTreeMap<Kind, &'a str>>;

/// One adapter of a walk.
pub(crate) struct AdapterModules<'a> {
    pub adapter: &'a Adapter,
    pub strengths: &'a Strengths,
    pub groups: Groups<'a>,
    peft: Option<peft::PeftAlpha>,
}

/// Adapters checked against a model, with their keys grouped by the model's modules.
pub(crate) struct Walk<'a> {
    pub model: &'a ModelParams<'a>,
    pub index: KeyIndex,
    /// The model's parameters by (component, diffusers name).
    pub params: HashMap<(TargetComponent, &'a str), &'a TargetParam>,
    pub adapters: Vec<AdapterModules<'a>>,
    /// One per adapter: family evidence and skipped keys; the caller takes them and adds what it
    /// applies.
    pub reports: Vec<AdapterReport>,
}

/// One module of one adapter, loaded and typed, ready for its ΔW.
pub(crate) struct Prepared<'w> {
    pub adapter: &'w Adapter,
    pub module: &'w ModuleRef,
    /// The target weight's name (`{module}.weight`) and parameter.
    pub wname: String,
    pub target: &'w TargetParam,
    /// `{module}.bias` and its shape, when the model has that bias.
    pub bname: String,
    pub bias_shape: Option<&'w [usize]>,
    pub tensors: ModuleTensors,
    /// NaN/Inf counts found while decoding.
    pub warnings: Vec<String>,
    pub det: Detected,
    pub label: String,
    /// The strength at this parameter (region and block weights applied).
    pub mu: f32,
    dyn_rank: Option<usize>,
    model: &'w ModelParams<'w>,
}

impl<'a> Walk<'a> {
    /// Checks every adapter's family against `model`, then groups each adapter's keys; keys no
    /// module takes, and modules whose kinds make no type, are reported as skipped.
    pub fn new(
        adapters: &'a [(&'a Adapter, Strengths)],
        model: &'a ModelParams<'a>,
    ) -> Result<Walk<'a>, LoraError> {
        let guesses = check_families(adapters.iter().map(|(a, _)| *a), model)?;
        let index = KeyIndex::build(&model.params);
        let mut reports = Vec::with_capacity(adapters.len());
        let adapters = adapters
            .iter()
            .zip(guesses)
            .map(|((adapter, strengths), family)| {
                let mut report = AdapterReport {
                    name: adapter.name(),
                    family,
                    ..Default::default()
                };
                let groups = group_keys(adapter, &index, &mut report);
                skip_incomplete(&groups, &index, &mut report);
                reports.push(report);
                AdapterModules {
                    adapter,
                    strengths,
                    groups,
                    peft: peft::PeftAlpha::from_metadata(adapter.metadata()),
                }
            })
            .collect();
        Ok(Walk {
            model,
            params: model
                .params
                .iter()
                .map(|p| ((p.component, p.name.as_str()), p))
                .collect(),
            index,
            adapters,
            reports,
        })
    }

    /// Module `id` of adapter `ai` loaded and typed; None when the adapter has no keys there, the
    /// model has no such weight, or the keys make no type.
    pub fn prepare(&self, ai: usize, id: usize) -> Result<Option<Prepared<'_>>, LoraError> {
        let a = &self.adapters[ai];
        let Some(kinds) = a.groups.get(&id) else {
            return Ok(None);
        };
        let module = self.index.module(id);
        let wname = format!("{}.weight", module.path);
        let bname = format!("{}.bias", module.path);
        let Some(&target) = self.params.get(&(module.component, wname.as_str())) else {
            return Ok(None);
        };
        let (tensors, warnings) = load_module(a.adapter, kinds, a.peft.as_ref(), module)?;
        let Some(det) = detect::detect(&tensors) else {
            return Ok(None);
        };
        let conv = target.shape.len() == 4 && target.shape[2..].iter().product::<usize>() > 1;
        Ok(Some(Prepared {
            adapter: a.adapter,
            module,
            target,
            bias_shape: self
                .params
                .get(&(module.component, bname.as_str()))
                .map(|p| p.shape.as_slice()),
            mu: a.strengths.for_param(module.component, &wname),
            dyn_rank: a.strengths.dyn_rank,
            label: det.label(conv),
            wname,
            bname,
            tensors,
            warnings,
            det,
            model: self.model,
        }))
    }

    /// The report line of one patched parameter.
    pub fn applied(
        &self,
        component: TargetComponent,
        name: &str,
        label: &str,
        strength: f32,
    ) -> Applied {
        Applied {
            component,
            param: name.to_string(),
            label: label.to_string(),
            shape: self
                .params
                .get(&(component, name))
                .map(|p| p.shape.clone())
                .unwrap_or_default(),
            strength,
        }
    }
}

impl Prepared<'_> {
    /// Zero strength on a type linear in it: the module adds nothing (it still counts as applied).
    pub fn adds_nothing(&self) -> bool {
        self.mu == 0.0
            && !self.det.dora
            && !matches!(self.det.kind, AdapterType::DiagOft | AdapterType::Boft)
    }

    /// Runs `f` with the module's computation context; the pristine base weight is fetched only
    /// for the types that need it (DoRA, OFT, BOFT, GLoRA, IA3).
    pub fn with_ctx<R>(&self, f: impl FnOnce(&Ctx) -> R) -> R {
        let needs_base = self.det.dora
            || matches!(
                self.det.kind,
                AdapterType::DiagOft | AdapterType::Boft | AdapterType::Glora | AdapterType::Ia3
            );
        let base = if needs_base {
            (self.model.base)(self.module.component, &self.wname)
        } else {
            None
        };
        f(&Ctx {
            t: &self.tensors,
            shape: &self.target.shape,
            bias_shape: self.bias_shape,
            base: base.as_deref(),
            mu: self.mu,
            dyn_rank: self.dyn_rank,
        })
    }

    /// A module computation's failure as the engine's error, naming adapter and module.
    pub fn module_error(&self, source: DeltaError) -> LoraError {
        LoraError::Module {
            adapter: self.adapter.name(),
            module: self.module.path.clone(),
            source,
        }
    }
}

/// Family checks for every adapter, before anything is computed.
fn check_families<'a>(
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
fn group_keys<'a>(adapter: &'a Adapter, index: &KeyIndex, rep: &mut AdapterReport) -> Groups<'a> {
    let mut groups: Groups = BTreeMap::new();
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
fn skip_incomplete(groups: &Groups, index: &KeyIndex, rep: &mut AdapterReport) {
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
fn load_module(
    adapter: &Adapter,
    kinds: &BTreeMap<Kind, &str>,
    peft: Option<&peft::PeftAlpha>,
    module: &ModuleRef,
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
