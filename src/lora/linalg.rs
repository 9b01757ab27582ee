//! Dense f64 kernels for merge and extract: thin QR, thin SVD, randomized SVD and products over faer.
//!
//! Every call runs with `Par::Seq`: callers give each layer its own rayon task, and nesting faer's
//! own threads inside would only oversubscribe the cores. f64 keeps the reported errors meaningful.

use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::householder;
use faer::linalg::qr::no_pivoting::factor as qr;
use faer::linalg::svd::{self, ComputeSvdVectors};
use faer::{Accum, Conj, Mat, MatRef, Par};

/// The SVD did not converge (faer's only failure; it does not happen on finite input).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the singular value decomposition did not converge")]
pub struct NoConvergence;

/// Row-major f32 `[m, n]` → f64 matrix.
pub fn from_rows(a: &[f32], m: usize, n: usize) -> Mat<f64> {
    Mat::from_fn(m, n, |i, j| f64::from(a[i * n + j]))
}

/// f64 matrix → row-major f32.
pub fn to_rows(a: MatRef<'_, f64>) -> Vec<f32> {
    let (m, n) = a.shape();
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            out.push(a[(i, j)] as f32);
        }
    }
    out
}

/// `a @ b`.
pub fn mul(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::zeros(a.nrows(), b.ncols());
    faer::linalg::matmul::matmul(out.as_mut(), Accum::Replace, a, b, 1.0, Par::Seq);
    out
}

/// Thin QR of a tall matrix, with `Q` kept as Householder reflectors: multiplying by `Q` costs as much
/// as forming it, so callers that need only a few columns of `Q·X` never form `Q`.
pub struct ThinQr {
    basis: Mat<f64>,
    coeff: Mat<f64>,
    /// `[n, n]`, upper triangular (echelon when `a` is rank-deficient).
    pub r: Mat<f64>,
}

impl ThinQr {
    /// Factors `a` `[m, n]`, `m ≥ n`.
    pub fn new(a: MatRef<'_, f64>) -> ThinQr {
        let (m, n) = a.shape();
        debug_assert!(m >= n);
        let mut f = a.to_owned();
        let bs = qr::recommended_block_size::<f64>(m, n);
        let mut coeff = Mat::<f64>::zeros(bs, n);
        qr::qr_in_place(
            f.as_mut(),
            coeff.as_mut(),
            Par::Seq,
            MemStack::new(&mut MemBuffer::new(qr::qr_in_place_scratch::<f64>(
                m,
                n,
                bs,
                Par::Seq,
                Default::default(),
            ))),
            Default::default(),
        );
        let mut r = Mat::zeros(n, n);
        for j in 0..n {
            for i in 0..=j {
                r[(i, j)] = f[(i, j)];
            }
        }
        // The reflectors are the unit lower trapezoid (as faer's own `Qr::compute_thin_Q` reads them).
        for j in 0..n {
            for i in 0..j {
                f[(i, j)] = 0.0;
            }
            f[(j, j)] = 1.0;
        }
        ThinQr { basis: f, coeff, r }
    }

    /// `Q·x` for `x` `[n, k]`: `[m, k]`.
    pub fn q_times(&self, x: MatRef<'_, f64>) -> Mat<f64> {
        let (m, n) = self.basis.shape();
        let k = x.ncols();
        let mut out = Mat::<f64>::zeros(m, k);
        for j in 0..k {
            for i in 0..n {
                out[(i, j)] = x[(i, j)];
            }
        }
        householder::apply_block_householder_sequence_on_the_left_in_place_with_conj(
            self.basis.as_ref(),
            self.coeff.as_ref(),
            Conj::No,
            out.as_mut(),
            Par::Seq,
            MemStack::new(&mut MemBuffer::new(
                householder::apply_block_householder_sequence_on_the_left_in_place_scratch::<f64>(
                    m,
                    self.coeff.nrows(),
                    k,
                ),
            )),
        );
        out
    }
}

/// Thin QR of a tall `a` (`m ≥ n`): `a = Q·R`, `Q` `[m, n]` with orthonormal columns, `R` `[n, n]`.
pub fn thin_qr(a: MatRef<'_, f64>) -> (Mat<f64>, Mat<f64>) {
    let f = ThinQr::new(a);
    let n = a.ncols();
    let q = f.q_times(Mat::<f64>::identity(n, n).as_ref());
    (q, f.r)
}

/// `a = U·diag(S)·Vᵀ`, singular values non-increasing.
pub struct Svd {
    pub u: Mat<f64>,
    pub s: Vec<f64>,
    pub v: Mat<f64>,
}

/// Thin SVD `a = U·diag(S)·Vᵀ`, singular values non-increasing; `U` `[m, k]`, `V` `[n, k]`, `k = min(m, n)`.
pub fn thin_svd(a: MatRef<'_, f64>) -> Result<Svd, NoConvergence> {
    let (m, n) = a.shape();
    let k = m.min(n);
    let mut u = Mat::zeros(m, k);
    let mut v = Mat::zeros(n, k);
    let mut s = Diag::<f64>::zeros(k);
    if k == 0 {
        return Ok(Svd {
            u,
            s: Vec::new(),
            v,
        });
    }
    svd::svd(
        a,
        s.as_mut(),
        Some(u.as_mut()),
        Some(v.as_mut()),
        Par::Seq,
        MemStack::new(&mut MemBuffer::new(svd::svd_scratch::<f64>(
            m,
            n,
            ComputeSvdVectors::Thin,
            ComputeSvdVectors::Thin,
            Par::Seq,
            Default::default(),
        ))),
        Default::default(),
    )
    .map_err(|_| NoConvergence)?;
    let s = (0..k).map(|i| s[i]).collect();
    Ok(Svd { u, s, v })
}

/// Randomized SVD (Halko, Martinsson & Tropp 2011, alg. 4.4): the top `l` singular triplets of `a`
/// from a Gaussian sketch of `l` columns and `power` subspace iterations. The result is `Q·Qᵀ·a`'s
/// SVD for an orthonormal `Q`, so truncating it is an orthogonal projection of `a` (the error formula
/// of [`super::svd`] holds). `seed` makes it reproducible.
pub fn randomized_svd(
    a: MatRef<'_, f64>,
    l: usize,
    power: usize,
    seed: u64,
) -> Result<Svd, NoConvergence> {
    let (m, n) = a.shape();
    let l = l.min(m).min(n);
    let mut rng = Normal::new(seed);
    let omega = Mat::from_fn(n, l, |_, _| rng.next());
    let (mut q, _) = thin_qr(mul(a, omega.as_ref()).as_ref());
    for _ in 0..power {
        let (z, _) = thin_qr(mul(a.transpose(), q.as_ref()).as_ref());
        q = thin_qr(mul(a, z.as_ref()).as_ref()).0;
    }
    let b = mul(q.transpose(), a); // [l, n]
    let Svd { u: ub, s, v } = thin_svd(b.as_ref())?;
    Ok(Svd {
        u: mul(q.as_ref(), ub.as_ref()),
        s,
        v,
    })
}

/// Standard normal values from xorshift64* and Box–Muller: deterministic, no dependency.
struct Normal {
    state: u64,
    spare: Option<f64>,
}

impl Normal {
    fn new(seed: u64) -> Self {
        Normal {
            state: seed | 1,
            spare: None,
        }
    }
    fn uniform(&mut self) -> f64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let x = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d);
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn next(&mut self) -> f64 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        self.spare = Some(r * t.sin());
        r * t.cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: MatRef<'_, f64>, b: MatRef<'_, f64>, tol: f64) -> bool {
        (0..a.nrows()).all(|i| (0..a.ncols()).all(|j| (a[(i, j)] - b[(i, j)]).abs() < tol))
    }

    #[test]
    fn qr_and_svd_reconstruct() {
        let a = Mat::from_fn(7, 3, |i, j| {
            ((i * 3 + j) as f64).sin() + (i == j) as u8 as f64
        });
        let (q, r) = thin_qr(a.as_ref());
        assert!(close(
            mul(q.as_ref(), r.as_ref()).as_ref(),
            a.as_ref(),
            1e-12
        ));
        let qtq = mul(q.transpose(), q.as_ref());
        assert!(close(
            qtq.as_ref(),
            Mat::<f64>::identity(3, 3).as_ref(),
            1e-12
        ));
        let Svd { u, s, v } = thin_svd(a.as_ref()).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.windows(2).all(|w| w[0] >= w[1]));
        let us = Mat::from_fn(7, 3, |i, j| u[(i, j)] * s[j]);
        assert!(close(
            mul(us.as_ref(), v.transpose()).as_ref(),
            a.as_ref(),
            1e-12
        ));
        // Rank-deficient input (faer's QR then builds an echelon R): still a = Q·R with orthonormal Q.
        let d = Mat::from_fn(9, 4, |i, j| match j {
            0 | 2 => (i as f64).cos(),
            1 => 0.0,
            _ => (i as f64 * 0.3).sin(),
        });
        let (q, r) = thin_qr(d.as_ref());
        assert!(close(
            mul(q.as_ref(), r.as_ref()).as_ref(),
            d.as_ref(),
            1e-12
        ));
        let qtq = mul(q.transpose(), q.as_ref());
        assert!(close(
            qtq.as_ref(),
            Mat::<f64>::identity(4, 4).as_ref(),
            1e-12
        ));
        // A rank-3 matrix is recovered exactly by a sketch of 5 columns.
        let Svd {
            u: u2,
            s: s2,
            v: v2,
        } = randomized_svd(a.as_ref(), 5, 1, 7).unwrap_or_else(|e| panic!("{e}"));
        let us2 = Mat::from_fn(7, s2.len(), |i, j| u2[(i, j)] * s2[j]);
        assert!(close(
            mul(us2.as_ref(), v2.transpose()).as_ref(),
            a.as_ref(),
            1e-10
        ));
    }
}
