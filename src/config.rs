//! Layered configuration: embedded defaults → the user's `config.toml` → `STIPPLE_*` environment
//! variables (`STIPPLE_GENERATION__STEPS=30`) → command-line flags, deserialized into [`Config`].
//! Folders follow XDG on Linux and macOS (etcetera); `STIPPLE_CONFIG_HOME` moves the config folder.
//! A key the defaults do not define (in the file, or as `STIPPLE_SECTION__KEY`) is an error that
//! names the closest known key.

pub use crate::live::LoraMethod;
use crate::runtime::CudaOptions;
use ::config::{Environment, File, FileFormat};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The shipped defaults, also what `stipple --print-default-config` would show.
pub const DEFAULTS: &str = r#"# stipple configuration. Copy to ~/.config/stipple/config.toml and change what you need.

# A built-in theme (dark, light, base16) or a file <name>.toml in ~/.config/stipple/themes/.
theme = "dark"
# Folders searched for LoRA-family adapters (*.safetensors), in order.
lora_folders = []
# Folders the workstation's model picker (F9) lists checkpoints and model folders from, besides
# --models-root's and the start model's own folder.
model_folders = []
# An A1111, Forge, SD.Next or ComfyUI install whose checkpoints, VAEs, LoRAs and embeddings are
# found by name (what --models-root gives, which wins over this); "" for none.
models_root = ""
# Folders searched for textual-inversion embeddings (*.safetensors), used by file name in prompts.
embedding_folders = []
# Prompts kept in the history (Up/Down in the prompt editor).
history_size = 500

[image]
# How pictures are drawn: auto (ask the terminal), kitty, sixel, iterm2, halfblocks, off.
protocol = "auto"

[generation]
# A1111's name or a short one (euler-a, dpmpp-2m-sde, unipc, ...); `stipple generate --help` lists them.
sampler = "Euler a"
# Schedule type: automatic (the sampler's own), karras, exponential, sgm-uniform, simple, beta, ays,
# uniform.
schedule = "automatic"
# Noise of the SDE samplers (DPM++ SDE, 2M SDE, 3M SDE): brownian (A1111's Brownian tree from the seed)
# or step (fresh noise from the seed's generator every step, as diffusers).
sde_noise = "brownian"
# Rescale the noise schedule to zero terminal SNR (A1111's "Zero Terminal SNR"), for v-prediction
# models trained that way; a model whose scheduler config says `rescale_betas_zero_snr` gets it anyway.
zero_snr = false
# Whose σ a schedule type means for the k-diffusion samplers: diffusers (the default) or a1111
# (A1111 1.10's: its Automatic per sampler, the whole training range, ...; see the README).
sigmas = "diffusers"
# Sampling steps; 0 = the model family's (20 for SD 1.x, 30 for SDXL).
steps = 0
cfg = 7.0
# Image size in pixels; 0 = the model's own (512 for SD1.x, 1024 for SDXL).
width = 0
height = 0
# -1 picks a new random seed for every job.
seed = -1
batch = 1
# At most this many images go through the UNet together: the images of a job, and in
# `stipple batch` the images of compatible jobs (--unet-batch). 1 makes one image at a time.
unet_batch = 4
# fuse: static adapters are merged into the weights, scheduled or dialled ones run live;
# live: every adapter runs live; refuse: everything merged, re-merged when a strength changes.
lora_method = "fuse"
# Insert an adapter's trigger words with its tag.
trigger_words = true
# Compute precision of the VAE and of the text encoders (--vae-precision, --te-precision): auto (fp16
# on a GPU where it is safe, fp32 on the CPU; an overflow is redone in fp32; of the text encoders
# only SD 1.x's go fp16 under auto, on CUDA, until the others are checked on a GPU), fp16 or fp32.
vae_precision = "auto"
te_precision = "auto"

# What the workstation's image-to-image and inpainting settings (F4) start from; `generate` and
# `batch` take these as flags and job fields instead.
[img2img]
# How much of the picture is redrawn, 0 to 1.
denoise = 0.75
# σ in pixels of the Gaussian blur of the mask before it is made binary (PIL's, as A1111), 0 to 64.
mask_blur = 4
# whole (the picture fitted to the job's size) or masked (A1111's "Only masked").
inpaint_area = "whole"
# With inpaint_area = "masked": pixels around the mask's box redrawn too, 0 to 1024.
inpaint_padding = 32
# What the masked part starts from: original, fill, latent-noise or latent-nothing.
masked_content = "original"

# CUDA execution provider (--device cuda:N); other devices ignore this section.
[cuda]
# How cuDNN picks convolution algorithms: heuristic (quick start), exhaustive (times every
# algorithm on the first step of each shape: slow start, more memory) or default (least memory).
conv_algo_search = "heuristic"
# Cap on ONNX Runtime's GPU memory arena in GiB; 0 = no cap.
memory_limit_gb = 0
# Capture the UNet as a CUDA graph and replay it every step. Forces static shapes (a new size or
# prompt length rebuilds the UNet) and cannot run adapters live (schedules, dials, lora_method live).
cuda_graph = false
# Replay the device patch's program (--patch-on device: adapter swaps, strength changes and
# schedules computed on the GPU) as a CUDA graph; false runs it operation by operation.
patch_graph = true
# TensorFloat-32 math on Ampere and newer GPUs; false gives full fp32 precision, a little slower.
tf32 = true
# cuDNN's fused convolution + bias in the fused UNet and VAE graphs (one kernel instead of two):
# a little faster per step and decode, but cuDNN plans every convolution at the first run of each new
# size (seconds: slow start), so it pays off in long runs of one size (stipple batch).
fuse_conv_bias = false

# Replace the keys of an action: "context.action" = ["key", ...]; see the help overlay (F1).
[keys]
"#;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // Not marked as the source: the message already holds it, and `{:#}` would print it twice.
    #[error("configuration: {0}")]
    Load(::config::ConfigError),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("configuration: unknown key `{key}` in {origin}{hint}")]
    UnknownKey {
        key: String,
        origin: String,
        /// `; did you mean `generation.steps`?`, or empty.
        hint: String,
    },
    #[error("configuration: {path}: {message}")]
    File { path: PathBuf, message: String },
}

impl From<::config::ConfigError> for ConfigError {
    fn from(e: ::config::ConfigError) -> Self {
        ConfigError::Load(e)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageProtocol {
    Auto,
    Kitty,
    Sixel,
    Iterm2,
    Halfblocks,
    Off,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub protocol: ImageProtocol,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    /// A1111 name or slug; checked by [`Config::validate`].
    pub sampler: String,
    /// A1111's "Schedule type" or its slug; checked by [`Config::validate`].
    pub schedule: String,
    /// The SDE samplers' noise (`brownian` or `step`).
    #[serde(default)]
    pub sde_noise: crate::job::SdeNoise,
    /// Zero terminal SNR for every job (`--zero-snr`).
    #[serde(default)]
    pub zero_snr: bool,
    /// Whose σ the schedule types mean (`diffusers` or `a1111`).
    #[serde(default)]
    pub sigmas: crate::job::SigmaStyle,
    /// 0 = the model family's default (filled in when the model is known).
    pub steps: u32,
    pub cfg: f32,
    /// Pixels; 0 = the model's default size (filled in when the model is known).
    pub width: u32,
    pub height: u32,
    /// `-1` for random.
    pub seed: i64,
    pub batch: u32,
    /// Images per UNet call at most (a job's batch, or compatible jobs of `stipple batch`).
    pub unet_batch: u32,
    pub lora_method: LoraMethod,
    pub trigger_words: bool,
    /// `--vae-precision`'s default.
    #[serde(default)]
    pub vae_precision: crate::runtime::session::VaePrecision,
    /// `--te-precision`'s default.
    #[serde(default)]
    pub te_precision: crate::runtime::session::TePrecision,
}

/// `[img2img]`: the workstation's starting image-to-image and inpainting settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Img2imgConfig {
    pub denoise: f64,
    pub mask_blur: u32,
    pub inpaint_area: crate::init_image::InpaintArea,
    pub inpaint_padding: u32,
    pub masked_content: crate::init_image::MaskedContent,
}

/// `[cuda]`: what CUDA sessions are built with (see [`crate::runtime::CudaOptions`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CudaConfig {
    /// heuristic, exhaustive or default; checked by [`CudaConfig::options`].
    pub conv_algo_search: String,
    /// GiB, 0 for no cap.
    pub memory_limit_gb: f64,
    pub cuda_graph: bool,
    pub patch_graph: bool,
    pub tf32: bool,
    pub fuse_conv_bias: bool,
}

impl CudaConfig {
    /// The section as session options; a bad value is an error naming its key.
    pub fn options(&self) -> Result<CudaOptions, ConfigError> {
        let conv_algo_search =
            self.conv_algo_search
                .parse()
                .map_err(|message| ConfigError::Invalid {
                    key: "cuda.conv_algo_search",
                    message,
                })?;
        let o = CudaOptions {
            conv_algo_search,
            memory_limit_gb: self.memory_limit_gb,
            cuda_graph: self.cuda_graph,
            patch_graph: self.patch_graph,
            tf32: self.tf32,
            fuse_conv_bias: self.fuse_conv_bias,
            fused_graph: false,
        };
        o.validate().map_err(|e| ConfigError::Invalid {
            key: "cuda.memory_limit_gb",
            message: e.message,
        })?;
        Ok(o)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub theme: String,
    pub lora_folders: Vec<PathBuf>,
    pub model_folders: Vec<PathBuf>,
    /// `--models-root`'s default; empty for none (see [`Config::models_root`]).
    #[serde(default)]
    pub models_root: PathBuf,
    #[serde(default)]
    pub embedding_folders: Vec<PathBuf>,
    pub history_size: usize,
    pub image: ImageConfig,
    pub generation: GenerationConfig,
    pub img2img: Img2imgConfig,
    pub cuda: CudaConfig,
    #[serde(default)]
    pub keys: BTreeMap<String, Vec<String>>,
}

impl Default for Config {
    fn default() -> Self {
        // The embedded defaults are checked by a test, so this cannot fail in a released build.
        load_layers(None, Some(HashMap::new()), &[])
            .unwrap_or_else(|e| panic!("built-in defaults: {e}"))
    }
}

impl Config {
    /// The configured models root, `None` when the key is empty (the default).
    pub fn models_root(&self) -> Option<&Path> {
        (!self.models_root.as_os_str().is_empty()).then_some(self.models_root.as_path())
    }

    /// Fills a width or height of 0 (the default) with the model's own size.
    pub fn with_model_size(mut self, (w, h): (u32, u32)) -> Config {
        if self.generation.width == 0 {
            self.generation.width = w;
        }
        if self.generation.height == 0 {
            self.generation.height = h;
        }
        self
    }

    /// Fills steps of 0 (the default) with the model family's.
    pub fn with_model_steps(mut self, steps: u32) -> Config {
        if self.generation.steps == 0 {
            self.generation.steps = steps;
        }
        self
    }

    /// Checks what serde cannot: value ranges and names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let g = &self.generation;
        let (sampler, suffix) =
            crate::job::parse_sampler(&g.sampler).map_err(|e| ConfigError::Invalid {
                key: "generation.sampler",
                message: e.to_string(),
            })?;
        let schedule =
            g.schedule
                .parse::<crate::job::Schedule>()
                .map_err(|e| ConfigError::Invalid {
                    key: "generation.schedule",
                    message: e.to_string(),
                })?;
        crate::pipeline::schedulers::check_schedule(sampler, suffix.unwrap_or(schedule)).map_err(
            |e| ConfigError::Invalid {
                key: "generation.schedule",
                message: e.to_string(),
            },
        )?;
        let check = |ok: bool, key: &'static str, message: &str| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    key,
                    message: message.into(),
                })
            }
        };
        check(
            g.steps <= 1000,
            "generation.steps",
            "must be 1..=1000 (or 0 for the model family's)",
        )?;
        check(
            g.cfg.is_finite() && g.cfg >= 0.0,
            "generation.cfg",
            "must be ≥ 0",
        )?;
        let size_ok = |v: u32| v == 0 || (v.is_multiple_of(8) && v >= 64);
        check(
            size_ok(g.width) && size_ok(g.height),
            "generation.width/height",
            "must be multiples of 8, at least 64 (or 0 for the model's own size)",
        )?;
        check(
            (1..=64).contains(&g.batch),
            "generation.batch",
            "must be 1..=64",
        )?;
        check(
            (1..=64).contains(&g.unet_batch),
            "generation.unet_batch",
            "must be 1..=64",
        )?;
        check(
            g.seed >= -1,
            "generation.seed",
            "must be -1 (random) or a seed ≥ 0",
        )?;
        let i = &self.img2img;
        check(
            (0.0..=1.0).contains(&i.denoise),
            "img2img.denoise",
            "must be 0 to 1",
        )?;
        check(i.mask_blur <= 64, "img2img.mask_blur", "must be 0 to 64")?;
        check(
            i.inpaint_padding <= 1024,
            "img2img.inpaint_padding",
            "must be 0 to 1024",
        )?;
        self.cuda.options().map(drop)
    }
}

/// Where stipple keeps its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirs {
    /// `config.toml` and `themes/`.
    pub config: PathBuf,
    /// Prompt history.
    pub data: PathBuf,
    /// Logs.
    pub state: PathBuf,
}

impl Dirs {
    /// XDG folders (also on macOS, where SSH users expect them), with `STIPPLE_CONFIG_HOME` winning.
    pub fn discover() -> Dirs {
        use etcetera::app_strategy::{AppStrategy, AppStrategyArgs};
        let strategy = etcetera::app_strategy::choose_app_strategy(AppStrategyArgs {
            top_level_domain: "org".into(),
            author: "stipple".into(),
            app_name: "stipple".into(),
        });
        let fallback = std::env::temp_dir().join("stipple");
        let (config, data, state) = match strategy {
            Ok(s) => {
                let data = s.data_dir();
                let state = s.state_dir().unwrap_or_else(|| data.clone());
                (s.config_dir(), data, state)
            }
            Err(_) => (fallback.clone(), fallback.clone(), fallback),
        };
        let config = std::env::var_os("STIPPLE_CONFIG_HOME").map_or(config, PathBuf::from);
        Dirs {
            config,
            data,
            state,
        }
    }

    pub fn config_file(&self) -> PathBuf {
        self.config.join("config.toml")
    }

    pub fn themes(&self) -> PathBuf {
        self.config.join("themes")
    }
}

/// Loads the configuration: defaults, the user's file in `dirs`, the process environment, then
/// `overrides` (`("generation.steps", "30")`, one per flag the user gave).
pub fn load(dirs: &Dirs, overrides: &[(&str, String)]) -> Result<Config, ConfigError> {
    let cfg = load_layers(Some(&dirs.config_file()), None, overrides)?;
    cfg.validate()?;
    Ok(cfg)
}

/// Only the `[cuda]` section, layered like [`load`] and checked: what the headless commands
/// (`generate`, `bench`, `batch`) read, so a mistake in a section they do not use stops nothing.
pub fn load_cuda(dirs: &Dirs) -> Result<CudaOptions, ConfigError> {
    cuda_layers(Some(&dirs.config_file()), None)
}

/// [`load_cuda`] from given layers; `env: Some(map)` replaces the process environment (for tests).
pub fn cuda_layers(
    user_file: Option<&Path>,
    env: Option<HashMap<String, String>>,
) -> Result<CudaOptions, ConfigError> {
    cuda_section(&layers(user_file, env, &[])?)?.options()
}

/// `[cuda]` read key by key, so that a value of the wrong type is reported with its full key
/// (`cuda.cuda_graph`), not just `cuda` as a deserialization of the whole section would.
fn cuda_section(c: &::config::Config) -> Result<CudaConfig, ConfigError> {
    Ok(CudaConfig {
        conv_algo_search: c.get("cuda.conv_algo_search")?,
        memory_limit_gb: c.get("cuda.memory_limit_gb")?,
        cuda_graph: c.get("cuda.cuda_graph")?,
        patch_graph: c.get("cuda.patch_graph")?,
        tf32: c.get("cuda.tf32")?,
        fuse_conv_bias: c.get("cuda.fuse_conv_bias")?,
    })
}

/// The layering itself; `env: Some(map)` replaces the process environment (for tests).
pub fn load_layers(
    user_file: Option<&Path>,
    env: Option<HashMap<String, String>>,
    overrides: &[(&str, String)],
) -> Result<Config, ConfigError> {
    let c = layers(user_file, env, overrides)?;
    cuda_section(&c)?;
    Ok(c.try_deserialize()?)
}

fn layers(
    user_file: Option<&Path>,
    env: Option<HashMap<String, String>>,
    overrides: &[(&str, String)],
) -> Result<::config::Config, ConfigError> {
    let mut b = ::config::Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
    let known = known_keys();
    if let Some(text) = user_file.map(read_user_file).transpose()?.flatten() {
        let path = user_file.unwrap_or(Path::new("config.toml"));
        let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        check_table(&table, "", &known, &path.display().to_string())?;
        b = b.add_source(File::from_str(&text, FileFormat::Toml));
    }
    check_env(env.as_ref(), &known)?;
    b = b.add_source(
        Environment::with_prefix("STIPPLE")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("lora_folders")
            .with_list_parse_key("model_folders")
            .with_list_parse_key("embedding_folders")
            .source(env),
    );
    for (key, value) in overrides {
        b = b.set_override(*key, value.as_str())?;
    }
    Ok(b.build()?)
}

/// The user's file, or `None` when there is none (it is optional).
fn read_user_file(path: &Path) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

/// Every key of the defaults, dotted (`generation.steps`); the tables themselves too.
fn known_keys() -> Vec<String> {
    fn walk(t: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (k, v) in t {
            let key = format!("{prefix}{k}");
            if let toml::Value::Table(sub) = v {
                walk(sub, &format!("{key}."), out);
            }
            out.push(key);
        }
    }
    let mut out = Vec::new();
    if let Ok(t) = toml::from_str::<toml::Table>(DEFAULTS) {
        walk(&t, "", &mut out);
    }
    out
}

/// `key` is unknown: the error, with the closest key of the same section when one is close.
fn unknown(
    key: &str,
    origin: &str,
    known: &[String],
    shown: impl Fn(&str) -> String,
) -> ConfigError {
    let split = |k: &str| -> (String, String) {
        match k.rsplit_once('.') {
            Some((p, l)) => (format!("{p}."), l.to_string()),
            None => (String::new(), k.to_string()),
        }
    };
    let (parent, leaf) = split(key);
    let siblings: Vec<String> = known
        .iter()
        .map(|k| split(k))
        .filter(|(p, _)| *p == parent)
        .map(|(_, l)| l)
        .collect();
    let hint = crate::prompt::did_you_mean(&leaf, siblings.iter().map(String::as_str))
        .map(|mut h| {
            // Name the candidates as the user writes them (a full key, or a variable).
            for l in &siblings {
                h = h.replace(
                    &format!("`{l}`"),
                    &format!("`{}`", shown(&format!("{parent}{l}"))),
                );
            }
            format!("; {h}")
        })
        .unwrap_or_default();
    ConfigError::UnknownKey {
        key: shown(key),
        origin: origin.to_string(),
        hint,
    }
}

/// Every key of the user's file must be one the defaults define; `[keys]` holds key bindings.
fn check_table(
    t: &toml::Table,
    prefix: &str,
    known: &[String],
    origin: &str,
) -> Result<(), ConfigError> {
    for (k, v) in t {
        let key = format!("{prefix}{k}");
        if !known.contains(&key) {
            return Err(unknown(&key, origin, known, str::to_string));
        }
        if let (toml::Value::Table(sub), false) = (v, key == "keys") {
            check_table(sub, &format!("{key}."), known, origin)?;
        }
    }
    Ok(())
}

/// `STIPPLE_SECTION__KEY` variables must name a known key. Variables without `__` are also
/// stipple's other settings (`STIPPLE_LOG`, `STIPPLE_LORA_DIRS`), so only those are checked.
fn check_env(env: Option<&HashMap<String, String>>, known: &[String]) -> Result<(), ConfigError> {
    let vars: Vec<String> = match env {
        Some(m) => m.keys().cloned().collect(),
        None => std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect(),
    };
    let to_env = |k: &str| format!("STIPPLE_{}", k.to_uppercase().replace('.', "__"));
    for var in vars {
        let Some(rest) = var.strip_prefix("STIPPLE_") else {
            continue;
        };
        if !rest.contains("__") || rest.to_lowercase().starts_with("keys__") {
            continue;
        }
        let key = rest.to_lowercase().replace("__", ".");
        if !known.contains(&key) {
            return Err(unknown(&key, "the environment", known, to_env));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.generation.steps, 0, "0 = the model family's");
        assert_eq!(c.clone().with_model_steps(30).generation.steps, 30);
        assert_eq!(c.image.protocol, ImageProtocol::Auto);
        assert_eq!(c.models_root(), None, "no models root unless one is set");
    }

    #[test]
    fn models_root_comes_from_the_file_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "models_root = \"/srv/webui\"\n").unwrap();
        let c = load_layers(Some(&file), Some(HashMap::new()), &[]).unwrap();
        assert_eq!(c.models_root(), Some(Path::new("/srv/webui")));
        let env = HashMap::from([("STIPPLE_MODELS_ROOT".to_string(), "/opt/comfy".to_string())]);
        let c = load_layers(Some(&file), Some(env), &[]).unwrap();
        assert_eq!(c.models_root(), Some(Path::new("/opt/comfy")));
        std::fs::write(&file, "models_roots = \"/srv/webui\"\n").unwrap();
        let e = load_layers(Some(&file), Some(HashMap::new()), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`models_root`"), "{e}");
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "theme = \"light\"\n[generation]\nsteps = 30\ncfg = 5.0\n",
        )
        .unwrap();
        let env = HashMap::from([
            ("STIPPLE_GENERATION__STEPS".to_string(), "40".to_string()),
            ("STIPPLE_LORA_FOLDERS".to_string(), "/a,/b".to_string()),
        ]);
        let c = load_layers(Some(&file), Some(env), &[("generation.cfg", "9".into())]).unwrap();
        assert_eq!(c.theme, "light");
        assert_eq!(c.generation.steps, 40);
        assert_eq!(c.generation.cfg, 9.0);
        assert_eq!(
            c.lora_folders,
            vec![PathBuf::from("/a"), PathBuf::from("/b")]
        );
        assert_eq!(c.generation.width, 0, "0 = the model's own size");
    }

    #[test]
    fn bad_values_name_their_key() {
        let c = load_layers(
            None,
            Some(HashMap::new()),
            &[("generation.sampler", "hune".into())],
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("generation.sampler") && e.contains("hune"),
            "{e}"
        );
        for (sampler, schedule, bad) in [
            ("Euler", "karas", "karas"),
            ("DDIM", "karras", "DDIM"),
            ("DDIM Karras", "automatic", "DDIM"),
        ] {
            let c = load_layers(
                None,
                Some(HashMap::new()),
                &[
                    ("generation.sampler", sampler.into()),
                    ("generation.schedule", schedule.into()),
                ],
            )
            .unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("generation.schedule") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn the_img2img_section_has_defaults_layers_and_ranges() {
        use crate::init_image::{InpaintArea, MaskedContent};
        let c = Config::default();
        assert_eq!(
            (
                c.img2img.denoise,
                c.img2img.mask_blur,
                c.img2img.inpaint_area,
                c.img2img.inpaint_padding,
                c.img2img.masked_content
            ),
            (0.75, 4, InpaintArea::Whole, 32, MaskedContent::Original)
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "[img2img]\ninpaint_area = \"masked\"\nmasked_content = \"latent-noise\"\n",
        )
        .unwrap();
        let env = HashMap::from([(
            "STIPPLE_IMG2IMG__INPAINT_PADDING".to_string(),
            "8".to_string(),
        )]);
        let c = load_layers(Some(&file), Some(env), &[]).unwrap();
        c.validate().unwrap();
        assert_eq!(
            (
                c.img2img.inpaint_area,
                c.img2img.inpaint_padding,
                c.img2img.masked_content
            ),
            (InpaintArea::Masked, 8, MaskedContent::LatentNoise)
        );
        for (key, value) in [
            ("img2img.denoise", "1.5"),
            ("img2img.mask_blur", "65"),
            ("img2img.inpaint_padding", "2000"),
        ] {
            let c = load_layers(None, Some(HashMap::new()), &[(key, value.into())]).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        std::fs::write(&file, "[img2img]\nmasked_content = \"noise\"\n").unwrap();
        assert!(load_layers(Some(&file), Some(HashMap::new()), &[]).is_err());
    }

    #[test]
    fn the_cuda_section_has_defaults_and_layers() {
        let c = Config::default();
        let o = c.cuda.options().unwrap();
        assert_eq!(o, CudaOptions::default());
        assert_eq!(cuda_layers(None, Some(HashMap::new())).unwrap(), o);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "[cuda]\nconv_algo_search = \"Exhaustive\"\nmemory_limit_gb = 7.5\ncuda_graph = true\n\
             patch_graph = false\n",
        )
        .unwrap();
        let env = HashMap::from([("STIPPLE_CUDA__TF32".to_string(), "false".to_string())]);
        let o = cuda_layers(Some(&file), Some(env.clone())).unwrap();
        assert_eq!(
            o.conv_algo_search,
            crate::runtime::ConvAlgoSearch::Exhaustive
        );
        assert_eq!(o.memory_limit_bytes(), Some(7 * (1 << 30) + (1 << 29)));
        assert!(o.cuda_graph);
        assert!(!o.patch_graph);
        assert!(!o.tf32);
        // The whole configuration agrees with the section read alone.
        let c = load_layers(Some(&file), Some(env), &[]).unwrap();
        c.validate().unwrap();
        assert_eq!(c.cuda.options().unwrap(), o);
        // An integer limit from the environment is read as GiB too.
        let env = HashMap::from([(
            "STIPPLE_CUDA__MEMORY_LIMIT_GB".to_string(),
            "12".to_string(),
        )]);
        let o = cuda_layers(None, Some(env)).unwrap();
        assert_eq!(o.memory_limit_bytes(), Some(12 << 30));
    }

    #[test]
    fn bad_cuda_values_name_their_key() {
        let cases: [(&str, &str, &str); 4] = [
            (
                "conv_algo_search = \"fast\"",
                "cuda.conv_algo_search",
                "exhaustive",
            ),
            ("memory_limit_gb = -2", "cuda.memory_limit_gb", "GiB"),
            (
                "memory_limit_gb = 24000000000",
                "cuda.memory_limit_gb",
                "not bytes",
            ),
            ("cuda_graph = \"sometimes\"", "cuda.cuda_graph", "bool"),
        ];
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        for (line, key, hint) in cases {
            std::fs::write(&file, format!("[cuda]\n{line}\n")).unwrap();
            let e = cuda_layers(Some(&file), Some(HashMap::new()))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains(hint), "{line}: {e}");
            // The workstation reads the whole file: the same error.
            let whole = load_layers(Some(&file), Some(HashMap::new()), &[])
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map_err(|e| e.to_string()))
                .unwrap_err();
            assert!(whole.contains(key), "{line}: {whole}");
        }
    }
}
