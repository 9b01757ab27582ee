//! The patch program's f16 path, arranged on the host: [`arrange`] turns a site of an f16 graph
//! (f16 base copy, every term low rank) into one product `A·B` in the graph's layout ([`Arranged`]),
//! A's entries tagged with the strength that scales them, B split into f16 halves.
//!
//! The program then computes every such site's weight as one Gemm, `base + α·A₃·B₃`, after a few
//! operations shared by all sites (strengths applied to every A entry at once, A split into f16
//! halves): `A₃ = [Ahi | Alo | Ahi]`, `B₃ = [Bhi; Bhi; Blo]`, so the f32-accumulating Gemm sees ΔW
//! to about 22 bits and the sum is rounded to f16 once. Factors are scaled by powers of two (undone
//! by α, exactly) so that their halves stay clear of f16's subnormals and overflow.

use super::program::{Delta, Site};
use crate::model::weightmap::Transform;
use crate::model::ElemType;

/// The magnitude each factor is scaled to: far from f16's subnormals, and `s·up` stays finite
/// for strengths up to 1000.
const FACTOR_TOP: f32 = 64.0;

/// The slot of an A entry that no strength scales (a term that holds its strength, or a zero).
pub const UNSCALED: u32 = u32::MAX;

/// One site's low-rank sum as `α·A·B`, with rows of A in the graph's order.
#[derive(Debug, Clone, PartialEq)]
pub struct Arranged {
    /// A, `[m, k]` row-major, before strengths.
    pub a: Vec<f32>,
    /// The strength slot of each entry of `a` ([`UNSCALED`]: none).
    pub slots: Vec<u32>,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// B's halves, `[3k, n]`: hi, hi, lo (against A₃'s hi, lo, hi).
    pub b3: Vec<half::f16>,
    /// The graph holds `(A·B)ᵀ` (`[n, m]`) instead of `A·B` (`[m, n]`).
    pub transposed: bool,
    pub alpha: f32,
}

/// The power of two that brings the largest magnitude of `v` near [`FACTOR_TOP`] (0 for zeros).
fn exponent(v: &[f32]) -> i32 {
    let top = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if top > 0.0 && top.is_finite() {
        (FACTOR_TOP / top).log2().floor() as i32
    } else {
        0
    }
}

/// `v` as f16 `hi` plus f16 `lo`, `hi + lo` = `v` to about 22 bits of `v`'s largest magnitude
/// when that is near [`FACTOR_TOP`].
pub fn split_f16(v: &[f32]) -> (Vec<half::f16>, Vec<half::f16>) {
    let hi: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
    let lo = v
        .iter()
        .zip(&hi)
        .map(|(&x, h)| half::f16::from_f32(x - h.to_f32()))
        .collect();
    (hi, lo)
}

/// One part's factors: A columns `[o, Σ rank]` with their slots, B rows `[Σ rank, n]`; `nhwc` (a
/// conv's torch shape) reorders B's columns from (cin, kh, kw) to (kh, kw, cin).
struct PartFactors {
    a: Vec<f32>,
    slots: Vec<u32>,
    b: Vec<f32>,
    k: usize,
}

fn part_factors(
    part: &super::program::Part,
    nhwc: Option<&[usize]>,
    fa: f32,
    fb: f32,
) -> PartFactors {
    let o = part.shape[0].max(1);
    let n = part.shape.iter().product::<usize>() / o;
    let k: usize = part
        .terms
        .iter()
        .map(|t| match &t.delta {
            Delta::Factors { rank, .. } => *rank,
            Delta::Dense(_) => 0,
        })
        .sum();
    let mut a = vec![0.0; o * k];
    let mut slots = vec![UNSCALED; o * k];
    let mut b = Vec::with_capacity(k * n);
    let mut at = 0;
    for t in &part.terms {
        let Delta::Factors { up, down, rank } = &t.delta else {
            continue;
        };
        let slot = t.slot.map_or(UNSCALED, |s| s as u32);
        for row in 0..o {
            for j in 0..*rank {
                a[row * k + at + j] = up[row * rank + j] * fa;
                slots[row * k + at + j] = slot;
            }
        }
        for r in 0..*rank {
            let row = &down[r * n..(r + 1) * n];
            match nhwc {
                Some(&[_, cin, kh, kw]) => {
                    for y in 0..kh {
                        for x in 0..kw {
                            b.extend((0..cin).map(|c| row[(c * kh + y) * kw + x] * fb));
                        }
                    }
                }
                _ => b.extend(row.iter().map(|x| x * fb)),
            }
        }
        at += rank;
    }
    PartFactors { a, slots, b, k }
}

/// `site` as one product, or None when it does not qualify: not an f16 weight over an f16 base,
/// a term without factors or with a value that is not finite, shapes that do not agree.
pub fn arrange(site: &Site) -> Option<Arranged> {
    let e = site.entry;
    if site.elem != ElemType::F16 || site.base_elem != ElemType::F16 {
        return None;
    }
    let terms = || site.parts.iter().flat_map(|p| &p.terms);
    terms().next()?;
    let (mut ea, mut eb) = (i32::MAX, i32::MAX);
    for t in terms() {
        let Delta::Factors { up, down, rank } = &t.delta else {
            return None;
        };
        if !up.iter().chain(down).all(|x| x.is_finite()) || *rank == 0 {
            return None;
        }
        // One power of two for all of a site's ups and one for its downs, so terms of different
        // magnitudes share the product.
        ea = ea.min(exponent(up));
        eb = eb.min(exponent(down));
    }
    if !(-100..=100).contains(&(ea + eb)) {
        return None;
    }
    let (fa, fb) = (2f32.powi(ea), 2f32.powi(eb));
    let torch = &site.parts.first()?.shape;
    if torch.is_empty() || site.parts.iter().any(|p| &p.shape != torch) {
        return None;
    }
    let per_part: usize = torch.iter().product();
    let single = site.parts.len() == 1;
    for p in &site.parts {
        let o = p.shape[0].max(1);
        for t in &p.terms {
            if let Delta::Factors { up, down, rank } = &t.delta {
                if up.len() != o * rank || down.len() != rank * (per_part / o) {
                    return None;
                }
            }
        }
    }
    let (a, slots, b, m, k, n, transposed) = match e.transform {
        Transform::Identity | Transform::Transpose if single => {
            if e.transform == Transform::Transpose && torch.len() != 2 {
                return None;
            }
            let f = part_factors(&site.parts[0], None, fa, fb);
            let o = torch[0].max(1);
            let t = e.transform == Transform::Transpose;
            (f.a, f.slots, f.b, o, f.k, per_part / o, t)
        }
        Transform::Nhwc if single && torch.len() == 4 => {
            let f = part_factors(&site.parts[0], Some(torch), fa, fb);
            (f.a, f.slots, f.b, torch[0], f.k, per_part / torch[0], false)
        }
        Transform::PackHeads => {
            let heads = e.heads;
            if torch.len() != 2 || heads == 0 || torch[0] % heads != 0 {
                return None;
            }
            let (rows, cin, parts) = (torch[0], torch[1], site.parts.len());
            let dim = rows / heads;
            let fs: Vec<PartFactors> = site
                .parts
                .iter()
                .map(|p| part_factors(p, None, fa, fb))
                .collect();
            let k: usize = fs.iter().map(|f| f.k).sum();
            let m = rows * parts;
            let mut a = vec![0.0; m * k];
            let mut slots = vec![UNSCALED; m * k];
            let mut b = Vec::with_capacity(k * cin);
            let mut off = 0;
            // Packed row (head, part, d) is row (head, d) of that part.
            for (p, f) in fs.iter().enumerate() {
                for h in 0..heads {
                    for d in 0..dim {
                        let (src, dst) = (h * dim + d, (h * parts + p) * dim + d);
                        let from = &f.a[src * f.k..(src + 1) * f.k];
                        a[dst * k + off..dst * k + off + f.k].copy_from_slice(from);
                        let from = &f.slots[src * f.k..(src + 1) * f.k];
                        slots[dst * k + off..dst * k + off + f.k].copy_from_slice(from);
                    }
                }
                b.extend_from_slice(&f.b);
                off += f.k;
            }
            (a, slots, b, m, k, cin, true)
        }
        _ => return None,
    };
    if m * n != e.shape.iter().product::<usize>() || k == 0 {
        return None;
    }
    let (hi, lo) = split_f16(&b);
    let b3 = [&hi, &hi, &lo].into_iter().flatten().copied().collect();
    Some(Arranged {
        a,
        slots,
        m,
        k,
        n,
        b3,
        transposed,
        alpha: 2f32.powi(-(ea + eb)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::program::tests::entry;
    use crate::patch::program::{Part, Term};

    /// A rank-2 term for a `[o, i]` weight with distinct values.
    fn lora(o: usize, i: usize, slot: Option<usize>, seed: f32) -> Term {
        let v = |n: usize, s: f32| (0..n).map(|j| ((j as f32 + s) * 0.37).sin()).collect();
        Term {
            slot,
            delta: Delta::Factors {
                up: v(o * 2, seed),
                down: v(2 * i, seed + 5.0),
                rank: 2,
            },
        }
    }

    /// Σ sᵢ·upᵢ·downᵢ of a part, torch layout `[o, numel/o]`, in f64.
    fn delta(part: &Part, strengths: &[f64]) -> Vec<f64> {
        let o = part.shape[0];
        let n = part.shape.iter().product::<usize>() / o;
        let mut d = vec![0.0; o * n];
        for t in &part.terms {
            let Delta::Factors { up, down, rank } = &t.delta else {
                panic!()
            };
            let s = t.slot.map_or(1.0, |s| strengths[s]);
            for r in 0..o {
                for c in 0..n {
                    d[r * n + c] += s
                        * (0..*rank)
                            .map(|j| up[r * rank + j] as f64 * down[j * n + c] as f64)
                            .sum::<f64>();
                }
            }
        }
        d
    }

    /// `α·A₃·B₃` as the program computes it (strengths applied, A split at run time), laid out as
    /// the graph holds it.
    fn product(x: &Arranged, strengths: &[f64]) -> Vec<f64> {
        let a: Vec<f32> =
            x.a.iter()
                .zip(&x.slots)
                .map(|(v, &s)| {
                    let s = if s == UNSCALED {
                        1.0
                    } else {
                        strengths[s as usize]
                    };
                    v * s as f32
                })
                .collect();
        let (hi, lo) = split_f16(&a);
        let (k, n) = (x.k, x.n);
        let mut out = vec![0.0; x.m * n];
        for r in 0..x.m {
            for c in 0..n {
                let mut sum = 0.0f64;
                for j in 0..k {
                    let b = |h: usize| x.b3[(h * k + j) * n + c].to_f64();
                    sum += hi[r * k + j].to_f64() * b(0)
                        + lo[r * k + j].to_f64() * b(1)
                        + hi[r * k + j].to_f64() * b(2);
                }
                let at = if x.transposed { c * x.m + r } else { r * n + c };
                out[at] = sum * x.alpha as f64;
            }
        }
        out
    }

    fn close(got: &[f64], want: &[f64]) {
        let top = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= top * 2f64.powi(-20),
                "{g} vs {w} (top {top})"
            );
        }
    }

    #[test]
    fn every_transform_arranges_the_sum_of_its_terms_in_the_graphs_layout() {
        let strengths = [0.8, -1.3];
        // Identity and Transpose of a linear, NHWC of a 1×2 conv, two terms of which one unscaled.
        for (transform, graph) in [
            (Transform::Identity, vec![4, 6]),
            (Transform::Transpose, vec![6, 4]),
            (Transform::Nhwc, vec![4, 1, 2, 3]),
        ] {
            let torch = if transform == Transform::Nhwc {
                vec![4, 3, 1, 2]
            } else {
                vec![4, 6]
            };
            let e = entry(transform, &graph, 1);
            let part = Part {
                shape: torch.clone(),
                terms: vec![lora(4, 6, Some(1), 0.0), lora(4, 6, None, 3.0)],
            };
            let want = delta(&part, &strengths);
            let want: Vec<f64> = match transform {
                Transform::Transpose => (0..24).map(|i| want[(i % 4) * 6 + i / 4]).collect(),
                Transform::Nhwc => (0..24)
                    .map(|i| {
                        // NHWC index (o, y=0, x, c) from torch (o, c, 0, x).
                        let (o, x, c) = (i / 6, (i / 3) % 2, i % 3);
                        want[o * 6 + c * 2 + x]
                    })
                    .collect(),
                _ => want,
            };
            let site = Site {
                entry: &e,
                elem: ElemType::F16,
                base_elem: ElemType::F16,
                parts: vec![part],
            };
            let x = arrange(&site).expect("qualifies");
            assert_eq!((x.m, x.k, x.n), (4, 4, 6), "{transform:?}");
            close(&product(&x, &strengths), &want);
        }
    }

    #[test]
    fn packed_heads_interleave_the_parts_by_head_and_leave_parts_without_terms_zero() {
        let strengths = [0.5];
        let parts = vec![
            Part {
                shape: vec![4, 3],
                terms: vec![lora(4, 3, Some(0), 1.0)],
            },
            Part {
                shape: vec![4, 3],
                terms: Vec::new(),
            },
            Part {
                shape: vec![4, 3],
                terms: vec![lora(4, 3, None, 2.0)],
            },
        ];
        let e = entry(Transform::PackHeads, &[3, 12], 3);
        let deltas: Vec<Vec<f64>> = parts
            .iter()
            .map(|p| {
                if p.terms.is_empty() {
                    vec![0.0; 12]
                } else {
                    delta(p, &strengths)
                }
            })
            .collect();
        // Packed row (head h, part p, d) of 2 heads of 2 rows, transposed: [cin, 12].
        let mut want = vec![0.0; 36];
        for h in 0..2 {
            for p in 0..3 {
                for d in 0..2 {
                    for c in 0..3 {
                        want[c * 12 + (h * 3 + p) * 2 + d] = deltas[p][(h * 2 + d) * 3 + c];
                    }
                }
            }
        }
        let site = Site {
            entry: &e,
            elem: ElemType::F16,
            base_elem: ElemType::F16,
            parts,
        };
        let x = arrange(&site).expect("qualifies");
        assert!(x.transposed);
        close(&product(&x, &strengths), &want);
    }

    #[test]
    fn scaled_halves_hold_about_22_bits_of_factors_of_any_magnitude() {
        for top in [3.7f32, 0.013, 2.0e-5, 900.0] {
            let v: Vec<f32> = (1..200).map(|i| (i as f32 * 0.7131).sin() * top).collect();
            let exp = exponent(&v);
            let f = 2f32.powi(exp);
            let (hi, lo) = split_f16(&v.iter().map(|x| x * f).collect::<Vec<_>>());
            for ((x, h), l) in v.iter().zip(&hi).zip(&lo) {
                let err = (x - (h.to_f32() + l.to_f32()) / f).abs();
                assert!(err <= top * 2f32.powi(-21), "{top}: {x}: {err}");
            }
        }
    }

    #[test]
    fn f32_bases_dense_terms_and_values_that_are_not_finite_do_not_qualify() {
        let e = entry(Transform::Identity, &[4, 6], 1);
        let site = |base_elem, term: Term| Site {
            entry: &e,
            elem: ElemType::F16,
            base_elem,
            parts: vec![Part {
                shape: vec![4, 6],
                terms: vec![term],
            }],
        };
        assert!(arrange(&site(ElemType::F16, lora(4, 6, Some(0), 0.0))).is_some());
        assert!(arrange(&site(ElemType::F32, lora(4, 6, Some(0), 0.0))).is_none());
        let dense = Term {
            slot: Some(0),
            delta: Delta::Dense(vec![0.5; 24]),
        };
        assert!(arrange(&site(ElemType::F16, dense)).is_none());
        let mut inf = lora(4, 6, Some(0), 0.0);
        if let Delta::Factors { up, .. } = &mut inf.delta {
            up[0] = f32::INFINITY;
        }
        assert!(arrange(&site(ElemType::F16, inf)).is_none());
    }
}
