//! Masked content "fill" (A1111's documented behaviour): [`fill`] paints the masked part of a
//! picture from its surroundings by blurring the kept pixels inwards, widest blur first, so the
//! sampler starts from the neighbourhood's colours instead of what was under the mask.

use crate::job::RgbImage;

/// Blur widths (Gaussian σ in pixels) laid over each other, widest first; before them every masked
/// pixel holds the mean colour of the kept ones (an unbounded blur).
const SIGMAS: [f32; 5] = [64.0, 16.0, 4.0, 2.0, 1.0];

/// `img` with every pixel where `mask` (1 repaints, 0 keeps) is 1 replaced by a colour mixed from
/// the kept pixels, nearer ones weighing more; kept pixels are returned unchanged. A mask that
/// keeps nothing gives mid grey.
pub fn fill(img: &RgbImage, mask: &[f32]) -> RgbImage {
    let (w, h) = (img.width as usize, img.height as usize);
    let keep: Vec<f32> = mask.iter().map(|m| 1.0 - m.clamp(0.0, 1.0)).collect();
    let kept: f32 = keep.iter().sum();
    let mut out = vec![[127.5f32; 3]; w * h];
    if kept > 0.0 {
        let mut mean = [0f32; 3];
        for (i, k) in keep.iter().enumerate() {
            for (c, m) in mean.iter_mut().enumerate() {
                *m += k * f32::from(img.pixels[i * 3 + c]);
            }
        }
        out.fill(mean.map(|m| m / kept));
    }
    // Each layer: the kept colours blurred and divided by the blurred weight (so black outside
    // the kept part does not darken), laid over the layers before with the blurred weight as
    // its opacity: deep inside a hole the wide layers show, at its edge the narrow ones.
    let premultiplied: Vec<Vec<f32>> = (0..3)
        .map(|c| {
            keep.iter()
                .enumerate()
                .map(|(i, k)| k * f32::from(img.pixels[i * 3 + c]))
                .collect()
        })
        .collect();
    for sigma in SIGMAS {
        let weight = blur(&keep, w, h, sigma);
        let colours: Vec<Vec<f32>> = premultiplied.iter().map(|p| blur(p, w, h, sigma)).collect();
        for (i, px) in out.iter_mut().enumerate() {
            let a = weight[i].min(1.0);
            if a <= 1e-6 {
                continue;
            }
            for (c, v) in px.iter_mut().enumerate() {
                *v = colours[c][i] / weight[i] * a + *v * (1.0 - a);
            }
        }
    }
    let pixels = out
        .iter()
        .zip(&keep)
        .enumerate()
        .flat_map(|(i, (px, &k))| {
            let orig = &img.pixels[i * 3..i * 3 + 3];
            [0, 1, 2].map(|c| (f32::from(orig[c]) * k + px[c] * (1.0 - k)).round() as u8)
        })
        .collect();
    RgbImage {
        width: img.width,
        height: img.height,
        pixels,
    }
}

/// A separable Gaussian blur of a `w`×`h` plane; outside the plane counts as 0 (so a weight plane
/// fades towards the picture's edges), the kernel cut at 3σ.
fn blur(plane: &[f32], w: usize, h: usize, sigma: f32) -> Vec<f32> {
    let radius = ((3.0 * sigma).ceil() as usize).min(w.max(h));
    let mut kernel: Vec<f32> = (0..=2 * radius)
        .map(|i| {
            let d = i as f32 - radius as f32;
            (-d * d / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let sum: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= sum);
    let pass = |src: &[f32], along_x: bool| -> Vec<f32> {
        let mut dst = vec![0f32; w * h];
        for y in 0..h {
            for x in 0..w {
                let (pos, len) = if along_x { (x, w) } else { (y, h) };
                let lo = pos.saturating_sub(radius);
                let hi = (pos + radius).min(len - 1);
                let mut acc = 0f32;
                for p in lo..=hi {
                    let s = if along_x { y * w + p } else { p * w + x };
                    acc += kernel[p + radius - pos] * src[s];
                }
                dst[y * w + x] = acc;
            }
        }
        dst
    };
    pass(&pass(plane, true), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Left half red, right half blue, a masked stripe in the middle holding green.
    fn stripes() -> (RgbImage, Vec<f32>) {
        let (w, h) = (32u32, 16u32);
        let mut pixels = Vec::new();
        let mut mask = Vec::new();
        for _y in 0..h {
            for x in 0..w {
                let masked = (12..20).contains(&x);
                mask.push(if masked { 1.0 } else { 0.0 });
                pixels.extend(if masked {
                    [0, 255, 0]
                } else if x < 16 {
                    [255, 0, 0]
                } else {
                    [0, 0, 255]
                });
            }
        }
        (
            RgbImage {
                width: w,
                height: h,
                pixels,
            },
            mask,
        )
    }

    #[test]
    fn kept_pixels_stay_and_masked_ones_come_from_the_surroundings() {
        let (img, mask) = stripes();
        let out = fill(&img, &mask);
        for (i, m) in mask.iter().enumerate() {
            let (a, b) = (&out.pixels[i * 3..i * 3 + 3], &img.pixels[i * 3..i * 3 + 3]);
            if *m == 0.0 {
                assert_eq!(a, b, "kept pixel {i} changed");
            } else {
                // Nothing of the green under the mask survives: only red and blue mix.
                assert_eq!(a[1], 0, "pixel {i}: {a:?}");
            }
        }
        // Near the red side red dominates, near the blue side blue.
        let px = |x: usize| &out.pixels[(8 * 32 + x) * 3..(8 * 32 + x) * 3 + 3];
        assert!(px(12)[0] > px(12)[2], "{:?}", px(12));
        assert!(px(19)[2] > px(19)[0], "{:?}", px(19));
    }

    #[test]
    fn the_hidden_content_does_not_matter_and_a_flat_surrounding_fills_flat() {
        let (img, mask) = stripes();
        let mut other = img.clone();
        for (i, m) in mask.iter().enumerate() {
            if *m == 1.0 {
                other.pixels[i * 3..i * 3 + 3].copy_from_slice(&[9, 99, 199]);
            }
        }
        assert_eq!(fill(&img, &mask).pixels, fill(&other, &mask).pixels);
        let flat = RgbImage {
            width: 32,
            height: 16,
            pixels: [40u8, 80, 120].repeat(32 * 16),
        };
        let out = fill(&flat, &mask);
        assert!(out.pixels.chunks(3).all(|p| p == [40, 80, 120]));
        // A mask keeping nothing gives grey.
        let all = vec![1.0; 32 * 16];
        assert!(fill(&img, &all).pixels.iter().all(|&v| v == 128));
    }
}
