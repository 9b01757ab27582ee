//! Layered configuration: embedded defaults → the user's `config.toml` → `STIPPLE_*` environment
//! variables (`STIPPLE_GENERATION__STEPS=30`) → command-line flags, deserialized into [`Config`].
//! Folders follow XDG on Linux and macOS (etcetera); `STIPPLE_CONFIG_HOME` moves the config folder.

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
# Prompts kept in the history (Up/Down in the prompt editor).
history_size = 500

[image]
# How pictures are drawn: auto (ask the terminal), kitty, sixel, iterm2, halfblocks, off.
protocol = "auto"

[generation]
sampler = "Euler a"
steps = 20
cfg = 7.0
width = 512
height = 512
# -1 picks a new random seed for every job.
seed = -1
batch = 1
# fuse: adapters are merged into the weights; live: strengths can change while sampling.
lora_method = "fuse"
# Insert an adapter's trigger words with its tag.
trigger_words = true

# Replace the keys of an action: "context.action" = ["key", ...]; see the help overlay (F1).
[keys]
"#;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] ::config::ConfigError),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraMethod {
    Fuse,
    Live,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub protocol: ImageProtocol,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    /// A1111 name or slug; checked by [`Config::validate`].
    pub sampler: String,
    pub steps: u32,
    pub cfg: f32,
    pub width: u32,
    pub height: u32,
    /// `-1` for random.
    pub seed: i64,
    pub batch: u32,
    pub lora_method: LoraMethod,
    pub trigger_words: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub theme: String,
    pub lora_folders: Vec<PathBuf>,
    pub history_size: usize,
    pub image: ImageConfig,
    pub generation: GenerationConfig,
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
    /// Checks what serde cannot: value ranges and names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let g = &self.generation;
        g.sampler
            .parse::<crate::job::Sampler>()
            .map_err(|e| ConfigError::Invalid {
                key: "generation.sampler",
                message: e.to_string(),
            })?;
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
            (1..=1000).contains(&g.steps),
            "generation.steps",
            "must be 1..=1000",
        )?;
        check(
            g.cfg.is_finite() && g.cfg >= 0.0,
            "generation.cfg",
            "must be ≥ 0",
        )?;
        check(
            g.width % 8 == 0 && g.height % 8 == 0 && g.width >= 64 && g.height >= 64,
            "generation.width/height",
            "must be multiples of 8, at least 64",
        )?;
        check(
            (1..=64).contains(&g.batch),
            "generation.batch",
            "must be 1..=64",
        )?;
        check(
            g.seed >= -1,
            "generation.seed",
            "must be -1 (random) or a seed ≥ 0",
        )
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

/// The layering itself; `env: Some(map)` replaces the process environment (for tests).
pub fn load_layers(
    user_file: Option<&Path>,
    env: Option<HashMap<String, String>>,
    overrides: &[(&str, String)],
) -> Result<Config, ConfigError> {
    let mut b = ::config::Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
    if let Some(path) = user_file {
        b = b.add_source(File::from(path).format(FileFormat::Toml).required(false));
    }
    b = b.add_source(
        Environment::with_prefix("STIPPLE")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("lora_folders")
            .source(env),
    );
    for (key, value) in overrides {
        b = b.set_override(*key, value.as_str())?;
    }
    Ok(b.build()?.try_deserialize()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.generation.steps, 20);
        assert_eq!(c.image.protocol, ImageProtocol::Auto);
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
        assert_eq!(c.generation.width, 512);
    }

    #[test]
    fn bad_values_name_their_key() {
        let c = load_layers(
            None,
            Some(HashMap::new()),
            &[("generation.sampler", "heun".into())],
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("generation.sampler") && e.contains("heun"),
            "{e}"
        );
    }
}
