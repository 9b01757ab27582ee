//! The flags of `stipple batch`, declared here so `main` stays a dispatch line and the library owns
//! their meaning. [`BatchArgs`] is a clap `Args` struct.

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
    /// Output folder; also holds the manifest (results.jsonl) that reruns use to skip finished jobs
    #[arg(long, default_value = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// Model for jobs that do not name one: a .safetensors checkpoint, a diffusers folder or a
    /// stipple folder (default: the bundled tiny model)
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Devices to spread the jobs over, one engine each: cpu, cuda:0,cuda:1, ...
    #[arg(
        long = "device",
        visible_alias = "devices",
        value_delimiter = ',',
        default_value = "cpu",
        value_name = "LIST"
    )]
    pub devices: Vec<String>,
    /// Intra-op threads per engine for ONNX Runtime (0 = its default)
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Folder of LoRA files that `<lora:NAME>` tags name; repeatable
    #[arg(long = "lora-dir", value_name = "DIR")]
    pub lora_dirs: Vec<PathBuf>,
    #[command(flatten)]
    pub cuda: crate::runtime::CudaArgs,
}
