//! The VAE decoder graph with diffusers' post-processing appended, so it runs where the decoder
//! runs: [`append`] adds nodes after the `sample` output that give [`RGB`], the picture as bytes
//! `[n, h, w, 3]` (`round(clamp(x / 2 + 0.5, 0, 1) · 255)`, ties away from zero, exactly what
//! `pipeline::vae::to_rgb` computes on the host), and [`CHECK`], an f32 scalar that is NaN when any
//! value of `sample` is NaN or infinite (the fp16 decoder's overflow test).
//!
//! On a GPU this copies a quarter of the bytes back (u8 instead of f32) and leaves the host no
//! per-pixel work: an SD1.5 picture's conversion took 1.3–1.7 ms on 2 CPU cores, SDXL's four times that.

use super::onnx_build::{int_attr, ints_attr, value_info};
use super::onnx_proto::{
    tensor_proto::DataType, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto,
};
use prost::Message;

/// The decoder output the tail reads.
pub const SAMPLE: &str = "sample";
/// The picture: u8 `[n, h, w, 3]`.
pub const RGB: &str = "rgb";
/// f32 scalar: the sum of `sample − sample`, 0 when every value is finite, NaN otherwise.
pub const CHECK: &str = "nonfinite_check";
/// GreaterOrEqual, the newest operator used, came with opset 12.
const MIN_OPSET: i64 = 12;
/// Prefix of every name the tail adds (no template uses it).
const P: &str = "stipple_rgb/";

/// Why a graph gets no tail; the decoder then runs as it is and the host converts its output.
#[derive(Debug, thiserror::Error)]
pub enum RgbTailError {
    #[error("the VAE decoder graph could not be read: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the VAE decoder graph {0}")]
    Unsuited(String),
}

/// The decoder graph `bytes` with [`RGB`] and [`CHECK`] as its outputs instead of [`SAMPLE`].
pub fn append(bytes: &[u8]) -> Result<Vec<u8>, RgbTailError> {
    let unsuited = |m: &str| RgbTailError::Unsuited(m.to_string());
    let mut model = ModelProto::decode(bytes)?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
        .map(|o| o.version())
        .unwrap_or(0);
    if opset < MIN_OPSET {
        return Err(RgbTailError::Unsuited(format!(
            "imports opset {opset}; the tail needs {MIN_OPSET}"
        )));
    }
    let g = model.graph.as_mut().ok_or_else(|| unsuited("is empty"))?;
    let at = g
        .output
        .iter()
        .position(|o| o.name() == SAMPLE)
        .ok_or_else(|| unsuited("has no `sample` output"))?;
    let out = g.output.remove(at);
    let elem = elem_type(&out).ok_or_else(|| unsuited("has a `sample` of no tensor type"))?;
    if elem != DataType::Float as i32 && elem != DataType::Float16 as i32 {
        return Err(RgbTailError::Unsuited(format!(
            "has a `sample` of element type {elem}, not f32 or f16"
        )));
    }
    let dims = out
        .r#type
        .as_ref()
        .and_then(|t| match &t.value {
            Some(super::onnx_proto::type_proto::Value::TensorType(t)) => t.shape.as_ref(),
            _ => None,
        })
        .map(|s| s.dim.len())
        .unwrap_or(4);
    if dims != 4 {
        return Err(RgbTailError::Unsuited(format!(
            "has a `sample` of {dims} dimensions, not 4"
        )));
    }
    tail(g, elem);
    Ok(model.encode_to_vec())
}

fn elem_type(v: &ValueInfoProto) -> Option<i32> {
    match v.r#type.as_ref()?.value.as_ref()? {
        super::onnx_proto::type_proto::Value::TensorType(t) => t.elem_type,
        _ => None,
    }
}

/// The nodes: each step is one f32 operation rounded as the host's, so the bytes are the same.
fn tail(g: &mut GraphProto, elem: i32) {
    let n = |s: &str| format!("{P}{s}");
    for (c, v) in [
        ("half", 0.5f32),
        ("zero", 0.0),
        ("one", 1.0),
        ("c255", 255.0),
    ] {
        g.initializer.push(TensorProto {
            name: Some(n(c)),
            data_type: Some(DataType::Float as i32),
            float_data: vec![v],
            ..Default::default()
        });
    }
    let mut node = |op: &str, ins: &[&str], out: &str, attrs| {
        g.node.push(NodeProto {
            op_type: Some(op.into()),
            name: Some(format!("{P}{out}")),
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: vec![out.to_string()],
            attribute: attrs,
            ..Default::default()
        });
    };
    let to = |t: DataType| vec![int_attr("to", t as i32 as i64)];
    let x = if elem == DataType::Float16 as i32 {
        node("Cast", &[SAMPLE], &n("x"), to(DataType::Float));
        n("x")
    } else {
        SAMPLE.to_string()
    };
    let (half, zero, one, c255) = (n("half"), n("zero"), n("one"), n("c255"));
    // x / 2 is x · 0.5 exactly (a power of two), so the host's division and this agree.
    node("Mul", &[&x, &half], &n("halved"), vec![]);
    node("Add", &[&n("halved"), &half], &n("shifted"), vec![]);
    node("Clip", &[&n("shifted"), &zero, &one], &n("clamped"), vec![]);
    node("Mul", &[&n("clamped"), &c255], &n("scaled"), vec![]);
    // Ties away from zero on values ≥ 0: floor, then one more where the fraction is ≥ 0.5 (the
    // fraction is exact; ONNX's Round would round ties to even).
    node("Floor", &[&n("scaled")], &n("floor"), vec![]);
    node("Sub", &[&n("scaled"), &n("floor")], &n("frac"), vec![]);
    node("GreaterOrEqual", &[&n("frac"), &half], &n("up"), vec![]);
    node("Cast", &[&n("up")], &n("up_f"), to(DataType::Float));
    node("Add", &[&n("floor"), &n("up_f")], &n("rounded"), vec![]);
    node("Cast", &[&n("rounded")], &n("bytes"), to(DataType::Uint8));
    node(
        "Transpose",
        &[&n("bytes")],
        RGB,
        vec![ints_attr("perm", &[0, 2, 3, 1])],
    );
    // x − x is 0 for every finite x and NaN for NaN and ±∞; the sum keeps a NaN.
    node("Sub", &[&x, &x], &n("zeros"), vec![]);
    node(
        "ReduceSum",
        &[&n("zeros")],
        CHECK,
        vec![int_attr("keepdims", 0)],
    );
    let free = |p: &str| Err(n(p));
    g.output.push(value_info(
        RGB,
        DataType::Uint8 as i32,
        &[free("n"), free("h"), free("w"), Ok(3)],
    ));
    g.output
        .push(value_info(CHECK, DataType::Float as i32, &[]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::onnx_proto::OperatorSetIdProto;

    /// A "decoder" that passes its input through: input `latent_sample` = output `sample`.
    fn passthrough(elem: i32, opset: i64) -> Vec<u8> {
        let free = |p: &str| Err(p.to_string());
        let dims = [free("n"), free("c"), free("h"), free("w")];
        ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(opset),
            }],
            graph: Some(GraphProto {
                name: Some("decoder".into()),
                node: vec![NodeProto {
                    op_type: Some("Identity".into()),
                    input: vec!["latent_sample".into()],
                    output: vec![SAMPLE.into()],
                    ..Default::default()
                }],
                input: vec![value_info("latent_sample", elem, &dims)],
                output: vec![value_info(SAMPLE, elem, &dims)],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn the_tail_replaces_sample_with_rgb_and_the_check() {
        let m = ModelProto::decode(&append(&passthrough(1, 17)).unwrap()[..]).unwrap();
        let g = m.graph.unwrap();
        let outs: Vec<&str> = g.output.iter().map(|o| o.name()).collect();
        assert_eq!(outs, [RGB, CHECK]);
        assert_eq!(elem_type(&g.output[0]), Some(DataType::Uint8 as i32));
        assert!(g.node.iter().any(|n| n.output == [RGB]));
        assert!(g.node.iter().any(|n| n.output == [CHECK]));
    }

    #[test]
    fn an_fp16_sample_is_cast_to_f32_first() {
        let m = ModelProto::decode(&append(&passthrough(10, 17)).unwrap()[..]).unwrap();
        let g = m.graph.unwrap();
        let first = &g.node[1];
        assert_eq!(first.op_type(), "Cast");
        assert_eq!(first.input, [SAMPLE]);
    }

    /// Runs the passthrough decoder with its tail on the CPU: the bytes and the check's value.
    fn run_tail(values: &[f32], h: usize, w: usize) -> (Vec<i64>, Vec<u8>, f32) {
        use crate::runtime::tensor_io::{run_read, Input};
        use crate::runtime::{build_session, Runtime, SessionOptions};
        let rt = Runtime::get(None, false).expect("ONNX Runtime (run scripts/setup)");
        let graph = append(&passthrough(1, 17)).unwrap();
        let opts = SessionOptions::default();
        let empty = std::sync::Arc::from(vec![0u8; 1]);
        let mut s = build_session(rt, "tail", &graph, "none.bin", empty, &opts, &[], &[]).unwrap();
        let input = vec![Input::F32("latent_sample", vec![1, 3, h, w], values)];
        run_read(&mut s, input, |out| {
            let (shape, bytes) = out[RGB].try_extract_tensor::<u8>()?;
            let (_, check) = out[CHECK].try_extract_tensor::<f32>()?;
            Ok((shape.to_vec(), bytes.to_vec(), check[0]))
        })
        .unwrap()
    }

    /// The graph's bytes are the host's (`to_rgb`) for every value class: each level's rounding
    /// boundary and its neighbours, out of range, ±0, subnormal, ±∞.
    #[test]
    fn the_tail_makes_the_bytes_the_host_makes() {
        let mut values = Vec::new();
        for k in 0..256 {
            // The decoder value whose byte is k + 0.5 before rounding, and one ulp either side.
            let v = 2.0 * ((k as f32 + 0.5) / 255.0 - 0.5);
            values.extend([v.next_down(), v, v.next_up()]);
        }
        values.extend([
            -1.0,
            1.0,
            -1.5,
            3.0,
            0.0,
            -0.0,
            1e-40,
            -1e-40,
            f32::INFINITY,
        ]);
        values.push(f32::NEG_INFINITY);
        let mut x = 0.1234f32;
        while values.len() % 24 != 0 || values.len() < 1200 {
            // A fixed spread of ordinary values in and just beyond [-1, 1].
            x = (x * 3.7 + 0.311).fract();
            values.push(x * 2.4 - 1.2);
        }
        let (h, w) = (8, values.len() / 24);
        let (shape, bytes, _) = run_tail(&values, h, w);
        assert_eq!(shape, [1, h as i64, w as i64, 3]);
        let want = crate::pipeline::vae::to_rgb(&values, w, h);
        assert_eq!(bytes, want.pixels);
    }

    #[test]
    fn the_check_is_nan_exactly_when_a_value_is_not_finite() {
        let mut values = vec![0.25f32; 3 * 4 * 4];
        assert_eq!(run_tail(&values, 4, 4).2, 0.0);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            values[17] = bad;
            assert!(run_tail(&values, 4, 4).2.is_nan(), "{bad}");
        }
    }

    #[test]
    fn unsuited_graphs_are_left_alone_with_the_reason() {
        let old = append(&passthrough(1, 11)).unwrap_err().to_string();
        assert!(old.contains("opset 11"), "{old}");
        let ints = append(&passthrough(7, 17)).unwrap_err().to_string();
        assert!(ints.contains("element type 7"), "{ints}");
        let junk = append(b"\xff\xff\xff").unwrap_err().to_string();
        assert!(junk.contains("could not be read"), "{junk}");
    }
}
