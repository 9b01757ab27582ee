//! Assembles one component's external-data buffer, laid out as the graph's offsets say.
//!
//! [`assemble`] (plain graph) and [`assemble_graph`] (any of a component's graphs) copy untouched
//! weights byte for byte when the stored dtype matches the graph's, and otherwise convert through
//! f32, adding the delta (torch layout) before the transform (transpose, NHWC, per-head packing).

use super::inflight::InFlight;
use super::program::Delta;
use crate::model::layout::{buffer_len, elem_of, Component, GraphKind};
use crate::model::weightmap::{Transform, WeightMapEntry};
use crate::model::ElemType;
use rayon::prelude::*;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error("{component}: weight {source_name} is missing from the weights file")]
    MissingSource {
        component: String,
        source_name: String,
    },
    #[error("{component}: delta for {param} has {got} values, the weight has {want}")]
    DeltaSize {
        component: String,
        param: String,
        got: usize,
        want: usize,
    },
    #[error("{component}: deltas for parameters the graph does not use: {}", names.join(", "))]
    UnusedDeltas {
        component: String,
        names: Vec<String>,
    },
    #[error("{component}: initializer {init} has element type {elem}, which cannot be patched")]
    Elem {
        component: String,
        init: String,
        elem: String,
    },
    #[error("{component}: {param}: {message}")]
    Delta {
        component: String,
        param: String,
        message: String,
    },
    #[error("{component}: initializer {init} overlaps another or does not fit its place in the weights buffer")]
    Layout { component: String, init: String },
    #[error("{component}: {param} is folded into a constant when the session is built (static shapes), so an adapter cannot change it in place; run without --static-shapes or --cuda-graph")]
    Folded { component: String, param: String },
    #[error("{component}: writing its weights to the staging file: {message}")]
    Staging { component: String, message: String },
    #[error("{component}: the model folder has no {kind:?} graph")]
    NoGraph { component: String, kind: GraphKind },
}

/// Where the patch gets ΔW from: a map of dense deltas (bake, live, tests), or deltas computed
/// when the patch asks for them (the fuse path), in its parallel loop.
pub trait DeltaSource: Sync {
    /// Every parameter this source may change; each must feed some initializer of the graph.
    fn params(&self) -> Vec<&str>;
    fn may_change(&self, param: &str) -> bool;
    /// Σ strength·ΔW of `param` (torch layout, f32); None when nothing adds to it.
    fn delta(&self, param: &str) -> Result<Option<Cow<'_, [f32]>>, String>;
    /// The terms of `param`'s sum with their strengths, for a patch that applies the strengths
    /// itself (the device patch), in the order [`Self::delta`] adds them; by default the whole
    /// delta as one term that holds its strength.
    fn terms(&self, param: &str) -> Result<Vec<SourceTerm>, String> {
        Ok(self
            .delta(param)?
            .map(|d| SourceTerm {
                strength: 1.0,
                linear: false,
                origin: None,
                delta: Delta::Dense(d.into_owned()),
            })
            .into_iter()
            .collect())
    }
}

/// One term of a parameter's `Σ sᵢ·ΔWᵢ`: `strength·delta` when `linear`, else `delta` as it is
/// (it already holds its strength).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceTerm {
    pub strength: f32,
    pub linear: bool,
    /// Where the strength comes from, when the source knows: what lets a strength change re-run a
    /// patch program instead of building a new one.
    pub origin: Option<TermOrigin>,
    pub delta: Delta,
}

/// Where a term's strength comes from: adapter `adapter` (its index in the set) at weight `at`
/// (`{module}.weight`, whose region and block weight scale it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermOrigin {
    pub adapter: usize,
    pub at: String,
}

impl DeltaSource for HashMap<String, Vec<f32>> {
    fn params(&self) -> Vec<&str> {
        self.keys().map(String::as_str).collect()
    }
    fn may_change(&self, param: &str) -> bool {
        self.contains_key(param)
    }
    fn delta(&self, param: &str) -> Result<Option<Cow<'_, [f32]>>, String> {
        Ok(self.get(param).map(|d| Cow::Borrowed(d.as_slice())))
    }
}

/// What [`assemble`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PatchStats {
    pub initializers: usize,
    pub patched: usize,
    pub bytes: usize,
}

/// Builds the plain graph's buffer for `component` with `deltas` (parameter name → ΔW in torch
/// layout, f32) added.
///
/// Fails before returning anything if a delta does not fit, so a model is never half-patched.
pub fn assemble(
    component: &Component,
    deltas: &dyn DeltaSource,
) -> Result<(Arc<[u8]>, PatchStats), PatchError> {
    assemble_graph(component, GraphKind::Plain, deltas)
}

/// [`assemble`] for one of the component's graphs (the fused CUDA graph repacks weights).
///
/// Initializers are filled in parallel, each into its own slice of the buffer.
pub fn assemble_graph(
    component: &Component,
    kind: GraphKind,
    deltas: &dyn DeltaSource,
) -> Result<(Arc<[u8]>, PatchStats), PatchError> {
    let cname = component.kind.to_string();
    let (graph, weightmap) = graph_of(component, kind)?;
    let mut arc = zeroed_buffer(buffer_len(graph));
    let Some(buf) = Arc::get_mut(&mut arc) else {
        unreachable!("a freshly collected Arc has a single owner")
    };
    let bytes = buf.len();
    let mut order: Vec<&WeightMapEntry> = weightmap.initializers.iter().collect();
    order.sort_by_key(|e| e.offset);
    let mut jobs = Vec::with_capacity(order.len());
    let mut rest: &mut [u8] = buf;
    let mut pos = 0usize;
    for e in order {
        let skip = e.offset.checked_sub(pos);
        let fits = skip.is_some_and(|s| s + e.length <= rest.len());
        let (Some(skip), true) = (skip, fits) else {
            return Err(PatchError::Layout {
                component: cname,
                init: e.name.clone(),
            });
        };
        let (mine, tail) = std::mem::take(&mut rest)[skip..].split_at_mut(e.length);
        jobs.push((e, mine));
        rest = tail;
        pos = e.offset + e.length;
    }
    let filled: Vec<Result<(Vec<&str>, bool), PatchError>> = jobs
        .into_par_iter()
        .map(|(e, out)| fill(component, graph, &cname, e, deltas, out))
        .collect();
    let (stats, used) = tally(filled, bytes)?;
    free_scratch();
    check_used(&cname, deltas, &used)?;
    Ok((arc, stats))
}

/// The statistics of `filled` (one result per initializer) over a buffer of `bytes`, and the
/// sources the deltas were asked for; the first error, if any.
fn tally(
    filled: Vec<Result<(Vec<&str>, bool), PatchError>>,
    bytes: usize,
) -> Result<(PatchStats, HashSet<&str>), PatchError> {
    let mut used = HashSet::new();
    let mut stats = PatchStats {
        bytes,
        ..Default::default()
    };
    for r in filled {
        let (asked, patched) = r?;
        stats.initializers += 1;
        if patched {
            stats.patched += 1;
        }
        used.extend(asked);
    }
    Ok((stats, used))
}

/// [`assemble_graph`] into `file` (a staging file, [`crate::runtime::staged`]) instead of a
/// buffer: each initializer is filled on its own and written at its offset, so what is held at once
/// is the weights in flight, never the whole buffer; the file's pages are page cache, not this
/// process's memory. Unwritten gaps read as zeroes. Fails before the file is complete if a delta
/// does not fit (the caller drops the file).
#[cfg(unix)]
pub fn assemble_graph_to(
    component: &Component,
    kind: GraphKind,
    deltas: &dyn DeltaSource,
    file: &crate::runtime::staged::StagingFile,
) -> Result<PatchStats, PatchError> {
    let cname = component.kind.to_string();
    let (graph, weightmap) = graph_of(component, kind)?;
    let bytes = buffer_len(graph);
    let mut order: Vec<&WeightMapEntry> = weightmap.initializers.iter().collect();
    order.sort_by_key(|e| e.offset);
    let mut end = 0usize;
    for e in &order {
        let fits = e.offset >= end && e.offset.checked_add(e.length).is_some_and(|x| x <= bytes);
        if !fits {
            return Err(PatchError::Layout {
                component: cname,
                init: e.name.clone(),
            });
        }
        end = e.offset + e.length;
    }
    let staging = |err: std::io::Error| PatchError::Staging {
        component: cname.clone(),
        message: err.to_string(),
    };
    file.set_len(bytes as u64).map_err(staging)?;
    let budget = InFlight::new(IN_FLIGHT_BYTES);
    let filled: Vec<Result<(Vec<&str>, bool), PatchError>> = order
        .par_iter()
        .map(|e| {
            let esize = elem_of(graph, &e.name).and_then(|t| t.size()).unwrap_or(4);
            let _permit = budget.take((e.length / esize.max(1)) * 12 + e.length);
            let mut elems = Elems::zeroed(e.length, esize);
            let (asked, patched) = fill(component, graph, &cname, e, deltas, elems.bytes_mut())?;
            for source in e.sources() {
                component.weights.release_tensor(source);
            }
            file.write_all_at(elems.bytes(), e.offset as u64)
                .map_err(staging)?;
            Ok((asked, patched))
        })
        .collect();
    free_scratch();
    let (stats, used) = tally(filled, bytes)?;
    check_used(&cname, deltas, &used)?;
    Ok(stats)
}

/// The component's `kind` graph and weight map, or the error saying it has none.
pub fn graph_of(
    component: &Component,
    kind: GraphKind,
) -> Result<(&crate::model::Graph, &crate::model::WeightMap), PatchError> {
    component.graph_of(kind).ok_or_else(|| PatchError::NoGraph {
        component: component.kind.to_string(),
        kind,
    })
}

/// A zeroed external-data buffer of `len` bytes, allocated as the Arc ONNX Runtime takes: turning
/// a Vec into an Arc<[u8]> would copy the whole buffer once more (1.7 GB for an SD1.5 UNet). A
/// fresh Arc has one owner, so `Arc::get_mut` on it succeeds. The zeroes come from the allocator
/// (fresh pages from the kernel for a large buffer), so bytes never written cost no memory.
pub fn zeroed_buffer(len: usize) -> Arc<[u8]> {
    // SAFETY: all-zero bytes are valid `u8`s.
    unsafe { Arc::<[u8]>::new_zeroed_slice(len).assume_init() }
}

/// One initializer's elements, in a buffer aligned for its element size (so it becomes a typed
/// tensor without a copy).
#[derive(Debug, Clone, PartialEq)]
pub enum Elems {
    Two(Vec<u16>),
    Four(Vec<u32>),
}

impl Elems {
    fn zeroed(bytes: usize, esize: usize) -> Elems {
        match esize {
            2 => Elems::Two(vec![0; bytes / 2]),
            _ => Elems::Four(vec![0; bytes / 4]),
        }
    }

    /// The size of the elements in bytes.
    pub fn byte_len(&self) -> usize {
        match self {
            Elems::Two(v) => v.len() * 2,
            Elems::Four(v) => v.len() * 4,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Elems::Two(v) => bytemuck::cast_slice(v),
            Elems::Four(v) => bytemuck::cast_slice(v),
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Elems::Two(v) => bytemuck::cast_slice_mut(v),
            Elems::Four(v) => bytemuck::cast_slice_mut(v),
        }
    }
}

/// One initializer filled on its own by [`fill_each`]: its elements, and whether a ΔW was added.
#[derive(Debug, Clone, PartialEq)]
pub struct Filled {
    pub elems: Elems,
    pub patched: bool,
}

/// Fills each of `entries` (initializers of the component's `kind` graph) into its own buffer, in
/// parallel, with `deltas` added; the results are in the order of `entries`. Every parameter
/// `deltas` may change must feed one of `entries`. Fails before returning anything.
pub fn fill_each(
    component: &Component,
    kind: GraphKind,
    entries: &[&WeightMapEntry],
    deltas: &dyn DeltaSource,
) -> Result<Vec<Filled>, PatchError> {
    fill_each_in(component, graph_of(component, kind)?.0, entries, deltas)
}

/// Working memory the weights being filled at once may take (the outputs they are done with are
/// not counted): without a cap every thread works on one of the largest weights at the same time
/// (they sit together in the graph), several gigabytes at a swap's peak on a many-core box.
const IN_FLIGHT_BYTES: usize = 1 << 30;

/// [`fill_each`] for initializers of `graph`, a graph built over the component's weights (one
/// with weight-only nodes folded in, say).
pub fn fill_each_in(
    component: &Component,
    graph: &crate::model::Graph,
    entries: &[&WeightMapEntry],
    deltas: &dyn DeltaSource,
) -> Result<Vec<Filled>, PatchError> {
    let cname = component.kind.to_string();
    let budget = InFlight::new(IN_FLIGHT_BYTES);
    let filled: Vec<Result<(Vec<&str>, Filled), PatchError>> = entries
        .par_iter()
        .map(|e| {
            let esize = elem_of(graph, &e.name).and_then(|t| t.size()).unwrap_or(4);
            // f32 working copies of the parts, the ΔW and the arranged result, and the output.
            let _permit = budget.take((e.length / esize.max(1)) * 12 + e.length);
            let mut elems = Elems::zeroed(e.length, esize);
            let (asked, patched) = fill(component, graph, &cname, e, deltas, elems.bytes_mut())?;
            for source in e.sources() {
                component.weights.release_tensor(source);
            }
            Ok((asked, Filled { elems, patched }))
        })
        .collect();
    free_scratch();
    let mut used = HashSet::new();
    let mut out = Vec::with_capacity(filled.len());
    for r in filled {
        let (asked, f) = r?;
        used.extend(asked);
        out.push(f);
    }
    check_used(&cname, deltas, &used)?;
    Ok(out)
}

/// The pristine base of `entry` in the graph's layout, for a patch that adds ΔW elsewhere: in the
/// graph's element type when the stored weights have it (no rounding), else in f32.
pub fn pristine(
    component: &Component,
    graph: &crate::model::Graph,
    entry: &WeightMapEntry,
) -> Result<(ElemType, Elems), PatchError> {
    let cname = component.kind.to_string();
    let elem = patch_elem(graph, &cname, entry)?;
    let parts: Vec<_> = source_tensors(component, &cname, entry)?
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    let same = parts.iter().all(|t| stored_as(t.dtype, elem));
    if parts.iter().any(|t| t.shape != parts[0].shape) {
        return Err(PatchError::Layout {
            component: cname,
            init: entry.name.clone(),
        });
    }
    let shape = parts[0].shape;
    let out = if same {
        let e = if elem.size() == Some(2) {
            Elems::Two(arrange(
                entry,
                parts.iter().map(|t| elems(t.data)).collect(),
                shape,
            ))
        } else {
            Elems::Four(arrange(
                entry,
                parts.iter().map(|t| elems(t.data)).collect(),
                shape,
            ))
        };
        (elem, e)
    } else {
        let ps: Vec<Vec<f32>> = parts
            .iter()
            .map(|t| {
                let mut v = vec![0.0; t.numel()];
                t.read_f32_into(&mut v);
                v
            })
            .collect();
        let v = arrange(entry, ps, shape);
        (ElemType::F32, Elems::Four(bytemuck::cast_vec(v)))
    };
    for src in entry.sources() {
        component.weights.release_tensor(src);
    }
    Ok(out)
}

/// Every parameter `deltas` may change must have been asked for by some initializer.
pub(crate) fn check_used(
    cname: &str,
    deltas: &dyn DeltaSource,
    used: &HashSet<&str>,
) -> Result<(), PatchError> {
    let params = deltas.params();
    if params.iter().all(|p| used.contains(p)) {
        return Ok(());
    }
    let mut names: Vec<String> = params
        .into_iter()
        .filter(|k| !used.contains(k))
        .map(str::to_string)
        .collect();
    names.sort();
    Err(PatchError::UnusedDeltas {
        component: cname.to_string(),
        names,
    })
}

/// Whether weights stored as `dtype` are already elements of type `elem`.
fn stored_as(dtype: safetensors::Dtype, elem: ElemType) -> bool {
    matches!(
        (dtype, elem),
        (safetensors::Dtype::F32, ElemType::F32)
            | (safetensors::Dtype::F16, ElemType::F16)
            | (safetensors::Dtype::BF16, ElemType::Bf16)
    )
}

/// The element type of `entry` in `graph`, when it is one a patch writes.
fn patch_elem(
    graph: &crate::model::Graph,
    cname: &str,
    entry: &WeightMapEntry,
) -> Result<ElemType, PatchError> {
    elem_of(graph, &entry.name)
        .filter(|e| e.size().is_some())
        .ok_or_else(|| PatchError::Elem {
            component: cname.to_string(),
            init: entry.name.clone(),
            elem: entry.dtype.clone(),
        })
}

/// The stored tensors `entry` is made from, by source name.
fn source_tensors<'c, 'e>(
    component: &'c Component,
    cname: &str,
    entry: &'e WeightMapEntry,
) -> Result<Vec<(&'e str, crate::model::checkpoint::Tensor<'c>)>, PatchError> {
    entry
        .sources()
        .into_iter()
        .map(|src| {
            let t = component
                .weights
                .tensor(src)
                .ok_or_else(|| PatchError::MissingSource {
                    component: cname.to_string(),
                    source_name: src.to_string(),
                })?;
            Ok((src, t))
        })
        .collect()
}

/// Writes one initializer into `out`; returns the parameters it asked `deltas` for, and whether a
/// ΔW was added.
fn fill<'e>(
    component: &Component,
    graph: &crate::model::Graph,
    cname: &str,
    entry: &'e WeightMapEntry,
    deltas: &dyn DeltaSource,
    out: &mut [u8],
) -> Result<(Vec<&'e str>, bool), PatchError> {
    let parts = source_tensors(component, cname, entry)?;
    let elem = patch_elem(graph, cname, entry)?;
    let esize = elem.size().unwrap_or(4);
    let numel: usize = parts.iter().map(|(_, t)| t.numel()).sum();
    if out.len() != numel * esize || parts.iter().any(|(_, t)| t.shape != parts[0].1.shape) {
        return Err(PatchError::Layout {
            component: cname.to_string(),
            init: entry.name.clone(),
        });
    }
    let shape = parts[0].1.shape;
    let same_dtype = parts.iter().all(|(_, t)| stored_as(t.dtype, elem));
    let mut asked = Vec::new();
    let mut ds = Vec::with_capacity(parts.len());
    for (src, _) in &parts {
        if !deltas.may_change(src) {
            ds.push(None);
            continue;
        }
        asked.push(*src);
        ds.push(deltas.delta(src).map_err(|message| PatchError::Delta {
            component: cname.to_string(),
            param: src.to_string(),
            message,
        })?);
    }
    let patched = ds.iter().any(Option::is_some);
    if !patched && same_dtype {
        // Nothing to add: move the stored elements as they are (no rounding, no f32 pass).
        match esize {
            2 => {
                let parts: Vec<Vec<u16>> = parts.iter().map(|(_, t)| elems(t.data)).collect();
                put(&arrange(entry, parts, shape), out);
            }
            _ => {
                let parts: Vec<Vec<u32>> = parts.iter().map(|(_, t)| elems(t.data)).collect();
                put(&arrange(entry, parts, shape), out);
            }
        }
        return Ok((asked, false));
    }
    // Working copies live in per-thread scratch buffers: fresh multi-megabyte allocations per
    // weight cost more in page faults than the arithmetic (and scale badly across many threads).
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let Scratch {
            parts: work,
            arranged,
        } = &mut *scratch;
        if work.len() < parts.len() {
            work.resize_with(parts.len(), Vec::new);
        }
        for (((src, tensor), d), v) in parts.iter().zip(&ds).zip(work.iter_mut()) {
            v.clear();
            v.resize(tensor.numel(), 0.0);
            tensor.read_f32_into(v);
            if let Some(d) = d {
                if d.len() != v.len() {
                    return Err(PatchError::DeltaSize {
                        component: cname.to_string(),
                        param: src.to_string(),
                        got: d.len(),
                        want: v.len(),
                    });
                }
                for (x, dx) in v.iter_mut().zip(d.iter()) {
                    *x += dx;
                }
            }
        }
        let views: Vec<&[f32]> = work[..parts.len()].iter().map(Vec::as_slice).collect();
        if entry.transform == Transform::Identity {
            write_elems(views[0], elem, out);
        } else {
            arranged.clear();
            arranged.resize(numel, 0.0);
            arrange_into(entry, &views, shape, arranged);
            write_elems(arranged, elem, out);
        }
        // The few largest weights (3×3 convs) would otherwise pin their size on every thread that
        // met one, outside the in-flight budget, for the rest of the patch.
        for v in work.iter_mut().chain(std::iter::once(arranged)) {
            if v.capacity() > SCRATCH_KEPT {
                *v = Vec::new();
            }
        }
        Ok((asked, patched))
    })
}

/// Scratch buffers up to this many elements (16 MB: every SD1.5 attention weight and most convs)
/// stay with their thread between weights; larger ones are freed after use.
const SCRATCH_KEPT: usize = 4 << 20;

/// Per-thread working buffers of [`fill`]: f32 copies of the parts and the arranged result.
#[derive(Default)]
struct Scratch {
    parts: Vec<Vec<f32>>,
    arranged: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// Hands memory freed after a swap (staged weights, old sessions' buffers) back to the system:
/// glibc keeps freed blocks in its arenas once they are under its adaptive mmap threshold, which
/// grows to the size of the largest block freed (a whole weight), so without this a swap leaves
/// about a gigabyte of an SD1.5 UNet's weights' worth in the process.
pub fn return_freed_memory() {
    // SAFETY: malloc_trim only gives free memory back.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Frees every thread's scratch buffers (they are as large as the largest weight).
fn free_scratch() {
    rayon::broadcast(|_| SCRATCH.with(|s| *s.borrow_mut() = Scratch::default()));
    SCRATCH.with(|s| *s.borrow_mut() = Scratch::default());
}

/// Applies the entry's transform to its parts (each of `shape`, torch layout).
fn arrange<T: Copy + Default>(
    entry: &WeightMapEntry,
    mut parts: Vec<Vec<T>>,
    shape: &[usize],
) -> Vec<T> {
    if entry.transform == Transform::Identity {
        return parts.swap_remove(0);
    }
    let views: Vec<&[T]> = parts.iter().map(Vec::as_slice).collect();
    let mut out = vec![T::default(); views.iter().map(|v| v.len()).sum()];
    arrange_into(entry, &views, shape, &mut out);
    out
}

/// [`arrange`] into `out` (as long as all parts together).
fn arrange_into<T: Copy>(entry: &WeightMapEntry, parts: &[&[T]], shape: &[usize], out: &mut [T]) {
    match entry.transform {
        Transform::Identity => out.copy_from_slice(parts[0]),
        Transform::Transpose => transpose_into(parts[0], shape, out),
        Transform::Nhwc => nhwc_into(parts[0], shape, out),
        Transform::PackHeads => pack_heads_into(parts, shape, entry.heads, out),
    }
}

/// Little-endian elements of 2 or 4 bytes, read without assuming alignment.
trait Elem: Copy + Default {
    const SIZE: usize;
    fn read(b: &[u8]) -> Self;
    fn write(self, b: &mut [u8]);
}

impl Elem for u16 {
    const SIZE: usize = 2;
    fn read(b: &[u8]) -> Self {
        u16::from_le_bytes([b[0], b[1]])
    }
    fn write(self, b: &mut [u8]) {
        b.copy_from_slice(&self.to_le_bytes());
    }
}

impl Elem for u32 {
    const SIZE: usize = 4;
    fn read(b: &[u8]) -> Self {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    fn write(self, b: &mut [u8]) {
        b.copy_from_slice(&self.to_le_bytes());
    }
}

fn elems<T: Elem>(data: &[u8]) -> Vec<T> {
    data.chunks_exact(T::SIZE).map(T::read).collect()
}

fn put<T: Elem>(values: &[T], out: &mut [u8]) {
    for (v, o) in values.iter().zip(out.chunks_exact_mut(T::SIZE)) {
        v.write(o);
    }
}

/// `[rows, cols]` → `[cols, rows]`, in tiles so that reads and writes both stay in cache.
fn transpose_into<T: Copy>(values: &[T], shape: &[usize], out: &mut [T]) {
    const TILE: usize = 32;
    let (rows, cols) = (shape[0], shape[1]);
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = values[r * cols + c];
                }
            }
        }
    }
}

/// `[out, in, kh, kw]` → `[out, kh, kw, in]`.
fn nhwc_into<T: Copy>(values: &[T], shape: &[usize], out: &mut [T]) {
    let (o, i, kh, kw) = (shape[0], shape[1], shape[2], shape[3]);
    let k = kh * kw;
    // Written in output order: the writes stream, the reads stride by kh*kw.
    for a in 0..o {
        let filt = &values[a * i * k..(a + 1) * i * k];
        let dst = &mut out[a * i * k..(a + 1) * i * k];
        for pos in 0..k {
            for b in 0..i {
                dst[pos * i + b] = filt[b * k + pos];
            }
        }
    }
}

/// Parts `[heads*dim, in]` → `[in, heads*k*dim]` with column `(n*k + p)*dim + d` = row `n*dim + d`
/// of part `p`: the layout ONNX Runtime's MultiHeadAttention reads packed QKV/KV in. A 1-D part (a
/// bias) is one column.
fn pack_heads_into<T: Copy>(parts: &[&[T]], shape: &[usize], heads: usize, out: &mut [T]) {
    let (rows, cin) = (shape[0], shape.get(1).copied().unwrap_or(1));
    let k = parts.len();
    let dim = rows / heads;
    let width = rows * k;
    for (p, part) in parts.iter().enumerate() {
        for n in 0..heads {
            for d in 0..dim {
                let row = &part[(n * dim + d) * cin..(n * dim + d + 1) * cin];
                let col = (n * k + p) * dim + d;
                for (c, v) in row.iter().enumerate() {
                    out[c * width + col] = *v;
                }
            }
        }
    }
}

/// Rounds once from f32 to the initializer's type, little-endian.
fn write_elems(values: &[f32], elem: ElemType, out: &mut [u8]) {
    match elem {
        ElemType::F32 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(4)) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        ElemType::F16 => match bytemuck::try_cast_slice_mut::<u8, half::f16>(out) {
            // Whole slices at once: the conversion runs in SIMD lanes (F16C where the CPU has it).
            Ok(o) => {
                use half::slice::HalfFloatSliceExt;
                let n = o.len().min(values.len());
                o[..n].convert_from_f32_slice(&values[..n]);
            }
            Err(_) => {
                for (v, o) in values.iter().zip(out.chunks_exact_mut(2)) {
                    o.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
                }
            }
        },
        ElemType::Bf16 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(2)) {
                o.copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
            }
        }
        ElemType::Other(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zeroed_buffer_is_zero_and_writable_in_place() {
        let mut b = zeroed_buffer(3 << 20);
        assert!(b.iter().all(|&x| x == 0));
        let w = Arc::get_mut(&mut b).expect("one owner");
        w[(3 << 20) - 1] = 7;
        assert_eq!(b.len(), 3 << 20);
        assert_eq!(b[(3 << 20) - 1], 7);
    }

    fn transpose(v: &[f32], shape: &[usize]) -> Vec<f32> {
        let mut out = vec![0.0; v.len()];
        transpose_into(v, shape, &mut out);
        out
    }

    fn nhwc(v: &[f32], shape: &[usize]) -> Vec<f32> {
        let mut out = vec![0.0; v.len()];
        nhwc_into(v, shape, &mut out);
        out
    }

    fn pack_heads(parts: &[Vec<f32>], shape: &[usize], heads: usize) -> Vec<f32> {
        let views: Vec<&[f32]> = parts.iter().map(Vec::as_slice).collect();
        let mut out = vec![0.0; parts.iter().map(Vec::len).sum()];
        pack_heads_into(&views, shape, heads, &mut out);
        out
    }

    #[test]
    fn tiled_transpose_covers_ragged_edges() {
        let (r, c) = (37, 70);
        let v: Vec<f32> = (0..r * c).map(|x| x as f32).collect();
        let t = transpose(&v, &[r, c]);
        for i in 0..r {
            for j in 0..c {
                assert_eq!(t[j * r + i], v[i * c + j]);
            }
        }
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2x3
        assert_eq!(transpose(&v, &[2, 3]), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }

    #[test]
    fn nhwc_moves_input_channels_last() {
        // [out=1, in=2, kh=1, kw=2]: in-major → position-major.
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(nhwc(&v, &[1, 2, 1, 2]), vec![1.0, 3.0, 2.0, 4.0]);
    }

    #[test]
    fn pack_heads_interleaves_parts_per_head() {
        // Two parts of [heads*dim = 2, in = 1] with 2 heads of dim 1: q0 k0 q1 k1.
        let q = vec![10.0, 11.0];
        let k = vec![20.0, 21.0];
        assert_eq!(
            pack_heads(&[q, k], &[2, 1], 2),
            vec![10.0, 20.0, 11.0, 21.0]
        );
    }

    #[test]
    fn one_head_packs_transposes_side_by_side_and_biases_pack_as_one_column() {
        // q, k of [out = 2, in = 2]: [in, 2*out] whose row c is q[:, c] then k[:, c].
        let q = vec![1.0, 2.0, 3.0, 4.0];
        let k = vec![5.0, 6.0, 7.0, 8.0];
        assert_eq!(
            pack_heads(&[q, k], &[2, 2], 1),
            vec![1.0, 3.0, 5.0, 7.0, 2.0, 4.0, 6.0, 8.0]
        );
        // Biases [2]: side by side with one head, interleaved per head with two.
        let (bq, bk) = (vec![10.0, 11.0], vec![20.0, 21.0]);
        assert_eq!(
            pack_heads(&[bq.clone(), bk.clone()], &[2], 1),
            vec![10.0, 11.0, 20.0, 21.0]
        );
        assert_eq!(pack_heads(&[bq, bk], &[2], 2), vec![10.0, 20.0, 11.0, 21.0]);
    }

    #[test]
    fn f16_writes_round_to_nearest() {
        let mut out = [0u8; 4];
        write_elems(&[1.0, 1.0 + 1.0 / 4096.0], ElemType::F16, &mut out);
        assert_eq!(half::f16::from_le_bytes([out[0], out[1]]).to_f32(), 1.0);
        // 1 + 2^-12 is below half an f16 ulp at 1.0 (2^-10), so it rounds down.
        assert_eq!(half::f16::from_le_bytes([out[2], out[3]]).to_f32(), 1.0);
    }
}
