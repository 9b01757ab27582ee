//! The `stipple` command: parse flags, resolve them into a job, dispatch, map errors to exit codes.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use stipple::job::{Job, Sampler};
use stipple::pipeline::{validate_job, EngineSpec, Generator};
use stipple::runtime::{CudaArgs, CudaOptions, Device, Runtime, SessionOptions};

#[derive(Parser)]
#[command(
    name = "stipple",
    version,
    about = "Stable Diffusion with LoRA-family adapters, in the terminal"
)]
struct Cli {
    /// The ONNX Runtime library (default: ORT_DYLIB_PATH, then .ort/ from scripts/setup)
    #[arg(long, global = true, value_name = "FILE")]
    ort_lib: Option<PathBuf>,
    #[command(flatten)]
    tui: TuiArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Flags of the workstation (`stipple` with no subcommand).
#[derive(Args)]
struct TuiArgs {
    /// Model: a .safetensors checkpoint, a diffusers folder or a stipple folder (default: the bundled tiny model)
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// Where to run: cpu, cuda:N or dml:N
    #[arg(long)]
    device: Option<String>,
    /// A folder of LoRA files (repeatable; adds to `lora_folders` of the config)
    #[arg(long = "lora-dir", value_name = "DIR")]
    lora_dirs: Vec<PathBuf>,
    /// Where finished images are saved (default: `outputs` in stipple's data folder)
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Picture protocol: auto, kitty, sixel, iterm2 or halfblocks
    #[arg(long, value_name = "NAME")]
    image_protocol: Option<String>,
    /// How adapters reach the weights: fuse (static fused, scheduled or dialled ones live), live, refuse
    #[arg(long, value_enum, default_value_t)]
    lora_method: stipple::live::LoraMethod,
    /// Keep text-encoder and UNet weights in buffers rewritten in place on an adapter change
    /// (faster swaps, less host memory; on CPU, steps without weight pre-packing). Default: true
    /// on CUDA, false elsewhere
    #[arg(long, value_name = "BOOL")]
    resident_weights: Option<bool>,
    #[command(flatten)]
    weights: WeightArgs,
    #[command(flatten)]
    cuda: CudaArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Make images from a prompt, without the TUI
    Generate(GenerateArgs),
    /// Run a JSON-lines job file or a sweep on warm engines; resumable and shardable
    Batch(stipple::batch::BatchArgs),
    /// Check ONNX Runtime, execution providers and a model folder
    Doctor(DoctorArgs),
    /// Measure load time, UNet steps per second, VAE decode and a whole image
    Bench(BenchArgs),
    /// Adapter files: inspect, merge, extract
    #[command(subcommand)]
    Lora(LoraCommand),
    /// Write a model folder with adapters fused into its weights
    Bake(BakeArgs),
}

#[derive(Subcommand)]
enum LoraCommand {
    /// Type per module, base family with evidence, rank/alpha, trigger words, metadata, hashes
    Inspect(InspectArgs),
    /// Several adapters at their strengths as one kohya LoRA (exact concatenation, or SVD)
    Merge(MergeArgs),
    /// A kohya LoRA from the difference of two models (tuned − base), by truncated SVD
    Extract(ExtractArgs),
}

#[derive(Args)]
struct RankArgs {
    /// Rank of every layer (with --sv-*: the largest rank allowed)
    #[arg(long)]
    rank: Option<usize>,
    /// Rank of 3×3 convolutions (default: --rank)
    #[arg(long)]
    conv_rank: Option<usize>,
    /// Rank per layer: singular values above S[0]/X (kohya resize sv_ratio)
    #[arg(long, value_name = "X", group = "dynamic")]
    sv_ratio: Option<f64>,
    /// Rank per layer: keep this fraction of the Frobenius norm (kohya resize sv_fro)
    #[arg(long, value_name = "X", group = "dynamic")]
    sv_fro: Option<f64>,
    /// Rank per layer: keep this fraction of the sum of singular values (kohya resize sv_cumulative)
    #[arg(long, value_name = "X", group = "dynamic")]
    sv_cumulative: Option<f64>,
    /// Clamp both factors to this quantile of their values, as kohya's scripts do (e.g. 0.99)
    #[arg(long, value_name = "Q")]
    clamp_quantile: Option<f64>,
}

impl RankArgs {
    fn given(&self) -> bool {
        self.rank.is_some()
            || self.conv_rank.is_some()
            || self.sv_ratio.is_some()
            || self.sv_fro.is_some()
            || self.sv_cumulative.is_some()
    }

    fn options(&self, randomized: bool) -> Result<stipple::lora::svd::Options> {
        use stipple::lora::svd::{Dynamic, Options, RankRule};
        let dynamic = self
            .sv_ratio
            .map(Dynamic::SvRatio)
            .or(self.sv_fro.map(Dynamic::SvFro))
            .or(self.sv_cumulative.map(Dynamic::SvCumulative));
        if let Some(q) = self.clamp_quantile {
            if !(0.0..=1.0).contains(&q) {
                bail!("--clamp-quantile {q}: give a number between 0 and 1");
            }
        }
        Ok(Options {
            rule: RankRule {
                rank: self.rank,
                conv_rank: self.conv_rank,
                dynamic,
            },
            clamp: self.clamp_quantile,
            randomized,
        })
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MergeMode {
    Exact,
    Svd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SaveDtype {
    F32,
    F16,
    Bf16,
}

impl From<SaveDtype> for stipple::safetensors_out::Dtype {
    fn from(d: SaveDtype) -> Self {
        match d {
            SaveDtype::F32 => Self::F32,
            SaveDtype::F16 => Self::F16,
            SaveDtype::Bf16 => Self::BF16,
        }
    }
}

#[derive(Args)]
struct MergeArgs {
    /// FILE[:STRENGTH][:KEY=VALUE...] with the keys of a <lora:...> tag (te, unet, in, mid, out, lbw, dyn)
    inputs: Vec<String>,
    /// A prompt whose <lora:...> tags are merged too (constant strengths only)
    #[arg(long, short)]
    prompt: Option<String>,
    /// A folder of LoRA files for the prompt's tags (repeatable; also STIPPLE_LORA_DIRS)
    #[arg(long = "lora-dir", value_name = "DIR")]
    lora_dirs: Vec<PathBuf>,
    /// The model the adapters are for (default: the bundled tiny model)
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// The merged LoRA (.safetensors)
    #[arg(long)]
    out: PathBuf,
    /// exact: concatenate LoRA/LoCon factors (lossless); svd: sum ΔW and truncate (any type).
    /// Default: svd when a rank option is given, else exact
    #[arg(long, value_enum)]
    mode: Option<MergeMode>,
    #[command(flatten)]
    rank: RankArgs,
    /// Stored dtype of the factors
    #[arg(long, value_enum, default_value = "f32")]
    dtype: SaveDtype,
    /// Replace --out if it exists
    #[arg(long)]
    overwrite: bool,
    /// List every merged module and the error of every layer
    #[arg(long)]
    verbose: bool,
}

#[derive(Args)]
struct ExtractArgs {
    /// The original model (checkpoint file, diffusers folder or stipple folder)
    #[arg(long, value_name = "PATH")]
    base: PathBuf,
    /// The fine-tuned model (same architecture; any of the three forms)
    #[arg(long, value_name = "PATH")]
    tuned: PathBuf,
    /// The extracted LoRA (.safetensors)
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    rank: RankArgs,
    /// Exact SVD even for a fixed rank (default: randomized, much faster on large layers)
    #[arg(long)]
    full_svd: bool,
    /// Leave out layers whose largest change is at most this
    #[arg(long, default_value_t = 0.0)]
    min_diff: f32,
    /// Stored dtype of the factors
    #[arg(long, value_enum, default_value = "f32")]
    dtype: SaveDtype,
    /// Replace --out if it exists
    #[arg(long)]
    overwrite: bool,
    /// List the error of every layer
    #[arg(long)]
    verbose: bool,
}

#[derive(Args)]
struct InspectArgs {
    /// The adapter (.safetensors)
    file: PathBuf,
    /// Print as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BakeArgs {
    /// Stipple model folder to bake into (default: the bundled tiny model)
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// FILE[:STRENGTH][:KEY=VALUE...] with the keys of a <lora:...> tag (te, unet, in, mid, out, lbw, dyn)
    #[arg(long, required = true)]
    lora: Vec<String>,
    /// The new model folder (must not exist)
    #[arg(long)]
    out: PathBuf,
    /// List every applied and skipped key
    #[arg(long)]
    verbose: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Image width (default: the model's)
    #[arg(long)]
    width: Option<u32>,
    /// Image height (default: the model's)
    #[arg(long)]
    height: Option<u32>,
    /// Repetitions of each measurement
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    /// Also measure an adapter swap (fuse) and the step time with it fused
    #[arg(long, value_name = "FILE")]
    lora: Option<PathBuf>,
    /// With --lora: also measure live mode (per-step time live vs fused, set_strength → next step)
    #[arg(long, requires = "lora")]
    live: bool,
}

#[derive(Args)]
struct ModelArgs {
    /// Model: a .safetensors checkpoint, a diffusers folder or a stipple folder (default: the bundled tiny model, tests/fixtures/tiny-sd15)
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// Where to run: cpu, cuda:N or dml:N
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Intra-op threads for ONNX Runtime (0 = its default)
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Build sessions for the job's exact shapes (faster steps; a new size rebuilds the UNet)
    #[arg(long)]
    static_shapes: bool,
    /// UNet graph: auto (the fused CUDA graph on CUDA when the model has one), plain, cuda
    #[arg(long, default_value = "auto")]
    graph: String,
    /// Keep text-encoder and UNet weights in buffers stipple rewrites in place on an adapter
    /// change, instead of building new sessions (faster swaps, less host memory; on CPU, steps
    /// without weight pre-packing). Default: true on CUDA, false elsewhere
    #[arg(long, value_name = "BOOL")]
    resident_weights: Option<bool>,
    #[command(flatten)]
    weights: WeightArgs,
    #[command(flatten)]
    cuda: CudaArgs,
}

/// How a model's weights are read: the flags of the workstation, `generate` and `bench`.
#[derive(Args)]
struct WeightArgs {
    /// Use a single-file checkpoint's EMA UNet weights (`model_ema.*`) instead of the trained ones
    #[arg(long)]
    ema: bool,
    /// A separate VAE (.safetensors, LDM or diffusers naming) to use instead of the model's own
    #[arg(long, value_name = "FILE")]
    vae: Option<PathBuf>,
    /// A1111's clip skip: 2 conditions SD 1.x on the penultimate CLIP layer
    #[arg(long, value_name = "N")]
    clip_skip: Option<u32>,
    /// An A1111, Forge, SD.Next or ComfyUI folder: --model and --vae may then be names found in its
    /// models/ folders, and its LoRA folders are searched for <lora:...> tags
    #[arg(long, value_name = "DIR")]
    models_root: Option<PathBuf>,
}

impl WeightArgs {
    fn root(&self) -> Result<Option<stipple::model::models_root::ModelsRoot>> {
        Ok(self
            .models_root
            .as_deref()
            .map(stipple::model::models_root::ModelsRoot::new)
            .transpose()?)
    }

    /// The model to open (a name is looked up in --models-root), and the root's LoRA folders.
    fn resolve_model(&self, model: Option<&PathBuf>) -> Result<(PathBuf, Vec<PathBuf>)> {
        let root = self.root()?;
        let path = match (model, &root) {
            (None, _) => default_model(),
            (Some(m), Some(r)) => r.resolve_checkpoint(m)?,
            (Some(m), None) => m.clone(),
        };
        Ok((path, root.map(|r| r.lora_dirs()).unwrap_or_default()))
    }

    fn apply(&self, opts: SessionOptions) -> Result<SessionOptions> {
        let vae = match (&self.vae, self.root()?) {
            (Some(v), Some(r)) => Some(r.resolve_vae(v)?),
            (v, _) => v.clone(),
        };
        Ok(SessionOptions {
            ema: self.ema,
            vae,
            clip_skip: self.clip_skip,
            ..opts
        })
    }
}

impl ModelArgs {
    /// Session options from these flags and the `[cuda]` section of the config.
    fn session_options(&self, device: Device) -> Result<SessionOptions> {
        self.weights.apply(SessionOptions {
            device,
            threads: self.threads,
            static_shapes: self.static_shapes,
            graph: self.graph.parse().map_err(anyhow::Error::msg)?,
            resident: self.resident_weights,
            cuda: cuda_options(
                stipple::config::load_cuda(&stipple::config::Dirs::discover())?,
                &self.cuda,
                &[device],
            )?,
            ..SessionOptions::default()
        })
    }
}

/// `base` (the config's `[cuda]`) with the `--cuda-*` flags on top. Flags given for a run with no
/// CUDA device are ignored, with a warning.
fn cuda_options(base: CudaOptions, flags: &CudaArgs, devices: &[Device]) -> Result<CudaOptions> {
    let opts = flags.apply(base)?;
    if flags.given() && !devices.iter().any(|d| matches!(d, Device::Cuda(_))) {
        tracing::warn!("the --cuda-* flags apply to CUDA devices only; ignored here");
    }
    Ok(opts)
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, short)]
    prompt: String,
    #[arg(long, short, default_value = "")]
    negative: String,
    /// Sampling steps (default: the model family's)
    #[arg(long)]
    steps: Option<u32>,
    /// Classifier-free guidance scale
    #[arg(long)]
    cfg: Option<f32>,
    /// Seed; -1 picks one at random (the seed used is always reported)
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    seed: i64,
    /// Euler, "Euler a", DDIM, "DPM++ 2M", "DPM++ 2M Karras" (or euler-a, dpmpp-2m-karras, ...)
    #[arg(long, default_value = "Euler a")]
    sampler: String,
    /// Image width in pixels, a multiple of 8 (default: the model's)
    #[arg(long)]
    width: Option<u32>,
    /// Image height in pixels, a multiple of 8 (default: the model's)
    #[arg(long)]
    height: Option<u32>,
    /// Images to make; image i uses seed + i
    #[arg(long, default_value_t = 1)]
    batch: u32,
    /// Output folder
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Do not print the image in the terminal
    #[arg(long)]
    no_preview: bool,
    /// A folder of LoRA files for <lora:NAME> tags (repeatable; also STIPPLE_LORA_DIRS, colon-separated)
    #[arg(long = "lora-dir", value_name = "DIR")]
    lora_dirs: Vec<PathBuf>,
    /// How adapters reach the weights: fuse (static fused, scheduled ones live), live, refuse
    #[arg(long, value_enum, default_value_t)]
    lora_method: stipple::live::LoraMethod,
}

#[derive(Args)]
struct DoctorArgs {
    /// Model to check: a .safetensors checkpoint, a diffusers folder or a stipple folder (default: the bundled tiny model)
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
}

/// The bundled tiny model: next to the executable's project, or the source tree it was built from.
fn default_model() -> PathBuf {
    let rel = Path::new("tests").join("fixtures").join("tiny-sd15");
    let mut starts: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        starts.extend(exe.ancestors().map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        starts.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    starts
        .into_iter()
        .map(|s| s.join(&rel))
        .find(|p| p.join("model_index.json").is_file())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    // A1111 seeds are 32-bit; torch truncates larger ones anyway.
    h.finish() & 0xffff_ffff
}

fn cmd_generate(cli: &Cli, a: &GenerateArgs) -> Result<()> {
    let sampler: Sampler = a.sampler.parse()?;
    let device: Device = a.model.device.parse()?;
    let (dir, root_loras) = a.model.weights.resolve_model(a.model.model.as_ref())?;
    let seed = match a.seed {
        -1 => random_seed(),
        s if s < 0 => bail!("seed {s}: use -1 for a random seed, or a number ≥ 0"),
        s => s as u64,
    };
    // Validate what can be validated before loading anything.
    let mut job = Job {
        prompt: a.prompt.clone(),
        negative: a.negative.clone(),
        sampler,
        steps: a.steps.unwrap_or(20),
        cfg: a.cfg.unwrap_or(7.0),
        width: a.width.unwrap_or(8),
        height: a.height.unwrap_or(8),
        seed,
        batch: a.batch,
    };
    validate_job(&job)?;
    let mut dirs = lora_dirs(&a.lora_dirs);
    dirs.extend(root_loras);
    stipple::pipeline::adapters::check_names(&job.prompt, &dirs)?;
    let opts = a.model.session_options(device)?;
    let rt = Runtime::get(cli.ort_lib.as_deref(), device.is_gpu())?;
    let spec = EngineSpec {
        session: opts,
        lora_dirs: dirs,
        lora_method: a.lora_method,
        ..EngineSpec::new(&dir)
    };
    let generator = Generator::load(spec, rt)
        .with_context(|| format!("cannot load the model in {}", dir.display()))?;
    let facts = generator.model.index.family.facts();
    let (w, h) = generator.model.default_size();
    job.width = a.width.unwrap_or(w);
    job.height = a.height.unwrap_or(h);
    job.steps = a.steps.unwrap_or(facts.default_steps);
    job.cfg = a.cfg.unwrap_or(facts.default_cfg);
    validate_job(&job)?;
    eprintln!("seed {seed}");
    stipple::headless::generate(
        generator,
        stipple::headless::GenerateArgs {
            job,
            out_dir: a.out.clone(),
            preview: !a.no_preview,
        },
    )?;
    Ok(())
}

fn cmd_bench(cli: &Cli, a: &BenchArgs) -> Result<()> {
    let device: Device = a.model.device.parse()?;
    let (dir, _) = a.model.weights.resolve_model(a.model.model.as_ref())?;
    let opts = a.model.session_options(device)?;
    let rt = Runtime::get(cli.ort_lib.as_deref(), device.is_gpu())?;
    let size = match (a.width, a.height) {
        (Some(w), Some(h)) => Some((w, h)),
        (None, None) => None,
        _ => bail!("give both --width and --height, or neither"),
    };
    let report = stipple::bench::run(
        EngineSpec::new(&dir).with_session(opts.clone()),
        rt,
        size,
        a.repeats,
        a.lora.as_deref(),
    )
    .with_context(|| format!("benchmark of {}", dir.display()))?;
    let live = match (&a.lora, a.live) {
        (Some(lora), true) => Some(
            stipple::bench::live(EngineSpec::new(&dir).with_session(opts), rt, lora, 20)
                .with_context(|| format!("live benchmark of {}", lora.display()))?,
        ),
        _ => None,
    };
    if a.json {
        emit(&format!("{}\n", serde_json::to_string(&report)?))?;
        if let Some(l) = live {
            emit(&format!("{}\n", serde_json::to_string(&l)?))?;
        }
        Ok(())
    } else {
        emit(&format!("{report}\n"))?;
        if let Some(l) = live {
            emit(&format!("{l}\n"))?;
        }
        Ok(())
    }
}

fn cmd_batch(cli: &Cli, a: &stipple::batch::BatchArgs) -> Result<()> {
    // Devices are parsed (and checked) by the batch itself; here only to tell whether one is CUDA.
    let devices: Vec<Device> = a
        .devices
        .iter()
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    let cuda = cuda_options(
        stipple::config::load_cuda(&stipple::config::Dirs::discover())?,
        &a.cuda,
        &devices,
    )?;
    stipple::batch::run(a, cli.ort_lib.as_deref(), default_model(), cuda)?;
    Ok(())
}

fn cmd_tui(cli: &Cli) -> Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!("the workstation needs a terminal; for scripts use `stipple generate` or `stipple batch`");
    }
    let a = &cli.tui;
    let bundled = a.model.is_none();
    let (dir, root_loras) = a.weights.resolve_model(a.model.as_ref())?;
    let device: Device = a.device.as_deref().unwrap_or("cpu").parse()?;
    // Check the model now (cheap: headers only); sessions are built on the first job.
    let open = a
        .weights
        .apply(SessionOptions {
            device,
            ..SessionOptions::default()
        })?
        .open_options();
    let model = stipple::model::Model::open_with(&dir, open)
        .with_context(|| format!("cannot open the model in {}", dir.display()))?;
    let dirs = stipple::config::Dirs::discover();
    let mut overrides: Vec<(&str, String)> = Vec::new();
    if let Some(p) = &a.image_protocol {
        overrides.push(("image.protocol", p.clone()));
    }
    if bundled {
        // The bundled tiny model makes 64x64 images; a configured size is for real models.
        let (w, h) = model.default_size();
        overrides.push(("generation.width", w.to_string()));
        overrides.push(("generation.height", h.to_string()));
    }
    // Width/height 0 in the config: the model's own size (an SDXL model makes 1024×1024).
    let mut config =
        stipple::config::load(&dirs, &overrides)?.with_model_size(model.default_size());
    config.lora_folders.extend(lora_dirs(&a.lora_dirs));
    config.lora_folders.extend(root_loras);
    let cuda = cuda_options(config.cuda.options()?, &a.cuda, &[device])?;
    let rt = Runtime::get(cli.ort_lib.as_deref(), device.is_gpu())?;
    let out_dir = a.out.clone().unwrap_or_else(|| dirs.data.join("outputs"));
    let spec = EngineSpec {
        session: a.weights.apply(SessionOptions {
            device,
            cuda,
            resident: a.resident_weights,
            ..SessionOptions::default()
        })?,
        lora_dirs: config.lora_folders.clone(),
        lora_method: a.lora_method,
        previews: true,
        ..EngineSpec::new(dir)
    };
    let inner = stipple::engine::runners::LazyGenerator::new(spec, rt);
    let runner = stipple::engine::runners::SavingRunner { inner, out_dir };
    let family = model.index.family;
    drop(model);
    let (engine, events) = stipple::engine::Engine::spawn(runner);
    let keep = engine.clone();
    let result = stipple::tui::run(
        stipple::tui::TuiOptions::new(config, dirs, Some(family)),
        engine,
        events,
    );
    keep.shutdown_and_wait();
    result?;
    Ok(())
}

/// `--lora-dir` flags, then `STIPPLE_LORA_DIRS`.
fn lora_dirs(flags: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = flags.to_vec();
    if let Some(v) = std::env::var_os("STIPPLE_LORA_DIRS") {
        dirs.extend(std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()));
    }
    dirs
}

fn cmd_lora_inspect(a: &InspectArgs) -> Result<()> {
    let adapter = stipple::lora::Adapter::open(&a.file)?;
    let report = stipple::lora::inspect(&adapter);
    if a.json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&report)?))
    } else {
        emit(&format!("{report}\n"))
    }
}

fn cmd_lora_merge(a: &MergeArgs) -> Result<()> {
    use stipple::lora::merge::{MergeOptions, Mode};
    let mode = match a.mode {
        Some(MergeMode::Exact) => Mode::Exact,
        Some(MergeMode::Svd) => Mode::Svd,
        None if a.rank.given() => Mode::Svd,
        None => Mode::Exact,
    };
    if mode == Mode::Exact && (a.rank.given() || a.rank.clamp_quantile.is_some()) {
        bail!(
            "exact mode keeps every rank; --rank, --sv-* and --clamp-quantile belong to --mode svd"
        );
    }
    let model = a.model.clone().unwrap_or_else(default_model);
    let outcome = stipple::export::merge(&stipple::export::MergeRequest {
        model_dir: &model,
        files: &a.inputs,
        prompt: a.prompt.as_deref(),
        lora_dirs: lora_dirs(&a.lora_dirs),
        out: &a.out,
        options: MergeOptions {
            mode,
            svd: a.rank.options(false)?,
        },
        dtype: a.dtype.into(),
        overwrite: a.overwrite,
    })?;
    emit(&outcome_text(&outcome, a.verbose))
}

fn cmd_lora_extract(a: &ExtractArgs) -> Result<()> {
    if !a.rank.given() {
        bail!("give --rank R (or --sv-ratio, --sv-fro, --sv-cumulative)");
    }
    let outcome = stipple::export::extract(&stipple::export::ExtractRequest {
        base: &a.base,
        tuned: &a.tuned,
        out: &a.out,
        options: stipple::lora::extract::ExtractOptions {
            svd: a.rank.options(!a.full_svd)?,
            min_diff: a.min_diff,
        },
        dtype: a.dtype.into(),
        overwrite: a.overwrite,
    })?;
    emit(&outcome_text(&outcome, a.verbose))
}

fn outcome_text(o: &stipple::export::Outcome, verbose: bool) -> String {
    let mut s = String::new();
    if let Some((report, dropped)) = &o.merged {
        if verbose {
            s.push_str(&format!("{report}"));
        }
        for d in dropped {
            s.push_str(&format!("not carried: {d}\n"));
        }
    }
    if verbose {
        for l in &o.layers {
            s.push_str(&format!(
                "  {:?} {} rank {} (chosen {}), error {:.3e}\n",
                l.component, l.path, l.rank, l.chosen_rank, l.error
            ));
        }
    }
    let ranks: std::collections::BTreeSet<usize> = o.layers.iter().map(|l| l.rank).collect();
    let rank = match (ranks.first(), ranks.last()) {
        (Some(a), Some(b)) if a == b => format!("rank {a}"),
        (Some(a), Some(b)) => format!("ranks {a}–{b}"),
        _ => String::new(),
    };
    if o.unchanged > 0 {
        s.push_str(&format!(
            "{} weights are the same in both models\n",
            o.unchanged
        ));
    }
    let error = if o.summary.max == 0.0 {
        "exact".to_string()
    } else {
        format!(
            "relative reconstruction error mean {:.2e}, max {:.2e} ({})",
            o.summary.mean, o.summary.max, o.summary.worst
        )
    };
    s.push_str(&format!(
        "wrote {}: {} layers, {rank}; {error}\n",
        o.out.display(),
        o.summary.layers
    ));
    s
}

fn cmd_bake(a: &BakeArgs) -> Result<()> {
    let dir = a.model.clone().unwrap_or_else(default_model);
    let loras = a
        .lora
        .iter()
        .map(|arg| stipple::bake::parse_lora_arg(arg))
        .collect::<Result<Vec<_>, _>>()?;
    let report = stipple::bake::bake(&dir, &loras, &a.out)?;
    let mut s = String::new();
    for (kind, n) in &report.changed {
        s.push_str(&format!("{kind}: {n} weights changed\n"));
    }
    if a.verbose {
        s.push_str(&format!("{}\n", report.apply));
    }
    s.push_str(&format!("wrote {}\n", report.out.display()));
    emit(&s)
}

/// Writes `text` to stdout; a closed pipe (`stipple doctor | head`) is not an error.
fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn cmd_doctor(cli: &Cli, a: &DoctorArgs) -> Result<()> {
    use std::fmt::Write;
    let mut ok = true;
    let mut s = String::new();
    match Runtime::get(cli.ort_lib.as_deref(), false) {
        Ok(rt) => {
            writeln!(
                s,
                "ONNX Runtime  {} ({}, found by {})",
                rt.version,
                rt.path.display(),
                rt.origin
            )?;
            for (name, available) in stipple::runtime::ep::providers() {
                writeln!(
                    s,
                    "  {:<24} {}",
                    name,
                    if available {
                        "available"
                    } else {
                        "not in this build"
                    }
                )?;
            }
        }
        Err(e) => {
            ok = false;
            writeln!(s, "ONNX Runtime  NOT LOADED: {e}")?;
        }
    }
    writeln!(s, "devices       cpu{}", gpu_list())?;
    // Asking ort for providers without a loaded library would make it try (and panic) on its own.
    let cuda_ep = ok
        && stipple::runtime::ep::providers()
            .iter()
            .any(|(n, a)| *a && n.starts_with("CUDA"));
    if !gpu_list().is_empty() || cuda_ep {
        let libs = stipple::runtime::cuda_libs::find();
        if libs.missing.is_empty() {
            writeln!(s, "CUDA libraries all {} found", libs.found.len())?;
        } else {
            writeln!(s, "CUDA libraries MISSING: {}", libs.missing.join(", "))?;
        }
        for (name, path) in &libs.found {
            writeln!(s, "  {name:<40} {}", path.display())?;
        }
    }
    let dir = a.model.clone().unwrap_or_else(default_model);
    match stipple::model::Model::open(&dir) {
        Ok(m) => {
            writeln!(
                s,
                "model         {} ({}, {})",
                dir.display(),
                m.index.family.facts().name,
                m.index.dtype
            )?;
            match &m.source {
                stipple::model::ModelSource::Folder => {}
                stipple::model::ModelSource::SingleFile { template } => writeln!(
                    s,
                    "  single-file checkpoint, graphs of the built-in template {template}"
                )?,
                stipple::model::ModelSource::Diffusers { template } => writeln!(
                    s,
                    "  diffusers folder, graphs of the built-in template {template}"
                )?,
            }
            let mut kinds: Vec<_> = m.components.keys().copied().collect();
            kinds.sort_by_key(|k| k.dir_name());
            for k in kinds {
                let c = &m.components[&k];
                writeln!(
                    s,
                    "  {:<14} {} initializers, {:.1} MB of weights, weight map consistent",
                    k.dir_name(),
                    c.graph.externals.len(),
                    c.buffer_len() as f64 / 1e6
                )?;
                if let Some(f) = &c.cuda {
                    writeln!(
                        s,
                        "  {:<14} fused CUDA graph: {}, {} initializers, weight map consistent",
                        "",
                        fused_ops(&f.graph.bytes),
                        f.graph.externals.len()
                    )?;
                }
            }
        }
        Err(e) => {
            ok = false;
            writeln!(s, "model         {}: {e:#}", dir.display())?;
        }
    }
    emit(&s)?;
    if !ok {
        bail!("doctor found problems (see above)");
    }
    Ok(())
}

/// How many of ONNX Runtime's fused operators a graph holds, e.g. "16 MultiHeadAttention, 65 NhwcConv".
fn fused_ops(graph: &[u8]) -> String {
    use prost::Message;
    let Ok(m) = stipple::model::onnx_proto::ModelProto::decode(graph) else {
        return "unreadable".into();
    };
    let mut counts = std::collections::BTreeMap::new();
    for n in m.graph.iter().flat_map(|g| &g.node) {
        if n.domain() == "com.microsoft" {
            *counts.entry(n.op_type().to_string()).or_insert(0) += 1;
        }
    }
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    parts.join(", ")
}

/// GPUs as the NVIDIA driver lists them (no CUDA call needed), with their model names.
fn gpu_list() -> String {
    let Ok(rd) = std::fs::read_dir("/proc/driver/nvidia/gpus") else {
        return String::new();
    };
    let mut buses: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    buses.sort();
    buses
        .iter()
        .enumerate()
        .map(|(i, bus)| {
            let model = std::fs::read_to_string(bus.join("information"))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("Model:").map(|m| m.trim().to_string()))
                })
                .unwrap_or_default();
            format!(", cuda:{i} ({model})")
        })
        .collect()
}

/// Logging for the command-line commands: stderr, `STIPPLE_LOG` (default warnings), plus the LoRA
/// debug log when asked for. The workstation logs to a file instead (never to its screen).
fn init_cli_logging() {
    let mut filter = std::env::var("STIPPLE_LOG").unwrap_or_else(|_| "warn,ort=error".into());
    if stipple::pipeline::adapters::lora_debug() {
        filter.push_str(",stipple::lora=info");
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_target(false)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.is_some() {
        init_cli_logging();
    }
    let result = match &cli.command {
        Some(Command::Generate(a)) => cmd_generate(&cli, a),
        Some(Command::Doctor(a)) => cmd_doctor(&cli, a),
        Some(Command::Batch(a)) => cmd_batch(&cli, a),
        Some(Command::Bench(a)) => cmd_bench(&cli, a),
        Some(Command::Lora(LoraCommand::Inspect(a))) => cmd_lora_inspect(a),
        Some(Command::Lora(LoraCommand::Merge(a))) => cmd_lora_merge(a),
        Some(Command::Lora(LoraCommand::Extract(a))) => cmd_lora_extract(a),
        Some(Command::Bake(a)) => cmd_bake(a),
        None => cmd_tui(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Prompt errors arrive rendered ("error: ... --> line 1, column 5 ..."): print them as they are.
            let msg = format!("{e:#}");
            if msg.starts_with("error") {
                eprintln!("{msg}");
            } else {
                eprintln!("error: {msg}");
            }
            ExitCode::from(1)
        }
    }
}
