//! `stipple batch`: the shared resolve, then [`crate::batch::run`]; its errors sorted into usage
//! (flags, sweeps, shards, devices) and failures (files, jobs).

use super::error::CliError;
use super::{resolve, TuiArgs};
use crate::batch::{BatchError, Engines, Request};
use crate::config::Dirs;
use clap::Args;
use std::path::{Path, PathBuf};

pub fn run(a: &BatchArgs, outer: &TuiArgs, ort_lib: Option<&Path>) -> Result<(), CliError> {
    let config = resolve::config(&Dirs::discover())?;
    let engine = resolve::engine(&a.engine.under(&outer.engine), ort_lib, &config)?;
    let out = a
        .out
        .clone()
        .or_else(|| outer.out.clone())
        .unwrap_or_else(|| PathBuf::from("out"));
    let engines = Engines {
        spec: engine.spec(),
        bundled: engine.bundled,
        devices: engine.devices.clone(),
        ort_lib: engine.ort_lib.clone(),
    };
    let request = Request {
        jobs: a.jobs.clone(),
        template: a.template.clone(),
        sweep: a.sweep.clone(),
        dry_run: a.dry_run,
        shard: a.shard.clone(),
    };
    crate::batch::run(&request, &engines, &out, &config.generation).map_err(|e| match e {
        BatchError::NoJobs
        | BatchError::Template(_)
        | BatchError::Sweep(_)
        | BatchError::Shard(_)
        | BatchError::Device(_)
        | BatchError::Config(_) => CliError::usage(e),
        e => CliError::failed(e),
    })
}

/// The flags of `stipple batch`: its own (job file, sweeps, shard, dry run, output folder) and the
/// engine flags every command shares.
#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    /// Job file: JSON lines, one job per line (`-` reads stdin)
    #[arg(value_name = "JOBS")]
    pub jobs: Option<PathBuf>,
    /// One job line given inline instead of a file, e.g. '{"prompt": "a fox, {style}"}'
    #[arg(long, value_name = "JSON", conflicts_with = "jobs")]
    pub template: Option<String>,
    /// Expand every job over NAME=VALUES (seed=1..8, s=0,0.5,1, or a JSON array); repeatable,
    /// the axes multiply
    #[arg(long, value_name = "NAME=VALUES")]
    pub sweep: Vec<String>,
    /// Print the expanded jobs (with their hashes and output names) without running anything
    #[arg(long)]
    pub dry_run: bool,
    /// Run only slice I of N of the jobs (1-based), e.g. 2/8, for job arrays on a cluster
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Output folder (default: out); also holds the manifest (results.jsonl) that reruns use to
    /// skip finished jobs
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// The model for jobs that do not name one, the devices to spread the jobs over (one engine
    /// each), and the rest of the load-time flags every command shares
    #[command(flatten)]
    pub engine: super::flags::EngineFlags,
}
