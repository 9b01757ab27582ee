//! Assembles one component's external-data buffer, laid out as the graph's offsets say.
//!
//! [`assemble`] (plain graph) and [`assemble_graph`] (any of a component's graphs) copy untouched
//! weights byte for byte when the stored dtype matches the graph's, and otherwise convert through
//! f32, adding the delta (torch layout) before the transform (transpose, NHWC, per-head packing).

use crate::model::layout::{buffer_len, elem_of, Component, GraphKind};
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
    #[error("{component}: the model folder has no {kind:?} graph")]
    NoGraph { component: String, kind: GraphKind },
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
    deltas: &HashMap<String, Vec<f32>>,
) -> Result<(Arc<[u8]>, PatchStats), PatchError> {
    assemble_graph(component, GraphKind::Plain, deltas)
}

/// [`assemble`] for one of the component's graphs (the fused CUDA graph repacks weights).
pub fn assemble_graph(
    component: &Component,
    kind: GraphKind,
    deltas: &HashMap<String, Vec<f32>>,
) -> Result<(Arc<[u8]>, PatchStats), PatchError> {
    let cname = component.kind.to_string();
    let (graph, weightmap) = component
        .graph_of(kind)
        .ok_or_else(|| PatchError::NoGraph {
            component: cname.clone(),
            kind,
        })?;
    let mut used = std::collections::HashSet::new();
    // Allocated as the Arc ONNX Runtime takes: turning a Vec into an Arc<[u8]> would copy the whole
    // buffer once more (1.7 GB for an SD1.5 UNet). A fresh Arc has one owner, so get_mut succeeds.
    let mut arc: Arc<[u8]> = std::iter::repeat_n(0u8, buffer_len(graph)).collect();
    let Some(buf) = Arc::get_mut(&mut arc) else {
        unreachable!("a freshly collected Arc has a single owner")
    };
    let mut stats = PatchStats {
        bytes: buf.len(),
        ..Default::default()
    };
    for entry in &weightmap.initializers {
        let mut parts = Vec::new();
        for src in entry.sources() {
            let tensor =
                component
                    .weights
                    .tensor(src)
                    .ok_or_else(|| PatchError::MissingSource {
                        component: cname.clone(),
                        source_name: src.to_string(),
                    })?;
            parts.push((src, tensor));
        }
        let elem = elem_of(graph, &entry.name)
            .filter(|e| e.size().is_some())
            .ok_or_else(|| PatchError::Elem {
                component: cname.clone(),
                init: entry.name.clone(),
                elem: entry.dtype.clone(),
            })?;
        let out = &mut buf[entry.offset..entry.offset + entry.length];
        stats.initializers += 1;
        if let [(src, tensor)] = parts[..] {
            let same_dtype = matches!(
                (tensor.dtype, elem),
                (safetensors::Dtype::F32, ElemType::F32)
                    | (safetensors::Dtype::F16, ElemType::F16)
                    | (safetensors::Dtype::BF16, ElemType::Bf16)
            );
            if !deltas.contains_key(src) && same_dtype && entry.transform == Transform::Identity {
                out.copy_from_slice(tensor.data);
                continue;
            }
        }
        let mut values = Vec::with_capacity(parts.len());
        let mut patched = false;
        for (src, tensor) in &parts {
            let mut v = tensor.to_f32();
            if let Some(d) = deltas.get(*src) {
                if d.len() != v.len() {
                    return Err(PatchError::DeltaSize {
                        component: cname,
                        param: src.to_string(),
                        got: d.len(),
                        want: v.len(),
                    });
                }
                for (x, dx) in v.iter_mut().zip(d) {
                    *x += dx;
                }
                used.insert(*src);
                patched = true;
            }
            values.push(v);
        }
        if patched {
            stats.patched += 1;
        }
        let shape = parts[0].1.shape;
        let values = match entry.transform {
            Transform::Identity => values.swap_remove(0),
            Transform::Transpose => transpose(&values[0], shape),
            Transform::Nhwc => nhwc(&values[0], shape),
            Transform::PackHeads => pack_heads(&values, shape, entry.heads),
        };
        write_elems(&values, elem, out);
    }
    if used.len() != deltas.len() {
        let mut names: Vec<String> = deltas
            .keys()
            .filter(|k| !used.contains(k.as_str()))
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

/// `[out, in, kh, kw]` → `[out, kh, kw, in]`.
fn nhwc(values: &[f32], shape: &[usize]) -> Vec<f32> {
    let (o, i, kh, kw) = (shape[0], shape[1], shape[2], shape[3]);
    let mut out = vec![0f32; values.len()];
    for a in 0..o {
        for b in 0..i {
            for y in 0..kh {
                for x in 0..kw {
                    out[((a * kh + y) * kw + x) * i + b] = values[((a * i + b) * kh + y) * kw + x];
                }
            }
        }
    }
    out
}

/// Parts `[heads*dim, in]` → `[in, heads*k*dim]` with column `(n*k + p)*dim + d` = row `n*dim + d`
/// of part `p`: the layout ONNX Runtime's MultiHeadAttention reads packed QKV/KV in.
fn pack_heads(parts: &[Vec<f32>], shape: &[usize], heads: usize) -> Vec<f32> {
    let (rows, cin) = (shape[0], shape[1]);
    let k = parts.len();
    let dim = rows / heads;
    let width = rows * k;
    let mut out = vec![0f32; cin * width];
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
    fn f16_writes_round_to_nearest() {
        let mut out = [0u8; 4];
        write_elems(&[1.0, 1.0 + 1.0 / 4096.0], ElemType::F16, &mut out);
        assert_eq!(half::f16::from_le_bytes([out[0], out[1]]).to_f32(), 1.0);
        // 1 + 2^-12 is below half an f16 ulp at 1.0 (2^-10), so it rounds down.
        assert_eq!(half::f16::from_le_bytes([out[2], out[3]]).to_f32(), 1.0);
    }
}
