//! Resident weights: a session built from its graph with the weights turned into inputs, bound to
//! buffers on the session's device. An adapter change rewrites, in place, only the initializers it
//! or the previous change touched ([`Net::stage`], then [`Net::commit`]): a swap costs ΔW and an
//! upload, never a new session. [`Net`] is a session with resident weights or with baked-in ones.

use super::tensor_io::{host_value, outputs_of, Input, Output};
use crate::model::layout::{Component, GraphKind};
use crate::model::{ElemType, WeightMapEntry};
use crate::patch::{self, DeltaSource, Elems, Filled, PatchError};
use crate::runtime::{build_session, Device, Runtime, SessionError, SessionOptions};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session};
use ort::value::{DynTensor, Tensor, TensorElementType};
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
}

/// A component's session, and its weights when they are resident.
pub struct Net {
    pub session: Session,
    resident: Option<Resident>,
}

/// The weight buffers of a session built by [`build`], bound once as its inputs.
struct Resident {
    layout: Layout,
    /// `tensors[i]` holds `layout.names[i]`.
    tensors: Vec<DynTensor>,
    binding: IoBinding,
}

// SAFETY: the tensors and the binding are owned here and used from one thread at a time (the
// generator moves between threads whole); ONNX Runtime values and bindings have no thread
// affinity, and the host values bound as inputs own their data.
unsafe impl Send for Resident {}

/// Which initializer each resident buffer holds and which hold base + ΔW: plain data, so adapter
/// changes can be staged on other threads.
pub struct Layout {
    what: String,
    graph: GraphKind,
    /// Initializer names, in the weight map's order.
    names: Vec<String>,
    /// Initializers that hold base + ΔW (or whatever a failed upload left): the next change
    /// rewrites them even if it does not touch them.
    patched: HashSet<usize>,
}

/// New contents for some weights, computed by [`Net::stage`] and not yet on the device.
pub struct Staged {
    writes: Vec<(usize, Filled)>,
    patched: HashSet<usize>,
}

impl Staged {
    /// How many initializers the commit rewrites.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

impl Net {
    /// A session whose weights were baked in when it was built.
    pub fn baked(session: Session) -> Net {
        Net {
            session,
            resident: None,
        }
    }

    pub fn is_resident(&self) -> bool {
        self.resident.is_some()
    }

    /// The bound weight buffers (none for a baked session), for a caller that binds its own inputs.
    pub fn weights(&self) -> Vec<(&str, &DynTensor)> {
        self.resident
            .iter()
            .flat_map(|r| r.layout.names.iter().map(String::as_str).zip(&r.tensors))
            .collect()
    }

    /// Runs the session on `inputs` and returns `outputs` as (shape, f32 values).
    pub fn run(
        &mut self,
        inputs: Vec<Input<'_>>,
        outputs: &[&str],
    ) -> Result<Vec<Output>, ort::Error> {
        let Some(r) = self.resident.as_mut() else {
            return super::tensor_io::run(&mut self.session, inputs, outputs);
        };
        for input in inputs {
            let (name, value) = host_value(&self.session, input)?;
            r.binding.bind_input(name, &value)?;
        }
        // Bound anew each run: a bound output keeps its last shape, and shapes change with the
        // image size and prompt length.
        let host = host_memory()?;
        for name in outputs {
            r.binding.bind_output_to_device(*name, &host)?;
        }
        let out = self.session.run_binding(&r.binding)?;
        outputs_of(&out, outputs)
    }

    /// Where the resident weights are (None for a baked session), to [`Layout::stage`] a change.
    pub fn layout(&self) -> Option<&Layout> {
        self.resident.as_ref().map(|r| &r.layout)
    }

    /// Uploads staged weights into the bound buffers, in place (their addresses do not change, so
    /// a captured CUDA graph sees them too).
    pub fn commit(&mut self, staged: Staged) -> Result<(), ResidentError> {
        let Some(r) = self.resident.as_mut() else {
            return Ok(());
        };
        let layout = &mut r.layout;
        // Until every write lands, what each written buffer holds is not known.
        layout.patched.extend(staged.writes.iter().map(|(i, _)| *i));
        for (i, filled) in staged.writes {
            let target = r.tensors.get_mut(i).ok_or_else(|| ResidentError::Upload {
                what: layout.what.clone(),
                message: format!("no weight buffer {i}"),
            })?;
            upload(filled.elems, target).map_err(|e| ResidentError::Upload {
                what: layout.what.clone(),
                message: format!("{}: {e}", layout.names[i]),
            })?;
        }
        layout.patched = staged.patched;
        Ok(())
    }
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
        let r = self;
        let Some((_, weightmap)) = component.graph_of(r.graph) else {
            return Err(PatchError::NoGraph {
                component: component.kind.to_string(),
                kind: r.graph,
            });
        };
        let by_name: HashMap<&str, &WeightMapEntry> = weightmap
            .initializers
            .iter()
            .map(|e| (e.name.as_str(), e))
            .collect();
        let mut picked: Vec<(usize, &WeightMapEntry)> = Vec::new();
        for (i, name) in r.names.iter().enumerate() {
            let Some(e) = by_name.get(name.as_str()) else {
                continue;
            };
            if r.patched.contains(&i) || e.sources().iter().any(|s| deltas.may_change(s)) {
                picked.push((i, e));
            }
        }
        let entries: Vec<&WeightMapEntry> = picked.iter().map(|(_, e)| *e).collect();
        let filled = patch::fill_each(component, r.graph, &entries, deltas)?;
        let patched = picked
            .iter()
            .zip(&filled)
            .filter(|(_, f)| f.patched)
            .map(|((i, _), _)| *i)
            .collect();
        Ok(Staged {
            writes: picked.into_iter().map(|(i, _)| i).zip(filled).collect(),
            patched,
        })
    }
}

fn host_memory() -> Result<MemoryInfo<'static>, ort::Error> {
    MemoryInfo::new(
        AllocationDevice::CPU,
        0,
        AllocatorType::Device,
        MemoryType::Default,
    )
}

/// Copies `elems` into `target` (same element type and size), wherever `target` lives.
fn upload(elems: Elems, target: &mut DynTensor) -> Result<(), ort::Error> {
    let shape: Vec<i64> = target.shape().to_vec();
    let host: DynTensor = match (elems, *target.data_type()) {
        (Elems::Four(v), TensorElementType::Float32) => {
            Tensor::from_array((shape, bytemuck::cast_vec::<u32, f32>(v)))?.upcast()
        }
        (Elems::Two(v), TensorElementType::Float16) => {
            Tensor::from_array((shape, bytemuck::cast_vec::<u16, half::f16>(v)))?.upcast()
        }
        (Elems::Two(v), TensorElementType::Bfloat16) => {
            Tensor::from_array((shape, bytemuck::cast_vec::<u16, half::bf16>(v)))?.upcast()
        }
        (_, ty) => {
            return Err(ort::Error::new(format!(
                "no upload of these elements into a {ty:?} tensor"
            )))
        }
    };
    host.copy_into(target)
}

fn tensor_type(elem: ElemType) -> Option<TensorElementType> {
    match elem {
        ElemType::F32 => Some(TensorElementType::Float32),
        ElemType::F16 => Some(TensorElementType::Float16),
        ElemType::Bf16 => Some(TensorElementType::Bfloat16),
        ElemType::Other(_) => None,
    }
}

/// Builds `component`'s `which` graph with its weights as inputs, and fills them with the base
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
    let Some((graph, weightmap)) = component.graph_of(which) else {
        return Err(PatchError::NoGraph {
            component: component.kind.to_string(),
            kind: which,
        }
        .into());
    };
    // Filled first: a delta that does not fit fails before any session is built.
    let entries: Vec<&WeightMapEntry> = weightmap.initializers.iter().collect();
    let filled = patch::fill_each(component, which, &entries, deltas)?;
    component.weights.release_pages();
    let bytes = graph
        .weights_as_inputs()
        .map_err(|e| graph_err(e.to_string()))?;
    let no_file: Arc<[u8]> = Arc::from(Vec::new());
    let session = build_session(
        rt,
        what,
        &bytes,
        &weightmap.external_file,
        no_file,
        opts,
        dims,
    )?;
    let upload_err = |message: String| ResidentError::Upload {
        what: what.to_string(),
        message,
    };
    let allocator = match opts.device {
        Device::Cuda(id) => Allocator::new(
            &session,
            MemoryInfo::new(
                AllocationDevice::CUDA,
                id,
                AllocatorType::Device,
                MemoryType::Default,
            )
            .map_err(|e| upload_err(e.to_string()))?,
        )
        .map_err(|e| upload_err(e.to_string()))?,
        _ => Allocator::default(),
    };
    let mut binding = session
        .create_binding()
        .map_err(|e| upload_err(e.to_string()))?;
    let externals: HashMap<&str, _> = graph
        .externals
        .iter()
        .map(|x| (x.name.as_str(), x))
        .collect();
    let mut names = Vec::with_capacity(entries.len());
    let mut tensors = Vec::with_capacity(entries.len());
    let mut patched = HashSet::new();
    for (i, (e, f)) in entries.iter().zip(filled).enumerate() {
        let x = externals
            .get(e.name.as_str())
            .ok_or_else(|| graph_err(format!("{} is not an external initializer", e.name)))?;
        let ty = tensor_type(x.elem)
            .ok_or_else(|| graph_err(format!("{} has element type {}", e.name, x.elem.name())))?;
        let mut t = DynTensor::new(&allocator, ty, x.dims.clone())
            .map_err(|err| upload_err(format!("{}: {err}", e.name)))?;
        if f.patched {
            patched.insert(i);
        }
        upload(f.elems, &mut t).map_err(|err| upload_err(format!("{}: {err}", e.name)))?;
        binding
            .bind_input(e.name.as_str(), &t)
            .map_err(|err| upload_err(format!("{}: {err}", e.name)))?;
        names.push(e.name.clone());
        tensors.push(t);
    }
    Ok(Net {
        session,
        resident: Some(Resident {
            layout: Layout {
                what: what.to_string(),
                graph: which,
                names,
                patched,
            },
            tensors,
            binding,
        }),
    })
}
