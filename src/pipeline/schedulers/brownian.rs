//! [`BrownianNoise`]: k-diffusion's `BrownianTreeNoiseSampler(x, σ_min, σ_max, seed)` over
//! torchsde 0.2's `BrownianTree` (the noise A1111 gives DPM++ SDE, 2M SDE and 3M SDE), value for
//! value: `BrownianNoise::new(seed, n, σ_min, σ_max)`, then `between(σ, σ_next)` per step.
//!
//! The tree is the dyadic one of torchsde's `halfway_tree`: the root holds W(σ_max) − W(σ_min)
//! drawn from the seed, every node splits at its midpoint rounded to 6 decimals (`tol=1e-6`, as
//! Python's `round`) with a Brownian bridge whose normals come from a torch CPU generator seeded by
//! numpy's `SeedSequence(seed, spawn_key=(key, depth), pool_size=24)`. A query sums the canonical
//! nodes covering it, left to right, so values do not depend on query order; the cache only saves
//! work. Arithmetic is torch's: float32 tensors times float64 scalars rounded to float32.

use crate::pipeline::rng::TorchRng;
use crate::pipeline::seed_sequence::SeedSequence;
use std::collections::HashMap;

/// torchsde's `BrownianTree` default pool size.
const POOL_SIZE: usize = 24;
/// Past this depth a node is not split again (the spawn key is 128 bits; a real query never
/// goes below ~30 levels, where nodes are a few 1e-6 wide).
const MAX_DEPTH: u32 = 120;
/// Cached node values, in floats (8 MiB an image; a full query path of a 512² SD1.5 latent fits).
const CACHE_FLOATS: usize = 1 << 21;

/// One node of the tree: `[start, end]` (rounded) and its place (`key`, `depth`).
#[derive(Debug, Clone, Copy)]
struct Node {
    start: f64,
    end: f64,
    key: u128,
    depth: u32,
}

/// The Brownian motion of one image, queried per step.
#[derive(Debug, Clone)]
pub struct BrownianNoise {
    seed: u64,
    n: usize,
    root: Node,
    root_w: Vec<f32>,
    /// Children's values by the parent's (key, depth): (left, right).
    cache: HashMap<(u128, u32), (Vec<f32>, Vec<f32>)>,
}

/// Python's `round(x, 6)`: the correctly rounded 6-decimal value (ties to even on the exact
/// binary value), read back as the nearest double.
pub(crate) fn round6(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    // 90 decimals print every double ≥ 2⁻³⁸ exactly; smaller ones cannot sit on a tie.
    let exact = format!("{:.90}", x.abs());
    let (int, frac) = exact.split_once('.').unwrap_or((&exact, ""));
    let digits = format!("{int}{}", &frac[..6]);
    let rest = &frac[6..];
    let mut kept: Vec<u8> = digits.bytes().map(|b| b - b'0').collect();
    let up = match rest.as_bytes().first() {
        Some(b'5'..=b'9') if rest[1..].bytes().any(|b| b != b'0') || rest.as_bytes()[0] > b'5' => {
            true
        }
        Some(b'5') => kept.last().is_some_and(|d| d % 2 == 1),
        _ => false,
    };
    if up {
        let mut i = kept.len();
        loop {
            if i == 0 {
                kept.insert(0, 1);
                break;
            }
            i -= 1;
            if kept[i] == 9 {
                kept[i] = 0;
            } else {
                kept[i] += 1;
                break;
            }
        }
    }
    let s: String = kept.iter().map(|d| char::from(b'0' + d)).collect();
    let (ip, fp) = s.split_at(s.len() - 6);
    let v: f64 = format!("{ip}.{fp}").parse().unwrap_or(x.abs());
    v.copysign(x)
}

/// `torch.randn(n, generator=torch.Generator("cpu").manual_seed(seed))`.
fn randn(seed: u32, n: usize) -> Vec<f32> {
    TorchRng::new(u64::from(seed)).randn(n)
}

impl BrownianNoise {
    /// `BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=seed)` for an `x` of `n` values
    /// (one image: A1111 gives each image of a batch its own tree, seeded with its seed).
    pub fn new(seed: u64, n: usize, sigma_min: f32, sigma_max: f32) -> Self {
        let (t0, t1) = if sigma_min < sigma_max {
            (f64::from(sigma_min), f64::from(sigma_max))
        } else {
            (f64::from(sigma_max), f64::from(sigma_min))
        };
        let state = SeedSequence::new(u128::from(seed), &[], POOL_SIZE).generate_state(3);
        let scale = (t1 - t0).sqrt() as f32;
        let root_w = randn(state[0], n).into_iter().map(|z| z * scale).collect();
        BrownianNoise {
            seed,
            n,
            root: Node {
                start: round6(t0),
                end: round6(t1),
                key: 0,
                depth: 0,
            },
            root_w,
            cache: HashMap::new(),
        }
    }

    /// `noise_sampler(sigma, sigma_next)`: (W(σ_next) − W(σ)) / √|σ_next − σ| in float32, unit
    /// variance per element (zeros when the two are equal).
    pub fn between(&mut self, sigma: f32, sigma_next: f32) -> Vec<f32> {
        if sigma == sigma_next {
            return vec![0.0; self.n];
        }
        let (lo, hi, sign) = if sigma < sigma_next {
            (sigma, sigma_next, 1.0f32)
        } else {
            (sigma_next, sigma, -1.0)
        };
        let w = self.increment(f64::from(lo), f64::from(hi));
        let d = (sigma_next - sigma).abs().sqrt();
        w.into_iter().map(|v| (v * sign) / d).collect()
    }

    /// `BrownianInterval(ta, tb)`: W(tb) − W(ta), the ends clamped into the tree's interval.
    pub fn increment(&mut self, ta: f64, tb: f64) -> Vec<f32> {
        let (start, end) = (self.root.start, self.root.end);
        let ta = ta.clamp(start, end.max(start));
        let tb = tb.clamp(start, end.max(start));
        if ta >= tb {
            return vec![0.0; self.n];
        }
        let (ta, tb) = (round6(ta), round6(tb));
        if ta == tb {
            return vec![0.0; self.n];
        }
        let mut acc: Option<Vec<f32>> = None;
        let root_w = std::mem::take(&mut self.root_w);
        self.walk(self.root, &root_w, ta, tb, &mut acc);
        self.root_w = root_w;
        acc.unwrap_or_else(|| vec![0.0; self.n])
    }

    /// Adds the canonical nodes of `[ta, tb]` under `node` (value `w`) to `acc`, left to right.
    fn walk(&mut self, node: Node, w: &[f32], ta: f64, tb: f64, acc: &mut Option<Vec<f32>>) {
        if (ta == node.start && tb == node.end) || node.depth >= MAX_DEPTH {
            match acc {
                None => *acc = Some(w.to_vec()),
                Some(a) => a.iter_mut().zip(w).for_each(|(a, &v)| *a += v),
            }
            return;
        }
        let mid = round6(0.5 * (node.end + node.start));
        let (left, right) = self.children(node, mid, w);
        let child = |start, end, bit| Node {
            start,
            end,
            key: 2 * node.key + bit,
            depth: node.depth + 1,
        };
        if tb <= mid {
            self.walk(child(node.start, mid, 0), &left, ta, tb, acc);
        } else if ta >= mid {
            self.walk(child(mid, node.end, 1), &right, ta, tb, acc);
        } else {
            self.walk(child(node.start, mid, 0), &left, ta, mid, acc);
            self.walk(child(mid, node.end, 1), &right, mid, tb, acc);
        }
    }

    /// The two halves of `node` split at `mid`: the Brownian bridge torchsde draws with the
    /// node's seed, in its float32 order.
    fn children(&mut self, node: Node, mid: f64, w: &[f32]) -> (Vec<f32>, Vec<f32>) {
        if let Some(pair) = self.cache.get(&(node.key, node.depth)) {
            return pair.clone();
        }
        let seeds = SeedSequence::new(
            u128::from(self.seed),
            &[node.key, u128::from(node.depth)],
            POOL_SIZE,
        )
        .generate_state(4);
        let h_reciprocal = 1.0 / (node.end - node.start);
        let left_diff = mid - node.start;
        let right_diff = node.end - mid;
        let std = (left_diff * right_diff * h_reciprocal).sqrt() as f32;
        let (ld, hr) = (left_diff as f32, h_reciprocal as f32);
        let noise = randn(seeds[0], self.n);
        let left: Vec<f32> = w
            .iter()
            .zip(&noise)
            .map(|(&w, &z)| ld * w * hr + std * z)
            .collect();
        let right: Vec<f32> = w.iter().zip(&left).map(|(&w, &l)| w - l).collect();
        if (self.cache.len() + 1) * 2 * self.n > CACHE_FLOATS {
            self.cache.clear();
        }
        self.cache
            .insert((node.key, node.depth), (left.clone(), right.clone()));
        (left, right)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round6_is_pythons_round() {
        // Exact binary ties go to the even digit, as Python's correctly rounded `round`.
        assert_eq!(round6(0.0078125), 0.007812);
        assert_eq!(round6(0.0234375), 0.023438);
        assert_eq!(round6(14.614641189575195), 14.614641);
        assert_eq!(round6(0.029167519882321358), 0.029168);
        assert_eq!(round6(9.9999996), 10.0);
        assert_eq!(round6(-1.0000004), -1.0);
    }

    #[test]
    fn increments_add_up_and_do_not_depend_on_query_order() {
        let mut a = BrownianNoise::new(3, 20, 0.03, 14.6);
        let whole = a.increment(1.0, 9.0);
        let mut b = BrownianNoise::new(3, 20, 0.03, 14.6);
        let right = b.increment(4.5, 9.0);
        let left = b.increment(1.0, 4.5);
        let sum: Vec<f32> = left.iter().zip(&right).map(|(l, r)| l + r).collect();
        for (w, s) in whole.iter().zip(&sum) {
            assert!((w - s).abs() < 1e-5, "{w} vs {s}");
        }
        assert_eq!(b.increment(1.0, 9.0), whole);
        assert_ne!(
            BrownianNoise::new(4, 20, 0.03, 14.6).increment(1.0, 9.0),
            whole
        );
    }

    #[test]
    fn normalised_noise_has_unit_variance() {
        let mut t = BrownianNoise::new(11, 4096, 0.03, 14.6);
        for (s, e) in [(14.6, 10.0), (2.0, 1.2), (0.05, 0.03)] {
            let z = t.between(s, e);
            let mean = z.iter().sum::<f32>() / z.len() as f32;
            let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / z.len() as f32;
            assert!(
                mean.abs() < 0.06 && (var - 1.0).abs() < 0.08,
                "{s}-{e}: {mean} {var}"
            );
        }
        assert!(t.between(1.0, 1.0).iter().all(|&v| v == 0.0));
    }

    /// `scripts/reference_brownian.py`: torchsde's values for a few seeds, shapes and intervals.
    fn fixture() -> serde_json::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/reference/brownian.json");
        let text = std::fs::read_to_string(&path).expect("brownian.json");
        serde_json::from_str(&text).expect("brownian.json parses")
    }

    fn big(v: &serde_json::Value) -> u128 {
        v.as_str()
            .and_then(|s| s.parse().ok())
            .expect("integer string")
    }

    #[test]
    fn seed_sequence_words_match_numpy() {
        for case in fixture()["seed_sequences"].as_array().unwrap() {
            let key: Vec<u128> = case["spawn_key"]
                .as_array()
                .unwrap()
                .iter()
                .map(big)
                .collect();
            let want: Vec<u32> = serde_json::from_value(case["state"].clone()).unwrap();
            let pool = case["pool_size"].as_u64().unwrap() as usize;
            let got =
                SeedSequence::new(big(&case["entropy"]), &key, pool).generate_state(want.len());
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn noise_matches_torchsde_brownian_tree() {
        let mut worst = 0f32;
        for case in fixture()["cases"].as_array().unwrap() {
            let seed = case["seed"].as_u64().unwrap();
            let n = case["n"].as_u64().unwrap() as usize;
            let f = |k: &str| case[k].as_f64().unwrap() as f32;
            let mut tree = BrownianNoise::new(seed, n, f("sigma_min"), f("sigma_max"));
            for q in case["queries"].as_array().unwrap() {
                let want: Vec<f32> = serde_json::from_value(q["noise"].clone()).unwrap();
                let want_w: Vec<f32> = serde_json::from_value(q["w"].clone()).unwrap();
                let (a, b) = (
                    q["sigma"].as_f64().unwrap(),
                    q["sigma_next"].as_f64().unwrap(),
                );
                let (a, b) = (a as f32, b as f32);
                // The tree's increment is torchsde's bit for bit.
                let w = tree.increment(f64::from(a.min(b)), f64::from(a.max(b)));
                assert_eq!(w, want_w, "seed {seed} n {n}: W over {a}..{b}");
                // The normalised noise divides by √|b − a|, where torch's float32 sqrt on this CPU
                // (its AVX2 kernel) is at times one ulp above the correctly rounded value.
                let got = tree.between(a, b);
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    let rel = (g - w).abs() / w.abs().max(1e-30);
                    worst = worst.max(rel);
                    assert!(rel <= 3e-7, "seed {seed} n {n} {a}->{b}: {g} vs {w}");
                }
            }
        }
        eprintln!("worst relative difference of the noise vs torchsde: {worst:e}");
    }
}
