//! The workstation (`stipple` without a subcommand): the shared resolve, then the TUI on an
//! engine that loads the model on the first job. The Settings toggle's LoRA method and the model
//! picker's model reach the engine through sinks read before each job ([`FollowMethod`]).

use super::error::{Classify, CliError};
use super::{resolve, TuiArgs};
use crate::engine::runners::{LazyGenerator, SavingRunner};
use crate::engine::{Outcome, Reporter, Runner};
use crate::job::Job;
use crate::live::LoraMethod;
use crate::pipeline::Dials;
use crate::runtime::Runtime;
use crate::tui::MethodSink;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub fn run(a: &TuiArgs, ort_lib: Option<&Path>) -> Result<(), CliError> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(
            "the workstation needs a terminal; for scripts use `stipple generate` or `stipple batch`"
                .into(),
        ));
    }
    let dirs = crate::config::Dirs::discover();
    let mut config = resolve::config(&dirs)?;
    if let Some(p) = &a.image_protocol {
        config.image.protocol = serde_json::from_value(serde_json::Value::String(p.clone()))
            .map_err(|_| {
                CliError::Usage(format!(
                    "--image-protocol {p}: use auto, kitty, sixel, iterm2, halfblocks or off"
                ))
            })?;
    }
    // The hires fix's upscalers are pinned at each submit; one that cannot be read fails now, as
    // `generate --upscaler` fails.
    for p in &a.upscalers {
        crate::hires::pin_model(p).map_err(|e| CliError::Failed(e.to_string()))?;
    }
    let e = resolve::engine(&a.engine, ort_lib, &config)?;
    if e.devices.len() > 1 {
        return Err(CliError::Usage("the workstation runs on one device".into()));
    }
    // Check the model now (cheap: headers only); sessions are built on the first job.
    let model = resolve::open_model(&e)?;
    // The browser checks adapters against the same widths `generate` refuses by.
    let widths = crate::lora::family::ModelWidths::of(
        model.index.family,
        &crate::pipeline::adapters::target_params(&model),
    );
    let mut config = resolve::generation_defaults(config, &model, e.bundled);
    let in_use = crate::tui::app::ModelInUse {
        name: model.name(),
        path: e.model.clone(),
        family: Some(model.index.family.facts().name),
        start_family: Some(model.index.family.facts().name),
        loading: false,
    };
    drop(model);
    let models = model_picker(a, &config, &e.model);
    config.lora_folders = e.lora_dirs.clone();
    config.generation.lora_method = e.lora_method;
    let rt = Runtime::get(e.ort_lib.as_deref(), e.session.device.is_gpu()).failed()?;
    let out_dir = a.out.clone().unwrap_or_else(|| dirs.data.join("outputs"));
    let mut spec = e.spec();
    spec.previews = true;
    let inner = LazyGenerator::new(spec, rt);
    let method: MethodSink = Arc::new(Mutex::new(e.lora_method));
    let runner = FollowMethod {
        inner: SavingRunner::new(inner, out_dir),
        method: method.clone(),
        model: Some(models.sink.clone()),
    };
    let (engine, events) = crate::engine::Engine::spawn(runner);
    let keep = engine.clone();
    let mut opts = crate::tui::TuiOptions::new(config, dirs, Some(widths));
    opts.lora_method = Some(method);
    opts.models = Some(models);
    opts.model = in_use;
    opts.embedding_dirs = e.embedding_dirs.clone();
    opts.upscalers = a.upscalers.clone();
    let result = crate::tui::run(opts, engine, events);
    keep.shutdown_and_wait();
    result.failed()
}

/// Where the model picker looks: `model_folders` from the config, the checkpoint folders of
/// `--models-root` (or the config's `models_root`), and the start model with the other checkpoints beside it.
fn model_picker(a: &TuiArgs, config: &crate::config::Config, start: &Path) -> crate::tui::Models {
    let mut folders = config.model_folders.clone();
    // A bad root already stopped the start in `resolve::engine`.
    if let Ok(Some(r)) = resolve::models_root(&a.engine, config) {
        folders.extend(r.checkpoint_dirs());
    }
    let mut extra = vec![start.to_path_buf()];
    // Only a checkpoint's neighbours: the folder around a model folder may be anything.
    if let (true, Some(dir)) = (start.is_file(), start.parent()) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            extra.extend(rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| {
                p.extension()
                    .is_some_and(|x| x.eq_ignore_ascii_case("safetensors"))
            }));
        }
    }
    crate::tui::Models {
        folders,
        extra,
        ..crate::tui::Models::default()
    }
}

/// The workstation's runner: takes the LoRA method the Settings toggle last submitted with and
/// the model the picker last chose.
pub struct FollowMethod {
    pub inner: SavingRunner<LazyGenerator>,
    pub method: MethodSink,
    pub model: Option<crate::tui::ModelSink>,
}

impl FollowMethod {
    pub fn method(&self) -> LoraMethod {
        *self.method.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Runner for FollowMethod {
    fn run(&mut self, job: &Job, out: &Reporter<'_>) -> Outcome {
        let method = self.method();
        self.inner.inner.set_lora_method(method);
        let picked = self
            .model
            .as_ref()
            .and_then(|s| s.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(choice) = picked {
            self.inner.inner.set_model(choice.path, choice.keep_vae);
        }
        self.inner.run(job, out)
    }

    fn dials(&self) -> Option<Dials> {
        self.inner.dials()
    }
}
