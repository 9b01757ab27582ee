//! IA³: `ΔW = W ⊙ w` per output row, or per input column when `on_input` (§1.9). Linear in strength.

use super::{Ctx, DeltaError};
use crate::lora::keys::Kind;

pub fn delta(ctx: &Ctx) -> Result<Vec<f32>, DeltaError> {
    let w = ctx.base()?;
    let v = ctx.get(Kind::Ia3Weight)?;
    let on_input = ctx
        .t
        .get(Kind::OnInput)
        .and_then(|t| t.scalar())
        .is_some_and(|x| x != 0.0);
    let o = ctx.shape.first().copied().unwrap_or(0);
    let i = ctx.shape.get(1).copied().unwrap_or(1);
    let k: usize = ctx.shape.iter().skip(2).product();
    let want = if on_input { i } else { o };
    if v.numel() != want {
        return Err(DeltaError::Shape {
            what: "IA3 weight".into(),
            got: v.shape.clone(),
            want: ctx.shape.to_vec(),
        });
    }
    Ok(w.iter()
        .enumerate()
        .map(|(idx, x)| {
            x * if on_input {
                v.data[(idx / k) % i]
            } else {
                v.data[idx / (i * k)]
            }
        })
        .collect())
}
