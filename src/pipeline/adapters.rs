//! The adapters a prompt asks for: tags resolved to files in the LoRA folders, opened once (cached by
//! path and modification time), their strengths evaluated per step, and ΔW per component computed.
//!
//! [`AdapterCache::resolve`] resolves; the strengths at a step ([`StrengthKey`]) come from
//! [`crate::live::strengths`] (re-exported here); [`with_plan`] and [`compute`] produce the deltas.

use super::error::{ComponentDeltas, PipelineError};
use crate::live::strengths::model_kind;
pub use crate::live::strengths::{
    base_weights, lora_component, strengths_at, strengths_of, target_params, ActiveLora,
    StrengthKey,
};
use crate::lora::{self, Adapter, ApplyReport, ModelParams, Strengths, TargetComponent};
use crate::model::Model;
use crate::prompt::{Catalog, LoraDirs, Prompt};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

/// `STIPPLE_LORA_DEBUG=1` (or SD.Next's `SD_LORA_DEBUG=true`): log per adapter what was read,
/// detected, matched and how long each stage took (target `stipple::lora`).
pub fn lora_debug() -> bool {
    ["STIPPLE_LORA_DEBUG", "SD_LORA_DEBUG"].iter().any(|v| {
        std::env::var(v)
            .map(|x| matches!(x.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false)
    })
}

/// Opened adapters, reused across jobs while the file is unchanged.
#[derive(Default)]
pub struct AdapterCache {
    dirs: Vec<PathBuf>,
    open: HashMap<PathBuf, (Option<SystemTime>, Arc<Adapter>)>,
}

impl AdapterCache {
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        AdapterCache {
            dirs,
            open: HashMap::new(),
        }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Resolves every tag of `prompt` (written as `text`) and opens the files.
    pub fn resolve(
        &mut self,
        prompt: &Prompt,
        text: &str,
    ) -> Result<Vec<ActiveLora>, PipelineError> {
        if prompt.loras.is_empty() {
            return Ok(Vec::new());
        }
        let catalog = Catalog::scan(&LoraDirs::new(self.dirs.clone()));
        let pairs = catalog.resolve_prompt(prompt).map_err(|e| {
            let mut msg = e.render(text);
            if self.dirs.is_empty() {
                msg.push_str("\n(no LoRA folder is configured: pass --lora-dir DIR)");
            }
            PipelineError::Prompt(msg)
        })?;
        let mut out = Vec::with_capacity(pairs.len());
        for (tag, entry) in pairs {
            let mtime = std::fs::metadata(&entry.path)
                .and_then(|m| m.modified())
                .ok();
            let adapter = match self.open.get(&entry.path) {
                Some((t, a)) if *t == mtime => a.clone(),
                _ => {
                    let t = std::time::Instant::now();
                    let a = Arc::new(Adapter::open(&entry.path).map_err(|e| {
                        PipelineError::Adapter(format!("<lora:{}>: {e}", tag.name))
                    })?);
                    if lora_debug() {
                        tracing::info!(
                            target: "stipple::lora",
                            "read {} ({} tensors) in {:.1} ms",
                            entry.path.display(),
                            a.tensors().len(),
                            t.elapsed().as_secs_f64() * 1e3
                        );
                    }
                    self.open.insert(entry.path.clone(), (mtime, a.clone()));
                    a
                }
            };
            out.push(ActiveLora {
                tag: tag.clone(),
                path: entry.path.clone(),
                adapter,
            });
        }
        Ok(out)
    }
}

/// Checks that every tag of the prompt `text` names an adapter in `dirs` (before a model is loaded).
pub fn check_names(text: &str, dirs: &[PathBuf]) -> Result<(), PipelineError> {
    let prompt = crate::prompt::parse(text).map_err(|e| PipelineError::Prompt(e.render(text)))?;
    if prompt.loras.is_empty() {
        return Ok(());
    }
    let catalog = Catalog::scan(&LoraDirs::new(dirs.to_vec()));
    catalog.resolve_prompt(&prompt).map(|_| ()).map_err(|e| {
        let mut msg = e.render(text);
        if dirs.is_empty() {
            msg.push_str("\n(no LoRA folder is configured: pass --lora-dir DIR)");
        }
        PipelineError::Prompt(msg)
    })
}

/// The `STIPPLE_LORA_DEBUG` lines of an application: types, family evidence, matched and skipped
/// keys per adapter, and the time ΔW took.
pub fn log_report(report: &ApplyReport, took: std::time::Duration) {
    for a in &report.adapters {
        tracing::info!(
            target: "stipple::lora",
            "{}: types {:?}; family evidence: context width {:?}, te width {:?}, te2 {}; \
             {} weights matched, {} keys skipped{}",
            a.name,
            a.types,
            a.family.context_width,
            a.family.te_width,
            a.family.has_te2,
            a.applied.len(),
            a.skipped.len(),
            a.skipped
                .iter()
                .take(5)
                .map(|k| format!("\n  skipped {}: {}", k.key, k.reason))
                .collect::<String>()
        );
    }
    tracing::info!(
        target: "stipple::lora",
        "ΔW of {} adapter(s) computed in {:.1} ms",
        report.adapters.len(),
        took.as_secs_f64() * 1e3
    );
}

/// One component's view of planned deltas: what the fuse path hands the patch step.
pub struct PlannedView<'p, 'a> {
    pub plan: &'p lora::planned::PlannedDeltas<'a>,
    pub component: TargetComponent,
}

impl crate::patch::DeltaSource for PlannedView<'_, '_> {
    fn params(&self) -> Vec<&str> {
        self.plan.params_of(self.component)
    }
    fn may_change(&self, param: &str) -> bool {
        self.plan.may_change(self.component, param)
    }
    fn delta(&self, param: &str) -> Result<Option<std::borrow::Cow<'_, [f32]>>, String> {
        self.plan
            .delta(self.component, param)
            .map(|d| d.map(std::borrow::Cow::Owned))
            .map_err(|e| e.to_string())
    }
    fn terms(&self, param: &str) -> Result<Vec<crate::patch::SourceTerm>, String> {
        let terms = self
            .plan
            .terms(self.component, param)
            .map_err(|e| e.to_string())?;
        Ok(terms
            .into_iter()
            .map(|t| crate::patch::SourceTerm {
                strength: t.strength,
                linear: t.linear,
                origin: Some(crate::patch::TermOrigin {
                    adapter: t.adapter,
                    at: t.at,
                }),
                delta: t.data,
            })
            .collect())
    }
}

/// Plans `loras` at `key` against `model` (family checks, keys, types: errors come here) and runs
/// `f` with the plan; ΔW is computed only as the patch step asks for each parameter.
pub fn with_plan<R>(
    model: &Model,
    loras: &[ActiveLora],
    key: &StrengthKey,
    f: impl FnOnce(lora::planned::PlannedDeltas<'_>) -> R,
) -> Result<R, PipelineError> {
    with_inputs(model, loras, key, |pairs, params| {
        let plan = lora::planned::plan(pairs, params).map_err(|e| {
            if lora_debug() {
                tracing::info!(target: "stipple::lora", "refused: {e}");
            }
            PipelineError::Adapter(e.to_string())
        })?;
        Ok(f(plan))
    })
}

/// Runs `f` with what the lora module applies against: the adapters with their strengths at `key`,
/// and the model's parameters with its pristine base weights.
fn with_inputs<R>(
    model: &Model,
    loras: &[ActiveLora],
    key: &StrengthKey,
    f: impl FnOnce(&[(&Adapter, Strengths)], &ModelParams) -> R,
) -> R {
    let base = base_weights(model);
    let params = ModelParams {
        family: model.index.family,
        params: target_params(model),
        base: &base,
    };
    let pairs: Vec<(&Adapter, Strengths)> = loras
        .iter()
        .enumerate()
        .map(|(i, l)| (l.adapter.as_ref(), strengths_of(l, key, i)))
        .collect();
    f(&pairs, &params)
}

/// ΔW per component for `loras` at `key`'s strengths (te for the text encoders, in/mid/out for the
/// UNet, each times its block weight), computed against the pristine base weights.
pub fn compute(
    model: &Model,
    loras: &[ActiveLora],
    key: &StrengthKey,
) -> Result<(ComponentDeltas, ApplyReport), PipelineError> {
    let t = std::time::Instant::now();
    let result = with_inputs(model, loras, key, lora::compute_deltas);
    if lora_debug() {
        match &result {
            Ok((_, report)) => log_report(report, t.elapsed()),
            Err(e) => tracing::info!(target: "stipple::lora", "refused: {e}"),
        }
    }
    let (deltas, report) = result.map_err(|e| PipelineError::Adapter(e.to_string()))?;
    let mut out = ComponentDeltas::new();
    for ((c, name), d) in deltas.by_param {
        out.entry(model_kind(c)).or_default().insert(name, d);
    }
    Ok((out, report))
}
