//! Cuts a VAE decoder graph at its GroupNorms, for an exact tiled decode: [`cut`] returns the
//! [`Plan`], a list of segment graphs (each a small ONNX model on the same external weights) and
//! between two segments the GroupNorm the host applies to the whole tensor ([`Norm`]).
//!
//! GroupNorm is the one operator of the decoder (besides the mid-block attention) that mixes the
//! whole picture; everything between two of them is convolutions and element-wise operators, which
//! a tile with a halo of the segment's reach ([`Segment::halo`]) computes exactly. A torch export
//! writes each GroupNorm as Reshape → InstanceNormalization → Reshape → Mul(γ) → Add(β); those are
//! the nodes [`cut`] takes out. The segment holding the attention is split once more
//! ([`Attention`]) so the host can run its `softmax(q·k)·v` on chunks of query rows.

use super::onnx_proto::{
    tensor_proto::DataLocation, type_proto, GraphProto, ModelProto, NodeProto, TensorProto,
    TypeProto, ValueInfoProto,
};
use prost::Message;
use std::collections::{HashMap, HashSet};

#[derive(Debug, thiserror::Error)]
pub enum CutError {
    #[error("the VAE decoder graph is not a valid ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the VAE decoder graph has no graph")]
    NoGraph,
    #[error("the VAE decoder graph cannot be cut for tiling at {node:?}: {problem}")]
    Shape { node: String, problem: String },
}

/// A per-channel parameter of a GroupNorm (γ or β): where its f32 values are.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// `length` bytes at `offset` of the graph's external-data file.
    External { offset: usize, length: usize },
    /// Stored in the graph itself.
    Values(Vec<f32>),
}

/// One GroupNorm, applied by the host between segment `k` and segment `k + 1`: `y` is `x`
/// normalised over `groups` channel groups (biased variance plus `eps`), times γ plus β per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Norm {
    pub x: String,
    pub y: String,
    pub groups: usize,
    pub eps: f32,
    pub gamma: Param,
    pub beta: Param,
}

/// A piece of the decoder between GroupNorms, as an ONNX model of its own.
#[derive(Debug, Clone)]
pub struct Segment {
    /// The serialized model (same IR and opsets, initializers still in the external file).
    pub model: Vec<u8>,
    /// Its inputs (f32 tensors the host holds) and outputs (those a later step needs).
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// Whether it can run on tiles: convolutions with stride 1, nearest upsampling and element-wise
    /// operators only (no attention, no reshape); inputs and outputs are then `[1, C, H, W]`.
    pub tileable: bool,
    /// Pixels of its input resolution an output pixel depends on, each way (an upper bound: the
    /// reaches of its convolutions, each in pixels of the input resolution, summed).
    pub halo: usize,
    /// Its largest downsampling (2 after a stride-2 convolution): tiles start on multiples of it.
    pub down: usize,
    /// Node count (0: nothing to run, e.g. two GroupNorms in a row).
    pub nodes: usize,
    /// Whether it holds a softmax attention, and that attention split for query chunks.
    pub attention: AttentionPlan,
}

/// What [`cut`] made of a segment's softmax.
#[derive(Debug, Clone)]
pub enum AttentionPlan {
    /// The segment has no Softmax.
    None,
    /// One attention, split into three graphs.
    Split(Box<Attention>),
    /// A Softmax in a pattern the split does not know (why): the segment runs whole.
    Unrecognised(String),
}

/// A segment's attention `o = softmax(q·k)·v` (MatMul → Softmax over the last axis → MatMul) as
/// three graphs: `pre` computes q, k and v for the whole picture; `core` takes a chunk of q's rows
/// (axis -2, the query pixels) with the whole k and v and returns the same rows of o, so its score
/// matrix is the chunk's rows by all key pixels; `post` takes the whole o and finishes the segment.
/// Each row of o depends on its own row of q only, so the chunks give the whole o exactly.
#[derive(Debug, Clone)]
pub struct Attention {
    pub q: String,
    pub k: String,
    pub v: String,
    pub o: String,
    /// Reads the segment inputs `pre_inputs`, writes q, k, v (in that order).
    pub pre: Vec<u8>,
    pub pre_inputs: Vec<String>,
    /// Reads q (a chunk of rows), k, v; writes o (the same rows).
    pub core: Vec<u8>,
    /// Reads o and the segment inputs `post_inputs`, writes the segment's outputs. It recomputes
    /// whatever of `pre` it reads besides o (the export takes o's head count from k's shape, so
    /// the key projection: pixels × channels², small beside the attention's pixels² × channels).
    pub post: Vec<u8>,
    pub post_inputs: Vec<String>,
}

/// The decoder as segments and GroupNorms: step `k` runs `segments[k]`, then `norms[k]` when
/// there is one. `last_use[t]` is the last step that reads host tensor `t`.
#[derive(Debug, Clone)]
pub struct Plan {
    pub input: String,
    pub output: String,
    pub segments: Vec<Segment>,
    pub norms: Vec<Norm>,
    pub last_use: HashMap<String, usize>,
}

/// Operators a tile computes exactly given a halo (beside [`Conv`] and `Resize`, checked apart).
const POINTWISE: &[&str] = &[
    "Add", "Sub", "Mul", "Div", "Sigmoid", "Tanh", "Relu", "Identity", "Cast", "Erf", "Sqrt",
    "Pow", "Neg", "Exp", "Clip",
];

/// Cuts the decoder graph `bytes` (the plain fp32 export) at every GroupNorm.
pub fn cut(bytes: &[u8]) -> Result<Plan, CutError> {
    let model = ModelProto::decode(bytes)?;
    let graph = model.graph.as_ref().ok_or(CutError::NoGraph)?;
    let nodes = &graph.node;
    let inits: HashMap<&str, &TensorProto> =
        graph.initializer.iter().map(|t| (t.name(), t)).collect();
    let mut producer: HashMap<&str, usize> = HashMap::new();
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        for o in &n.output {
            producer.insert(o.as_str(), i);
        }
        for x in n.input.iter().filter(|x| !x.is_empty()) {
            consumers.entry(x.as_str()).or_default().push(i);
        }
    }
    let ctx = Ctx {
        nodes,
        inits: &inits,
        producer: &producer,
        consumers: &consumers,
    };
    let [input, output] = match (graph.input.as_slice(), graph.output.as_slice()) {
        ([i], [o]) => [i.name().to_string(), o.name().to_string()],
        _ => return Err(shape_err("graph", "not one input and one output")),
    };

    let mut block_of: Vec<Option<usize>> = vec![None; nodes.len()];
    let mut norms = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if n.op_type() == "InstanceNormalization" {
            let (norm, members) = ctx.group_norm(i)?;
            for m in members {
                block_of[m] = Some(norms.len());
            }
            norms.push(norm);
        }
    }
    let k_last = norms.len();

    // Shape arithmetic, constants and weight-only nodes are recomputed wherever they are needed
    // rather than passed between segments.
    let mut cheap = vec![false; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        cheap[i] = block_of[i].is_none()
            && (matches!(n.op_type(), "Shape" | "Constant")
                || n.input.iter().all(|x| {
                    x.is_empty()
                        || inits.contains_key(x.as_str())
                        || producer.get(x.as_str()).is_some_and(|&p| cheap[p])
                }));
    }
    // Each node runs in the last segment that can (before the GroupNorm that reads it): nothing is
    // computed before it is needed, so fewer tensors wait on the host.
    const DEAD: usize = usize::MAX;
    let mut seg = vec![DEAD; nodes.len()];
    for i in (0..nodes.len()).rev() {
        if block_of[i].is_some() {
            continue;
        }
        let mut s = DEAD;
        for o in &nodes[i].output {
            if *o == output {
                s = s.min(k_last);
            }
            for &c in consumers.get(o.as_str()).map(Vec::as_slice).unwrap_or(&[]) {
                s = s.min(block_of[c].unwrap_or(seg[c]));
            }
        }
        seg[i] = s;
    }
    // ... but not before a GroupNorm it reads from.
    let mut early = vec![0usize; nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        if block_of[i].is_some() {
            continue;
        }
        for x in n.input.iter().filter(|x| !x.is_empty()) {
            if let Some(&p) = producer.get(x.as_str()) {
                early[i] = early[i].max(match block_of[p] {
                    Some(j) => j + 1,
                    None => early[p],
                });
            }
        }
        if !cheap[i] && seg[i] != DEAD && seg[i] < early[i] {
            return Err(shape_err(
                n.name(),
                "it reads a GroupNorm's output but feeds that GroupNorm's input",
            ));
        }
    }
    for norm in &norms {
        if let Some(&p) = producer.get(norm.x.as_str()) {
            if cheap[p] {
                return Err(shape_err(&norm.x, "a GroupNorm of a constant"));
            }
        }
    }

    let mut members: Vec<Vec<usize>> = vec![Vec::new(); k_last + 1];
    for i in 0..nodes.len() {
        if block_of[i].is_none() && !cheap[i] && seg[i] != DEAD {
            members[seg[i]].push(i);
        }
    }
    let mut segments = Vec::with_capacity(k_last + 1);
    let mut needed: HashSet<String> = norms.iter().map(|n| n.x.clone()).collect();
    needed.insert(output.clone());
    let mut parts = Vec::new();
    for heavy in &members {
        let part = ctx.segment_nodes(heavy, &cheap);
        let produced: HashSet<&str> = part
            .iter()
            .flat_map(|&i| nodes[i].output.iter().map(String::as_str))
            .collect();
        let mut ins: Vec<String> = Vec::new();
        for &i in &part {
            for x in nodes[i].input.iter().filter(|x| !x.is_empty()) {
                if !produced.contains(x.as_str())
                    && !inits.contains_key(x.as_str())
                    && !ins.contains(x)
                {
                    ins.push(x.clone());
                }
            }
        }
        needed.extend(ins.iter().cloned());
        parts.push((part, ins));
    }
    let mut last_use: HashMap<String, usize> = HashMap::new();
    for (k, (part, ins)) in parts.into_iter().enumerate() {
        for x in &ins {
            last_use.insert(x.clone(), k);
        }
        if let Some(n) = norms.get(k) {
            last_use.insert(n.x.clone(), k);
        }
        let outs: Vec<String> = part
            .iter()
            .filter(|&&i| !cheap[i])
            .flat_map(|&i| nodes[i].output.iter())
            .filter(|o| needed.contains(o.as_str()))
            .cloned()
            .collect();
        segments.push(ctx.segment(&model, graph, &part, &cheap, ins, outs)?);
    }
    Ok(Plan {
        input,
        output,
        segments,
        norms,
        last_use,
    })
}

fn shape_err(node: &str, problem: &str) -> CutError {
    CutError::Shape {
        node: node.to_string(),
        problem: problem.to_string(),
    }
}

struct Ctx<'a> {
    nodes: &'a [NodeProto],
    inits: &'a HashMap<&'a str, &'a TensorProto>,
    producer: &'a HashMap<&'a str, usize>,
    consumers: &'a HashMap<&'a str, Vec<usize>>,
}

impl Ctx<'_> {
    /// The node producing `x`, if it is a `op` node.
    fn made_by(&self, x: &str, op: &str) -> Option<usize> {
        self.producer
            .get(x)
            .copied()
            .filter(|&p| self.nodes[p].op_type() == op)
    }

    /// The one node reading `x`, if there is exactly one and it is a `op` node.
    fn only_reader(&self, x: &str, op: &str) -> Option<usize> {
        match self.consumers.get(x).map(Vec::as_slice) {
            Some(&[c]) if self.nodes[c].op_type() == op => Some(c),
            _ => None,
        }
    }

    /// The value of a Constant node's output `x`, as integers or floats.
    fn constant(&self, x: &str) -> Option<&TensorProto> {
        let p = self.made_by(x, "Constant")?;
        self.nodes[p]
            .attribute
            .iter()
            .find(|a| a.name() == "value")
            .and_then(|a| a.t.as_ref())
    }

    /// The GroupNorm around InstanceNormalization node `i`, and the nodes it is made of.
    fn group_norm(&self, i: usize) -> Result<(Norm, Vec<usize>), CutError> {
        let n = &self.nodes[i];
        let err = |problem: &str| shape_err(n.name(), problem);
        let first = n
            .input
            .first()
            .and_then(|x| self.made_by(x, "Reshape"))
            .ok_or_else(|| err("its input is not a Reshape"))?;
        let x = self.nodes[first].input.first().cloned().unwrap_or_default();
        let dims = self.nodes[first]
            .input
            .get(1)
            .and_then(|s| self.constant(s))
            .map(ints)
            .ok_or_else(|| err("the Reshape before it has no constant shape"))?;
        let groups = match dims.as_slice() {
            [0 | 1, g, -1] if *g > 0 => *g as usize,
            _ => return Err(err("the Reshape before it is not [batch, groups, -1]")),
        };
        let unit = |k: usize, want: f32| {
            n.input
                .get(k)
                .and_then(|s| self.constant(s))
                .map(floats)
                .is_some_and(|v| v.len() == groups && v.iter().all(|&f| f == want))
        };
        if !unit(1, 1.0) || !unit(2, 0.0) {
            return Err(err("its scale and bias are not ones and zeros"));
        }
        let eps = n
            .attribute
            .iter()
            .find(|a| a.name() == "epsilon")
            .and_then(|a| a.f)
            .unwrap_or(1e-5);
        let out = n.output.first().map(String::as_str).unwrap_or_default();
        let back = self
            .only_reader(out, "Reshape")
            .ok_or_else(|| err("its output is not reshaped back"))?;
        let shape = self.nodes[back]
            .input
            .get(1)
            .and_then(|s| self.made_by(s, "Shape"))
            .filter(|&s| self.nodes[s].input.first() == Some(&x))
            .ok_or_else(|| err("it is not reshaped back to its input's shape"))?;
        let (mul, unsq_g, gamma) = self.affine(&self.nodes[back].output[0], "Mul", &err)?;
        let (add, unsq_b, beta) = self.affine(&self.nodes[mul].output[0], "Add", &err)?;
        let y = self.nodes[add].output.first().cloned().unwrap_or_default();
        let members = vec![first, i, shape, back, mul, unsq_g, add, unsq_b];
        // Nothing outside may read what the GroupNorm computes inside.
        for &m in &members {
            for o in &self.nodes[m].output {
                let outside = self
                    .consumers
                    .get(o.as_str())
                    .into_iter()
                    .flatten()
                    .any(|c| !members.contains(c));
                if outside && *o != y {
                    return Err(err("an inner tensor of the GroupNorm is read elsewhere"));
                }
            }
        }
        Ok((
            Norm {
                x,
                y,
                groups,
                eps,
                gamma,
                beta,
            },
            members,
        ))
    }

    /// The `op` node (Mul by γ, Add of β) reading `t` with an unsqueezed initializer.
    fn affine(
        &self,
        t: &str,
        op: &str,
        err: &dyn Fn(&str) -> CutError,
    ) -> Result<(usize, usize, Param), CutError> {
        let node = self
            .only_reader(t, op)
            .ok_or_else(|| err("no per-channel affine after it"))?;
        let other = self.nodes[node]
            .input
            .iter()
            .find(|x| x.as_str() != t)
            .ok_or_else(|| err("no per-channel affine after it"))?;
        let unsq = self
            .made_by(other, "Unsqueeze")
            .filter(|_| self.only_reader(other, op) == Some(node))
            .ok_or_else(|| err("its affine parameter is not an unsqueezed weight"))?;
        let name = self.nodes[unsq].input.first().cloned().unwrap_or_default();
        let init = self
            .inits
            .get(name.as_str())
            .ok_or_else(|| err("its affine parameter is not an initializer"))?;
        Ok((node, unsq, param(init).map_err(|p| err(&p))?))
    }

    /// Segment node indices: `heavy` plus the cheap nodes they read, transitively, in graph order.
    fn segment_nodes(&self, heavy: &[usize], cheap: &[bool]) -> Vec<usize> {
        let mut have: HashSet<usize> = heavy.iter().copied().collect();
        let mut todo: Vec<usize> = heavy.to_vec();
        while let Some(i) = todo.pop() {
            for x in &self.nodes[i].input {
                if let Some(&p) = self.producer.get(x.as_str()) {
                    if cheap[p] && have.insert(p) {
                        todo.push(p);
                    }
                }
            }
        }
        let mut all: Vec<usize> = have.into_iter().collect();
        all.sort_unstable();
        all
    }

    /// The segment model of `part`'s nodes, reading `ins` and writing `outs`.
    fn segment(
        &self,
        model: &ModelProto,
        graph: &GraphProto,
        part: &[usize],
        cheap: &[bool],
        ins: Vec<String>,
        outs: Vec<String>,
    ) -> Result<Segment, CutError> {
        let mut tileable = true;
        // How many input pixels one pixel of each tensor spans (2 after a stride-2 convolution,
        // 1/2 after an upsampling); tensors not listed are at the input resolution.
        let mut span: HashMap<&str, f64> = HashMap::new();
        let mut reach = 0f64;
        let mut down = 1f64;
        for &i in part {
            let n = &self.nodes[i];
            if cheap[i] {
                continue;
            }
            let f = n
                .input
                .iter()
                .filter_map(|x| match span.get(x.as_str()) {
                    Some(&f) => Some(f),
                    None => ins.contains(x).then_some(1.0),
                })
                .fold(0f64, f64::max)
                .max(f64::MIN_POSITIVE);
            let mut out = f;
            match n.op_type() {
                "Conv" => match self.conv_reach(n) {
                    Some((r, stride)) => {
                        reach += r as f64 * f;
                        out = f * stride as f64;
                    }
                    None => tileable = false,
                },
                "Resize" => {
                    let nearest = n
                        .attribute
                        .iter()
                        .find(|a| a.name() == "mode")
                        .and_then(|a| a.s.as_deref())
                        .is_none_or(|m| m == b"nearest");
                    if !nearest {
                        reach += f;
                    }
                    // An upsampling (by 2 in the VAE; a larger one only makes this bound looser).
                    out = f / 2.0;
                }
                // diffusers' Downsample2D pads one pixel right and below; counted twice as wide.
                "Pad" => reach += 2.0 * f,
                op if POINTWISE.contains(&op) => {}
                _ => tileable = false,
            }
            for o in &n.output {
                span.insert(o.as_str(), out);
            }
            down = down.max(out);
        }
        let halo = reach.ceil() as usize;
        let down = down.round().max(1.0) as usize;
        let attention = if part.iter().any(|&i| self.nodes[i].op_type() == "Softmax") {
            match self.attention(model, graph, part, &ins, &outs) {
                Ok(a) => AttentionPlan::Split(Box::new(a)),
                Err(why) => AttentionPlan::Unrecognised(why),
            }
        } else {
            AttentionPlan::None
        };
        Ok(Segment {
            model: self.model(model, graph, part, &ins, &outs),
            inputs: ins,
            outputs: outs,
            tileable,
            halo,
            down,
            nodes: part.len(),
            attention,
        })
    }

    /// An ONNX model of `nodes` (indices, in graph order) reading `ins` and writing `outs`, with
    /// the initializers they use (still in the external file).
    fn model(
        &self,
        model: &ModelProto,
        graph: &GraphProto,
        nodes: &[usize],
        ins: &[String],
        outs: &[String],
    ) -> Vec<u8> {
        let used: HashSet<&str> = nodes
            .iter()
            .flat_map(|&i| self.nodes[i].input.iter().map(String::as_str))
            .collect();
        let value = |name: &String| ValueInfoProto {
            name: Some(name.clone()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(1),
                    shape: None,
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let g = GraphProto {
            node: nodes.iter().map(|&i| self.nodes[i].clone()).collect(),
            name: graph.name.clone(),
            initializer: graph
                .initializer
                .iter()
                .filter(|t| used.contains(t.name()))
                .cloned()
                .collect(),
            input: ins.iter().map(value).collect(),
            output: outs.iter().map(value).collect(),
            ..Default::default()
        };
        let m = ModelProto {
            ir_version: model.ir_version,
            opset_import: model.opset_import.clone(),
            producer_name: Some("stipple vae_cut".into()),
            graph: Some(g),
            ..Default::default()
        };
        m.encode_to_vec()
    }

    /// Splits the segment of `part`'s nodes (inputs `ins`, outputs `outs`) around its one
    /// attention; the error says what in the graph is not the pattern [`Attention`] describes.
    fn attention(
        &self,
        model: &ModelProto,
        graph: &GraphProto,
        part: &[usize],
        ins: &[String],
        outs: &[String],
    ) -> Result<Attention, String> {
        let within: HashSet<usize> = part.iter().copied().collect();
        let softmaxes: Vec<usize> = part
            .iter()
            .copied()
            .filter(|&i| self.nodes[i].op_type() == "Softmax")
            .collect();
        let s = match softmaxes.as_slice() {
            [s] => *s,
            _ => return Err(format!("{} Softmax nodes in one segment", softmaxes.len())),
        };
        let sm = &self.nodes[s];
        let axis = sm
            .attribute
            .iter()
            .find(|a| a.name() == "axis")
            .and_then(|a| a.i);
        let opset = model
            .opset_import
            .iter()
            .find(|o| o.domain().is_empty())
            .and_then(|o| o.version)
            .unwrap_or(0);
        // Before opset 13 a Softmax without an axis flattens from axis 1; only the last axis
        // makes each query row's scores its own.
        if !(axis == Some(-1) || (axis.is_none() && opset >= 13)) {
            return Err(format!("Softmax {:?} is not over the last axis", sm.name()));
        }
        let scores = sm.input.first().map(String::as_str).unwrap_or_default();
        let probs = sm.output.first().map(String::as_str).unwrap_or_default();
        let m1 = self
            .made_by(scores, "MatMul")
            .filter(|m| within.contains(m))
            .ok_or("the Softmax does not read a MatMul")?;
        if self.only_reader(scores, "Softmax") != Some(s) {
            return Err("the scores are read by more than the Softmax".into());
        }
        let m2 = self
            .only_reader(probs, "MatMul")
            .filter(|m| within.contains(m))
            .ok_or("the Softmax is not read by one MatMul alone")?;
        let (n1, n2) = (&self.nodes[m1], &self.nodes[m2]);
        if n2.input.first().map(String::as_str) != Some(probs) {
            return Err("the probabilities are the second factor of their MatMul".into());
        }
        let (q, k, v, o) = match (
            n1.input.as_slice(),
            n2.input.as_slice(),
            n2.output.as_slice(),
        ) {
            ([q, k], [_, v], [o]) => (q.clone(), k.clone(), v.clone(), o.clone()),
            _ => {
                return Err("the attention's MatMuls do not have two inputs and one output".into())
            }
        };
        if q == k || q == v || k == v {
            return Err("q, k and v are not three tensors".into());
        }
        for t in [&q, &k, &v] {
            if !self
                .producer
                .get(t.as_str())
                .is_some_and(|p| within.contains(p))
            {
                return Err(format!("{t:?} is not computed in the segment"));
            }
        }
        if outs
            .iter()
            .any(|x| [scores, probs, o.as_str()].contains(&x.as_str()))
        {
            return Err("the attention's scores or output leave the segment".into());
        }
        let core_nodes = [m1, s, m2];
        let pre = self.closure(&within, &[&q, &k, &v], "");
        let post = self.closure(
            &within,
            &outs.iter().map(String::as_str).collect::<Vec<_>>(),
            &o,
        );
        if core_nodes
            .iter()
            .any(|c| pre.contains(c) || post.contains(c))
        {
            return Err("the graph around the attention reads its scores".into());
        }
        let pre_inputs = self.inputs_of(&pre, ins, "")?;
        let mut post_inputs = self.inputs_of(&post, ins, &o)?;
        post_inputs.retain(|x| *x != o);
        let mut post_all = vec![o.clone()];
        post_all.extend(post_inputs.iter().cloned());
        let qkv = [q.clone(), k.clone(), v.clone()];
        Ok(Attention {
            pre: self.model(model, graph, &pre, &pre_inputs, &qkv),
            pre_inputs,
            core: self.model(model, graph, &core_nodes, &qkv, std::slice::from_ref(&o)),
            post: self.model(model, graph, &post, &post_all, outs),
            post_inputs,
            q,
            k,
            v,
            o,
        })
    }

    /// The nodes of `within` that `from` depend on (not through `stop`), in graph order.
    fn closure(&self, within: &HashSet<usize>, from: &[&str], stop: &str) -> Vec<usize> {
        let mut have: HashSet<usize> = HashSet::new();
        let mut todo: Vec<&str> = from.to_vec();
        while let Some(t) = todo.pop() {
            if t == stop {
                continue;
            }
            if let Some(&p) = self.producer.get(t) {
                if within.contains(&p) && have.insert(p) {
                    todo.extend(
                        self.nodes[p]
                            .input
                            .iter()
                            .filter(|x| !x.is_empty())
                            .map(String::as_str),
                    );
                }
            }
        }
        let mut all: Vec<usize> = have.into_iter().collect();
        all.sort_unstable();
        all
    }

    /// What `nodes` read from outside themselves besides initializers: segment inputs `ins` (in
    /// their order) and `extra`; anything else is an error.
    fn inputs_of(
        &self,
        nodes: &[usize],
        ins: &[String],
        extra: &str,
    ) -> Result<Vec<String>, String> {
        let produced: HashSet<&str> = nodes
            .iter()
            .flat_map(|&i| self.nodes[i].output.iter().map(String::as_str))
            .collect();
        let mut read: HashSet<&str> = HashSet::new();
        for &i in nodes {
            for x in self.nodes[i].input.iter().filter(|x| !x.is_empty()) {
                if produced.contains(x.as_str()) || self.inits.contains_key(x.as_str()) {
                    continue;
                }
                if *x != extra && !ins.contains(x) {
                    return Err(format!("{x:?} is neither a segment input nor computed"));
                }
                read.insert(x.as_str());
            }
        }
        let mut out: Vec<String> = ins
            .iter()
            .filter(|x| read.contains(x.as_str()))
            .cloned()
            .collect();
        if read.contains(extra) {
            out.push(extra.to_string());
        }
        Ok(out)
    }

    /// How far a convolution reaches (half its kernel when padded to keep the size, else all of
    /// it) and its stride (None: strides that differ by axis).
    fn conv_reach(&self, n: &NodeProto) -> Option<(usize, usize)> {
        let ints_of = |name: &str| {
            n.attribute
                .iter()
                .find(|a| a.name() == name)
                .map(|a| a.ints.clone())
        };
        let kernel = match ints_of("kernel_shape") {
            Some(k) => k,
            None => {
                let w = self.inits.get(n.input.get(1)?.as_str())?;
                w.dims.get(2..)?.to_vec()
            }
        };
        let strides = ints_of("strides").unwrap_or_else(|| vec![1; kernel.len()]);
        let stride = *strides.first().unwrap_or(&1);
        if strides.iter().any(|&s| s != stride) || stride < 1 {
            return None;
        }
        let dil = ints_of("dilations").unwrap_or_else(|| vec![1; kernel.len()]);
        let pads = ints_of("pads").unwrap_or_else(|| vec![0; 2 * kernel.len()]);
        let mut reach = 0i64;
        for (a, (&k, &d)) in kernel.iter().zip(&dil).enumerate() {
            let half = d * (k - 1) / 2;
            let same = (k - 1) % 2 == 0
                && pads.get(a) == Some(&half)
                && pads.get(a + kernel.len()) == Some(&half);
            reach = reach.max(if same { half } else { d * (k - 1) });
        }
        Some((usize::try_from(reach).ok()?, usize::try_from(stride).ok()?))
    }
}

/// An integer tensor's values (int64, raw or not).
fn ints(t: &TensorProto) -> Vec<i64> {
    if !t.int64_data.is_empty() {
        return t.int64_data.clone();
    }
    t.raw_data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        .collect()
}

/// A float tensor's values (f32, raw or not).
fn floats(t: &TensorProto) -> Vec<f32> {
    if !t.float_data.is_empty() {
        return t.float_data.clone();
    }
    t.raw_data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
        .collect()
}

/// Where an f32 initializer's values are.
fn param(t: &TensorProto) -> Result<Param, String> {
    if t.data_type() != 1 {
        return Err(format!("{} is not float32", t.name()));
    }
    if t.data_location() != DataLocation::External {
        return Ok(Param::Values(floats(t)));
    }
    let field = |key: &str| {
        t.external_data
            .iter()
            .find(|kv| kv.key() == key)
            .and_then(|kv| kv.value().parse::<usize>().ok())
    };
    let numel: usize = t.dims.iter().map(|&d| d.max(0) as usize).product();
    Ok(Param::External {
        offset: field("offset").unwrap_or(0),
        length: field("length").unwrap_or(4 * numel),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_plan() -> Plan {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tiny-sd15/vae_decoder/model.onnx"
        );
        cut(&std::fs::read(path).unwrap()).unwrap()
    }

    /// The tiny decoder (diffusers AutoencoderKL, block_out_channels [32, 64], one layer per block,
    /// mid-block attention) has 14 GroupNorms of 32 groups: 2 per resnet (mid 2, up blocks 2 × 2
    /// resnets), the attention's and conv_norm_out.
    #[test]
    fn tiny_decoder_cuts_at_its_group_norms() {
        let plan = tiny_plan();
        assert_eq!(plan.norms.len(), 14);
        assert_eq!(plan.segments.len(), 15);
        assert!(plan.norms.iter().all(|n| n.groups == 32));
        assert!(plan.norms.iter().all(|n| (n.eps - 1e-6).abs() < 1e-9));
        assert_eq!(
            (plan.input.as_str(), plan.output.as_str()),
            ("latent_sample", "sample")
        );
        // Only the segment after the attention's GroupNorm (q, k, v, softmax) and the one that
        // flattens the picture for it cannot run on tiles.
        let whole: Vec<usize> = (0..15).filter(|&k| !plan.segments[k].tileable).collect();
        assert_eq!(whole.len(), 2, "{whole:?}");
        // post_quant_conv (1×1) and conv_in (3×3): one pixel.
        assert_eq!(plan.segments[0].halo, 1);
        assert_eq!(plan.segments[0].inputs, vec!["latent_sample".to_string()]);
        // The last: conv_out (3×3) after the last GroupNorm.
        assert_eq!(plan.segments[14].halo, 1);
        assert_eq!(plan.segments[14].outputs, vec!["sample".to_string()]);
        assert_eq!(plan.last_use["latent_sample"], 0);
    }

    /// The tiny encoder: 10 GroupNorms (down blocks 2 × 2, mid 2 + attention, conv_norm_out);
    /// its first segment is conv_in (3×3) alone, and the one with the downsampler (pad, 3×3
    /// stride-2 convolution) halves the resolution.
    #[test]
    fn tiny_encoder_cuts_too() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tiny-sd15/vae_encoder/model.onnx"
        );
        let plan = cut(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!(plan.norms.len(), 10);
        assert_eq!(plan.segments[0].halo, 1);
        assert_eq!(plan.segments[0].down, 1);
        assert_eq!(plan.segments.iter().filter(|s| s.down == 2).count(), 1);
        assert_eq!(plan.segments.iter().filter(|s| !s.tileable).count(), 2);
    }

    #[test]
    fn not_a_model_is_an_error() {
        assert!(cut(b"not onnx at all").is_err());
    }

    fn ops(model: &[u8]) -> Vec<String> {
        let m = ModelProto::decode(model).unwrap();
        m.graph
            .unwrap()
            .node
            .iter()
            .map(|n| n.op_type().to_string())
            .collect()
    }

    fn count(ops: &[String], op: &str) -> usize {
        ops.iter().filter(|o| *o == op).count()
    }

    /// The tiny SD1.5 and SDXL decoders and encoders (diffusers exports, as the full-size ones):
    /// one segment's attention is split, into q/k/v projections, MatMul → Softmax → MatMul, and
    /// the output projection (with the key projection recomputed for the head count).
    #[test]
    fn the_tiny_vaes_attention_is_split() {
        for model in ["tiny-sd15", "tiny-sdxl"] {
            for part in ["vae_decoder", "vae_encoder"] {
                let path = format!(
                    "{}/tests/fixtures/{model}/{part}/model.onnx",
                    env!("CARGO_MANIFEST_DIR")
                );
                let plan = cut(&std::fs::read(&path).unwrap()).unwrap();
                let split: Vec<(&Segment, &Attention)> = plan
                    .segments
                    .iter()
                    .filter_map(|s| match &s.attention {
                        AttentionPlan::Split(a) => Some((s, a.as_ref())),
                        _ => None,
                    })
                    .collect();
                assert_eq!(split.len(), 1, "{path}");
                assert!(plan
                    .segments
                    .iter()
                    .all(|s| !matches!(s.attention, AttentionPlan::Unrecognised(_))));
                let (seg, a) = split[0];
                assert!(!seg.tileable);
                assert_eq!(ops(&a.core), ["MatMul", "Softmax", "MatMul"]);
                let (pre, post) = (ops(&a.pre), ops(&a.post));
                assert_eq!((count(&pre, "MatMul"), count(&pre, "Softmax")), (3, 0));
                assert_eq!((count(&post, "MatMul"), count(&post, "Softmax")), (2, 0));
                assert!(a.pre_inputs.iter().all(|x| seg.inputs.contains(x)));
                assert!(a.post_inputs.iter().all(|x| seg.inputs.contains(x)));
                let g = ModelProto::decode(a.post.as_slice())
                    .unwrap()
                    .graph
                    .unwrap();
                assert_eq!(g.input[0].name(), a.o);
                let outs: Vec<&str> = g.output.iter().map(|o| o.name()).collect();
                assert_eq!(outs, seg.outputs);
            }
        }
    }

    /// A Softmax over another axis, or probabilities read beside the second MatMul, are not
    /// split (each query row would not be its own): named, and the segment runs whole.
    #[test]
    fn other_softmax_patterns_are_not_split() {
        let w = synthetic::Weights::new(4);
        let plain = cut(&synthetic::graph(&w, Some(-1), false)).unwrap();
        assert!(matches!(
            plain.segments[0].attention,
            AttentionPlan::Split(_)
        ));
        let no_axis = cut(&synthetic::graph(&w, None, false)).unwrap();
        assert!(matches!(
            no_axis.segments[0].attention,
            AttentionPlan::Split(_)
        ));
        for (axis, twice, why) in [
            (Some(1), false, "last axis"),
            (Some(-1), true, "one MatMul alone"),
        ] {
            let plan = cut(&synthetic::graph(&w, axis, twice)).unwrap();
            match &plan.segments[0].attention {
                AttentionPlan::Unrecognised(problem) => {
                    assert!(problem.contains(why), "{problem}")
                }
                other => panic!("{axis:?} {twice}: {other:?}"),
            }
        }
    }
}

/// A small attention graph for tests of the split: `x` `[1, N, C]` → q = x·Wq, kᵀ = (x·Wk)ᵀ,
/// v = x·Wv, `y` = softmax(q·kᵀ)·v·Wo + x, and [`synthetic::reference`] computing it in f64.
#[cfg(test)]
pub(crate) mod synthetic {
    use super::super::onnx_proto::{
        attribute_proto::AttributeType, type_proto, AttributeProto, GraphProto, ModelProto,
        NodeProto, OperatorSetIdProto, TensorProto, TypeProto, ValueInfoProto,
    };
    use prost::Message;

    /// Four C × C matrices (row-major, applied as x·W), deterministic.
    pub struct Weights {
        pub c: usize,
        pub w: [Vec<f32>; 4],
    }

    impl Weights {
        pub fn new(c: usize) -> Weights {
            let mut s = 0x2545f4914f6cdd1du64;
            let mut next = || {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 1.5
            };
            let w = std::array::from_fn(|_| (0..c * c).map(|_| next()).collect());
            Weights { c, w }
        }
    }

    fn node(op: &str, ins: &[&str], out: &str, attrs: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: vec![out.to_string()],
            name: Some(format!("{op}_{out}")),
            op_type: Some(op.to_string()),
            attribute: attrs,
            ..Default::default()
        }
    }

    fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: Some(name.into()),
            r#type: Some(AttributeType::Ints as i32),
            ints: v.to_vec(),
            ..Default::default()
        }
    }

    fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto {
            name: Some(name.into()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(v),
            ..Default::default()
        }
    }

    fn value(name: &str) -> ValueInfoProto {
        ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(1),
                    shape: None,
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The graph, its Softmax over `axis` (None: the attribute left out, opset 17's last axis);
    /// `twice`: the probabilities' mean over the keys (1/N) added to y too.
    pub fn graph(w: &Weights, axis: Option<i64>, twice: bool) -> Vec<u8> {
        let c = w.c as i64;
        let names = ["wq", "wk", "wv", "wo"];
        let initializer = names
            .iter()
            .zip(&w.w)
            .map(|(n, v)| TensorProto {
                dims: vec![c, c],
                data_type: Some(1),
                float_data: v.clone(),
                name: Some(n.to_string()),
                ..Default::default()
            })
            .collect();
        let mut nodes = vec![
            node("MatMul", &["x", "wq"], "q", vec![]),
            node("MatMul", &["x", "wk"], "k0", vec![]),
            node("Transpose", &["k0"], "k", vec![ints("perm", &[0, 2, 1])]),
            node("MatMul", &["x", "wv"], "v", vec![]),
            node("MatMul", &["q", "k"], "s", vec![]),
            node(
                "Softmax",
                &["s"],
                "p",
                axis.map(|a| vec![int("axis", a)]).unwrap_or_default(),
            ),
            node("MatMul", &["p", "v"], "o", vec![]),
            node("MatMul", &["o", "wo"], "o2", vec![]),
        ];
        if twice {
            nodes.push(node(
                "ReduceMean",
                &["p"],
                "pm",
                vec![ints("axes", &[-1]), int("keepdims", 1)],
            ));
            nodes.push(node("Add", &["o2", "x"], "r", vec![]));
            nodes.push(node("Add", &["r", "pm"], "y", vec![]));
        } else {
            nodes.push(node("Add", &["o2", "x"], "y", vec![]));
        }
        ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(GraphProto {
                node: nodes,
                name: Some("attention".into()),
                initializer,
                input: vec![value("x")],
                output: vec![value("y")],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// `y` for `x` (`[n, c]`, row-major) in f64, Softmax over the keys.
    pub fn reference(w: &Weights, x: &[f32], n: usize) -> Vec<f64> {
        let c = w.c;
        let mul = |a: &[f64], b: &[f32], rows: usize| -> Vec<f64> {
            let mut out = vec![0f64; rows * c];
            for i in 0..rows {
                for j in 0..c {
                    out[i * c + j] = (0..c).map(|t| a[i * c + t] * f64::from(b[t * c + j])).sum();
                }
            }
            out
        };
        let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let (q, k, v) = (
            mul(&x64, &w.w[0], n),
            mul(&x64, &w.w[1], n),
            mul(&x64, &w.w[2], n),
        );
        let mut o = vec![0f64; n * c];
        for i in 0..n {
            let s: Vec<f64> = (0..n)
                .map(|j| (0..c).map(|t| q[i * c + t] * k[j * c + t]).sum())
                .collect();
            let top = s.iter().copied().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - top).exp()).collect();
            let z: f64 = e.iter().sum();
            for j in 0..n {
                for t in 0..c {
                    o[i * c + t] += e[j] / z * v[j * c + t];
                }
            }
        }
        mul(&o, &w.w[3], n)
            .iter()
            .zip(&x64)
            .map(|(a, b)| a + b)
            .collect()
    }
}
