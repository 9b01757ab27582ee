//! `stipple lora merge` and `lora extract` behind the CLI: open the model(s), resolve adapters from
//! file arguments or a prompt's tags (with their component and block strengths), run
//! [`lora::merge`](crate::lora::merge)/[`lora::extract`](crate::lora::extract), write the kohya file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bake::{self, BakeError};
use crate::lora::extract::{self, ExtractError, ExtractOptions};
use crate::lora::merge::{self, MergeError, MergeOptions, Merged, Mode};
use crate::lora::write::{self, ErrorSummary, LoraLayer, Provenance, SourceRecord, WriteError};
use crate::lora::{Adapter, ModelParams};
use crate::model::{Model, ModelError};
use crate::pipeline::adapters::{self, ActiveLora, AdapterCache};
use crate::pipeline::PipelineError;
use crate::safetensors_out::Dtype;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Spec(#[from] BakeError),
    #[error(transparent)]
    Merge(#[from] MergeError),
    #[error(transparent)]
    Extract(#[from] ExtractError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(
        "<lora:{0}> has a per-step schedule; a merged LoRA has one strength per adapter, \
         so give constant strengths (e.g. <lora:{0}:0.7>)"
    )]
    Scheduled(String),
    #[error("nothing to merge: give adapter files or a --prompt with <lora:...> tags")]
    NoInputs,
    #[error("the base model is {base} and the tuned model {tuned}; extract needs two models of one family")]
    Families { base: String, tuned: String },
}

/// Everything `lora merge` takes.
pub struct MergeRequest<'a> {
    pub model_dir: &'a Path,
    /// `FILE[:STRENGTH][:KEY=VALUE...]`, as `bake --lora` takes them.
    pub files: &'a [String],
    /// A prompt whose `<lora:...>` tags are merged too, found in `lora_dirs`.
    pub prompt: Option<&'a str>,
    pub lora_dirs: Vec<PathBuf>,
    pub out: &'a Path,
    pub options: MergeOptions,
    pub dtype: Dtype,
    pub overwrite: bool,
}

/// What was written.
pub struct Outcome {
    pub out: PathBuf,
    pub layers: Vec<LoraLayer>,
    pub summary: ErrorSummary,
    /// Merge only: what each adapter contributed, and changes a LoRA cannot carry.
    pub merged: Option<(crate::lora::ApplyReport, Vec<String>)>,
    /// Extract only: weights that were the same in both models.
    pub unchanged: usize,
}

fn title(out: &Path) -> String {
    out.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Resolves the inputs, merges, and writes `req.out`.
pub fn merge(req: &MergeRequest) -> Result<Outcome, ExportError> {
    if !req.overwrite && req.out.exists() {
        return Err(WriteError::Exists(req.out.to_path_buf()).into());
    }
    let model = Model::open(req.model_dir)?;
    let mut active: Vec<(ActiveLora, String)> = Vec::new();
    for arg in req.files {
        let (path, mut tag) = bake::parse_lora_arg(arg)?;
        let adapter = Adapter::open(&path).map_err(|e| PipelineError::Adapter(e.to_string()))?;
        tag.name = adapter.name();
        active.push((
            ActiveLora {
                tag,
                path,
                adapter: Arc::new(adapter),
            },
            arg.clone(),
        ));
    }
    if let Some(text) = req.prompt {
        let prompt =
            crate::prompt::parse(text).map_err(|e| PipelineError::Prompt(e.render(text)))?;
        let mut cache = AdapterCache::new(req.lora_dirs.clone());
        for l in cache.resolve(&prompt, text)? {
            if l.tag.is_scheduled() {
                return Err(ExportError::Scheduled(l.tag.name.clone()));
            }
            let spec = text.get(l.tag.span.clone()).unwrap_or_default().to_string();
            active.push((l, spec));
        }
    }
    if active.is_empty() {
        return Err(ExportError::NoInputs);
    }
    let loras: Vec<ActiveLora> = active.iter().map(|(l, _)| l.clone()).collect();
    let key = adapters::strengths_at(&loras, 0, 1);
    let base = adapters::base_weights(&model);
    let params = ModelParams {
        family: model.index.family,
        params: adapters::target_params(&model),
        base: &base,
    };
    let pairs: Vec<_> = loras
        .iter()
        .enumerate()
        .map(|(i, l)| (l.adapter.as_ref(), adapters::strengths_of(l, &key, i)))
        .collect();
    let Merged {
        layers,
        report,
        dropped,
    } = merge::merge(&pairs, &params, &req.options)?;
    let sources = active
        .iter()
        .enumerate()
        .map(|(i, (l, spec))| SourceRecord {
            name: l.adapter.name(),
            file: l.path.display().to_string(),
            te: key.te[i],
            unet_in: key.unet[i][0],
            mid: key.unet[i][1],
            out: key.unet[i][2],
            blocks: l.tag.lbw.is_some(),
            spec: spec.clone(),
        })
        .collect();
    let svd = req.options.mode == Mode::Svd;
    let provenance = Provenance {
        family: model.index.family,
        title: title(req.out),
        method: if svd { "merge-svd" } else { "merge-exact" },
        rank_rule: svd.then(|| req.options.svd.rule.describe()),
        dynamic: svd && req.options.svd.rule.dynamic.is_some(),
        clamp: req.options.svd.clamp.filter(|_| svd),
        sources,
        models: None,
    };
    write::write(req.out, &layers, &provenance, req.dtype, req.overwrite)?;
    Ok(Outcome {
        out: req.out.to_path_buf(),
        summary: ErrorSummary::of(&layers),
        layers,
        merged: Some((report, dropped)),
        unchanged: 0,
    })
}

/// Everything `lora extract` takes.
pub struct ExtractRequest<'a> {
    pub base: &'a Path,
    pub tuned: &'a Path,
    pub out: &'a Path,
    pub options: ExtractOptions,
    pub dtype: Dtype,
    pub overwrite: bool,
}

/// Extracts `tuned − base` and writes `req.out`.
pub fn extract(req: &ExtractRequest) -> Result<Outcome, ExportError> {
    if !req.overwrite && req.out.exists() {
        return Err(WriteError::Exists(req.out.to_path_buf()).into());
    }
    let base_model = Model::open(req.base)?;
    let tuned_model = Model::open(req.tuned)?;
    let (bf, tf) = (base_model.index.family, tuned_model.index.family);
    if bf != tf {
        return Err(ExportError::Families {
            base: bf.facts().name.into(),
            tuned: tf.facts().name.into(),
        });
    }
    let params = adapters::target_params(&base_model);
    let base = adapters::base_weights(&base_model);
    let tuned = adapters::base_weights(&tuned_model);
    let got = extract::extract(&params, &base, &tuned, &req.options)?;
    let provenance = Provenance {
        family: bf,
        title: title(req.out),
        method: "extract",
        rank_rule: Some(req.options.svd.rule.describe()),
        dynamic: req.options.svd.rule.dynamic.is_some(),
        clamp: req.options.svd.clamp,
        sources: Vec::new(),
        models: Some((
            req.base.display().to_string(),
            req.tuned.display().to_string(),
        )),
    };
    write::write(req.out, &got.layers, &provenance, req.dtype, req.overwrite)?;
    Ok(Outcome {
        out: req.out.to_path_buf(),
        summary: ErrorSummary::of(&got.layers),
        layers: got.layers,
        merged: None,
        unchanged: got.unchanged,
    })
}
