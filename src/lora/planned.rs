//! Deltas planned up front and computed one parameter at a time, for the fuse path.
//!
//! [`plan`] does everything [`super::compute_deltas`] checks first (families, keys, module types)
//! without a single ΔW; [`PlannedDeltas::delta`] computes a parameter's Σ strength·ΔW when the
//! patch step asks for it, inside its parallel loop, so a whole model's dense ΔW is never held at
//! once.

use super::walk::Walk;
use super::{
    module_delta, Adapter, AdapterReport, ApplyReport, LoraError, ModelParams, Strengths,
    TargetComponent,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// What a computed module adds to the report.
struct ComputedModule {
    label: String,
    strength: f32,
    warnings: Vec<String>,
    /// `.weight` / `.bias` parameters it produced a ΔW for.
    outputs: Vec<String>,
}

/// Adapters checked against a model, with each parameter's ΔW computed on demand.
pub struct PlannedDeltas<'a> {
    walk: Walk<'a>,
    /// (component, parameter) → the (adapter, module) pairs whose ΔW lands there, in order.
    by_param: HashMap<(TargetComponent, String), Vec<(usize, usize)>>,
    reports: Vec<AdapterReport>,
    computed: Mutex<BTreeMap<(usize, usize), ComputedModule>>,
    /// A module's ΔW for the parameter not asked yet, kept from computing the one that was: (adapter,
    /// module, is bias) → that ΔW, or None when the module adds nothing there. A module yields its
    /// weight and bias ΔW together, and the patch asks for both of a module with a bias.
    other: Mutex<HashMap<OtherKey, Option<Vec<f32>>>>,
}

/// (adapter, module, is bias).
type OtherKey = (usize, usize, bool);

/// Checks families and groups keys for every adapter; no ΔW is computed yet.
pub fn plan<'a>(
    adapters: &'a [(&'a Adapter, Strengths)],
    model: &'a ModelParams<'a>,
) -> Result<PlannedDeltas<'a>, LoraError> {
    let mut walk = Walk::new(adapters, model)?;
    let reports = std::mem::take(&mut walk.reports);
    let mut by_param: HashMap<(TargetComponent, String), Vec<(usize, usize)>> = HashMap::new();
    for (ai, a) in walk.adapters.iter().enumerate() {
        for &id in a.groups.keys() {
            let module = walk.index.module(id);
            for suffix in [".weight", ".bias"] {
                let name = format!("{}{suffix}", module.path);
                if walk.params.contains_key(&(module.component, name.as_str())) {
                    by_param
                        .entry((module.component, name))
                        .or_default()
                        .push((ai, id));
                }
            }
        }
    }
    Ok(PlannedDeltas {
        walk,
        by_param,
        reports,
        computed: Mutex::new(BTreeMap::new()),
        other: Mutex::new(HashMap::new()),
    })
}

impl PlannedDeltas<'_> {
    /// The parameters of `component` some adapter may change (each must be patched or asked for).
    pub fn params_of(&self, component: TargetComponent) -> Vec<&str> {
        self.by_param
            .keys()
            .filter(|(c, _)| *c == component)
            .map(|(_, n)| n.as_str())
            .collect()
    }

    pub fn may_change(&self, component: TargetComponent, param: &str) -> bool {
        self.by_param.contains_key(&(component, param.to_string()))
    }

    /// Σ strength·ΔW of every adapter for one parameter (torch layout), None when none adds to it.
    pub fn delta(
        &self,
        component: TargetComponent,
        param: &str,
    ) -> Result<Option<Vec<f32>>, LoraError> {
        let Some(list) = self.by_param.get(&(component, param.to_string())) else {
            return Ok(None);
        };
        let want_bias = param.ends_with(".bias");
        let mut sum: Option<Vec<f32>> = None;
        for &(ai, id) in list {
            let kept = self
                .other
                .lock()
                .ok()
                .and_then(|mut o| o.remove(&(ai, id, want_bias)));
            let d = match kept {
                Some(d) => d,
                None => self.compute(component, ai, id, want_bias)?,
            };
            let Some(d) = d else { continue };
            match &mut sum {
                Some(s) => s.iter_mut().zip(&d).for_each(|(a, b)| *a += b),
                None => sum = Some(d),
            }
        }
        Ok(sum)
    }

    /// The terms of every adapter for one parameter, in the order [`Self::delta`] sums them, for a
    /// patch that applies the strengths itself; empty when none adds to it.
    pub fn terms(
        &self,
        component: TargetComponent,
        param: &str,
    ) -> Result<Vec<super::terms::Term>, LoraError> {
        let Some(list) = self.by_param.get(&(component, param.to_string())) else {
            return Ok(Vec::new());
        };
        let want_bias = param.ends_with(".bias");
        let mut out = Vec::with_capacity(list.len());
        for &(ai, id) in list {
            out.extend(super::terms::module_term(&self.walk, ai, id, want_bias)?);
        }
        Ok(out)
    }

    /// Computes module `id` of adapter `ai` once and returns the ΔW of its weight (or bias, with
    /// `want_bias`), keeping the other one for when its parameter is asked for.
    fn compute(
        &self,
        component: TargetComponent,
        ai: usize,
        id: usize,
        want_bias: bool,
    ) -> Result<Option<Vec<f32>>, LoraError> {
        let path = &self.walk.index.module(id).path;
        let other_param = format!("{path}{}", if want_bias { ".weight" } else { ".bias" });
        let keep = |other: Option<Vec<f32>>| {
            if self
                .by_param
                .contains_key(&(component, other_param.clone()))
            {
                if let Ok(mut o) = self.other.lock() {
                    o.insert((ai, id, !want_bias), other);
                }
            }
        };
        let Some(m) = module_delta(&self.walk, ai, id)? else {
            keep(None);
            return Ok(None);
        };
        let mut outputs = Vec::new();
        for (suffix, out) in [(".weight", &m.out.weight), (".bias", &m.out.bias)] {
            if out.is_some() {
                outputs.push(format!("{path}{suffix}"));
            }
        }
        if let Ok(mut c) = self.computed.lock() {
            c.entry((ai, id)).or_insert(ComputedModule {
                label: m.label,
                strength: m.strength,
                warnings: m.warnings,
                outputs,
            });
        }
        let (mine, other) = if want_bias {
            (m.out.bias, m.out.weight)
        } else {
            (m.out.weight, m.out.bias)
        };
        keep(other);
        Ok(mine)
    }

    /// The report of what was applied, as [`super::compute_deltas`] gives it, for the modules
    /// whose parameters were asked for.
    pub fn into_report(self) -> ApplyReport {
        let computed = self
            .computed
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        let mut report = ApplyReport::default();
        for (ai, mut rep) in self.reports.into_iter().enumerate() {
            for (&(a, id), info) in computed.range((ai, 0)..(ai + 1, 0)) {
                debug_assert_eq!(a, ai);
                let module = self.walk.index.module(id);
                rep.warnings.extend(info.warnings.iter().cloned());
                *rep.types.entry(info.label.clone()).or_default() += 1;
                for name in &info.outputs {
                    rep.applied.push(self.walk.applied(
                        module.component,
                        name,
                        &info.label,
                        info.strength,
                    ));
                }
            }
            report.adapters.push(rep);
        }
        report
    }
}
