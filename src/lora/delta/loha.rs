//! LoHa: `s·(w1a@w1b) ⊙ (w2a@w2b)`, or with Tucker cores `hada_t1/t2` (wk_a stored transposed) (§1.3).
//!
//! The rank is `hada_w1_b.shape[0]` in every reference tool.

use super::lora::{scale_by, tucker, TuckerDims};
use super::{Ctx, DeltaError};
use crate::lora::keys::Kind;
use crate::lora::tensor::{matmul, transpose};

pub fn delta(ctx: &Ctx) -> Result<Vec<f32>, DeltaError> {
    let (w1a, w1b) = (ctx.get(Kind::HadaW1A)?, ctx.get(Kind::HadaW1B)?);
    let (w2a, w2b) = (ctx.get(Kind::HadaW2A)?, ctx.get(Kind::HadaW2B)?);
    let r = w1b.shape.first().copied().unwrap_or(0);
    let (p1, p2) = if let (Some(t1), Some(t2)) = (ctx.t.get(Kind::HadaT1), ctx.t.get(Kind::HadaT2))
    {
        let half = |wa: &crate::lora::tensor::Tensor,
                    wb: &crate::lora::tensor::Tensor,
                    t: &crate::lora::tensor::Tensor| {
            let (ra, o) = wa.rows_cols();
            let (rb, i) = wb.rows_cols();
            let k: usize = t.shape.iter().skip(2).product();
            if t.shape.len() < 2 || t.shape[0] != ra || t.shape[1] != rb {
                return Err(DeltaError::Invalid(format!(
                    "hada_t {:?} does not match ranks {ra}/{rb}",
                    t.shape
                )));
            }
            Ok(tucker(
                &transpose(&wa.data, ra, o),
                &t.data,
                &wb.data,
                TuckerDims {
                    o,
                    r1: ra,
                    r2: rb,
                    k,
                    i,
                },
            ))
        };
        (half(w1a, w1b, t1)?, half(w2a, w2b, t2)?)
    } else {
        let prod = |a: &crate::lora::tensor::Tensor, b: &crate::lora::tensor::Tensor| {
            let (o, ra) = a.rows_cols();
            let (rb, i) = b.rows_cols();
            if ra != rb {
                return Err(DeltaError::Invalid(format!(
                    "hada factors {:?} @ {:?} do not chain",
                    a.shape, b.shape
                )));
            }
            Ok(matmul(&a.data, o, ra, &b.data, i))
        };
        (prod(w1a, w1b)?, prod(w2a, w2b)?)
    };
    if p1.len() != p2.len() {
        return Err(DeltaError::Invalid(
            "the two Hadamard factors differ in size".into(),
        ));
    }
    ctx.fits(
        "LoHa product",
        &[w1a.shape.first().copied().unwrap_or(0), p1.len()],
        p1.len(),
    )?;
    let d: Vec<f32> = p1.iter().zip(&p2).map(|(a, b)| a * b).collect();
    Ok(scale_by(d, ctx.scale(r)))
}
