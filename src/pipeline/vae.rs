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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_map_like_diffusers_postprocess() {
        // -1 -> 0; 0.5 -> 0.75 * 255 = 191.25 -> 191; values past 1 clamp to 255.
        let img = to_rgb(&[-1.0, 0.5, 3.0], 1, 1);
        assert_eq!(img.pixels, vec![0, 191, 255]);
    }
}
