//! A model: its components (graph, weight map, base weights), index, tokenizers and scheduler.
//!
//! [`Model::open`] takes a stipple folder, a diffusers folder or a single-file checkpoint and
//! cross-checks everything that can be checked without ONNX Runtime: each external initializer has
//! a weight-map entry, and each entry a base weight of the right size.

use super::checkpoint::{Checkpoint, CheckpointError};
use super::graph::{ElemType, Graph, GraphError};
pub use super::index::ModelIndex;
use super::prediction::{self, Prediction};
use super::weightmap::{Transform, WeightMap, WeightMapEntry};
pub use crate::family::ComponentKind;
use crate::family::Family;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(
        "{0} does not exist (a model is a checkpoint file, a diffusers folder or a stipple folder)"
    )]
    Missing(PathBuf),
    #[error("{path} is missing: {what}")]
    MissingFile { path: PathBuf, what: &'static str },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Shards(#[from] super::shards::ShardError),
    #[error("{component}: the graph, weight map and weights disagree:\n  {}", problems.join("\n  "))]
    Inconsistent {
        component: ComponentKind,
        problems: Vec<String>,
    },
    #[error(transparent)]
    Template(#[from] super::template::TemplateError),
    /// A file or folder that is not a model stipple runs; `message` says what it is instead.
    #[error("{message}")]
    Refused { path: PathBuf, message: String },
}

/// One component: graph, weight map and base weights, checked against each other.
pub struct Component {
    pub kind: ComponentKind,
    pub dir: PathBuf,
    pub graph: Graph,
    pub weightmap: WeightMap,
    pub weights: Checkpoint,
    /// The diffusers/transformers `config.json` the component was exported from.
    pub config: serde_json::Value,
    /// ONNX Runtime's SD-fused CUDA graph (`model.cuda.onnx` + `weightmap.cuda.json`), when the
    /// folder has one (`scripts/export_model.py --optimize cuda`). Same weights file.
    pub cuda: Option<GraphFiles>,
    /// The VAE decoder's fused CUDA graph (`model.fused.onnx` + `weightmap.fused.json`: ONNX
    /// Runtime's NhwcConv and GroupNorm, fp16, CUDA only; `scripts/vae_fused.py`), beside its plain
    /// fp16 graph in `cuda`. Same weights file.
    pub fused: Option<GraphFiles>,
    /// The VAE decoder's fused graph made f32 ([`GraphKind::Fused32`], [`super::fp32_graph`]),
    /// derived from `fused` by [`Component::with_fused`].
    pub fused32: Option<GraphFiles>,
    /// The fused UNet graph in `cuda` runs only when asked for (`--graph cuda`), not by default:
    /// a template's fused graph that has not passed the GPU check ([`super::template`]).
    pub cuda_opt_in: bool,
}

/// `fused` made f32 ([`super::fp32_graph`]) and checked against the weights; `None`, said in
/// the log, where that fails: the component then runs its plain fp32 graph as before.
fn fp32_twin(fused: &GraphFiles, weights: &Checkpoint) -> Option<GraphFiles> {
    let wide = match super::fp32_graph::widen(&fused.graph, &fused.weightmap) {
        Ok((graph, weightmap)) => GraphFiles { graph, weightmap },
        Err(e) => {
            tracing::debug!("{}: no f32 fused graph: {e}", fused.graph.path.display());
            return None;
        }
    };
    let problems = consistency_problems(&wide.graph, &wide.weightmap, weights);
    if !problems.is_empty() {
        tracing::warn!(
            "{}: the f32 fused graph does not fit the weights ({}); fp32 runs the plain graph",
            fused.graph.path.display(),
            problems.join("; ")
        );
        return None;
    }
    Some(wide)
}

/// A second graph of a component over the same base weights.
#[derive(Clone)]
pub struct GraphFiles {
    pub graph: Graph,
    pub weightmap: WeightMap,
}

/// Which of a component's graphs a session runs (defined beside [`Graph`], so that the
/// templates can name it without depending on this module).
pub use super::graph::GraphKind;

/// Where a text encoder's tokenizer comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenizerFiles {
    /// A tokenizer folder: `vocab.json` + `merges.txt` or `tokenizer.json`, and its config.
    Folder(PathBuf),
    /// The CLIP vocabulary embedded in stipple, with this pad token.
    Bundled { pad: &'static str },
}

/// What kind of thing a model was opened from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A stipple folder (graphs and weights side by side).
    Folder,
    /// A diffusers (Hugging Face) folder, read through the embedded template `template`.
    Diffusers { template: &'static str },
    /// A single-file checkpoint, read through the embedded template `template`.
    SingleFile { template: &'static str },
}

/// How to open a model: which template precision to prefer, whether to read EMA weights, and a
/// separate VAE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpenOptions {
    /// Prefer fp16 graphs (GPU) over fp32 ones (CPU) when a checkpoint fits both.
    pub prefer_fp16: bool,
    /// Read a single-file checkpoint's `model_ema.*` UNet weights instead of the trained ones.
    pub ema: bool,
    /// A VAE file read instead of the model's own VAE (`--vae`).
    pub vae: Option<PathBuf>,
    /// What the UNet predicts, overriding the model's scheduler config and any detection
    /// (`--prediction`).
    pub prediction: Option<Prediction>,
}

/// An opened model.
pub struct Model {
    /// The folder or file it was opened from.
    pub dir: PathBuf,
    pub index: ModelIndex,
    pub components: HashMap<ComponentKind, Component>,
    /// One per text encoder, in the family's order.
    pub tokenizers: Vec<TokenizerFiles>,
    /// The scheduler's `scheduler_config.json`.
    pub scheduler_config: String,
    pub source: ModelSource,
    /// The separate VAE file read instead of the model's own, if any.
    pub vae: Option<PathBuf>,
    /// What the model was told to be by, one line each (family, variant, prediction): `doctor`
    /// shows them. Empty for a stipple folder, which says what it is.
    pub evidence: Vec<String>,
    /// An SD 2.x checkpoint that does not say whether it predicts v: the pipeline runs the
    /// one-step test at load ([`crate::model::prediction`]).
    pub prediction_pending: bool,
}

pub(super) fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
) -> Result<T, ModelError> {
    if !path.is_file() {
        return Err(ModelError::MissingFile {
            path: path.to_path_buf(),
            what,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}

impl Model {
    /// Opens a stipple folder ([`crate::model::open`] dispatches other kinds elsewhere).
    pub(super) fn open_folder(dir: &Path) -> Result<Model, ModelError> {
        let index: ModelIndex = read_json(&dir.join("model_index.json"), "the model index")?;
        let facts = index.family.facts();
        let mut tokenizers = Vec::new();
        for enc in facts.encoders {
            let tdir = dir.join(enc.tokenizer);
            let both = ["vocab.json", "merges.txt"]
                .iter()
                .all(|f| tdir.join(f).is_file());
            if !both && !tdir.join("tokenizer.json").is_file() {
                return Err(ModelError::MissingFile {
                    path: tdir.join("vocab.json"),
                    what: "a tokenizer file (vocab.json and merges.txt, or tokenizer.json)",
                });
            }
            tokenizers.push(TokenizerFiles::Folder(tdir));
        }
        let mut components = HashMap::new();
        for &kind in &index.components {
            components.insert(kind, Component::open(dir, kind)?);
        }
        check_needed(&index, &components, dir)?;
        let sched = dir.join("scheduler").join("scheduler_config.json");
        let scheduler_config = std::fs::read_to_string(&sched).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ModelError::MissingFile {
                    path: sched.clone(),
                    what: "the scheduler config",
                }
            } else {
                ModelError::Io {
                    path: sched.clone(),
                    source,
                }
            }
        })?;
        Ok(Model {
            dir: dir.to_path_buf(),
            index,
            components,
            tokenizers,
            scheduler_config,
            source: ModelSource::Folder,
            vae: None,
            evidence: Vec::new(),
            prediction_pending: false,
        })
    }

    /// Sets what the UNet predicts: the scheduler config's `prediction_type`, and for an SD 2.x
    /// 768-v checkpoint read through a full-size template its 768 default size; `why` becomes
    /// the evidence line.
    pub fn set_prediction(&mut self, p: Prediction, why: &str) -> Result<(), ModelError> {
        self.scheduler_config =
            prediction::rewrite_config(&self.scheduler_config, p).map_err(|source| {
                ModelError::Json {
                    path: self.dir.join("scheduler/scheduler_config.json"),
                    source,
                }
            })?;
        let from_template = !matches!(self.source, ModelSource::Folder);
        let sd2_base_size =
            self.index.default_width == Some(512) && self.index.default_height == Some(512);
        if self.index.family == Family::Sd2 && from_template && p == Prediction::V && sd2_base_size
        {
            // SD 2.x's v-prediction model is the 768 one; the template says the base model's 512.
            self.index.default_width = Some(768);
            self.index.default_height = Some(768);
        }
        self.prediction_pending = false;
        self.evidence
            .retain(|l| !l.starts_with(prediction::EVIDENCE_PREFIX));
        self.evidence.push(prediction::evidence_line(p, why));
        Ok(())
    }

    /// A short name for infotext and logs: the folder's name, or the file's without extension.
    pub fn name(&self) -> String {
        let p = self.dir.canonicalize().unwrap_or_else(|_| self.dir.clone());
        let name = match self.source {
            ModelSource::SingleFile { .. } => p.file_stem(),
            _ => p.file_name(),
        };
        name.map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    }

    pub fn component(&self, kind: ComponentKind) -> Option<&Component> {
        self.components.get(&kind)
    }

    /// The VAE's latent scaling factor (model index first, then the family table).
    pub fn vae_scaling(&self) -> f32 {
        self.index
            .vae_scaling_factor
            .unwrap_or(self.index.family.facts().vae_scale)
    }

    /// Whether the model's VAE decodes in fp16 without overflowing: the family's own VAE says, and a
    /// separate VAE file named as the fp16-fix retrain (`sdxl-vae-fp16-fix`, `..._fp16_fix`) is.
    pub fn vae_fp16_safe(&self) -> bool {
        let fix = self.vae.as_ref().is_some_and(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_ascii_lowercase().replace('_', "-"))
                .unwrap_or_default();
            name.contains("fp16-fix")
        });
        fix || self.index.family.facts().vae_fp16_safe
    }

    /// Whether an empty negative prompt conditions on zeros (model index first, then the family).
    pub fn zeros_for_empty_negative(&self) -> bool {
        self.index
            .force_zeros_for_empty_prompt
            .unwrap_or(self.index.family.facts().zeros_for_empty_negative)
    }

    /// Default image size: the model index, else the family's.
    pub fn default_size(&self) -> (u32, u32) {
        let (w, h) = self.index.family.facts().default_size;
        (
            self.index.default_width.unwrap_or(w),
            self.index.default_height.unwrap_or(h),
        )
    }
}

impl Component {
    fn open(dir: &Path, kind: ComponentKind) -> Result<Component, ModelError> {
        let cdir = dir.join(kind.dir_name());
        if !cdir.is_dir() {
            return Err(ModelError::MissingFile {
                path: cdir,
                what: "a component folder listed in model_index.json",
            });
        }
        let graph_path = cdir.join("model.onnx");
        if !graph_path.is_file() {
            return Err(ModelError::MissingFile {
                path: graph_path,
                what: "the component's ONNX graph",
            });
        }
        let weights_path = cdir.join("weights.safetensors");
        if !weights_path.is_file() {
            return Err(ModelError::MissingFile {
                path: weights_path,
                what: "the component's weights",
            });
        }
        let weightmap: WeightMap = read_json(&cdir.join("weightmap.json"), "the weight map")?;
        let config = read_json(&cdir.join("config.json"), "the component's config.json")?;
        let graph = Graph::read(&graph_path)?;
        let weights = Checkpoint::open(&weights_path)?;
        let cuda_path = cdir.join("model.cuda.onnx");
        let cuda = if cuda_path.is_file() {
            let weightmap: WeightMap = read_json(
                &cdir.join("weightmap.cuda.json"),
                "the weight map of the fused CUDA graph",
            )?;
            let graph = Graph::read(&cuda_path)?;
            Some(GraphFiles { graph, weightmap })
        } else {
            None
        };
        let fused_path = cdir.join("model.fused.onnx");
        let fused = if fused_path.is_file() {
            let weightmap: WeightMap = read_json(
                &cdir.join("weightmap.fused.json"),
                "the weight map of the fused VAE graph",
            )?;
            let graph = Graph::read(&fused_path)?;
            Some(GraphFiles { graph, weightmap })
        } else {
            None
        };
        Component::new(
            kind,
            cdir,
            GraphFiles { graph, weightmap },
            cuda,
            weights,
            config,
        )?
        .with_fused(fused)
    }

    /// Marks the fused UNet graph as one that runs only when asked for.
    pub fn with_cuda_opt_in(mut self, opt_in: bool) -> Component {
        self.cuda_opt_in = opt_in;
        self
    }

    /// The component with `fused` as its fused graph ([`GraphKind::Fused`]: the VAE decoder's or a
    /// text encoder's), checked against the weights.
    pub fn with_fused(mut self, fused: Option<GraphFiles>) -> Result<Component, ModelError> {
        let fused = match fused {
            Some(f)
                if matches!(
                    self.kind,
                    ComponentKind::TextEncoder | ComponentKind::TextEncoder2
                ) =>
            {
                Some(with_extra_rows(f)?)
            }
            other => other,
        };
        if let Some(f) = &fused {
            let mut problems = consistency_problems(&f.graph, &f.weightmap, &self.weights);
            if !problems.is_empty() {
                problems.insert(0, format!("in {}:", f.graph.path.display()));
                return Err(ModelError::Inconsistent {
                    component: self.kind,
                    problems,
                });
            }
        }
        self.fused32 = match &fused {
            Some(f) if self.kind == ComponentKind::VaeDecoder => fp32_twin(f, &self.weights),
            _ => None,
        };
        self.fused = fused;
        Ok(self)
    }

    /// A component from its parts, checked against each other.
    pub fn new(
        kind: ComponentKind,
        dir: PathBuf,
        plain: GraphFiles,
        cuda: Option<GraphFiles>,
        weights: Checkpoint,
        config: serde_json::Value,
    ) -> Result<Component, ModelError> {
        let problems = consistency_problems(&plain.graph, &plain.weightmap, &weights);
        if !problems.is_empty() {
            return Err(ModelError::Inconsistent {
                component: kind,
                problems,
            });
        }
        if let Some(c) = &cuda {
            let mut problems = consistency_problems(&c.graph, &c.weightmap, &weights);
            if !problems.is_empty() {
                problems.insert(0, format!("in {}:", c.graph.path.display()));
                return Err(ModelError::Inconsistent {
                    component: kind,
                    problems,
                });
            }
        }
        // Text encoders take textual-inversion vectors through one more input (extra_tokens.rs).
        let (plain, cuda) = if matches!(
            kind,
            ComponentKind::TextEncoder | ComponentKind::TextEncoder2
        ) {
            (
                with_extra_rows(plain)?,
                cuda.map(with_extra_rows).transpose()?,
            )
        } else {
            (plain, cuda)
        };
        Ok(Component {
            kind,
            dir,
            graph: plain.graph,
            weightmap: plain.weightmap,
            weights,
            config,
            cuda,
            fused: None,
            fused32: None,
            cuda_opt_in: false,
        })
    }

    /// The component with its fp32 graphs only (the plain one and [`GraphKind::Fused32`]), sharing
    /// the mapped weights: what the VAE's fp32 fallback is built from, on whichever thread finds
    /// the fp16 decoder overflowing.
    pub fn plain_twin(&self) -> Component {
        Component {
            kind: self.kind,
            dir: self.dir.clone(),
            graph: self.graph.clone(),
            weightmap: self.weightmap.clone(),
            weights: self.weights.clone(),
            config: self.config.clone(),
            cuda: None,
            fused: None,
            fused32: self.fused32.clone(),
            cuda_opt_in: false,
        }
    }

    /// The graph and weight map of `kind`, when the component has that graph.
    pub fn graph_of(&self, kind: GraphKind) -> Option<(&Graph, &WeightMap)> {
        match kind {
            GraphKind::Plain => Some((&self.graph, &self.weightmap)),
            GraphKind::Cuda => self.cuda.as_ref().map(|g| (&g.graph, &g.weightmap)),
            GraphKind::Fused => self.fused.as_ref().map(|g| (&g.graph, &g.weightmap)),
            GraphKind::Fused32 => self.fused32.as_ref().map(|g| (&g.graph, &g.weightmap)),
        }
    }

    /// Size of the assembled external-data buffer of the plain graph.
    pub fn buffer_len(&self) -> usize {
        buffer_len(&self.graph)
    }

    /// The element type of an initializer of the plain graph as ONNX Runtime will see it.
    pub fn elem_of(&self, init: &str) -> Option<ElemType> {
        elem_of(&self.graph, init)
    }
}

/// Size of a graph's assembled external-data buffer.
pub fn buffer_len(graph: &Graph) -> usize {
    graph
        .externals
        .iter()
        .map(|e| e.offset + e.length)
        .max()
        .unwrap_or(0)
}

/// The element type of one of a graph's external initializers.
pub fn elem_of(graph: &Graph, init: &str) -> Option<ElemType> {
    graph
        .externals
        .iter()
        .find(|e| e.name == init)
        .map(|e| e.elem)
}

/// The components every pipeline of the model's family needs must be there.
pub(super) fn check_needed(
    index: &ModelIndex,
    components: &HashMap<ComponentKind, Component>,
    dir: &Path,
) -> Result<(), ModelError> {
    let needed = index
        .family
        .facts()
        .encoders
        .iter()
        .map(|e| e.component)
        .chain([ComponentKind::Unet, ComponentKind::VaeDecoder]);
    for needed in needed {
        if !components.contains_key(&needed) {
            return Err(ModelError::MissingFile {
                path: dir.join(needed.dir_name()),
                what: "a component the pipeline needs (not listed in model_index.json)",
            });
        }
    }
    Ok(())
}

/// A text encoder's graph rewritten to take textual-inversion vectors ([`super::extra_tokens`]).
fn with_extra_rows(f: GraphFiles) -> Result<GraphFiles, ModelError> {
    Ok(GraphFiles {
        graph: super::extra_tokens::add_extra_rows(f.graph)?,
        weightmap: f.weightmap,
    })
}

/// The shape a source parameter must have for `e` to build an initializer of `dims` from it.
pub(super) fn source_shape(e: &WeightMapEntry, dims: &[usize]) -> Option<Vec<usize>> {
    match (e.transform, dims) {
        (Transform::Identity, _) => Some(dims.to_vec()),
        (Transform::Transpose, [r, c]) => Some(vec![*c, *r]),
        (Transform::Nhwc, [o, kh, kw, i]) => Some(vec![*o, *i, *kh, *kw]),
        (Transform::PackHeads, [c, m]) => {
            let k = e.parts.len();
            (k > 0 && e.heads > 0 && m % k == 0 && (m / k).is_multiple_of(e.heads))
                .then(|| vec![m / k, *c])
        }
        // The biases of packed projections, side by side in the same order.
        (Transform::PackHeads, [m]) => {
            let k = e.parts.len();
            (k > 0 && e.heads > 0 && m % k == 0 && (m / k).is_multiple_of(e.heads))
                .then(|| vec![m / k])
        }
        _ => None,
    }
}

/// Everything that makes a graph, its weight map and the weights disagree, at most 20 lines.
fn consistency_problems(graph: &Graph, weightmap: &WeightMap, weights: &Checkpoint) -> Vec<String> {
    let mut problems = Vec::new();
    let entries: HashMap<&str, _> = weightmap
        .initializers
        .iter()
        .map(|e| (e.name.as_str(), e))
        .collect();
    for ext in &graph.externals {
        if ext.location.trim_start_matches("./") != weightmap.external_file {
            problems.push(format!(
                "initializer {} refers to external file {:?}, the weight map to {:?}",
                ext.name, ext.location, weightmap.external_file
            ));
            continue;
        }
        let Some(e) = entries.get(ext.name.as_str()) else {
            problems.push(format!("initializer {} has no weight-map entry", ext.name));
            continue;
        };
        if e.offset != ext.offset || e.length != ext.length || e.shape != ext.dims {
            problems.push(format!(
                "initializer {}: graph says offset {} length {} shape {:?}, weight map {} {} {:?}",
                ext.name, ext.offset, ext.length, ext.dims, e.offset, e.length, e.shape
            ));
        }
        if e.dtype != ext.elem.name() || ext.elem.size().is_none() {
            problems.push(format!(
                "initializer {}: graph type {}, weight map {}",
                ext.name,
                ext.elem.name(),
                e.dtype
            ));
        }
        let want = source_shape(e, &ext.dims);
        for src in e.sources() {
            match (weights.tensor(src), &want) {
                (None, _) => problems.push(format!(
                    "initializer {}: source weight {} is not in {}",
                    ext.name,
                    src,
                    weights.path().display()
                )),
                (Some(t), Some(want)) if t.shape == want.as_slice() => {}
                (Some(t), _) => problems.push(format!(
                    "initializer {}: source weight {} has shape {:?}, which {:?} cannot make {:?}",
                    ext.name, src, t.shape, e.transform, ext.dims
                )),
            }
        }
    }
    let externals: std::collections::HashSet<&str> =
        graph.externals.iter().map(|e| e.name.as_str()).collect();
    for e in &weightmap.initializers {
        if !externals.contains(e.name.as_str()) {
            problems.push(format!(
                "weight-map entry {} is not an external initializer of the graph",
                e.name
            ));
        }
    }
    problems.truncate(20);
    problems
}
