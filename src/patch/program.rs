//! The patch program: an ONNX graph that writes each weight an adapter set reaches as
//! `base + Σ sᵢ·ΔWᵢ` (f32, one rounding to the graph's type) in the graph's layout, so the sum runs
//! where the weights live. [`build`] makes it from [`Site`]s; inputs are the pristine bases
//! ([`base_input`]) and the strengths ([`STRENGTHS`]), outputs the weights ([`output`]).
//!
//! The factors and dense ΔW are initializers in an in-memory external-data file ([`DATA_FILE`]), so
//! they go to the device once per adapter set; a strength change only re-runs the program. The
//! strength multiplies the small factor (`(s·up)·down`), so low-rank terms are one Mul and one
//! MatMul. Dense terms are `s·ΔW` exactly as the host fuse computes them, summed in its order.

use super::lowrank::{self, Arranged};
pub use crate::model::onnx_build::value_info;
use crate::model::onnx_build::{float_attr, int_attr, ints_attr};
use crate::model::onnx_proto::{
    tensor_proto::{DataLocation, DataType},
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto,
};
use crate::model::weightmap::{Transform, WeightMapEntry};
use crate::model::ElemType;
use prost::Message;
use std::sync::Arc;

/// The external-data file name the program's initializers refer to (held in memory).
pub const DATA_FILE: &str = "patch_program.bin";
/// The program's strengths input: `[slots]` f32, one per strength a term scales with.
pub const STRENGTHS: &str = "strengths";

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("{init}: {message}")]
    Site { init: String, message: String },
}

/// What one term adds before its strength (torch layout).
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// `up·down`, `up` `[out, rank]`, `down` `[rank, numel/out]`.
    Factors {
        up: Vec<f32>,
        down: Vec<f32>,
        rank: usize,
    },
    Dense(Vec<f32>),
}

/// One term of a parameter's sum: scaled by `strengths[slot]`, or added as it is (`None`: a ΔW that
/// already holds its strength).
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub slot: Option<usize>,
    pub delta: Delta,
}

/// One source parameter of a weight: its torch shape and its terms, in the host fuse's order.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub shape: Vec<usize>,
    pub terms: Vec<Term>,
}

/// One weight the program writes.
#[derive(Debug, Clone)]
pub struct Site<'a> {
    pub entry: &'a WeightMapEntry,
    /// The graph's element type of the weight (the output's).
    pub elem: ElemType,
    /// The base input's element type: the graph's when the stored weights have it (no rounding),
    /// else f32.
    pub base_elem: ElemType,
    /// One per source of the entry, in its order.
    pub parts: Vec<Part>,
}

impl Site<'_> {
    /// Whether the weight's value changes with the strengths input: some term scales with a slot.
    /// A weight without (no term: a bias beside a weight an adapter reaches, a weight an earlier
    /// set patched going back to its base; or only terms that hold their strength) is the same
    /// at every run.
    pub fn scales(&self) -> bool {
        self.parts
            .iter()
            .any(|p| p.terms.iter().any(|t| t.slot.is_some()))
    }
}

/// A built program: the model, its initializers' data, and how many strengths it reads.
pub struct Program {
    pub model: Vec<u8>,
    pub data: Arc<[u8]>,
    pub slots: usize,
}

/// Input name of site `k`'s pristine base (graph layout, `base_elem`).
pub fn base_input(k: usize) -> String {
    format!("base.{k}")
}

/// Output name of site `k`'s weight.
pub fn output(k: usize) -> String {
    format!("weight.{k}")
}

fn onnx_elem(e: ElemType) -> i32 {
    match e {
        ElemType::F32 => DataType::Float as i32,
        ElemType::F16 => DataType::Float16 as i32,
        ElemType::Bf16 => DataType::Bfloat16 as i32,
        ElemType::Other(c) => c,
    }
}

/// Fixed dimensions for [`value_info`].
fn fixed(dims: &[i64]) -> Vec<Result<i64, String>> {
    dims.iter().map(|&d| Ok(d)).collect()
}

/// The graph being built: nodes, initializers and the external data they point into.
#[derive(Default)]
struct Builder {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    data: Vec<u8>,
    next: usize,
    shapes: std::collections::HashMap<Vec<i64>, String>,
    slots: std::collections::HashMap<usize, String>,
}

impl Builder {
    fn fresh(&mut self, what: &str) -> String {
        self.next += 1;
        format!("{what}.{}", self.next)
    }

    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(op);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: Some(format!("{out}.node")),
            op_type: Some(op.into()),
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    /// An f32 initializer in the external data (64-byte aligned).
    fn external(&mut self, what: &str, dims: &[i64], values: &[f32]) -> String {
        self.external_bytes(what, dims, DataType::Float, bytemuck::cast_slice(values))
    }

    /// An f16 initializer in the external data.
    fn external_f16(&mut self, what: &str, dims: &[i64], values: &[half::f16]) -> String {
        self.external_bytes(what, dims, DataType::Float16, bytemuck::cast_slice(values))
    }

    fn external_bytes(&mut self, what: &str, dims: &[i64], elem: DataType, bytes: &[u8]) -> String {
        let name = self.fresh(what);
        let pad = self.data.len().next_multiple_of(64) - self.data.len();
        self.data.extend(std::iter::repeat_n(0u8, pad));
        let offset = self.data.len();
        self.data.extend_from_slice(bytes);
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        self.inits.push(TensorProto {
            dims: dims.to_vec(),
            data_type: Some(elem as i32),
            name: Some(name.clone()),
            data_location: Some(DataLocation::External as i32),
            external_data: vec![
                entry("location", DATA_FILE.into()),
                entry("offset", offset.to_string()),
                entry("length", bytes.len().to_string()),
            ],
            ..Default::default()
        });
        name
    }

    /// An int64 initializer held in the graph (shapes, indices), shared between users.
    fn ints(&mut self, dims: &[i64], values: &[i64]) -> String {
        let name = self.fresh("ints");
        self.inits.push(TensorProto {
            dims: dims.to_vec(),
            data_type: Some(DataType::Int64 as i32),
            name: Some(name.clone()),
            int64_data: values.to_vec(),
            ..Default::default()
        });
        name
    }

    fn shape(&mut self, dims: &[i64]) -> String {
        if let Some(n) = self.shapes.get(dims) {
            return n.clone();
        }
        let n = self.ints(&[dims.len() as i64], dims);
        self.shapes.insert(dims.to_vec(), n.clone());
        n
    }

    fn reshape(&mut self, x: &str, dims: &[i64]) -> String {
        let s = self.shape(dims);
        self.node("Reshape", &[x, &s], Vec::new())
    }

    fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.node("Transpose", &[x], vec![ints_attr("perm", perm)])
    }

    fn cast(&mut self, x: &str, to: ElemType) -> String {
        self.node("Cast", &[x], vec![int_attr("to", onnx_elem(to) as i64)])
    }

    /// The scalar `strengths[slot]`.
    fn strength(&mut self, slot: usize) -> String {
        if let Some(n) = self.slots.get(&slot) {
            return n.clone();
        }
        let idx = self.ints(&[], &[slot as i64]);
        let n = self.node("Gather", &[STRENGTHS, &idx], Vec::new());
        self.slots.insert(slot, n.clone());
        n
    }

    /// One part's `Σ sᵢ·ΔWᵢ` as `[out, numel/out]`, None when it has no terms.
    fn part_sum(&mut self, init: &str, part: &Part) -> Result<Option<String>, ProgramError> {
        let bad = |message: String| ProgramError::Site {
            init: init.to_string(),
            message,
        };
        let numel: usize = part.shape.iter().product();
        let o = part.shape.first().copied().unwrap_or(1).max(1);
        let cols = numel / o;
        let mut sum: Option<String> = None;
        for t in &part.terms {
            let s = t.slot.map(|slot| self.strength(slot));
            let d = match &t.delta {
                Delta::Factors { up, down, rank } => {
                    if up.len() != o * rank || down.len() != rank * cols {
                        return Err(bad(format!(
                            "factors of {} and {} values do not make {:?} at rank {rank}",
                            up.len(),
                            down.len(),
                            part.shape
                        )));
                    }
                    let (r, o, c) = (*rank as i64, o as i64, cols as i64);
                    let up = self.external("up", &[o, r], up);
                    let down = self.external("down", &[r, c], down);
                    let up = match &s {
                        Some(s) => self.node("Mul", &[&up, s], Vec::new()),
                        None => up,
                    };
                    self.node("MatMul", &[&up, &down], Vec::new())
                }
                Delta::Dense(v) => {
                    if v.len() != numel {
                        return Err(bad(format!(
                            "a ΔW of {} values for a weight of {numel}",
                            v.len()
                        )));
                    }
                    let d = self.external("delta", &[o as i64, cols as i64], v);
                    match &s {
                        Some(s) => self.node("Mul", &[&d, s], Vec::new()),
                        None => d,
                    }
                }
            };
            sum = Some(match sum {
                Some(acc) => self.node("Add", &[&acc, &d], Vec::new()),
                None => d,
            });
        }
        Ok(sum)
    }

    /// The summed ΔW of `site` in the graph's layout, None when no part has terms.
    fn arranged(&mut self, site: &Site) -> Result<Option<String>, ProgramError> {
        let e = site.entry;
        let bad = |message: String| ProgramError::Site {
            init: e.name.clone(),
            message,
        };
        let mut sums = Vec::with_capacity(site.parts.len());
        for p in &site.parts {
            sums.push(self.part_sum(&e.name, p)?);
        }
        if sums.iter().all(Option::is_none) {
            return Ok(None);
        }
        let graph_dims: Vec<i64> = e.shape.iter().map(|&d| d as i64).collect();
        let torch: Vec<i64> = site.parts[0].shape.iter().map(|&d| d as i64).collect();
        let one = |sums: &[Option<String>]| sums[0].clone().ok_or_else(|| bad("no ΔW".into()));
        Ok(Some(match e.transform {
            Transform::Identity => {
                let d = one(&sums)?;
                self.reshape(&d, &graph_dims)
            }
            Transform::Transpose => {
                if torch.len() != 2 {
                    return Err(bad(format!("transpose of a {:?} weight", torch)));
                }
                let d = one(&sums)?;
                self.transpose(&d, &[1, 0])
            }
            Transform::Nhwc => {
                if torch.len() != 4 {
                    return Err(bad(format!("NHWC of a {:?} weight", torch)));
                }
                let d = one(&sums)?;
                let d = self.reshape(&d, &torch);
                self.transpose(&d, &[0, 2, 3, 1])
            }
            Transform::PackHeads if torch.len() == 1 => {
                // Biases: each part's [heads*dim] cut per head and laid side by side.
                let heads = e.heads as i64;
                if heads == 0 || torch[0] % heads != 0 {
                    return Err(bad(format!("{heads} heads of a {:?} bias", torch)));
                }
                let rows = torch[0];
                let mut pieces = Vec::with_capacity(sums.len());
                for s in &sums {
                    let d = match s {
                        Some(d) => d.clone(),
                        None => {
                            let shape = self.shape(&[rows]);
                            self.node("ConstantOfShape", &[&shape], Vec::new())
                        }
                    };
                    pieces.push(self.reshape(&d, &[heads, 1, rows / heads]));
                }
                let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
                let cat = self.node("Concat", &refs, vec![int_attr("axis", 1)]);
                self.reshape(&cat, &[rows * sums.len() as i64])
            }
            Transform::PackHeads => {
                let heads = e.heads as i64;
                if torch.len() != 2 || heads == 0 || torch[0] % heads != 0 {
                    return Err(bad(format!("{heads} heads of a {:?} weight", torch)));
                }
                let (rows, cin) = (torch[0], torch[1]);
                let dim = rows / heads;
                let mut pieces = Vec::with_capacity(sums.len());
                for s in &sums {
                    let d = match s {
                        Some(d) => d.clone(),
                        None => {
                            let shape = self.shape(&[rows, cin]);
                            self.node("ConstantOfShape", &[&shape], Vec::new())
                        }
                    };
                    pieces.push(self.reshape(&d, &[heads, 1, dim, cin]));
                }
                let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
                let cat = self.node("Concat", &refs, vec![int_attr("axis", 1)]);
                let k = sums.len() as i64;
                let flat = self.reshape(&cat, &[rows * k, cin]);
                self.transpose(&flat, &[1, 0])
            }
        }))
    }
}

impl Builder {
    /// The f16 path's operations shared by all its sites: every entry of every A scaled by its
    /// strength (one Gather, one Mul), split into f16 halves, and cut into one `[3k'·m]` piece per
    /// site holding A₃ᵀ (A's hi, lo and hi halves, each transposed, k' ≥ k rows with zero rows
    /// added: [`block`]), in `arranged`'s order. A few launches for the whole program instead of
    /// several per site: replayed as a CUDA graph the program's time is mostly its launches.
    ///
    /// The cut is a Split along an axis of `Σk'm/B` blocks of `B` entries: ONNX Runtime's CUDA
    /// Split builds a host table as long as the axis it cuts and copies it to the device at every
    /// run (measured: 259 MB and 4.8 ms per run for SD1.5 when it cut the flat vector).
    fn shared_halves(&mut self, arranged: &[&Arranged], slots: usize) -> (Vec<String>, Vec<usize>) {
        let (block, ks) = block(arranged);
        let total: usize = arranged.iter().zip(&ks).map(|(x, k)| k * x.m).sum();
        let one = slots.max(1) as i32;
        let mut values = Vec::with_capacity(total);
        let mut idx = Vec::with_capacity(total);
        for (x, &kp) in arranged.iter().zip(&ks) {
            for j in 0..kp {
                for r in 0..x.m {
                    let (v, s) = match j < x.k {
                        true => (x.a[r * x.k + j], x.slots[r * x.k + j]),
                        false => (0.0, lowrank::UNSCALED),
                    };
                    values.push(v);
                    idx.push(if s == lowrank::UNSCALED {
                        one
                    } else {
                        s as i32
                    });
                }
            }
        }
        let n = [total as i64];
        let values = self.external("a", &n, &values);
        let idx = self.external_bytes("slot", &n, DataType::Int32, bytemuck::cast_slice(&idx));
        let unit = self.fresh("one");
        self.inits.push(TensorProto {
            dims: vec![1],
            data_type: Some(DataType::Float as i32),
            name: Some(unit.clone()),
            float_data: vec![1.0],
            ..Default::default()
        });
        let ext = self.node("Concat", &[STRENGTHS, &unit], vec![int_attr("axis", 0)]);
        let s = self.node("Gather", &[&ext, &idx], Vec::new());
        let x = self.node("Mul", &[&values, &s], Vec::new());
        let hi = self.cast(&x, ElemType::F16);
        let back = self.cast(&hi, ElemType::F32);
        let rest = self.node("Sub", &[&x, &back], Vec::new());
        let lo = self.cast(&rest, ElemType::F16);
        let blocks = [1, (total / block) as i64, block as i64];
        let hi = self.reshape(&hi, &blocks);
        let lo = self.reshape(&lo, &blocks);
        // [3, blocks, B]: a site's slice along axis 1 is its hi, lo, hi thirds one after another,
        // which is A₃ᵀ `[3k', m]` in memory.
        let a = self.node("Concat", &[&hi, &lo, &hi], vec![int_attr("axis", 0)]);
        let sizes: Vec<i64> = arranged
            .iter()
            .zip(&ks)
            .map(|(x, k)| (k * x.m / block) as i64)
            .collect();
        let sizes = self.ints(&[sizes.len() as i64], &sizes);
        let pieces: Vec<String> = arranged.iter().map(|_| self.fresh("piece")).collect();
        let out = self.fresh("Split");
        self.nodes.push(NodeProto {
            input: vec![a, sizes],
            output: pieces.clone(),
            name: Some(format!("{out}.node")),
            op_type: Some("Split".into()),
            attribute: vec![int_attr("axis", 1)],
            ..Default::default()
        });
        (pieces, ks)
    }

    /// One f16 site: `base + α·A₃·B₃` (or its transpose) as one Gemm; A₃ and B₃ have `kp` ≥ k
    /// rows per third, the added ones zero. Returns the output's dims: the Gemm's own `[rows,
    /// cols]`, which the runner binds as a view of the weight's buffer when the graph's shape
    /// differs (a conv's 4-D weight): a Reshape into a bound output would be one more copy of the
    /// whole weight per run (measured: 96 of the 328 device copies of an SD1.5 LoCon re-run).
    fn gemm_site(
        &mut self,
        x: &Arranged,
        kp: usize,
        piece: &str,
        base: &str,
        graph_dims: &[i64],
    ) -> Vec<i64> {
        let (m, k, n) = (x.m as i64, kp as i64, x.n as i64);
        let a3t = self.reshape(piece, &[3 * k, m]);
        let zero = half::f16::from_f32(0.0);
        let mut b3 = Vec::with_capacity(3 * kp * x.n);
        for third in x.b3.chunks(x.k * x.n) {
            b3.extend_from_slice(third);
            b3.resize(b3.len() + (kp - x.k) * x.n, zero);
        }
        let b3 = self.external_f16("b3", &[3 * k, n], &b3);
        let (rows, cols) = if x.transposed { (n, m) } else { (m, n) };
        let flat = graph_dims == [rows, cols];
        let c = if flat {
            base.to_string()
        } else {
            self.reshape(base, &[rows, cols])
        };
        let attrs = vec![float_attr("alpha", x.alpha), int_attr("transA", 1)];
        if x.transposed {
            self.node("Gemm", &[&b3, &a3t, &c], attrs);
        } else {
            self.node("Gemm", &[&a3t, &b3, &c], attrs);
        }
        vec![rows, cols]
    }
}

/// The block `B` the f16 path's Split cuts in, and each site's rows k' (a multiple of
/// `B / gcd(B, m)`, so that `k'·m` is whole blocks): the largest power of two up to 512 that adds
/// at most a quarter to the entries (zero rows cost a little arithmetic; a short axis saves a
/// table copied at every run).
fn block(arranged: &[&Arranged]) -> (usize, Vec<usize>) {
    let rows = |b: usize| -> Vec<usize> {
        arranged
            .iter()
            .map(|x| {
                let step = b / gcd(b, x.m.max(1));
                x.k.div_ceil(step) * step
            })
            .collect()
    };
    let size = |ks: &[usize]| -> usize { arranged.iter().zip(ks).map(|(x, k)| k * x.m).sum() };
    let plain = size(&rows(1));
    let mut b = 512;
    loop {
        let ks = rows(b);
        if b == 1 || 4 * size(&ks) <= 5 * plain {
            return (b, ks);
        }
        b /= 2;
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Whether f16 low-rank sites take the Gemm path ([`lowrank`]): on unless STIPPLE_PATCH_F16=0.
/// Measured on an H100 (2026-12-06, SD1.5 fp16, rank-32 LoRA on 192 layers, one lease, programs
/// alternated): a re-run takes 2.2–2.4 ms against 5.8 ms for the f32 sum, and a step whose
/// strength changes every step +24.9/+25.5 % over a constant one against +51.8 %.
pub fn f16_gemm_wanted() -> bool {
    std::env::var_os("STIPPLE_PATCH_F16").is_none_or(|v| v != "0")
}

/// The program writing every one of `sites`; `slots` is the length of its strengths input;
/// `f16_gemm` lets f16 low-rank sites take the Gemm path.
pub fn build(sites: &[Site], slots: usize, f16_gemm: bool) -> Result<Program, ProgramError> {
    let mut b = Builder::default();
    let mut inputs = vec![value_info(
        STRENGTHS,
        DataType::Float as i32,
        &fixed(&[slots.max(1) as i64]),
    )];
    let mut outputs = Vec::with_capacity(sites.len());
    let arranged: Vec<Option<Arranged>> = sites
        .iter()
        .map(|s| if f16_gemm { lowrank::arrange(s) } else { None })
        .collect();
    let fast: Vec<&Arranged> = arranged.iter().flatten().collect();
    let (pieces, ks) = if fast.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        b.shared_halves(&fast, slots)
    };
    let mut pieces = pieces.into_iter().zip(ks);
    for (k, site) in sites.iter().enumerate() {
        let e = site.entry;
        if site.parts.len() != e.sources().len() {
            return Err(ProgramError::Site {
                init: e.name.clone(),
                message: format!(
                    "{} parts for {} sources",
                    site.parts.len(),
                    e.sources().len()
                ),
            });
        }
        let dims: Vec<i64> = e.shape.iter().map(|&d| d as i64).collect();
        let base = base_input(k);
        inputs.push(value_info(&base, onnx_elem(site.base_elem), &fixed(&dims)));
        let mut out_dims = dims.clone();
        // The last node each arm adds writes the weight: its output is renamed to the program's.
        if let (Some(x), Some(piece)) = (
            &arranged[k],
            arranged[k].as_ref().and_then(|_| pieces.next()),
        ) {
            out_dims = b.gemm_site(x, piece.1, &piece.0, &base, &dims);
        } else {
            match b.arranged(site)? {
                Some(delta) => {
                    let base32 = match site.base_elem {
                        ElemType::F32 => base.clone(),
                        _ => b.cast(&base, ElemType::F32),
                    };
                    let sum = b.node("Add", &[&base32, &delta], Vec::new());
                    match site.elem {
                        ElemType::F32 => sum,
                        elem => b.cast(&sum, elem),
                    }
                }
                None if site.base_elem == site.elem => b.node("Identity", &[&base], Vec::new()),
                None => b.cast(&base, site.elem),
            };
        }
        let name = output(k);
        if let Some(n) = b.nodes.last_mut() {
            n.output[0] = name.clone();
        }
        outputs.push(value_info(&name, onnx_elem(site.elem), &fixed(&out_dims)));
    }
    let model = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(17),
        }],
        producer_name: Some("stipple patch program".into()),
        graph: Some(GraphProto {
            node: b.nodes,
            name: Some("patch".into()),
            initializer: b.inits,
            input: inputs,
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(Program {
        model: model.encode_to_vec(),
        data: Arc::from(b.data),
        slots,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::onnx_proto::{tensor_shape_proto::dimension, type_proto, ValueInfoProto};

    /// A weight map entry of an f16 weight for tests (`parts` > 1: packed sources `p0`, `p1`, …).
    pub(crate) fn entry(transform: Transform, shape: &[usize], parts: usize) -> WeightMapEntry {
        WeightMapEntry {
            name: "w".into(),
            source: "p0".into(),
            transform,
            parts: if parts > 1 {
                (0..parts).map(|i| format!("p{i}")).collect()
            } else {
                Vec::new()
            },
            heads: 2,
            dtype: "float16".into(),
            shape: shape.to_vec(),
            offset: 0,
            length: shape.iter().product::<usize>() * 2,
        }
    }

    /// Each output's declared dimensions.
    fn out_dims(p: &Program) -> Vec<Vec<i64>> {
        let m = ModelProto::decode(p.model.as_slice()).unwrap();
        let dims = |v: &ValueInfoProto| -> Vec<i64> {
            let Some(type_proto::Value::TensorType(t)) =
                v.r#type.as_ref().and_then(|t| t.value.clone())
            else {
                return Vec::new();
            };
            let dim = t.shape.map(|s| s.dim).unwrap_or_default();
            dim.iter()
                .map(|d| match d.value {
                    Some(dimension::Value::DimValue(v)) => v,
                    _ => -1,
                })
                .collect()
        };
        m.graph.unwrap().output.iter().map(dims).collect()
    }

    fn ops(p: &Program) -> Vec<String> {
        let m = ModelProto::decode(p.model.as_slice()).unwrap();
        m.graph
            .unwrap()
            .node
            .iter()
            .map(|n| n.op_type().to_string())
            .collect()
    }

    /// A site of one part.
    fn site<'a>(e: &'a WeightMapEntry, elems: [ElemType; 2], part: Part) -> Site<'a> {
        Site {
            entry: e,
            elem: elems[0],
            base_elem: elems[1],
            parts: vec![part],
        }
    }

    fn lora(o: usize, i: usize, slot: Option<usize>) -> Term {
        Term {
            slot,
            delta: Delta::Factors {
                up: vec![1.0; o * 2],
                down: vec![1.0; 2 * i],
                rank: 2,
            },
        }
    }

    #[test]
    fn a_low_rank_term_is_one_mul_and_one_matmul_then_one_rounding() {
        let e = entry(Transform::Identity, &[4, 3], 1);
        let site = site(
            &e,
            [ElemType::F16, ElemType::F32],
            Part {
                shape: vec![4, 3],
                terms: vec![lora(4, 3, Some(0))],
            },
        );
        let p = build(&[site], 1, true).unwrap();
        assert_eq!(
            ops(&p),
            ["Gather", "Mul", "MatMul", "Reshape", "Add", "Cast"]
        );
        // up [4, 2] and down [2, 3] in the data file, 64-byte aligned.
        assert_eq!(p.data.len(), 64 + 2 * 3 * 4);
    }

    #[test]
    fn only_a_term_read_from_the_strengths_makes_a_site_scale() {
        let e = entry(Transform::Identity, &[4, 3], 1);
        let with = |terms: Vec<Term>| {
            site(
                &e,
                [ElemType::F32, ElemType::F32],
                Part {
                    shape: vec![4, 3],
                    terms,
                },
            )
            .scales()
        };
        assert!(!with(Vec::new()));
        assert!(!with(vec![lora(4, 3, None)]));
        assert!(with(vec![lora(4, 3, None), lora(4, 3, Some(0))]));
    }

    #[test]
    fn a_term_that_holds_its_strength_is_added_as_it_is() {
        let e = entry(Transform::Transpose, &[3, 4], 1);
        let site = site(
            &e,
            [ElemType::F32, ElemType::F32],
            Part {
                shape: vec![4, 3],
                terms: vec![Term {
                    slot: None,
                    delta: Delta::Dense(vec![0.5; 12]),
                }],
            },
        );
        assert_eq!(ops(&build(&[site], 0, true).unwrap()), ["Transpose", "Add"]);
    }

    #[test]
    fn packed_heads_fill_parts_without_terms_with_zeros() {
        let e = entry(Transform::PackHeads, &[3, 8], 2);
        // An f32 base takes the f32 sum (the f16 path arranges its zeros on the host).
        let site = Site {
            entry: &e,
            elem: ElemType::F16,
            base_elem: ElemType::F32,
            parts: vec![
                Part {
                    shape: vec![4, 3],
                    terms: vec![lora(4, 3, Some(0))],
                },
                Part {
                    shape: vec![4, 3],
                    terms: Vec::new(),
                },
            ],
        };
        let got = ops(&build(&[site], 1, true).unwrap());
        assert!(got.contains(&"ConstantOfShape".to_string()), "{got:?}");
        assert!(got.contains(&"Concat".to_string()), "{got:?}");
        assert_eq!(got.last().map(String::as_str), Some("Cast"));
    }

    #[test]
    fn f16_low_rank_sites_are_one_gemm_each_after_shared_operations() {
        // The output is the Gemm's own `[rows, cols]`: a conv's 4-D weight is written through a
        // view of that shape (device_run), not through one more Reshape copy.
        let cases = [
            (Transform::Identity, vec![4, 3], vec![4, 3], [4, 3]),
            (
                Transform::Identity,
                vec![4, 3, 1, 1],
                vec![4, 3, 1, 1],
                [4, 3],
            ),
            (Transform::Transpose, vec![3, 4], vec![4, 3], [3, 4]),
            (Transform::Nhwc, vec![4, 1, 1, 3], vec![4, 3, 1, 1], [4, 3]),
        ];
        for (transform, graph, torch, written) in cases {
            let e = entry(transform, &graph, 1);
            let part = || Part {
                shape: torch.clone(),
                terms: vec![lora(4, 3, Some(0)), lora(4, 3, None)],
            };
            let two = [
                site(&e, [ElemType::F16, ElemType::F16], part()),
                site(&e, [ElemType::F16, ElemType::F16], part()),
            ];
            let program = build(&two, 1, true).unwrap();
            assert_eq!(out_dims(&program), [written, written], "{transform:?}");
            let got = ops(&program);
            assert_eq!(got.iter().filter(|o| *o == "Gemm").count(), 2, "{got:?}");
            // Strengths, the f16 split and the Split into sites happen once for both.
            for shared in ["Gather", "Mul", "Split"] {
                assert_eq!(got.iter().filter(|o| *o == shared).count(), 1, "{got:?}");
            }
            assert!(!got.contains(&"MatMul".to_string()), "{got:?}");
            assert_eq!(
                got.last().map(String::as_str),
                Some("Gemm"),
                "{transform:?}"
            );
            let got =
                ops(&build(&[site(&e, [ElemType::F16, ElemType::F32], part())], 1, true).unwrap());
            assert!(!got.contains(&"Gemm".to_string()), "{got:?}");
            // Without the f16 path, the same sites take the f32 sum.
            let got = ops(&build(&two, 1, false).unwrap());
            assert!(!got.contains(&"Gemm".to_string()), "{got:?}");
        }
    }

    fn arranged(m: usize, k: usize) -> Arranged {
        Arranged {
            a: vec![0.0; m * k],
            slots: vec![0; m * k],
            m,
            k,
            n: 1,
            b3: Vec::new(),
            transposed: false,
            alpha: 1.0,
        }
    }

    #[test]
    fn the_f16_split_cuts_whole_blocks_and_pads_little() {
        // SD-like sites: rank 32 over 320, 1280 and 2880 (a 3×3 conv of 320) columns.
        let xs = [arranged(320, 32), arranged(1280, 96), arranged(2880, 32)];
        let refs: Vec<&Arranged> = xs.iter().collect();
        let (b, ks) = block(&refs);
        assert_eq!((b, ks.clone()), (512, vec![32, 96, 32]));
        // Ranks that do not fit a block get zero rows; an odd width gets small blocks instead.
        let xs = [arranged(320, 4), arranged(320, 30), arranged(77, 5)];
        let refs: Vec<&Arranged> = xs.iter().collect();
        let (b, ks) = block(&refs);
        let plain: usize = xs.iter().map(|x| x.k * x.m).sum();
        let padded: usize = xs.iter().zip(&ks).map(|(x, k)| k * x.m).sum();
        assert!(4 * padded <= 5 * plain, "{padded} for {plain}");
        for (x, k) in xs.iter().zip(&ks) {
            assert!(
                *k >= x.k && (k * x.m) % b == 0,
                "{k} rows of {} in blocks of {b}",
                x.m
            );
        }
    }
}
