//! Moving f32 data in and out of ONNX Runtime sessions, in the session's own element type.
//!
//! [`run`] takes named f32 (or i64) inputs and returns the named f32 outputs; fp16 graphs get their
//! inputs converted on the way in and outputs on the way out, so the pipeline works in f32 throughout.
//! [`Bound`] does the same through fixed buffers, for a UNet captured as a CUDA graph.

use crate::runtime::Device;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session, SessionInputValue, SessionOutputs, SharedSessionInner};
use ort::value::{
    DynTensor, DynTensorValueType, DynValue, Outlet, Tensor, TensorElementType, ValueType,
};
use std::sync::Arc;

/// One input: name, shape and data.
pub enum Input<'a> {
    F32(&'a str, Vec<usize>, &'a [f32]),
    I64(&'a str, Vec<usize>, Vec<i64>),
}

pub fn input_is_f16(session: &Session, name: &str) -> bool {
    is_f16(session.inputs(), name)
}

/// Whether `name` among a session's inputs or outputs is an f16 tensor.
fn is_f16(outlets: &[Outlet], name: &str) -> bool {
    outlets.iter().any(|o| {
        o.name() == name
            && matches!(
                o.dtype(),
                ValueType::Tensor {
                    ty: TensorElementType::Float16,
                    ..
                }
            )
    })
}

/// An output tensor: shape and f32 values.
pub type Output = (Vec<usize>, Vec<f32>);

/// Runs `session` and returns each of `outputs` as (shape, f32 values).
pub fn run(
    session: &mut Session,
    inputs: Vec<Input<'_>>,
    outputs: &[&str],
) -> Result<Vec<Output>, ort::Error> {
    run_with(session, inputs, Vec::new(), outputs)
}

/// [`run`] with extra inputs already made as values (live mode's adapter factors, made once per
/// job and passed by reference every step).
pub fn run_with<'v>(
    session: &mut Session,
    inputs: Vec<Input<'_>>,
    extra: Vec<(String, SessionInputValue<'v>)>,
    outputs: &[&str],
) -> Result<Vec<Output>, ort::Error> {
    let mut values = host_values(session, inputs)?;
    values.extend(extra);
    run_values(session, values, |out| outputs_of(out, outputs))
}

/// Runs `session` on `inputs` and hands its outputs (on the host) to `read`: for outputs that are
/// not f32, such as the VAE decoder's RGB bytes.
pub fn run_read<R>(
    session: &mut Session,
    inputs: Vec<Input<'_>>,
    read: impl FnOnce(&SessionOutputs<'_>) -> Result<R, ort::Error>,
) -> Result<R, ort::Error> {
    let values = host_values(session, inputs)?;
    run_values(session, values, read)
}

/// Each of `inputs` as a host value of the type the session wants.
fn host_values<'v>(
    session: &Session,
    inputs: Vec<Input<'_>>,
) -> Result<Vec<(String, SessionInputValue<'v>)>, ort::Error> {
    inputs
        .into_iter()
        .map(|input| host_value(session, input).map(|(name, value)| (name, value.into())))
        .collect()
}

/// One run under the current stop guard's options.
fn run_values<'v, R>(
    session: &mut Session,
    values: Vec<(String, SessionInputValue<'v>)>,
    read: impl FnOnce(&SessionOutputs<'_>) -> Result<R, ort::Error>,
) -> Result<R, ort::Error> {
    let guard = super::run_guard::current();
    let out = match guard.as_ref().and_then(|g| g.options()) {
        Some(opts) => session.run_with_options(values, opts)?,
        None => session.run(values)?,
    };
    read(&out)
}

/// `input` as a host tensor of the element type the session wants for it.
pub fn host_value(session: &Session, input: Input<'_>) -> Result<(String, DynValue), ort::Error> {
    Ok(match input {
        Input::F32(name, shape, data) => {
            let v = if input_is_f16(session, name) {
                Tensor::from_array((shape, to_f16(data)))?.into_dyn()
            } else {
                Tensor::from_array((shape, data.to_vec()))?.into_dyn()
            };
            (name.to_string(), v)
        }
        Input::I64(name, shape, data) => (
            name.to_string(),
            Tensor::from_array((shape, data))?.into_dyn(),
        ),
    })
}

/// Each of `names` from a run's outputs, as (shape, f32 values); outputs on a device are copied
/// to the host first.
pub fn outputs_of(out: &SessionOutputs<'_>, names: &[&str]) -> Result<Vec<Output>, ort::Error> {
    let mut result = Vec::with_capacity(names.len());
    for name in names {
        let v = out
            .get(*name)
            .ok_or_else(|| ort::Error::new(format!("the graph has no output {name:?}")))?;
        result.push(to_host(v)?);
    }
    Ok(result)
}

fn to_host(v: &DynValue) -> Result<Output, ort::Error> {
    tensor_to_host(&*v.view().downcast::<DynTensorValueType>()?)
}

fn tensor_to_host(t: &DynTensor) -> Result<Output, ort::Error> {
    let host;
    let v = if t.memory_info().is_cpu_accessible() {
        t
    } else {
        host = t.to(AllocationDevice::CPU, 0)?;
        &host
    };
    let (shape, data) = match v.try_extract_tensor::<f32>() {
        Ok((shape, data)) => (shape.clone(), data.to_vec()),
        Err(_) => {
            let (shape, data) = v.try_extract_tensor::<half::f16>()?;
            (shape.clone(), to_f32(data))
        }
    };
    Ok((shape.iter().map(|&d| d.max(0) as usize).collect(), data))
}

/// Inputs and outputs that stay at one place in device memory from run to run, as ONNX Runtime's
/// CUDA graphs need: a captured graph replays with the addresses it was captured with and reads no
/// new inputs, so every run copies its data into the same buffers instead of handing over new
/// tensors. Made for one session and one set of shapes ([`Bound::fits`]).
pub struct Bound {
    binding: IoBinding,
    session: Arc<SharedSessionInner>,
    inputs: Vec<(String, Vec<usize>, DynTensor)>,
    outputs: Vec<(String, Vec<usize>, DynTensor)>,
}

impl Bound {
    /// Buffers on `device` for `inputs` as given and `outputs` (name, shape) of `session`.
    pub fn new(
        session: &Session,
        device: Device,
        inputs: &[Input<'_>],
        outputs: &[(&str, Vec<usize>)],
    ) -> Result<Bound, ort::Error> {
        let allocator = match device {
            Device::Cuda(id) => Allocator::new(
                session,
                MemoryInfo::new(
                    AllocationDevice::CUDA,
                    id,
                    AllocatorType::Device,
                    MemoryType::Default,
                )?,
            )?,
            // Other devices run from host memory (what the tests exercise on the CPU).
            _ => Allocator::default(),
        };
        let mut binding = session.create_binding()?;
        let mut ins = Vec::with_capacity(inputs.len());
        for input in inputs {
            let (name, shape) = input.name_shape();
            let ty = match input {
                Input::F32(..) if input_is_f16(session, name) => TensorElementType::Float16,
                Input::F32(..) => TensorElementType::Float32,
                Input::I64(..) => TensorElementType::Int64,
            };
            let t = DynTensor::new(&allocator, ty, shape.clone())?;
            binding.bind_input(name, &t)?;
            ins.push((name.to_string(), shape.clone(), t));
        }
        let mut outs = Vec::with_capacity(outputs.len());
        for (name, shape) in outputs {
            let ty = if output_is_f16(session, name) {
                TensorElementType::Float16
            } else {
                TensorElementType::Float32
            };
            let mut t = DynTensor::new(&allocator, ty, shape.clone())?;
            // By reference: the binding shares this buffer (a clone would be a copy).
            binding.bind_output(*name, &mut t)?;
            outs.push((name.to_string(), shape.clone(), t));
        }
        Ok(Bound {
            binding,
            session: session.inner(),
            inputs: ins,
            outputs: outs,
        })
    }

    /// Whether these buffers are `session`'s and have the shapes of `inputs`.
    pub fn fits(&self, session: &Session, inputs: &[Input<'_>]) -> bool {
        Arc::ptr_eq(&self.session, &session.inner())
            && self.inputs.len() == inputs.len()
            && self.inputs.iter().zip(inputs).all(|((n, s, _), i)| {
                let (name, shape) = i.name_shape();
                n == name && s == shape
            })
    }

    /// Copies `inputs` into the bound buffers (same names, order and shapes as at [`Bound::new`]),
    /// runs `session` and returns every bound output as (shape, f32 values).
    pub fn run(
        &mut self,
        session: &mut Session,
        inputs: Vec<Input<'_>>,
    ) -> Result<Vec<Output>, ort::Error> {
        if !self.fits(session, &inputs) {
            return Err(ort::Error::new(
                "the inputs do not match the buffers bound for the CUDA graph",
            ));
        }
        for (input, (_, _, target)) in inputs.into_iter().zip(self.inputs.iter_mut()) {
            let host = match input {
                Input::F32(_, shape, data) if *target.data_type() == TensorElementType::Float16 => {
                    Tensor::from_array((shape, to_f16(data)))?.upcast()
                }
                Input::F32(_, shape, data) => Tensor::from_array((shape, data.to_vec()))?.upcast(),
                Input::I64(_, shape, data) => Tensor::from_array((shape, data))?.upcast(),
            };
            // In place: the buffer keeps its address, which the captured graph reads from.
            host.copy_into(&mut *target)?;
        }
        let guard = super::run_guard::current();
        match guard.as_ref().and_then(|g| g.options()) {
            Some(opts) => drop(session.run_binding_with_options(&self.binding, opts)?),
            None => drop(session.run_binding(&self.binding)?),
        }
        self.outputs
            .iter()
            .map(|(_, _, t)| tensor_to_host(t))
            .collect()
    }
}

impl Input<'_> {
    fn name_shape(&self) -> (&str, &Vec<usize>) {
        match self {
            Input::F32(n, s, _) | Input::I64(n, s, _) => (n, s),
        }
    }
}

/// `data` as f16, eight values per instruction where the CPU has F16C. One value per call
/// (`f16::from_f32`) took about a third of an 8 ms SD1.5 step for the inputs (the prompt context
/// is 118 272 values; an H200 profile of the main thread) and 73 % of the 30–35 ms steps of the
/// post-swap slowdown (an H100's), 2026-12-06.
pub fn to_f16(data: &[f32]) -> Vec<half::f16> {
    use half::slice::HalfFloatSliceExt;
    let mut out = vec![half::f16::ZERO; data.len()];
    out.convert_from_f32_slice(data);
    out
}

/// `data` as f32, the way [`to_f16`] converts.
fn to_f32(data: &[half::f16]) -> Vec<f32> {
    use half::slice::HalfFloatSliceExt;
    let mut out = vec![0.0; data.len()];
    data.convert_to_f32_slice(&mut out);
    out
}

fn output_is_f16(session: &Session, name: &str) -> bool {
    is_f16(session.outputs(), name)
}

#[cfg(test)]
mod tests {
    use super::{to_f16, to_f32};
    use half::f16;

    /// The slice conversions give the bits the per-value ones give, at every length (the SIMD
    /// path takes eight at a time, the rest one by one) and for rounding ties, subnormals,
    /// overflow, infinities and NaN.
    #[test]
    fn slice_conversions_equal_the_per_value_ones() {
        let mut values: Vec<f32> = vec![
            0.0,
            -0.0,
            1.0,
            -1.5,
            65504.0,
            65520.0,
            1e6,
            -1e6,
            6.0e-8,
            3.0e-8,
            1.0e-40,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1.0 + 1.0 / 2048.0,
            1.0 + 3.0 / 2048.0,
        ];
        values.extend((0..1000).map(|i| ((i as f32) * 0.7371).sin() * 10f32.powi(i % 9 - 4)));
        for n in [0, 1, 7, 8, 9, 17, values.len()] {
            let part = &values[..n];
            let want: Vec<u16> = part.iter().map(|&x| f16::from_f32(x).to_bits()).collect();
            let got: Vec<u16> = to_f16(part).iter().map(|h| h.to_bits()).collect();
            assert_eq!(got, want, "{n} values to f16");
            let halves = to_f16(part);
            let want: Vec<u32> = halves.iter().map(|h| h.to_f32().to_bits()).collect();
            let got: Vec<u32> = to_f32(&halves).iter().map(|x| x.to_bits()).collect();
            assert_eq!(got, want, "{n} values to f32");
        }
    }
}
