//! LoKr: `s·kron(W1, W2)` with each factor full, low-rank, or (W2) Tucker (§1.4).
//!
//! Scale as LyCORIS: 1 when both factors are full, else `alpha/rank` with the rank of the decomposed
//! factor (W2's wins, as in ComfyUI; LyCORIS uses one rank for both so they agree on its files).

use super::lora::{scale_by, tucker, TuckerDims};
use super::{Ctx, DeltaError};
use crate::lora::keys::Kind;
use crate::lora::tensor::{kron, matmul, transpose, Tensor};

/// A factor as a row-major `[rows, cols]` matrix (conv W2 flattened over `d·kh·kw`).
fn product(a: &Tensor, b: &Tensor) -> Result<(Vec<f32>, usize, usize), DeltaError> {
    let (m, ra) = a.rows_cols();
    let (rb, n) = b.rows_cols();
    if ra != rb {
        return Err(DeltaError::Invalid(format!(
            "LoKr factors {:?} @ {:?} do not chain",
            a.shape, b.shape
        )));
    }
    Ok((matmul(&a.data, m, ra, &b.data, n), m, n))
}

pub fn delta(ctx: &Ctx) -> Result<Vec<f32>, DeltaError> {
    let mut rank = None;
    let (w1, a, c) = if let Some(w1) = ctx.t.get(Kind::LokrW1) {
        let (a, c) = w1.rows_cols();
        (w1.data.clone(), a, c)
    } else {
        let (x, y) = (ctx.get(Kind::LokrW1A)?, ctx.get(Kind::LokrW1B)?);
        rank = y.shape.first().copied();
        product(x, y)?
    };
    let (w2, b, dk) = if let Some(w2) = ctx.t.get(Kind::LokrW2) {
        let (b, dk) = w2.rows_cols();
        (w2.data.clone(), b, dk)
    } else {
        let (x, y) = (ctx.get(Kind::LokrW2A)?, ctx.get(Kind::LokrW2B)?);
        rank = y.shape.first().copied();
        if let Some(t2) = ctx.t.get(Kind::LokrT2) {
            // W2[p,q,k] = Σ t2[i,j,k]·w2_a[i,p]·w2_b[j,q]
            let (ra, bb) = x.rows_cols();
            let (rb, d) = y.rows_cols();
            let k: usize = t2.shape.iter().skip(2).product();
            if t2.shape.len() < 2 || t2.shape[0] != ra || t2.shape[1] != rb {
                return Err(DeltaError::Invalid(format!(
                    "lokr_t2 {:?} does not match ranks {ra}/{rb}",
                    t2.shape
                )));
            }
            (
                tucker(
                    &transpose(&x.data, ra, bb),
                    &t2.data,
                    &y.data,
                    TuckerDims {
                        o: bb,
                        r1: ra,
                        r2: rb,
                        k,
                        i: d,
                    },
                ),
                bb,
                d * k,
            )
        } else {
            product(x, y)?
        }
    };
    let got = [a * b, c * dk];
    ctx.fits("LoKr product", &got, a * b * c * dk)?;
    let s = match rank {
        None => 1.0,
        Some(r) => ctx.scale(r),
    };
    Ok(scale_by(kron(&w1, a, c, &w2, b, dk), s))
}
