//! Moving f32 data in and out of ONNX Runtime sessions, in the session's own element type.
//!
//! [`run`] takes named f32 (or i64) inputs and returns the named f32 outputs; fp16 graphs get their
//! inputs converted on the way in and outputs on the way out, so the pipeline works in f32 throughout.

use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorElementType, ValueType};

/// One input: name, shape and data.
pub enum Input<'a> {
    F32(&'a str, Vec<usize>, &'a [f32]),
    I64(&'a str, Vec<usize>, Vec<i64>),
}

pub fn input_is_f16(session: &Session, name: &str) -> bool {
    session.inputs().iter().any(|o| {
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
    let mut values: Vec<(String, SessionInputValue<'v>)> =
        Vec::with_capacity(inputs.len() + extra.len());
    for input in inputs {
        match input {
            Input::F32(name, shape, data) => {
                let v = if input_is_f16(session, name) {
                    let h: Vec<half::f16> = data.iter().map(|&x| half::f16::from_f32(x)).collect();
                    Tensor::from_array((shape, h))?.into_dyn()
                } else {
                    Tensor::from_array((shape, data.to_vec()))?.into_dyn()
                };
                values.push((name.to_string(), v.into()));
            }
            Input::I64(name, shape, data) => {
                values.push((
                    name.to_string(),
                    Tensor::from_array((shape, data))?.into_dyn().into(),
                ));
            }
        }
    }
    values.extend(extra);
    let out = session.run(values)?;
    let mut result = Vec::with_capacity(outputs.len());
    for name in outputs {
        let v = out
            .get(*name)
            .ok_or_else(|| ort::Error::new(format!("the graph has no output {name:?}")))?;
        let (shape, data) = match v.try_extract_tensor::<f32>() {
            Ok((shape, data)) => (shape.clone(), data.to_vec()),
            Err(_) => {
                let (shape, data) = v.try_extract_tensor::<half::f16>()?;
                (shape.clone(), data.iter().map(|x| x.to_f32()).collect())
            }
        };
        let dims = shape.iter().map(|&d| d.max(0) as usize).collect();
        result.push((dims, data));
    }
    Ok(result)
}
