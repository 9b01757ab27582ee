//! One layer's ΔW → kohya LoRA factors at a rank chosen by kohya's rules, with its relative error.
//!
//! ΔW comes as stacked factors (QR of each side, SVD of the small core: exact and cheap) or dense
//! (full SVD, or randomized when asked for a fixed rank). Factors follow kohya: `up = U·diag(S)`,
//! `down = Vᵀ`, alpha = rank; rank rules are `resize_lora.py`'s, fixed ranks `svd_merge_lora.py`'s.

use faer::{Mat, MatRef};

use super::linalg::{self, NoConvergence};

/// kohya `resize_lora.py` dynamic methods (`--dynamic_method`, `--dynamic_param`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dynamic {
    SvRatio(f64),
    SvFro(f64),
    SvCumulative(f64),
}

/// How the rank of each layer is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RankRule {
    /// The rank (kohya `new_rank`); with a dynamic method, the cap. None: no cap.
    pub rank: Option<usize>,
    /// 3×3 convolutions (kohya `new_conv_rank`); None: `rank`.
    pub conv_rank: Option<usize>,
    pub dynamic: Option<Dynamic>,
}

/// kohya's zero-matrix threshold (`MIN_SV`).
const MIN_SV: f64 = 1e-6;

impl RankRule {
    /// Checks that a rank or a method is given and parameters are in range.
    pub fn validate(&self) -> Result<(), String> {
        if self.rank == Some(0) || self.conv_rank == Some(0) {
            return Err("a rank must be at least 1".into());
        }
        match self.dynamic {
            None if self.rank.is_none() => {
                Err("give --rank R or one of --sv-ratio, --sv-fro, --sv-cumulative".into())
            }
            Some(Dynamic::SvRatio(p)) if !(p.is_finite() && p > 0.0) => {
                Err(format!("--sv-ratio {p}: give a number > 0"))
            }
            Some(Dynamic::SvFro(p) | Dynamic::SvCumulative(p))
                if !(p.is_finite() && p > 0.0 && p <= 1.0) =>
            {
                Err(format!(
                    "{p}: --sv-fro and --sv-cumulative take a fraction in (0, 1]"
                ))
            }
            _ => Ok(()),
        }
    }

    /// Short form for metadata: `rank=32`, `sv_fro=0.9,max=32`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match self.dynamic {
            Some(Dynamic::SvRatio(p)) => parts.push(format!("sv_ratio={p}")),
            Some(Dynamic::SvFro(p)) => parts.push(format!("sv_fro={p}")),
            Some(Dynamic::SvCumulative(p)) => parts.push(format!("sv_cumulative={p}")),
            None => {}
        }
        let key = if self.dynamic.is_some() {
            "max"
        } else {
            "rank"
        };
        if let Some(r) = self.rank {
            parts.push(format!("{key}={r}"));
        }
        if let Some(r) = self.conv_rank {
            parts.push(format!("conv_{key}={r}"));
        }
        parts.join(",")
    }

    fn limit(&self, conv3x3: bool) -> Option<usize> {
        if conv3x3 {
            self.conv_rank.or(self.rank)
        } else {
            self.rank
        }
    }

    /// The rank kohya would pick for singular values `s` (non-increasing, zeros after `s.len()` up
    /// to `full_len = min(O, I·k·k)`) of a layer with `o` outputs and `i` input channels.
    pub fn choose(&self, s: &[f64], full_len: usize, shape: &Shape) -> usize {
        let limit = self.limit(shape.conv3x3);
        let Some(d) = self.dynamic else {
            // svd_merge_lora: min(new_rank, in_dim, out_dim) with channel counts.
            return limit.unwrap_or(usize::MAX).min(shape.o).min(shape.i);
        };
        let s0 = s.first().copied().unwrap_or(0.0);
        let len = full_len.max(1);
        let clamp = |index: usize| index.min(len - 1).max(1);
        let index = match d {
            Dynamic::SvRatio(p) => clamp(s.iter().filter(|&&x| x > s0 / p).count()),
            Dynamic::SvCumulative(p) => clamp(searchsorted(s, len, p, |x| x) + 1),
            Dynamic::SvFro(p) => clamp(searchsorted(s, len, p * p, |x| x * x) + 1),
        };
        let rank = index + 1;
        if s0 <= MIN_SV {
            1
        } else {
            limit.map_or(rank, |l| rank.min(l))
        }
    }
}

/// torch.searchsorted (left) of `target` in `cumsum(f(S)) / Σf(S)` over `len` entries (S padded with 0).
fn searchsorted(s: &[f64], len: usize, target: f64, f: impl Fn(f64) -> f64) -> usize {
    let total: f64 = s.iter().map(|&x| f(x)).sum();
    let mut cum = 0.0;
    for i in 0..len {
        cum += s.get(i).map_or(0.0, |&x| f(x));
        if cum / total >= target {
            return i;
        }
    }
    len
}

/// The layer a ΔW belongs to: `o` outputs, `i` input channels, `c = i·kh·kw` columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub o: usize,
    pub i: usize,
    pub c: usize,
    pub conv3x3: bool,
}

impl Shape {
    /// From a torch weight shape `[O, I]` or `[O, I, kh, kw]`; None for other ranks.
    pub fn of(shape: &[usize]) -> Option<Shape> {
        match *shape {
            [o, i] => Some(Shape {
                o,
                i,
                c: i,
                conv3x3: false,
            }),
            [o, i, kh, kw] => Some(Shape {
                o,
                i,
                c: i * kh * kw,
                conv3x3: kh * kw > 1,
            }),
            _ => None,
        }
    }
}

/// A layer's ΔW.
pub enum Source {
    /// `up @ down_tᵀ`: `up` `[O, R]`, `down_t` `[C, R]`.
    Factors { up: Mat<f64>, down_t: Mat<f64> },
    /// `[O, C]`.
    Dense(Mat<f64>),
}

/// Options of [`truncate`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Options {
    pub rule: RankRule,
    /// kohya's clamp: both factors to ±quantile(signed values of up and down, q).
    pub clamp: Option<f64>,
    /// Dense ΔW with a fixed rank: randomized SVD (rank + 10 columns, 2 power iterations).
    pub randomized: bool,
}

/// The truncated factors of one layer.
#[derive(Debug, Clone)]
pub struct Truncated {
    /// `[O, rank]`, row-major.
    pub up: Vec<f32>,
    /// `[rank, C]`, row-major.
    pub down: Vec<f32>,
    pub rank: usize,
    /// What the rank rule chose; `rank` is smaller only when ΔW has fewer nonzero singular values.
    pub chosen: usize,
    /// ‖ΔW − up·down‖_F / ‖ΔW‖_F (0 for a zero ΔW).
    pub error: f64,
}

/// Truncates one layer's ΔW. `seed` feeds the randomized SVD.
pub fn truncate(
    shape: &Shape,
    source: Source,
    opts: &Options,
    seed: u64,
) -> Result<Truncated, NoConvergence> {
    let full_len = shape.o.min(shape.c);
    let source = match source {
        // QR of a factor wider than tall gains nothing; the dense SVD is as cheap.
        Source::Factors { up, down_t } if up.ncols() >= full_len => {
            Source::Dense(linalg::mul(up.as_ref(), down_t.transpose()))
        }
        s => s,
    };
    let (vectors, s, norm2, dense) = match source {
        Source::Factors { up, down_t } => {
            let qu = linalg::ThinQr::new(up.as_ref());
            let qd = linalg::ThinQr::new(down_t.as_ref());
            let core = linalg::mul(qu.r.as_ref(), qd.r.transpose());
            let linalg::Svd { u: uc, s, v: vc } = linalg::thin_svd(core.as_ref())?;
            let norm2 = s.iter().map(|x| x * x).sum();
            let dense = opts
                .clamp
                .map(|_| linalg::mul(up.as_ref(), down_t.transpose()));
            (
                Vectors::Factored(Box::new((qu, qd)), uc, vc),
                s,
                norm2,
                dense,
            )
        }
        Source::Dense(a) => {
            let norm2 = a.as_ref().squared_norm_l2();
            let fixed = opts.rule.choose(&[1.0], full_len, shape);
            let linalg::Svd { u, s, v } =
                if opts.randomized && opts.rule.dynamic.is_none() && 2 * (fixed + 10) < full_len {
                    linalg::randomized_svd(a.as_ref(), fixed + 10, 2, seed)?
                } else {
                    linalg::thin_svd(a.as_ref())?
                };
            (Vectors::Dense { u, v }, s, norm2, Some(a))
        }
    };
    let chosen = opts.rule.choose(&s, full_len, shape);
    let k = chosen.min(s.len());
    let (u, v) = vectors.first(k);
    let mut up = Mat::from_fn(shape.o, k, |r, j| u[(r, j)] * s[j]);
    let mut down = Mat::from_fn(k, shape.c, |j, col| v[(col, j)]);
    canonical_signs(&mut up, &mut down);
    let error = match (opts.clamp, dense) {
        (Some(q), Some(a)) => {
            clamp(&mut up, &mut down, q);
            let approx = linalg::mul(up.as_ref(), down.as_ref());
            let resid = Mat::from_fn(shape.o, shape.c, |r, c| a[(r, c)] - approx[(r, c)]);
            ratio(resid.as_ref().squared_norm_l2(), norm2)
        }
        // A truncated SVD (or the projection a randomized one gives) keeps Σ_{j<k} S_j² of ‖ΔW‖².
        _ => ratio(norm2 - s[..k].iter().map(|x| x * x).sum::<f64>(), norm2),
    };
    Ok(Truncated {
        up: linalg::to_rows(up.as_ref()),
        down: linalg::to_rows(down.as_ref()),
        rank: k,
        chosen,
        error,
    })
}

/// Singular vectors, formed only for the columns that are kept.
enum Vectors {
    /// `U = Q_u·U_core`, `V = Q_d·V_core`: multiplying through the reflectors costs as much as forming
    /// `Q`, so only the first `k` columns are ever computed.
    Factored(Box<(linalg::ThinQr, linalg::ThinQr)>, Mat<f64>, Mat<f64>),
    Dense {
        u: Mat<f64>,
        v: Mat<f64>,
    },
}

impl Vectors {
    fn first(&self, k: usize) -> (Mat<f64>, Mat<f64>) {
        match self {
            Vectors::Factored(q, uc, vc) => {
                (q.0.q_times(uc.get(.., ..k)), q.1.q_times(vc.get(.., ..k)))
            }
            Vectors::Dense { u, v } => (u.get(.., ..k).to_owned(), v.get(.., ..k).to_owned()),
        }
    }
}

fn ratio(resid2: f64, norm2: f64) -> f64 {
    if norm2 > 0.0 {
        (resid2.max(0.0) / norm2).sqrt()
    } else {
        0.0
    }
}

/// SVD signs are arbitrary; kohya's clamp is not sign-symmetric, so fix them: the largest-magnitude
/// entry of each `down` row is made positive (the Python reference does the same).
pub fn canonical_signs(up: &mut Mat<f64>, down: &mut Mat<f64>) {
    for j in 0..down.nrows() {
        let mut best = 0.0f64;
        for c in 0..down.ncols() {
            let x = down[(j, c)];
            if x.abs() > best.abs() {
                best = x;
            }
        }
        if best < 0.0 {
            for c in 0..down.ncols() {
                down[(j, c)] = -down[(j, c)];
            }
            for r in 0..up.nrows() {
                up[(r, j)] = -up[(r, j)];
            }
        }
    }
}

/// kohya: `hi = quantile(cat(up, down), q)` (signed values, linear interpolation), both to `[-hi, hi]`.
fn clamp(up: &mut Mat<f64>, down: &mut Mat<f64>, q: f64) {
    let mut vals: Vec<f64> =
        Vec::with_capacity(up.nrows() * up.ncols() + down.nrows() * down.ncols());
    vals.extend(flat(up.as_ref()));
    vals.extend(flat(down.as_ref()));
    if vals.is_empty() {
        return;
    }
    vals.sort_by(f64::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (vals.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi_i = (lo + 1).min(vals.len() - 1);
    let hi = vals[lo] + (vals[hi_i] - vals[lo]) * (pos - lo as f64);
    for m in [up, down] {
        for c in 0..m.ncols() {
            for r in 0..m.nrows() {
                m[(r, c)] = m[(r, c)].clamp(-hi.abs(), hi.abs());
            }
        }
    }
}

fn flat(m: MatRef<'_, f64>) -> impl Iterator<Item = f64> + '_ {
    (0..m.nrows()).flat_map(move |r| (0..m.ncols()).map(move |c| m[(r, c)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIN: Shape = Shape {
        o: 10,
        i: 6,
        c: 6,
        conv3x3: false,
    };

    fn rule(rank: Option<usize>, dynamic: Option<Dynamic>) -> RankRule {
        RankRule {
            rank,
            conv_rank: None,
            dynamic,
        }
    }

    #[test]
    fn kohya_rank_rules_by_hand() {
        let s = [8.0, 4.0, 2.0, 1.0, 0.5, 0.25];
        // sv_ratio 5: #{S > 1.6} = 3, rank 3 + 1.
        assert_eq!(
            rule(None, Some(Dynamic::SvRatio(5.0))).choose(&s, 6, &LIN),
            4
        );
        // cumulative: cumsum/Σ = .5079, .7619, .8889, .9524, ...; 0.9 → index 3, +1, +1.
        assert_eq!(
            rule(None, Some(Dynamic::SvCumulative(0.9))).choose(&s, 6, &LIN),
            5
        );
        // fro: S² cumsum/Σ = .7529, .9412, .9882, ...; 0.95² = .9025 → index 1, +1, +1.
        assert_eq!(
            rule(None, Some(Dynamic::SvFro(0.95))).choose(&s, 6, &LIN),
            3
        );
        // Capped by --rank; clamped below len - 1; a zero matrix gets rank 1.
        assert_eq!(
            rule(Some(2), Some(Dynamic::SvCumulative(0.9))).choose(&s, 6, &LIN),
            2
        );
        assert_eq!(
            rule(None, Some(Dynamic::SvRatio(1e9))).choose(&s, 6, &LIN),
            6
        );
        assert_eq!(
            rule(None, Some(Dynamic::SvRatio(2.0))).choose(&[0.0; 6], 6, &LIN),
            1
        );
        assert_eq!(rule(Some(32), None).choose(&s, 6, &LIN), 6);
    }

    #[test]
    fn factors_and_dense_agree_and_report_their_error() {
        let up = Mat::from_fn(10, 3, |r, c| ((r * 3 + c) as f64 * 0.7).sin());
        let down_t = Mat::from_fn(6, 3, |r, c| ((r + 5 * c) as f64 * 0.3).cos());
        let dense = linalg::mul(up.as_ref(), down_t.transpose());
        let opts = Options {
            rule: rule(Some(2), None),
            ..Options::default()
        };
        let a = truncate(&LIN, Source::Factors { up, down_t }, &opts, 1)
            .unwrap_or_else(|e| panic!("{e}"));
        let b = truncate(&LIN, Source::Dense(dense.clone()), &opts, 1)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.rank, b.rank), (2, 2));
        for (x, y) in a.up.iter().zip(&b.up).chain(a.down.iter().zip(&b.down)) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        let approx = crate::lora::tensor::matmul(&a.up, 10, 2, &a.down, 6);
        let (mut r2, mut n2) = (0.0f64, 0.0f64);
        for (i, x) in approx.iter().enumerate() {
            let w = dense[(i / 6, i % 6)];
            r2 += (w - f64::from(*x)).powi(2);
            n2 += w * w;
        }
        assert!(((r2 / n2).sqrt() - a.error).abs() < 1e-6);
    }
}
