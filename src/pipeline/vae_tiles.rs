//! Decoding large latents in tiles: [`VaeTiling`] says when (`off` by default; `auto`: above
//! [`AUTO_AREA`] latent pixels), [`decode`] runs the VAE decoder on overlapping tiles of the latents
//! and blends them where they overlap, so the decoder's memory is one tile's whatever the image
//! size. Not exact: the decoder's GroupNorm and mid-block attention see one tile instead of the
//! whole picture, so tiles differ in tone from the untiled decode (measured in tests/it/vae_tiles.rs).

use super::error::PipelineError;
use super::sessions::Sessions;
use crate::image::upscale::{ramp, starts};
use crate::job::RgbImage;
use crate::model::Model;

/// Latent pixels above which `auto` tiles (128 × 128 latents: a 1024² SD image).
pub const AUTO_AREA: usize = 128 * 128;

/// When the VAE decodes in tiles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TileMode {
    /// Above [`AUTO_AREA`] latent pixels.
    Auto,
    /// Whenever the latents are larger than a tile.
    On,
    /// Never: the decode is exact (the default).
    #[default]
    Off,
}

/// Tiled VAE decoding: when, and the tile and overlap in latent pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaeTiling {
    pub mode: TileMode,
    pub tile: usize,
    pub overlap: usize,
}

impl Default for VaeTiling {
    fn default() -> Self {
        VaeTiling {
            mode: TileMode::Off,
            tile: 64,
            overlap: 16,
        }
    }
}

impl VaeTiling {
    /// Whether latents of `h` × `w` are decoded in tiles.
    pub fn applies(&self, h: usize, w: usize) -> bool {
        let larger = h > self.tile || w > self.tile;
        match self.mode {
            TileMode::Off => false,
            TileMode::On => larger,
            TileMode::Auto => larger && h * w > AUTO_AREA,
        }
    }
}

/// Decodes latents `[4, h, w]` tile by tile (`tiling.tile` latent pixels, overlapping by
/// `tiling.overlap`), blending the pictures of neighbouring tiles over the overlap.
pub fn decode(
    sessions: &mut Sessions,
    model: &Model,
    tiling: VaeTiling,
    latents: &[f32],
    h: usize,
    w: usize,
) -> Result<RgbImage, PipelineError> {
    let f = model.index.vae_scale_factor.max(1) as usize;
    let (th, tw) = (tiling.tile.min(h), tiling.tile.min(w));
    let overlap = tiling.overlap.min(th.min(tw) / 2);
    let (oh, ow) = (h * f, w * f);
    let mut acc = vec![0f32; 3 * oh * ow];
    let mut weight = vec![0f32; oh * ow];
    let mut sub = vec![0f32; 4 * th * tw];
    sessions.ensure_vae_dims(model, th, tw)?;
    for &y0 in &starts(h, th, overlap) {
        for &x0 in &starts(w, tw, overlap) {
            for c in 0..4 {
                for y in 0..th {
                    let src = c * h * w + (y0 + y) * w + x0;
                    sub[c * th * tw + y * tw..c * th * tw + (y + 1) * tw]
                        .copy_from_slice(&latents[src..src + tw]);
                }
            }
            let img = sessions.decode(model, &sub, th, tw)?;
            let wy = ramp(y0, th, h, overlap, f);
            let wx = ramp(x0, tw, w, overlap, f);
            let iw = tw * f;
            for (y, ky) in wy.iter().enumerate() {
                for (x, kx) in wx.iter().enumerate() {
                    let k = ky * kx;
                    if k == 0.0 {
                        continue;
                    }
                    let g = (y0 * f + y) * ow + x0 * f + x;
                    weight[g] += k;
                    for c in 0..3 {
                        acc[c * oh * ow + g] += k * f32::from(img.pixels[(y * iw + x) * 3 + c]);
                    }
                }
            }
        }
    }
    sessions.ensure_vae_dims(model, h, w)?;
    let mut pixels = vec![0u8; 3 * oh * ow];
    for (i, k) in weight.iter().enumerate() {
        for c in 0..3 {
            pixels[i * 3 + c] = (acc[c * oh * ow + i] / k.max(1e-12))
                .round()
                .clamp(0.0, 255.0) as u8;
        }
    }
    Ok(RgbImage {
        width: ow as u32,
        height: oh as u32,
        pixels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tiles_only_large_latents() {
        let t = VaeTiling {
            mode: TileMode::Auto,
            ..VaeTiling::default()
        };
        assert!(!t.applies(64, 64));
        assert!(t.applies(160, 160));
        assert!(!VaeTiling::default().applies(1000, 1000));
        let on = VaeTiling {
            mode: TileMode::On,
            ..t
        };
        assert!(on.applies(96, 64) && !on.applies(64, 64));
        let off = VaeTiling {
            mode: TileMode::Off,
            ..t
        };
        assert!(!off.applies(1000, 1000));
    }
}
