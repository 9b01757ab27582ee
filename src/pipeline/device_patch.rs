//! The device patch: a resident session's adapter change computed by a patch program
//! ([`crate::patch::program`]) on the session's own device, from pristine base copies kept there.
//! [`stage`] builds the program for an adapter set (dense ΔW on the host only for types without
//! factors); [`super::resident::Net::commit_device`] runs it into the weight buffers ([`run`]).

use super::device_run::{run, tensor_bytes, Pass, Sink};
pub use super::device_run::{DeviceStaged, Need};
use super::resident::{Layout, ResidentError};
use crate::model::layout::{Component, GraphKind};
use crate::model::ElemType;
use crate::model::{Graph, WeightMapEntry};
use crate::patch::program::{self, Part, Site, Term};
use crate::patch::{self, DeltaSource, Elems, PatchError};
use crate::runtime::{build_session, Device, Runtime, SessionError, SessionOptions};
use ort::value::{DynTensor, DynValue};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

/// Refuses a program that does not fit the free memory of `device`: a CUDA device's is read
/// through NVML (when NVML cannot be read, the check is skipped and ONNX Runtime's allocation fails
/// instead, which leaves the weights as they were too); other devices are not checked, unless the
/// test hook [`test_free_bytes`] gives the figure.
fn check_fits(what: &str, device: Device, need: Need) -> Result<(), ResidentError> {
    // A program that writes nothing (a text encoder no adapter reaches) needs nothing.
    if need.total() == 0 {
        return Ok(());
    }
    let free = match (test_free_bytes(), device) {
        (Some(free), _) => Ok(free),
        (None, Device::Cuda(id)) => cuda_free_bytes(id),
        (None, _) => return Ok(()),
    };
    match free {
        Ok(free) if need.total() > free => Err(ResidentError::DeviceMemory {
            what: what.to_string(),
            need,
            free,
        }),
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::debug!("{what}: free device memory unknown ({e}); patch not checked");
            Ok(())
        }
    }
}

/// The free memory of CUDA device `id` (as ONNX Runtime numbers it), read through NVML.
pub(crate) fn cuda_free_bytes(id: i32) -> Result<u64, crate::runtime::device_mem::DeviceMemError> {
    use crate::runtime::device_mem::{Nvml, Target};
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    Target::for_cuda(id.max(0) as u32, visible.as_deref())
        .and_then(|t| Nvml::open(&t))
        .and_then(|n| n.free_bytes())
}

/// Patch programs checked against the free memory since the process started (the test hook's
/// count; a program that needs nothing is not checked).
static CHECKS: AtomicU64 = AtomicU64::new(0);

/// The test hook `STIPPLE_DEVICE_FREE_BYTES=BYTES[@K]` (read only here, never a user's setting):
/// from the process's `K`-th checked patch program on (from 0, default 0), the device has
/// `BYTES` free, on every device, the CPU included, so a test can refuse an adapter set without
/// filling a GPU; `@K` spares the first `K` checks (the adapter set a test keeps). A value that
/// does not parse is ignored.
fn test_free_bytes() -> Option<u64> {
    let v = std::env::var("STIPPLE_DEVICE_FREE_BYTES").ok()?;
    let (bytes, from) = match v.split_once('@') {
        Some((b, k)) => (b, k.trim().parse::<u64>().ok()?),
        None => (v.as_str(), 0),
    };
    let bytes = bytes.trim().parse::<u64>().ok()?;
    (CHECKS.fetch_add(1, Ordering::Relaxed) >= from).then_some(bytes)
}

/// A host tensor holding `elems` as `elem`, shaped `dims`.
fn host_tensor(elems: Elems, elem: ElemType, dims: &[usize]) -> Result<DynTensor, ort::Error> {
    super::resident::host_tensor(elems, elem, dims.iter().map(|&d| d as i64).collect())
}

/// Builds the patch program that brings `layout`'s weights to `deltas` (the whole adapter set
/// wanted): every weight a delta reaches and every one the last change left patched. Nothing on
/// the device changes here.
pub fn stage(
    rt: &Runtime,
    opts: &SessionOptions,
    layout: &Layout,
    component: &Component,
    deltas: &dyn DeltaSource,
) -> Result<DeviceStaged, ResidentError> {
    let picked = layout.picked(deltas)?;
    let entries: Vec<(usize, &WeightMapEntry)> =
        picked.iter().map(|&i| (i, layout.entry(i))).collect();
    let based = |i: usize| layout.base_elem(i);
    let what = layout.what();
    stage_entries(
        rt,
        opts,
        what,
        layout.graph(),
        component,
        &entries,
        &based,
        deltas,
        program::f16_gemm_wanted(),
    )
}

/// [`stage`] for `entries` (index, weight) of `graph`; `based` gives the element type of the base
/// copies the device already holds.
#[allow(clippy::too_many_arguments)]
fn stage_entries(
    rt: &Runtime,
    opts: &SessionOptions,
    what: &str,
    graph: &Graph,
    component: &Component,
    entries: &[(usize, &WeightMapEntry)],
    based: &dyn Fn(usize) -> Option<ElemType>,
    deltas: &dyn DeltaSource,
    f16_gemm: bool,
) -> Result<DeviceStaged, ResidentError> {
    let what = what.to_string();
    let cname = component.kind.to_string();
    let patch_err = |param: &str, message: String| PatchError::Delta {
        component: cname.clone(),
        param: param.to_string(),
        message,
    };
    let mut strengths = Vec::new();
    let mut program_terms = Vec::new();
    let mut used = HashSet::new();
    let mut sites = Vec::with_capacity(entries.len());
    let mut new_bases = Vec::new();
    let mut patched = HashSet::new();
    let mut factor_bytes = 0;
    let mut need = Need::default();
    for &(i, entry) in entries {
        let mut parts = Vec::new();
        for src in entry.sources() {
            let shape = component
                .weights
                .tensor(src)
                .map(|t| t.shape.to_vec())
                .ok_or_else(|| PatchError::MissingSource {
                    component: cname.clone(),
                    source_name: src.to_string(),
                })?;
            let mut terms = Vec::new();
            if deltas.may_change(src) {
                used.insert(src);
                for t in deltas.terms(src).map_err(|m| patch_err(src, m))? {
                    factor_bytes += match &t.delta {
                        program::Delta::Factors { up, down, .. } => (up.len() + down.len()) * 4,
                        program::Delta::Dense(d) => d.len() * 4,
                    };
                    program_terms.push(super::device_run::ProgramTerm {
                        origin: t.origin,
                        linear: t.linear,
                        strength: t.strength,
                    });
                    let slot = t.linear.then(|| {
                        strengths.push(t.strength);
                        strengths.len() - 1
                    });
                    terms.push(Term {
                        slot,
                        delta: t.delta,
                    });
                }
            }
            parts.push(Part { shape, terms });
        }
        if parts.iter().any(|p| !p.terms.is_empty()) {
            patched.insert(i);
        }
        let base_elem = match based(i) {
            Some(e) => e,
            None => {
                let (base_elem, elems) = patch::pristine(component, graph, entry)?;
                need.bases += elems.byte_len() as u64;
                let host = host_tensor(elems, base_elem, &entry.shape).map_err(|e| {
                    ResidentError::Upload {
                        what: what.clone(),
                        message: format!("{}: {e}", entry.name),
                    }
                })?;
                new_bases.push((i, base_elem, host));
                base_elem
            }
        };
        let elem =
            crate::model::layout::elem_of(graph, &entry.name).ok_or_else(|| PatchError::Elem {
                component: cname.clone(),
                init: entry.name.clone(),
                elem: entry.dtype.clone(),
            })?;
        sites.push((
            i,
            Site {
                entry,
                elem,
                base_elem,
                parts,
            },
        ));
    }
    patch::buffer::check_used(&cname, deltas, &used)?;
    need.factors = factor_bytes as u64;
    need.working = 12
        * entries
            .iter()
            .map(|(_, e)| e.length as u64)
            .max()
            .unwrap_or(0);
    check_fits(&what, opts.device, need)?;
    // A re-run (a strength change of the same set) writes only the weights whose value scales
    // with a strength; the others are written once, at the commit.
    let (scaled, fixed): (Vec<_>, Vec<_>) = sites.into_iter().partition(|(_, s)| s.scales());
    let slots = strengths.len();
    let build_pass = |sites: Vec<(usize, Site)>, kind: &str, graph: bool| {
        let (entries, sites): (Vec<usize>, Vec<Site>) = sites.into_iter().unzip();
        let built = program::build(&sites, slots, f16_gemm).map_err(|e| ResidentError::Graph {
            what: what.clone(),
            message: e.to_string(),
        })?;
        if !entries.is_empty() {
            dump(&what, kind, &built);
        }
        pass(
            rt,
            opts,
            &format!("{what} {kind} patch program"),
            built,
            entries,
            graph,
        )
    };
    // Replayed as a CUDA graph, a program is a few launches instead of one per operation (about
    // 1200 for SD1.5). Only the re-run program is captured: the fixed one runs once per commit,
    // which a capture would not pay back.
    let graph = opts.cuda.patch_graph && matches!(opts.device, crate::runtime::Device::Cuda(_));
    let rerun = build_pass(scaled, "rerun", graph)?;
    let fixed = build_pass(fixed, "commit", false)?;
    Ok(DeviceStaged {
        rerun,
        fixed,
        strengths,
        terms: program_terms,
        adapters: None,
        new_bases,
        patched,
        factor_bytes,
    })
}

/// The session of `built` (none when it writes no weight), replayed as a CUDA graph when `graph`
/// and ONNX Runtime can capture it.
fn pass(
    rt: &Runtime,
    opts: &SessionOptions,
    name: &str,
    built: program::Program,
    entries: Vec<usize>,
    graph: bool,
) -> Result<Pass, ResidentError> {
    if entries.is_empty() {
        return Ok(Pass {
            session: None,
            entries,
            graph: false,
            captured: None,
        });
    }
    let build = |graph: bool| {
        let mut popts = opts.clone();
        popts.cuda.cuda_graph = graph;
        popts.rarely_run = true;
        build_session(
            rt,
            name,
            &built.model,
            program::DATA_FILE,
            built.data.clone(),
            &popts,
            &[],
            &[],
        )
    };
    // One that cannot be captured still runs, launch by launch.
    let (session, graph) = match build(graph) {
        Ok(s) => (s, graph),
        Err(e @ SessionError::CudaGraph { .. }) => {
            tracing::warn!("{e}; the patch program runs uncaptured");
            (build(false)?, false)
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Pass {
        session: Some(session),
        entries,
        graph,
        captured: None,
    })
}

/// For profiling a program outside stipple (`scripts/patch_profile.py` on a GPU box):
/// `STIPPLE_DUMP_PATCH=DIR` writes each program built to `DIR/<component>-<n>-<kind>/` (its graph
/// and the external-data file it names; `kind` is `rerun` or `commit`). A failure only warns: it is
/// a diagnostic.
fn dump(what: &str, kind: &str, built: &program::Program) {
    let Some(dir) = std::env::var_os("STIPPLE_DUMP_PATCH") else {
        return;
    };
    let tag: String = what
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::path::Path::new(&dir).join(format!("{tag}-{n}-{kind}"));
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("program.onnx"), &built.model))
        .and_then(|()| std::fs::write(dir.join(program::DATA_FILE), &built.data[..]));
    match written {
        Ok(()) => tracing::warn!("patch program written to {}", dir.display()),
        Err(e) => tracing::warn!(
            "could not write the patch program to {}: {e}",
            dir.display()
        ),
    }
}

/// The weights the patch program writes for `deltas` on `component`'s `which` graph, run on the
/// CPU from fresh base copies: (initializer, bytes) of every weight a delta reaches, in the weight
/// map's order. What the device patch computes (`f16_gemm`: with the f16 Gemm path), for checks
/// against the host fuse.
pub fn program_weights(
    rt: &Runtime,
    component: &Component,
    which: GraphKind,
    deltas: &dyn DeltaSource,
    f16_gemm: bool,
) -> Result<Vec<(String, Vec<u8>)>, ResidentError> {
    let (graph, map) = patch::graph_of(component, which)?;
    let entries: Vec<(usize, &WeightMapEntry)> = map
        .initializers
        .iter()
        .filter(|e| e.sources().iter().any(|s| deltas.may_change(s)))
        .enumerate()
        .collect();
    let opts = SessionOptions::default();
    let what = component.kind.to_string();
    let none = |_: usize| None;
    let mut staged = stage_entries(
        rt, &opts, &what, graph, component, &entries, &none, deltas, f16_gemm,
    )?;
    let err = |e: ort::Error| ResidentError::Upload {
        what: what.clone(),
        message: e.to_string(),
    };
    let bases: HashMap<usize, DynValue> = std::mem::take(&mut staged.new_bases)
        .into_iter()
        .map(|(i, _, t)| (i, t.into_dyn()))
        .collect();
    // Both programs, each into host buffers of its weights: (layout index, buffer).
    let mut written = HashMap::new();
    for pass in [&mut staged.rerun, &mut staged.fixed] {
        let mut targets = Vec::with_capacity(pass.entries.len());
        for &i in &pass.entries {
            // Layout indices here are positions in `entries`.
            let e = entries[i].1;
            let elem = crate::model::layout::elem_of(graph, &e.name).unwrap_or(ElemType::F32);
            let zeros = match elem.size().unwrap_or(4) {
                2 => Elems::Two(vec![0; e.length / 2]),
                _ => Elems::Four(vec![0; e.length / 4]),
            };
            targets.push(host_tensor(zeros, elem, &e.shape).map_err(err)?.into_dyn());
        }
        let mut base_refs = Vec::with_capacity(pass.entries.len());
        for i in &pass.entries {
            base_refs.push(bases.get(i).ok_or_else(|| ResidentError::Upload {
                what: what.clone(),
                message: format!("no base copy of weight {i}"),
            })?);
        }
        run(
            pass.session.as_mut(),
            &staged.strengths,
            &base_refs,
            Sink::Copied(targets.iter().collect()),
            None,
        )
        .map_err(err)?;
        written.extend(pass.entries.iter().copied().zip(targets));
    }
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in &entries {
        let t = written.get(i).ok_or_else(|| ResidentError::Upload {
            what: what.clone(),
            message: format!("no program wrote {}", e.name),
        })?;
        let (ptr, len) = tensor_bytes(t).map_err(err)?;
        // SAFETY: `t` is a host tensor of `len` bytes, alive here.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len) }.to_vec();
        out.push((e.name.clone(), bytes));
    }
    Ok(out)
}
