//! Diag-OFT (3-D `oft_blocks`) and BOFT (4-D): orthogonal rotations of the base weight's output rows (§1.7, §1.8).
//!
//! As LyCORIS: constraint `alpha·O` on the Frobenius norm of all skew blocks, Cayley `R=(I+Q)(I−Q)⁻¹`,
//! strength interpolating each R towards I, optional `rescale`. ComfyUI uses `c = alpha` and μ² instead;
//! the project follows LyCORIS. Diag-OFT multiplies by Rᵀ, BOFT by R.

use super::{Ctx, DeltaError};
use crate::lora::keys::Kind;
use crate::lora::tensor::{invert, matmul, transpose};

/// `μR + (1−μ)I` for every block of `t` (`[..., b, b]`), with the global norm constraint.
fn rotations(ctx: &Ctx, t: &[f32], b: usize, o: usize) -> Result<Vec<Vec<f32>>, DeltaError> {
    let blocks = t.len() / (b * b);
    let mut q = vec![0.0f32; t.len()];
    for blk in 0..blocks {
        let base = blk * b * b;
        for r in 0..b {
            for c in 0..b {
                q[base + r * b + c] = t[base + r * b + c] - t[base + c * b + r];
            }
        }
    }
    let alpha = ctx
        .t
        .get(Kind::Alpha)
        .and_then(|a| a.scalar())
        .unwrap_or(0.0);
    let c = alpha * o as f32;
    if c > 0.0 {
        let norm = q.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt() as f32 + 1e-8;
        if norm > c {
            q.iter_mut().for_each(|x| *x *= c / norm);
        }
    }
    let mut out = Vec::with_capacity(blocks);
    for blk in 0..blocks {
        let qb = &q[blk * b * b..(blk + 1) * b * b];
        let mut plus = qb.to_vec();
        let mut minus: Vec<f32> = qb.iter().map(|x| -x).collect();
        for d in 0..b {
            plus[d * b + d] += 1.0;
            minus[d * b + d] += 1.0;
        }
        let inv = invert(&minus, b)
            .ok_or_else(|| DeltaError::Invalid("OFT block I−Q is singular".into()))?;
        let mut r = matmul(&plus, b, b, &inv, b);
        if ctx.mu != 1.0 {
            r.iter_mut().for_each(|x| *x *= ctx.mu);
            for d in 0..b {
                r[d * b + d] += 1.0 - ctx.mu;
            }
        }
        out.push(r);
    }
    Ok(out)
}

fn rescale_and_diff(
    ctx: &Ctx,
    mut x: Vec<f32>,
    w: &[f32],
    cols: usize,
) -> Result<Vec<f32>, DeltaError> {
    if let Some(rho) = ctx.t.get(Kind::Rescale) {
        if rho.numel() * cols != x.len() {
            return Err(DeltaError::Shape {
                what: "rescale".into(),
                got: rho.shape.clone(),
                want: ctx.shape.to_vec(),
            });
        }
        for (row, s) in rho.data.iter().enumerate() {
            x[row * cols..(row + 1) * cols]
                .iter_mut()
                .for_each(|v| *v *= s);
        }
    }
    Ok(x.iter().zip(w).map(|(a, b)| a - b).collect())
}

fn dims(ctx: &Ctx) -> (usize, usize) {
    let o = ctx.shape.first().copied().unwrap_or(0);
    (o, ctx.numel().checked_div(o).unwrap_or(0))
}

pub fn diag(ctx: &Ctx) -> Result<Vec<f32>, DeltaError> {
    let w = ctx.base()?;
    let t = ctx.get(Kind::OftBlocks)?;
    let (o, cols) = dims(ctx);
    let [n, b, b2] = t.shape[..] else {
        return Err(DeltaError::Invalid(format!(
            "oft_blocks {:?} is not [n, b, b]",
            t.shape
        )));
    };
    if b != b2 || n * b != o {
        return Err(DeltaError::Shape {
            what: "oft_blocks".into(),
            got: t.shape.clone(),
            want: ctx.shape.to_vec(),
        });
    }
    let rs = rotations(ctx, &t.data, b, o)?;
    let mut x = Vec::with_capacity(w.len());
    for (j, r) in rs.iter().enumerate() {
        let rt = transpose(r, b, b);
        x.extend(matmul(
            &rt,
            b,
            b,
            &w[j * b * cols..(j + 1) * b * cols],
            cols,
        ));
    }
    rescale_and_diff(ctx, x, w, cols)
}

pub fn butterfly(ctx: &Ctx) -> Result<Vec<f32>, DeltaError> {
    let w = ctx.base()?;
    let t = ctx.get(Kind::OftBlocks)?;
    let (o, cols) = dims(ctx);
    let [m, n, b, b2] = t.shape[..] else {
        return Err(DeltaError::Invalid(format!(
            "oft_blocks {:?} is not [m, n, b, b]",
            t.shape
        )));
    };
    if b != b2 || n * b != o || b % 2 != 0 {
        return Err(DeltaError::Shape {
            what: "BOFT oft_blocks".into(),
            got: t.shape.clone(),
            want: ctx.shape.to_vec(),
        });
    }
    let rs = rotations(ctx, &t.data, b, o)?;
    let mut x = w.to_vec();
    for l in 0..m {
        let k = (b / 2) << l;
        if o % (2 * k) != 0 {
            return Err(DeltaError::Invalid(format!(
                "BOFT level {l} does not divide {o} rows"
            )));
        }
        // Row permutation π(c·2k + g·k + t) = c·2k + 2t + g, then block products, then π⁻¹.
        let perm = |row: usize| {
            let (c, rest) = (row / (2 * k), row % (2 * k));
            let (g, tt) = (rest / k, rest % k);
            c * 2 * k + 2 * tt + g
        };
        let mut y = vec![0.0f32; x.len()];
        for row in 0..o {
            let to = perm(row);
            y[to * cols..(to + 1) * cols].copy_from_slice(&x[row * cols..(row + 1) * cols]);
        }
        let mut z = Vec::with_capacity(y.len());
        for j in 0..n {
            z.extend(matmul(
                &rs[l * n + j],
                b,
                b,
                &y[j * b * cols..(j + 1) * b * cols],
                cols,
            ));
        }
        for row in 0..o {
            let from = perm(row);
            x[row * cols..(row + 1) * cols].copy_from_slice(&z[from * cols..(from + 1) * cols]);
        }
    }
    rescale_and_diff(ctx, x, w, cols)
}
