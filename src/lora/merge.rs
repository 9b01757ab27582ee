//! Several adapters at their strengths → one LoRA. `exact` concatenates LoRA/LoCon factors along the
//! rank (lossless; rank = Σ ranks); `svd` sums ΔW per layer (any type) and truncates it by kohya's rules.
//!
//! Modules are matched through the model's parameter list, so every key scheme the engine reads merges.

use std::collections::BTreeMap;

use faer::Mat;
use rayon::prelude::*;
use thiserror::Error;

use super::delta::{self, Ctx, DeltaError};
use super::detect::{AdapterType, ModuleTensors};
use super::keys::{Kind, ModuleRef};
use super::linalg::NoConvergence;
use super::svd::{self, Shape, Source};
use super::tensor::{matmul, transpose};
use super::walk::Walk;
use super::write::LoraLayer;
use super::{Adapter, ApplyReport, LoraError, ModelParams, Strengths, TargetParam};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Exact,
    Svd,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MergeOptions {
    pub mode: Mode,
    /// Rank rule, clamp (svd mode only).
    pub svd: svd::Options,
}

#[derive(Debug, Error)]
pub enum MergeError {
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error(
        "exact mode concatenates LoRA/LoCon factors, but {adapter} has {label} at {module}; \
         use --mode svd (with --rank or --sv-*) for other types"
    )]
    NotExact {
        adapter: String,
        module: String,
        label: String,
    },
    #[error("{0}")]
    Options(String),
    #[error("{module}: {source}")]
    Svd {
        module: String,
        source: NoConvergence,
    },
}

/// The merged layers, what was applied per adapter, and changes no LoRA layer can carry.
#[derive(Debug)]
pub struct Merged {
    pub layers: Vec<LoraLayer>,
    pub report: ApplyReport,
    /// Bias and 1-D (norm) deltas of Full/Norm modules: a kohya LoRA has no place for them.
    pub dropped: Vec<String>,
}

/// One adapter's part of one layer: scaled factors (`up·down` = μ·s·ΔW) or a dense μ·ΔW.
enum LayerPart {
    Factors {
        up: Vec<f32>,
        down: Vec<f32>,
        rank: usize,
    },
    Dense(Vec<f32>),
}

struct Contribution {
    id: usize,
    part: Option<LayerPart>,
    label: String,
    strength: f32,
    warnings: Vec<String>,
    dropped: Vec<String>,
}

/// Merges `adapters` into one LoRA over `model`'s layers. Nothing is written here.
pub fn merge(
    adapters: &[(&Adapter, Strengths)],
    model: &ModelParams,
    opts: &MergeOptions,
) -> Result<Merged, MergeError> {
    if opts.mode == Mode::Svd {
        opts.svd.rule.validate().map_err(MergeError::Options)?;
    }
    let mut walk = Walk::new(adapters, model)?;
    let mut reports = std::mem::take(&mut walk.reports);
    let mut parts: BTreeMap<usize, Vec<LayerPart>> = BTreeMap::new();
    let mut dropped = Vec::new();
    for ((ai, a), rep) in walk.adapters.iter().enumerate().zip(&mut reports) {
        let results: Vec<Result<Option<Contribution>, MergeError>> = a
            .groups
            .par_iter()
            .map(|(&id, _)| contribution(&walk, ai, id, opts.mode))
            .collect();
        for r in results {
            let Some(c) = r? else { continue };
            let module = walk.index.module(c.id);
            rep.warnings.extend(c.warnings);
            dropped.extend(c.dropped);
            *rep.types.entry(c.label.clone()).or_default() += 1;
            let name = format!("{}.weight", module.path);
            rep.applied
                .push(walk.applied(module.component, &name, &c.label, c.strength));
            if let Some(p) = c.part {
                parts.entry(c.id).or_default().push(p);
            }
        }
    }
    let report = ApplyReport { adapters: reports };
    let layers: Vec<Result<Option<LoraLayer>, MergeError>> = parts
        .into_par_iter()
        .map(|(id, parts)| {
            let module = walk.index.module(id);
            let name = format!("{}.weight", module.path);
            match walk.params.get(&(module.component, name.as_str())) {
                Some(target) => assemble(module, target, parts, opts),
                None => Ok(None),
            }
        })
        .collect();
    let mut layers: Vec<LoraLayer> = layers
        .into_iter()
        .filter_map(Result::transpose)
        .collect::<Result<_, _>>()?;
    layers.sort_by(|a, b| (a.component, &a.path).cmp(&(b.component, &b.path)));
    Ok(Merged {
        layers,
        report,
        dropped,
    })
}

fn contribution(
    walk: &Walk,
    ai: usize,
    id: usize,
    mode: Mode,
) -> Result<Option<Contribution>, MergeError> {
    let Some(p) = walk.prepare(ai, id)? else {
        return Ok(None);
    };
    let mut c = Contribution {
        id,
        part: None,
        label: p.label.clone(),
        strength: p.mu,
        warnings: p.warnings.clone(),
        dropped: Vec::new(),
    };
    let Some(shape) = Shape::of(&p.target.shape) else {
        c.dropped.push(format!(
            "{}: {} change to a {}-D weight cannot be a LoRA layer",
            p.adapter.name(),
            c.label,
            p.target.shape.len()
        ));
        return Ok(Some(c));
    };
    let plain = p.det.kind == AdapterType::Lora && !p.det.dora;
    if !plain && mode == Mode::Exact {
        return Err(MergeError::NotExact {
            adapter: p.adapter.name(),
            module: p.module.path.clone(),
            label: c.label,
        });
    }
    if p.adds_nothing() {
        return Ok(Some(c));
    }
    if plain {
        c.part = Some(
            p.with_ctx(|ctx| factors(ctx, &p.tensors, &shape))
                .map_err(|e| p.module_error(e))?,
        );
        return Ok(Some(c));
    }
    let out = p
        .with_ctx(|ctx| delta::compute(p.det, ctx))
        .map_err(|e| p.module_error(e))?;
    if out.bias.is_some() {
        c.dropped.push(format!(
            "{}: {} bias change at {} (a LoRA has no bias)",
            p.adapter.name(),
            c.label,
            p.module.path
        ));
    }
    c.part = out.weight.map(LayerPart::Dense);
    Ok(Some(c))
}

/// LoRA/LoCon factors with `μ·alpha/rank` split as `sign·√|c|` on up and `√|c|` on down; a Tucker
/// `lora_mid` is folded into down (`down'[p, i, k] = Σ_q mid[p, q, k]·down[q, i]`), which is exact.
fn factors(ctx: &Ctx, t: &ModuleTensors, shape: &Shape) -> Result<LayerPart, DeltaError> {
    let down = ctx.get(Kind::Down)?;
    let up = ctx.get(Kind::Up)?;
    let r = down.shape.first().copied().unwrap_or(0);
    let (o, r_up) = up.rows_cols();
    if r == 0 || r_up != r {
        return Err(DeltaError::Invalid(format!(
            "up {:?} and down {:?} disagree on the rank",
            up.shape, down.shape
        )));
    }
    let (_, i) = down.rows_cols();
    let (mut b, mut a, rank) = if let Some(mid) = t.get(Kind::Mid) {
        let k: usize = mid.shape.iter().skip(2).product();
        if mid.shape.len() < 2 || mid.shape[0] != r || mid.shape[1] != r {
            return Err(DeltaError::Invalid(format!(
                "lora_mid {:?} does not match rank {r}",
                mid.shape
            )));
        }
        let at = transpose(&down.data, r, i); // [i, q]
        let mut a = Vec::with_capacity(r * i * k);
        for p in 0..r {
            a.extend(matmul(&at, i, r, &mid.data[p * r * k..(p + 1) * r * k], k));
        }
        (up.data.clone(), a, r)
    } else {
        let rr = ctx.dyn_rank.map_or(r, |d| d.clamp(1, r));
        let a = down.data[..rr * i].to_vec();
        let mut b = Vec::with_capacity(o * rr);
        for row in 0..o {
            b.extend_from_slice(&up.data[row * r..row * r + rr]);
        }
        (b, a, rr)
    };
    let cols = a.len() / rank;
    ctx.fits("LoRA product", &[o, cols], o * cols)?;
    if o != shape.o || cols != shape.c {
        return Err(DeltaError::Shape {
            what: "LoRA product".into(),
            got: vec![o, cols],
            want: ctx.shape.to_vec(),
        });
    }
    let c = ctx.mu * ctx.scale(rank);
    let root = c.abs().sqrt();
    let signed = root * c.signum();
    b.iter_mut().for_each(|x| *x *= signed);
    a.iter_mut().for_each(|x| *x *= root);
    Ok(LayerPart::Factors {
        up: b,
        down: a,
        rank,
    })
}

/// One layer from its parts: concatenated (exact) or truncated (svd).
fn assemble(
    module: &ModuleRef,
    target: &TargetParam,
    parts: Vec<LayerPart>,
    opts: &MergeOptions,
) -> Result<Option<LoraLayer>, MergeError> {
    let Some(shape) = Shape::of(&target.shape) else {
        return Ok(None);
    };
    let (o, c) = (shape.o, shape.c);
    let total: usize = parts
        .iter()
        .map(|p| match p {
            LayerPart::Factors { rank, .. } => *rank,
            LayerPart::Dense(_) => 0,
        })
        .sum();
    let any_dense = parts.iter().any(|p| matches!(p, LayerPart::Dense(_)));
    if total == 0 && !any_dense {
        return Ok(None);
    }
    let layer = |up: Vec<f32>, down: Vec<f32>, rank: usize, chosen: usize, error: f64| LoraLayer {
        component: module.component,
        path: module.path.clone(),
        shape: target.shape.clone(),
        rank,
        up,
        down,
        chosen_rank: chosen,
        error,
    };
    if opts.mode == Mode::Exact {
        let mut up = vec![0.0f32; o * total];
        let mut down = Vec::with_capacity(total * c);
        let mut col = 0;
        for p in &parts {
            if let LayerPart::Factors {
                up: b,
                down: a,
                rank,
            } = p
            {
                for row in 0..o {
                    up[row * total + col..row * total + col + rank]
                        .copy_from_slice(&b[row * rank..(row + 1) * rank]);
                }
                down.extend_from_slice(a);
                col += rank;
            }
        }
        return Ok(Some(layer(up, down, total, total, 0.0)));
    }
    let mut up = Mat::<f64>::zeros(o, total);
    let mut down_t = Mat::<f64>::zeros(c, total);
    let mut dense = any_dense.then(|| Mat::<f64>::zeros(o, c));
    let mut col = 0;
    for p in &parts {
        match p {
            LayerPart::Factors {
                up: b,
                down: a,
                rank,
            } => {
                for j in 0..*rank {
                    for row in 0..o {
                        up[(row, col + j)] = f64::from(b[row * rank + j]);
                    }
                    for x in 0..c {
                        down_t[(x, col + j)] = f64::from(a[j * c + x]);
                    }
                }
                col += rank;
            }
            LayerPart::Dense(d) => {
                if let Some(m) = dense.as_mut() {
                    for row in 0..o {
                        for x in 0..c {
                            m[(row, x)] += f64::from(d[row * c + x]);
                        }
                    }
                }
            }
        }
    }
    let source = match dense {
        Some(mut m) => {
            if total > 0 {
                let prod = super::linalg::mul(up.as_ref(), down_t.transpose());
                m += prod;
            }
            Source::Dense(m)
        }
        None => Source::Factors { up, down_t },
    };
    let t = svd::truncate(&shape, source, &opts.svd, seed(&module.path)).map_err(|source| {
        MergeError::Svd {
            module: module.path.clone(),
            source,
        }
    })?;
    Ok(Some(layer(t.up, t.down, t.rank, t.chosen, t.error)))
}

/// FNV-1a of the module path: a per-layer seed that does not depend on scheduling.
pub(crate) fn seed(path: &str) -> u64 {
    path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
