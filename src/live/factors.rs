//! Low-rank factors per UNet layer for live mode: LoRA/LoCon factors come straight from the file (a
//! Tucker core is folded into the down conv); other types give ΔW at unit strength, truncated by SVD
//! at the smallest rank under a relative Frobenius error bound, and the error is reported.

use super::strengths::{target_params, ActiveLora};
use super::LiveError;
use crate::lora::detect::{self, AdapterType, ModuleTensors};
use crate::lora::keys::{KeyIndex, Kind};
use crate::lora::{self, Adapter, ModelParams, Strengths, TargetComponent, TargetParam};
use crate::model::Model;
use std::collections::{BTreeMap, HashMap};

/// The ranks one adapter contributes to a layer: `len` ranks from `start`, each scaled by `scale`
/// (alpha/rank for LoRA, 1 for SVD factors) times the adapter's strength at the step.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Index into the job's adapters.
    pub adapter: usize,
    pub start: usize,
    pub len: usize,
    pub scale: f32,
}

/// One live layer: `ΔW = B·diag(s)·A` with every adapter's ranks side by side.
#[derive(Debug, Clone)]
pub struct LayerFactors {
    /// UNet parameter, diffusers name, torch layout (`...attn1.to_q.weight`).
    pub param: String,
    pub out_dim: usize,
    pub in_dim: usize,
    /// Kernel height and width; `None` for a Linear target.
    pub kernel: Option<[usize; 2]>,
    pub rank: usize,
    /// `[rank, in·kh·kw]` (the torch layout of a LoRA down weight).
    pub a: Vec<f32>,
    /// `[out, rank]`.
    pub b: Vec<f32>,
    pub segments: Vec<Segment>,
}

/// A layer whose factors are an SVD truncation rather than the adapter's own.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Approximation {
    pub adapter: String,
    pub param: String,
    pub label: String,
    pub rank: usize,
    /// `‖ΔW − B·A‖_F / ‖ΔW‖_F`.
    pub rel_error: f32,
}

/// Every live layer's factors, sorted by parameter name, and what was approximated.
#[derive(Debug, Clone, Default)]
pub struct Factors {
    pub layers: Vec<LayerFactors>,
    pub approximations: Vec<Approximation>,
}

impl Factors {
    pub fn max_error(&self) -> f32 {
        self.approximations
            .iter()
            .map(|a| a.rel_error)
            .fold(0.0, f32::max)
    }
}

/// One adapter's contribution to one layer before concatenation.
struct Part {
    a: Vec<f32>,
    b: Vec<f32>,
    rank: usize,
    scale: f32,
}

/// Factors of the adapters `live` (index into the job's adapters, adapter) on the UNet.
/// `max_error` bounds the relative Frobenius error of SVD truncations.
pub fn compute(
    model: &Model,
    live: &[(usize, &ActiveLora)],
    max_error: f32,
) -> Result<Factors, LiveError> {
    let params = target_params(model);
    let index = KeyIndex::build(&params);
    let shapes: HashMap<&str, &TargetParam> = params
        .iter()
        .filter(|p| p.component == TargetComponent::Unet)
        .map(|p| (p.name.as_str(), p))
        .collect();
    let mut per_layer: BTreeMap<String, Vec<(usize, Part)>> = BTreeMap::new();
    let mut approximations = Vec::new();
    for &(ai, l) in live {
        let adapter = l.adapter.as_ref();
        let g = lora::family::guess(adapter);
        lora::family::check(&g, model.index.family, &params).map_err(|message| {
            LiveError::Adapter(format!(
                "{}: refused, wrong base model: {message}",
                adapter.name()
            ))
        })?;
        let dyn_rank = l.tag.dyn_.map(|d| d as usize);
        let peft = lora::peft::PeftAlpha::from_metadata(adapter.metadata());
        let mut groups: BTreeMap<usize, BTreeMap<Kind, &str>> = BTreeMap::new();
        for key in adapter.tensors().keys() {
            if let Some((id, kind)) = index.parse(key) {
                if kind != Kind::Unsupported && index.module(id).component == TargetComponent::Unet
                {
                    groups.entry(id).or_default().entry(kind).or_insert(key);
                }
            }
        }
        let mut others = Vec::new();
        for (id, kinds) in &groups {
            let path = &index.module(*id).path;
            let wname = format!("{path}.weight");
            let Some(target) = shapes.get(wname.as_str()) else {
                continue;
            };
            let mut t = ModuleTensors::default();
            for (kind, key) in kinds {
                let x = adapter
                    .tensor(key)
                    .map_err(|e| LiveError::Adapter(format!("{}: {key}: {e}", adapter.name())))?;
                t.by_kind.insert(*kind, x);
            }
            let Some(det) = detect::detect(&t) else {
                continue;
            };
            if det.kind == AdapterType::Lora && !det.dora {
                if let (Some(p), false, Some(down)) = (&peft, t.has(Kind::Alpha), t.get(Kind::Down))
                {
                    let rank = down.shape.first().copied().unwrap_or(0);
                    if let Some(a) = p.alpha(TargetComponent::Unet, path, rank) {
                        t.by_kind
                            .insert(Kind::Alpha, lora::tensor::Tensor::new(vec![], vec![a]));
                    }
                }
                let part = lora_part(&t, &target.shape, dyn_rank)
                    .map_err(|m| LiveError::Adapter(format!("{}: {path}: {m}", adapter.name())))?;
                per_layer.entry(wname).or_default().push((ai, part));
            } else {
                others.push((wname, det.label(target.shape.len() == 4)));
            }
        }
        if !others.is_empty() {
            svd_parts(
                model,
                &params,
                adapter,
                dyn_rank,
                &others,
                max_error,
                ai,
                &mut per_layer,
                &mut approximations,
            )?;
        }
    }
    let mut layers = Vec::with_capacity(per_layer.len());
    for (param, parts) in per_layer {
        let shape = &shapes[param.as_str()].shape;
        layers.push(concat(param, shape, parts));
    }
    Ok(Factors {
        layers,
        approximations,
    })
}

/// `{m}.scale` overrides alpha/rank; no alpha means 1 (as the fuse path computes it).
fn lora_scale(t: &ModuleTensors, rank: usize) -> f32 {
    if let Some(s) = t.get(Kind::Scale).and_then(lora::tensor::Tensor::scalar) {
        return s;
    }
    match t.get(Kind::Alpha).and_then(lora::tensor::Tensor::scalar) {
        Some(a) if rank > 0 => a / rank as f32,
        _ => 1.0,
    }
}

fn lora_part(t: &ModuleTensors, shape: &[usize], dyn_rank: Option<usize>) -> Result<Part, String> {
    let (down, up) = match (t.get(Kind::Down), t.get(Kind::Up)) {
        (Some(d), Some(u)) => (d, u),
        _ => return Err("incomplete LoRA module".into()),
    };
    let o = shape.first().copied().unwrap_or(0);
    let n_in: usize = shape.iter().skip(1).product();
    let r = down.shape.first().copied().unwrap_or(0);
    if r == 0 || up.numel() != o * r {
        return Err(format!(
            "up {:?} and down {:?} do not fit {shape:?}",
            up.shape, down.shape
        ));
    }
    let mut a = if let Some(mid) = t.get(Kind::Mid) {
        // Tucker: A'[p, i, k] = Σ_q mid[p, q, k]·down[q, i], a rank-r conv of the full kernel.
        let i = down.numel() / r;
        let k: usize = mid.shape.iter().skip(2).product();
        if mid.shape.len() < 2 || mid.shape[0] != r || mid.shape[1] != r || i * k != n_in {
            return Err(format!("lora_mid {:?} does not fit {shape:?}", mid.shape));
        }
        let mut a = vec![0f32; r * i * k];
        for p in 0..r {
            for q in 0..r {
                let d = &down.data[q * i..(q + 1) * i];
                for kk in 0..k {
                    let m = mid.data[(p * r + q) * k + kk];
                    if m == 0.0 {
                        continue;
                    }
                    for (ii, dv) in d.iter().enumerate() {
                        a[(p * i + ii) * k + kk] += m * dv;
                    }
                }
            }
        }
        a
    } else {
        if down.numel() != r * n_in {
            return Err(format!("down {:?} does not fit {shape:?}", down.shape));
        }
        down.data.clone()
    };
    let mut b = up.data.clone();
    let rr = dyn_rank.map_or(r, |d| d.clamp(1, r));
    if rr < r {
        // DyLoRA: the first ranks of both factors, alpha kept.
        a.truncate(rr * n_in);
        b = (0..o)
            .flat_map(|row| up.data[row * r..row * r + rr].iter().copied())
            .collect();
    }
    Ok(Part {
        a,
        b,
        rank: rr,
        scale: lora_scale(t, rr),
    })
}

/// ΔW at unit strength of the modules in `others`, truncated by SVD.
#[allow(clippy::too_many_arguments)]
fn svd_parts(
    model: &Model,
    params: &[TargetParam],
    adapter: &Adapter,
    dyn_rank: Option<usize>,
    others: &[(String, String)],
    max_error: f32,
    ai: usize,
    per_layer: &mut BTreeMap<String, Vec<(usize, Part)>>,
    approximations: &mut Vec<Approximation>,
) -> Result<(), LiveError> {
    let base = |c: TargetComponent, name: &str| -> Option<Vec<f32>> {
        let kind = match c {
            TargetComponent::Unet => crate::model::layout::ComponentKind::Unet,
            TargetComponent::TextEncoder => crate::model::layout::ComponentKind::TextEncoder,
            TargetComponent::TextEncoder2 => crate::model::layout::ComponentKind::TextEncoder2,
        };
        model
            .component(kind)?
            .weights
            .tensor(name)
            .map(|t| t.to_f32())
    };
    let mp = ModelParams {
        family: model.index.family,
        params: params.to_vec(),
        base: &base,
    };
    let strengths = Strengths {
        te: 0.0,
        dyn_rank,
        ..Strengths::uniform(1.0)
    };
    let (deltas, _) = lora::compute_deltas(&[(adapter, strengths)], &mp)
        .map_err(|e| LiveError::Adapter(e.to_string()))?;
    for (param, label) in others {
        let Some(d) = deltas.by_param.get(&(TargetComponent::Unet, param.clone())) else {
            continue;
        };
        let Some(shape) = params
            .iter()
            .find(|p| p.component == TargetComponent::Unet && &p.name == param)
            .map(|p| &p.shape)
        else {
            continue;
        };
        let o = shape.first().copied().unwrap_or(0);
        let n = shape.iter().skip(1).product::<usize>();
        if o == 0 || n == 0 || d.len() != o * n || shape.len() < 2 {
            return Err(LiveError::Adapter(format!(
                "{}: {param}: {label} cannot run live (not a Linear or Conv weight); use --lora-method refuse",
                adapter.name()
            )));
        }
        let Some((a, b, rank, rel_error)) = truncated_svd(d, o, n, max_error) else {
            continue;
        };
        approximations.push(Approximation {
            adapter: adapter.name(),
            param: param.clone(),
            label: label.clone(),
            rank,
            rel_error,
        });
        per_layer.entry(param.clone()).or_default().push((
            ai,
            Part {
                a,
                b,
                rank,
                scale: 1.0,
            },
        ));
    }
    // Bias and norm deltas have no low-rank form; refusing is clearer than dropping them.
    if let Some(((_, p), _)) = deltas
        .by_param
        .iter()
        .find(|((c, p), _)| *c == TargetComponent::Unet && !p.ends_with(".weight"))
    {
        return Err(LiveError::Adapter(format!(
            "{}: {p}: bias deltas cannot run live; use --lora-method refuse",
            adapter.name()
        )));
    }
    Ok(())
}

/// `ΔW ≈ B·A` (`d` is `[o, n]`) at the smallest rank whose relative Frobenius error is within
/// `max_error`: returns (A `[k, n]`, B `[o, k]`, k, error); None for a zero ΔW.
pub fn truncated_svd(
    d: &[f32],
    o: usize,
    n: usize,
    max_error: f32,
) -> Option<(Vec<f32>, Vec<f32>, usize, f32)> {
    let m = faer::Mat::<f32>::from_fn(o, n, |i, j| d[i * n + j]);
    let svd = m.thin_svd().ok()?;
    let s: Vec<f64> = (0..o.min(n)).map(|i| f64::from(svd.S()[i])).collect();
    let total: f64 = s.iter().map(|x| x * x).sum();
    if total == 0.0 {
        return None;
    }
    let bound = f64::from(max_error.max(0.0));
    let mut tail = total;
    let mut k = 0;
    while k < s.len() {
        tail -= s[k] * s[k];
        k += 1;
        if (tail.max(0.0) / total).sqrt() <= bound {
            break;
        }
    }
    let err = (tail.max(0.0) / total).sqrt() as f32;
    let (u, v) = (svd.U(), svd.V());
    let a: Vec<f32> = (0..k)
        .flat_map(|r| (0..n).map(move |j| v[(j, r)]))
        .collect();
    let mut b = Vec::with_capacity(o * k);
    for i in 0..o {
        b.extend((0..k).map(|r| u[(i, r)] * s[r] as f32));
    }
    Some((a, b, k, err))
}

fn concat(param: String, shape: &[usize], parts: Vec<(usize, Part)>) -> LayerFactors {
    let o = shape.first().copied().unwrap_or(0);
    let n_in: usize = shape.iter().skip(1).product();
    let rank: usize = parts.iter().map(|(_, p)| p.rank).sum();
    let mut a = Vec::with_capacity(rank * n_in);
    let mut b = vec![0f32; o * rank];
    let mut segments = Vec::with_capacity(parts.len());
    let mut start = 0;
    for (adapter, p) in &parts {
        a.extend_from_slice(&p.a);
        for row in 0..o {
            b[row * rank + start..row * rank + start + p.rank]
                .copy_from_slice(&p.b[row * p.rank..(row + 1) * p.rank]);
        }
        segments.push(Segment {
            adapter: *adapter,
            start,
            len: p.rank,
            scale: p.scale,
        });
        start += p.rank;
    }
    let kernel = (shape.len() == 4).then(|| [shape[2], shape[3]]);
    LayerFactors {
        param,
        out_dim: o,
        in_dim: shape.get(1).copied().unwrap_or(0),
        kernel,
        rank,
        a,
        b,
        segments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svd_truncation_keeps_the_rank_and_reports_the_error() {
        // A rank-2 matrix: the bound 1e-4 needs exactly 2 ranks and reproduces it.
        let (o, n) = (5, 4);
        let u = [1.0f32, 2.0, 0.5, -1.0, 3.0];
        let v = [0.5f32, -1.0, 2.0, 1.0];
        let w = [1.0f32, 0.0, -1.0, 0.5, 0.2];
        let x = [0.0f32, 1.0, 1.0, -2.0];
        let d: Vec<f32> = (0..o)
            .flat_map(|i| (0..n).map(move |j| u[i] * v[j] + w[i] * x[j]))
            .collect();
        let (a, b, k, err) = truncated_svd(&d, o, n, 1e-4).unwrap();
        assert_eq!(k, 2);
        assert!(err < 1e-4);
        for i in 0..o {
            for j in 0..n {
                let got: f32 = (0..k).map(|r| b[i * k + r] * a[r * n + j]).sum();
                assert!((got - d[i * n + j]).abs() < 1e-4);
            }
        }
        let (_, _, k1, err1) = truncated_svd(&d, o, n, 0.9).unwrap();
        assert_eq!(k1, 1);
        assert!(err1 > 0.0 && err1 <= 0.9);
    }
}
