//! The one resolve step: flags, then `STIPPLE_*` environment, then `config.toml`, then built-in
//! defaults, into the load-time settings ([`engine`] → [`EngineSettings`], the same for every
//! command) and, for `generate`, the job ([`generate`] → [`Resolved`]), checked before any load.

use super::error::{Classify, CliError};
use super::flags::EngineFlags;
use super::GenerateArgs;
use crate::config::{Config, Dirs};
use crate::job::{parse_sampler, Job, Sampler, Schedule};
use crate::live::LoraMethod;
use crate::model::models_root::ModelsRoot;
use crate::model::Model;
use crate::prompt::{Catalog, LoraDirs, Prompt};
use crate::runtime::{Device, SessionOptions};
use std::path::{Path, PathBuf};

/// Everything fixed when the engine loads (what per-image parameters do not change).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// The model to open (a `--models-root` name already looked up).
    pub model: PathBuf,
    /// The model is the bundled tiny one (no `--model` given).
    pub bundled: bool,
    /// At least one; only `batch` runs on several.
    pub devices: Vec<Device>,
    /// Session options for the first device (a batch engine swaps its own device in).
    pub session: SessionOptions,
    pub lora_method: LoraMethod,
    /// Images per UNet call at most.
    pub unet_batch: usize,
    /// When the VAE decodes in tiles.
    pub vae_tiles: crate::pipeline::vae_tiles::TileMode,
    /// Where `<lora:NAME>` is looked up, in order.
    pub lora_dirs: Vec<PathBuf>,
    /// Where textual-inversion embeddings are looked up, in order.
    pub embedding_dirs: Vec<PathBuf>,
    pub ort_lib: Option<PathBuf>,
}

impl EngineSettings {
    /// The engine's load-time spec (on the first device; a batch engine swaps its own in).
    pub fn spec(&self) -> crate::engine::EngineSpec {
        let mut spec = crate::engine::EngineSpec::new(&self.model)
            .with_session(self.session.clone())
            .with_lora_dirs(self.lora_dirs.clone())
            .with_embedding_dirs(self.embedding_dirs.clone());
        spec.lora_method = self.lora_method;
        spec.unet_batch = self.unet_batch;
        spec.vae_tiling.mode = self.vae_tiles;
        spec
    }
}

/// A `generate` run: the job and the engine it needs.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub job: Job,
    pub engine: EngineSettings,
    /// Prompt warnings, rendered (`warning: ...` with the place), for stderr.
    pub warnings: Vec<String>,
}

/// The configuration (defaults, `config.toml`, `STIPPLE_*`), checked; a mistake is a usage error.
pub fn config(dirs: &Dirs) -> Result<Config, CliError> {
    crate::config::load(dirs, &[]).usage()
}

/// The load-time settings from `flags` and `config`. Opens nothing but a `--models-root` folder.
pub fn engine(
    flags: &EngineFlags,
    ort_lib: Option<&Path>,
    config: &Config,
) -> Result<EngineSettings, CliError> {
    let root = models_root(flags, config)?;
    let (model, bundled) = match (&flags.model, &root) {
        (None, _) => (super::default_model(), true),
        (Some(m), Some(r)) => (r.resolve_checkpoint(m).failed()?, false),
        (Some(m), None) => (m.clone(), false),
    };
    let devices = if flags.devices.is_empty() {
        vec![Device::Cpu]
    } else {
        flags
            .devices
            .iter()
            .map(|d| d.trim().parse::<Device>())
            .collect::<Result<Vec<_>, _>>()
            .usage()?
    };
    let cuda = flags.cuda.apply(config.cuda.options().usage()?).usage()?;
    if flags.cuda.given() && !devices.iter().any(|d| matches!(d, Device::Cuda(_))) {
        tracing::warn!("the --cuda-* flags apply to CUDA devices only; ignored here");
    }
    let graph = match &flags.graph {
        Some(g) => g.parse().map_err(|e: String| CliError::Usage(e))?,
        None => Default::default(),
    };
    let vae = match (&flags.weights.vae, &root) {
        (Some(v), Some(r)) => Some(r.resolve_vae(v).failed()?),
        (v, _) => v.clone(),
    };
    let session = SessionOptions {
        device: devices[0],
        threads: flags.threads.unwrap_or(0),
        static_shapes: flags.static_shapes,
        graph,
        cuda,
        resident: flags.resident_weights,
        patch_on_device: flags.patch_on.as_deref().map(|w| w == "device"),
        spare_unet: flags.spare_unet,
        ema: flags.weights.ema,
        vae,
        clip_skip: flags.weights.clip_skip,
        prediction: flags.weights.prediction,
        vae_precision: match &flags.weights.vae_precision {
            Some(p) => p.parse().map_err(CliError::Usage)?,
            None => config.generation.vae_precision,
        },
        vae_graph: match &flags.weights.vae_graph {
            Some(g) => g.parse().map_err(CliError::Usage)?,
            None => Default::default(),
        },
        te_graph: match &flags.weights.te_graph {
            Some(g) => g.parse().map_err(CliError::Usage)?,
            None => Default::default(),
        },
        te_precision: match &flags.weights.te_precision {
            Some(p) => p.parse().map_err(CliError::Usage)?,
            None => config.generation.te_precision,
        },
        run_once: false,
        rarely_run: false,
    };
    let unet_batch = flags.unet_batch.unwrap_or(config.generation.unet_batch);
    if !(1..=64).contains(&unet_batch) {
        return Err(CliError::Usage(format!(
            "--unet-batch {unet_batch}: give 1 to 64 images per UNet call"
        )));
    }
    let mut lora_dirs = lora_dirs(&flags.lora_dirs, config);
    lora_dirs.extend(root.as_ref().map(|r| r.lora_dirs()).unwrap_or_default());
    let mut embedding_dirs = flags.embedding_dirs.clone();
    embedding_dirs.extend(config.embedding_folders.iter().cloned());
    embedding_dirs.extend(root.map(|r| r.embedding_dirs()).unwrap_or_default());
    Ok(EngineSettings {
        model,
        bundled,
        devices,
        session,
        lora_method: flags.lora_method.unwrap_or(config.generation.lora_method),
        unet_batch: unet_batch as usize,
        vae_tiles: flags.vae_tiles.unwrap_or_default(),
        lora_dirs,
        embedding_dirs,
        ort_lib: ort_lib.map(Path::to_path_buf),
    })
}

/// The models root: `--models-root`, else `models_root` of the config; an error names which one
/// is not an install.
pub fn models_root(flags: &EngineFlags, config: &Config) -> Result<Option<ModelsRoot>, CliError> {
    let (path, origin) = match (&flags.weights.models_root, config.models_root()) {
        (Some(p), _) => (p.as_path(), "--models-root"),
        (None, Some(p)) => (p, "configuration key `models_root`"),
        (None, None) => return Ok(None),
    };
    ModelsRoot::new(path)
        .map(Some)
        .failed()
        .map_err(|e| e.context(origin))
}

/// Where `<lora:NAME>` is looked up: `--lora-dir` flags, then `STIPPLE_LORA_DIRS` (colon-separated
/// like `PATH`), then `lora_folders` of the config.
pub fn lora_dirs(flags: &[PathBuf], config: &Config) -> Vec<PathBuf> {
    let mut dirs = flags.to_vec();
    if let Some(v) = std::env::var_os("STIPPLE_LORA_DIRS") {
        dirs.extend(std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()));
    }
    dirs.extend(config.lora_folders.iter().cloned());
    dirs
}

/// Opens the model's headers (cheap: no weights read, no session), for its family and size.
pub fn open_model(e: &EngineSettings) -> Result<Model, CliError> {
    Model::open_with(&e.model, e.session.open_options())
        .failed()
        .map_err(|err| {
            err.context(format_args!(
                "cannot open the model in {}",
                e.model.display()
            ))
        })
}

/// The config's `[generation]` with the model's own size and steps where it says 0; the bundled
/// tiny model always makes its own size (a configured size is for real models).
pub fn generation_defaults(config: Config, model: &Model, bundled: bool) -> Config {
    let size = model.default_size();
    let mut c = config
        .with_model_size(size)
        .with_model_steps(model.index.family.facts().default_steps);
    if bundled {
        (c.generation.width, c.generation.height) = size;
    }
    c
}

/// `generate`'s flags over the config: the job, checked (size, prompt syntax, `lbw=` layouts,
/// adapter names and families) before anything is loaded. Returns the opened model headers too.
pub fn generate(
    a: &GenerateArgs,
    outer: &EngineFlags,
    ort_lib: Option<&Path>,
    dirs: &Dirs,
) -> Result<(Resolved, Model), CliError> {
    let config = config(dirs)?;
    let flags = a.engine.under(outer);
    let engine = engine(&flags, ort_lib, &config)?;
    if engine.devices.len() > 1 {
        return Err(CliError::Usage(
            "generate runs on one device; `stipple batch` spreads jobs over several".into(),
        ));
    }
    let g = &config.generation;
    let (sampler, schedule) = sampler_and_schedule(
        a.sampler.as_deref().unwrap_or(&g.sampler),
        a.schedule.as_deref().unwrap_or(&g.schedule),
        a.schedule.is_some(),
    )?;
    let sde_noise = match &a.sde_noise {
        Some(v) => v.parse::<crate::job::SdeNoise>().usage()?,
        None => g.sde_noise,
    };
    let sigmas = match &a.sigmas {
        Some(v) => v.parse::<crate::job::SigmaStyle>().usage()?,
        None => g.sigmas,
    };
    let seed = match a.seed.unwrap_or(g.seed) {
        -1 => random_seed(),
        s if s < 0 => {
            return Err(CliError::Usage(format!(
                "seed {s}: use -1 for a random seed, or a number ≥ 0"
            )))
        }
        s => s as u64,
    };
    check_flags(a)?;
    let (prompt, warnings) = parse_prompts(&a.prompt, &a.negative)?;
    let model = open_model(&engine)?;
    // The config is checked (sizes multiples of 8, steps in range); its 0s are the model's now.
    let g = generation_defaults(config, &model, engine.bundled).generation;
    let mut job = Job {
        prompt: a.prompt.clone(),
        negative: a.negative.clone(),
        sampler,
        schedule,
        sde_noise,
        zero_snr: a.zero_snr.unwrap_or(g.zero_snr),
        sigmas,
        steps: a.steps.unwrap_or(g.steps),
        cfg: a.cfg.unwrap_or(g.cfg),
        width: a.width.unwrap_or(g.width),
        height: a.height.unwrap_or(g.height),
        seed,
        batch: a.batch.unwrap_or(g.batch),
        init: init_image(&a.init)?,
        hires: None,
    };
    if let Some(init) = &job.init {
        init.first_step(job.steps)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        // The mask's size, region and the rest are checked before any session is built.
        crate::image::init::load(init, job.width, job.height).map_err(init_error)?;
    }
    job.hires = super::hires_flags::hires_fix(&a.hires, &a.init, &job)?;
    check_adapters(&prompt, &job.prompt, &model, &engine.lora_dirs)?;
    Ok((
        Resolved {
            job,
            engine,
            warnings,
        },
        model,
    ))
}

/// The sampler and schedule type a job runs: an old A1111 name's schedule suffix (`DPM++ 2M SDE
/// Karras`) stands for `--schedule`, and a `--schedule` flag that says otherwise is an error.
pub fn sampler_and_schedule(
    sampler: &str,
    schedule: &str,
    schedule_flag_given: bool,
) -> Result<(Sampler, Schedule), CliError> {
    let (sampler, suffix) = parse_sampler(sampler).usage()?;
    let named: Schedule = schedule.parse().usage()?;
    let schedule = match suffix {
        Some(s) if schedule_flag_given && s != named => {
            return Err(CliError::Usage(format!(
                "the sampler name says the {s} schedule and --schedule says {named}; give one"
            )))
        }
        Some(s) => s,
        None => named,
    };
    crate::pipeline::schedulers::check_schedule(sampler, schedule).usage()?;
    Ok((sampler, schedule))
}

/// The image-to-image settings of the flags: the picture (and mask) read, checked and pinned by hash
/// before the model loads.
fn init_image(f: &super::InitFlags) -> Result<Option<crate::job::InitImage>, CliError> {
    let Some(path) = &f.init_image else {
        // --denoise-steps also sets the hires fix's step count.
        let given = f.denoise.is_some()
            || f.resize_mode.is_some()
            || f.mask.is_some()
            || f.mask_blur.is_some()
            || f.inpaint_area.is_some()
            || f.inpaint_padding.is_some()
            || f.masked_content.is_some()
            || f.outpaint.is_some();
        return if given {
            Err(CliError::Usage(
                "--denoise, --resize-mode, --mask, --mask-blur, --inpaint-area, --inpaint-padding, \
                 --masked-content and --outpaint need --init-image"
                    .into(),
            ))
        } else {
            Ok(None)
        };
    };
    let mut init = crate::image::init::pin(path, f.denoise.unwrap_or(0.75), f.mask.as_deref())
        .map_err(init_error)?;
    init.resize_mode = f.resize_mode.unwrap_or_default();
    init.step_count = f.denoise_steps.unwrap_or_default();
    init.mask_blur = f.mask_blur.unwrap_or(0);
    init.masked_content = f.masked_content.unwrap_or_default();
    init.outpaint = f.outpaint.unwrap_or_default();
    crate::init_image::set_area(&mut init, f.inpaint_area, f.inpaint_padding)
        .map_err(CliError::Usage)?;
    Ok(Some(init))
}

/// A bad denoise value is a usage error (exit 2); a picture that cannot be read, a failure (exit 1).
fn init_error(e: crate::image::init::InitError) -> CliError {
    use crate::image::init::InitError::{Denoise, EmptyMask, MaskSize, NoMask};
    match e {
        Denoise(_) | MaskSize { .. } | NoMask { .. } | EmptyMask { .. } => {
            CliError::Usage(e.to_string())
        }
        e => CliError::Failed(e.to_string()),
    }
}

/// The flags given, each checked on its own, so an error names the flag and its value.
fn check_flags(a: &GenerateArgs) -> Result<(), CliError> {
    let usage = |m: String| Err(CliError::Usage(m));
    for (flag, v) in [("--width", a.width), ("--height", a.height)] {
        if let Some(v) = v.filter(|v| *v == 0 || !v.is_multiple_of(8)) {
            return usage(format!(
                "{flag} {v}: width and height must be positive multiples of 8"
            ));
        }
    }
    if let Some(s) = a.steps.filter(|s| !(1..=1000).contains(s)) {
        return usage(format!("--steps {s}: must be between 1 and 1000"));
    }
    if let Some(c) = a.cfg.filter(|c| !c.is_finite()) {
        return usage(format!("--cfg {c}: must be a number"));
    }
    if a.batch == Some(0) {
        return usage("--batch 0: make at least 1 image".into());
    }
    Ok(())
}

/// The prompt parsed once (the negative one checked too), with its rendered warnings.
fn parse_prompts(text: &str, negative: &str) -> Result<(Prompt, Vec<String>), CliError> {
    let (prompt, warns) = crate::prompt::parse_with_warnings(text)
        .map_err(|e| CliError::Usage(rendered(&e.render(text))))?;
    let mut warnings: Vec<String> = warns.iter().map(|w| w.render(text)).collect();
    let (neg, neg_warns) = crate::prompt::parse_negative_with_warnings(negative).map_err(|e| {
        CliError::Usage(format!(
            "negative prompt: {}",
            rendered(&e.render(negative))
        ))
    })?;
    if let Some(tag) = neg.loras.first() {
        return Err(CliError::Usage(format!(
            "negative prompt: <lora:{}>: LoRA tags belong in the prompt, not the negative prompt",
            tag.name
        )));
    }
    warnings.extend(
        neg_warns
            .iter()
            .map(|w| format!("negative prompt: {}", w.render(negative))),
    );
    Ok((prompt, warnings))
}

/// A rendered prompt diagnostic without its leading `error: ` (the caller's printer adds one).
pub fn rendered(text: &str) -> String {
    text.strip_prefix("error: ")
        .unwrap_or(text)
        .trim_end()
        .to_string()
}

/// What can be known about the prompt's adapters from file headers: `lbw=` layouts for the
/// model's family, every name found, every adapter made for the model's family.
fn check_adapters(
    prompt: &Prompt,
    text: &str,
    model: &Model,
    dirs: &[PathBuf],
) -> Result<(), CliError> {
    let family = model.index.family;
    prompt
        .check_family(family)
        .map_err(|e| CliError::Usage(rendered(&e.render(text))))?;
    if prompt.loras.is_empty() {
        return Ok(());
    }
    let catalog = Catalog::scan(&LoraDirs::new(dirs.to_vec()));
    if let Some(e) = catalog.unreadable.first() {
        return Err(CliError::Failed(format!("{e} ({})", e.hint())));
    }
    let resolved = catalog.resolve_prompt(prompt).map_err(|e| {
        let mut msg = rendered(&e.render(text));
        if dirs.is_empty() {
            msg.push_str("\n(no LoRA folder is configured: pass --lora-dir DIR)");
        }
        CliError::Failed(msg)
    })?;
    let params = crate::pipeline::adapters::target_params(model);
    for (tag, adapter) in resolved {
        let file = crate::lora::Adapter::open(&adapter.path).failed()?;
        let guess = crate::lora::family::guess(&file);
        crate::lora::family::check(&guess, family, &params).map_err(|m| {
            CliError::Failed(format!(
                "<lora:{}>: refused, wrong base model: {m}",
                tag.name
            ))
        })?;
    }
    Ok(())
}

/// A 32-bit seed from the clock (A1111 seeds are 32-bit; torch truncates larger ones anyway).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() & 0xffff_ffff
}
