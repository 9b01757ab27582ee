//! An fp16 graph made f32 throughout at load: [`widen`] turns the VAE decoder's fused fp16 graph
//! (`model.fused.onnx`) and its weight map into an f32 graph with the same nodes, which runs the
//! decoder with f32 values where fp16 would overflow (SDXL's own VAE) or where f32 is asked for.
//!
//! Why not the plain fp32 export: its GroupNorms are a dozen separate operators each. ONNX Runtime
//! alone on an H100 (2026-12-07, `scripts/unet_profile.py templates/sdxl-fp16 --component
//! vae_decoder --graphs fused,fused32,plain --static`) decoded SDXL's 1024² picture in 57.6 ms this
//! way against 96.6 ms with the plain graph (40.6 ms fused fp16).

use super::graph::{ElemType, Graph, GraphError};
use super::onnx_proto::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, type_proto, ModelProto,
    TensorProto, ValueInfoProto,
};
use super::weightmap::WeightMap;
use prost::Message;
use std::collections::HashMap;

const F16: i32 = 10;
const F32: i32 = 1;
/// Alignment of each initializer in the new external-data layout (a cache line; ONNX Runtime
/// needs none).
const ALIGN: usize = 64;

/// Why a graph was not widened; the component then has no f32 fused graph and runs its plain one.
#[derive(Debug, thiserror::Error)]
pub enum Fp32GraphError {
    #[error("the graph could not be read: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error("the graph {0}")]
    Unsuited(String),
}

/// `graph` with every fp16 initializer, constant, cast target and value type made f32, and the
/// external initializers laid out again (in their old order) for the wider types; `weightmap`
/// made to say the same. Nothing else changes: the nodes, their order and their names stay.
pub fn widen(graph: &Graph, weightmap: &WeightMap) -> Result<(Graph, WeightMap), Fp32GraphError> {
    let unsuited = |m: String| Fp32GraphError::Unsuited(m);
    let mut model = ModelProto::decode(graph.bytes.as_slice())?;
    let g = model
        .graph
        .as_mut()
        .ok_or_else(|| unsuited("is empty".into()))?;
    for init in &mut g.initializer {
        widen_tensor(init).map_err(unsuited)?;
    }
    let placed = relayout(&mut g.initializer)?;
    for node in &mut g.node {
        for a in &mut node.attribute {
            match a.r#type() {
                AttributeType::Tensor => {
                    if let Some(t) = a.t.as_mut() {
                        widen_tensor(t).map_err(unsuited)?;
                    }
                }
                AttributeType::Int
                    if matches!(a.name(), "to" | "dtype") && a.i == Some(F16 as i64) =>
                {
                    a.i = Some(F32 as i64)
                }
                AttributeType::Graph | AttributeType::Graphs => {
                    return Err(unsuited(format!(
                        "has a subgraph in node {:?}, which is not widened",
                        node.name()
                    )))
                }
                _ => {}
            }
        }
    }
    for v in g
        .value_info
        .iter_mut()
        .chain(g.input.iter_mut())
        .chain(g.output.iter_mut())
    {
        widen_value(v);
    }
    let mut weightmap = weightmap.clone();
    for e in &mut weightmap.initializers {
        let Some(&(offset, length, elem)) = placed.get(e.name.as_str()) else {
            return Err(unsuited(format!(
                "has no external initializer for weight-map entry {}",
                e.name
            )));
        };
        e.offset = offset;
        e.length = length;
        e.dtype = elem.name();
    }
    let graph = Graph::from_bytes(&graph.path, model.encode_to_vec())?;
    Ok((graph, weightmap))
}

/// Makes an fp16 tensor f32: its type, and its values where they are in the graph.
fn widen_tensor(t: &mut TensorProto) -> Result<(), String> {
    if t.data_type != Some(F16) {
        return Ok(());
    }
    t.data_type = Some(F32);
    if t.data_location == Some(DataLocation::External as i32) {
        return Ok(()); // the weights are assembled for the new type
    }
    let bits: Vec<u16> = match &t.raw_data {
        Some(raw) if !raw.is_empty() || t.int32_data.is_empty() => {
            if raw.len() % 2 != 0 {
                return Err(format!(
                    "has fp16 tensor {:?} of {} bytes",
                    t.name(),
                    raw.len()
                ));
            }
            raw.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect()
        }
        // ONNX keeps fp16 values not in raw_data as their bits, one per int32.
        _ => t.int32_data.iter().map(|&b| b as u16).collect(),
    };
    let raw: Vec<u8> = bits
        .into_iter()
        .flat_map(|b| half::f16::from_bits(b).to_f32().to_le_bytes())
        .collect();
    t.raw_data = Some(raw);
    t.int32_data.clear();
    Ok(())
}

fn widen_value(v: &mut ValueInfoProto) {
    if let Some(type_proto::Value::TensorType(t)) = v.r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        if t.elem_type == Some(F16) {
            t.elem_type = Some(F32);
        }
    }
}

/// Lays the external initializers out again in their old order, each at an aligned offset with
/// the length its (new) type needs; their placements by name.
fn relayout(
    inits: &mut [TensorProto],
) -> Result<HashMap<String, (usize, usize, ElemType)>, Fp32GraphError> {
    let mut external: Vec<(usize, usize)> = Vec::new();
    for (i, t) in inits.iter().enumerate() {
        if t.data_location == Some(DataLocation::External as i32) {
            let offset = t
                .external_data
                .iter()
                .find(|kv| kv.key() == "offset")
                .and_then(|kv| kv.value().parse().ok())
                .unwrap_or(0);
            external.push((offset, i));
        }
    }
    external.sort();
    let mut placed = HashMap::new();
    let mut end = 0usize;
    for (_, i) in external {
        let t = &mut inits[i];
        let elem = ElemType::from_onnx(t.data_type());
        let size = elem.size().ok_or_else(|| {
            Fp32GraphError::Unsuited(format!(
                "has external initializer {:?} of element type {}",
                t.name(),
                t.data_type()
            ))
        })?;
        let bad_dims =
            || Fp32GraphError::Unsuited(format!("has initializer {:?} of bad dims", t.name()));
        // Bytes: the element size times every dimension (negative or overflowing ones refused).
        let length = t
            .dims
            .iter()
            .try_fold(size, |n, &d| {
                usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
            })
            .ok_or_else(bad_dims)?;
        let offset = end.checked_next_multiple_of(ALIGN).ok_or_else(bad_dims)?;
        let next = offset.checked_add(length).ok_or_else(bad_dims)?;
        t.external_data
            .retain(|kv| !matches!(kv.key(), "offset" | "length"));
        for (key, value) in [("offset", offset), ("length", length)] {
            t.external_data
                .push(super::onnx_proto::StringStringEntryProto {
                    key: Some(key.into()),
                    value: Some(value.to_string()),
                });
        }
        placed.insert(t.name().to_string(), (offset, length, elem));
        end = next;
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::onnx_build::{int_attr, value_info};
    use crate::model::onnx_proto::{
        AttributeProto, GraphProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    };
    use crate::model::weightmap::{Transform, WeightMap, WeightMapEntry};
    use std::path::Path;

    fn external(name: &str, dims: &[i64], elem: i32, offset: usize) -> TensorProto {
        let size = if elem == F16 { 2 } else { 4 };
        let length = dims.iter().product::<i64>() as usize * size;
        let kv = |k: &str, v: String| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        TensorProto {
            name: Some(name.into()),
            dims: dims.to_vec(),
            data_type: Some(elem),
            data_location: Some(DataLocation::External as i32),
            external_data: vec![
                kv("location", "weights.bin".into()),
                kv("offset", offset.to_string()),
                kv("length", length.to_string()),
            ],
            ..Default::default()
        }
    }

    fn entry(
        name: &str,
        shape: &[usize],
        dtype: &str,
        offset: usize,
        length: usize,
    ) -> WeightMapEntry {
        WeightMapEntry {
            name: name.into(),
            source: format!("src.{name}"),
            transform: Transform::Identity,
            parts: Vec::new(),
            heads: 0,
            dtype: dtype.into(),
            shape: shape.to_vec(),
            offset,
            length,
        }
    }

    /// x (f32) → Cast fp16 → MatMul w (fp16, external) → Add c (fp16 constant, as bits) →
    /// Mul g (f32 external, after a Cast of a ConstantOfShape) → Cast f32 → y.
    fn fp16_graph() -> (Graph, WeightMap) {
        let half_bits = |v: f32| half::f16::from_f32(v).to_bits() as i32;
        let constant = TensorProto {
            name: Some("c".into()),
            dims: vec![3],
            data_type: Some(F16),
            int32_data: vec![half_bits(0.5), half_bits(-1.0), half_bits(2.0)],
            ..Default::default()
        };
        let node = |op: &str, ins: &[&str], out: &str, attrs: Vec<AttributeProto>| NodeProto {
            op_type: Some(op.into()),
            name: Some(out.into()),
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: vec![out.into()],
            attribute: attrs,
            ..Default::default()
        };
        let raw_half = TensorProto {
            dims: vec![1],
            data_type: Some(F16),
            raw_data: Some(half::f16::from_f32(1.5).to_le_bytes().to_vec()),
            ..Default::default()
        };
        let fill = AttributeProto {
            name: Some("value".into()),
            r#type: Some(AttributeType::Tensor as i32),
            t: Some(raw_half),
            ..Default::default()
        };
        let graph = GraphProto {
            name: Some("g".into()),
            node: vec![
                node("Cast", &["x"], "xh", vec![int_attr("to", F16 as i64)]),
                node("MatMul", &["xh", "w"], "m", vec![]),
                node("Add", &["m", "c"], "a", vec![]),
                node("ConstantOfShape", &["shape"], "k", vec![fill]),
                node("Add", &["a", "k"], "b", vec![]),
                node("Cast", &["b"], "bf", vec![int_attr("to", F32 as i64)]),
                node("Mul", &["bf", "gain"], "y", vec![]),
            ],
            initializer: vec![
                external("w", &[2, 3], F16, 0),
                external("gain", &[3], F32, 12),
                constant,
                TensorProto {
                    name: Some("shape".into()),
                    dims: vec![1],
                    data_type: Some(7),
                    int64_data: vec![3],
                    ..Default::default()
                },
            ],
            input: vec![value_info("x", F32, &[Ok(1), Ok(2)])],
            output: vec![value_info("y", F32, &[Ok(1), Ok(3)])],
            value_info: vec![value_info("m", F16, &[Ok(1), Ok(3)])],
            ..Default::default()
        };
        let model = ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(graph),
            ..Default::default()
        };
        let graph = Graph::from_bytes(Path::new("t.onnx"), model.encode_to_vec()).unwrap();
        let weightmap = WeightMap {
            format: 1,
            external_file: "weights.bin".into(),
            initializers: vec![
                entry("w", &[2, 3], "float16", 0, 12),
                entry("gain", &[3], "float32", 12, 12),
            ],
        };
        (graph, weightmap)
    }

    #[test]
    fn every_fp16_type_value_and_cast_becomes_f32_and_the_layout_follows() {
        let (graph, weightmap) = fp16_graph();
        let wide = widen(&graph, &weightmap).unwrap();
        let model = ModelProto::decode(wide.0.bytes.as_slice()).unwrap();
        let g = model.graph.unwrap();
        // Types: no fp16 left anywhere.
        assert!(g.initializer.iter().all(|t| t.data_type != Some(F16)));
        let c = g.initializer.iter().find(|t| t.name() == "c").unwrap();
        let values: Vec<f32> = c
            .raw_data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(values, [0.5, -1.0, 2.0]);
        assert!(c.int32_data.is_empty());
        let casts: Vec<i64> = g
            .node
            .iter()
            .filter(|n| n.op_type() == "Cast")
            .map(|n| n.attribute[0].i())
            .collect();
        assert_eq!(casts, [F32 as i64, F32 as i64]);
        let fill = g.node[3].attribute[0].t.as_ref().unwrap();
        assert_eq!(
            (fill.data_type(), fill.raw_data()),
            (F32, &1.5f32.to_le_bytes()[..])
        );
        let m = match g.value_info[0]
            .r#type
            .as_ref()
            .unwrap()
            .value
            .as_ref()
            .unwrap()
        {
            type_proto::Value::TensorType(t) => t.elem_type(),
            _ => unreachable!(),
        };
        assert_eq!(m, F32);
        // Layout: w is 24 bytes now; gain moves to the next aligned offset.
        let place = |n: &str| {
            let e = wide.0.externals.iter().find(|e| e.name == n).unwrap();
            (e.offset, e.length, e.elem)
        };
        assert_eq!(place("w"), (0, 24, ElemType::F32));
        assert_eq!(place("gain"), (64, 12, ElemType::F32));
        let wm: Vec<(&str, usize, usize, &str)> = wide
            .1
            .initializers
            .iter()
            .map(|e| (e.name.as_str(), e.offset, e.length, e.dtype.as_str()))
            .collect();
        assert_eq!(wm, [("w", 0, 24, "float32"), ("gain", 64, 12, "float32")]);
        // Nothing else: the same nodes in the same order.
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type()).collect();
        assert_eq!(
            ops,
            [
                "Cast",
                "MatMul",
                "Add",
                "ConstantOfShape",
                "Add",
                "Cast",
                "Mul"
            ]
        );
    }

    /// The widened graph runs (ONNX Runtime's CPU provider) and computes in f32: y = (x·w + c + 1.5)·gain
    /// with w's full f32 values, which fp16 could not hold.
    #[test]
    fn the_widened_graph_runs_in_f32() {
        use crate::runtime::tensor_io::{run_read, Input};
        use crate::runtime::{build_session, Runtime, SessionOptions};
        let rt = Runtime::get(None, false).expect("ONNX Runtime (run scripts/setup)");
        let (graph, weightmap) = fp16_graph();
        let (wide, _) = widen(&graph, &weightmap).unwrap();
        // Values fp16 rounds: 1 + 2⁻¹², 3·10⁻⁸ (below fp16's smallest subnormal), 70000 (above its max).
        let w = [1.0 + 2f32.powi(-12), 3e-8, 70000.0, -0.25, 1e-3, 2.0];
        let gain = [1.0f32, 0.5, -2.0];
        let mut buf = vec![0u8; 76];
        for (i, v) in w.iter().enumerate() {
            buf[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        for (i, v) in gain.iter().enumerate() {
            buf[64 + i * 4..68 + i * 4].copy_from_slice(&v.to_le_bytes());
        }
        let opts = SessionOptions::default();
        let weights = std::sync::Arc::from(buf);
        let bytes = &wide.bytes;
        let mut s =
            build_session(rt, "wide", bytes, "weights.bin", weights, &opts, &[], &[]).unwrap();
        let x = [3.0f32, -1.0];
        let y = run_read(&mut s, vec![Input::F32("x", vec![1, 2], &x)], |out| {
            let (_, y) = out["y"].try_extract_tensor::<f32>()?;
            Ok(y.to_vec())
        })
        .unwrap();
        let c = [0.5f32, -1.0, 2.0];
        for j in 0..3 {
            let want = (x[0] * w[j] + x[1] * w[3 + j] + c[j] + 1.5) * gain[j];
            assert!(
                (y[j] - want).abs() <= want.abs() * 1e-6,
                "{j}: {} vs {want}",
                y[j]
            );
        }
    }

    #[test]
    fn a_weight_map_entry_without_its_initializer_is_refused() {
        let (graph, mut weightmap) = fp16_graph();
        weightmap
            .initializers
            .push(entry("ghost", &[1], "float16", 128, 2));
        let Err(err) = widen(&graph, &weightmap) else {
            panic!("a ghost entry was accepted")
        };
        let err = err.to_string();
        assert!(err.contains("ghost"), "{err}");
    }

    #[test]
    fn dimensions_that_overflow_or_are_negative_are_refused() {
        for dims in [vec![i64::MAX, 4], vec![-1, 3], vec![1 << 40, 1 << 30]] {
            let mut inits = vec![external("w", &[1], F16, 0)];
            inits[0].dims = dims.clone();
            inits[0].data_type = Some(F32);
            let err = relayout(&mut inits).expect_err("bad dims accepted");
            assert!(err.to_string().contains("bad dims"), "{dims:?}: {err}");
        }
    }

    #[test]
    fn junk_is_an_error_not_a_panic() {
        let (mut graph, weightmap) = fp16_graph();
        graph.bytes = vec![0xff; 7];
        assert!(matches!(
            widen(&graph, &weightmap),
            Err(Fp32GraphError::Decode(_))
        ));
    }
}
