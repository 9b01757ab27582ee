//! Assembles one component's external-data buffer, laid out as the graph's offsets say.
//!
//! [`assemble`] copies untouched weights byte for byte when the stored dtype matches the graph's, and
//! otherwise converts through f32, adding the delta (torch layout) before the transform.

use crate::model::layout::Component;
use crate::model::weightmap::Transform;
use crate::model::ElemType;
use std::collections::HashMap;
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
}

/// What [`assemble`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PatchStats {
    pub initializers: usize,
    pub patched: usize,
    pub bytes: usize,
}

/// Builds the buffer for `component` with `deltas` (parameter name → ΔW in torch layout, f32) added.
///
/// Fails before returning anything if a delta does not fit, so a model is never half-patched.
pub fn assemble(
    component: &Component,
    deltas: &HashMap<String, Vec<f32>>,
) -> Result<(Arc<[u8]>, PatchStats), PatchError> {
    let cname = component.kind.to_string();
    let mut used = 0usize;
    // Allocated as the Arc ONNX Runtime takes: turning a Vec into an Arc<[u8]> would copy the whole
    // buffer once more (1.7 GB for an SD1.5 UNet). A fresh Arc has one owner, so get_mut succeeds.
    let mut arc: Arc<[u8]> = std::iter::repeat_n(0u8, component.buffer_len()).collect();
    let Some(buf) = Arc::get_mut(&mut arc) else {
        unreachable!("a freshly collected Arc has a single owner")
    };
    let mut stats = PatchStats {
        bytes: buf.len(),
        ..Default::default()
    };
    for entry in &component.weightmap.initializers {
        let tensor =
            component
                .weights
                .tensor(&entry.source)
                .ok_or_else(|| PatchError::MissingSource {
                    component: cname.clone(),
                    source_name: entry.source.clone(),
                })?;
        let elem = component
            .elem_of(&entry.name)
            .filter(|e| e.size().is_some())
            .ok_or_else(|| PatchError::Elem {
                component: cname.clone(),
                init: entry.name.clone(),
                elem: entry.dtype.clone(),
            })?;
        let out = &mut buf[entry.offset..entry.offset + entry.length];
        let delta = deltas.get(&entry.source);
        stats.initializers += 1;
        let same_dtype = matches!(
            (tensor.dtype, elem),
            (safetensors::Dtype::F32, ElemType::F32)
                | (safetensors::Dtype::F16, ElemType::F16)
                | (safetensors::Dtype::BF16, ElemType::Bf16)
        );
        if delta.is_none() && same_dtype && entry.transform == Transform::Identity {
            out.copy_from_slice(tensor.data);
            continue;
        }
        let mut values = tensor.to_f32();
        if let Some(d) = delta {
            if d.len() != values.len() {
                return Err(PatchError::DeltaSize {
                    component: cname,
                    param: entry.source.clone(),
                    got: d.len(),
                    want: values.len(),
                });
            }
            for (v, dv) in values.iter_mut().zip(d) {
                *v += dv;
            }
            used += 1;
            stats.patched += 1;
        }
        if entry.transform == Transform::Transpose {
            values = transpose(&values, tensor.shape);
        }
        write_elems(&values, elem, out);
    }
    if used != deltas.len() {
        let known: std::collections::HashSet<&str> = component
            .weightmap
            .initializers
            .iter()
            .map(|e| e.source.as_str())
            .collect();
        let mut names: Vec<String> = deltas
            .keys()
            .filter(|k| !known.contains(k.as_str()))
            .cloned()
            .collect();
        names.sort();
        return Err(PatchError::UnusedDeltas {
            component: cname,
            names,
        });
    }
    Ok((arc, stats))
}

fn transpose(values: &[f32], shape: &[usize]) -> Vec<f32> {
    let (rows, cols) = (shape[0], shape[1]);
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// Rounds once from f32 to the initializer's type, little-endian.
fn write_elems(values: &[f32], elem: ElemType, out: &mut [u8]) {
    match elem {
        ElemType::F32 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(4)) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        ElemType::F16 => {
            for (v, o) in values.iter().zip(out.chunks_exact_mut(2)) {
                o.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            }
        }
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
    fn transpose_swaps_rows_and_columns() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // 2x3
        assert_eq!(transpose(&v, &[2, 3]), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
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
