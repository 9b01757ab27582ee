//! [`EngineSpec`]: every load-time setting of an engine in one value (model, sessions, LoRA folders
//! and method, live mode, previews), built once by a front end and handed to
//! [`crate::pipeline::Generator::load`]. Per-image parameters stay in the [`crate::job::Job`].
//! The engine module re-exports it; it lives here so the pipeline can be built from it.

use crate::live::{LiveOptions, LoraMethod};
use crate::runtime::SessionOptions;
use std::path::PathBuf;

/// At most this many images go through the UNet together unless the engine says otherwise
/// (`--unet-batch`). On an H100 (SD1.5 512², 20 steps) 4 gave 6.4 images/s against 4.6 alone and 8
/// only 6.7 for twice the activation memory; on the CPU sharing calls neither gains nor loses.
pub const DEFAULT_UNET_BATCH: usize = 4;

/// What an engine is loaded with; a change to any of it means a new engine (or, for the LoRA
/// folders and method, [`crate::pipeline::Generator::set_lora_dirs`] /
/// [`crate::pipeline::Generator::set_lora_method`] on a loaded one).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSpec {
    /// A stipple folder, a diffusers folder or a single-file checkpoint.
    pub model: PathBuf,
    /// Device, threads, shapes, graph, CUDA settings, resident weights, EMA, VAE, clip skip, the
    /// VAE's and text encoders' precision.
    pub session: SessionOptions,
    /// The folders `<lora:NAME>` tags are looked up in.
    pub lora_dirs: Vec<PathBuf>,
    /// The folders textual-inversion embeddings are looked up in.
    pub embedding_dirs: Vec<PathBuf>,
    /// How adapters reach the weights.
    pub lora_method: LoraMethod,
    /// Options of live mode (SVD truncation error).
    pub live: LiveOptions,
    /// Send `Event::Preview` while sampling (the workstation shows them).
    pub previews: bool,
    /// At most this many images go through the UNet together (a job's batch, or the jobs of a
    /// group); 1 samples one image at a time.
    pub unet_batch: usize,
    /// When the VAE decodes in tiles (large images).
    pub vae_tiling: super::vae_tiles::VaeTiling,
    /// Run the UNet through fixed buffers without a CUDA graph too: how tests check that path on
    /// the CPU.
    #[doc(hidden)]
    pub bound_unet: bool,
}

impl EngineSpec {
    /// The defaults for `model`: CPU, no LoRA folders, `fuse`, no previews.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        EngineSpec {
            model: model.into(),
            session: SessionOptions::default(),
            lora_dirs: Vec::new(),
            embedding_dirs: Vec::new(),
            lora_method: LoraMethod::default(),
            live: LiveOptions::default(),
            previews: false,
            unet_batch: DEFAULT_UNET_BATCH,
            vae_tiling: Default::default(),
            bound_unet: false,
        }
    }

    /// The same spec with `session` options.
    pub fn with_session(mut self, session: SessionOptions) -> Self {
        self.session = session;
        self
    }

    /// The same spec with `dirs` as its LoRA folders.
    pub fn with_lora_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.lora_dirs = dirs;
        self
    }

    /// The same spec with `dirs` as its embedding folders.
    pub fn with_embedding_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.embedding_dirs = dirs;
        self
    }
}
