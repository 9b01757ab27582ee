//! A decoded f32 tensor (torch layout) and the few dense kernels the delta types share.
//!
//! Products go through faer's GEMM on row-major views; everything is f32 as the reference tools compute.

use faer::{Accum, MatMut, MatRef, Par};

/// Dense row-major f32 tensor with its torch shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// `[shape[0], prod(rest)]` (LyCORIS' `flat()`).
    pub fn rows_cols(&self) -> (usize, usize) {
        let rows = self.shape.first().copied().unwrap_or(1);
        let cols = self.data.len().checked_div(rows).unwrap_or(0);
        (rows, cols)
    }

    /// The scalar value of a `[]`/`[1]` tensor (alpha, on_input).
    pub fn scalar(&self) -> Option<f32> {
        (self.data.len() == 1).then(|| self.data[0])
    }
}

/// `a[m,k] @ b[k,n]`, row-major, single-threaded (callers parallelise across layers).
pub fn matmul(a: &[f32], m: usize, k: usize, b: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    if m == 0 || n == 0 {
        return out;
    }
    if k == 0 {
        return out;
    }
    let lhs = MatRef::from_row_major_slice(a, m, k);
    let rhs = MatRef::from_row_major_slice(b, k, n);
    let dst = MatMut::from_row_major_slice_mut(&mut out, m, n);
    faer::linalg::matmul::matmul(dst, Accum::Replace, lhs, rhs, 1.0f32, Par::Seq);
    out
}

/// Transpose of a row-major `[m, n]` matrix.
pub fn transpose(a: &[f32], m: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            out[j * m + i] = a[i * n + j];
        }
    }
    out
}

/// Kronecker product of row-major `a[p,q]` and `b[r,s]` → `[p·r, q·s]`.
pub fn kron(a: &[f32], p: usize, q: usize, b: &[f32], r: usize, s: usize) -> Vec<f32> {
    let cols = q * s;
    let mut out = vec![0.0f32; p * r * cols];
    for i in 0..p {
        for j in 0..q {
            let aij = a[i * q + j];
            for x in 0..r {
                let row = (i * r + x) * cols + j * s;
                let brow = &b[x * s..x * s + s];
                for (o, bv) in out[row..row + s].iter_mut().zip(brow) {
                    *o = aij * bv;
                }
            }
        }
    }
    out
}

/// Inverse of a small dense `n×n` matrix (Gauss-Jordan, partial pivoting, f64 inside).
pub fn invert(a: &[f32], n: usize) -> Option<Vec<f32>> {
    let w = 2 * n;
    let mut m = vec![0.0f64; n * w];
    for i in 0..n {
        for j in 0..n {
            m[i * w + j] = f64::from(a[i * n + j]);
        }
        m[i * w + n + i] = 1.0;
    }
    for c in 0..n {
        let piv = (c..n).max_by(|&x, &y| m[x * w + c].abs().total_cmp(&m[y * w + c].abs()))?;
        if m[piv * w + c].abs() < 1e-12 {
            return None;
        }
        if piv != c {
            for j in 0..w {
                m.swap(c * w + j, piv * w + j);
            }
        }
        let d = m[c * w + c];
        for j in 0..w {
            m[c * w + j] /= d;
        }
        for r in 0..n {
            if r != c {
                let f = m[r * w + c];
                if f != 0.0 {
                    for j in 0..w {
                        m[r * w + j] -= f * m[c * w + j];
                    }
                }
            }
        }
    }
    let mut out = vec![0.0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = m[i * w + n + j] as f32;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_kron_invert_small() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(matmul(&a, 2, 2, &[1.0, 0.0, 0.0, 1.0], 2), a.to_vec());
        assert_eq!(
            kron(&[1.0, 2.0], 1, 2, &[1.0, 10.0], 2, 1),
            vec![1.0, 2.0, 10.0, 20.0]
        );
        let inv = invert(&a, 2).unwrap_or_default();
        let id = matmul(&a, 2, 2, &inv, 2);
        for (x, y) in id.iter().zip([1.0, 0.0, 0.0, 1.0]) {
            assert!((x - y).abs() < 1e-6);
        }
        assert_eq!(transpose(&[1.0, 2.0, 3.0], 1, 3), vec![1.0, 2.0, 3.0]);
    }
}
