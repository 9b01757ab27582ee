//! The live graph: each targeted weight's consumer (MatMul behind its Transpose, Gemm, or Conv) gets
//! a low-rank branch `y += B·diag(s)·A·x` whose A, B and s are new graph inputs with a free rank
//! dimension. Done once per set of live layers; every other node and initializer is left as it was.

use super::LiveError;
use crate::model::onnx_proto::{AttributeProto, ModelProto, NodeProto};
use crate::patch::program::value_info as tensor_input;
use prost::Message;

/// One layer to give a branch: its initializer (ONNX name) and the torch shape of its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveLayer {
    pub init: String,
    pub out_dim: usize,
    pub in_dim: usize,
    /// Kernel height, width for a Conv; None for a Linear.
    pub kernel: Option<[usize; 2]>,
    /// ONNX element type of the weight (1 = f32, 10 = f16); the branch inputs use the same.
    pub elem: i32,
}

/// Input names of layer `k`'s branch.
pub fn input_names(k: usize) -> [String; 3] {
    [
        format!("live.{k}.a"),
        format!("live.{k}.b"),
        format!("live.{k}.s"),
    ]
}

/// The node a weight feeds, the branch's input `x` and the node's output `y`.
struct Site {
    node: usize,
    x: String,
    y: String,
    conv_attrs: Vec<AttributeProto>,
}

fn find_site(nodes: &[NodeProto], init: &str) -> Result<Site, LiveError> {
    let bad = |m: String| LiveError::Graph(format!("{init}: {m}"));
    let users: Vec<usize> = (0..nodes.len())
        .filter(|&i| nodes[i].input.iter().any(|x| x == init))
        .collect();
    let [user] = users[..] else {
        return Err(bad(format!("used by {} nodes, expected one", users.len())));
    };
    let n = &nodes[user];
    let site = |node: usize, attrs: Vec<AttributeProto>| -> Result<Site, LiveError> {
        let m = &nodes[node];
        match (m.input.first(), m.output.first()) {
            (Some(x), Some(y)) => Ok(Site {
                node,
                x: x.clone(),
                y: y.clone(),
                conv_attrs: attrs,
            }),
            _ => Err(bad("node without input or output".into())),
        }
    };
    match n.op_type() {
        "Transpose" => {
            let t_out = n.output.first().cloned().unwrap_or_default();
            let mm: Vec<usize> = (0..nodes.len())
                .filter(|&i| {
                    nodes[i].op_type() == "MatMul" && nodes[i].input.get(1) == Some(&t_out)
                })
                .collect();
            match mm[..] {
                [m] => site(m, Vec::new()),
                _ => Err(bad("Transpose does not feed exactly one MatMul".into())),
            }
        }
        "MatMul" if n.input.get(1).map(String::as_str) == Some(init) => site(user, Vec::new()),
        "Gemm" if n.input.get(1).map(String::as_str) == Some(init) => {
            if n.attribute
                .iter()
                .any(|a| a.name() == "transA" && a.i() != 0)
            {
                return Err(bad("Gemm with transA".into()));
            }
            site(user, Vec::new())
        }
        "Conv" if n.input.get(1).map(String::as_str) == Some(init) => {
            if n.attribute
                .iter()
                .any(|a| a.name() == "group" && a.i() != 1)
            {
                return Err(bad("grouped Conv".into()));
            }
            let attrs = n
                .attribute
                .iter()
                .filter(|a| a.name() != "group")
                .cloned()
                .collect();
            site(user, attrs)
        }
        op => Err(bad(format!(
            "consumed by {op}, which live mode does not handle"
        ))),
    }
}

fn node(op: &str, name: String, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: Some(name),
        op_type: Some(op.into()),
        ..Default::default()
    }
}

/// Rewrites the ONNX model `graph` so that each of `layers` (in this order: branch `k` is
/// `layers[k]`) has a branch. Returns the new model bytes.
pub fn rewrite(graph: &[u8], layers: &[LiveLayer]) -> Result<Vec<u8>, LiveError> {
    let mut model = ModelProto::decode(graph).map_err(|e| LiveError::Graph(e.to_string()))?;
    let g = model
        .graph
        .as_mut()
        .ok_or_else(|| LiveError::Graph("the model has no graph".into()))?;
    let mut branches: Vec<Vec<NodeProto>> = vec![Vec::new(); g.node.len()];
    for (k, l) in layers.iter().enumerate() {
        let site = find_site(&g.node, &l.init)?;
        let [a, b, s] = input_names(k);
        let r = Err(format!("live_rank_{k}"));
        let (o, i) = (l.out_dim as i64, l.in_dim as i64);
        let base = format!("{}/live_base", site.y);
        g.node[site.node].output[0] = base.clone();
        let t = |n: usize| format!("live.{k}.t{n}");
        let name = |n: &str| format!("live.{k}.{n}");
        let mut nodes = Vec::with_capacity(4);
        match l.kernel {
            None => {
                g.input.push(tensor_input(&a, l.elem, &[Ok(i), r.clone()]));
                g.input.push(tensor_input(&b, l.elem, &[r.clone(), Ok(o)]));
                g.input.push(tensor_input(&s, l.elem, &[r]));
                nodes.push(node("MatMul", name("down"), &[&site.x, &a], &t(1)));
            }
            Some([kh, kw]) => {
                let (kh, kw) = (kh as i64, kw as i64);
                g.input.push(tensor_input(
                    &a,
                    l.elem,
                    &[r.clone(), Ok(i), Ok(kh), Ok(kw)],
                ));
                g.input
                    .push(tensor_input(&b, l.elem, &[Ok(o), r.clone(), Ok(1), Ok(1)]));
                g.input
                    .push(tensor_input(&s, l.elem, &[Ok(1), r, Ok(1), Ok(1)]));
                // The down conv sees the input as the base conv does (same pads, strides, dilations).
                let mut down = node("Conv", name("down"), &[&site.x, &a], &t(1));
                down.attribute = site.conv_attrs.clone();
                nodes.push(down);
            }
        }
        nodes.push(node("Mul", name("scale"), &[&t(1), &s], &t(2)));
        let up_op = if l.kernel.is_some() { "Conv" } else { "MatMul" };
        nodes.push(node(up_op, name("up"), &[&t(2), &b], &t(3)));
        nodes.push(node("Add", name("add"), &[&base, &t(3)], &site.y));
        branches[site.node].extend(nodes);
    }
    // Each branch goes right after its node, which keeps the node list topologically sorted.
    let old = std::mem::take(&mut g.node);
    for (n, extra) in old.into_iter().zip(branches) {
        g.node.push(n);
        g.node.extend(extra);
    }
    Ok(model.encode_to_vec())
}
