//! The patch program: an ONNX graph that writes each weight an adapter set reaches as
//! `base + Σ sᵢ·ΔWᵢ` (f32, one rounding to the graph's type) in the graph's layout, so the sum runs
//! where the weights live. [`build`] makes it from [`Site`]s; inputs are the pristine bases
//! ([`base_input`]) and the strengths ([`STRENGTHS`]), outputs the weights ([`output`]).
//!
//! The factors and dense ΔW are initializers in an in-memory external-data file ([`DATA_FILE`]), so
//! they go to the device once per adapter set; a strength change only re-runs the program. The
//! strength multiplies the small factor (`(s·up)·down`), so low-rank terms are one Mul and one
//! MatMul. Dense terms are `s·ΔW` exactly as the host fuse computes them, summed in its order.

use crate::model::onnx_proto::{
    attribute_proto::AttributeType,
    tensor_proto::{DataLocation, DataType},
    tensor_shape_proto::{dimension, Dimension},
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
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

/// A tensor's name, element type (ONNX code) and dimensions (`Err`: a named free dimension), as a
/// graph input or output.
pub fn value_info(name: &str, elem: i32, dims: &[Result<i64, String>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: None,
            value: Some(match d {
                Ok(v) => dimension::Value::DimValue(*v),
                Err(p) => dimension::Value::DimParam(p.clone()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            denotation: None,
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        ..Default::default()
    }
}

/// Fixed dimensions for [`value_info`].
fn fixed(dims: &[i64]) -> Vec<Result<i64, String>> {
    dims.iter().map(|&d| Ok(d)).collect()
}

fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn float_attr(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
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

/// The magnitude each factor of the f16 path is scaled to (by a power of two, undone by the
/// Gemm's alpha): far from f16's subnormals, and `s·up` stays finite for strengths up to 1000.
const F16_FACTOR_TOP: f32 = 64.0;

/// The power of two that brings the largest magnitude of `v` near [`F16_FACTOR_TOP`] (0 for zeros).
fn f16_exponent(v: &[f32]) -> i32 {
    let top = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if top > 0.0 && top.is_finite() {
        (F16_FACTOR_TOP / top).log2().floor() as i32
    } else {
        0
    }
}

fn scaled(v: &[f32], exp: i32) -> Vec<f32> {
    let f = 2f32.powi(exp);
    v.iter().map(|x| x * f).collect()
}

/// A site's low-rank sum as one product: `a` is `[m, k]` (strengths applied at run time), `b` the
/// static `[k, n]`, so that `a·b` is ΔW with rows in the graph's order (before any transpose).
struct Product {
    a: String,
    b: Vec<f32>,
    k: usize,
    n: usize,
}

/// `v` as f16 `hi` plus f16 `lo` with `hi + lo` = `v` to about 22 bits.
fn split_f16(v: &[f32]) -> (Vec<half::f16>, Vec<half::f16>) {
    let hi: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
    let lo = v
        .iter()
        .zip(&hi)
        .map(|(&x, h)| half::f16::from_f32(x - h.to_f32()))
        .collect();
    (hi, lo)
}

impl Builder {
    /// The f16 path: a site of an f16 graph whose base copy is f16 and whose every term is low
    /// rank becomes one Gemm, `base + A·B`, with the strengths folded into A. Each factor is
    /// split into two f16 halves (`A·B ≈ Ahi·Bhi + Alo·Bhi + Ahi·Blo`, one Gemm over three times
    /// the rank), so the f32-accumulating Gemm sees ΔW to about 22 bits, and the sum is rounded
    /// to f16 once: the host fuse's weight within one f16 step, at a fraction of the f32 path's
    /// memory traffic. Returns false, having added nothing, when the site does not qualify.
    fn fast(&mut self, site: &Site, base: &str) -> bool {
        let e = site.entry;
        if site.elem != ElemType::F16 || site.base_elem != ElemType::F16 {
            return false;
        }
        let terms = || site.parts.iter().flat_map(|p| &p.terms);
        if terms().next().is_none() {
            return false;
        }
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        // One power of two for every `up` of the site and one for every `down`, so terms of
        // different magnitudes share the Gemm; an exponent beyond f32's reach keeps the f32 sum.
        let (mut ups, mut downs) = (Vec::new(), Vec::new());
        for t in terms() {
            match &t.delta {
                Delta::Factors { up, down, .. } if finite(up) && finite(down) => {
                    ups.push(f16_exponent(up));
                    downs.push(f16_exponent(down));
                }
                _ => return false,
            }
        }
        let (ea, eb) = (
            ups.into_iter().min().unwrap_or(0),
            downs.into_iter().min().unwrap_or(0),
        );
        if !(-100..=100).contains(&(ea + eb)) {
            return false;
        }
        let graph_dims: Vec<i64> = e.shape.iter().map(|&d| d as i64).collect();
        let torch = &site.parts[0].shape;
        let numel: usize = torch.iter().product();
        if numel * site.parts.len() != e.shape.iter().product::<usize>() || torch.is_empty() {
            return false;
        }
        let (product, transposed) = match e.transform {
            Transform::Identity if site.parts.len() == 1 => {
                (self.product(&site.parts[0], None, ea), false)
            }
            Transform::Nhwc if site.parts.len() == 1 && torch.len() == 4 => {
                (self.product(&site.parts[0], Some(torch), ea), false)
            }
            Transform::Transpose if site.parts.len() == 1 && torch.len() == 2 => {
                (self.product(&site.parts[0], None, ea), true)
            }
            Transform::PackHeads => match self.packed(site, ea) {
                Some(p) => (p, true),
                None => return false,
            },
            _ => return false,
        };
        let Product { a, b, k, n } = product;
        let m = (numel * site.parts.len() / n) as i64;
        // A's split happens at run time (it carries the strengths), B's here.
        let hi = self.cast(&a, ElemType::F16);
        let back = self.cast(&hi, ElemType::F32);
        let rest = self.node("Sub", &[&a, &back], Vec::new());
        let lo = self.cast(&rest, ElemType::F16);
        let a3 = self.node("Concat", &[&hi, &lo, &hi], vec![int_attr("axis", 1)]);
        let (bhi, blo) = split_f16(&scaled(&b, eb));
        let b3: Vec<half::f16> = [&bhi, &bhi, &blo].into_iter().flatten().copied().collect();
        let b3 = self.external_f16("down16", &[3 * k as i64, n as i64], &b3);
        let (rows, cols) = if transposed {
            (n as i64, m)
        } else {
            (m, n as i64)
        };
        let c = if graph_dims == [rows, cols] {
            base.to_string()
        } else {
            self.reshape(base, &[rows, cols])
        };
        let alpha = float_attr("alpha", 2f32.powi(-(ea + eb)));
        let y = if transposed {
            self.node(
                "Gemm",
                &[&b3, &a3, &c],
                vec![alpha, int_attr("transA", 1), int_attr("transB", 1)],
            )
        } else {
            self.node("Gemm", &[&a3, &b3, &c], vec![alpha])
        };
        if graph_dims != [rows, cols] {
            self.reshape(&y, &graph_dims);
        }
        true
    }

    /// One part's terms as `[out, Σ rank]` times `[Σ rank, numel/out]`; `nhwc` (the torch shape
    /// of a conv weight) reorders B's columns from (cin, kh, kw) to (kh, kw, cin).
    fn product(&mut self, part: &Part, nhwc: Option<&[usize]>, exp: i32) -> Product {
        let o = part.shape[0].max(1);
        let n = part.shape.iter().product::<usize>() / o;
        let mut ups = Vec::new();
        let mut b = Vec::new();
        let mut k = 0;
        for t in &part.terms {
            let Delta::Factors { up, down, rank } = &t.delta else {
                continue;
            };
            let up = self.external("up", &[o as i64, *rank as i64], &scaled(up, exp));
            ups.push(match t.slot {
                Some(slot) => {
                    let s = self.strength(slot);
                    self.node("Mul", &[&up, &s], Vec::new())
                }
                None => up,
            });
            match nhwc {
                Some(&[_, cin, kh, kw]) => {
                    for r in 0..*rank {
                        let row = &down[r * n..(r + 1) * n];
                        for y in 0..kh {
                            for x in 0..kw {
                                b.extend((0..cin).map(|c| row[(c * kh + y) * kw + x]));
                            }
                        }
                    }
                }
                _ => b.extend_from_slice(down),
            }
            k += rank;
        }
        let a = if ups.len() == 1 {
            ups.remove(0)
        } else {
            let refs: Vec<&str> = ups.iter().map(String::as_str).collect();
            self.node("Concat", &refs, vec![int_attr("axis", 1)])
        };
        Product { a, b, k, n }
    }

    /// Packed heads: each part's A placed in its own columns of a shared `[rows, Σ rank]`
    /// (zeros elsewhere, a part without terms all zeros), the parts' rows interleaved by head as
    /// the graph packs them; B stacks the parts' B. None when the heads do not divide the rows.
    fn packed(&mut self, site: &Site, exp: i32) -> Option<Product> {
        let heads = site.entry.heads as i64;
        let shape = &site.parts[0].shape;
        if shape.len() != 2 || heads == 0 || site.parts.iter().any(|p| &p.shape != shape) {
            return None;
        }
        let (rows, cin) = (shape[0] as i64, shape[1]);
        if rows % heads != 0 {
            return None;
        }
        let products: Vec<Option<Product>> = site
            .parts
            .iter()
            .map(|p| (!p.terms.is_empty()).then(|| self.product(p, None, exp)))
            .collect();
        let k: usize = products.iter().flatten().map(|p| p.k).sum();
        let mut pieces = Vec::with_capacity(products.len());
        let mut b = Vec::with_capacity(k * cin);
        let mut at = 0;
        for p in &products {
            let piece = match p {
                Some(p) => {
                    let pads = self.ints(&[4], &[0, at as i64, 0, (k - at - p.k) as i64]);
                    at += p.k;
                    b.extend_from_slice(&p.b);
                    self.node("Pad", &[&p.a, &pads], Vec::new())
                }
                None => {
                    let zeros = self.shape(&[rows, k as i64]);
                    self.node("ConstantOfShape", &[&zeros], Vec::new())
                }
            };
            pieces.push(self.reshape(&piece, &[heads, 1, rows / heads, k as i64]));
        }
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let cat = self.node("Concat", &refs, vec![int_attr("axis", 1)]);
        let parts = products.len() as i64;
        let a = self.reshape(&cat, &[rows * parts, k as i64]);
        Some(Product { a, b, k, n: cin })
    }
}

/// The program writing every one of `sites`; `slots` is the length of its strengths input.
pub fn build(sites: &[Site], slots: usize) -> Result<Program, ProgramError> {
    let mut b = Builder::default();
    // A benchmarking knob: STIPPLE_PATCH_F32=1 keeps every site on the f32 sum, for a side-by-side
    // figure of the f16 Gemm path in one `stipple bench` session.
    let f32_only = std::env::var_os("STIPPLE_PATCH_F32").is_some_and(|v| v == "1");
    let mut inputs = vec![value_info(
        STRENGTHS,
        DataType::Float as i32,
        &fixed(&[slots.max(1) as i64]),
    )];
    let mut outputs = Vec::with_capacity(sites.len());
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
        // The last node each arm adds writes the weight: its output is renamed to the program's.
        if f32_only || !b.fast(site, &base) {
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
        outputs.push(value_info(&name, onnx_elem(site.elem), &fixed(&dims)));
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
mod tests {
    use super::*;

    fn entry(transform: Transform, shape: &[usize], parts: usize) -> WeightMapEntry {
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
        let p = build(&[site], 1).unwrap();
        assert_eq!(
            ops(&p),
            ["Gather", "Mul", "MatMul", "Reshape", "Add", "Cast"]
        );
        // up [4, 2] and down [2, 3] in the data file, 64-byte aligned.
        assert_eq!(p.data.len(), 64 + 2 * 3 * 4);
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
        assert_eq!(ops(&build(&[site], 0).unwrap()), ["Transpose", "Add"]);
    }

    #[test]
    fn packed_heads_fill_parts_without_terms_with_zeros() {
        let e = entry(Transform::PackHeads, &[3, 8], 2);
        let site = Site {
            entry: &e,
            elem: ElemType::F16,
            base_elem: ElemType::F16,
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
        let got = ops(&build(&[site], 1).unwrap());
        assert!(got.contains(&"ConstantOfShape".to_string()), "{got:?}");
        assert!(got.contains(&"Concat".to_string()), "{got:?}");
        // f16 base and weight: the packed sum is one Gemm over the base.
        assert_eq!(got.last().map(String::as_str), Some("Gemm"));
    }

    #[test]
    fn f16_low_rank_sites_are_one_gemm_and_f32_bases_keep_the_f32_sum() {
        let cases = [
            (Transform::Identity, vec![4, 3], vec![4, 3], "Gemm"),
            (
                Transform::Identity,
                vec![4, 3, 1, 1],
                vec![4, 3, 1, 1],
                "Reshape",
            ),
            (Transform::Transpose, vec![3, 4], vec![4, 3], "Gemm"),
            (
                Transform::Nhwc,
                vec![4, 1, 1, 3],
                vec![4, 3, 1, 1],
                "Reshape",
            ),
        ];
        for (transform, graph, torch, last) in cases {
            let e = entry(transform, &graph, 1);
            let part = || Part {
                shape: torch.clone(),
                terms: vec![lora(4, 3, Some(0)), lora(4, 3, None)],
            };
            let got = ops(&build(&[site(&e, [ElemType::F16, ElemType::F16], part())], 1).unwrap());
            assert_eq!(got.iter().filter(|o| *o == "Gemm").count(), 1, "{got:?}");
            assert!(!got.contains(&"MatMul".to_string()), "{got:?}");
            assert_eq!(got.last().map(String::as_str), Some(last), "{transform:?}");
            let got = ops(&build(&[site(&e, [ElemType::F16, ElemType::F32], part())], 1).unwrap());
            assert!(!got.contains(&"Gemm".to_string()), "{got:?}");
        }
        // A dense term, or a factor that is not finite, keeps the f32 sum.
        let e = entry(Transform::Identity, &[4, 3], 1);
        let mut big = lora(4, 3, Some(0));
        if let Delta::Factors { up, .. } = &mut big.delta {
            up[0] = f32::INFINITY;
        }
        let dense = Term {
            slot: Some(0),
            delta: Delta::Dense(vec![0.5; 12]),
        };
        for t in [big, dense] {
            let part = Part {
                shape: vec![4, 3],
                terms: vec![t],
            };
            let got = ops(&build(&[site(&e, [ElemType::F16, ElemType::F16], part)], 1).unwrap());
            assert!(!got.contains(&"Gemm".to_string()), "{got:?}");
        }
    }

    #[test]
    fn scaled_f16_halves_hold_about_22_bits_of_the_largest_factor() {
        for top in [3.7f32, 0.013, 2.0e-5, 900.0] {
            let v: Vec<f32> = (1..200).map(|i| (i as f32 * 0.7131).sin() * top).collect();
            let exp = f16_exponent(&v);
            let (hi, lo) = split_f16(&scaled(&v, exp));
            let back = 2f32.powi(-exp);
            for ((x, h), l) in v.iter().zip(&hi).zip(&lo) {
                let err = (x - (h.to_f32() + l.to_f32()) * back).abs();
                assert!(err <= top * 2f32.powi(-21), "{top}: {x}: {err}");
            }
        }
    }

    #[test]
    fn a_weight_no_term_reaches_is_its_base() {
        let e = entry(Transform::Nhwc, &[2, 1, 1, 3], 1);
        let site = site(
            &e,
            [ElemType::F16, ElemType::F16],
            Part {
                shape: vec![2, 3, 1, 1],
                terms: Vec::new(),
            },
        );
        assert_eq!(ops(&build(&[site], 0).unwrap()), ["Identity"]);
    }

    #[test]
    fn factors_that_do_not_make_the_weight_are_refused() {
        let e = entry(Transform::Identity, &[4, 3], 1);
        let site = site(
            &e,
            [ElemType::F32, ElemType::F32],
            Part {
                shape: vec![4, 3],
                terms: vec![lora(4, 5, Some(0))],
            },
        );
        let err = build(&[site], 1).err().expect("refused").to_string();
        assert!(err.starts_with("w: factors of"), "{err}");
    }
}
