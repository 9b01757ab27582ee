//! `stipple lora inspect | merge | extract`: the flags ([`LoraCommand`]) and the commands; the
//! math lives in [`crate::lora`], the file writing in [`crate::export`].

use super::error::{Classify, CliError};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum LoraCommand {
    /// Type per module, base family with evidence, rank/alpha, trigger words, metadata, hashes
    Inspect(InspectArgs),
    /// Several adapters at their strengths as one kohya LoRA (exact concatenation, or SVD)
    Merge(MergeArgs),
    /// A kohya LoRA from the difference of two models (tuned − base), by truncated SVD
    Extract(ExtractArgs),
}

#[derive(Args)]
pub struct RankArgs {
    /// Rank of every layer (with --sv-*: the largest rank allowed)
    #[arg(long)]
    pub rank: Option<usize>,
    /// Rank of 3×3 convolutions (default: --rank)
    #[arg(long)]
    pub conv_rank: Option<usize>,
    /// Rank per layer: singular values above S[0]/X (kohya resize sv_ratio)
    #[arg(long, value_name = "X", group = "dynamic")]
    pub sv_ratio: Option<f64>,
    /// Rank per layer: keep this fraction of the Frobenius norm (kohya resize sv_fro)
    #[arg(long, value_name = "X", group = "dynamic")]
    pub sv_fro: Option<f64>,
    /// Rank per layer: keep this fraction of the sum of singular values (kohya resize sv_cumulative)
    #[arg(long, value_name = "X", group = "dynamic")]
    pub sv_cumulative: Option<f64>,
    /// Clamp both factors to this quantile of their values, as kohya's scripts do (e.g. 0.99)
    #[arg(long, value_name = "Q")]
    pub clamp_quantile: Option<f64>,
}

impl RankArgs {
    fn given(&self) -> bool {
        self.rank.is_some()
            || self.conv_rank.is_some()
            || self.sv_ratio.is_some()
            || self.sv_fro.is_some()
            || self.sv_cumulative.is_some()
    }

    fn options(&self, randomized: bool) -> Result<crate::lora::svd::Options, CliError> {
        use crate::lora::svd::{Dynamic, Options, RankRule};
        let dynamic = self
            .sv_ratio
            .map(Dynamic::SvRatio)
            .or(self.sv_fro.map(Dynamic::SvFro))
            .or(self.sv_cumulative.map(Dynamic::SvCumulative));
        if let Some(q) = self.clamp_quantile {
            if !(0.0..=1.0).contains(&q) {
                return Err(CliError::Usage(format!(
                    "--clamp-quantile {q}: give a number between 0 and 1"
                )));
            }
        }
        Ok(Options {
            rule: RankRule {
                rank: self.rank,
                conv_rank: self.conv_rank,
                dynamic,
            },
            clamp: self.clamp_quantile,
            randomized,
        })
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum MergeMode {
    Exact,
    Svd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SaveDtype {
    F32,
    F16,
    Bf16,
}

impl From<SaveDtype> for crate::safetensors_out::Dtype {
    fn from(d: SaveDtype) -> Self {
        match d {
            SaveDtype::F32 => Self::F32,
            SaveDtype::F16 => Self::F16,
            SaveDtype::Bf16 => Self::BF16,
        }
    }
}

#[derive(Args)]
pub struct MergeArgs {
    /// FILE[:STRENGTH][:KEY=VALUE...] with the keys of a <lora:...> tag (te, unet, in, mid, out, lbw, dyn)
    pub inputs: Vec<String>,
    /// A prompt whose <lora:...> tags are merged too (constant strengths only)
    #[arg(long, short)]
    pub prompt: Option<String>,
    /// A folder of LoRA files for the prompt's tags (repeatable; adds to STIPPLE_LORA_DIRS and
    /// `lora_folders` of the config)
    #[arg(long = "lora-dir", value_name = "DIR")]
    pub lora_dirs: Vec<PathBuf>,
    /// The model the adapters are for (default: the bundled tiny model)
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// The merged LoRA (.safetensors)
    #[arg(long)]
    pub out: PathBuf,
    /// exact: concatenate LoRA/LoCon factors (lossless); svd: sum ΔW and truncate (any type).
    /// Default: svd when a rank option is given, else exact
    #[arg(long, value_enum)]
    pub mode: Option<MergeMode>,
    #[command(flatten)]
    pub rank: RankArgs,
    #[command(flatten)]
    pub write: WriteArgs,
    /// List every merged module and the error of every layer
    #[arg(long)]
    pub verbose: bool,
}

/// How the new adapter file is written.
#[derive(Args)]
pub struct WriteArgs {
    /// Stored dtype of the factors
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: SaveDtype,
    /// Replace --out if it exists
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Args)]
pub struct ExtractArgs {
    /// The original model (checkpoint file, diffusers folder or stipple folder)
    #[arg(long, value_name = "PATH")]
    pub base: PathBuf,
    /// The fine-tuned model (same architecture; any of the three forms)
    #[arg(long, value_name = "PATH")]
    pub tuned: PathBuf,
    /// The extracted LoRA (.safetensors)
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub rank: RankArgs,
    /// Exact SVD even for a fixed rank (default: randomized, much faster on large layers)
    #[arg(long)]
    pub full_svd: bool,
    /// Leave out layers whose largest change is at most this
    #[arg(long, default_value_t = 0.0)]
    pub min_diff: f32,
    #[command(flatten)]
    pub write: WriteArgs,
    /// List the error of every layer
    #[arg(long)]
    pub verbose: bool,
}

#[derive(Args)]
pub struct InspectArgs {
    /// The adapter (.safetensors)
    pub file: PathBuf,
    /// Print as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(c: &LoraCommand) -> Result<(), CliError> {
    match c {
        LoraCommand::Inspect(a) => inspect(a),
        LoraCommand::Merge(a) => merge(a),
        LoraCommand::Extract(a) => extract(a),
    }
}

fn inspect(a: &InspectArgs) -> Result<(), CliError> {
    let adapter = crate::lora::Adapter::open(&a.file).failed()?;
    let report = crate::lora::inspect(&adapter);
    if a.json {
        super::emit(&format!(
            "{}\n",
            serde_json::to_string_pretty(&report).failed()?
        ))
    } else {
        super::emit(&format!("{report}\n"))
    }
}

fn merge(a: &MergeArgs) -> Result<(), CliError> {
    use crate::lora::merge::{MergeOptions, Mode};
    let mode = match a.mode {
        Some(MergeMode::Exact) => Mode::Exact,
        Some(MergeMode::Svd) => Mode::Svd,
        None if a.rank.given() => Mode::Svd,
        None => Mode::Exact,
    };
    if mode == Mode::Exact && (a.rank.given() || a.rank.clamp_quantile.is_some()) {
        return Err(CliError::Usage(
            "exact mode keeps every rank; --rank, --sv-* and --clamp-quantile belong to --mode svd"
                .into(),
        ));
    }
    let model = a.model.clone().unwrap_or_else(super::default_model);
    let config = super::resolve::config(&crate::config::Dirs::discover())?;
    let outcome = crate::export::merge(&crate::export::MergeRequest {
        model_dir: &model,
        files: &a.inputs,
        prompt: a.prompt.as_deref(),
        lora_dirs: super::resolve::lora_dirs(&a.lora_dirs, &config),
        out: &a.out,
        options: MergeOptions {
            mode,
            svd: a.rank.options(false)?,
        },
        dtype: a.write.dtype.into(),
        overwrite: a.write.overwrite,
    })
    .failed()?;
    super::emit(&outcome_text(&outcome, a.verbose))
}

fn extract(a: &ExtractArgs) -> Result<(), CliError> {
    if !a.rank.given() {
        return Err(CliError::Usage(
            "give --rank R (or --sv-ratio, --sv-fro, --sv-cumulative)".into(),
        ));
    }
    let outcome = crate::export::extract(&crate::export::ExtractRequest {
        base: &a.base,
        tuned: &a.tuned,
        out: &a.out,
        options: crate::lora::extract::ExtractOptions {
            svd: a.rank.options(!a.full_svd)?,
            min_diff: a.min_diff,
        },
        dtype: a.write.dtype.into(),
        overwrite: a.write.overwrite,
    })
    .failed()?;
    super::emit(&outcome_text(&outcome, a.verbose))
}

fn outcome_text(o: &crate::export::Outcome, verbose: bool) -> String {
    let mut s = String::new();
    if let Some((report, dropped)) = &o.merged {
        if verbose {
            s.push_str(&format!("{report}"));
        }
        for d in dropped {
            s.push_str(&format!("not carried: {d}\n"));
        }
    }
    if verbose {
        for l in &o.layers {
            s.push_str(&format!(
                "  {:?} {} rank {} (chosen {}), error {:.3e}\n",
                l.component, l.path, l.rank, l.chosen_rank, l.error
            ));
        }
    }
    let ranks: std::collections::BTreeSet<usize> = o.layers.iter().map(|l| l.rank).collect();
    let rank = match (ranks.first(), ranks.last()) {
        (Some(a), Some(b)) if a == b => format!("rank {a}"),
        (Some(a), Some(b)) => format!("ranks {a}–{b}"),
        _ => String::new(),
    };
    if o.unchanged > 0 {
        s.push_str(&format!(
            "{} weights are the same in both models\n",
            o.unchanged
        ));
    }
    let error = if o.summary.max == 0.0 {
        "exact".to_string()
    } else {
        format!(
            "relative reconstruction error mean {:.2e}, max {:.2e} ({})",
            o.summary.mean, o.summary.max, o.summary.worst
        )
    };
    s.push_str(&format!(
        "wrote {}: {} layers, {rank}; {error}\n",
        o.out.display(),
        o.summary.layers
    ));
    s
}
