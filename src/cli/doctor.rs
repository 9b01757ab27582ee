//! `stipple doctor`: ONNX Runtime and its execution providers, GPUs and CUDA libraries, and a
//! model's components, as one report ([`report`]); exit 1 when something is wrong.

use super::error::CliError;
use crate::runtime::Runtime;
use clap::Args;
use std::fmt::Write;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct DoctorArgs {
    /// Model to check: a .safetensors checkpoint, a diffusers folder or a stipple folder (default: the bundled tiny model)
    #[arg(long, value_name = "PATH")]
    pub model: Option<PathBuf>,
}

pub fn run(a: &DoctorArgs, ort_lib: Option<&Path>) -> Result<(), CliError> {
    let dir = a.model.clone().unwrap_or_else(super::default_model);
    let (text, ok) = report(ort_lib, &dir).map_err(CliError::failed)?;
    super::emit(&text)?;
    if !ok {
        return Err(CliError::Failed("doctor found problems (see above)".into()));
    }
    Ok(())
}

/// The report, and whether everything checked is usable.
pub fn report(ort_lib: Option<&Path>, dir: &Path) -> Result<(String, bool), std::fmt::Error> {
    let mut ok = true;
    let mut s = String::new();
    match Runtime::get(ort_lib, false) {
        Ok(rt) => {
            writeln!(
                s,
                "ONNX Runtime  {} ({}, found by {})",
                rt.version,
                rt.path.display(),
                rt.origin
            )?;
            for (name, available) in crate::runtime::ep::providers() {
                let state = if available {
                    "available"
                } else {
                    "not in this build"
                };
                writeln!(s, "  {name:<24} {state}")?;
            }
        }
        Err(e) => {
            ok = false;
            writeln!(s, "ONNX Runtime  NOT LOADED: {e}")?;
        }
    }
    let gpus = gpu_list();
    writeln!(s, "devices       cpu{gpus}")?;
    // Asking ort for providers without a loaded library would make it try (and panic) on its own.
    let cuda_ep = ok
        && crate::runtime::ep::providers()
            .iter()
            .any(|(n, a)| *a && n.starts_with("CUDA"));
    if !gpus.is_empty() || cuda_ep {
        cuda_libs(&mut s)?;
    }
    match crate::model::Model::open(dir) {
        Ok(mut m) => {
            // An SD 2.x file that does not say what it predicts is tested as generation would.
            if let (true, Ok(rt)) = (m.prediction_pending, Runtime::get(ort_lib, false)) {
                if let Err(e) = crate::pipeline::prediction_test::settle(&mut m, rt) {
                    ok = false;
                    writeln!(s, "prediction test FAILED: {}", super::error::chain(&e))?;
                }
            }
            model(&mut s, dir, &m)?
        }
        Err(e) => {
            ok = false;
            writeln!(
                s,
                "model         {}: {}",
                dir.display(),
                super::error::chain(&e)
            )?;
        }
    }
    Ok((s, ok))
}

fn cuda_libs(s: &mut String) -> std::fmt::Result {
    let libs = crate::runtime::cuda_libs::find();
    if libs.missing.is_empty() {
        writeln!(s, "CUDA libraries all {} found", libs.found.len())?;
    } else {
        writeln!(s, "CUDA libraries MISSING: {}", libs.missing.join(", "))?;
    }
    for (name, path) in &libs.found {
        writeln!(s, "  {name:<40} {}", path.display())?;
    }
    Ok(())
}

fn model(s: &mut String, dir: &Path, m: &crate::model::Model) -> std::fmt::Result {
    use crate::model::ModelSource;
    writeln!(
        s,
        "model         {} ({}, {})",
        dir.display(),
        m.index.family.facts().name,
        m.index.dtype
    )?;
    for line in &m.evidence {
        writeln!(s, "  {line}")?;
    }
    if !m
        .evidence
        .iter()
        .any(|l| l.starts_with(crate::model::prediction::EVIDENCE_PREFIX))
    {
        let p = crate::model::prediction::of_config(&m.scheduler_config);
        writeln!(s, "  prediction: {p:?} (scheduler config)")?;
    }
    let sched: serde_json::Value = serde_json::from_str(&m.scheduler_config).unwrap_or_default();
    if sched
        .get("rescale_betas_zero_snr")
        .and_then(|v| v.as_bool())
        == Some(true)
    {
        writeln!(
            s,
            "  zero terminal SNR: on (rescale_betas_zero_snr in the scheduler config)"
        )?;
    }
    match &m.source {
        ModelSource::Folder => {}
        ModelSource::SingleFile { template } => writeln!(
            s,
            "  single-file checkpoint, graphs of the built-in template {template}"
        )?,
        ModelSource::Diffusers { template } => writeln!(
            s,
            "  diffusers folder, graphs of the built-in template {template}"
        )?,
    }
    let mut kinds: Vec<_> = m.components.keys().copied().collect();
    kinds.sort_by_key(|k| k.dir_name());
    for k in kinds {
        let c = &m.components[&k];
        writeln!(
            s,
            "  {:<14} {} initializers, {:.1} MB of weights, weight map consistent",
            k.dir_name(),
            c.graph.externals.len(),
            c.buffer_len() as f64 / 1e6
        )?;
        if let Some(f) = &c.cuda {
            // The UNet's second graph is ORT's fused one; the VAE's and text encoders' are fp16.
            let what = match k {
                crate::model::layout::ComponentKind::Unet => {
                    let when = match c.cuda_opt_in {
                        true => " (runs only with --graph cuda: not yet checked on a GPU)",
                        false => "",
                    };
                    format!("fused CUDA graph{when}: {}", fused_ops(&f.graph.bytes))
                }
                _ => "fp16 graph".to_string(),
            };
            writeln!(
                s,
                "  {:<14} {what}, {} initializers, weight map consistent",
                "",
                f.graph.externals.len()
            )?;
        }
        if let Some(f) = &c.fused {
            // The VAE decoder's and the text encoders' fused fp16 graphs (CUDA's default with fp16).
            writeln!(
                s,
                "  {:<14} fused fp16 graph: {}, {} initializers, weight map consistent",
                "",
                fused_ops(&f.graph.bytes),
                f.graph.externals.len()
            )?;
        }
        if c.fused32.is_some() {
            // Made at load; what an fp32 decode runs on CUDA (SDXL's own VAE, the overflow fallback).
            writeln!(
                s,
                "  {:<14} and that graph made f32 (fp32 decodes on CUDA)",
                ""
            )?;
        }
    }
    Ok(())
}

/// How many of ONNX Runtime's fused operators a graph holds, e.g. "16 MultiHeadAttention, 65 NhwcConv".
fn fused_ops(graph: &[u8]) -> String {
    use prost::Message;
    let Ok(m) = crate::model::onnx_proto::ModelProto::decode(graph) else {
        return "unreadable".into();
    };
    let mut counts = std::collections::BTreeMap::new();
    for n in m.graph.iter().flat_map(|g| &g.node) {
        if n.domain() == "com.microsoft" {
            *counts.entry(n.op_type().to_string()).or_insert(0) += 1;
        }
    }
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    parts.join(", ")
}

/// GPUs as the NVIDIA driver lists them (no CUDA call needed), with their model names.
fn gpu_list() -> String {
    let Ok(rd) = std::fs::read_dir("/proc/driver/nvidia/gpus") else {
        return String::new();
    };
    let mut buses: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    buses.sort();
    buses
        .iter()
        .enumerate()
        .map(|(i, bus)| {
            let model = std::fs::read_to_string(bus.join("information"))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("Model:").map(|m| m.trim().to_string()))
                })
                .unwrap_or_default();
            format!(", cuda:{i} ({model})")
        })
        .collect()
}
