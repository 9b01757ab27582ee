//! Full / diff: `diff` has the weight's shape, `diff_b` the bias's (§1.10). Linear in strength.

use super::{Ctx, DeltaError};
use crate::lora::keys::Kind;

pub type WeightBias = (Option<Vec<f32>>, Option<Vec<f32>>);

/// A bias-shaped vector checked against the model's bias.
pub(super) fn bias_delta(ctx: &Ctx, k: Kind, what: &str) -> Result<Option<Vec<f32>>, DeltaError> {
    let Some(t) = ctx.t.get(k) else {
        return Ok(None);
    };
    match ctx.bias_shape {
        Some(bs) if bs.iter().product::<usize>() == t.numel() => Ok(Some(t.data.clone())),
        Some(bs) => Err(DeltaError::Shape {
            what: what.into(),
            got: t.shape.clone(),
            want: bs.to_vec(),
        }),
        None => Err(DeltaError::Invalid(format!(
            "{what} given but the model's module has no bias"
        ))),
    }
}

pub fn delta(ctx: &Ctx) -> Result<WeightBias, DeltaError> {
    let w = match ctx.t.get(Kind::Diff) {
        Some(d) => {
            // Exact shape match as ComfyUI requires; only the Linear↔1×1-conv reshape is let through.
            ctx.fits("diff", &d.shape, d.numel())?;
            Some(d.data.clone())
        }
        None => None,
    };
    Ok((w, bias_delta(ctx, Kind::DiffB, "diff_b")?))
}
