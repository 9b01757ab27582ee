//! [`TorchRng`]: the normal draws of `torch.randn(n, generator=torch.Generator("cpu").manual_seed(seed))`
//! for f32, so a seed gives the same latents (and Euler-a noise) as diffusers on CPU (x86-64 torch builds).
//! Public surface: `TorchRng::new(seed)`, `TorchRng::randn(n)`. Algorithm: torch's CPU generator (mt19937 + Box-Muller), except
//! that torch 2.15 runs the AVX2 Box–Muller (avx_mathfun) on AVX-512 CPUs too; that is what this matches.

/// A torch-compatible CPU generator: MT19937 plus torch's two Box–Muller paths for f32 `randn`.
///
/// State carries over between calls exactly like one `torch.Generator`, including the cached
/// second normal of the scalar path (used only for tensors of fewer than 16 elements).
#[derive(Clone)]
pub struct TorchRng {
    mt: Mt19937,
    /// Torch's `next_double_normal_sample`: the sine half of the last scalar-path Box–Muller pair.
    cached_normal: Option<f64>,
}

impl std::fmt::Debug for TorchRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchRng")
            .field("index", &self.mt.index)
            .field("cached_normal", &self.cached_normal)
            .finish_non_exhaustive()
    }
}

/// Below this many elements torch draws each value on the scalar (double) path.
const VECTOR_MIN: usize = 16;

impl TorchRng {
    /// Like `manual_seed(seed)`: torch keeps only the low 32 bits of the seed.
    pub fn new(seed: u64) -> Self {
        TorchRng {
            mt: Mt19937::new(seed as u32),
            cached_normal: None,
        }
    }

    /// `n` standard normal values, as `torch.randn(shape)` with `numel == n` (f32, contiguous).
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        if n < VECTOR_MIN {
            (0..n).map(|_| self.scalar_normal() as f32).collect()
        } else {
            self.vector_normals(n)
        }
    }

    /// Float uniform in [0, 1) from the low 24 bits of one draw.
    fn uniform_f32(&mut self) -> f32 {
        (self.mt.next_u32() & ((1 << 24) - 1)) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Double uniform in [0, 1) from the low 53 bits of two draws (first draw is the high word).
    fn uniform_f64(&mut self) -> f64 {
        let hi = u64::from(self.mt.next_u32());
        let lo = u64::from(self.mt.next_u32());
        ((hi << 32 | lo) & ((1 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// torch's `normal_distribution<double>`: returns the cosine half, keeps the sine half.
    fn scalar_normal(&mut self) -> f64 {
        if let Some(v) = self.cached_normal.take() {
            return v;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.cached_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// torch's `normal_fill`: uniforms for every slot, Box–Muller per block of 16, and a fresh
    /// block of 16 over the last slots when `n` is not a multiple of 16.
    fn vector_normals(&mut self, n: usize) -> Vec<f32> {
        let mut data: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(16) {
            box_muller_16(block);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut data[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            box_muller_16(tail);
        }
        data
    }
}

/// Pairs slot j with slot j+8, as torch's AVX2 `normal_fill_16_AVX2` does it: f32 throughout, with
/// avx_mathfun's Cephes polynomials for log and sin/cos (not libm). torch runs this kernel on AVX2
/// and AVX-512 machines alike; its scalar fallback (libm, used only on pre-AVX2 CPUs) differs by
/// up to ~2e-6 from this.
fn box_muller_16(d: &mut [f32]) {
    let two_pi = (2.0 * std::f64::consts::PI) as f32;
    for j in 0..8 {
        let radius = (-2.0 * cephes_log(1.0 - d[j])).sqrt();
        let (sin, cos) = cephes_sincos(two_pi * d[j + 8]);
        d[j] = radius * cos;
        d[j + 8] = radius * sin;
    }
}

/// avx_mathfun's `log256_ps` for one lane (valid for x > 0). The wheel is built with FMA
/// contraction, so each multiply that feeds an add is fused; `mul_add` reproduces that.
fn cephes_log(x: f32) -> f32 {
    const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;
    const P: [f32; 9] = [
        7.037_683_6e-2,
        -1.151_461e-1,
        1.167_699_84e-1,
        -1.242_014_1e-1,
        1.424_932_3e-1,
        -1.666_805_8e-1,
        2.000_071_4e-1,
        -2.499_999_4e-1,
        3.333_333e-1,
    ];
    const Q1: f32 = -2.121_944_4e-4;
    const Q2: f32 = 0.693_359_4;
    let bits = x.max(f32::MIN_POSITIVE).to_bits();
    // Split into mantissa m in [0.5, 1) and exponent e with x = m * 2^e.
    let m = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = ((bits >> 23) as i32 - 0x7f) as f32 + 1.0;
    let mut x = m - 1.0;
    if m < SQRT_HALF {
        e -= 1.0;
        x += m;
    }
    let z = x * x;
    let mut y = P[0];
    for &p in &P[1..] {
        y = y.mul_add(x, p);
    }
    y *= x;
    y = y.mul_add(z, e * Q1);
    y = z.mul_add(-0.5, y);
    e.mul_add(Q2, x + y)
}

/// avx_mathfun's `sincos256_ps` for one lane: octant reduction with Cody–Waite constants, then
/// the Cephes sine and cosine polynomials. Returns (sin, cos).
fn cephes_sincos(theta: f32) -> (f32, f32) {
    const FOUR_OVER_PI: f32 = 1.273_239_5;
    const DP: [f32; 3] = [-0.785_156_25, -2.418_756_5e-4, -3.774_895e-8];
    const SIN: [f32; 3] = [-1.951_529_6e-4, 8.332_161e-3, -1.666_665_5e-1];
    const COS: [f32; 3] = [2.443_315_7e-5, -1.388_731_6e-3, 4.166_664_6e-2];
    let mut sign_sin = theta.to_bits() & 0x8000_0000;
    let mut x = theta.abs();
    // Octant index rounded up to even; its bits pick the polynomial and the signs.
    let octant = ((x * FOUR_OVER_PI) as i32 + 1) & !1;
    let q = octant as f32;
    sign_sin ^= ((octant & 4) as u32) << 29;
    let sign_cos = ((!(octant - 2) & 4) as u32) << 29;
    let use_sin_poly = octant & 2 == 0;
    for dp in DP {
        x = q.mul_add(dp, x);
    }
    let z = x * x;
    let mut c = COS[0].mul_add(z, COS[1]);
    c = c.mul_add(z, COS[2]);
    c *= z;
    c = c.mul_add(z, -(z * 0.5)) + 1.0;
    let mut s = SIN[0].mul_add(z, SIN[1]);
    s = s.mul_add(z, SIN[2]);
    s *= z;
    s = s.mul_add(x, x);
    let (sin, cos) = if use_sin_poly { (s, c) } else { (c, s) };
    (
        f32::from_bits(sin.to_bits() ^ sign_sin),
        f32::from_bits(cos.to_bits() ^ sign_cos),
    )
}

/// MT19937 with the reference `init_genrand` seeding (what torch's `mt19937` engine uses).
#[derive(Clone)]
struct Mt19937 {
    state: [u32; MT_N],
    index: usize,
}

const MT_N: usize = 624;
const MT_M: usize = 397;

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut state = [0u32; MT_N];
        state[0] = seed;
        for i in 1..MT_N {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { state, index: MT_N }
    }

    fn twist(&mut self) {
        for i in 0..MT_N {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % MT_N] & 0x7fff_ffff);
            let mut next = self.state[(i + MT_M) % MT_N] ^ (y >> 1);
            if y & 1 != 0 {
                next ^= 0x9908_b0df;
            }
            self.state[i] = next;
        }
        self.index = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference MT19937 output: the 10000th draw for the default seed 5489 is 4123659995.
    #[test]
    fn mt19937_matches_the_reference_engine() {
        let mut mt = Mt19937::new(5489);
        let mut last = 0;
        for _ in 0..10_000 {
            last = mt.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }

    fn close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-4, "{got:?} vs {want:?}");
        }
    }

    /// Golden values printed by torch (4 decimals).
    #[test]
    fn golden_values_for_seed_zero() {
        close(
            &TorchRng::new(0).randn(4),
            &[1.5410, -0.2934, -2.1788, 0.5684],
        );
        let v16 = TorchRng::new(0).randn(16);
        close(&[v16[0], v16[8]], &[-1.1258, 0.3223]);
        close(
            &TorchRng::new(0).randn(25)[..5],
            &[-1.1258, -1.1524, -0.2506, -0.4339, 0.8487],
        );
    }
}
