//! Resident weights: a session whose weight initializers are buffers stipple owns (ONNX Runtime's
//! shared initializers, placed on the session's device, with pre-packing off so kernels read them
//! at every run). An adapter change rewrites, in place, only the initializers it or the previous
//! change touched ([`Layout::stage`], then [`Net::commit`]): a swap costs ΔW and an upload, never a
//! new session. [`Net`] is a session with resident weights or with baked-in ones.

use super::device_run::{self, DeviceStaged, Pass, Sink};
use crate::model::fold::fold_weights;
use crate::model::foldable::constant_fed_weights;
use crate::model::layout::{buffer_len, Component, GraphKind};
use crate::model::{ElemType, Graph, WeightMapEntry};
use crate::patch::{self, DeltaSource, Elems, Filled, PatchError};
use crate::runtime::tensor_io::{Input, Output};
use crate::runtime::{
    build_session, build_session_staged, Device, Runtime, SessionError, SessionOptions,
};
use ort::memory::AllocationDevice;
use ort::session::Session;
use ort::value::PrimitiveTensorElementType;
use ort::value::{DynTensor, DynTensorValueType, DynValue, Tensor, TensorRefMut};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ResidentError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Patch(#[from] PatchError),
    #[error("{what}: {message}")]
    Graph { what: String, message: String },
    #[error("{what}: placing the weights on the device: {message}")]
    Upload { what: String, message: String },
    #[error("{what}: the adapter set needs about {} on the device for the patch (factors and dense ΔW {}, new base copies {}, working memory {}), {} is free; nothing was changed", size(need.total()), size(need.factors), size(need.bases), size(need.working), size(*free))]
    DeviceMemory {
        what: String,
        need: super::device_run::Need,
        free: u64,
    },
}

/// `bytes` for a message: KiB below a MiB (a tiny model's figures), MiB with a decimal below
/// 100 MiB, whole MiB above.
fn size(bytes: u64) -> String {
    let (kib, mib) = (bytes as f64 / 1024.0, bytes as f64 / (1024.0 * 1024.0));
    match bytes {
        b if b < 1 << 20 => format!("{kib:.1} KiB"),
        b if b < 100 << 20 => format!("{mib:.1} MiB"),
        b => format!("{} MiB", b >> 20),
    }
}

/// A component's session, and its weights when they are resident.
pub struct Net {
    pub session: Session,
    resident: Option<Resident>,
    /// A text encoder running its fp16 graph: non-finite output is an overflow, redone in fp32.
    fp16: bool,
}

/// The weight buffers a session built by [`build`] reads its initializers from.
struct Resident {
    layout: Layout,
    /// `tensors[i]` holds `layout.entries[i]`; the session holds the other reference.
    tensors: Vec<Arc<DynValue>>,
    /// On CUDA, the device buffers `tensors` point into (one per entry).
    owners: Vec<DynTensor>,
    /// Pristine base copies on the session's device, by entry, for the device patch.
    bases: HashMap<usize, DynValue>,
    /// The last patch program run, kept to put its weights back when a later one fails midway.
    last_program: Option<DeviceStaged>,
}

// SAFETY: the tensors are owned here and by the session beside them, and used from one thread at a
// time (the generator moves between threads whole); ONNX Runtime values have no thread affinity.
unsafe impl Send for Resident {}

/// Which initializer each resident buffer holds and which hold base + ΔW: plain data, so adapter
/// changes can be staged on other threads.
pub struct Layout {
    what: String,
    /// The graph the session runs (weight-only nodes folded in) and its initializers' recipes;
    /// buffer `i` holds `entries[i]`.
    graph: Graph,
    entries: Vec<WeightMapEntry>,
    /// Initializers that hold base + ΔW (or whatever a failed upload left): the next change
    /// rewrites them even if it does not touch them.
    patched: HashSet<usize>,
    /// Weights ONNX Runtime may fold into constants of its own when it builds the session (a
    /// position embedding under static shapes): baked into the session, not resident, so no
    /// change may reach them. `true` when the session holds one with a ΔW.
    pinned: Vec<WeightMapEntry>,
    pinned_patched: bool,
    /// The element type of each base copy the device holds ([`Resident::bases`]).
    based: HashMap<usize, ElemType>,
}

/// New contents for some weights, computed by [`Layout::stage`] and not yet on the device.
pub struct Staged {
    writes: Vec<(usize, Filled)>,
    patched: HashSet<usize>,
}

impl Net {
    /// A session whose weights were baked in when it was built.
    pub fn baked(session: Session) -> Net {
        Net {
            session,
            resident: None,
            fp16: false,
        }
    }

    /// The same net, marked as a text encoder running its fp16 graph (or not).
    pub fn with_fp16(mut self, fp16: bool) -> Net {
        self.fp16 = fp16;
        self
    }

    /// Whether it is a text encoder running its fp16 graph.
    pub fn is_fp16(&self) -> bool {
        self.fp16
    }

    pub fn is_resident(&self) -> bool {
        self.resident.is_some()
    }

    /// Runs the session on `inputs` and returns `outputs` as (shape, f32 values).
    pub fn run(
        &mut self,
        inputs: Vec<Input<'_>>,
        outputs: &[&str],
    ) -> Result<Vec<Output>, ort::Error> {
        crate::runtime::tensor_io::run(&mut self.session, inputs, outputs)
    }

    /// Where the resident weights are (None for a baked session), to [`Layout::stage`] a change.
    pub fn layout(&self) -> Option<&Layout> {
        self.resident.as_ref().map(|r| &r.layout)
    }

    /// Writes staged weights into the session's buffers, in place (their addresses do not change,
    /// so a captured CUDA graph sees them too). Call between runs, never during one.
    pub fn commit(&mut self, staged: Staged) -> Result<(), ResidentError> {
        let Some(r) = self.resident.as_mut() else {
            return Ok(());
        };
        // The weights are no longer the last program's: it cannot put them back.
        r.last_program = None;
        let layout = &mut r.layout;
        // Until every write lands, what each written buffer holds is not known.
        layout.patched.extend(staged.writes.iter().map(|(i, _)| *i));
        for (i, filled) in staged.writes {
            let target = r.tensors.get(i).ok_or_else(|| ResidentError::Upload {
                what: layout.what.clone(),
                message: format!("no weight buffer {i}"),
            })?;
            overwrite(filled.elems, target).map_err(|e| ResidentError::Upload {
                what: layout.what.clone(),
                message: format!("{}: {e}", layout.entries[i].name),
            })?;
        }
        layout.patched = staged.patched;
        Ok(())
    }
}

impl Net {
    /// Runs a staged patch program into the session's weight buffers (between runs, never during
    /// one). Base copies it needs go to the device first. If the program fails, the weights it may
    /// have half-written are put back by running the previous program again, so the session
    /// keeps the weights it had.
    pub fn commit_device(&mut self, staged: DeviceStaged) -> Result<(), ResidentError> {
        let Some(r) = self.resident.as_mut() else {
            return Ok(());
        };
        let what = r.layout.what.clone();
        let upload_err = |message: String| ResidentError::Upload {
            what: what.clone(),
            message,
        };
        let mut staged = staged;
        for (i, elem, host) in std::mem::take(&mut staged.new_bases) {
            let value = match r.owners.first() {
                Some(owner) => {
                    let info = owner.memory_info();
                    host.to(info.allocation_device(), info.device_id())
                        .map_err(|e| upload_err(format!("base copy: {e}")))?
                        .into_dyn()
                }
                None => host.into_dyn(),
            };
            r.bases.insert(i, value);
            r.layout.based.insert(i, elem);
        }
        match run_both(r, &mut staged) {
            Ok(()) => {
                r.layout.patched = std::mem::take(&mut staged.patched);
                r.last_program = Some(staged);
                Ok(())
            }
            Err(e) => {
                let message = format!("patch program: {e}");
                // What a failed run wrote is unknown: the previous programs write their weights
                // again. The failed ones may have written others too (the re-run program ran, the
                // fixed one failed; a bound output half-written): those buffers are rewritten by
                // the next change.
                if let Some(mut prev) = r.last_program.take() {
                    // Kept only when it holds the weights again (a re-run may start from it).
                    if run_both(r, &mut prev).is_ok() {
                        r.last_program = Some(prev);
                    }
                }
                let written = staged.commit_entries();
                match &r.last_program {
                    Some(prev) => {
                        let again: HashSet<usize> = prev.commit_entries().into_iter().collect();
                        let unknown = written.into_iter().filter(|i| !again.contains(i));
                        r.layout.patched.extend(unknown);
                    }
                    None => r.layout.patched.extend(written),
                }
                Err(upload_err(message))
            }
        }
    }

    /// How many weights the last patch programs write: (at the commit, at a re-run); None when
    /// the weights were not written by one.
    pub fn patch_writes(&self) -> Option<(usize, usize)> {
        let p = self.resident.as_ref()?.last_program.as_ref()?;
        Some((
            p.rerun.entries.len() + p.fixed.entries.len(),
            p.rerun.entries.len(),
        ))
    }

    /// The strengths the last patch program ran with (one per term that scales with its strength),
    /// None when the weights were not written by one.
    pub fn patch_strengths(&self) -> Option<&[f32]> {
        let r = self.resident.as_ref()?;
        r.last_program.as_ref().map(|p| p.strengths.as_slice())
    }

    /// Runs the last patch program again with new `strengths` (as many as
    /// [`Self::patch_strengths`]): a strength change of the same adapter set, without a new program
    /// or any upload but the strengths. On failure the previous strengths are run again.
    pub fn rerun_patch(&mut self, strengths: &[f32]) -> Result<(), ResidentError> {
        let Some(r) = self.resident.as_mut() else {
            return Ok(());
        };
        let what = r.layout.what.clone();
        let err = |message: String| ResidentError::Upload {
            what: what.clone(),
            message,
        };
        let Some(mut prog) = r.last_program.take() else {
            return Err(err("no patch program has run".to_string()));
        };
        if prog.strengths.len() != strengths.len() {
            let message = format!(
                "{} strengths for a program that takes {}",
                strengths.len(),
                prog.strengths.len()
            );
            r.last_program = Some(prog);
            return Err(err(message));
        }
        // Only the weights that scale with a strength: the fixed program's hold what its commit
        // wrote.
        let old = std::mem::replace(&mut prog.strengths, strengths.to_vec());
        let result = run_program(r, &mut prog.rerun, &prog.strengths);
        if result.is_err() {
            prog.strengths = old;
            if run_program(r, &mut prog.rerun, &prog.strengths).is_err() {
                // What its weights hold is unknown: the next change rewrites them with a new
                // program, never a re-run of this one.
                r.layout.patched.extend(prog.rerun.entries.iter().copied());
                return result.map_err(|e| err(format!("patch program: {e}")));
            }
        }
        r.last_program = Some(prog);
        result.map_err(|e| err(format!("patch program: {e}")))
    }

    /// The patch program that last wrote the weights, None when they were not written by one.
    pub(crate) fn patch_program(&self) -> Option<&DeviceStaged> {
        self.resident.as_ref()?.last_program.as_ref()
    }

    /// The bytes of resident weight `name` when they are in host memory (tests).
    pub fn host_weight(&self, name: &str) -> Option<Vec<u8>> {
        let r = self.resident.as_ref()?;
        let i = r.layout.entries.iter().position(|e| e.name == name)?;
        let t = r.tensors[i].view().downcast::<DynTensorValueType>().ok()?;
        if !t.memory_info().is_cpu_accessible() {
            return None;
        }
        let len = r.layout.entries[i].length;
        // SAFETY: the buffer holds the entry's `length` bytes and lives as long as `r`.
        Some(unsafe { std::slice::from_raw_parts(t.data_ptr().cast::<u8>(), len) }.to_vec())
    }
}

/// Runs both programs of `staged` (a commit): the re-run one first, so that a run refused for its
/// strengths has written nothing.
fn run_both(r: &mut Resident, staged: &mut DeviceStaged) -> Result<(), ort::Error> {
    run_program(r, &mut staged.rerun, &staged.strengths)?;
    run_program(r, &mut staged.fixed, &staged.strengths)
}

/// Runs one program with `strengths` on `r`'s buffers: bound to the device buffers on CUDA, copied
/// on the CPU.
fn run_program(r: &mut Resident, pass: &mut Pass, strengths: &[f32]) -> Result<(), ort::Error> {
    let mut bases = Vec::with_capacity(pass.entries.len());
    for i in &pass.entries {
        bases.push(
            r.bases
                .get(i)
                .ok_or_else(|| ort::Error::new(format!("no base copy of weight {i}")))?,
        );
    }
    let sink = if r.owners.is_empty() {
        Sink::Copied(pass.entries.iter().map(|&i| &*r.tensors[i]).collect())
    } else {
        let mut slots: Vec<Option<&mut DynTensor>> = r.owners.iter_mut().map(Some).collect();
        let mut out = Vec::with_capacity(pass.entries.len());
        for &i in &pass.entries {
            out.push(
                slots
                    .get_mut(i)
                    .and_then(Option::take)
                    .ok_or_else(|| ort::Error::new(format!("no device buffer {i}")))?,
            );
        }
        Sink::Bound(out)
    };
    let captured = pass.graph.then_some(&mut pass.captured);
    device_run::run(pass.session.as_mut(), strengths, &bases, sink, captured)
}

impl Layout {
    /// Computes what `deltas` (the whole adapter set wanted, not a difference) changes in the
    /// resident weights: every initializer a delta reaches, and every one the last change left
    /// patched (restored to base when nothing reaches it now).
    /// Nothing on the device changes until [`Net::commit`].
    pub fn stage(
        &self,
        component: &Component,
        deltas: &dyn DeltaSource,
    ) -> Result<Staged, PatchError> {
        let picked = self.picked(deltas)?;
        let entries: Vec<&WeightMapEntry> = picked.iter().map(|&i| &self.entries[i]).collect();
        let filled = patch::fill_each_in(component, &self.graph, &entries, deltas)?;
        let patched = picked
            .iter()
            .zip(&filled)
            .filter(|(_, f)| f.patched)
            .map(|(i, _)| *i)
            .collect();
        Ok(Staged {
            writes: picked.into_iter().zip(filled).collect(),
            patched,
        })
    }

    /// The buffers a change to `deltas` writes: every one a delta reaches and every one the last
    /// change left patched; an error when a delta reaches a weight folded into the session.
    pub(super) fn picked(&self, deltas: &dyn DeltaSource) -> Result<Vec<usize>, PatchError> {
        for e in &self.pinned {
            let reached = e.sources().into_iter().find(|s| deltas.may_change(s));
            if let Some(param) = reached.or(self.pinned_patched.then_some(e.name.as_str())) {
                return Err(PatchError::Folded {
                    component: self.what.clone(),
                    param: param.to_string(),
                });
            }
        }
        let picked: Vec<usize> = (0..self.entries.len())
            .filter(|i| {
                self.patched.contains(i)
                    || self.entries[*i]
                        .sources()
                        .iter()
                        .any(|s| deltas.may_change(s))
            })
            .collect();
        Ok(picked)
    }

    /// The bytes of the resident weights.
    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.length as u64).sum()
    }

    pub(super) fn what(&self) -> &str {
        &self.what
    }

    pub(super) fn graph(&self) -> &Graph {
        &self.graph
    }

    pub(super) fn entry(&self, i: usize) -> &WeightMapEntry {
        &self.entries[i]
    }

    /// The weight buffer `i` holds (what a patch program's layout indices name).
    pub fn weight(&self, i: usize) -> Option<&WeightMapEntry> {
        self.entries.get(i)
    }

    /// The element type of entry `i`'s base copy on the device, None when it has none yet.
    pub(super) fn base_elem(&self, i: usize) -> Option<ElemType> {
        self.based.get(&i).copied()
    }
}

/// A host tensor of `shape` holding `elems`, typed as the graph's initializer.
pub(super) fn host_tensor(
    elems: Elems,
    elem: ElemType,
    shape: Vec<i64>,
) -> Result<DynTensor, ort::Error> {
    Ok(match (elems, elem) {
        (Elems::Four(v), ElemType::F32) => {
            Tensor::from_array((shape, bytemuck::cast_vec::<u32, f32>(v)))?.upcast()
        }
        (Elems::Two(v), ElemType::F16) => {
            Tensor::from_array((shape, bytemuck::cast_vec::<u16, half::f16>(v)))?.upcast()
        }
        (Elems::Two(v), ElemType::Bf16) => {
            Tensor::from_array((shape, bytemuck::cast_vec::<u16, half::bf16>(v)))?.upcast()
        }
        (_, elem) => {
            return Err(ort::Error::new(format!(
                "no resident weights of element type {}",
                elem.name()
            )))
        }
    })
}

/// Copies `elems` over the data of `target` (same element type and size), wherever it lives.
fn overwrite(elems: Elems, target: &DynValue) -> Result<(), ort::Error> {
    let target = target.view().downcast::<DynTensorValueType>()?;
    let shape: Vec<i64> = target.shape().to_vec();
    match elems {
        Elems::Four(v) => write_typed(bytemuck::cast_vec::<u32, f32>(v), &target, shape),
        Elems::Two(v) if *target.data_type() == ort::value::TensorElementType::Bfloat16 => {
            write_typed(bytemuck::cast_vec::<u16, half::bf16>(v), &target, shape)
        }
        Elems::Two(v) => write_typed(bytemuck::cast_vec::<u16, half::f16>(v), &target, shape),
    }
}

fn write_typed<T: PrimitiveTensorElementType + std::fmt::Debug + Clone + 'static>(
    data: Vec<T>,
    target: &DynTensor,
    shape: Vec<i64>,
) -> Result<(), ort::Error> {
    let host = Tensor::from_array((shape.clone(), data))?;
    // SAFETY: the view covers exactly `target`'s buffer (same element type and shape, checked by
    // copy_into), which outlives it; ONNX Runtime only reads that buffer during a run, and commits
    // happen between runs on the thread that runs the session.
    let view = unsafe {
        TensorRefMut::<T>::from_raw(
            target.memory_info().clone(),
            target.data_ptr().cast_mut(),
            shape.into(),
        )?
    };
    host.copy_into(view)
}

/// Builds `component`'s `which` graph with its weights as resident buffers, holding the base
/// weights plus `deltas`.
pub fn build(
    rt: &Runtime,
    what: &str,
    component: &Component,
    which: GraphKind,
    deltas: &dyn DeltaSource,
    opts: &SessionOptions,
    dims: &[(&str, i64)],
) -> Result<Net, ResidentError> {
    let graph_err = |message: String| ResidentError::Graph {
        what: what.to_string(),
        message,
    };
    let upload_err = |message: String| ResidentError::Upload {
        what: what.to_string(),
        message,
    };
    let (graph, weightmap) = patch::graph_of(component, which)?;
    // ONNX Runtime folds weight-only nodes into constants of its own even at the basic level, which
    // would cut those weights off from the buffers; folded here, they stay stipple's.
    let folded = fold_weights(graph, weightmap).map_err(|e| graph_err(e.to_string()))?;
    let (graph, weightmap) = (&folded.graph, &folded.weightmap);
    // The CUDA libraries are loaded before the first buffer is placed on the device (placing it
    // starts ONNX Runtime's CUDA provider).
    opts.device
        .dispatch(&rt.path.display().to_string(), &opts.cuda)
        .map_err(SessionError::from)?;
    // Weights a constant-foldable node reads are folded by ONNX Runtime from the external-data
    // file when the session is built, whatever buffer is shared for them: they go in the file.
    let folds =
        constant_fed_weights(graph, !dims.is_empty()).map_err(|e| graph_err(e.to_string()))?;
    let (pinned, entries): (Vec<&WeightMapEntry>, Vec<&WeightMapEntry>) = weightmap
        .initializers
        .iter()
        .partition(|e| folds.contains(&e.name));
    // Filled first: a delta that does not fit fails before any session is built.
    let every: Vec<&WeightMapEntry> = entries.iter().chain(&pinned).copied().collect();
    let mut filled = patch::fill_each_in(component, graph, &every, deltas)?;
    let pinned_filled = filled.split_off(entries.len());
    component.weights.release_pages();
    crate::runtime::host_mem::trace(&format!("{what}: resident weights filled"));
    let externals: HashMap<&str, _> = graph
        .externals
        .iter()
        .map(|x| (x.name.as_str(), x))
        .collect();
    let place = |name: &str, len: usize| {
        let x = externals
            .get(name)
            .ok_or_else(|| graph_err(format!("{name} is not an external initializer")))?;
        x.offset
            .checked_add(len)
            .filter(|&end| end <= buffer_len(graph))
            .ok_or_else(|| graph_err(format!("{name} does not fit the weights buffer")))?;
        Ok::<_, ResidentError>(*x)
    };
    // ONNX Runtime still wants the external-data file the graph names, and reads from it only the
    // pinned weights: every other initializer there is shared. Its other regions stay unwritten
    // (zero pages that cost no memory), so one host copy of the weights is held, not two; anything
    // else ONNX Runtime did load from the file would show as zeros, not as weights silently cut
    // off from the buffers.
    let pinned_patched = pinned_filled.iter().any(|f| f.patched);
    // The file is staged on disk: ONNX Runtime copies an in-memory file whole, zeroes included
    // (3.3 GB more at an SD1.5 UNet's build on the CPU), and maps a file on disk lazily.
    let staged = if crate::runtime::staged::enabled_resident() {
        stage_pinned(
            graph,
            &weightmap.external_file,
            &pinned,
            &pinned_filled,
            &place,
        )
        .map_err(|e| {
            tracing::warn!(
                "{what}: staging the weights on disk failed ({e}); building from memory"
            );
        })
        .ok()
    } else {
        None
    };
    let mut file = patch::zeroed_buffer(if staged.is_some() {
        0
    } else {
        buffer_len(graph)
    });
    if !pinned.is_empty() && staged.is_none() {
        let bytes = Arc::get_mut(&mut file)
            .ok_or_else(|| graph_err("the weights buffer is shared".to_string()))?;
        for (e, f) in pinned.iter().zip(&pinned_filled) {
            let x = place(&e.name, f.elems.byte_len())?;
            bytes[x.offset..x.offset + f.elems.byte_len()].copy_from_slice(f.elems.bytes());
        }
    }
    let mut tensors = Vec::with_capacity(entries.len());
    let mut patched = HashSet::new();
    let mut owners = Vec::new();
    for (i, (e, f)) in entries.iter().zip(filled).enumerate() {
        let x = place(&e.name, f.elems.byte_len())?;
        if f.patched {
            patched.insert(i);
        }
        let shape = x.dims.iter().map(|&d| d as i64).collect();
        let host = host_tensor(f.elems, x.elem, shape)
            .map_err(|err| upload_err(format!("{}: {err}", e.name)))?;
        let value = match opts.device {
            Device::Cuda(id) => {
                let placed = host
                    .to(AllocationDevice::CUDA, id)
                    .map_err(|err| upload_err(format!("{}: {err}", e.name)))?;
                // ONNX Runtime shares only buffers it does not own: the session gets a value that
                // points at the placed buffer, which lives beside it.
                // SAFETY: `placed` is kept in `owners` for as long as the view is used.
                let view = unsafe { borrowed_view(&placed) }
                    .map_err(|err| upload_err(format!("{}: {err}", e.name)))?;
                owners.push(placed);
                view
            }
            _ => host.into_dyn(),
        };
        tensors.push(Arc::new(value));
    }
    let shared: Vec<(&str, Arc<DynValue>)> = entries
        .iter()
        .map(|e| e.name.as_str())
        .zip(tensors.iter().cloned())
        .collect();
    let session = match &staged {
        Some(staged) => build_session_staged(rt, what, &staged.graph_path(), opts, dims, &shared)?,
        None => build_session(
            rt,
            what,
            &graph.bytes,
            &weightmap.external_file,
            file,
            opts,
            dims,
            &shared,
        )?,
    };
    drop(staged);
    crate::runtime::host_mem::trace(&format!("{what}: session built"));
    Ok(Net {
        session,
        fp16: false,
        resident: Some(Resident {
            layout: Layout {
                what: what.to_string(),
                entries: entries.into_iter().cloned().collect(),
                graph: folded.graph,
                patched,
                pinned: pinned.into_iter().cloned().collect(),
                pinned_patched,
                based: HashMap::new(),
            },
            tensors,
            owners,
            bases: HashMap::new(),
            last_program: None,
        }),
    })
}

/// The staging folder of a resident session: the graph and its external-data file, which holds
/// only the pinned weights (the rest is a hole: every other initializer is shared).
fn stage_pinned<'g>(
    graph: &Graph,
    external_file: &str,
    pinned: &[&WeightMapEntry],
    filled: &[Filled],
    place: &dyn Fn(&str, usize) -> Result<&'g crate::model::graph::ExternalInit, ResidentError>,
) -> Result<crate::runtime::staged::Staged, String> {
    let (staged, file) = crate::runtime::staged::Staged::create(
        &graph.bytes,
        external_file,
        buffer_len(graph) as u64,
    )
    .map_err(|e| e.to_string())?;
    for (e, f) in pinned.iter().zip(filled) {
        let x = place(&e.name, f.elems.byte_len()).map_err(|e| e.to_string())?;
        file.write_all_at(f.elems.bytes(), x.offset as u64)
            .map_err(|e| e.to_string())?;
    }
    Ok(staged)
}

/// A value over `placed`'s buffer that does not own it (what ONNX Runtime accepts as a shared
/// initializer).
///
/// # Safety
/// `placed` must outlive the returned value.
unsafe fn borrowed_view(placed: &DynTensor) -> Result<DynValue, ort::Error> {
    // SAFETY: the caller's promise, passed on.
    unsafe { super::device_run::view_as(placed, placed.shape().to_vec()) }
}
