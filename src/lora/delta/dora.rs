//! DoRA on LoRA/LoHa/LoKr: rescale `V = W + s·ΔW` to the stored magnitude `dora_scale` (§1.5).
//!
//! The axis comes from the `dora_scale` shape (`[O,1..]` output rows, `[1,I,..]` input columns). Strength
//! follows LyCORIS (`W' = V·(μ(m/‖V‖−1)+1)`, so μ scales the magnitude step, not ΔW; μ=0 leaves `V`),
//! not ComfyUI's `W + μ(W_d − W)`: the project follows LyCORIS where the tools disagree.

use super::{Ctx, DeltaError};
use crate::lora::keys::Kind;

/// f32 machine epsilon, added to the norm as LyCORIS does (`torch.finfo(float32).eps`).
const EPS: f32 = f32::EPSILON;

/// `sdw` is `s·ΔW` (no strength). Returns `W' − W`.
pub fn apply(ctx: &Ctx, sdw: Vec<f32>) -> Result<Vec<f32>, DeltaError> {
    let w = ctx.base()?;
    let m = ctx.get(Kind::DoraScale)?;
    let o = ctx.shape.first().copied().unwrap_or(0);
    let i = ctx.shape.get(1).copied().unwrap_or(1);
    let k: usize = ctx.shape.iter().skip(2).product();
    let n = m.numel();
    let out_axis = if m.shape.first() == Some(&o) && n == o {
        true
    } else if n == i
        && m.shape
            .first()
            .is_none_or(|&d| d == 1 || m.shape.len() == 1)
    {
        false
    } else {
        return Err(DeltaError::Shape {
            what: "dora_scale".into(),
            got: m.shape.clone(),
            want: ctx.shape.to_vec(),
        });
    };
    let v: Vec<f32> = w.iter().zip(&sdw).map(|(a, b)| a + b).collect();
    let mut g = vec![0.0f32; n];
    // Norms accumulate in f64; torch's f32 reduction differs by far less than the test tolerance.
    if out_axis {
        for (row, gr) in g.iter_mut().enumerate() {
            let s: f64 = v[row * i * k..(row + 1) * i * k]
                .iter()
                .map(|x| f64::from(*x).powi(2))
                .sum();
            *gr = s.sqrt() as f32;
        }
    } else {
        let mut acc = vec![0.0f64; i];
        for (idx, x) in v.iter().enumerate() {
            acc[(idx / k) % i] += f64::from(*x).powi(2);
        }
        for (gc, s) in g.iter_mut().zip(acc) {
            *gc = s.sqrt() as f32;
        }
    }
    for (gv, mv) in g.iter_mut().zip(&m.data) {
        let ratio = mv / (*gv + EPS);
        *gv = if ctx.mu == 1.0 {
            ratio
        } else {
            ctx.mu * (ratio - 1.0) + 1.0
        };
    }
    Ok(v.iter()
        .zip(w)
        .enumerate()
        .map(|(idx, (vv, wv))| {
            let f = if out_axis {
                g[idx / (i * k)]
            } else {
                g[(idx / k) % i]
            };
            vv * f - wv
        })
        .collect())
}
