//! The `stipple` command line: the clap structs ([`Cli`]), the shared [`flags`], the one
//! [`resolve`] step, one module per command, and [`run`], which dispatches and returns a typed
//! [`CliError`] whose [`CliError::exit_code`] is the process's exit status (0 done, 1 failed, 2 usage).

pub mod bake;
pub mod batch;
pub mod bench;
pub mod doctor;
pub mod error;
pub mod flags;
pub mod generate;
pub mod hires_flags;
pub mod lora;
pub mod prompt;
pub mod resolve;
pub mod upscale;
pub mod workstation;

pub use error::CliError;

use clap::{Args, Parser, Subcommand};
use flags::EngineFlags;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "stipple",
    version,
    about = "Stable Diffusion with LoRA-family adapters, in the terminal"
)]
pub struct Cli {
    /// The ONNX Runtime library (default: ORT_DYLIB_PATH, then .ort/ from scripts/setup)
    #[arg(long, global = true, value_name = "FILE")]
    pub ort_lib: Option<PathBuf>,
    #[command(flatten)]
    pub tui: TuiArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Flags of the workstation (`stipple` with no subcommand). The engine flags and `--out` also
/// work before `generate`, `batch` and `bench` (`stipple --lora-dir X generate ...`).
#[derive(Args)]
pub struct TuiArgs {
    #[command(flatten)]
    pub engine: EngineFlags,
    /// Where finished images are saved (default: `outputs` in stipple's data folder; for
    /// `generate` and `batch`: `out`)
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Picture protocol of the workstation: auto, kitty, sixel, iterm2 or halfblocks
    #[arg(long, value_name = "NAME")]
    pub image_protocol: Option<String>,
    /// An ONNX image upscaler the workstation's hires fix offers (repeatable)
    #[arg(long = "upscaler", value_name = "FILE.onnx")]
    pub upscalers: Vec<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Make images from a prompt, without the TUI
    Generate(Box<GenerateArgs>),
    /// Run a JSON-lines job file or a sweep on warm engines; resumable and shardable
    Batch(batch::BatchArgs),
    /// Check ONNX Runtime, execution providers and a model folder
    Doctor(doctor::DoctorArgs),
    /// Measure load time, UNet steps per second, VAE decode and a whole image
    Bench(bench::BenchArgs),
    /// Adapter files: inspect, merge, extract
    #[command(subcommand)]
    Lora(lora::LoraCommand),
    /// Write a model folder with adapters fused into its weights
    Bake(bake::BakeArgs),
    /// The prompt language: `prompt check TEXT` shows how a prompt parses, or its errors
    #[command(subcommand)]
    Prompt(prompt::PromptCommand),
    /// Upscale a picture with an ONNX image upscaler (e.g. Real-ESRGAN), in tiles
    Upscale(upscale::UpscaleArgs),
}

/// `generate`'s flags; what is not given comes from `[generation]` of the config.
#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub engine: EngineFlags,
    #[arg(long, short)]
    pub prompt: String,
    #[arg(long, short, default_value = "")]
    pub negative: String,
    /// Sampling steps (config: generation.steps; default: the model family's)
    #[arg(long)]
    pub steps: Option<u32>,
    /// Classifier-free guidance scale (config: generation.cfg)
    #[arg(long)]
    pub cfg: Option<f32>,
    /// Seed; -1 picks one at random, and the seed used is always reported (config: generation.seed)
    #[arg(long, allow_negative_numbers = true)]
    pub seed: Option<i64>,
    /// Euler, "Euler a", Heun, LMS, DDIM, "DPM++ 2M", "DPM++ 2M SDE", UniPC, LCM (or euler-a,
    /// dpmpp-2m-sde, ...); an old A1111 name with a schedule ("DPM++ 2M SDE Karras") sets both
    /// (config: generation.sampler)
    #[arg(long)]
    pub sampler: Option<String>,
    /// Schedule type: automatic, karras, exponential, sgm-uniform, simple, beta, ays (Align Your
    /// Steps), uniform (A1111's) (config: generation.schedule)
    #[arg(long)]
    pub schedule: Option<String>,
    /// Noise of the SDE samplers (DPM++ SDE, 2M SDE, 3M SDE): brownian (A1111's Brownian tree
    /// from the seed) or step (fresh noise every step, as diffusers) (config: generation.sde_noise)
    #[arg(long)]
    pub sde_noise: Option<String>,
    /// Sample with the noise schedule rescaled to zero terminal SNR (A1111's "Zero Terminal SNR"),
    /// for v-prediction models trained that way; pair it with --schedule sgm-uniform (trailing
    /// timesteps); --zero-snr=false turns the config's off (config: generation.zero_snr)
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub zero_snr: Option<bool>,
    /// Whose σ the schedule type means: diffusers (the default) or a1111 (A1111's, for its
    /// k-diffusion samplers) (config: generation.sigmas)
    #[arg(long)]
    pub sigmas: Option<String>,
    /// Image width in pixels, a multiple of 8 (config: generation.width; default: the model's)
    #[arg(long)]
    pub width: Option<u32>,
    /// Image height in pixels, a multiple of 8 (config: generation.height; default: the model's)
    #[arg(long)]
    pub height: Option<u32>,
    /// Images to make; image i uses seed + i (config: generation.batch)
    #[arg(long)]
    pub batch: Option<u32>,
    /// Output folder (default: out)
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Do not print the image in the terminal
    #[arg(long)]
    pub no_preview: bool,
    #[command(flatten)]
    pub init: InitFlags,
    #[command(flatten)]
    pub hires: hires_flags::HiresFlags,
}

/// `generate`'s image-to-image and inpainting flags.
#[derive(Args, Default)]
pub struct InitFlags {
    /// Start from this picture (PNG, JPEG, WebP): image-to-image, inpainting with --mask
    #[arg(long, value_name = "FILE")]
    pub init_image: Option<PathBuf>,
    /// How much of the picture is redrawn, 0 to 1 (diffusers' strength; default 0.75)
    #[arg(long, allow_negative_numbers = true)]
    pub denoise: Option<f64>,
    /// How the picture is fitted to --width × --height: just (stretch), crop, fill
    #[arg(long, value_name = "MODE")]
    pub resize_mode: Option<crate::init_image::ResizeMode>,
    /// Steps run for a denoise value: diffusers (int(steps × denoise)) or a1111 (one more)
    #[arg(long, value_name = "COUNT")]
    pub denoise_steps: Option<crate::init_image::StepCount>,
    /// Inpainting mask, white repaints (default: the init image's transparent pixels, if any)
    #[arg(long, value_name = "FILE")]
    pub mask: Option<PathBuf>,
    /// Gaussian blur of the mask in pixels before it is made binary
    #[arg(long, value_name = "N")]
    pub mask_blur: Option<u32>,
    /// What is redrawn: whole (the picture at the job's size) or masked (the mask's region plus
    /// --inpaint-padding at the job's size, pasted back over the picture; A1111's "Only masked")
    #[arg(long, value_name = "AREA")]
    pub inpaint_area: Option<crate::init_image::InpaintArea>,
    /// With --inpaint-area masked: pixels around the mask's bounding box redrawn too (default 32)
    #[arg(long, value_name = "PX", allow_negative_numbers = true)]
    pub inpaint_padding: Option<i64>,
    /// What the masked part starts from: original, fill (painted from the surroundings),
    /// latent-noise or latent-nothing
    #[arg(long, value_name = "CONTENT")]
    pub masked_content: Option<crate::init_image::MaskedContent>,
    /// Outpainting: pixels added left,right,up,down (e.g. 64,64,0,0); the new border repaints
    #[arg(long, value_name = "L,R,U,D", allow_hyphen_values = true)]
    pub outpaint: Option<crate::init_image::Outpaint>,
}

/// Runs the command `cli` names (the workstation without one).
pub fn run(cli: &Cli) -> Result<(), CliError> {
    let outer = &cli.tui;
    let ort_lib = cli.ort_lib.as_deref();
    let Some(command) = &cli.command else {
        return workstation::run(outer, ort_lib);
    };
    if outer.image_protocol.is_some() {
        return Err(CliError::Usage(
            "--image-protocol is a flag of the workstation (`stipple` without a subcommand)".into(),
        ));
    }
    if !outer.upscalers.is_empty() {
        return Err(CliError::Usage(
            "--upscaler before a subcommand is the workstation's; give it after `generate` or \
             `upscale`"
                .into(),
        ));
    }
    let takes_engine = matches!(
        command,
        Command::Generate(_) | Command::Batch(_) | Command::Bench(_)
    );
    if !takes_engine && (outer.engine.given() || outer.out.is_some()) {
        return Err(CliError::Usage(
            "the flags before the subcommand go with the workstation, generate, batch and bench; \
             put them after this subcommand"
                .into(),
        ));
    }
    match command {
        Command::Generate(a) => generate::run(a, outer, ort_lib),
        Command::Batch(a) => batch::run(a, outer, ort_lib),
        Command::Bench(a) => {
            if outer.out.is_some() {
                return Err(CliError::Usage(
                    "bench saves no images; --out does not apply".into(),
                ));
            }
            bench::run(a, &outer.engine, ort_lib)
        }
        Command::Doctor(a) => doctor::run(a, ort_lib),
        Command::Lora(c) => lora::run(c),
        Command::Bake(a) => bake::run(a),
        Command::Prompt(c) => prompt::run(c),
        Command::Upscale(a) => upscale::run(a, ort_lib),
    }
}

/// The bundled tiny model: next to the executable's project, or the source tree it was built from.
pub fn default_model() -> PathBuf {
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

/// Writes `text` to stdout; a closed pipe (`stipple doctor | head`) is not an error.
pub fn emit(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::failed(e)),
        _ => Ok(()),
    }
}

/// Logging for the command-line commands: stderr, `STIPPLE_LOG` (default warnings), plus the LoRA
/// debug log when asked for; colours only on a terminal. The workstation logs to a file instead.
pub fn init_logging() {
    use std::io::IsTerminal;
    let mut filter = std::env::var("STIPPLE_LOG").unwrap_or_else(|_| "warn,ort=error".into());
    if crate::pipeline::adapters::lora_debug() {
        filter.push_str(",stipple::lora=info");
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_target(false)
        .try_init();
}
