//! Textual-inversion vectors reach a text encoder through one more graph input: [`add_extra_rows`]
//! rewrites the token-embedding lookup so that ids at or past the vocabulary read rows of
//! `extra_token_rows` ([`EXTRA_INPUT`], `[n, width]`, fed per run) instead of the weight table.
//!
//! [`token_table`] gives the vocabulary size and width the rewrite used; the text side numbers an
//! embedding's vectors from there. Ids below the vocabulary read the table exactly as before.

use super::graph::{Graph, GraphError};
use super::onnx_proto::{
    attribute_proto, tensor_proto::DataType, tensor_shape_proto::dimension::Value as Dim,
    tensor_shape_proto::Dimension, type_proto, AttributeProto, ModelProto, NodeProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use prost::Message;

/// The graph input that holds the extra rows (at least one row: a run without embeddings feeds a
/// dummy row no id reads).
pub const EXTRA_INPUT: &str = "extra_token_rows";

/// How the token-embedding weight is named in stipple's text-encoder graphs (CLIP and OpenCLIP,
/// with or without a `text_model.` level).
const TABLE_SUFFIX: &str = "token_embedding.weight";

/// The token-embedding table of a text-encoder graph: (vocabulary rows, width).
pub fn token_table(graph: &Graph) -> Option<(usize, usize)> {
    graph
        .externals
        .iter()
        .find(|x| x.name.ends_with(TABLE_SUFFIX) && x.dims.len() == 2)
        .map(|x| (x.dims[0], x.dims[1]))
}

/// Whether `graph` takes the extra rows (it went through [`add_extra_rows`]).
pub fn takes_extra_rows(graph: &Graph) -> bool {
    graph.inputs.iter().any(|i| i == EXTRA_INPUT)
}

/// `graph` with its token-embedding `Gather` split in two: ids below the vocabulary `V` gather from
/// the weight table, ids `V + k` gather row `k` of [`EXTRA_INPUT`], and `Where` picks per id. No
/// table is copied per run (a `Concat` of the table and the rows would copy 150 MB for CLIP-L).
/// A graph without such a lookup, or one already rewritten, comes back unchanged.
pub fn add_extra_rows(graph: Graph) -> Result<Graph, GraphError> {
    if takes_extra_rows(&graph) {
        return Ok(graph);
    }
    let Some((vocab, width)) = token_table(&graph) else {
        return Ok(graph);
    };
    let bad = |source| GraphError::Decode {
        path: graph.path.clone(),
        source,
    };
    let mut model = ModelProto::decode(graph.bytes.as_slice()).map_err(bad)?;
    let Some(g) = model.graph.as_mut() else {
        return Ok(graph);
    };
    let Some(table) = g
        .initializer
        .iter()
        .find(|t| t.name().ends_with(TABLE_SUFFIX) && t.dims.len() == 2)
    else {
        return Ok(graph);
    };
    let (table_name, elem) = (table.name().to_string(), table.data_type());
    if elem != DataType::Float as i32 && elem != DataType::Float16 as i32 {
        return Ok(graph);
    }
    let at = g.node.iter().position(|n| {
        n.op_type() == "Gather"
            && n.input.first() == Some(&table_name)
            && n.input.len() == 2
            && n.output.len() == 1
            && n.attribute.iter().all(|a| a.name() != "axis" || a.i() == 0)
    });
    let Some(at) = at else {
        return Ok(graph);
    };
    // An fp16 graph (te_fp16.py) takes the rows in fp32 too, cast inside: the text side feeds
    // fp32 whatever graph runs.
    let half = elem == DataType::Float16 as i32;
    let extra_gathered = if half { "extra_rows32" } else { "extra_rows" };
    let ids = g.node[at].input[1].clone();
    let out = g.node[at].output[0].clone();
    let p = |s: &str| format!("stipple_extra/{s}");
    let (last, v, zero, axes) = (p("last_id"), p("vocab"), p("zero"), p("axes"));
    g.initializer.extend([
        int64_const(&last, &[], vocab as i64 - 1),
        int64_const(&v, &[], vocab as i64),
        int64_const(&zero, &[], 0),
        int64_const(&axes, &[1], -1),
    ]);
    let base_ids = p("base_ids");
    let base_out = p("base_rows");
    g.node[at].input[1] = base_ids.clone();
    g.node[at].output[0] = base_out.clone();
    let before = node("Min", &[&ids, &last], &p("base_ids"), &p("Min"));
    let mut after = vec![
        node("Sub", &[&ids, &v], &p("rel_ids"), &p("Sub")),
        node("Max", &[&p("rel_ids"), &zero], &p("extra_ids"), &p("Max")),
        node(
            "Gather",
            &[EXTRA_INPUT, &p("extra_ids")],
            &p(extra_gathered),
            &p("Gather"),
        ),
        node("GreaterOrEqual", &[&ids, &v], &p("is_extra"), &p("Ge")),
        node(
            "Unsqueeze",
            &[&p("is_extra"), &axes],
            &p("is_extra3"),
            &p("Unsq"),
        ),
        node(
            "Where",
            &[&p("is_extra3"), &p("extra_rows"), &base_out],
            &out,
            &p("Where"),
        ),
    ];
    if half {
        // The rows come in fp32 whatever the graph computes in; an fp16 graph casts them.
        let mut cast = node("Cast", &[&p("extra_rows32")], &p("extra_rows"), &p("Cast"));
        cast.attribute.push(AttributeProto {
            name: Some("to".into()),
            r#type: Some(attribute_proto::AttributeType::Int as i32),
            i: Some(i64::from(elem)),
            ..Default::default()
        });
        after.insert(3, cast);
    }
    g.node.splice(at + 1..at + 1, after);
    g.node.insert(at, before);
    g.input.push(ValueInfoProto {
        name: Some(EXTRA_INPUT.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(TensorShapeProto {
                    dim: vec![
                        Dimension {
                            value: Some(Dim::DimParam("extra_tokens".into())),
                            ..Default::default()
                        },
                        Dimension {
                            value: Some(Dim::DimValue(width as i64)),
                            ..Default::default()
                        },
                    ],
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    });
    Graph::from_bytes(&graph.path, model.encode_to_vec())
}

fn int64_const(name: &str, dims: &[i64], value: i64) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Int64 as i32),
        int64_data: vec![value],
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, name: &str) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: Some(name.to_string()),
        op_type: Some(op.to_string()),
        attribute: Vec::<AttributeProto>::new(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tiny_text_encoder() -> Graph {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        Graph::read(&root.join("tests/fixtures/tiny-sd15/text_encoder/model.onnx")).unwrap()
    }

    #[test]
    fn the_rewrite_adds_one_input_and_keeps_the_weights() {
        let g = tiny_text_encoder();
        let before = g.externals.clone();
        assert!(!takes_extra_rows(&g));
        let edited = add_extra_rows(g).unwrap();
        assert!(takes_extra_rows(&edited));
        assert_eq!(edited.externals, before);
        assert_eq!(token_table(&edited), Some((49408, 32)));
        // A second pass changes nothing.
        let again = add_extra_rows(edited).unwrap();
        assert_eq!(again.inputs.iter().filter(|i| *i == EXTRA_INPUT).count(), 1);
    }
}
