//! GLoRA: `s·(W ×_in (a1@a2) + b1@b2)` for the current LyCORIS layout, and ComfyUI's reading of the old
//! layout `s·(W@a2@a1 + b2@b1)` (§1.6). Linear in strength; needs the base weight.

use super::lora::scale_by;
use super::{Ctx, DeltaError};
use crate::lora::keys::Kind;
use crate::lora::tensor::{matmul, transpose};

pub fn delta(ctx: &Ctx) -> Result<Vec<f32>, DeltaError> {
    let w = ctx.base()?;
    let (a1, a2) = (ctx.get(Kind::GloraA1)?, ctx.get(Kind::GloraA2)?);
    let (b1, b2) = (ctx.get(Kind::GloraB1)?, ctx.get(Kind::GloraB2)?);
    let o = ctx.shape.first().copied().unwrap_or(0);
    let i = ctx.shape.get(1).copied().unwrap_or(1);
    let k: usize = ctx.shape.iter().skip(2).product();
    let (a1r, a1c) = a1.rows_cols();
    let (a2r, a2c) = a2.rows_cols();
    let (b1r, b1c) = b1.rows_cols();
    let (b2r, b2c) = b2.rows_cols();
    // New layout: a1 [I,r], a2 [r,I], b1 [O,r], b2 [r,I·k]. Old: a1 [r,I], a2 [I,r], b1 [r,I], b2 [O,r].
    let new = a1r == i && a2c == i && b1r == o && a1c == a2r && b1c == b2r;
    let (p, wb, r) = if new {
        (
            matmul(&a1.data, i, a1c, &a2.data, i),
            matmul(&b1.data, o, b1c, &b2.data, b2c),
            a2r,
        )
    } else if a2r == i && a1c == i && b2r == o && b2c == b1r && k == 1 {
        (
            matmul(&a2.data, i, a2c, &a1.data, i),
            matmul(&b2.data, o, b2c, &b1.data, b1c),
            a1r,
        )
    } else {
        return Err(DeltaError::Shape {
            what: format!(
                "GLoRA factors a1 {:?}, a2 {:?}, b1 {:?}, b2 {:?}",
                a1.shape, a2.shape, b1.shape, b2.shape
            ),
            got: a1.shape.clone(),
            want: ctx.shape.to_vec(),
        });
    };
    ctx.fits("GLoRA b1@b2", &b2.shape, wb.len())?;
    // (W ×_in P)[o,j,k] = Σ_i W[o,i,k]·P[i,j]: move k next to o, multiply, move it back.
    let wt: Vec<f32> = (0..o)
        .flat_map(|row| transpose(&w[row * i * k..(row + 1) * i * k], i, k))
        .collect();
    let wp = matmul(&wt, o * k, i, &p, i);
    let mut out = wb;
    for row in 0..o {
        let back = transpose(&wp[row * k * i..(row + 1) * k * i], k, i);
        for (x, y) in out[row * i * k..(row + 1) * i * k].iter_mut().zip(back) {
            *x += y;
        }
    }
    Ok(scale_by(out, ctx.scale(r)))
}
