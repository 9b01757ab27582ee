//! Resampling as the tools stipple matches do it: [`interpolate`] is torch's
//! `F.interpolate(x, size, mode, antialias)` on f32 planes (A1111's latent upscalers, [`LatentMode`]),
//! and [`lanczos`] is Pillow's `Image.resize(size, LANCZOS)` on 8-bit RGB, with its fixed-point
//! arithmetic (A1111's "Lanczos" upscaler, and the final fit after a model upscaler).

pub use crate::hires::LatentMode;
use crate::job::RgbImage;

/// One output position: the first input index and the weights of the taps from it on.
struct Taps {
    start: usize,
    weights: Vec<f64>,
}

/// torch's cubic convolution kernel with `a` (-0.75 plain, -0.5 antialiased as Pillow).
fn cubic(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x <= 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

fn triangle(x: f64) -> f64 {
    (1.0 - x.abs()).max(0.0)
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

fn lanczos3(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Pillow's and torch's antialiased taps: the filter stretched by the downscale factor, clipped
/// to the input and normalised (no clamping of indices).
fn aa_taps(input: usize, output: usize, support: f64, filter: fn(f64) -> f64) -> Vec<Taps> {
    let scale = input as f64 / output as f64;
    let stretch = scale.max(1.0);
    let support = support * stretch;
    (0..output)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64)
                .min(input as i64)
                .max(lo as i64) as usize;
            let mut weights: Vec<f64> = (lo..hi)
                .map(|j| filter((j as f64 - center + 0.5) / stretch))
                .collect();
            let total: f64 = weights.iter().sum();
            if total != 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            Taps { start: lo, weights }
        })
        .collect()
}

/// torch's plain (not antialiased) taps, `align_corners=False`, indices clamped at the borders;
/// returned as (index, weight) pairs.
fn plain_taps(input: usize, output: usize, mode: LatentMode) -> Vec<Vec<(usize, f64)>> {
    let scale = input as f32 / output as f32;
    let last = input - 1;
    (0..output)
        .map(|i| match mode {
            LatentMode::Nearest | LatentMode::NearestExact => {
                let src = if input == output {
                    i
                } else if mode == LatentMode::Nearest {
                    ((i as f32 * scale).floor() as usize).min(last)
                } else {
                    (((i as f32 + 0.5) * scale).floor() as usize).min(last)
                };
                vec![(src, 1.0)]
            }
            LatentMode::Bicubic => {
                let src = f64::from(scale * (i as f32 + 0.5) - 0.5);
                let i0 = src.floor();
                let t = src - i0;
                let at = |k: i64| (i0 as i64 + k).clamp(0, last as i64) as usize;
                vec![
                    (at(-1), cubic(t + 1.0, -0.75)),
                    (at(0), cubic(t, -0.75)),
                    (at(1), cubic(1.0 - t, -0.75)),
                    (at(2), cubic(2.0 - t, -0.75)),
                ]
            }
            _ => {
                let src = f64::from((scale * (i as f32 + 0.5) - 0.5).max(0.0));
                let i0 = (src as usize).min(last);
                let i1 = (i0 + 1).min(last);
                let l1 = src - i0 as f64;
                vec![(i0, 1.0 - l1), (i1, l1)]
            }
        })
        .collect()
}

fn taps_for(input: usize, output: usize, mode: LatentMode) -> Vec<Vec<(usize, f64)>> {
    let aa = |support, filter| {
        aa_taps(input, output, support, filter)
            .into_iter()
            .map(|t| {
                t.weights
                    .into_iter()
                    .enumerate()
                    .map(|(k, w)| (t.start + k, w))
                    .collect()
            })
            .collect()
    };
    match mode {
        LatentMode::BilinearAa => aa(1.0, triangle),
        LatentMode::BicubicAa => aa(2.0, |x| cubic(x, -0.5)),
        _ => plain_taps(input, output, mode),
    }
}

/// torch's `F.interpolate` of `channels` planes of `h` × `w` to `oh` × `ow` in `mode`
/// (`align_corners=False`), as A1111 resizes latents for the hires fix.
pub fn interpolate(
    planes: &[f32],
    channels: usize,
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    mode: LatentMode,
) -> Vec<f32> {
    let xs = taps_for(w, ow, mode);
    let ys = taps_for(h, oh, mode);
    let mut out = vec![0f32; channels * oh * ow];
    let mut row = vec![0f64; ow];
    for c in 0..channels {
        let plane = &planes[c * h * w..(c + 1) * h * w];
        // Horizontal pass on every input row, then the vertical mix of those rows.
        let wide: Vec<f64> = (0..h)
            .flat_map(|y| {
                let src = &plane[y * w..(y + 1) * w];
                xs.iter()
                    .map(|t| t.iter().map(|&(j, k)| f64::from(src[j]) * k).sum::<f64>())
                    .collect::<Vec<_>>()
            })
            .collect();
        for (y, t) in ys.iter().enumerate() {
            row.iter_mut().for_each(|v| *v = 0.0);
            for &(j, k) in t {
                for (v, s) in row.iter_mut().zip(&wide[j * ow..(j + 1) * ow]) {
                    *v += s * k;
                }
            }
            let dst = &mut out[c * oh * ow + y * ow..c * oh * ow + (y + 1) * ow];
            for (d, v) in dst.iter_mut().zip(&row) {
                *d = *v as f32;
            }
        }
    }
    out
}

/// Pillow's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's 8-bit coefficients: the normalised weights scaled to `PRECISION_BITS` and rounded
/// half away from zero.
fn fixed_taps(input: usize, output: usize) -> Vec<(usize, Vec<i64>)> {
    aa_taps(input, output, 3.0, lanczos3)
        .into_iter()
        .map(|t| {
            let one = f64::from(1u32 << PRECISION_BITS);
            let k = t
                .weights
                .iter()
                .map(|w| {
                    let v = w * one;
                    (if v < 0.0 { v - 0.5 } else { v + 0.5 }) as i64
                })
                .collect();
            (t.start, k)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One Pillow pass along rows (`horizontal`) or columns of an RGB buffer of `w` × `h`.
fn pass(src: &[u8], (w, h): (usize, usize), out_len: usize, horizontal: bool) -> Vec<u8> {
    let taps = fixed_taps(if horizontal { w } else { h }, out_len);
    let (ow, oh) = if horizontal {
        (out_len, h)
    } else {
        (w, out_len)
    };
    let mut out = vec![0u8; ow * oh * 3];
    let half = 1i64 << (PRECISION_BITS - 1);
    for y in 0..oh {
        for x in 0..ow {
            let (start, k) = &taps[if horizontal { x } else { y }];
            for c in 0..3 {
                let mut acc = half;
                for (n, kk) in k.iter().enumerate() {
                    let (sx, sy) = if horizontal {
                        (start + n, y)
                    } else {
                        (x, start + n)
                    };
                    acc += i64::from(src[(sy * w + sx) * 3 + c]) * kk;
                }
                out[(y * ow + x) * 3 + c] = clip8(acc);
            }
        }
    }
    out
}

/// Pillow's `Image.resize((width, height), Image.LANCZOS)` of an RGB picture: horizontal pass,
/// then vertical, each rounded to 8 bits, a pass skipped when its size does not change.
pub fn lanczos(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = (img.width as usize, img.height as usize);
    let (ow, oh) = (width as usize, height as usize);
    let mut pixels = img.pixels.clone();
    if ow != w {
        pixels = pass(&pixels, (w, h), ow, true);
    }
    if oh != h {
        pixels = pass(&pixels, (ow, h), oh, false);
    }
    RgbImage {
        width,
        height,
        pixels,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every mode keeps a constant plane constant (the weights of each output sum to one).
    #[test]
    fn constant_planes_stay_constant() {
        let plane = vec![0.25f32; 5 * 7];
        for mode in LatentMode::ALL {
            for (oh, ow) in [(10, 14), (3, 4), (11, 13)] {
                let out = interpolate(&plane, 1, (5, 7), (oh, ow), mode);
                assert!(
                    out.iter().all(|v| (v - 0.25).abs() < 1e-6),
                    "{mode:?} {oh}x{ow}: {out:?}"
                );
            }
        }
        let img = RgbImage {
            width: 5,
            height: 3,
            pixels: vec![77; 45],
        };
        let out = lanczos(&img, 12, 7);
        assert!(out.pixels.iter().all(|&p| p == 77), "{:?}", out.pixels);
    }

    /// Doubling with nearest repeats each value twice; bilinear puts the quarter-way mixes between
    /// neighbours (torch's half-pixel centres).
    #[test]
    fn doubling_follows_torchs_pixel_centres() {
        let plane = [0.0f32, 4.0];
        let n = interpolate(&plane, 1, (1, 2), (1, 4), LatentMode::Nearest);
        assert_eq!(n, vec![0.0, 0.0, 4.0, 4.0]);
        let b = interpolate(&plane, 1, (1, 2), (1, 4), LatentMode::Bilinear);
        assert_eq!(b, vec![0.0, 1.0, 3.0, 4.0]);
    }

    #[test]
    fn mode_names_read_back() {
        for m in LatentMode::ALL {
            assert_eq!(LatentMode::from_name(m.name()), Some(m));
        }
        assert_eq!(
            LatentMode::from_name("latent (BICUBIC)"),
            Some(LatentMode::Bicubic)
        );
        assert_eq!(LatentMode::from_name("Lanczos"), None);
    }
}
