//! `stipple bench`: load time, UNet steps per second, VAE decode and a whole image, on the
//! settings the shared resolve gives (see [`crate::bench`]).

use super::error::{Classify, CliError};
use super::flags::EngineFlags;
use super::resolve;
use crate::config::Dirs;
use crate::runtime::Runtime;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub engine: EngineFlags,
    /// Image width (default: the model's)
    #[arg(long)]
    pub width: Option<u32>,
    /// Image height (default: the model's)
    #[arg(long)]
    pub height: Option<u32>,
    /// Repetitions of each measurement
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    /// Also measure an adapter swap (fuse) and the step time with it fused
    #[arg(long, value_name = "FILE")]
    pub lora: Option<PathBuf>,
    /// With --lora: also measure live mode (per-step time live vs fused, set_strength → next step)
    #[arg(long, requires = "lora")]
    pub live: bool,
    /// Instead: images per second over N one-image jobs, one UNet call per image and then with
    /// compatible jobs sharing calls (up to --unet-batch images)
    #[arg(long, value_name = "N", conflicts_with_all = ["lora", "live"])]
    pub throughput: Option<usize>,
    /// With --throughput: sampling steps per image (default: the model family's)
    #[arg(long, requires = "throughput")]
    pub steps: Option<u32>,
}

pub fn run(a: &BenchArgs, outer: &EngineFlags, ort_lib: Option<&Path>) -> Result<(), CliError> {
    let config = resolve::config(&Dirs::discover())?;
    let e = resolve::engine(&a.engine.under(outer), ort_lib, &config)?;
    if e.devices.len() > 1 {
        return Err(CliError::Usage("bench runs on one device".into()));
    }
    let size = match (a.width, a.height) {
        (Some(w), Some(h)) => Some((w, h)),
        (None, None) => None,
        _ => {
            return Err(CliError::Usage(
                "give both --width and --height, or neither".into(),
            ))
        }
    };
    let rt = Runtime::get(e.ort_lib.as_deref(), e.session.device.is_gpu()).failed()?;
    let bench_of = |what: &Path| format!("benchmark of {}", what.display());
    if let Some(n) = a.throughput {
        if n == 0 {
            return Err(CliError::Usage(
                "--throughput 0: give at least 1 image".into(),
            ));
        }
        let r = crate::bench::throughput::throughput(e.spec(), rt, n, size, a.steps.unwrap_or(0))
            .failed()
            .map_err(|err| err.context(format!("throughput {}", bench_of(&e.model))))?;
        return super::emit(&if a.json {
            json(&r)?
        } else {
            format!(
                "{r}
"
            )
        });
    }
    let report = crate::bench::run(e.spec(), rt, size, a.repeats, a.lora.as_deref())
        .failed()
        .map_err(|err| err.context(bench_of(&e.model)))?;
    let live = match (&a.lora, a.live) {
        (Some(lora), true) => Some(
            crate::bench::live(e.spec(), rt, lora, 20)
                .failed()
                .map_err(|err| err.context(format!("live {}", bench_of(lora))))?,
        ),
        _ => None,
    };
    let mut s = if a.json {
        json(&report)?
    } else {
        format!("{report}\n")
    };
    if let Some(l) = live {
        s.push_str(&if a.json { json(&l)? } else { format!("{l}\n") });
    }
    super::emit(&s)
}

/// One JSON line.
fn json(v: &impl serde::Serialize) -> Result<String, CliError> {
    serde_json::to_string(v)
        .map(|s| s + "\n")
        .map_err(CliError::failed)
}
