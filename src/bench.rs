//! Benchmarks behind `stipple bench` and `cargo bench`: session creation, text encoding, UNet steps
//! with CFG (the figure that matters), VAE decode and a whole image, on a given model and device.
//!
//! [`run`] measures and returns a [`BenchReport`]; its `Display` is what both commands print. On CUDA
//! it also samples the GPU's memory in use through NVML ([`crate::runtime::device_mem`]).
//! [`throughput`] measures images per second with and without shared UNet calls; with
//! `STIPPLE_PROFILE=1` each phase of UNet steps is also sampled ([`profile`]) and its profile
//! printed to stderr.

pub mod profile;
pub mod throughput;

use crate::engine::Stop;
use crate::job::{Job, Sampler};
use crate::pipeline::generator::{time_ids, Added, PatchCounts};
use crate::pipeline::{EngineSpec, Generator, PipelineError};
use crate::runtime::device_mem::{self, MemoryPeak};
use crate::runtime::{Device, Runtime};
use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub model: String,
    pub device: String,
    /// The UNet graph that ran: `plain` or `cuda` (ONNX Runtime's SD-fused graph).
    pub unet_graph: String,
    /// Whether text encoders and UNet read their weights from buffers stipple rewrites in place on
    /// a swap, rather than having them baked into the sessions.
    pub resident_weights: bool,
    pub width: u32,
    pub height: u32,
    pub load_s: f64,
    /// Of `load_s`: opening the model (reading its index and headers, detection).
    pub open_s: f64,
    /// Of `load_s`: each component's session build (side by side).
    pub session_builds: Vec<(String, f64)>,
    pub text_encode_ms: f64,
    /// One CFG step (UNet on batch 2), median.
    pub unet_step_ms: f64,
    pub steps_per_s: f64,
    pub vae_decode_ms: f64,
    /// The VAE decoder's precision: `fp16` or `fp32` (`--vae-precision`).
    pub vae_precision: String,
    /// The VAE decoder's graph: `fused` (ONNX Runtime's fused CUDA graph, fp16 or made f32) or `plain`
    /// (`--vae-graph`).
    pub vae_graph: String,
    /// Where the picture's bytes are made: `graph` (appended to the decoder's graph, on its
    /// device) or `host`.
    pub vae_bytes: String,
    /// The text encoders' precision: `fp16` or `fp32` (`--te-precision`).
    pub te_precision: String,
    /// The text encoders' graph: `fused` or `plain` (`--te-graph`).
    pub te_graph: String,
    /// A whole 20-step image, median.
    pub image_s: f64,
    /// First UNet step after the sessions were built (includes lazy initialisation, e.g. cuDNN).
    pub first_step_ms: f64,
    /// First VAE decode after the sessions were built (the same, for the decoder).
    pub first_decode_ms: f64,
    /// Fuse mode: time from a new adapter set to sessions ready (ΔW + patch + session builds).
    pub adapter_swap_s: Option<f64>,
    /// One CFG step with the adapter fused (should equal the plain step: fused weights cost nothing).
    pub unet_step_with_adapter_ms: Option<f64>,
    /// Peak resident memory of the process (VmHWM), MB.
    pub peak_rss_mb: Option<f64>,
    /// Resident memory (VmRSS) once the model has loaded, and at the end of the run (after the
    /// adapter swaps), MB: what a session holds between jobs, without the peaks of a swap.
    pub loaded_rss_mb: Option<f64>,
    pub end_rss_mb: Option<f64>,
    /// CUDA: the most memory in use on the GPU during the run (NVML, every process), MB; null on
    /// other devices and where NVML could not be read.
    pub peak_device_mb: Option<f64>,
    /// CUDA: memory in use on the GPU before the model was loaded, MB; peak − baseline is this
    /// run's share (as long as nothing else on the GPU changed meanwhile).
    pub device_baseline_mb: Option<f64>,
    /// CUDA: why the device memory could not be read (NVML missing, ...).
    pub device_memory_error: Option<String>,
    /// Where the adapter swap's time went.
    pub swap_breakdown: Option<crate::pipeline::generator::FuseStats>,
    /// One CFG step after swapping back to the plain model (a rebuilt session, or the base
    /// weights written back in place with resident weights).
    pub unet_step_after_rebuild_ms: Option<f64>,
    pub static_shapes: bool,
    pub repeats: usize,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "model {} on {} at {}x{}, {} UNet graph, {} weights ({} repeats, medians)",
            self.model,
            self.device,
            self.width,
            self.height,
            self.unet_graph,
            if self.resident_weights {
                "resident"
            } else {
                "baked-in"
            },
            self.repeats
        )?;
        writeln!(f, "  load (open + sessions)    {:>9.3} s", self.load_s)?;
        let builds: Vec<String> = self
            .session_builds
            .iter()
            .map(|(what, s)| format!("{what} {s:.3} s"))
            .collect();
        writeln!(
            f,
            "    open {:.3} s; sessions built side by side: {}",
            self.open_s,
            builds.join(", ")
        )?;
        writeln!(
            f,
            "  text encoder ({}, {} graph, 1 prompt) {:>7.3} ms",
            self.te_precision, self.te_graph, self.text_encode_ms
        )?;
        writeln!(
            f,
            "  UNet step, CFG (batch 2)  {:>9.3} ms  = {:.1} steps/s",
            self.unet_step_ms, self.steps_per_s
        )?;
        writeln!(
            f,
            "  VAE decode ({}, {} graph, bytes by the {}) {:>9.3} ms",
            self.vae_precision, self.vae_graph, self.vae_bytes, self.vae_decode_ms
        )?;
        writeln!(
            f,
            "  first step after load     {:>9.3} ms",
            self.first_step_ms
        )?;
        writeln!(
            f,
            "  first decode after load   {:>9.3} ms",
            self.first_decode_ms
        )?;
        if let Some(s) = self.adapter_swap_s {
            writeln!(f, "  adapter swap (fuse)       {:>9.3} s", s)?;
        }
        if let Some(b) = self.swap_breakdown {
            writeln!(
                f,
                "    plan {:.3} s, then ΔW + patch + sessions {:.3} s wall (ΔW + patch {:.3} s, sessions \
                 {:.3} s, summed over components done side by side), resident weights uploaded \
                 {:.3} s, old sessions freed {:.3} s",
                b.deltas_s, b.build_wall_s, b.patch_s, b.session_s, b.upload_s, b.free_s
            )?;
        }
        if let Some(s) = self.unet_step_with_adapter_ms {
            writeln!(f, "  UNet step, adapter fused  {:>9.3} ms", s)?;
        }
        if let Some(s) = self.unet_step_after_rebuild_ms {
            writeln!(f, "  UNet step, back to base   {:>9.3} ms", s)?;
        }
        if let Some(m) = self.peak_rss_mb {
            writeln!(f, "  peak host memory (RSS)    {:>9.1} MB", m)?;
        }
        if let (Some(a), Some(b)) = (self.loaded_rss_mb, self.end_rss_mb) {
            writeln!(
                f,
                "  host memory after load    {a:>9.1} MB, {b:.1} MB at the end"
            )?;
        }
        match (self.peak_device_mb, self.device_baseline_mb) {
            (Some(peak), Some(base)) => writeln!(
                f,
                "  peak device memory        {:>9.1} MB  (+{:.1} MB over the {:.1} MB in use before loading)",
                peak,
                (peak - base).max(0.0),
                base
            )?,
            _ => {
                if let Some(e) = &self.device_memory_error {
                    writeln!(f, "  peak device memory              n/a  ({e})")?;
                }
            }
        }
        write!(f, "  image, 20 steps Euler a   {:>9.3} s", self.image_s)
    }
}

/// Peak resident set size of this process in MB (Linux `VmHWM`).
pub fn peak_rss_mb() -> Option<f64> {
    proc_status_mb("VmHWM:")
}

/// Resident set size of this process now, in MB (Linux `VmRSS`).
pub fn rss_mb() -> Option<f64> {
    proc_status_mb("VmRSS:")
}

fn proc_status_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Bytes in MB as the rest of the report counts them (MiB, like VmHWM and nvidia-smi).
fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64()
}

/// Measures `spec`'s model on its device with `repeats` repetitions of each part.
pub fn run(
    spec: EngineSpec,
    rt: &'static Runtime,
    size: Option<(u32, u32)>,
    repeats: usize,
    lora: Option<&Path>,
) -> Result<BenchReport, PipelineError> {
    let repeats = repeats.max(1);
    let opts = spec.session.clone().resolved();
    let device = opts.device.to_string();
    let static_shapes = opts.static_shapes;
    // Started before the model loads: its first reading is the baseline.
    let device_mem = match opts.device {
        Device::Cuda(i) => Some(device_mem::Sampler::for_cuda(i)),
        _ => None,
    };
    let t0 = Instant::now();
    let model = crate::model::Model::open_with(&spec.model, spec.session.open_options())?;
    let open_s = t0.elapsed().as_secs_f64();
    let mut g = Generator::with_model(spec, model, rt)?;
    let load_s = t0.elapsed().as_secs_f64();
    let session_builds = g
        .load_times()
        .iter()
        .map(|(k, s)| (k.to_string(), *s))
        .collect();
    let loaded_rss_mb = rss_mb();
    let (w, h) = size.unwrap_or_else(|| g.model.default_size());
    let factor = g.model.index.vae_scale_factor.max(1) as usize;
    let (lh, lw) = (h as usize / factor, w as usize / factor);

    let mut te = Vec::new();
    let mut ctx = (Vec::new(), None);
    for _ in 0..repeats + 1 {
        let t = Instant::now();
        ctx = g.encode_text_pooled("a red fox in the snow, highly detailed")?;
        te.push(t.elapsed());
    }
    te.remove(0);
    let context: Vec<f32> = ctx.0.repeat(2);
    // SDXL's added conditioning (pooled text embedding, size/crop ids); none for SD1.
    let text_embeds = ctx.1.map(|p| p.repeat(2));
    let ids = time_ids(w, h, 2);
    let added = text_embeds.as_deref().map(|e| Added {
        text_embeds: e,
        time_ids: &ids,
    });
    // A 9-channel inpainting UNet also reads the mask and the masked picture's latents.
    let ch = if crate::pipeline::img2img::inpaint_unet(&g.model) {
        9
    } else {
        4
    };
    let sample = vec![0.1f32; 2 * ch * lh * lw];
    let job = Job {
        prompt: "a red fox in the snow".into(),
        negative: String::new(),
        sampler: Sampler::EulerA,
        schedule: Default::default(),
        sde_noise: Default::default(),
        zero_snr: false,
        sigmas: Default::default(),
        steps: 20,
        cfg: 7.0,
        width: w,
        height: h,
        seed: 1,
        batch: 1,
        init: None,
        hires: None,
    };
    if static_shapes {
        // One short job builds the sessions for this exact shape, as a real job would.
        let mut warm = job.clone();
        warm.steps = 1;
        g.generate(&warm, &|| Stop::No, &mut |_| {}, 0)?;
    }
    let t = Instant::now();
    g.unet_added(&sample, [2, ch, lh, lw], 500.0, &context, added)?;
    let first_step_ms = t.elapsed().as_secs_f64() * 1e3;
    // Median CFG step over repeats·5 steps after two warm-up steps.
    let step_s = |g: &mut Generator, phase: &str| -> Result<f64, PipelineError> {
        let sampler = profile::wanted()
            .then(|| profile::Sampler::start(phase))
            .flatten();
        let mut steps = Vec::new();
        for i in 0..repeats * 5 + 2 {
            let t = Instant::now();
            g.unet_added(&sample, [2, ch, lh, lw], 500.0, &context, added)?;
            if i >= 2 {
                steps.push(t.elapsed());
            }
        }
        if let Some(sampler) = sampler {
            eprint!("{}", sampler.stop());
        }
        Ok(median(steps))
    };
    let unet_step = step_s(&mut g, "UNet steps")?;
    let latents = vec![0.1f32; 4 * lh * lw];
    let mut vae = Vec::new();
    for _ in 0..repeats + 1 {
        let t = Instant::now();
        g.decode(&latents, lh, lw)?;
        vae.push(t.elapsed());
    }
    let first_decode_ms = vae.remove(0).as_secs_f64() * 1e3;
    let mut image = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        g.generate(&job, &|| Stop::No, &mut |_| {}, 0)?;
        image.push(t.elapsed());
    }
    let (mut adapter_swap_s, mut unet_step_with_adapter_ms) = (None, None);
    let (mut swap_breakdown, mut unet_step_after_rebuild_ms) = (None, None);
    if let Some(path) = lora {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        g.set_lora_dirs(vec![dir]);
        let dims_job = |prompt: String| {
            let mut j = job.clone();
            j.prompt = prompt;
            j.steps = 1;
            j
        };
        let mut with = job.clone();
        with.prompt = format!("a red fox in the snow <lora:{stem}:0.8>");
        with.steps = 1;
        // Swap in, out and in again at another strength; each is a full fuse (ΔW, patch, sessions).
        let mut swaps = Vec::new();
        let mut breakdown = Vec::new();
        for s in ["0.8", "0", "0.6"] {
            with.prompt = format!("a red fox in the snow <lora:{stem}:{s}>");
            let t = Instant::now();
            if static_shapes {
                g.generate(&dims_job(with.prompt.clone()), &|| Stop::No, &mut |_| {}, 0)?;
            } else {
                g.prepare(&with)?;
            }
            swaps.push(t.elapsed());
            breakdown.push(g.last_fuse());
        }
        // The breakdown of the swap whose time is the median, so the parts add up to the figure.
        let mut order: Vec<usize> = (0..swaps.len()).collect();
        order.sort_by_key(|&i| swaps[i]);
        swap_breakdown = breakdown[order[order.len() / 2]];
        adapter_swap_s = Some(median(swaps));
        unet_step_with_adapter_ms = Some(step_s(&mut g, "UNet steps after the swaps")? * 1e3);
        // Back to the plain model: a rebuilt session without adapter, to tell "rebuilt" from "fused".
        let plain = dims_job("a red fox in the snow".into());
        if static_shapes {
            g.generate(&plain, &|| Stop::No, &mut |_| {}, 0)?;
        } else {
            g.prepare(&plain)?;
        }
        unet_step_after_rebuild_ms = Some(step_s(&mut g, "UNet steps back to the base")? * 1e3);
    }
    let (peak_device_mb, device_baseline_mb, device_memory_error) = match device_mem {
        None => (None, None, None),
        Some(Ok(sampler)) => {
            let MemoryPeak { baseline, peak } = sampler.finish();
            (Some(mb(peak)), Some(mb(baseline)), None)
        }
        Some(Err(e)) => {
            tracing::warn!("device memory not measured: {e}");
            (None, None, Some(e.to_string()))
        }
    };
    Ok(BenchReport {
        model: g.model_name().to_string(),
        device,
        unet_graph: g.unet_graph().to_string(),
        resident_weights: g.resident_weights(),
        width: w,
        height: h,
        load_s,
        open_s,
        session_builds,
        text_encode_ms: median(te) * 1e3,
        unet_step_ms: unet_step * 1e3,
        steps_per_s: 1.0 / unet_step,
        vae_decode_ms: median(vae) * 1e3,
        vae_precision: g.vae_precision().to_string(),
        vae_graph: g.vae_graph().to_string(),
        vae_bytes: g.vae_bytes().to_string(),
        te_precision: g.te_precision().to_string(),
        te_graph: g.te_graph().to_string(),
        image_s: median(image),
        first_step_ms,
        first_decode_ms,
        adapter_swap_s,
        unet_step_with_adapter_ms,
        peak_rss_mb: peak_rss_mb(),
        loaded_rss_mb,
        end_rss_mb: rss_mb(),
        peak_device_mb,
        device_baseline_mb,
        device_memory_error,
        swap_breakdown,
        unet_step_after_rebuild_ms,
        static_shapes,
        repeats,
    })
}

/// `stipple bench --lora FILE --live`: a whole job's per-step time with the adapter fused vs live,
/// and the time from a strength change to the end of the first step that uses it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveBench {
    pub adapter: String,
    pub steps: u32,
    /// Median time of a sampling step (UNet with CFG + scheduler), adapter fused.
    pub fused_step_ms: f64,
    /// The same with the adapter live (branches, per-rank scales fed every step).
    pub live_step_ms: f64,
    pub overhead_pct: f64,
    /// Live layers and their total rank.
    pub live_layers: usize,
    pub live_rank: usize,
    /// Building the live UNet once (graph rewrite, weights, session).
    pub live_build_s: f64,
    /// Strength changed between steps → end of the next step (which uses it), live: no rebuild.
    pub dial_to_step_live_ms: f64,
    /// The same through the refuse path (a UNet session rebuild, or with resident weights a host
    /// re-fuse and upload).
    pub dial_to_step_refuse_ms: f64,
    /// With `--patch-on device`: the same through the device patch, which re-runs its patch
    /// program with the new strength before the step (null without it).
    pub dial_to_step_device_ms: Option<f64>,
    /// With `--patch-on device`: the median step of a job whose UNet strength changes every step
    /// (a schedule), the program re-run before each step included (null without it).
    pub scheduled_step_device_ms: Option<f64>,
    /// With `--patch-on device`: the program's mean re-run in that schedule (synchronized), what a
    /// new strength adds to the step that uses it (null when the spare UNet met every change).
    pub rerun_device_ms: Option<f64>,
    /// With `--patch-on device`: how many UNet weights the schedule's re-runs wrote each (mean),
    /// and how many the commit of that program writes (the re-run skips those whose value does
    /// not scale with a strength).
    pub rerun_writes: Option<f64>,
    pub commit_writes: Option<usize>,
    /// With the spare UNet (`--spare-unet`): the schedule's steps that swapped it in, patched
    /// while the step before ran; the mean re-run of its program, and the mean time a step waited
    /// for that re-run after its own run had ended (over the re-runs that ran beside a step).
    pub spare_swaps: Option<u64>,
    pub prefetch_ms: Option<f64>,
    pub prefetch_wait_ms: Option<f64>,
}

impl fmt::Display for LiveBench {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "live adapter {} ({} layers, total rank {}), {}-step jobs, medians",
            self.adapter, self.live_layers, self.live_rank, self.steps
        )?;
        writeln!(
            f,
            "  step, adapter fused       {:>9.3} ms",
            self.fused_step_ms
        )?;
        writeln!(
            f,
            "  step, adapter live        {:>9.3} ms  ({:+.1}%)",
            self.live_step_ms, self.overhead_pct
        )?;
        writeln!(
            f,
            "  live UNet build (once)    {:>9.3} s",
            self.live_build_s
        )?;
        writeln!(
            f,
            "  set_strength → step, live {:>9.3} ms",
            self.dial_to_step_live_ms
        )?;
        write!(
            f,
            "  same, refuse (rebuild)    {:>9.3} ms",
            self.dial_to_step_refuse_ms
        )?;
        if let Some(ms) = self.dial_to_step_device_ms {
            write!(f, "\n  same, device patch re-run {ms:>9.3} ms")?;
        }
        if let Some(ms) = self.scheduled_step_device_ms {
            write!(
                f,
                "\n  step, schedule (device)   {ms:>9.3} ms  ({:+.1}%)",
                (ms / self.fused_step_ms - 1.0) * 100.0
            )?;
        }
        if let Some(ms) = self.rerun_device_ms {
            write!(f, "\n  patch re-run alone (mean) {ms:>9.3} ms")?;
        }
        if let (Some(r), Some(c)) = (self.rerun_writes, self.commit_writes) {
            write!(
                f,
                "\n  UNet weights written: {r:.0} per re-run, {c} at the commit"
            )?;
        }
        if let Some(n) = self.spare_swaps.filter(|&n| n > 0) {
            let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3} ms"));
            write!(
                f,
                "\n  spare UNet: {n} steps swapped it in; its re-run {} beside the step, \
                 which then waited {} for it",
                ms(self.prefetch_ms),
                ms(self.prefetch_wait_ms)
            )?;
        }
        Ok(())
    }
}

/// Runs one job of `steps` steps with `method`; returns the step durations (the first left out:
/// it includes session builds) and, when `dial_at` is given, the time from changing the adapter's
/// UNet strength at that step's check to the end of the next step.
fn timed_job(
    g: &mut Generator,
    job: &Job,
    method: crate::live::LoraMethod,
    dial: Option<(&str, u32)>,
) -> Result<(Vec<Duration>, Option<Duration>), PipelineError> {
    g.set_lora_method(method);
    let dials = g.dials();
    let calls = std::cell::Cell::new(0u32);
    let dialled_at = std::cell::Cell::new(None::<Instant>);
    let stop = || {
        if let Some((name, at)) = dial {
            if calls.get() == at {
                dials.set(name, crate::prompt::Component::Unet, 0.3);
                dialled_at.set(Some(Instant::now()));
            }
        }
        calls.set(calls.get() + 1);
        Stop::No
    };
    let mut marks = Vec::new();
    let mut latency = None;
    let r = g.generate(
        job,
        &stop,
        &mut |e| {
            if let crate::job::Event::Step(p) = e {
                marks.push(Instant::now());
                if let (Some((_, at)), Some(t)) = (dial, dialled_at.get()) {
                    if p.step == at + 2 {
                        latency = Some(t.elapsed());
                    }
                }
            }
        },
        0,
    );
    dials.clear();
    g.set_lora_method(crate::live::LoraMethod::default());
    r?;
    let steps = marks.windows(2).map(|w| w[1] - w[0]).collect();
    Ok((steps, latency))
}

/// Measures live mode against fuse mode for the adapter `lora` on `spec`'s model; with the device
/// patch (`--patch-on device`, resident weights) the refuse row is the host re-fuse and a third row
/// the device patch's re-run, measured on a second load after the first is dropped.
pub fn live(
    spec: EngineSpec,
    rt: &'static Runtime,
    lora: &Path,
    steps: u32,
) -> Result<LiveBench, PipelineError> {
    use crate::live::LoraMethod;
    let device_spec =
        (spec.session.patch_on_device() && spec.session.resident_weights()).then(|| spec.clone());
    let mut spec = spec;
    spec.session.patch_on_device = Some(false);
    let mut g = Generator::load(spec, rt)?;
    let (w, h) = g.model.default_size();
    let dir = lora.parent().unwrap_or(Path::new(".")).to_path_buf();
    let stem = lora
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    g.set_lora_dirs(vec![dir.clone()]);
    let job = Job {
        prompt: format!("a red fox in the snow <lora:{stem}:0.8>"),
        negative: String::new(),
        sampler: Sampler::Euler,
        schedule: Default::default(),
        sde_noise: Default::default(),
        zero_snr: false,
        sigmas: Default::default(),
        steps: steps.max(4),
        cfg: 7.0,
        width: w,
        height: h,
        seed: 1,
        batch: 1,
        init: None,
        hires: None,
    };
    // Each method twice; the second run's steps count (sessions built, caches warm).
    let mut fused = Vec::new();
    let mut live = Vec::new();
    for _ in 0..2 {
        fused = timed_job(&mut g, &job, LoraMethod::Refuse, None)?.0;
        live = timed_job(&mut g, &job, LoraMethod::Live, None)?.0;
    }
    let live_build_s = g.last_fuse().map_or(0.0, |f| f.session_s);
    let (live_layers, live_rank) = g.live_factors().map_or((0, 0), |f| {
        (f.layers.len(), f.layers.iter().map(|l| l.rank).sum())
    });
    let at = job.steps / 2;
    let dial_live = timed_job(&mut g, &job, LoraMethod::Live, Some((&stem, at)))?.1;
    let dial_refuse = timed_job(&mut g, &job, LoraMethod::Refuse, Some((&stem, at)))?.1;
    drop(g);
    let (dial_device, scheduled, rerun_device_ms, writes, spare) = match device_spec {
        Some(spec) => {
            let mut d = Generator::load(spec, rt)?;
            d.set_lora_dirs(vec![dir]);
            // Twice: the first stages the program (and warms the caches); the second's counts.
            let mut latency = None;
            // The dialled strength reaches its step by a re-run, or on the spare UNet patched
            // beside the step before it.
            let met = |c: PatchCounts| c.reruns + c.spare_swaps;
            for _ in 0..2 {
                let before = met(d.patch_counts());
                latency = timed_job(&mut d, &job, LoraMethod::Fuse, Some((&stem, at)))?.1;
                if met(d.patch_counts()) == before {
                    return Err(PipelineError::Job(
                        "the device patch did not re-run its program for the dialled strength"
                            .into(),
                    ));
                }
            }
            // From 1 at the first step to 0.2 at the last: a new strength every step.
            let sched = Job {
                prompt: format!("a red fox in the snow <lora:{stem}:unet=1@0,0.2@1>"),
                ..job.clone()
            };
            let mut sched_steps = Vec::new();
            let mut rerun_ms = None;
            let mut rerun_writes = None;
            let mut spare = (0, None, None);
            for _ in 0..2 {
                let before = d.patch_counts();
                sched_steps = timed_job(&mut d, &sched, LoraMethod::Fuse, None)?.0;
                let after = d.patch_counts();
                let n = after.reruns - before.reruns;
                let swaps = after.spare_swaps - before.spare_swaps;
                let mean = |us: u64, n: u64| (n > 0).then(|| us as f64 / 1e3 / n as f64);
                spare = (
                    swaps,
                    mean(
                        after.prefetch_us - before.prefetch_us,
                        after.prefetches - before.prefetches,
                    ),
                    mean(
                        after.prefetch_wait_us - before.prefetch_wait_us,
                        after.overlapped - before.overlapped,
                    ),
                );
                rerun_ms = mean(after.rerun_us - before.rerun_us, n);
                rerun_writes =
                    (n > 0).then(|| (after.rerun_writes - before.rerun_writes) as f64 / n as f64);
                if n + swaps < u64::from(sched.steps) - 1 {
                    return Err(PipelineError::Job(
                        "the device patch did not re-run its program at every step of a schedule"
                            .into(),
                    ));
                }
            }
            let commit_writes = d.unet_patch_writes().map(|(commit, _)| commit);
            (
                Some(latency),
                Some(median(sched_steps) * 1e3),
                rerun_ms,
                Some((rerun_writes, commit_writes)),
                Some(spare),
            )
        }
        None => (None, None, None, None, None),
    };
    let fused_step_ms = median(fused) * 1e3;
    let live_step_ms = median(live) * 1e3;
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    Ok(LiveBench {
        adapter: stem,
        steps: job.steps,
        fused_step_ms,
        live_step_ms,
        overhead_pct: (live_step_ms / fused_step_ms - 1.0) * 100.0,
        live_layers,
        live_rank,
        live_build_s,
        dial_to_step_live_ms: ms(dial_live),
        dial_to_step_refuse_ms: ms(dial_refuse),
        dial_to_step_device_ms: dial_device.map(ms),
        scheduled_step_device_ms: scheduled,
        rerun_device_ms,
        rerun_writes: writes.and_then(|w| w.0),
        commit_writes: writes.and_then(|w| w.1),
        spare_swaps: spare.map(|s| s.0),
        prefetch_ms: spare.and_then(|s| s.1),
        prefetch_wait_ms: spare.and_then(|s| s.2),
    })
}
