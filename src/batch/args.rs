//! The flags of `stipple batch`: its own (job file, sweeps, shard, dry run, output folder) and the
//! engine flags every command shares. [`BatchArgs`] is a clap `Args` struct.

use clap::Args;
use std::path::PathBuf;

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
    pub engine: crate::cli::flags::EngineFlags,
}
