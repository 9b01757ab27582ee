//! `stipple batch`: many jobs per process start, from a JSON-lines file or a sweep, on warm engines
//! over one or several devices, resumable and shardable for cluster schedulers.
//!
//! Public surface: [`Request`] (what to run), [`Engines`] (what to run it on) and [`run`] (the whole
//! command; its flags live in the CLI). The parts: [`jobfile`]
//! (lines → entries), [`sweep`], [`shard`], [`plan`] (entries → jobs with hashes), [`naming`],
//! [`manifest`], [`store`] (atomic images), [`group`] (which jobs share UNet calls), [`pool`] (work
//! queue over engines), [`report`].

pub mod execute;
pub mod group;
pub mod hash;
pub mod jobfile;
pub mod manifest;
pub mod naming;
pub mod plan;
pub mod pool;
pub mod report;
pub mod shard;
mod signal;
pub mod store;
pub mod sweep;

/// What `stipple batch` runs: job lines from a file or a template, expanded over sweeps, one shard.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// JSON-lines job file (`-` is stdin).
    pub jobs: Option<std::path::PathBuf>,
    /// One job line given inline instead of a file.
    pub template: Option<String>,
    /// `NAME=VALUES` axes; they multiply.
    pub sweep: Vec<String>,
    /// Print the expanded jobs without running anything.
    pub dry_run: bool,
    /// `I/N`: run only that slice of the jobs.
    pub shard: Option<String>,
}

/// The engines a batch runs on: the spec of jobs that name no model (each engine swaps in its own
/// device and model), the devices, and where ONNX Runtime comes from.
#[derive(Debug, Clone)]
pub struct Engines {
    pub spec: crate::engine::EngineSpec,
    /// `spec.model` is the bundled tiny model (no `--model` given).
    pub bundled: bool,
    pub devices: Vec<crate::runtime::Device>,
    pub ort_lib: Option<std::path::PathBuf>,
}

use crate::prompt::LoraDirs;
use jobfile::{Entry, JobSpec, Origin};
use plan::{Defaults, Planned, Planner};
use report::{Reporter, ResultLine};
use shard::Shard;
use std::collections::HashMap;
use std::path::Path;
use sweep::Axis;

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("give a job file (or - for stdin), or --template")]
    NoJobs,
    #[error("--template: {0}")]
    Template(String),
    #[error(transparent)]
    Sweep(#[from] sweep::SweepError),
    #[error(transparent)]
    Shard(#[from] shard::ShardError),
    #[error(transparent)]
    Device(#[from] crate::runtime::ep::DeviceError),
    #[error(transparent)]
    Jobfile(#[from] jobfile::JobfileError),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("configuration key `generation.sampler`: {0}")]
    Config(String),
    #[error("{}", failed_text(*failed, *invalid, *total))]
    Failed {
        failed: usize,
        invalid: usize,
        total: usize,
    },
    #[error("interrupted: {done} jobs finished, {left} left for a rerun")]
    Interrupted { done: usize, left: usize },
}

/// `2 of 5 jobs failed; 1 job line is invalid (see above)`.
fn failed_text(failed: usize, invalid: usize, total: usize) -> String {
    let mut parts = Vec::new();
    if failed > 0 {
        parts.push(format!("{failed} of {total} jobs failed"));
    }
    match invalid {
        0 => {}
        1 => parts.push("1 job line is invalid".to_string()),
        n => parts.push(format!("{n} job lines are invalid")),
    }
    format!("{} (see above)", parts.join("; "))
}

/// One entry of this shard, resolved or not.
pub struct Item {
    pub origin: Origin,
    pub planned: Result<Planned, String>,
}

/// Runs `stipple batch` on `engine` (`engine.spec.model` is the model of jobs that name none), the
/// output folder and the config's `[generation]` defaults for job fields.
/// Returns an error when any job failed, so the exit status tells.
pub fn run(
    args: &Request,
    engine: &Engines,
    out: &Path,
    generation: &crate::config::GenerationConfig,
) -> Result<(), BatchError> {
    let shard: Shard = match &args.shard {
        Some(s) => s.parse()?,
        None => Shard::ALL,
    };
    let axes = args
        .sweep
        .iter()
        .map(|s| Axis::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let all = read_entries(args, &axes)?;
    let lora_dirs = LoraDirs::new(engine.spec.lora_dirs.clone());
    let defaults = Defaults::new(
        engine.spec.model.clone(),
        lora_dirs.clone(),
        generation,
        engine.bundled,
    )
    .map_err(BatchError::Config)?;
    let items = plan_shard(all, shard, defaults);
    let (finished, unreadable) = manifest::finished(out)?;
    let mut reporter = Reporter::without_bar();
    if unreadable > 0 {
        reporter.note(&format!(
            "stipple batch: {unreadable} unreadable manifest line(s) in {} ignored (a run killed while writing)",
            out.display()
        ));
    }
    if args.dry_run {
        return dry_run(&items, &finished, out, &mut reporter);
    }
    let opts = execute::Options {
        out: out.to_path_buf(),
        manifest: out.join(manifest::file_name(shard)),
        devices: engine.devices.clone(),
        session: engine.spec.session.clone(),
        lora_method: engine.spec.lora_method,
        unet_batch: engine.spec.unet_batch,
        lora_dirs,
        ort_lib: engine.ort_lib.clone(),
    };
    execute::execute(items, &finished, &opts)
}

fn read_entries(args: &Request, axes: &[Axis]) -> Result<Vec<Entry>, BatchError> {
    match (&args.jobs, &args.template) {
        (_, Some(t)) => {
            if t.contains('\n') {
                return Err(BatchError::Template("one JSON object on one line".into()));
            }
            let all = jobfile::entries("--template", t.as_bytes(), axes);
            if all.is_empty() {
                return Err(BatchError::Template("empty".into()));
            }
            Ok(all)
        }
        (Some(path), None) => {
            let text = jobfile::read_source(path)?;
            let name = if path == Path::new("-") {
                "stdin".to_string()
            } else {
                path.display().to_string()
            };
            Ok(jobfile::entries(&name, &text, axes))
        }
        (None, None) => Err(BatchError::NoJobs),
    }
}

/// This shard's entries, resolved. Positions count every entry of the file, the bad ones too, so
/// each bad line is reported by exactly one shard.
fn plan_shard(all: Vec<Entry>, shard: Shard, defaults: Defaults) -> Vec<Item> {
    let mut planner = Planner::new(defaults);
    all.into_iter()
        .enumerate()
        .filter(|(pos, _)| shard.owns(*pos))
        .map(|(_, e)| Item {
            planned: e.body.and_then(|x| {
                let spec = JobSpec::from_fields(&x.fields)?;
                planner.plan(spec, x.vars)
            }),
            origin: e.origin,
        })
        .collect()
}

pub fn invalid_line(origin: &Origin, reason: &str) -> ResultLine {
    ResultLine {
        status: "invalid",
        source: origin.source.clone(),
        line: origin.line,
        item: origin.item,
        error: Some(reason.to_string()),
        ..Default::default()
    }
}

fn dry_run(
    items: &[Item],
    finished: &std::collections::HashSet<String>,
    out: &Path,
    reporter: &mut Reporter,
) -> Result<(), BatchError> {
    let mut bad = 0;
    let mut seen: HashMap<&str, &Origin> = HashMap::new();
    for it in items {
        let p = match &it.planned {
            Ok(p) => p,
            Err(reason) => {
                bad += 1;
                reporter.note(&format!("{}: {reason}", it.origin));
                reporter.result(&invalid_line(&it.origin, reason));
                continue;
            }
        };
        let status = if finished.contains(&p.hash.0) {
            "finished"
        } else if seen.contains_key(p.hash.0.as_str()) {
            "duplicate"
        } else {
            "planned"
        };
        seen.entry(&p.hash.0).or_insert(&it.origin);
        let images = execute::image_names(p, &it.origin)
            .into_iter()
            .map(|(rel, seed, index)| manifest::ImageRecord {
                path: out.join(rel),
                seed,
                index,
            })
            .collect();
        reporter.result(&ResultLine {
            status,
            source: it.origin.source.clone(),
            line: it.origin.line,
            item: it.origin.item,
            hash: Some(p.hash.0.clone()),
            images,
            job: Some(p.job.clone()),
            model: Some(p.model.display().to_string()),
            vars: (!p.vars.is_empty()).then(|| p.vars.iter().cloned().collect()),
            ..Default::default()
        });
    }
    if bad > 0 {
        return Err(BatchError::Failed {
            failed: 0,
            invalid: bad,
            total: items.len(),
        });
    }
    Ok(())
}
