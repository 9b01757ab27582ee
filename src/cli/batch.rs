//! `stipple batch`: the shared resolve, then [`crate::batch::run`]; its errors sorted into usage
//! (flags, sweeps, shards, devices) and failures (files, jobs).

use super::error::CliError;
use super::{resolve, TuiArgs};
use crate::batch::{BatchArgs, BatchError};
use crate::config::Dirs;
use std::path::{Path, PathBuf};

pub fn run(a: &BatchArgs, outer: &TuiArgs, ort_lib: Option<&Path>) -> Result<(), CliError> {
    let config = resolve::config(&Dirs::discover())?;
    let engine = resolve::engine(&a.engine.under(&outer.engine), ort_lib, &config)?;
    let out = a
        .out
        .clone()
        .or_else(|| outer.out.clone())
        .unwrap_or_else(|| PathBuf::from("out"));
    crate::batch::run(a, &engine, &out, &config.generation).map_err(|e| match e {
        BatchError::NoJobs
        | BatchError::Template(_)
        | BatchError::Sweep(_)
        | BatchError::Shard(_)
        | BatchError::Device(_)
        | BatchError::Config(_) => CliError::usage(e),
        e => CliError::failed(e),
    })
}
