//! LoRA / LoCon (incl. DyLoRA files and the Tucker `lora_mid` form): `s·flat(B)@flat(A)` reshaped (§1.1, §1.2).
//!
//! DyLoRA truncation keeps the first `dyn` ranks of both factors and keeps alpha, as kohya's extractor does.

use super::{Ctx, DeltaError};
use crate::lora::keys::Kind;
use crate::lora::tensor::{matmul, transpose, Tensor};

/// Sizes of a Tucker rebuild: `b` is `[o, r1]`, `m` is `[r1, r2, k]`, `a` is `[r2, i]`.
#[derive(Debug, Clone, Copy)]
pub struct TuckerDims {
    pub o: usize,
    pub r1: usize,
    pub r2: usize,
    pub k: usize,
    pub i: usize,
}

/// `ΔW[o,i,k] = Σ_{p,q} B[o,p]·M[p,q,k]·A[q,i]`: Tucker rebuild shared by LoCon, LoHa and LoKr; result `[o, i, k]`.
pub fn tucker(b: &[f32], m: &[f32], a: &[f32], d: TuckerDims) -> Vec<f32> {
    let TuckerDims { o, r1, r2, k, i } = d;
    let bm = matmul(b, o, r1, m, r2 * k); // [o, r2, k]
    let at = transpose(a, r2, i); // [i, r2]
    let mut out = Vec::with_capacity(o * i * k);
    for row in 0..o {
        out.extend(matmul(&at, i, r2, &bm[row * r2 * k..(row + 1) * r2 * k], k));
    }
    out
}

/// `s·ΔW` for the target (unscaled by strength).
pub fn delta(ctx: &Ctx) -> Result<Vec<f32>, DeltaError> {
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
    if let Some(mid) = ctx.t.get(Kind::Mid) {
        let (_, i) = down.rows_cols();
        let k: usize = mid.shape.iter().skip(2).product();
        if mid.shape.len() < 2 || mid.shape[0] != r || mid.shape[1] != r {
            return Err(DeltaError::Invalid(format!(
                "lora_mid {:?} does not match rank {r}",
                mid.shape
            )));
        }
        let d = tucker(
            &up.data,
            &mid.data,
            &down.data,
            TuckerDims {
                o,
                r1: r,
                r2: r,
                k,
                i,
            },
        );
        ctx.fits("LoCon (Tucker) product", &[o, i, k], d.len())?;
        return Ok(scale_by(d, ctx.scale(r)));
    }
    let (a, b, rr) = truncate(down, up, r, o, ctx.dyn_rank);
    let (_, i) = down.rows_cols();
    ctx.fits("LoRA product", &[o, i], o * i)?;
    let d = matmul(&b, o, rr, &a, i);
    Ok(scale_by(d, ctx.scale(rr)))
}

fn truncate(
    down: &Tensor,
    up: &Tensor,
    r: usize,
    o: usize,
    dyn_rank: Option<usize>,
) -> (Vec<f32>, Vec<f32>, usize) {
    let rr = dyn_rank.map_or(r, |d| d.clamp(1, r));
    if rr == r {
        return (down.data.clone(), up.data.clone(), r);
    }
    let (_, i) = down.rows_cols();
    let a = down.data[..rr * i].to_vec();
    let mut b = Vec::with_capacity(o * rr);
    for row in 0..o {
        b.extend_from_slice(&up.data[row * r..row * r + rr]);
    }
    (a, b, rr)
}

pub(super) fn scale_by(mut v: Vec<f32>, s: f32) -> Vec<f32> {
    if s != 1.0 {
        v.iter_mut().for_each(|x| *x *= s);
    }
    v
}
