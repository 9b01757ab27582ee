//! Running a patch program: [`DeviceStaged`] (the programs built for one adapter set, one a strength
//! change re-runs and one run at the commit only, with what they need on the device) and [`run`],
//! which binds its inputs and writes its outputs into the resident weight buffers ([`Sink`]; a
//! conv weight through a 2-D view, [`view_as`], which also makes `resident`'s shared weights); on
//! CUDA the program replays as a CUDA graph ([`Captured`]). Built by
//! [`super::device_patch`], run by [`super::resident::Net`].

use super::keys::FusedAdapter;
use crate::model::ElemType;
use crate::patch::{program, TermOrigin};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session};
use ort::value::{
    DynTensor, DynValue, PrimitiveTensorElementType, Tensor, TensorElementType, TensorRefMut,
};
use std::collections::HashSet;

/// The patch programs built for one adapter set, not yet run: the weights are split between a
/// program that a strength change re-runs ([`Self::rerun`]: every weight whose value scales with a
/// strength) and one that runs only when the set is committed ([`Self::fixed`]: the weights it
/// writes the same at any strength). Each initializer and base copy is in one program only.
pub struct DeviceStaged {
    /// The weights whose value scales with the strengths: run at the commit and at every re-run.
    pub(crate) rerun: Pass,
    /// The other weights the change writes (no term: a bias beside a weight an adapter reaches, a
    /// weight the last set patched going back to its base; or only terms that hold their
    /// strength): run at the commit only.
    pub(crate) fixed: Pass,
    /// The strengths both programs take (the fixed one reads none of them).
    pub(crate) strengths: Vec<f32>,
    /// Every term of the programs, in site order; the linear ones read `strengths` in this order.
    pub(crate) terms: Vec<ProgramTerm>,
    /// The adapter set the program was planned for (files, block weights, DyLoRA rank; strengths
    /// aside), stamped by the sessions: a change of strengths alone re-runs it.
    pub(crate) adapters: Option<Vec<FusedAdapter>>,
    /// Base copies the device does not hold yet (layout index, element type, host tensor).
    pub(crate) new_bases: Vec<(usize, ElemType, DynTensor)>,
    /// The weights that hold base + ΔW once it has run.
    pub(crate) patched: HashSet<usize>,
    /// Bytes of factors and dense ΔW the program holds (what goes to the device per adapter set).
    pub factor_bytes: usize,
}

/// One patch program and the weights it writes.
pub(crate) struct Pass {
    /// None when it writes no weight.
    pub(crate) session: Option<Session>,
    /// The layout index of the weight each output writes.
    pub(crate) entries: Vec<usize>,
    /// Whether the session was built to replay as a CUDA graph: its runs then keep one binding.
    pub(crate) graph: bool,
    /// That binding, made by the first run.
    pub(crate) captured: Option<Captured>,
}

/// What a program captured as a CUDA graph keeps between runs: the graph replays the addresses it
/// was captured with, so every run binds the same buffers and new strengths are copied into the
/// same device buffer instead of being handed over as a new tensor.
pub(crate) struct Captured {
    binding: IoBinding,
    strengths: DynTensor,
    /// The weight buffers' addresses at the capture: a run with other buffers is refused (the
    /// graph would write the old ones, which reshaped views do not keep alive).
    targets: Vec<usize>,
}

/// One term of a program: where its strength comes from, whether the program scales it (it reads
/// the next slot of the strengths input) and the strength it was planned at.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProgramTerm {
    pub origin: Option<TermOrigin>,
    pub linear: bool,
    pub strength: f32,
}

impl DeviceStaged {
    /// Breaks the programs so that their runs fail (tests of a failed patch).
    #[doc(hidden)]
    pub fn break_for_test(&mut self) {
        // Two more than the input takes (an empty list is run as one zero).
        self.strengths.extend([0.0, 0.0]);
    }

    /// The strengths the programs were planned at (one per term that scales with its strength).
    pub fn strengths(&self) -> &[f32] {
        &self.strengths
    }

    /// The layout indices of the weights a re-run writes (those whose value scales with a
    /// strength), in the re-run program's output order.
    pub fn rerun_entries(&self) -> &[usize] {
        &self.rerun.entries
    }

    /// The layout indices of every weight the commit writes: the re-run program's, then the fixed
    /// program's.
    pub fn commit_entries(&self) -> Vec<usize> {
        let both = self.rerun.entries.iter().chain(&self.fixed.entries);
        both.copied().collect()
    }
}

/// Where a program's outputs go.
pub(crate) enum Sink<'a> {
    /// Bound to the weight buffers themselves (device memory ONNX Runtime allocated).
    Bound(Vec<&'a mut DynTensor>),
    /// Host buffers the outputs are copied into after the run.
    Copied(Vec<&'a DynValue>),
}

/// Runs `session` (a patch program; none writes nothing) with `strengths` and the base copies
/// `bases` (one per output), writing its outputs into `sink`. With `captured` (a program built as
/// a CUDA graph) and device buffers as the sink, the binding of the first run is kept there and
/// reused: the later runs replay the graph.
pub(crate) fn run(
    session: Option<&mut Session>,
    strengths: &[f32],
    bases: &[&DynValue],
    sink: Sink<'_>,
    captured: Option<&mut Option<Captured>>,
) -> Result<(), ort::Error> {
    let Some(session) = session else {
        return Ok(());
    };
    // An empty list is run as one zero (the input cannot be empty).
    let s: Vec<f32> = if strengths.is_empty() {
        vec![0.0]
    } else {
        strengths.to_vec()
    };
    let s = Tensor::from_array((vec![s.len() as i64], s))?.upcast();
    let sink = match (captured, sink) {
        (Some(slot), Sink::Bound(mut targets)) => {
            let c = match slot {
                Some(c) => c,
                None => slot.insert(bind_once(session, s.shape()[0], bases, &mut targets)?),
            };
            if c.targets != addresses(&targets) {
                return Err(ort::Error::new(
                    "the weight buffers moved since the patch program was captured",
                ));
            }
            // In place: the captured graph reads the strengths from this buffer's address.
            s.copy_into(&mut c.strengths)?;
            session.run_binding(&c.binding)?;
            c.binding.synchronize_outputs()?;
            return Ok(());
        }
        (_, sink) => sink,
    };
    let mut binding = session.create_binding()?;
    binding.bind_input(program::STRENGTHS, &s)?;
    for (k, b) in bases.iter().enumerate() {
        binding.bind_input(program::base_input(k), *b)?;
    }
    match sink {
        Sink::Bound(mut targets) => {
            let _views = bind_outputs(session, &mut binding, &mut targets)?;
            session.run_binding(&binding)?;
            binding.synchronize_outputs()?;
        }
        Sink::Copied(targets) => {
            let cpu = MemoryInfo::new(
                AllocationDevice::CPU,
                0,
                AllocatorType::Device,
                MemoryType::Default,
            )?;
            for k in 0..targets.len() {
                binding.bind_output_to_device(program::output(k), &cpu)?;
            }
            let mut outs = session.run_binding(&binding)?;
            // Every output is checked before any buffer is written: a bad one changes nothing.
            let mut got = Vec::with_capacity(targets.len());
            for (k, t) in targets.iter().enumerate() {
                let name = program::output(k);
                let v = outs
                    .remove(name.as_str())
                    .ok_or_else(|| ort::Error::new(format!("the program gave no {name}")))?;
                let (src, dst) = (tensor_bytes(&v)?, tensor_bytes(t)?);
                if src.1 != dst.1 {
                    return Err(ort::Error::new(format!(
                        "{name}: {} bytes for a buffer of {}",
                        src.1, dst.1
                    )));
                }
                got.push((v, src.0, dst.0, src.1));
            }
            for (_v, src, dst, len) in got {
                // SAFETY: both are host tensors of `len` bytes (checked above); the source is held
                // by `_v` and the target by the session's resident weights, which are not read
                // while the program runs (patches happen between runs).
                unsafe { std::ptr::copy_nonoverlapping(src, dst.cast_mut(), len) };
            }
        }
    }
    Ok(())
}

/// The binding a captured program keeps: a device buffer of `n` strengths (on the device of the
/// weight buffers), the base copies and the weight buffers as outputs.
fn bind_once(
    session: &Session,
    n: i64,
    bases: &[&DynValue],
    targets: &mut [&mut DynTensor],
) -> Result<Captured, ort::Error> {
    let first = targets
        .first()
        .ok_or_else(|| ort::Error::new("a captured patch program with no outputs"))?;
    let allocator = Allocator::new(session, first.memory_info().clone())?;
    let strengths = DynTensor::new(&allocator, TensorElementType::Float32, vec![n])?;
    let mut binding = session.create_binding()?;
    binding.bind_input(program::STRENGTHS, &strengths)?;
    for (k, b) in bases.iter().enumerate() {
        binding.bind_input(program::base_input(k), *b)?;
    }
    // The binding holds the views it is given (and through them nothing else): [`Captured`]
    // checks the buffers' addresses at every run instead.
    drop(bind_outputs(session, &mut binding, targets)?);
    Ok(Captured {
        binding,
        strengths,
        targets: addresses(targets),
    })
}

fn addresses(targets: &[&mut DynTensor]) -> Vec<usize> {
    targets.iter().map(|t| t.data_ptr() as usize).collect()
}

/// Binds each weight buffer to the program's output of the same index: as it is where the shapes
/// agree, else as a view of the program's output shape (a Gemm's `[rows, cols]` over a conv's 4-D
/// weight: same elements, same order). The views are returned: they must outlive the run.
fn bind_outputs(
    session: &Session,
    binding: &mut IoBinding,
    targets: &mut [&mut DynTensor],
) -> Result<Vec<DynValue>, ort::Error> {
    let mut views = Vec::new();
    for (k, t) in targets.iter_mut().enumerate() {
        let name = program::output(k);
        // The program declares its outputs in index order.
        let want = session
            .outputs()
            .get(k)
            .filter(|o| o.name() == name)
            .and_then(|o| match o.dtype() {
                ort::value::ValueType::Tensor { shape, .. } => Some(shape.to_vec()),
                _ => None,
            })
            .ok_or_else(|| ort::Error::new(format!("the program has no tensor output {name}")))?;
        if want.as_slice() == &t.shape()[..] {
            binding.bind_output(name, &mut **t)?;
            continue;
        }
        let (n, m): (i64, i64) = (want.iter().product(), t.shape().iter().product());
        if n != m || want.iter().any(|&d| d < 0) {
            return Err(ort::Error::new(format!(
                "{name}: the program writes {want:?} into a weight of {:?}",
                t.shape()
            )));
        }
        // SAFETY: the view covers the same elements of the same type as `t`'s buffer (checked
        // above); it is bound for this run or, captured, used only while `Captured::targets`
        // still names `t`'s address, i.e. while `t` (a resident weight) is alive.
        let mut view = unsafe { view_as(t, want)? };
        binding.bind_output(name, &mut view)?;
        views.push(view);
    }
    Ok(views)
}

/// A value of `shape` over `placed`'s buffer that does not own it: what ONNX Runtime accepts as a
/// shared initializer (`resident`'s views) or as a program's output of another shape.
///
/// # Safety
/// `placed` must outlive the returned value, and `shape` must not hold more elements than it.
pub(super) unsafe fn view_as(placed: &DynTensor, shape: Vec<i64>) -> Result<DynValue, ort::Error> {
    use ort::value::TensorElementType as T;
    let info = placed.memory_info().clone();
    let ptr = placed.data_ptr().cast_mut();
    // SAFETY (all arms): `ptr` is `placed`'s buffer of `shape` elements of this type; the
    // caller keeps `placed` alive. The view's value is moved out of its guard (which only ties
    // it to a lifetime) so that it can be shared with the session.
    unsafe {
        match *placed.data_type() {
            T::Float32 => owned(TensorRefMut::<f32>::from_raw(info, ptr, shape.into())?),
            T::Float16 => owned(TensorRefMut::<half::f16>::from_raw(
                info,
                ptr,
                shape.into(),
            )?),
            T::Bfloat16 => owned(TensorRefMut::<half::bf16>::from_raw(
                info,
                ptr,
                shape.into(),
            )?),
            ty => Err(ort::Error::new(format!(
                "no resident weights of type {ty:?}"
            ))),
        }
    }
}

/// The value inside a view, without the view's lifetime.
///
/// # Safety
/// The data the view points at must outlive the value.
unsafe fn owned<T: PrimitiveTensorElementType + std::fmt::Debug>(
    view: TensorRefMut<'_, T>,
) -> Result<DynValue, ort::Error> {
    let view = std::mem::ManuallyDrop::new(view);
    // SAFETY: the guard is never dropped, so the value read out of it is the only owner of its
    // handle.
    let value: Tensor<T> = unsafe { std::ptr::read(&**view) };
    Ok(value.into_dyn())
}

/// The data pointer and byte size of a host tensor.
pub(crate) fn tensor_bytes(v: &DynValue) -> Result<(*const u8, usize), ort::Error> {
    let t = v.view().downcast::<ort::value::DynTensorValueType>()?;
    if !t.memory_info().is_cpu_accessible() {
        return Err(ort::Error::new("the tensor is not in host memory"));
    }
    let n: i64 = t.shape().iter().product();
    let esize = match *t.data_type() {
        ort::value::TensorElementType::Float32 => 4,
        ort::value::TensorElementType::Float16 | ort::value::TensorElementType::Bfloat16 => 2,
        ty => return Err(ort::Error::new(format!("a weight of type {ty:?}"))),
    };
    Ok((t.data_ptr().cast(), n.max(0) as usize * esize))
}

/// Device memory a patch program takes beyond what the session holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Need {
    /// Factors and dense ΔW (the program's initializers).
    pub factors: u64,
    /// Pristine base copies not on the device yet.
    pub bases: u64,
    /// A guess at the program's own buffers: f32 copies of its largest weight (12× its bytes).
    pub working: u64,
}

impl Need {
    pub fn total(&self) -> u64 {
        self.factors + self.bases + self.working
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::onnx_proto::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto};
    use crate::runtime::{build_session, Runtime, SessionOptions};
    use prost::Message;
    use std::sync::Arc;

    /// A program that copies its base `[4, 3]` into its output, declared `[4, 3]` (a stand-in for
    /// a Gemm site's `[rows, cols]`).
    fn copy_program(rt: &Runtime) -> Session {
        let elem = crate::model::onnx_proto::tensor_proto::DataType::Float as i32;
        let dims = |d: &[i64]| d.iter().map(|&v| Ok(v)).collect::<Vec<_>>();
        let model = ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(GraphProto {
                node: vec![NodeProto {
                    input: vec![program::base_input(0)],
                    output: vec![program::output(0)],
                    op_type: Some("Identity".into()),
                    ..Default::default()
                }],
                name: Some("copy".into()),
                input: vec![
                    program::value_info(program::STRENGTHS, elem, &dims(&[1])),
                    program::value_info(&program::base_input(0), elem, &dims(&[4, 3])),
                ],
                output: vec![program::value_info(
                    &program::output(0),
                    elem,
                    &dims(&[4, 3]),
                )],
                ..Default::default()
            }),
            ..Default::default()
        };
        let bytes = model.encode_to_vec();
        let opts = SessionOptions::default();
        build_session(
            rt,
            "copy",
            &bytes,
            "none.bin",
            Arc::from(vec![0u8; 1]),
            &opts,
            &[],
            &[],
        )
        .expect("the copy program builds")
    }

    /// A program output declared `[4, 3]` writes a `[4, 3, 1, 1]` weight buffer through a view of
    /// its memory, as a Gemm site writes a conv's weight; every element lands in place. A buffer of
    /// another element count is refused before the run and keeps its values.
    #[test]
    fn an_output_of_another_shape_writes_the_weight_through_a_view() {
        let rt = Runtime::get(None, false).expect("ONNX Runtime (run scripts/setup)");
        let mut session = copy_program(rt);
        let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
        let base = Tensor::from_array((vec![4i64, 3], values.clone()))
            .unwrap()
            .into_dyn();
        let mut weight = DynTensor::new(
            &Allocator::default(),
            TensorElementType::Float32,
            vec![4i64, 3, 1, 1],
        )
        .unwrap();
        run(
            Some(&mut session),
            &[1.0],
            &[&base],
            Sink::Bound(vec![&mut weight]),
            None,
        )
        .unwrap();
        let (shape, got) = weight.try_extract_tensor::<f32>().unwrap();
        assert_eq!(&shape[..], &[4, 3, 1, 1]);
        assert_eq!(got, values.as_slice());

        let mut wrong = Tensor::<f32>::new(&Allocator::default(), vec![4i64, 4, 1, 1])
            .unwrap()
            .upcast();
        let before = wrong.try_extract_tensor::<f32>().unwrap().1.to_vec();
        let err = run(
            Some(&mut session),
            &[1.0],
            &[&base],
            Sink::Bound(vec![&mut wrong]),
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("writes [4, 3] into a weight of [4, 4, 1, 1]"),
            "{err}"
        );
        assert_eq!(
            wrong.try_extract_tensor::<f32>().unwrap().1,
            before.as_slice()
        );
    }
}
