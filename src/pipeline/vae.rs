//! Latents to pixels: the VAE decoder output in [-1, 1] to 8-bit RGB, as diffusers post-processes it
//! (`(x / 2 + 0.5).clamp(0, 1)`, then `round(x * 255)`).

use crate::job::RgbImage;

/// Converts one CHW image (3 × h × w, values in [-1, 1]) to interleaved RGB bytes.
pub fn to_rgb(chw: &[f32], width: usize, height: usize) -> RgbImage {
    let plane = width * height;
    let mut pixels = vec![0u8; plane * 3];
    for i in 0..plane {
        for c in 0..3 {
            let x = (chw[c * plane + i] / 2.0 + 0.5).clamp(0.0, 1.0);
            pixels[i * 3 + c] = (x * 255.0).round() as u8;
        }
    }
    RgbImage {
        width: width as u32,
        height: height as u32,
        pixels,
    }
}

/// A cheap preview of latents `[4, h, w]` (no VAE): each pixel is a fixed linear mix of the four
/// channels, at latent resolution.
pub fn preview(latents: &[f32], width: usize, height: usize, factors: &[[f32; 3]; 4]) -> RgbImage {
    let plane = width * height;
    let mut chw = vec![0f32; 3 * plane];
    for i in 0..plane {
        for (c, f) in factors.iter().enumerate() {
            let v = latents[c * plane + i];
            for (k, w) in f.iter().enumerate() {
                chw[k * plane + i] += v * w;
            }
        }
    }
    to_rgb(&chw, width, height)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_mixes_channels_with_the_factors() {
        // One pixel: channel 0 = 1, others 0 -> the first row of factors, mapped from [-1, 1].
        let f = [[1.0, 0.0, -1.0], [0.0; 3], [0.0; 3], [0.0; 3]];
        let img = preview(&[1.0, 0.0, 0.0, 0.0], 1, 1, &f);
        assert_eq!(img.pixels, vec![255, 128, 0]);
    }

    #[test]
    fn values_map_like_diffusers_postprocess() {
        // -1 -> 0; 0.5 -> 0.75 * 255 = 191.25 -> 191; values past 1 clamp to 255.
        let img = to_rgb(&[-1.0, 0.5, 3.0], 1, 1);
        assert_eq!(img.pixels, vec![0, 191, 255]);
    }
}
