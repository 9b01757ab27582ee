//! CUDA execution-provider settings: cuDNN's convolution search, a cap on ONNX Runtime's device
//! memory, CUDA graphs and TF32. They come from the `[cuda]` section of the config file with the
//! `--cuda-*` flags on top ([`CudaArgs::apply`]); sessions on other devices ignore them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How cuDNN picks a convolution algorithm (ONNX Runtime's `cudnn_conv_algo_search`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ConvAlgoSearch {
    /// cuDNN's heuristics choose: quick first step (stipple's default)
    #[default]
    Heuristic,
    /// Time every algorithm on the first run of a shape: slow first step, more memory, sometimes faster steps
    Exhaustive,
    /// Always cuDNN's implicit-precomp GEMM: least memory, rarely the fastest
    Default,
}

impl ConvAlgoSearch {
    pub const NAMES: &'static str = "heuristic, exhaustive or default";

    fn ort(self) -> ort::ep::cuda::ConvAlgorithmSearch {
        use ort::ep::cuda::ConvAlgorithmSearch as S;
        match self {
            ConvAlgoSearch::Heuristic => S::Heuristic,
            ConvAlgoSearch::Exhaustive => S::Exhaustive,
            ConvAlgoSearch::Default => S::Default,
        }
    }
}

impl FromStr for ConvAlgoSearch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "heuristic" => Ok(ConvAlgoSearch::Heuristic),
            "exhaustive" => Ok(ConvAlgoSearch::Exhaustive),
            "default" => Ok(ConvAlgoSearch::Default),
            _ => Err(format!("unknown search {s:?}; use {}", Self::NAMES)),
        }
    }
}

impl fmt::Display for ConvAlgoSearch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConvAlgoSearch::Heuristic => "heuristic",
            ConvAlgoSearch::Exhaustive => "exhaustive",
            ConvAlgoSearch::Default => "default",
        })
    }
}

/// One GiB: `memory_limit_gb` counts in binary units, as `nvidia-smi` does.
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
/// Far above any GPU's memory: a larger value is a typo (bytes or MB given as GB).
const MAX_LIMIT_GB: f64 = 16384.0;

/// What a CUDA session is built with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CudaOptions {
    pub conv_algo_search: ConvAlgoSearch,
    /// Cap on ONNX Runtime's device memory arena in GiB; 0 means no cap. cuDNN workspaces and the
    /// CUDA context come on top, so the process can use somewhat more.
    pub memory_limit_gb: f64,
    /// Capture the UNet as a CUDA graph and replay it every step (ONNX Runtime's
    /// `enable_cuda_graph`). A captured graph only works for the shapes it was captured with, so
    /// this forces static shapes; adapters with changing (live) strengths cannot run with it.
    pub cuda_graph: bool,
    /// Replay the device patch's program (adapter swaps, strength changes, schedules) as a CUDA
    /// graph: a few launches instead of one per operation. Independent of `cuda_graph`, since the
    /// program's shapes never change.
    pub patch_graph: bool,
    /// TensorFloat-32 in convolutions and matrix products on Ampere and newer GPUs (ONNX Runtime's
    /// default, so `true`); `false` gives full fp32 precision at some speed.
    pub tf32: bool,
    /// cuDNN's fused convolution + bias (ONNX Runtime's `fuse_conv_bias`) in the fused graphs' sessions
    /// (the UNet's and the VAE decoder's): one kernel instead of a convolution and a separate bias
    /// add. Never in the plain graphs', where cuDNN's frontend finds no plan for some convolutions
    /// (the UNet's `conv_in` with its residual add: HEURISTIC_QUERY_FAILED on an H100). Off by
    /// default: cuDNN builds a plan for every convolution at the first run of each new shape, which
    /// made the first SD1.5 step after load 3.4–8.0 s instead of 0.6–0.7 s (H100, 2026-12-07) for
    /// 0.6 ms less per step after it; a long batch of one size gains, a new size pays again.
    pub fuse_conv_bias: bool,
    /// Set by the session builder (never by config or flags) for the fused graphs' sessions, the
    /// only ones `fuse_conv_bias` applies to.
    pub fused_graph: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            conv_algo_search: ConvAlgoSearch::Heuristic,
            memory_limit_gb: 0.0,
            cuda_graph: false,
            patch_graph: true,
            tf32: true,
            fuse_conv_bias: false,
            fused_graph: false,
        }
    }
}

/// A bad CUDA setting; `key` is the config key or the flag it came from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct CudaOptionsError {
    pub key: String,
    pub message: String,
}

impl CudaOptions {
    /// Checks the values serde cannot; the error's key is the config key (`memory_limit_gb`).
    pub fn validate(&self) -> Result<(), CudaOptionsError> {
        check_limit(self.memory_limit_gb).map_err(|message| CudaOptionsError {
            key: "memory_limit_gb".into(),
            message,
        })
    }

    /// The memory cap in bytes, `None` for no cap.
    pub fn memory_limit_bytes(&self) -> Option<usize> {
        (self.memory_limit_gb > 0.0).then_some((self.memory_limit_gb * GIB) as usize)
    }

    /// The CUDA execution provider for device `id` with these settings.
    pub(crate) fn provider(&self, id: i32) -> ort::ep::CUDA {
        let mut ep = ort::ep::CUDA::default()
            .with_device_id(id)
            .with_conv_algorithm_search(self.conv_algo_search.ort())
            .with_tf32(self.tf32);
        if let Some(bytes) = self.memory_limit_bytes() {
            ep = ep.with_memory_limit(bytes);
        }
        if self.cuda_graph {
            ep = ep.with_cuda_graph(true);
        }
        if self.fuse_conv_bias && self.fused_graph {
            ep = ep.with_fuse_conv_bias(true);
        }
        bench_knobs(ep)
    }
}

/// Measuring knobs for the step-time work, read from the environment and off unless set (each one
/// needs the GPU check before it could become a setting): `STIPPLE_CUDA_NHWC=1` (ONNX Runtime's
/// `prefer_nhwc`), `STIPPLE_CUDA_SLN_STRICT=1`
/// (fp32 accumulation in SkipLayerNorm: a suspect for the fused SDXL graph's distance from fp32),
/// `STIPPLE_CUDA_SDPA=` a comma list of flash, efficient, cudnn, math (`sdpa_kernel`).
fn bench_knobs(mut ep: ort::ep::CUDA) -> ort::ep::CUDA {
    use ort::ep::cuda::AttentionBackend as A;
    let on = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
    if on("STIPPLE_CUDA_NHWC") {
        ep = ep.with_prefer_nhwc(true);
    }
    if on("STIPPLE_CUDA_SLN_STRICT") {
        ep = ep.with_skip_layer_norm_strict_mode(true);
    }
    if let Ok(list) = std::env::var("STIPPLE_CUDA_SDPA") {
        let flags = list
            .split(',')
            .filter_map(|k| match k.trim() {
                "flash" => Some(A::FLASH_ATTENTION),
                "efficient" => Some(A::EFFICIENT_ATTENTION),
                "cudnn" => Some(A::CUDNN_FLASH_ATTENTION),
                "math" => Some(A::MATH),
                _ => None,
            })
            .fold(A::none(), |a, b| a | b);
        ep = ep.with_attention_backend(flags);
    }
    ep
}

fn check_limit(gb: f64) -> Result<(), String> {
    if !gb.is_finite() || gb < 0.0 {
        return Err(format!(
            "{gb}: give the cap in GiB (e.g. 10 or 7.5), or 0 for no cap"
        ));
    }
    if gb > MAX_LIMIT_GB {
        return Err(format!(
            "{gb} GiB is more than any GPU has; the value is in GiB, not bytes or MB"
        ));
    }
    Ok(())
}

/// The `--cuda-*` flags, shared by every command that builds sessions; each overrides its key of
/// the `[cuda]` config section.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct CudaArgs {
    /// cuDNN convolution search on CUDA (config: cuda.conv_algo_search)
    #[arg(long = "cuda-conv-search", value_enum, value_name = "MODE")]
    pub conv_search: Option<ConvAlgoSearch>,
    /// Cap ONNX Runtime's CUDA memory arena at this many GiB, 0 = no cap (config: cuda.memory_limit_gb)
    #[arg(
        long = "cuda-mem-limit-gb",
        value_name = "GIB",
        allow_negative_numbers = true
    )]
    pub mem_limit_gb: Option<f64>,
    /// Capture the UNet as a CUDA graph (forces static shapes; no live adapters); --cuda-graph=false
    /// turns it off (config: cuda.cuda_graph)
    #[arg(
        long = "cuda-graph",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub cuda_graph: Option<bool>,
    /// Replay the device patch's program as a CUDA graph (the default); --cuda-patch-graph=false
    /// runs it launch by launch (config: cuda.patch_graph)
    #[arg(
        long = "cuda-patch-graph",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub patch_graph: Option<bool>,
    /// TF32 math on Ampere and newer (ONNX Runtime's default); --cuda-tf32=false for full fp32
    /// (config: cuda.tf32)
    #[arg(
        long = "cuda-tf32",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub tf32: Option<bool>,
    /// cuDNN's fused convolution + bias in the fused UNet and VAE graphs: faster steps and decodes,
    /// seconds more at the first run of each new size (config: cuda.fuse_conv_bias; off by default)
    #[arg(
        long = "cuda-fuse-conv-bias",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub fuse_conv_bias: Option<bool>,
}

impl CudaArgs {
    /// Whether any `--cuda-*` flag was given.
    pub fn given(&self) -> bool {
        *self != CudaArgs::default()
    }

    /// `base` (from the config) with the given flags on top; a bad value names its flag.
    pub fn apply(&self, base: CudaOptions) -> Result<CudaOptions, CudaOptionsError> {
        let mut o = base;
        if let Some(s) = self.conv_search {
            o.conv_algo_search = s;
        }
        if let Some(gb) = self.mem_limit_gb {
            check_limit(gb).map_err(|message| CudaOptionsError {
                key: "--cuda-mem-limit-gb".into(),
                message,
            })?;
            o.memory_limit_gb = gb;
        }
        if let Some(g) = self.cuda_graph {
            o.cuda_graph = g;
        }
        if let Some(g) = self.patch_graph {
            o.patch_graph = g;
        }
        if let Some(t) = self.tf32 {
            o.tf32 = t;
        }
        if let Some(f) = self.fuse_conv_bias {
            o.fuse_conv_bias = f;
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        cuda: CudaArgs,
        jobs: Option<String>,
    }

    fn parse(args: &[&str]) -> Result<CudaArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|c| c.cuda)
    }

    #[test]
    fn flags_override_the_config() {
        let base = CudaOptions {
            cuda_graph: true,
            memory_limit_gb: 4.0,
            ..CudaOptions::default()
        };
        let a = parse(&[
            "--cuda-conv-search",
            "exhaustive",
            "--cuda-mem-limit-gb",
            "7.5",
            "--cuda-graph=false",
            "--cuda-patch-graph=false",
        ])
        .unwrap();
        assert!(
            base.patch_graph,
            "the device patch replays as a graph unless told"
        );
        let o = a.apply(base).unwrap();
        assert!(!o.patch_graph);
        assert_eq!(o.conv_algo_search, ConvAlgoSearch::Exhaustive);
        assert_eq!(o.memory_limit_bytes(), Some((7.5 * GIB) as usize));
        assert!(!o.cuda_graph);
        assert!(o.tf32, "not given: the config's value stays");
        // A bare --cuda-graph turns it on and does not swallow the next argument.
        let c = Cli::try_parse_from(["t", "--cuda-graph", "jobs.jsonl"]).unwrap();
        assert_eq!(c.cuda.cuda_graph, Some(true));
        assert_eq!(c.jobs.as_deref(), Some("jobs.jsonl"));
        assert!(!parse(&[]).unwrap().given());
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let e = parse(&["--cuda-mem-limit-gb", "-1"])
            .map(|a| a.apply(CudaOptions::default()))
            .map(|r| r.unwrap_err().to_string())
            .unwrap_or_else(|e| e.to_string());
        assert!(e.contains("--cuda-mem-limit-gb"), "{e}");
        let e = parse(&["--cuda-mem-limit-gb", "80000000000"])
            .unwrap()
            .apply(CudaOptions::default())
            .unwrap_err();
        assert!(e.to_string().contains("not bytes"), "{e}");
        let e = parse(&["--cuda-conv-search", "fast"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("exhaustive"), "{e}");
    }

    #[test]
    fn no_limit_is_zero() {
        assert_eq!(CudaOptions::default().memory_limit_bytes(), None);
        assert!(CudaOptions::default().validate().is_ok());
        let bad = CudaOptions {
            memory_limit_gb: f64::NAN,
            ..CudaOptions::default()
        };
        assert_eq!(bad.validate().unwrap_err().key, "memory_limit_gb");
    }
}
