//! `stipple bake`: a model folder with adapters fused into its weights (see [`crate::bake`]).

use super::error::{Classify, CliError};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct BakeArgs {
    /// Stipple model folder to bake into (default: the bundled tiny model)
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// FILE[:STRENGTH][:KEY=VALUE...] with the keys of a <lora:...> tag (te, unet, in, mid, out, lbw, dyn)
    #[arg(long, required = true)]
    pub lora: Vec<String>,
    /// The new model folder (must not exist)
    #[arg(long)]
    pub out: PathBuf,
    /// List every applied and skipped key
    #[arg(long)]
    pub verbose: bool,
}

pub fn run(a: &BakeArgs) -> Result<(), CliError> {
    let dir = a.model.clone().unwrap_or_else(super::default_model);
    let loras = a
        .lora
        .iter()
        .map(|arg| crate::bake::parse_lora_arg(arg))
        .collect::<Result<Vec<_>, _>>()
        .usage()?;
    let report = crate::bake::bake(&dir, &loras, &a.out).failed()?;
    let mut s = String::new();
    for (kind, n) in &report.changed {
        s.push_str(&format!("{kind}: {n} weights changed\n"));
    }
    if a.verbose {
        s.push_str(&format!("{}\n", report.apply));
    }
    s.push_str(&format!("wrote {}\n", report.out.display()));
    super::emit(&s)
}
