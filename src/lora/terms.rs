//! One parameter's adapter terms, for a patch that applies strengths itself (the device patch):
//! LoRA/LoCon factors as the file has them (alpha/rank folded into `up`, a Tucker core folded into
//! `down`); every other type as its dense ΔW, at unit strength when ΔW is linear in the strength,
//! else (DoRA, OFT, BOFT) at the planned strength. [`super::planned::PlannedDeltas::terms`] gives them.

use super::delta::{Ctx, Out};
use super::detect::AdapterType;
use super::keys::Kind;
use super::walk::Walk;
use super::LoraError;
pub use crate::patch::program::Delta as TermData;

/// One term of `Σ sᵢ·ΔWᵢ`: which adapter, its strength at this parameter now, and whether ΔW
/// scales with it (`false`: the data already holds the strength, and another needs a new term).
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub adapter: usize,
    /// The weight whose strength the term takes (`{module}.weight`, for its bias too): region and
    /// block weights are looked up by it, so a new strength is found without the adapter's tensors.
    pub at: String,
    pub strength: f32,
    pub linear: bool,
    pub data: TermData,
}

/// The term of module `id` of adapter `ai` for its bias (`want_bias`) or weight; None when it adds
/// nothing there.
pub(super) fn module_term(
    walk: &Walk,
    ai: usize,
    id: usize,
    want_bias: bool,
) -> Result<Option<Term>, LoraError> {
    let Some(mut p) = walk.prepare(ai, id)? else {
        return Ok(None);
    };
    let strength = p.mu;
    let linear = !(p.det.dora || matches!(p.det.kind, AdapterType::DiagOft | AdapterType::Boft));
    if !want_bias && linear && p.det.kind == AdapterType::Lora {
        if let Some((up, down, rank)) = p.with_ctx(factors) {
            return Ok(Some(Term {
                adapter: ai,
                at: p.wname.clone(),
                strength,
                linear,
                data: TermData::Factors { up, down, rank },
            }));
        }
    }
    if linear {
        p.mu = 1.0;
    }
    let at = p.wname.clone();
    let Out { weight, bias } = super::prepared_delta(p, id)?.out;
    let d = if want_bias { bias } else { weight };
    Ok(d.map(|d| Term {
        adapter: ai,
        at,
        strength,
        linear,
        data: TermData::Dense(d),
    }))
}

/// `(scale·up, down, rank)` of a LoRA/LoCon module, the Tucker core folded into `down`; None when
/// the tensors do not check out (the dense path then reports why, as the host fuse does).
fn factors(ctx: &Ctx) -> Option<(Vec<f32>, Vec<f32>, usize)> {
    let down = ctx.t.get(Kind::Down)?;
    let up = ctx.t.get(Kind::Up)?;
    let r = down.shape.first().copied()?;
    let (o, r_up) = up.rows_cols();
    let (_, cols) = down.rows_cols();
    if r == 0 || r_up != r {
        return None;
    }
    if let Some(mid) = ctx.t.get(Kind::Mid) {
        let k: usize = mid.shape.iter().skip(2).product();
        if mid.shape.len() < 2 || mid.shape[0] != r || mid.shape[1] != r {
            return None;
        }
        if o * cols * k != ctx.numel() || mid.data.len() != r * r * k {
            return None;
        }
        // down'[p, i·k + kk] = Σ_q mid[p, q, kk]·down[q, i]: ΔW = up·down' in [out, in, kh, kw].
        let mut folded = vec![0.0f32; r * cols * k];
        for p in 0..r {
            for q in 0..r {
                let m = &mid.data[(p * r + q) * k..(p * r + q + 1) * k];
                let a = &down.data[q * cols..(q + 1) * cols];
                let row = &mut folded[p * cols * k..(p + 1) * cols * k];
                for (i, av) in a.iter().enumerate() {
                    for (kk, mv) in m.iter().enumerate() {
                        row[i * k + kk] += mv * av;
                    }
                }
            }
        }
        let s = ctx.scale(r);
        return Some((up.data.iter().map(|x| x * s).collect(), folded, r));
    }
    if o * cols != ctx.numel() {
        return None;
    }
    let rr = ctx.dyn_rank.map_or(r, |d| d.clamp(1, r));
    let s = ctx.scale(rr);
    let down = down.data[..rr * cols].to_vec();
    let up = (0..o)
        .flat_map(|row| up.data[row * r..row * r + rr].iter().map(|x| x * s))
        .collect();
    Some((up, down, rr))
}
