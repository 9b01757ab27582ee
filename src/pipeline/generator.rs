//! Text-to-image on ONNX Runtime: the [`Generator`] owns a model's sessions and turns a [`Job`] into
//! images, as diffusers' `StableDiffusionPipeline` / `StableDiffusionXLPipeline` do (same tokens,
//! noise, CFG, added conditioning and schedulers). What differs per family comes from [`crate::family`].
//!
//! Sessions are built from the memory-mapped base weights through the in-memory external-data path,
//! with adapter deltas added by [`Generator::rebuild`]; [`Generator`] is the engine's [`Runner`].

use super::adapters::{self, ActiveLora, AdapterCache, StrengthKey};
use super::resident::{self, Net, ResidentError, Staged};
use super::rng::TorchRng;
use super::schedulers::{self, SchedulerConfig, SchedulerError};
use super::tensor_io::{run, Bound, Input};
use super::tokenizer::{ClipTokenizer, TokenizerError};
use super::vae;
use crate::engine::{Outcome, Reporter, Runner, Stop};
use crate::image::{format_infotext, Resources};
use crate::job::{Event, Job, Progress, RgbImage};
use crate::live::{self, Dials, LiveError, LiveOptions, LiveUnet, LoraMethod};
use crate::lora::ApplyReport;
use crate::model::layout::{ComponentKind, GraphKind};
use crate::model::{Model, ModelError, TokenizerFiles};
use crate::patch::{self, PatchError};
use crate::prompt::{self, chunk, Chunk, ChunkConfig, Fragment, Prompt, MAX_CHUNKS};
use crate::runtime::{build_session, Runtime, RuntimeError, SessionError, SessionOptions};
use ort::session::Session;
use std::collections::HashMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Patch(#[from] PatchError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("{what}: {message}")]
    Run { what: &'static str, message: String },
    #[error("invalid job: {0}")]
    Job(String),
    #[error("{0}")]
    Prompt(String),
    #[error("{0}")]
    Adapter(String),
    #[error(transparent)]
    Live(#[from] LiveError),
    #[error("{0}")]
    Resident(String),
    #[error(
        "a UNet captured as a CUDA graph (cuda_graph in [cuda] of the config, --cuda-graph) cannot \
         run adapters live, and {0}. Use constant strengths with lora_method fuse, or turn \
         cuda_graph off"
    )]
    CudaGraph(&'static str),
}

fn run_err(what: &'static str) -> impl Fn(ort::Error) -> PipelineError {
    move |e| PipelineError::Run {
        what,
        message: e.to_string(),
    }
}

/// Deltas per component: parameter name → ΔW (torch layout, f32, strengths applied).
pub type ComponentDeltas = HashMap<ComponentKind, HashMap<String, Vec<f32>>>;

struct Sessions {
    /// One per text encoder of the family, in its order.
    text: Vec<Net>,
    unet: Net,
    vae: Session,
}

/// A prompt's conditioning: the UNet context (`[tokens, context_dim]`, chunks concatenated) and, for
/// families with added conditioning, the pooled embedding of its first chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct Conditioning {
    pub chunks: Vec<Vec<f32>>,
    pub pooled: Option<Vec<f32>>,
}

/// SDXL's added conditioning for a UNet call: pooled text embeddings `[b, n]` and time ids `[b, 6]`.
#[derive(Debug, Clone, Copy)]
pub struct Added<'a> {
    pub text_embeds: &'a [f32],
    pub time_ids: &'a [f32],
}

/// The context and added conditioning of one CFG batch `[uncond, cond]`, cached per text-encoder state.
struct BatchCond {
    context: Vec<f32>,
    text_embeds: Option<Vec<f32>>,
}

/// What the text-encoder and UNet sessions currently have fused in, so a session is rebuilt only
/// when its part of the adapter strengths changes. Adapters at strength 0 are left out: the base.
/// `te` covers every text encoder of the family (they share the `te` strength).
#[derive(Debug, Clone, Default, PartialEq)]
struct Fused {
    te: Vec<(PathBuf, String)>,
    unet: Vec<(PathBuf, String)>,
    /// (latent height, latent width, context length) the UNet session was built for, with
    /// static shapes.
    unet_dims: Option<[i64; 3]>,
}

/// Where the time of the last adapter change went.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct FuseStats {
    /// Planning the adapters: family checks, keys, module types (ΔW itself is computed in the patch
    /// step, each parameter's where it is added).
    pub deltas_s: f64,
    /// Assembling the weight buffers (ΔW, base + ΔW, dtype conversion), summed over components.
    pub patch_s: f64,
    /// ONNX Runtime session creation, summed over components (text encoders and UNet are built
    /// side by side, so the swap's wall time can be less than ΔW + patch + sessions).
    pub session_s: f64,
    /// Wall time of the patch and session builds together.
    pub build_wall_s: f64,
    /// Uploading resident weights rewritten in place (0 when sessions were built instead).
    pub upload_s: f64,
    /// Dropping the replaced sessions (ONNX Runtime frees their device memory).
    pub free_s: f64,
}

/// What an adapter change does to one component's session.
enum Change {
    /// A new session (baked weights, or resident ones filled at build).
    Built(Box<Net>),
    /// New contents for some resident weights.
    Staged(Staged),
}

/// A patch failure as the pipeline reports it: a ΔW that cannot be computed is the adapter's fault.
fn patch_err(e: PatchError) -> PipelineError {
    match e {
        PatchError::Delta { message, .. } => PipelineError::Adapter(message),
        e => PipelineError::Patch(e),
    }
}

impl From<ResidentError> for PipelineError {
    fn from(e: ResidentError) -> Self {
        match e {
            ResidentError::Session(e) => PipelineError::Session(e),
            ResidentError::Patch(e) => patch_err(e),
            e => PipelineError::Resident(e.to_string()),
        }
    }
}

impl Fused {
    fn of(loras: &[ActiveLora], key: &StrengthKey) -> Fused {
        let mut f = Fused::default();
        for (i, l) in loras.iter().enumerate() {
            let extra = format!(
                "{:?}/{:?}",
                l.tag.lbw.as_ref().map(|b| b.to_string()),
                l.tag.dyn_
            );
            if key.te[i] != 0.0 {
                f.te.push((l.path.clone(), format!("{}/{extra}", key.te[i])));
            }
            if key.unet[i].iter().any(|&s| s != 0.0) {
                f.unet
                    .push((l.path.clone(), format!("{:?}/{extra}", key.unet[i])));
            }
        }
        f
    }

    fn with_dims(mut self, dims: Option<[i64; 3]>) -> Fused {
        self.unet_dims = dims;
        self
    }
}

/// A loaded model with its sessions, ready to run jobs.
pub struct Generator {
    pub model: Model,
    /// One per text encoder, from its tokenizer folder.
    tokenizers: Vec<ClipTokenizer>,
    scheduler: SchedulerConfig,
    runtime: &'static Runtime,
    opts: SessionOptions,
    sessions: Sessions,
    /// Which output of the text encoder conditions the UNet.
    context_dim: usize,
    model_name: String,
    /// The infotext's resource fields; the file hashes arrive from `hashing`.
    resources: Resources,
    hashing: Option<std::thread::JoinHandle<(Option<String>, Option<String>)>>,
    /// The text encoder's final layer norm (weight, bias, eps) when clip skip 2 needs it.
    final_norm: Option<(Vec<f32>, Vec<f32>, f32)>,
    adapters: AdapterCache,
    fused: Fused,
    /// The report of the last adapter application, for front ends: the modules of the components
    /// that change rebuilt (a text encoder whose strengths did not change keeps its last weights).
    pub last_report: Option<ApplyReport>,
    /// Timings of the last adapter change.
    pub last_fuse: Option<FuseStats>,
    /// Send `Event::Preview` while sampling (the workstation shows them).
    pub previews: bool,
    /// (latent height, latent width) the VAE session was built for, with static shapes.
    vae_dims: Option<[i64; 2]>,
    /// Live mode (issue 5): how adapters reach the weights, the live UNet, strength dials.
    pub lora_method: LoraMethod,
    pub live_opts: LiveOptions,
    live: Option<LiveUnet>,
    dials: Dials,
    /// How many times prompt conditioning was computed (one per distinct text-encoder strength set).
    pub encodes: usize,
    /// The UNet's fixed input and output buffers, when it runs as a CUDA graph.
    unet_io: Option<Bound>,
    /// Run the UNet through fixed buffers ([`Bound`]) without a CUDA graph too: how tests check
    /// that path on the CPU.
    #[doc(hidden)]
    pub bound_unet: bool,
}

/// Parses the prompt and the negative prompt; LoRA tags belong in the prompt only.
fn parse_prompts(job: &Job) -> Result<(Prompt, Prompt), PipelineError> {
    let pos =
        prompt::parse(&job.prompt).map_err(|e| PipelineError::Prompt(e.render(&job.prompt)))?;
    let neg = prompt::parse(&job.negative).map_err(|e| {
        PipelineError::Prompt(format!("negative prompt: {}", e.render(&job.negative)))
    })?;
    if let Some(tag) = neg.loras.first() {
        return Err(PipelineError::Prompt(format!(
            "negative prompt: <lora:{}> at byte {}: LoRA tags belong in the prompt, not the negative prompt",
            tag.name, tag.span.start
        )));
    }
    Ok((pos, neg))
}

/// Checks what a job asks of the model before any work starts.
pub fn validate_job(job: &Job) -> Result<(), PipelineError> {
    if job.width == 0
        || job.height == 0
        || !job.width.is_multiple_of(8)
        || !job.height.is_multiple_of(8)
    {
        return Err(PipelineError::Job(format!(
            "size {}x{}: width and height must be positive multiples of 8",
            job.width, job.height
        )));
    }
    if job.steps == 0 || job.steps > 1000 {
        return Err(PipelineError::Job(format!(
            "steps {}: must be between 1 and 1000",
            job.steps
        )));
    }
    if !job.cfg.is_finite() {
        return Err(PipelineError::Job("CFG scale must be a number".into()));
    }
    if job.batch == 0 {
        return Err(PipelineError::Job("batch must be at least 1".into()));
    }
    prompt::parse(&job.prompt).map_err(|e| PipelineError::Prompt(e.render(&job.prompt)))?;
    prompt::parse(&job.negative).map_err(|e| {
        PipelineError::Prompt(format!("negative prompt: {}", e.render(&job.negative)))
    })?;
    Ok(())
}

impl Generator {
    /// Opens `dir` and builds its sessions from the pristine base weights.
    pub fn load(
        dir: &Path,
        runtime: &'static Runtime,
        opts: SessionOptions,
    ) -> Result<Self, PipelineError> {
        let opts = opts.resolved();
        let model = Model::open_with(dir, opts.open_options())?;
        let tokenizers = model
            .tokenizers
            .iter()
            .map(|t| match t {
                TokenizerFiles::Folder(d) => ClipTokenizer::from_dir(d),
                TokenizerFiles::Bundled { pad } => ClipTokenizer::bundled(pad),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let scheduler = SchedulerConfig::from_json_str(&model.scheduler_config)?;
        let sessions = build_sessions(&model, runtime, &opts, &ComponentDeltas::new())?;
        crate::patch::return_freed_memory();
        let context_dim = model
            .component(ComponentKind::Unet)
            .and_then(|c| c.config.get("cross_attention_dim"))
            .and_then(|v| v.as_u64())
            .unwrap_or(model.index.family.facts().context_dim as u64)
            as usize;
        let model_name = model.name();
        let clip_skip = opts.clip_skip.unwrap_or(1);
        if !(1..=2).contains(&clip_skip) {
            return Err(PipelineError::Job(format!(
                "--clip-skip {clip_skip}: stipple's text-encoder graphs give the last two layers,                  so clip skip is 1 or 2"
            )));
        }
        let final_norm = if clip_skip == 2 {
            final_layer_norm(&model)
        } else {
            None
        };
        // Hashing a multi-gigabyte file takes seconds the first time: it runs beside the
        // session builds and is waited for at the first image.
        let hash_model = matches!(model.source, crate::model::ModelSource::SingleFile { .. })
            .then(|| model.dir.clone());
        let hash_vae = model.vae.clone();
        let hashing = Some(std::thread::spawn(move || {
            (
                hash_model.and_then(|p| crate::model::hash::short_hash(&p)),
                hash_vae.and_then(|p| crate::model::hash::short_hash(&p)),
            )
        }));
        let resources = Resources {
            model: model_name.clone(),
            vae: model
                .vae
                .as_ref()
                .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned())),
            clip_skip: (clip_skip > 1).then_some(clip_skip),
            ..Resources::default()
        };
        Ok(Generator {
            model,
            tokenizers,
            scheduler,
            runtime,
            opts,
            sessions,
            context_dim,
            model_name,
            resources,
            hashing,
            final_norm,
            adapters: AdapterCache::default(),
            fused: Fused::default(),
            last_report: None,
            last_fuse: None,
            previews: false,
            vae_dims: None,
            lora_method: LoraMethod::default(),
            live_opts: LiveOptions::default(),
            live: None,
            dials: Dials::default(),
            encodes: 0,
            unet_io: None,
            bound_unet: false,
        })
    }

    /// Resolves the job's adapters and fuses them at their first-step strengths, without sampling:
    /// what a front end calls to have the next image start at once.
    pub fn prepare(&mut self, job: &Job) -> Result<(), PipelineError> {
        let (pos, _) = parse_prompts(job)?;
        let loras = self.adapters.resolve(&pos, &job.prompt)?;
        let first = adapters::strengths_at(&loras, 0, job.steps.max(1) as usize);
        self.fuse(&loras, &first, None)
    }

    /// Returns every session to the pristine base weights (a no-op when nothing is fused).
    pub fn reset_adapters(&mut self) -> Result<(), PipelineError> {
        let none = StrengthKey {
            te: Vec::new(),
            unet: Vec::new(),
        };
        self.fuse(&[], &none, None)
    }

    /// Which UNet graph the fused path runs (`plain` or `cuda`); live adapters always use the plain one.
    pub fn unet_graph(&self) -> &'static str {
        let kind = self
            .model
            .component(ComponentKind::Unet)
            .and_then(|c| self.opts.graph.resolve(self.opts.device, c).ok());
        match kind {
            Some(GraphKind::Cuda) => "cuda",
            _ => "plain",
        }
    }

    /// Whether the text encoders and UNet hold resident weights (adapter changes rewrite them in
    /// place instead of building sessions).
    pub fn resident_weights(&self) -> bool {
        self.sessions.unet.is_resident()
    }

    /// The folders `<lora:NAME>` tags are looked up in.
    pub fn set_lora_dirs(&mut self, dirs: Vec<PathBuf>) {
        self.adapters = AdapterCache::new(dirs);
    }

    /// Brings the text-encoder and UNet sessions to `key`'s strengths of `loras`, rebuilding only the
    /// sessions whose part changed. On error nothing is changed.
    fn fuse(
        &mut self,
        loras: &[ActiveLora],
        key: &StrengthKey,
        unet_dims: Option<[i64; 3]>,
    ) -> Result<(), PipelineError> {
        let want = Fused::of(loras, key).with_dims(unet_dims.or(self.fused.unet_dims));
        if want == self.fused {
            return Ok(());
        }
        let mut stats = FuseStats::default();
        let t = Instant::now();
        let rebuild_te = want.te != self.fused.te;
        let rebuild_unet = want.unet != self.fused.unet || want.unet_dims != self.fused.unet_dims;
        let te_dims = self.te_dims();
        let unet_dims = unet_dim_overrides(want.unet_dims);
        // Resident weights are rewritten in place; a UNet whose shapes change needs a new session.
        let te_in_place = self.sessions.text.iter().all(Net::is_resident);
        let unet_in_place =
            self.sessions.unet.is_resident() && want.unet_dims == self.fused.unet_dims;
        let (model, rt, opts) = (&self.model, self.runtime, &self.opts);
        let te_layouts: Vec<Option<&resident::Layout>> =
            self.sessions.text.iter().map(Net::layout).collect();
        let unet_layout = self.sessions.unet.layout();
        let planned = adapters::with_plan(model, loras, key, |plan| {
            let plan_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let view = |kind: ComponentKind| adapters::PlannedView {
                plan: &plan,
                component: adapters::lora_component(kind)
                    .unwrap_or(crate::lora::TargetComponent::Unet),
            };
            // Staged in place, or built anew; each ΔW is computed inside the patch step, where it
            // is added (never all at once).
            let change = |kind: ComponentKind,
                          layout: Option<&resident::Layout>,
                          in_place: bool,
                          dims: &[(&str, i64)],
                          st: &mut FuseStats|
             -> Result<Change, PipelineError> {
                let Some(layout) = layout.filter(|_| in_place) else {
                    return build_component(model, rt, opts, kind, &view(kind), dims, st)
                        .map(|n| Change::Built(Box::new(n)));
                };
                let t = Instant::now();
                let c = model
                    .component(kind)
                    .ok_or_else(|| PipelineError::Job(format!("the model has no {kind}")))?;
                let staged = layout.stage(c, &view(kind)).map_err(patch_err)?;
                st.patch_s += t.elapsed().as_secs_f64();
                Ok(Change::Staged(staged))
            };
            // The text encoders and the UNet are done side by side: session creation is mostly
            // single-threaded inside ONNX Runtime, so a swap costs the slower of the two.
            let (te, unet) = std::thread::scope(|s| {
                let te = s.spawn(|| -> Result<_, PipelineError> {
                    let mut st = FuseStats::default();
                    if !rebuild_te {
                        return Ok((None, st));
                    }
                    let encoders = model.index.family.facts().encoders;
                    let mut changes = Vec::new();
                    for (enc, layout) in encoders.iter().zip(&te_layouts) {
                        changes.push(change(
                            enc.component,
                            *layout,
                            te_in_place,
                            &te_dims,
                            &mut st,
                        )?);
                    }
                    Ok((Some(changes), st))
                });
                let mut st = FuseStats::default();
                let unet = if rebuild_unet {
                    change(
                        ComponentKind::Unet,
                        unet_layout,
                        unet_in_place,
                        &unet_dims,
                        &mut st,
                    )
                    .map(|u| (Some(u), st))
                } else {
                    Ok((None, st))
                };
                let te = te.join().unwrap_or_else(|_| {
                    Err(PipelineError::Job("text encoder build panicked".into()))
                });
                (te, unet)
            });
            let wall = t.elapsed().as_secs_f64();
            let report = (!loras.is_empty()).then(|| plan.into_report());
            (te, unet, plan_s, wall, report)
        })?;
        let (te, unet, plan_s, wall, report) = planned;
        let (te, te_stats) = te?;
        let (unet, unet_stats) = unet?;
        stats.deltas_s = plan_s;
        stats.patch_s = te_stats.patch_s + unet_stats.patch_s;
        stats.session_s = te_stats.session_s + unet_stats.session_s;
        stats.build_wall_s = wall;
        if adapters::lora_debug() {
            if let Some(r) = &report {
                adapters::log_report(r, std::time::Duration::from_secs_f64(wall));
            }
            tracing::info!(
                target: "stipple::lora",
                "fused: plan {:.3} s, ΔW + patch {:.3} s, session builds {:.3} s",
                stats.deltas_s,
                stats.patch_s,
                stats.session_s
            );
        }
        let t = Instant::now();
        let uploaded = self.apply_changes(te, unet);
        stats.upload_s = t.elapsed().as_secs_f64();
        let replaced = match uploaded {
            Ok(r) => r,
            Err(e) => {
                // Some weights may hold the new adapters and some the old: the next change rewrites
                // every buffer the failed one touched.
                self.fused = Fused {
                    te: vec![(PathBuf::from("<failed upload>"), String::new())],
                    unet: vec![(PathBuf::from("<failed upload>"), String::new())],
                    unet_dims: self.fused.unet_dims,
                };
                return Err(e);
            }
        };
        let t = Instant::now();
        drop(replaced);
        crate::patch::return_freed_memory();
        stats.free_s = t.elapsed().as_secs_f64();
        self.last_fuse = Some(stats);
        self.fused = want;
        if report.is_some() {
            self.last_report = report;
        }
        Ok(())
    }

    /// Puts new sessions in place and uploads staged weights; returns the replaced sessions.
    fn apply_changes(
        &mut self,
        te: Option<Vec<Change>>,
        unet: Option<Change>,
    ) -> Result<Vec<Net>, PipelineError> {
        let mut replaced = Vec::new();
        let mut apply = |net: &mut Net, change: Change| -> Result<(), PipelineError> {
            match change {
                Change::Built(new) => replaced.push(std::mem::replace(net, *new)),
                Change::Staged(staged) => net.commit(staged)?,
            }
            Ok(())
        };
        for (net, change) in self.sessions.text.iter_mut().zip(te.into_iter().flatten()) {
            apply(net, change)?;
        }
        if let Some(change) = unet {
            if matches!(change, Change::Built(_)) {
                self.unet_io = None;
            }
            apply(&mut self.sessions.unet, change)?;
        }
        Ok(replaced)
    }

    fn build_one(
        &self,
        kind: ComponentKind,
        deltas: &ComponentDeltas,
        dims: &[(&str, i64)],
        stats: &mut FuseStats,
    ) -> Result<Net, PipelineError> {
        let empty = HashMap::new();
        build_component(
            &self.model,
            self.runtime,
            &self.opts,
            kind,
            deltas.get(&kind).unwrap_or(&empty),
            dims,
            stats,
        )
    }

    fn te_dims(&self) -> Vec<(&'static str, i64)> {
        if self.opts.static_shapes {
            vec![("batch", 1), ("sequence", 77)]
        } else {
            Vec::new()
        }
    }

    /// With static shapes, rebuilds the VAE decoder for latents of `h` × `w` when they changed.
    fn ensure_vae_dims(&mut self, h: usize, w: usize) -> Result<(), PipelineError> {
        let want = [h as i64, w as i64];
        if !self.opts.static_shapes || self.vae_dims == Some(want) {
            return Ok(());
        }
        let dims = [("batch", 1), ("height", want[0]), ("width", want[1])];
        let mut stats = FuseStats::default();
        self.sessions.vae = self
            .build_one(
                ComponentKind::VaeDecoder,
                &ComponentDeltas::new(),
                &dims,
                &mut stats,
            )?
            .session;
        self.vae_dims = Some(want);
        Ok(())
    }

    /// Rebuilds every session from the base weights plus `deltas` (empty = the pristine model).
    /// On error the current sessions stay as they were.
    pub fn rebuild(&mut self, deltas: &ComponentDeltas) -> Result<(), PipelineError> {
        self.sessions = build_sessions(&self.model, self.runtime, &self.opts, deltas)?;
        self.unet_io = None;
        self.fused = Fused {
            te: vec![(PathBuf::from("<deltas>"), String::new())],
            unet: vec![(PathBuf::from("<deltas>"), String::new())],
            unet_dims: None,
        };
        Ok(())
    }

    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// The first text encoder's tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizers[0]
    }

    /// One tokenizer per text encoder, in the family's order.
    pub fn tokenizers(&self) -> &[ClipTokenizer] {
        &self.tokenizers
    }

    /// The conditioning for `text` as one plain 77-token chunk (diffusers' way, truncating):
    /// `[77, context_dim]`.
    pub fn encode_text(&mut self, text: &str) -> Result<Vec<f32>, PipelineError> {
        Ok(self.encode_text_pooled(text)?.0)
    }

    /// [`Self::encode_text`] with the pooled embedding of families that have one (SDXL's
    /// `text_embeds`), as diffusers' `encode_prompt` gives them.
    pub fn encode_text_pooled(
        &mut self,
        text: &str,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>), PipelineError> {
        let encoders = self.model.index.family.facts().encoders;
        let mut parts = Vec::with_capacity(encoders.len());
        let mut pooled = None;
        for (i, enc) in encoders.iter().enumerate() {
            let ids = self.tokenizers[i]
                .encode_padded(text, enc.pad_id)
                .into_iter()
                .map(i64::from)
                .collect();
            let (z, p) = self.encode_ids(i, ids)?;
            parts.push(z);
            pooled = pooled.or(p);
        }
        Ok((concat_per_token(&parts), pooled))
    }

    /// A1111-style conditioning for a prompt: 75-token chunks (BREAK, long prompts), each encoded to
    /// 77 hidden states, scaled by its emphasis weights with the chunk's mean restored, concatenated.
    /// A plain prompt of at most 75 tokens gives exactly what diffusers' pipeline gives.
    pub fn encode_prompt(
        &mut self,
        fragments: &[Fragment],
    ) -> Result<Vec<Vec<f32>>, PipelineError> {
        Ok(self.encode_prompt_pooled(fragments)?.chunks)
    }

    /// Length of the conditioning for these prompts (77 per chunk of the longest), without running
    /// a text encoder.
    fn context_len(&self, pos: &Prompt, neg: &Prompt) -> usize {
        let mut n = 1;
        for tok in &self.tokenizers {
            for p in [pos, neg] {
                let k = chunk(&p.fragments, |t| tok.encode(t), &ChunkConfig::default())
                    .map_or(MAX_CHUNKS, |c| c.len()); // too long: encoding refuses it
                n = n.max(k);
            }
        }
        77 * n
    }

    /// [`Self::encode_prompt`] for every text encoder of the family: each encoder chunks the prompt
    /// with its own tokenizer (SDXL's second one splits out its pad token "!"), pads with its own pad
    /// id and weighs emphasis on its own (as A1111 does per embedder); the encoders' hidden states are
    /// then concatenated per token, chunk by chunk (an encoder with fewer chunks gets the empty
    /// prompt's). The pooled embedding comes from the first chunk, as in A1111 and diffusers.
    pub fn encode_prompt_pooled(
        &mut self,
        fragments: &[Fragment],
    ) -> Result<Conditioning, PipelineError> {
        let encoders = self.model.index.family.facts().encoders;
        let mut per_encoder: Vec<Vec<Vec<f32>>> = Vec::with_capacity(encoders.len());
        let mut pooled = None;
        for (i, enc) in encoders.iter().enumerate() {
            let tok = &self.tokenizers[i];
            let mut chunks = chunk(fragments, |t| tok.encode(t), &ChunkConfig::default())
                .map_err(|e| PipelineError::Prompt(e.to_string()))?;
            if chunks.is_empty() {
                chunks.push(Chunk {
                    tokens: Vec::new(),
                    weights: Vec::new(),
                });
            }
            let (bos, eos) = (tok.bos_id(), tok.eos_id());
            let mut zs = Vec::with_capacity(chunks.len());
            for (n, c) in chunks.iter().enumerate() {
                let (ids, weights) = c.padded(bos, eos, enc.pad_id);
                let (mut z, p) = self.encode_ids(i, ids.into_iter().map(i64::from).collect())?;
                apply_emphasis(&mut z, &weights);
                zs.push(z);
                if n == 0 {
                    pooled = pooled.or(p);
                }
            }
            per_encoder.push(zs);
        }
        let n = per_encoder.iter().map(Vec::len).max().unwrap_or(1);
        for (i, zs) in per_encoder.iter_mut().enumerate() {
            if zs.len() < n {
                let empty = Chunk {
                    tokens: Vec::new(),
                    weights: Vec::new(),
                };
                let tok = &self.tokenizers[i];
                let (ids, _) = empty.padded(tok.bos_id(), tok.eos_id(), encoders[i].pad_id);
                let (z, _) = self.encode_ids(i, ids.into_iter().map(i64::from).collect())?;
                zs.resize(n, z);
            }
        }
        let chunks = (0..n)
            .map(|c| {
                let parts: Vec<Vec<f32>> = per_encoder.iter().map(|zs| zs[c].clone()).collect();
                concat_per_token(&parts)
            })
            .collect();
        Ok(Conditioning { chunks, pooled })
    }

    /// Runs text encoder `i` on one chunk of ids: its conditioning output and, for the encoder that
    /// has it, the pooled output.
    fn encode_ids(
        &mut self,
        i: usize,
        ids: Vec<i64>,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>), PipelineError> {
        let facts = self.model.index.family.facts();
        let hidden = facts.encoders[i].hidden_output;
        // The pooled output belongs to the last encoder (diffusers: "the final text encoder").
        let pooled = facts
            .pooled_output
            .filter(|_| i + 1 == facts.encoders.len());
        // Clip skip 2 (SD 1.x): the penultimate layer through the final layer norm, as A1111.
        let skip = self.final_norm.is_some() && hidden == "last_hidden_state";
        let hidden = if skip {
            "penultimate_hidden_state"
        } else {
            hidden
        };
        let mut names = vec![hidden];
        names.extend(pooled);
        let n = ids.len();
        let session = self.sessions.text.get_mut(i).ok_or_else(|| {
            PipelineError::Job(format!("the model has no text encoder number {}", i + 1))
        })?;
        let mut out = session
            .run(vec![Input::I64("input_ids", vec![1, n], ids)], &names)
            .map_err(run_err("text encoder"))?
            .into_iter()
            .map(|(_, d)| d);
        let mut z = out.next().unwrap_or_default();
        if let (true, Some((w, b, eps))) = (skip, &self.final_norm) {
            layer_norm(&mut z, w, b, *eps);
        }
        Ok((z, pooled.and(out.next())))
    }

    /// The CFG batch `[uncond, cond]` for the positive and negative prompts, padded to the same
    /// number of chunks with the empty prompt's encoding (A1111 does the same so both halves match).
    /// An empty negative prompt is all zeros (context and pooled) where the model asks for it
    /// (diffusers' `force_zeros_for_empty_prompt`, SDXL).
    fn conditioning(
        &mut self,
        pos: &Prompt,
        neg: &Prompt,
        negative_text: &str,
    ) -> Result<BatchCond, PipelineError> {
        let zero_negative =
            negative_text.trim().is_empty() && self.model.zeros_for_empty_negative();
        let c = self.encode_prompt_pooled(&pos.fragments)?;
        let (mut c, c_pooled) = (c.chunks, c.pooled);
        let (mut u, u_pooled) = if zero_negative {
            let zeros = vec![vec![0.0; c[0].len()]; c.len()];
            (zeros, c_pooled.as_ref().map(|p| vec![0.0; p.len()]))
        } else {
            let u = self.encode_prompt_pooled(&neg.fragments)?;
            (u.chunks, u.pooled)
        };
        if c.len() != u.len() {
            let empty = self.encode_prompt(&[])?.remove(0);
            while c.len() < u.len() {
                c.push(empty.clone());
            }
            while u.len() < c.len() {
                u.push(empty.clone());
            }
        }
        // diffusers batches CFG as [uncond, cond].
        let context = u.concat().into_iter().chain(c.concat()).collect();
        let text_embeds = match (u_pooled, c_pooled) {
            (Some(u), Some(c)) => Some(u.into_iter().chain(c).collect()),
            _ => None,
        };
        Ok(BatchCond {
            context,
            text_embeds,
        })
    }

    /// One UNet evaluation: `sample` `[b, 4, h, w]`, one timestep for all, context `[b, n, c]`.
    pub fn unet(
        &mut self,
        sample: &[f32],
        shape: [usize; 4],
        timestep: f32,
        context: &[f32],
    ) -> Result<Vec<f32>, PipelineError> {
        self.unet_added(sample, shape, timestep, context, None)
    }

    /// [`Self::unet`] with SDXL's added conditioning (required by UNets that take it).
    pub fn unet_added(
        &mut self,
        sample: &[f32],
        shape: [usize; 4],
        timestep: f32,
        context: &[f32],
        added: Option<Added<'_>>,
    ) -> Result<Vec<f32>, PipelineError> {
        let t = vec![timestep; shape[0]];
        let inputs = unet_inputs(sample, shape, &t, context, self.context_dim, added);
        let out = if self.opts.cuda_graph() || self.bound_unet {
            let net = &mut self.sessions.unet;
            let io = match self.unet_io.take() {
                Some(io) if io.fits(&net.session, &inputs) => io,
                // New shapes or a new session: new buffers (the old ones are freed first).
                _ => Bound::new(
                    &net.session,
                    self.opts.device,
                    &inputs,
                    &[("out_sample", shape.to_vec())],
                )
                .map_err(run_err("UNet"))?,
            };
            let io = self.unet_io.insert(io);
            io.run(&mut net.session, inputs).map_err(run_err("UNet"))?
        } else {
            self.sessions
                .unet
                .run(inputs, &["out_sample"])
                .map_err(run_err("UNet"))?
        };
        Ok(out.into_iter().next().map(|(_, d)| d).unwrap_or_default())
    }

    /// Decodes latents `[1, 4, h, w]` to an image.
    pub fn decode(
        &mut self,
        latents: &[f32],
        h: usize,
        w: usize,
    ) -> Result<RgbImage, PipelineError> {
        let scale = self.model.vae_scaling();
        let z: Vec<f32> = latents.iter().map(|x| x / scale).collect();
        let out = run(
            &mut self.sessions.vae,
            vec![Input::F32("latent_sample", vec![1, 4, h, w], &z)],
            &["sample"],
        )
        .map_err(run_err("VAE decoder"))?;
        let (shape, data) = out.into_iter().next().unwrap_or_default();
        let (ih, iw) = (
            shape.get(2).copied().unwrap_or(0),
            shape.get(3).copied().unwrap_or(0),
        );
        Ok(vae::to_rgb(&data, iw, ih))
    }

    /// Runs `job`, calling `on_event` with progress and each image. Returns how it ended.
    pub fn generate(
        &mut self,
        job: &Job,
        stop: &dyn Fn() -> Stop,
        on_event: &mut dyn FnMut(Event),
        id: u64,
    ) -> Result<Outcome, PipelineError> {
        let (pos, neg) = parse_prompts(job)?;
        pos.check_family(self.model.index.family)
            .map_err(|e| PipelineError::Prompt(e.render(&job.prompt)))?;
        let loras = self.adapters.resolve(&pos, &job.prompt)?;
        let steps = job.steps as usize;
        // Everything that can fail on the adapters' side fails here, before the first step.
        let first = self.step_key(&loras, 0, steps);
        let mode = self.live_mask(&loras);
        let factor = self.model.index.vae_scale_factor.max(1) as usize;
        let (h, w) = (job.height as usize / factor, job.width as usize / factor);
        let seq = self.context_len(&pos, &neg) as i64;
        let dims = self.opts.static_shapes.then_some([h as i64, w as i64, seq]);
        // The infotext's resources, once per job (file hashes are read from their cache).
        let mut resources: Option<Resources> = None;
        self.fuse_step(&loras, &mode, &first, dims)?;
        self.ensure_vae_dims(h, w)?;
        // Conditioning per distinct set of text-encoder strengths: a schedule with k distinct
        // values encodes k times, not once per step.
        let mut contexts: HashMap<String, Arc<BatchCond>> = HashMap::new();
        let time_ids = time_ids(job.width, job.height, 2);
        on_event(Event::Started {
            id,
            images: job.batch,
            steps: job.steps,
        });
        for index in 0..job.batch {
            let seed = job.seed.wrapping_add(u64::from(index));
            let mut rng = TorchRng::new(seed);
            let mut sched = schedulers::build(job.sampler, &self.scheduler, job.steps as usize);
            let n = 4 * h * w;
            let sigma0 = sched.init_noise_sigma();
            let mut latents: Vec<f32> = rng.randn(n).into_iter().map(|x| x * sigma0).collect();
            let timesteps = sched.timesteps().to_vec();
            let started = Instant::now();
            let mut last_preview = started;
            let mut skipped = false;
            for (i, &t) in timesteps.iter().enumerate() {
                let key = self.step_key(&loras, i, timesteps.len());
                self.fuse_step(&loras, &mode, &key, dims)?;
                let te_key = format!("{:?}", self.fused.te);
                let cond = match contexts.get(&te_key) {
                    Some(c) => c.clone(),
                    None => {
                        let c = Arc::new(self.conditioning(&pos, &neg, &job.negative)?);
                        self.encodes += 1;
                        contexts.insert(te_key, c.clone());
                        c
                    }
                };
                match stop() {
                    Stop::Interrupt => return Ok(Outcome::Cancelled),
                    Stop::SkipImage => {
                        skipped = true;
                        break;
                    }
                    Stop::No => {}
                }
                let x = sched.scale_model_input(&latents, i);
                let doubled: Vec<f32> = x.iter().chain(x.iter()).copied().collect();
                let added = cond.text_embeds.as_deref().map(|e| Added {
                    text_embeds: e,
                    time_ids: &time_ids,
                });
                let out = self.unet_step(
                    mode.contains(&true).then_some((&loras[..], &key)),
                    &doubled,
                    [2, 4, h, w],
                    t as f32,
                    &cond.context,
                    added,
                )?;
                let (u, c) = out.split_at(n);
                let guided: Vec<f32> = u
                    .iter()
                    .zip(c)
                    .map(|(u, c)| u + job.cfg * (c - u))
                    .collect();
                latents = sched.step(&guided, i, &latents, &mut |k| rng.randn(k));
                // Live previews for front ends, at most ten a second (cheap: no VAE).
                if self.previews && last_preview.elapsed().as_millis() >= 100 {
                    last_preview = Instant::now();
                    let factors = &self.model.index.family.facts().latent_rgb;
                    on_event(Event::Preview {
                        id,
                        image: index,
                        step: i as u32 + 1,
                        preview: vae::preview(&latents, w, h, factors),
                    });
                }
                let elapsed = started.elapsed().as_secs_f32().max(1e-6);
                on_event(Event::Step(Progress {
                    id,
                    image: index,
                    step: i as u32 + 1,
                    steps: timesteps.len() as u32,
                    it_per_s: (i + 1) as f32 / elapsed,
                }));
            }
            if skipped {
                continue;
            }
            let image = self.decode(&latents, h, w)?;
            if let Some(h) = self.hashing.take() {
                if let Ok((model, vae)) = h.join() {
                    self.resources.model_hash = model;
                    self.resources.vae_hash = vae;
                }
            }
            let resources = resources.get_or_insert_with(|| Resources {
                lora_hashes: lora_hashes(&loras),
                ..self.resources.clone()
            });
            let infotext = format_infotext(job, seed, resources);
            on_event(Event::Image {
                id,
                index,
                seed,
                image,
                infotext,
            });
        }
        Ok(Outcome::Done)
    }
}

/// SDXL's micro-conditioning `[batch, 6]` as diffusers' defaults: original size = target size =
/// the image's (height, width), crop top-left (0, 0); the same for every row of the batch.
pub fn time_ids(width: u32, height: u32, batch: usize) -> Vec<f32> {
    let (h, w) = (height as f32, width as f32);
    [h, w, 0.0, 0.0, h, w].repeat(batch)
}

/// Hidden states `[tokens, d_i]` of several encoders → `[tokens, Σ d_i]` (torch.concat on the last
/// axis). One encoder: its states unchanged.
/// (tag name, A1111's short LoRA hash) of each adapter of a job, once per name.
fn lora_hashes(loras: &[ActiveLora]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for l in loras {
        if out.iter().any(|(n, _)| *n == l.tag.name) {
            continue;
        }
        if let Some(h) = crate::model::hash::addnet_short_hash(&l.path) {
            out.push((l.tag.name.clone(), h));
        }
    }
    out
}

/// The first text encoder's final layer norm (weight, bias, eps), read from its base weights.
fn final_layer_norm(model: &Model) -> Option<(Vec<f32>, Vec<f32>, f32)> {
    let te = model.component(ComponentKind::TextEncoder)?;
    let w = te
        .weights
        .tensor("text_model.final_layer_norm.weight")?
        .to_f32();
    let b = te
        .weights
        .tensor("text_model.final_layer_norm.bias")?
        .to_f32();
    let eps = te
        .config
        .get("layer_norm_eps")
        .and_then(|v| v.as_f64())
        .unwrap_or(1e-5) as f32;
    Some((w, b, eps))
}

/// Layer norm over the last dimension (the width of `weight`) of each token of `z`.
fn layer_norm(z: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    let d = weight.len().max(1);
    for t in z.chunks_exact_mut(d) {
        let mean = t.iter().map(|&x| f64::from(x)).sum::<f64>() / d as f64;
        let var = t
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / d as f64;
        let inv = 1.0 / (var + f64::from(eps)).sqrt();
        for (i, x) in t.iter_mut().enumerate() {
            *x = ((f64::from(*x) - mean) * inv) as f32 * weight[i] + bias[i];
        }
    }
}

fn concat_per_token(parts: &[Vec<f32>]) -> Vec<f32> {
    if parts.len() == 1 {
        return parts[0].clone();
    }
    let tokens = crate::pipeline::tokenizer::CONTEXT_LEN;
    let widths: Vec<usize> = parts.iter().map(|p| p.len() / tokens).collect();
    let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for t in 0..tokens {
        for (p, &w) in parts.iter().zip(&widths) {
            out.extend_from_slice(&p[t * w..(t + 1) * w]);
        }
    }
    out
}

// ---- Live mode (issue 5): strengths that change while sampling, without session rebuilds. ----
impl Generator {
    /// The dials front ends turn (shared with the engine handle).
    pub fn dials(&self) -> Dials {
        self.dials.clone()
    }

    pub fn set_dials(&mut self, dials: Dials) {
        self.dials = dials;
    }

    /// The live UNet's factors (layers, SVD approximations), when the last job ran live.
    pub fn live_factors(&self) -> Option<&live::factors::Factors> {
        self.live.as_ref().map(|l| &l.factors)
    }

    /// Strengths at a step: the prompt's schedules with the front end's dials on top.
    fn step_key(&self, loras: &[ActiveLora], step: usize, steps: usize) -> StrengthKey {
        let mut key = adapters::strengths_at(loras, step, steps);
        for (i, l) in loras.iter().enumerate() {
            self.dials
                .apply(&l.tag.name, &mut key.te[i], &mut key.unet[i]);
        }
        key
    }

    /// Which adapters run live on the UNet. The text encoder is always fused: it is small, and
    /// conditioning is cached per distinct text-encoder strength set anyway.
    fn live_mask(&self, loras: &[ActiveLora]) -> Vec<bool> {
        loras
            .iter()
            .map(|l| match self.lora_method {
                LoraMethod::Refuse => false,
                LoraMethod::Live => true,
                LoraMethod::Fuse => {
                    [&l.tag.in_, &l.tag.mid, &l.tag.out]
                        .iter()
                        .any(|s| s.is_scheduled())
                        || self.dials.dialled(&l.tag.name)
                }
            })
            .collect()
    }

    /// Brings the sessions to `key`: the plain fuse path when nothing is live; otherwise the text
    /// encoder is fused and the live UNet built (once per set of layers and static adapters).
    fn fuse_step(
        &mut self,
        loras: &[ActiveLora],
        mode: &[bool],
        key: &StrengthKey,
        dims: Option<[i64; 3]>,
    ) -> Result<(), PipelineError> {
        if !mode.iter().any(|&m| m) {
            return self.fuse(loras, key, dims);
        }
        if self.opts.cuda_graph() {
            return Err(PipelineError::CudaGraph(match self.lora_method {
                LoraMethod::Live => "lora_method live (--lora-method live) runs every adapter live",
                _ => "strength schedules (`te=0.1@1,0.6@6`) and dialled strengths run live",
            }));
        }
        let want_te = Fused::of(loras, key).te;
        if want_te != self.fused.te {
            let mut te_key = key.clone();
            te_key.unet.iter_mut().for_each(|u| *u = [0.0; 3]);
            let (deltas, report) = adapters::compute(&self.model, loras, &te_key)?;
            let mut stats = FuseStats::default();
            let te_dims = self.te_dims();
            let mut built = Vec::new();
            for enc in self.model.index.family.facts().encoders {
                built.push(self.build_one(enc.component, &deltas, &te_dims, &mut stats)?);
            }
            self.sessions.text = built;
            self.fused.te = want_te;
            self.last_report = Some(report);
        }
        // Static adapters are fused into the live session's weights; live ones are branches.
        let mut static_key = key.clone();
        static_key.te.iter_mut().for_each(|t| *t = 0.0);
        for (u, _) in static_key.unet.iter_mut().zip(mode).filter(|(_, &m)| m) {
            *u = [0.0; 3];
        }
        let factors_key = loras
            .iter()
            .zip(mode)
            .filter(|(_, &m)| m)
            .map(|(l, _)| format!("{}/{:?}", l.path.display(), l.tag.dyn_))
            .collect::<Vec<_>>()
            .join(";");
        let fresh = match &self.live {
            Some(l) if l.factors_key == factors_key => None,
            _ => {
                let live: Vec<(usize, &ActiveLora)> =
                    loras.iter().enumerate().filter(|(i, _)| mode[*i]).collect();
                Some(live::factors::compute(
                    &self.model,
                    &live,
                    self.live_opts.svd_max_error,
                )?)
            }
        };
        let layer_key = match &fresh {
            Some(f) => live::layer_key(f),
            None => self
                .live
                .as_ref()
                .map(|l| live::layer_key(&l.factors))
                .unwrap_or_default(),
        };
        let session_key = format!(
            "{layer_key}|{:?}|{dims:?}",
            Fused::of(loras, &static_key).unet
        );
        match (&mut self.live, fresh) {
            (Some(l), Some(f)) if l.session_key == session_key => l.set_factors(f, factors_key)?,
            (Some(l), None) if l.session_key == session_key => {}
            (current, fresh) => {
                let factors = match (fresh, current.take()) {
                    (Some(f), _) => f,
                    (None, Some(l)) => l.factors,
                    (None, None) => live::factors::Factors::default(),
                };
                let deltas = if static_key.unet_active() {
                    let (mut d, _) = adapters::compute(&self.model, loras, &static_key)?;
                    d.remove(&ComponentKind::Unet).unwrap_or_default()
                } else {
                    HashMap::new()
                };
                let built = LiveUnet::build(
                    &self.model,
                    self.runtime,
                    &self.opts,
                    &deltas,
                    factors,
                    &unet_dim_overrides(dims),
                    session_key,
                    factors_key,
                )?;
                self.last_fuse = Some(FuseStats {
                    session_s: built.build_s,
                    ..FuseStats::default()
                });
                *current = Some(built);
            }
        }
        Ok(())
    }

    /// One CFG UNet evaluation on the live session when adapters are live, else the fused one.
    fn unet_step(
        &mut self,
        live: Option<(&[ActiveLora], &StrengthKey)>,
        sample: &[f32],
        shape: [usize; 4],
        timestep: f32,
        context: &[f32],
        added: Option<Added<'_>>,
    ) -> Result<Vec<f32>, PipelineError> {
        let Some((loras, key)) = live else {
            return self.unet_added(sample, shape, timestep, context, added);
        };
        let Some(l) = self.live.as_mut() else {
            return Err(PipelineError::Job("the live UNet is not built".into()));
        };
        let scales = live::scale::scales(&l.factors, loras, key);
        let t = vec![timestep; shape[0]];
        let inputs = unet_inputs(sample, shape, &t, context, self.context_dim, added);
        Ok(l.run(inputs, &scales)?)
    }
}

/// A1111's emphasis: scale each token's hidden state by its weight, then restore the chunk's mean.
/// With every weight 1 nothing changes (bit for bit), which keeps plain prompts equal to diffusers.
fn apply_emphasis(z: &mut [f32], weights: &[f32]) {
    if weights.iter().all(|&w| w == 1.0) || weights.is_empty() {
        return;
    }
    let width = z.len() / weights.len();
    let mean = |z: &[f32]| z.iter().map(|&x| f64::from(x)).sum::<f64>() / z.len() as f64;
    let before = mean(z);
    for (row, &w) in z.chunks_exact_mut(width).zip(weights) {
        for x in row {
            *x *= w;
        }
    }
    let after = mean(z);
    if after != 0.0 {
        let k = (before / after) as f32;
        for x in z.iter_mut() {
            *x *= k;
        }
    }
}

/// The UNet's named inputs: sample, timestep (one per batch row), context and, for SDXL, the
/// added conditioning.
fn unet_inputs<'a>(
    sample: &'a [f32],
    shape: [usize; 4],
    t: &'a [f32],
    context: &'a [f32],
    context_dim: usize,
    added: Option<Added<'a>>,
) -> Vec<Input<'a>> {
    let b = shape[0];
    let seq = context.len() / (b * context_dim);
    let mut inputs = vec![
        Input::F32("sample", shape.to_vec(), sample),
        Input::F32("timestep", vec![b], t),
        Input::F32("encoder_hidden_states", vec![b, seq, context_dim], context),
    ];
    if let Some(a) = added {
        inputs.push(Input::F32(
            "text_embeds",
            vec![b, a.text_embeds.len() / b],
            a.text_embeds,
        ));
        inputs.push(Input::F32(
            "time_ids",
            vec![b, a.time_ids.len() / b],
            a.time_ids,
        ));
    }
    inputs
}

/// Free-dimension overrides of the UNet for static shapes (CFG batch 2).
fn unet_dim_overrides(dims: Option<[i64; 3]>) -> Vec<(&'static str, i64)> {
    match dims {
        Some([h, w, seq]) => vec![("batch", 2), ("height", h), ("width", w), ("sequence", seq)],
        None => Vec::new(),
    }
}

/// Builds `kind`'s session with `deltas` added: with resident weights for the components adapters
/// patch when the options ask for them, else with the weights baked in.
fn build_component(
    model: &Model,
    rt: &'static Runtime,
    opts: &SessionOptions,
    kind: ComponentKind,
    deltas: &dyn patch::DeltaSource,
    dims: &[(&str, i64)],
    stats: &mut FuseStats,
) -> Result<Net, PipelineError> {
    let c = model
        .component(kind)
        .ok_or_else(|| PipelineError::Job(format!("the model has no {kind}")))?;
    let which = opts
        .graph
        .resolve(opts.device, c)
        .map_err(PipelineError::Job)?;
    let Some((graph, weightmap)) = c.graph_of(which) else {
        return Err(PipelineError::Job(format!("{kind}: no {which:?} graph")));
    };
    let what = match which {
        GraphKind::Plain => kind.dir_name().to_string(),
        GraphKind::Cuda => format!("{kind} (fused CUDA graph)"),
    };
    // Only a UNet with fixed shapes is captured as a CUDA graph: it is what runs every step, and
    // capture needs the shapes settled (the load-time UNet, built without them, is replaced by the
    // first job's).
    let plain;
    let opts = if kind == ComponentKind::Unet && !dims.is_empty() {
        opts
    } else {
        plain = opts.without_cuda_graph();
        &plain
    };
    if opts.resident_weights() && kind != ComponentKind::VaeDecoder {
        let t = Instant::now();
        let net = resident::build(rt, &what, c, which, deltas, opts, dims)?;
        // Filling, the session build and the upload are one step here.
        stats.session_s += t.elapsed().as_secs_f64();
        return Ok(net);
    }
    let t = Instant::now();
    let (buf, _stats) = patch::assemble_graph(c, which, deltas)?;
    c.weights.release_pages();
    stats.patch_s += t.elapsed().as_secs_f64();
    let t = Instant::now();
    let session = build_session(
        rt,
        &what,
        &graph.bytes,
        &weightmap.external_file,
        buf,
        opts,
        dims,
        &[],
    )?;
    stats.session_s += t.elapsed().as_secs_f64();
    Ok(Net::baked(session))
}

fn build_sessions(
    model: &Model,
    rt: &'static Runtime,
    opts: &SessionOptions,
    deltas: &ComponentDeltas,
) -> Result<Sessions, PipelineError> {
    let build = |kind| {
        let is_text = model
            .index
            .family
            .facts()
            .encoders
            .iter()
            .any(|e| e.component == kind);
        let dims: &[(&str, i64)] = if opts.static_shapes && is_text {
            &[("batch", 1), ("sequence", 77)]
        } else {
            &[]
        };
        build_component(
            model,
            rt,
            opts,
            kind,
            deltas.get(&kind).unwrap_or(&HashMap::new()),
            dims,
            &mut FuseStats::default(),
        )
    };
    let mut text = Vec::new();
    for enc in model.index.family.facts().encoders {
        text.push(build(enc.component)?);
    }
    Ok(Sessions {
        text,
        unet: build(ComponentKind::Unet)?,
        vae: build(ComponentKind::VaeDecoder)?.session,
    })
}

/// Saves every finished image (PNG with both chunks) before passing its event on: what the TUI uses,
/// since a workstation's images must land on disk like the headless ones.
pub struct SavingRunner<R> {
    pub inner: R,
    pub out_dir: PathBuf,
}

impl<R: Runner> Runner for SavingRunner<R> {
    fn dials(&self) -> Option<Dials> {
        self.inner.dials()
    }

    fn run(&mut self, job: &Job, out: &Reporter<'_>) -> Outcome {
        let dir = self.out_dir.clone();
        let tap = Reporter::tap(out, move |e: &Event| {
            if let Event::Image {
                seed,
                image,
                infotext,
                ..
            } = e
            {
                let mut record = job.clone();
                record.seed = *seed;
                record.batch = 1;
                let json = serde_json::to_string(&record).unwrap_or_default();
                if let Err(err) = crate::image::save_png(&dir, image, *seed, infotext, &json) {
                    tracing::error!("saving an image: {err}");
                }
            }
        });
        self.inner.run(job, &tap)
    }
}

/// Loads the model on the first job, so a front end can start at once; a load failure fails that
/// job (and is retried with the next one).
pub struct LazyGenerator {
    pub dir: PathBuf,
    pub runtime: &'static Runtime,
    pub opts: SessionOptions,
    pub lora_dirs: Vec<PathBuf>,
    pub lora_method: LoraMethod,
    dials: Dials,
    generator: Option<Generator>,
}

impl LazyGenerator {
    pub fn new(
        dir: PathBuf,
        runtime: &'static Runtime,
        opts: SessionOptions,
        lora_dirs: Vec<PathBuf>,
    ) -> Self {
        LazyGenerator {
            dir,
            runtime,
            opts,
            lora_dirs,
            lora_method: LoraMethod::default(),
            dials: Dials::default(),
            generator: None,
        }
    }
}

impl Runner for LazyGenerator {
    fn dials(&self) -> Option<Dials> {
        Some(self.dials.clone())
    }

    fn run(&mut self, job: &Job, out: &Reporter<'_>) -> Outcome {
        if self.generator.is_none() {
            match Generator::load(&self.dir, self.runtime, self.opts.clone()) {
                Ok(mut g) => {
                    g.set_lora_dirs(self.lora_dirs.clone());
                    g.previews = true;
                    g.lora_method = self.lora_method;
                    g.set_dials(self.dials.clone());
                    self.generator = Some(g);
                }
                Err(e) => return Outcome::Failed(format!("loading {}: {e}", self.dir.display())),
            }
        }
        match self.generator.as_mut() {
            Some(g) => {
                // The method may change between jobs (the workstation's Settings toggle).
                g.lora_method = self.lora_method;
                g.run(job, out)
            }
            None => Outcome::Failed("the model is not loaded".into()),
        }
    }
}

impl Runner for Generator {
    fn dials(&self) -> Option<Dials> {
        Some(self.dials.clone())
    }

    fn run(&mut self, job: &Job, out: &Reporter<'_>) -> Outcome {
        let cancel = out.cancel.clone();
        let stop = move || {
            let s = cancel.get();
            if s == Stop::SkipImage {
                cancel.take_skip();
            }
            s
        };
        let id = out.id;
        match self.generate(job, &stop, &mut |e| out.send(e), id) {
            Ok(o) => o,
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emphasis_scales_tokens_and_restores_the_mean() {
        // Two tokens of width 2: [1, 2 | 3, 4], weights [1, 2]. Scaled: [1, 2, 6, 8] (mean 4.25);
        // the original mean 2.5 is restored by the factor 2.5 / 4.25.
        let mut z = vec![1.0, 2.0, 3.0, 4.0];
        apply_emphasis(&mut z, &[1.0, 2.0]);
        let k = 2.5f32 / 4.25;
        for (got, want) in z.iter().zip([1.0 * k, 2.0 * k, 6.0 * k, 8.0 * k]) {
            assert!((got - want).abs() < 1e-6, "{z:?}");
        }
        let mut plain = vec![1.0, 2.0, 3.0, 4.0];
        apply_emphasis(&mut plain, &[1.0, 1.0]);
        assert_eq!(plain, vec![1.0, 2.0, 3.0, 4.0]);
    }
}
