//! Norm: deltas `w_norm`/`b_norm` to a LayerNorm/GroupNorm weight and bias (§1.11). Linear in strength.

use super::full::{bias_delta, WeightBias};
use super::{Ctx, DeltaError};
use crate::lora::keys::Kind;

pub fn delta(ctx: &Ctx) -> Result<WeightBias, DeltaError> {
    let w = match ctx.t.get(Kind::WNorm) {
        Some(d) => {
            ctx.fits("w_norm", &d.shape, d.numel())?;
            Some(d.data.clone())
        }
        None => None,
    };
    Ok((w, bias_delta(ctx, Kind::BNorm, "b_norm")?))
}
