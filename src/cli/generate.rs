//! `stipple generate`: resolve, print the prompt's warnings, load, run headless (see
//! [`crate::headless`]), and report the seed used.

use super::error::{Classify, CliError};
use super::resolve::{self, EngineSettings};
use super::{GenerateArgs, TuiArgs};
use crate::config::Dirs;
use crate::headless::HeadlessError;
use crate::pipeline::Generator;
use crate::runtime::Runtime;
use std::path::{Path, PathBuf};

pub fn run(a: &GenerateArgs, outer: &TuiArgs, ort_lib: Option<&Path>) -> Result<(), CliError> {
    let (r, model) = resolve::generate(a, &outer.engine, ort_lib, &Dirs::discover())?;
    for w in &r.warnings {
        eprintln!("{}", w.trim_end());
    }
    tracing::debug!(engine = ?r.engine, job = ?r.job, "resolved");
    let out_dir = a
        .out
        .clone()
        .or_else(|| outer.out.clone())
        .unwrap_or_else(|| PathBuf::from("out"));
    let generator = load_opened(&r.engine, model)?;
    eprintln!("seed {}", r.job.seed);
    crate::headless::generate(
        generator,
        crate::headless::GenerateArgs {
            job: r.job,
            out_dir,
            preview: !a.no_preview,
        },
    )
    .map_err(|e| match e {
        HeadlessError::Failed(m) => {
            CliError::Failed(format!("generation failed: {}", resolve::rendered(&m)))
        }
        e => CliError::failed(e),
    })?;
    Ok(())
}

/// The generator for `e` on the model the resolve step opened (it is not opened twice): runtime,
/// sessions, LoRA folders and method, all from the one resolve.
fn load_opened(e: &EngineSettings, model: crate::model::Model) -> Result<Generator, CliError> {
    let rt = Runtime::get(e.ort_lib.as_deref(), e.session.device.is_gpu()).failed()?;
    Generator::with_model(e.spec(), model, rt)
        .failed()
        .map_err(|err| {
            err.context(format_args!(
                "cannot load the model in {}",
                e.model.display()
            ))
        })
}
