//! Text-to-image on ONNX Runtime: the [`Generator`] turns a [`Job`] into images, as diffusers'
//! `StableDiffusionPipeline` / `StableDiffusionXLPipeline` do (same tokens, noise, CFG, added
//! conditioning and schedulers). What differs per family comes from [`crate::family`].
//!
//! It composes parts that own their state: [`TextConditioner`] (tokenizers, conditioning cache),
//! [`Sessions`] (sessions, fusing, resident staging) and [`LiveStepper`] (method, dials, live
//! UNet); this file holds loading from an [`EngineSpec`] and the sampling loop. The engine's
//! runners wrap it.

use super::adapters::{self, ActiveLora, AdapterCache, StrengthKey};
use super::dials::Dials;
use super::error::{ComponentDeltas, PipelineError};
use super::schedulers::SchedulerConfig;
use super::sessions::{Sessions, UnetCall};
use super::spec::EngineSpec;
use super::stepping::LiveStepper;
use super::stop::{Ended, Stop};
use super::text::TextConditioner;
use super::tokenizer::ClipTokenizer;
use crate::image::Resources;
use crate::job::{Event, Job, RgbImage};
use crate::live::{self, LoraMethod};
use crate::lora::ApplyReport;
use crate::model::Model;
use crate::prompt::{self, Fragment, Prompt};
use crate::runtime::Runtime;
use std::path::PathBuf;

mod batched;
mod decodes;
mod hires;

pub use super::sessions::{Added, FuseStats, PatchCounts};
pub use super::spec::DEFAULT_UNET_BATCH;
pub use super::text::Conditioning;
pub use batched::GroupJob;

/// A loaded model with its sessions, ready to run jobs.
pub struct Generator {
    pub model: Model,
    scheduler: SchedulerConfig,
    model_name: String,
    /// The infotext's resource fields; the file hashes arrive from `hashing`.
    resources: Resources,
    hashing: Option<std::thread::JoinHandle<(Option<String>, Option<String>)>>,
    /// The folders `<lora:NAME>` tags are looked up in, and the adapters opened from them.
    adapters: AdapterCache,
    /// Send `Event::Preview` while sampling (the workstation shows them).
    previews: bool,
    text: TextConditioner,
    sessions: Sessions,
    live: LiveStepper,
    /// At most this many images share a UNet call.
    unet_batch: usize,
    /// The hires fix's ONNX upscaler, opened at its first use.
    upscaler: Option<hires::CachedUpscaler>,
    /// When the VAE decodes in tiles.
    vae_tiling: super::vae_tiles::VaeTiling,
    /// Decode one UNet call's images on a worker thread while the next call samples.
    pipelined: bool,
    /// Tests: the seed whose VAE decode fails.
    fail_decode: Option<u64>,
}

/// Parses the prompt and the negative prompt; LoRA tags belong in the prompt only.
fn parse_prompts(job: &Job) -> Result<(Prompt, Prompt), PipelineError> {
    let pos =
        prompt::parse(&job.prompt).map_err(|e| PipelineError::Prompt(e.render(&job.prompt)))?;
    let neg = prompt::parse_negative(&job.negative).map_err(|e| {
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
    super::schedulers::check_schedule(job.sampler, job.schedule)?;
    if job.zero_snr {
        super::schedulers::check_zero_snr_sampler(job.sampler, job.sigmas)?;
    }
    prompt::parse(&job.prompt).map_err(|e| PipelineError::Prompt(e.render(&job.prompt)))?;
    prompt::parse_negative(&job.negative).map_err(|e| {
        PipelineError::Prompt(format!("negative prompt: {}", e.render(&job.negative)))
    })?;
    Ok(())
}

impl Generator {
    /// Opens `spec.model` and builds its sessions from the pristine base weights.
    pub fn load(spec: EngineSpec, runtime: &'static Runtime) -> Result<Self, PipelineError> {
        let model = Model::open_with(&spec.model, spec.session.open_options())?;
        Generator::with_model(spec, model, runtime)
    }

    /// How long each component's session took to build at load (side by side).
    pub fn load_times(&self) -> &[(crate::model::ComponentKind, f64)] {
        self.sessions.load_times()
    }

    /// [`Generator::load`] on a model the caller already opened from `spec.model` with
    /// `spec.session.open_options()` (a front end that read it to check the job first).
    pub fn with_model(
        spec: EngineSpec,
        mut model: Model,
        runtime: &'static Runtime,
    ) -> Result<Self, PipelineError> {
        crate::runtime::host_mem::trace("opening");
        let opts = spec.session.clone().resolved();
        let beside = model.prediction_pending
            && super::prediction_test::beside_sessions(&model, opts.device);
        if !beside {
            super::prediction_test::settle(&mut model, runtime)?;
        }
        let clip_skip = opts.clip_skip.unwrap_or(1);
        if !(1..=2).contains(&clip_skip) {
            return Err(PipelineError::Job(format!(
                "--clip-skip {clip_skip}: stipple's text-encoder graphs give the last two layers, \
                 so clip skip is 1 or 2"
            )));
        }
        let text = TextConditioner::load(&model, clip_skip, spec.embedding_dirs.clone())?;
        crate::runtime::host_mem::trace("model opened");
        let (sessions, test) = std::thread::scope(|s| {
            let test = beside.then(|| {
                s.spawn(|| {
                    let t = std::time::Instant::now();
                    super::prediction_test::one_step_mean(&model, runtime)
                        .map(|mean| (mean, t.elapsed().as_secs_f64()))
                })
            });
            let sessions = Sessions::load(&model, runtime, opts, spec.bound_unet);
            let test = test.map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(PipelineError::Job(
                        "the prediction test's thread panicked".into(),
                    ))
                })
            });
            (sessions, test)
        });
        if let Some(test) = test {
            let (mean, secs) = test?;
            super::prediction_test::apply(&mut model, mean, secs)?;
        }
        let mut sessions = sessions?;
        // After the prediction test: its result goes into the scheduler's config.
        let scheduler = SchedulerConfig::from_json_str(&model.scheduler_config)?;
        sessions.set_vae_tiling(spec.vae_tiling);
        crate::patch::return_freed_memory();
        crate::runtime::host_mem::trace("sessions ready");
        let model_name = model.name();
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
            // A1111 writes the VAE's file name (`sd_vae.get_loaded_vae_name`: the basename, with
            // its extension) where `Model` is the checkpoint's name without it.
            vae: model
                .vae
                .as_ref()
                .and_then(|p| p.file_name().map(|s| s.to_string_lossy().into_owned())),
            clip_skip: (clip_skip > 1).then_some(clip_skip),
            zero_snr: scheduler.rescale_betas_zero_snr,
            ..Resources::default()
        };
        Ok(Generator {
            model,
            scheduler,
            model_name,
            resources,
            hashing,
            adapters: AdapterCache::new(spec.lora_dirs),
            previews: spec.previews,
            text,
            sessions,
            live: LiveStepper::new(spec.lora_method, spec.live),
            unet_batch: spec.unet_batch.max(1),
            upscaler: None,
            vae_tiling: spec.vae_tiling,
            pipelined: true,
            fail_decode: None,
        })
    }

    /// Resolves the job's adapters and fuses them at their first-step strengths, without sampling:
    /// what a front end calls to have the next image start at once.
    pub fn prepare(&mut self, job: &Job) -> Result<(), PipelineError> {
        let (pos, _) = parse_prompts(job)?;
        let loras = self.adapters.resolve(&pos, &job.prompt)?;
        let first = adapters::strengths_at(&loras, 0, job.steps.max(1) as usize);
        self.sessions.fuse(&self.model, &loras, &first, None)
    }

    /// Returns every session to the pristine base weights (a no-op when nothing is fused).
    pub fn reset_adapters(&mut self) -> Result<(), PipelineError> {
        let none = StrengthKey {
            te: Vec::new(),
            unet: Vec::new(),
        };
        self.sessions.fuse(&self.model, &[], &none, None)
    }

    /// Rebuilds every session from the base weights plus `deltas` (empty = the pristine model).
    /// On error the current sessions stay as they were.
    pub fn rebuild(&mut self, deltas: &ComponentDeltas) -> Result<(), PipelineError> {
        self.sessions.rebuild(&self.model, deltas)
    }

    /// Which UNet graph the fused path runs (`plain` or `cuda`); live adapters always use the plain one.
    pub fn unet_graph(&self) -> &'static str {
        self.sessions.unet_graph(&self.model)
    }

    /// Whether the text encoders and UNet hold resident weights (adapter changes rewrite them in
    /// place instead of building sessions).
    pub fn resident_weights(&self) -> bool {
        self.sessions.resident_weights()
    }

    /// Looks `<lora:NAME>` tags up in `dirs` from the next job on (a loaded model reused with
    /// other folders: tests, benchmarks).
    pub fn set_lora_dirs(&mut self, dirs: Vec<PathBuf>) {
        self.adapters = AdapterCache::new(dirs);
    }

    /// How adapters reach the weights.
    pub fn lora_method(&self) -> LoraMethod {
        self.live.method()
    }

    /// Switches how adapters reach the weights from the next job on (a front end's setting, or a
    /// benchmark comparing methods on one loaded model); sessions follow at the next job.
    pub fn set_lora_method(&mut self, method: LoraMethod) {
        self.live.set_method(method);
    }

    /// The report of the last adapter application, for front ends: the modules of the components
    /// that changed (a text encoder whose strengths did not change keeps its last weights).
    pub fn last_report(&self) -> Option<&ApplyReport> {
        self.sessions.last_report()
    }

    /// Timings of the last adapter change.
    pub fn last_fuse(&self) -> Option<FuseStats> {
        self.sessions.last_fuse()
    }

    /// How the device patch has changed adapter strengths since the load (new programs, re-runs).
    pub fn patch_counts(&self) -> PatchCounts {
        self.sessions.patch_counts()
    }

    /// Breaks the spare UNet's patch program so that its next re-run fails (tests); false when
    /// there is no spare.
    #[doc(hidden)]
    pub fn break_spare_for_test(&mut self) -> bool {
        self.sessions.break_spare_for_test()
    }

    /// The bytes of the UNet's resident weight `name` when they are in host memory (tests).
    #[doc(hidden)]
    pub fn unet_host_weight(&self, name: &str) -> Option<Vec<u8>> {
        self.sessions.unet_host_weight(name)
    }

    /// How many weights the UNet's last patch programs write: (at the commit, at a re-run, which
    /// writes only those whose value scales with a strength); None when no program wrote them.
    pub fn unet_patch_writes(&self) -> Option<(usize, usize)> {
        self.sessions.unet_patch_writes()
    }

    /// How many texts were encoded (one per distinct text and text-encoder strength set).
    pub fn encodes(&self) -> usize {
        self.text.encodes()
    }

    /// The dials front ends turn (shared with the engine handle).
    pub fn dials(&self) -> Dials {
        self.live.dials()
    }

    pub fn set_dials(&mut self, dials: Dials) {
        self.live.set_dials(dials);
    }

    /// The live UNet's factors (layers, SVD approximations), when the last job ran live.
    pub fn live_factors(&self) -> Option<&live::factors::Factors> {
        self.live.factors()
    }

    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// The first text encoder's tokenizer.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.text.tokenizers()[0]
    }

    /// One tokenizer per text encoder, in the family's order.
    pub fn tokenizers(&self) -> &[ClipTokenizer] {
        self.text.tokenizers()
    }

    /// The conditioning for `text` as one plain 77-token chunk (diffusers' way, truncating):
    /// `[77, context_dim]`.
    pub fn encode_text(&mut self, text: &str) -> Result<Vec<f32>, PipelineError> {
        let text_side = &mut self.text;
        self.sessions
            .with_text(&self.model, |nets| text_side.encode_text(nets, text))
    }

    /// [`Self::encode_text`] with the pooled embedding of families that have one (SDXL's
    /// `text_embeds`), as diffusers' `encode_prompt` gives them.
    pub fn encode_text_pooled(
        &mut self,
        text: &str,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>), PipelineError> {
        let text_side = &mut self.text;
        self.sessions
            .with_text(&self.model, |nets| text_side.encode_text_pooled(nets, text))
    }

    /// A1111-style conditioning for a prompt: 75-token chunks (BREAK, long prompts), each encoded
    /// to 77 hidden states, scaled by its emphasis weights, concatenated.
    pub fn encode_prompt(
        &mut self,
        fragments: &[Fragment],
    ) -> Result<Vec<Vec<f32>>, PipelineError> {
        let text_side = &mut self.text;
        self.sessions
            .with_text(&self.model, |nets| text_side.encode_prompt(nets, fragments))
    }

    /// The padded token ids per text encoder and chunk of a prompt, embeddings included.
    pub fn prompt_ids(
        &mut self,
        fragments: &[Fragment],
    ) -> Result<Vec<Vec<Vec<u32>>>, PipelineError> {
        self.text.prompt_ids(fragments)
    }

    /// The textual-inversion embeddings the embedding folders hold, by name.
    pub fn embedding_names(&self) -> Vec<String> {
        self.text.embedding_names()
    }

    /// [`Self::encode_prompt`] for every text encoder of the family, with the pooled embedding.
    pub fn encode_prompt_pooled(
        &mut self,
        fragments: &[Fragment],
    ) -> Result<Conditioning, PipelineError> {
        let text_side = &mut self.text;
        self.sessions.with_text(&self.model, |nets| {
            text_side.encode_prompt_pooled(nets, fragments)
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
        self.sessions.unet(UnetCall {
            sample,
            shape,
            timestep,
            context,
            added,
        })
    }

    /// "fp16" or "fp32": the graph the VAE decoder runs now (fp32 after an fp16 overflow).
    pub fn vae_precision(&self) -> &'static str {
        match self.sessions.vae_is_fp16() {
            true => "fp16",
            false => "fp32",
        }
    }

    /// "fused" or "plain": the VAE decoder's graph now (a fused CUDA one, fp16 or made f32, or the
    /// plain export).
    pub fn vae_graph(&self) -> &'static str {
        match self.sessions.vae_is_fused(&self.model) {
            true => "fused",
            false => "plain",
        }
    }

    /// "graph" when the VAE decoder's session makes the picture's bytes itself (on its device),
    /// "host" when its f32 output is converted on the host.
    pub fn vae_bytes(&self) -> &'static str {
        match self.sessions.vae_makes_bytes() {
            true => "graph",
            false => "host",
        }
    }

    /// "fp16" or "fp32": the graphs the text encoders run now (fp32 after an fp16 overflow).
    pub fn te_precision(&self) -> &'static str {
        match self.sessions.te_is_fp16(&self.model) {
            true => "fp16",
            false => "fp32",
        }
    }

    /// "fused" or "plain": the text encoders' graph now (the fused one is fp16, CUDA only).
    pub fn te_graph(&self) -> &'static str {
        match self.sessions.te_is_fused(&self.model) {
            true => "fused",
            false => "plain",
        }
    }

    /// Decodes latents `[1, 4, h, w]` to an image.
    pub fn decode(
        &mut self,
        latents: &[f32],
        h: usize,
        w: usize,
    ) -> Result<RgbImage, PipelineError> {
        self.sessions.decode(&self.model, latents, h, w)
    }

    /// Decodes latents `[1, 4, h, w]` as images are decoded: in tiles when the engine's
    /// [`VaeTiling`](super::vae_tiles::VaeTiling) says so.
    pub fn decode_image(
        &mut self,
        latents: &[f32],
        h: usize,
        w: usize,
    ) -> Result<RgbImage, PipelineError> {
        if self.vae_tiling.applies(h, w) {
            let tile = self.vae_tiling.tile;
            self.sessions
                .tiled_vae(&self.model)?
                .decode(latents, h, w, tile)
        } else {
            self.sessions.decode(&self.model, latents, h, w)
        }
    }

    /// Encodes a picture `[3, h, w]` in [-1, 1] to the VAE encoder's moments `[8, h/f, w/f]`, as
    /// image-to-image does (in tiles when the engine's tiling says so).
    pub fn encode_image(
        &mut self,
        chw: &[f32],
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>, PipelineError> {
        self.sessions.encode(&self.model, chw, h, w)
    }

    /// Changes when the VAE decodes (and encodes) in tiles, from the next image on.
    pub fn set_vae_tiling(&mut self, tiling: super::vae_tiles::VaeTiling) {
        self.vae_tiling = tiling;
        self.sessions.set_vae_tiling(tiling);
    }

    /// Runs `job`, calling `on_event` with progress and each image. Returns how it ended. Its
    /// images go through the UNet together, at most [`Generator::unet_batch`] at a time.
    pub fn generate(
        &mut self,
        job: &Job,
        stop: &dyn Fn() -> Stop,
        on_event: &mut dyn FnMut(Event),
        id: u64,
    ) -> Result<Ended, PipelineError> {
        let ready = self.ready(job, id)?;
        self.sample(&[ready], stop, on_event, &mut [batched::State::Running])
    }

    /// How many images go through the UNet together at most.
    pub fn unet_batch(&self) -> usize {
        self.unet_batch
    }

    /// Changes [`Self::unet_batch`] from the next job on (1 samples one image at a time).
    pub fn set_unet_batch(&mut self, images: usize) {
        self.unet_batch = images.max(1);
    }

    /// Whether one UNet call's images are decoded on a worker thread while the next call samples
    /// (on by default; the images are the same either way).
    pub fn pipelined(&self) -> bool {
        self.pipelined
    }

    /// Turns [`Self::pipelined`] on or off from the next job on (benchmarks compare the two).
    pub fn set_pipelined(&mut self, on: bool) {
        self.pipelined = on;
    }

    /// Tests: makes the VAE decode of the image with `seed` fail, to check that the failure stays
    /// with its job.
    #[doc(hidden)]
    pub fn fail_decode_of(&mut self, seed: Option<u64>) {
        self.fail_decode = seed;
    }
}

/// SDXL's micro-conditioning `[batch, 6]` as diffusers' defaults: original size = target size =
/// the image's (height, width), crop top-left (0, 0); the same for every row of the batch.
pub fn time_ids(width: u32, height: u32, batch: usize) -> Vec<f32> {
    let (h, w) = (height as f32, width as f32);
    [h, w, 0.0, 0.0, h, w].repeat(batch)
}

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
