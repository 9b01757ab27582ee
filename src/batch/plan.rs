//! Resolving job-file entries into runnable jobs: defaults from the model folder, a seed when none
//! is given, the prompt and its `<lora:...>` tags checked, the job hash and the output name.
//!
//! [`Planner::plan`] does one entry; models and adapters are identified once per batch, not per job.

use super::hash::{derived_seed, file_identity, job_hash, model_identity, JobHash};
use super::jobfile::JobSpec;
use super::naming::OutName;
use crate::job::{parse_sampler, Job, Sampler, Schedule, SdeNoise, SigmaStyle, UnknownSchedule};
use crate::model::Model;
use crate::pipeline::validate_job;
use crate::prompt::{self, Catalog, LoraDirs};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// What the command line and the config's `[generation]` give every job that does not say
/// otherwise. Steps, width and height of 0 mean the model's own.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub model: PathBuf,
    /// `--lora-dir` folders, where `<lora:NAME>` is looked up.
    pub lora_dirs: LoraDirs,
    pub sampler: Sampler,
    pub schedule: Schedule,
    pub sde_noise: SdeNoise,
    /// `generation.zero_snr` or `--zero-snr`.
    pub zero_snr: bool,
    pub sigmas: SigmaStyle,
    pub steps: u32,
    pub cfg: f32,
    pub width: u32,
    pub height: u32,
    pub batch: u32,
}

impl Defaults {
    /// From `[generation]` of the config; with the bundled tiny model, its own size (a
    /// configured size is for real models). The config's seed is not used: a batch job's seed
    /// is fixed or derived from the job, so reruns find it.
    pub fn new(
        model: PathBuf,
        lora_dirs: LoraDirs,
        g: &crate::config::GenerationConfig,
        bundled: bool,
    ) -> Result<Defaults, String> {
        let (width, height) = if bundled { (0, 0) } else { (g.width, g.height) };
        let (sampler, suffix) = parse_sampler(&g.sampler).map_err(|e| e.to_string())?;
        let schedule = match suffix {
            Some(s) => s,
            None => g
                .schedule
                .parse()
                .map_err(|e: UnknownSchedule| e.to_string())?,
        };
        Ok(Defaults {
            model,
            lora_dirs,
            sampler,
            schedule,
            sde_noise: g.sde_noise,
            zero_snr: g.zero_snr,
            sigmas: g.sigmas,
            steps: g.steps,
            cfg: g.cfg,
            width,
            height,
            batch: g.batch,
        })
    }
}

/// A job ready to run.
#[derive(Debug, Clone)]
pub struct Planned {
    pub job: Job,
    pub model: PathBuf,
    pub hash: JobHash,
    pub out: OutName,
    /// Sweep variables that made this job (for the manifest).
    pub vars: Vec<(String, Value)>,
}

struct ModelFacts {
    width: u32,
    height: u32,
    steps: u32,
    family: crate::family::Family,
    identity: String,
}

/// Resolves entries; caches what it learns about models and adapters.
pub struct Planner {
    defaults: Defaults,
    models: HashMap<PathBuf, Result<ModelFacts, String>>,
    catalog: Option<Catalog>,
    adapters: HashMap<PathBuf, Result<String, String>>,
}

impl Planner {
    pub fn new(defaults: Defaults) -> Planner {
        Planner {
            defaults,
            models: HashMap::new(),
            catalog: None,
            adapters: HashMap::new(),
        }
    }

    pub fn plan(&mut self, spec: JobSpec, vars: Vec<(String, Value)>) -> Result<Planned, String> {
        let named: Option<Schedule> = spec
            .schedule
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| format!("schedule: {e}"))?;
        // An old A1111 name carries its schedule type (`DPM++ 2M SDE Karras`).
        let (sampler, schedule) = match &spec.sampler {
            Some(s) => {
                let (sampler, suffix) = parse_sampler(s).map_err(|e| e.to_string())?;
                match (suffix, named) {
                    (Some(a), Some(b)) if a != b => {
                        let msg = "says one schedule type and `schedule` another; give one";
                        return Err(format!("the sampler name ({a}) {msg} ({b})"));
                    }
                    (Some(a), _) | (None, Some(a)) => (sampler, a),
                    (None, None) => (sampler, self.defaults.schedule),
                }
            }
            None => (
                self.defaults.sampler,
                named.unwrap_or(self.defaults.schedule),
            ),
        };
        crate::pipeline::schedulers::check_schedule(sampler, schedule)
            .map_err(|e| e.to_string())?;
        let sde_noise = match spec.sde_noise.as_deref() {
            Some(v) => v
                .parse::<SdeNoise>()
                .map_err(|e| format!("sde_noise: {e}"))?,
            None => self.defaults.sde_noise,
        };
        let zero_snr = spec.zero_snr.unwrap_or(self.defaults.zero_snr);
        let sigmas = match spec.sigmas.as_deref() {
            Some(v) => v
                .parse::<SigmaStyle>()
                .map_err(|e| format!("sigmas: {e}"))?,
            None => self.defaults.sigmas,
        };
        if zero_snr {
            crate::pipeline::schedulers::check_zero_snr_sampler(sampler, sigmas)
                .map_err(|e| e.to_string())?;
        }
        let seed = match spec.seed {
            Some(s) if s < 0 => {
                return Err(format!(
                    "seed {s}: a batch job needs a fixed seed so a rerun can find it; \
                     leave `seed` out for one derived from the job"
                ))
            }
            other => other.map(|s| s as u64),
        };
        let model = spec
            .model
            .clone()
            .unwrap_or_else(|| self.defaults.model.clone());
        let d = (
            self.defaults.steps,
            self.defaults.cfg,
            self.defaults.width,
            self.defaults.height,
            self.defaults.batch,
        );
        let facts = self.model_facts(&model)?;
        let init = spec.init()?;
        let or_model = |v: u32, model: u32| if v == 0 { model } else { v };
        let (width, height) = (
            spec.width.unwrap_or(or_model(d.2, facts.width)),
            spec.height.unwrap_or(or_model(d.3, facts.height)),
        );
        let hires = spec.hires(width, height)?;
        let mut job = Job {
            prompt: spec.prompt,
            negative: spec.negative,
            sampler,
            schedule,
            sde_noise,
            zero_snr,
            sigmas,
            steps: spec.steps.unwrap_or(or_model(d.0, facts.steps)),
            cfg: spec.cfg.unwrap_or(d.1),
            width,
            height,
            seed: 0,
            batch: spec.batch.unwrap_or(d.4),
            init,
            hires,
        };
        let model_id = facts.identity.clone();
        let family = facts.family;
        job.seed = seed.unwrap_or_else(|| derived_seed(&job, &model_id));
        validate_job(&job).map_err(|e| plain(e.to_string()))?;
        if let Some(init) = &job.init {
            // The mask's size and region are checked before anything runs.
            crate::image::init::load(init, job.width, job.height)
                .map_err(|e| plain(e.to_string()))?;
        }
        let adapters = self.adapter_identities(&job, family)?;
        let out = OutName::parse(spec.out.as_deref(), job.batch).map_err(|e| e.to_string())?;
        Ok(Planned {
            hash: job_hash(&job, &model_id, &adapters),
            job,
            model,
            out,
            vars,
        })
    }

    fn model_facts(&mut self, dir: &Path) -> Result<&ModelFacts, String> {
        let facts = self.models.entry(dir.to_path_buf()).or_insert_with(|| {
            // Opening checks the folder (the same errors `generate` gives) without building sessions.
            let m = Model::open(dir)
                .map_err(|e| format!("cannot open the model {}: {e}", dir.display()))?;
            let (width, height) = m.default_size();
            let family = m.index.family.facts();
            let names: Vec<&str> = match m.source {
                // A diffusers folder keeps both VAE halves in `vae/`.
                crate::model::ModelSource::Diffusers { .. } => {
                    vec!["text_encoder", "text_encoder_2", "unet", "vae"]
                }
                _ => m.index.components.iter().map(|k| k.dir_name()).collect(),
            };
            let identity = model_identity(dir, &names).map_err(|e| e.to_string())?;
            Ok(ModelFacts {
                width,
                height,
                steps: family.default_steps,
                family: m.index.family,
                identity,
            })
        });
        facts.as_ref().map_err(Clone::clone)
    }

    /// `lbw=` vectors checked against the model's family, then each `<lora:NAME>` of the prompt resolved in the LoRA folders and fingerprinted, so editing an
    /// adapter file makes its jobs new jobs. A name that resolves nowhere fails the job here, before
    /// any model is loaded.
    fn adapter_identities(
        &mut self,
        job: &Job,
        family: crate::family::Family,
    ) -> Result<BTreeMap<String, String>, String> {
        let parsed = prompt::parse(&job.prompt).map_err(|e| plain(e.render(&job.prompt)))?;
        // `lbw=` layouts are per family: a wrong one fails the job here, not after a load.
        parsed
            .check_family(family)
            .map_err(|e| plain(e.render(&job.prompt)))?;
        let mut out = BTreeMap::new();
        if parsed.loras.is_empty() {
            return Ok(out);
        }
        let dirs = &self.defaults.lora_dirs;
        let catalog = self.catalog.get_or_insert_with(|| Catalog::scan(dirs));
        let resolved = catalog
            .resolve_prompt(&parsed)
            .map_err(|e| plain(e.render(&job.prompt)))?;
        for (tag, adapter) in resolved {
            let id = self
                .adapters
                .entry(adapter.path.clone())
                .or_insert_with(|| file_identity(&adapter.path).map_err(|e| e.to_string()))
                .clone()?;
            out.insert(tag.name.clone(), id);
        }
        Ok(out)
    }
}

/// A rendered prompt error without its leading `error: `: it is printed after `FILE:LINE: `.
fn plain(text: String) -> String {
    match text.strip_prefix("error: ") {
        Some(rest) => rest.trim_end().to_string(),
        None => text.trim_end().to_string(),
    }
}
