//! Builds an ONNX Runtime session from a graph and its weights buffer (assembled in memory, or
//! staged on disk).
//!
//! [`build_session`] hands the buffer over with `with_external_initializer_file_in_memory`, so weights
//! are in place before graph optimisation and the external file named in the graph never exists;
//! [`build_session_staged`] points ONNX Runtime at a staged graph whose data file it maps.

use super::cuda_opts::CudaOptions;
use super::ep::{Device, DeviceError};
use super::library::Runtime;
use crate::model::layout::{Component, ComponentKind, GraphKind};
use ort::session::Session;
use ort::value::DynValue;
use std::sync::Arc;

/// Load-time options (what forces a new session), separate from per-image parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionOptions {
    pub device: Device,
    /// Intra-op threads; 0 lets ONNX Runtime decide.
    pub threads: usize,
    /// Build the UNet and VAE sessions for fixed input shapes (free-dimension overrides), so ONNX
    /// Runtime folds the shape arithmetic of the graph away; a new image size or prompt length
    /// rebuilds the UNet. (Text encoders are always built for their one shape.)
    pub static_shapes: bool,
    /// Which UNet graph runs: the plain export or ONNX Runtime's SD-fused CUDA graph.
    pub graph: GraphChoice,
    /// CUDA execution-provider settings (`[cuda]` in the config, `--cuda-*` flags); other devices
    /// ignore them.
    pub cuda: CudaOptions,
    /// Whether text encoders and UNet read their weights from buffers stipple owns, so an adapter
    /// change rewrites them in place instead of building new sessions (`--resident-weights`).
    /// Unset: on for CUDA (swaps 0.5–0.6 s instead of 3–5 s on the H200, half the host memory,
    /// the same step time), off elsewhere (the CPU kernels' weight pre-packing is worth more there
    /// than a faster swap).
    pub resident: Option<bool>,
    /// Where an adapter change of resident weights is computed (`--patch-on host|device`): on the
    /// session's device by a patch program, from base copies kept there (`Some(true)`), or on the
    /// host and uploaded. Unset: on the device on CUDA (an H100, 2026-12-06: SD1.5 swap 0.020 s
    /// against 0.61 s on the host, SDXL 0.048 s against 3.1 s, the step after it unchanged; the
    /// H200 slowdown seen once on 2026-12-05 did not come back), on the host elsewhere.
    pub patch_on_device: Option<bool>,
    /// A second UNet session over weight buffers of its own for jobs whose UNet strengths change
    /// from step to step (`--spare-unet`): the device patch brings it to the next step's strengths
    /// while the step runs on the other, then the two swap. Only with the device patch and resident
    /// weights. Unset: off (it holds a second copy of the UNet's weights, and on an H100 its overlap
    /// did not pay: an SD1.5 LoCon schedule's step 13.6 ms with it, 13.1 ms without).
    pub spare_unet: Option<bool>,
    /// Read a single-file checkpoint's EMA UNet weights (`--ema`).
    pub ema: bool,
    /// A separate VAE file to read instead of the model's own (`--vae`).
    pub vae: Option<std::path::PathBuf>,
    /// A1111's clip skip: 2 conditions SD 1.x on the penultimate CLIP layer (after the final
    /// layer norm); unset or 1 on the last. SDXL always uses the penultimate layer.
    pub clip_skip: Option<u32>,
    /// What the UNet predicts, overriding the model's scheduler config and detection
    /// (`--prediction`).
    pub prediction: Option<crate::model::prediction::Prediction>,
    /// Which VAE graph runs: the fp16 one (`model.cuda.onnx` of the VAE folders) or the fp32 one
    /// (`--vae-precision`).
    pub vae_precision: VaePrecision,
    /// Whether the fp16 VAE decoder runs its fused CUDA graph (`model.fused.onnx`) or the plain fp16
    /// one (`--vae-graph`, [`GraphChoice::resolve_fused`]).
    pub vae_graph: GraphChoice,
    /// The fp16 text encoders' graph on CUDA: their fused graph where the model has one, or the
    /// plain fp16 one (`--te-graph`, [`GraphChoice::resolve_fused`]).
    pub te_graph: GraphChoice,
    /// Which text-encoder graphs run: the fp16 ones (`model.cuda.onnx` of the text-encoder
    /// folders) or the fp32 ones (`--te-precision`).
    pub te_precision: TePrecision,
    /// A session that runs once (the SD 2.x prediction test): built without ONNX Runtime's graph
    /// optimisations, which cost more than they save.
    pub run_once: bool,
    /// A session that runs now and then between the UNet's runs (text encoders, VAE, patch
    /// programs): on the CPU its intra-op threads sleep after a run instead of spinning for more
    /// work, which took the cores from the UNet's next step (2 cores, tiny model: a per-step
    /// schedule's step +48–58 % instead of +3–4 %; 4.9–5.6 images/s instead of 8.4–9.0).
    pub rarely_run: bool,
}

impl SessionOptions {
    /// Whether adapter-patched components run with resident weights.
    pub fn resident_weights(&self) -> bool {
        self.resident
            .unwrap_or(matches!(self.device, Device::Cuda(_)))
    }

    /// Whether adapter changes of resident weights run as a patch program on the device.
    pub fn patch_on_device(&self) -> bool {
        self.patch_on_device
            .unwrap_or(matches!(self.device, Device::Cuda(_)))
    }

    /// Whether a job whose UNet strengths change between steps gets a spare UNet to patch ahead.
    pub fn spare_unet(&self) -> bool {
        self.patch_on_device() && self.resident_weights() && self.spare_unet.unwrap_or(false)
    }

    /// How the model is opened: fp16 templates on a GPU, fp32 ones on the CPU.
    /// `STIPPLE_TEMPLATE_FP32=1` keeps fp32 templates on a GPU too: the GPU check's fp32 picture,
    /// which tells whether a graph's fp16 pictures stray further than the plain graph's.
    pub fn open_options(&self) -> crate::model::OpenOptions {
        let fp32 = std::env::var_os("STIPPLE_TEMPLATE_FP32").is_some_and(|v| v == "1");
        crate::model::OpenOptions {
            prefer_fp16: !matches!(self.device, Device::Cpu) && !fp32,
            ema: self.ema,
            vae: self.vae.clone(),
            prediction: self.prediction,
        }
    }

    /// Whether the UNet is captured as a CUDA graph: asked for, and on a CUDA device.
    pub fn cuda_graph(&self) -> bool {
        self.cuda.cuda_graph && matches!(self.device, Device::Cuda(_))
    }

    /// The options sessions are built with: a CUDA graph replays the shapes it was captured with,
    /// so it turns static shapes on.
    pub fn resolved(mut self) -> Self {
        if self.cuda_graph() {
            self.static_shapes = true;
        }
        self
    }

    /// The same options without graph capture: for every session but a UNet with fixed shapes.
    pub fn without_cuda_graph(&self) -> Self {
        let mut o = self.clone();
        o.cuda.cuda_graph = false;
        o
    }
}

/// `--vae-precision` and `--te-precision` (`auto|fp16|fp32`): a component's compute precision,
/// the graph its session runs (the fp16 one is stored in the `cuda` slot, `model.cuda.onnx`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp16 on a GPU (CUDA, DirectML) where the component is known not to overflow in it (the VAE
    /// of SD 1.x and 2.x, SDXL's only with a VAE file named as the fp16-fix one; every text
    /// encoder); fp32 on the CPU. A run that overflows is redone in fp32 once, and fp32 is kept.
    #[default]
    Auto,
    /// fp16 on any device (the graph has only standard operators; the CPU runs it slowly).
    Fp16,
    Fp32,
}

/// The VAE's precision (`--vae-precision`).
pub type VaePrecision = Precision;
/// The text encoders' precision (`--te-precision`).
pub type TePrecision = Precision;

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Precision::Auto),
            "fp16" | "half" => Ok(Precision::Fp16),
            "fp32" | "float" => Ok(Precision::Fp32),
            _ => Err(format!("unknown precision {s:?}; use auto, fp16 or fp32")),
        }
    }
}

impl Precision {
    /// The graph `component` (a VAE part or a text encoder) runs: its fp16 graph or the plain
    /// fp32 one. `fp16_safe`: the component does not overflow in fp16 (false for SDXL's own VAE).
    pub fn resolve(
        self,
        device: Device,
        component: &Component,
        fp16_safe: bool,
    ) -> Result<GraphKind, String> {
        let has = component.cuda.is_some();
        let (script, flag) = match component.kind {
            ComponentKind::TextEncoder | ComponentKind::TextEncoder2 => {
                ("te_fp16.py", "--te-precision")
            }
            _ => ("vae_fp16.py", "--vae-precision"),
        };
        match self {
            Precision::Fp32 => Ok(GraphKind::Plain),
            Precision::Fp16 if has => Ok(GraphKind::Cuda),
            Precision::Fp16 => Err(format!(
                "{} has no fp16 graph (model.cuda.onnx); make one with \
                 `python scripts/{script} {}`, or use {flag} fp32",
                component.dir.display(),
                component.dir.parent().unwrap_or(&component.dir).display()
            )),
            Precision::Auto => Ok(if has && fp16_safe && !matches!(device, Device::Cpu) {
                GraphKind::Cuda
            } else {
                GraphKind::Plain
            }),
        }
    }
}

/// `--graph auto|plain|cuda`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GraphChoice {
    /// The fused CUDA graph on a CUDA device when the model folder has one, else the plain graph.
    #[default]
    Auto,
    Plain,
    /// The fused CUDA graph, or an error saying why it cannot run.
    Cuda,
}

impl std::str::FromStr for GraphChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(GraphChoice::Auto),
            "plain" => Ok(GraphChoice::Plain),
            "cuda" | "fused" => Ok(GraphChoice::Cuda),
            _ => Err(format!("unknown graph {s:?}; use auto, plain or cuda")),
        }
    }
}

impl GraphChoice {
    /// The UNet graph `component` runs on `device`; asking for the fused UNet where it cannot run
    /// is an error. The VAE's and the text encoders' graphs are [`Precision`]'s choice, not this
    /// one (their `model.cuda.onnx` is an fp16 graph, not a fused one).
    pub fn resolve(self, device: Device, component: &Component) -> Result<GraphKind, String> {
        let is_cuda = matches!(device, Device::Cuda(_));
        let has = component.cuda.is_some();
        match self {
            GraphChoice::Plain => Ok(GraphKind::Plain),
            GraphChoice::Auto if is_cuda && has && !component.cuda_opt_in => Ok(GraphKind::Cuda),
            GraphChoice::Auto => Ok(GraphKind::Plain),
            GraphChoice::Cuda if component.kind != ComponentKind::Unet => Ok(GraphKind::Plain),
            GraphChoice::Cuda if !is_cuda => Err(format!(
                "the fused CUDA graph runs only on a CUDA device (--device cuda:N), not {device}"
            )),
            GraphChoice::Cuda if !has => Err(format!(
                "{} has no fused CUDA graph (model.cuda.onnx); make one with \
                 `scripts/export_model.py --optimize cuda --model {}`",
                component.dir.display(),
                component.dir.parent().unwrap_or(&component.dir).display()
            )),
            GraphChoice::Cuda => Ok(GraphKind::Cuda),
        }
    }
}

impl GraphChoice {
    /// The graph `--vae-graph` or `--te-graph` makes of `precision` (the graph
    /// [`Precision::resolve`] chose) for the VAE decoder or a text encoder: on a CUDA device, the
    /// component's fused fp16 graph (`model.fused.onnx`) in place of its plain fp16 one where the
    /// model has it (auto and `fused`); `plain` keeps the plain one. An fp32 VAE decoder (asked
    /// for, SDXL's own VAE under auto, or after an fp16 overflow) runs the fused graph made f32
    /// ([`GraphKind::Fused32`]) on CUDA where the model has it; an fp32 text encoder stays plain.
    /// Asking for one of a model without it is an error, as is the fused VAE (CUDA-only kernels)
    /// on another device; the text encoders' runs on the CPU too when asked for (ONNX Runtime has
    /// CPU kernels for its operators: how the tests check it). The VAE encoder has none.
    pub fn resolve_fused(
        self,
        device: Device,
        component: &Component,
        precision: GraphKind,
    ) -> Result<GraphKind, String> {
        let is_cuda = matches!(device, Device::Cuda(_));
        let has = component.fused.is_some();
        let (what, script, flag) = match component.kind {
            ComponentKind::VaeDecoder => ("VAE", "vae_fused.py", "--vae-graph"),
            ComponentKind::TextEncoder | ComponentKind::TextEncoder2 => {
                ("text-encoder", "te_fused.py", "--te-graph")
            }
            _ => return Ok(precision),
        };
        let cuda_only = component.kind == ComponentKind::VaeDecoder;
        match self {
            GraphChoice::Plain => Ok(precision),
            GraphChoice::Cuda if cuda_only && !is_cuda => Err(format!(
                "the fused {what} graph runs only on a CUDA device (--device cuda:N), not {device}"
            )),
            _ if precision == GraphKind::Plain
                && cuda_only
                && is_cuda
                && component.fused32.is_some() =>
            {
                Ok(GraphKind::Fused32)
            }
            _ if precision != GraphKind::Cuda => Ok(precision),
            GraphChoice::Auto if is_cuda && has => Ok(GraphKind::Fused),
            GraphChoice::Auto => Ok(precision),
            GraphChoice::Cuda if !has => Err(format!(
                "{} has no fused {what} graph (model.fused.onnx); make one with \
                 `python scripts/{script} {}`, or use {flag} plain",
                component.dir.display(),
                component.dir.parent().unwrap_or(&component.dir).display()
            )),
            GraphChoice::Cuda => Ok(GraphKind::Fused),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("ONNX Runtime could not create the {what} session: {message}")]
    Ort { what: String, message: String },
    #[error(
        "ONNX Runtime could not create the {what} session as a CUDA graph: {message}\n\
         (cuda_graph needs every node of the graph on the CUDA execution provider and fixed shapes; \
         turn it off with `cuda_graph = false` in [cuda] of the config, or --cuda-graph=false)"
    )]
    CudaGraph { what: String, message: String },
}

fn ort_err(what: &str) -> impl Fn(ort::Error) -> SessionError + '_ {
    move |e| SessionError::Ort {
        what: what.to_string(),
        message: e.to_string(),
    }
}

/// Creates a session for `graph` (ONNX bytes) whose external file `external_file` is `weights`.
///
/// `shared` initializers (none for most sessions) are buffers the caller owns (on the session's
/// device), which the session reads at every run instead of copies of its own, so writing them
/// changes the weights. Kernels must not pre-pack them into copies and no optimisation may fold them
/// into new constants: such sessions run without CPU pre-packing and at the basic optimisation level,
/// on a graph whose weight-only nodes stipple folded itself ([`crate::model::fold`]); higher levels
/// fuse and repack weights (attention, NCHWc) into constants of their own.
#[allow(clippy::too_many_arguments)]
pub fn build_session(
    rt: &Runtime,
    what: &str,
    graph: &[u8],
    external_file: &str,
    weights: Arc<[u8]>,
    opts: &SessionOptions,
    dims: &[(&str, i64)],
    shared: &[(&str, Arc<DynValue>)],
) -> Result<Session, SessionError> {
    let source = Source::Memory {
        graph,
        external_file,
        weights,
    };
    build(rt, what, source, opts, dims, shared)
}

/// [`build_session`] for a graph staged on disk with its external-data file beside it
/// ([`super::staged::Staged`]): ONNX Runtime maps the file and reads the weights from the page
/// cache, where the in-memory buffer would be copied whole while the session is built. On the CPU
/// the kernels' pre-packed copies then replace most of the mapped weights; what stays mapped is
/// file-backed memory the kernel can drop and read again.
pub fn build_session_staged(
    rt: &Runtime,
    what: &str,
    graph_path: &std::path::Path,
    opts: &SessionOptions,
    dims: &[(&str, i64)],
    shared: &[(&str, Arc<DynValue>)],
) -> Result<Session, SessionError> {
    build(rt, what, Source::Staged(graph_path), opts, dims, shared)
}

/// Where a session's graph and external-data file come from.
enum Source<'a> {
    Memory {
        graph: &'a [u8],
        external_file: &'a str,
        weights: Arc<[u8]>,
    },
    Staged(&'a std::path::Path),
}

fn build(
    rt: &Runtime,
    what: &str,
    source: Source,
    opts: &SessionOptions,
    dims: &[(&str, i64)],
    shared: &[(&str, Arc<DynValue>)],
) -> Result<Session, SessionError> {
    let providers = opts
        .device
        .dispatch(&rt.path.display().to_string(), &opts.cuda)?;
    let e = ort_err(what);
    let recover = |err: ort::Error<ort::session::builder::SessionBuilder>| e(err.into());
    let mut builder = Session::builder(rt.environment())
        .map_err(&e)?
        .with_execution_providers(providers)
        .map_err(recover)?;
    if let Source::Memory {
        external_file,
        weights,
        ..
    } = &source
    {
        builder = builder
            .with_external_initializer_file_in_memory(external_file, Arc::clone(weights))
            .map_err(recover)?;
    }
    if !shared.is_empty() {
        use ort::session::builder::GraphOptimizationLevel as L;
        builder = builder
            .with_optimization_level(L::Level1)
            .map_err(recover)?;
        // The CPU kernels pre-pack MatMul and Conv weights into copies of their own. On CUDA the
        // one kernel that pre-packs here, the fused graph's com.microsoft NhwcConv, keeps the
        // initializer and only learns from PrePack that W is already NHWC (without it, it reads W
        // as NCHW and fails), so pre-packing stays on there.
        if !opts.device.is_gpu() {
            builder = builder
                .with_config_entry("session.disable_prepacking", "1")
                .map_err(recover)?;
        }
        for (name, value) in shared {
            builder = builder
                .with_initializer(*name, Arc::clone(value))
                .map_err(recover)?;
        }
    }
    if opts.run_once {
        // The optimiser's passes over a whole UNet cost more than they save in one run: SD2's
        // prediction test on 2 CPU cores (2026-12-07) took 12.3–13.5 s with every pass, 7.2 s at
        // level 1, 4.4–4.7 s with none (the same mean; without pre-packing too: no gain).
        use ort::session::builder::GraphOptimizationLevel as L;
        builder = builder
            .with_optimization_level(L::Disable)
            .map_err(recover)?;
    }
    // ONNX Runtime's own per-operator profiler, for `stipple bench` on a GPU box:
    // STIPPLE_ORT_PROFILE=/tmp/prof writes /tmp/prof-<component>_<time>.json when the session ends.
    if let Some(prefix) = std::env::var_os("STIPPLE_ORT_PROFILE") {
        let mut p = std::path::PathBuf::from(prefix);
        let tag: String = what
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let name = format!(
            "{}-{tag}",
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        p.set_file_name(name);
        builder = builder.with_profiling(p).map_err(recover)?;
    }
    // A benchmarking knob: STIPPLE_ORT_OPT_LEVEL=0..3 (ONNX Runtime's graph optimisation level;
    // default all). An offline-fused graph may not need level 3, and a lower level builds faster.
    if let Some(level) = std::env::var("STIPPLE_ORT_OPT_LEVEL")
        .ok()
        .and_then(|v| v.parse::<u8>().ok())
    {
        use ort::session::builder::GraphOptimizationLevel as L;
        let level = match level {
            0 => L::Disable,
            1 => L::Level1,
            2 => L::Level2,
            _ => L::All,
        };
        builder = builder.with_optimization_level(level).map_err(recover)?;
    }
    for (name, size) in dims {
        builder = builder
            .with_dimension_override(*name, *size)
            .map_err(recover)?;
    }
    if opts.threads > 0 {
        builder = builder.with_intra_threads(opts.threads).map_err(recover)?;
    }
    // On the CPU only: elsewhere the pool runs little besides launches, and the GPU paths are
    // checked by the GPU check, which has not run with it.
    if opts.rarely_run && matches!(opts.device, Device::Cpu) {
        builder = builder.with_intra_op_spinning(false).map_err(recover)?;
    }
    if matches!(opts.device, Device::DirectMl(_)) {
        // DirectML requires sequential execution and no memory pattern (ORT's DirectML docs).
        builder = builder
            .with_parallel_execution(false)
            .map_err(recover)?
            .with_memory_pattern(false)
            .map_err(recover)?;
    }
    let committed = match source {
        Source::Memory { graph, .. } => builder.commit_from_memory(graph),
        Source::Staged(path) => builder.commit_from_file(path),
    };
    committed.map_err(|err| {
        if opts.cuda_graph() {
            SessionError::CudaGraph {
                what: what.to_string(),
                message: err.to_string(),
            }
        } else {
            e(err)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cuda_graph_forces_static_shapes_on_cuda_only() {
        let graph = CudaOptions {
            cuda_graph: true,
            ..CudaOptions::default()
        };
        let cpu = SessionOptions {
            cuda: graph,
            ..SessionOptions::default()
        };
        assert!(!cpu.cuda_graph());
        assert!(
            !cpu.clone().resolved().static_shapes,
            "the CPU ignores [cuda]"
        );
        let gpu = SessionOptions {
            device: Device::Cuda(1),
            ..cpu
        };
        assert!(gpu.cuda_graph());
        assert!(gpu.clone().resolved().static_shapes);
        assert!(!gpu.without_cuda_graph().cuda_graph());
        assert_eq!(gpu.without_cuda_graph().cuda.tf32, gpu.cuda.tf32);
    }

    #[test]
    fn resident_weights_and_the_device_patch_default_to_cuda_only_and_yield_to_a_choice() {
        for patch in [false, true] {
            let on = |device, choice| {
                let o = SessionOptions {
                    device,
                    resident: choice,
                    patch_on_device: choice,
                    ..SessionOptions::default()
                };
                if patch {
                    o.patch_on_device()
                } else {
                    o.resident_weights()
                }
            };
            assert!(on(Device::Cuda(0), None));
            assert!(!on(Device::Cpu, None));
            assert!(!on(Device::DirectMl(0), None));
            assert!(!on(Device::Cuda(0), Some(false)));
            assert!(on(Device::Cpu, Some(true)));
        }
    }
}
