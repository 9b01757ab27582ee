//! PIL's `ImageFilter.GaussianBlur(σ)` on a grey plane, byte for byte: the mask blur A1111 and
//! diffusers' `VaeImageProcessor.blur` apply ([`gaussian_blur`]). PIL approximates the Gaussian with
//! three passes of an "extended" box blur each way (Gwosdek et al. 2011), rounding to bytes after
//! every pass and repeating the edge pixels; `image::imageops::blur` is a true Gaussian and differs.

/// Passes of the box blur per direction (PIL's `gaussian_blur` default).
const PASSES: u32 = 3;

/// `gray` (`w`×`h`, one byte a pixel) blurred as PIL's `GaussianBlur(sigma)`; σ ≤ 0 returns it as is.
pub fn gaussian_blur(gray: &[u8], w: usize, h: usize, sigma: f32) -> Vec<u8> {
    let mut out = gray.to_vec();
    if sigma.is_nan() || sigma <= 0.0 || w == 0 || h == 0 || gray.len() != w * h {
        return out;
    }
    let radius = box_radius(sigma, PASSES);
    if radius == 0.0 {
        return out;
    }
    let mut line = Vec::new();
    for row in out.chunks_exact_mut(w) {
        for _ in 0..PASSES {
            line.clear();
            line.extend_from_slice(row);
            box_line(row, &line, radius);
        }
    }
    let mut column = vec![0u8; h];
    let mut blurred = vec![0u8; h];
    for x in 0..w {
        for (y, c) in column.iter_mut().enumerate() {
            *c = out[y * w + x];
        }
        for _ in 0..PASSES {
            box_line(&mut blurred, &column, radius);
            column.copy_from_slice(&blurred);
        }
        for (y, c) in column.iter().enumerate() {
            out[y * w + x] = *c;
        }
    }
    out
}

/// The extended box's radius for σ over `passes` passes (Pillow's `_gaussian_blur_radius`), in f32
/// as Pillow computes it, since the box weights below depend on its last bits.
fn box_radius(sigma: f32, passes: u32) -> f32 {
    let sigma2 = sigma * sigma / passes as f32;
    let big_l = (12.0 * f64::from(sigma2) + 1.0).sqrt() as f32;
    let l = ((f64::from(big_l) - 1.0) / 2.0).floor() as f32;
    let a = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2);
    let a = a / (6.0 * (sigma2 - (l + 1.0) * (l + 1.0)));
    l + a
}

/// One pass over a line (Pillow's `ImagingLineBoxBlur8`): a running sum over the whole box plus the
/// two fractional far pixels, in 8.24 fixed point; pixels outside repeat the edge ones.
fn box_line(out: &mut [u8], inp: &[u8], float_radius: f32) {
    let n = inp.len();
    let last = n - 1;
    let r = float_radius as usize;
    let ww = ((1u32 << 24) as f32 / (float_radius * 2.0 + 1.0)) as u32;
    let fw = ((1u32 << 24).wrapping_sub((r as u32 * 2 + 1).wrapping_mul(ww))) / 2;
    let edge_a = (r + 1).min(n);
    let edge_b = n.saturating_sub(r + 1);
    let p = |i: usize| u32::from(inp[i]);
    // The sum for pixel -1: the first pixel r + 1 times, then pixels 0..r (the last one repeated
    // where the line is shorter than the box).
    let mut acc = p(0) * (r as u32 + 1);
    for x in 0..edge_a - 1 {
        acc += p(x);
    }
    acc += p(last) * (r + 1 - edge_a) as u32;
    let mut step = |x: usize, sub: usize, add: usize, left: usize, right: usize| {
        acc = acc.wrapping_add(p(add)).wrapping_sub(p(sub));
        let bulk = acc
            .wrapping_mul(ww)
            .wrapping_add((p(left) + p(right)).wrapping_mul(fw));
        out[x] = (bulk.wrapping_add(1 << 23) >> 24) as u8;
    };
    if edge_a <= edge_b {
        for x in 0..edge_a {
            step(x, 0, x + r, 0, x + r + 1);
        }
        for x in edge_a..edge_b {
            step(x, x - r - 1, x + r, x - r - 1, x + r + 1);
        }
        for x in edge_b..n {
            step(x, x - r - 1, last, x - r - 1, last);
        }
    } else {
        for x in 0..edge_b {
            step(x, 0, x + r, 0, x + r + 1);
        }
        for x in edge_b..edge_a {
            step(x, 0, last, 0, last);
        }
        for x in edge_a..n {
            step(x, x - r - 1, last, x - r - 1, last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_radius_is_pillows() {
        // Values Pillow's _gaussian_blur_radius gives (checked with a Python port against PIL).
        for (sigma, want) in [
            (1.0, 0.250_000_03),
            (2.0, 1.375),
            (4.0, 3.4375),
            (8.0, 7.46875),
        ] {
            assert_eq!(box_radius(sigma, 3), want, "σ {sigma}");
        }
    }

    #[test]
    fn flat_stays_flat_and_a_dot_spreads_symmetrically() {
        assert_eq!(gaussian_blur(&[200; 12], 4, 3, 2.0), vec![200; 12]);
        let mut dot = vec![0u8; 81];
        dot[40] = 255;
        let b = gaussian_blur(&dot, 9, 9, 1.0);
        assert!(b[40] < 255 && b[40] > 0, "{b:?}");
        assert_eq!(b[39], b[41]);
        assert_eq!(b[31], b[49]);
        // A line shorter than the box (σ 50 on 9 pixels) takes the other branch, still in bounds.
        let wide = gaussian_blur(&dot, 9, 9, 50.0);
        assert!(wide.iter().all(|&v| v < 10), "{wide:?}");
        assert_eq!(gaussian_blur(&dot, 9, 9, 0.0), dot);
    }
}
