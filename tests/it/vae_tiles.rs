//! Tiled VAE decoding against the untiled decode of the same latents on the tiny model.

use crate::util::generator;
use stipple::pipeline::vae_tiles::{TileMode, VaeTiling};

/// Smooth pseudo-random latents `[4, h, w]` at the VAE's scale (a decoded image has structure at
/// many scales; white noise alone would be the hardest case for the seams).
fn latents(h: usize, w: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(4 * h * w);
    let mut s = 12345u64;
    for c in 0..4 {
        for y in 0..h {
            for x in 0..w {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let noise = ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
                let (fy, fx) = (y as f32 / 7.0, x as f32 / 5.0);
                let smooth = (fy + c as f32).sin() * (fx - c as f32).cos();
                out.push(0.18215 * (1.5 * smooth + noise));
            }
        }
    }
    out
}

/// 48×48 latents (a 96×96 image): one tile as large as the latents is the untiled decode
/// exactly, and `off` decodes whole; real tiles are measured against the untiled decode and
/// reported. They are not within 1/255: the decoder's GroupNorm and mid-block attention see one
/// tile, not the picture (the tiny model's random weights make that worse than a real VAE's).
#[test]
fn tiled_vae_decode_against_the_untiled_one() {
    let (h, w) = (48, 48);
    let z = latents(h, w);
    let mut g = generator();
    let whole = g.decode(&z, h, w).unwrap();
    let mut run = |mode, tile, overlap| {
        g.set_vae_tiling(VaeTiling {
            mode,
            tile,
            overlap,
        });
        let got = g.decode_image(&z, h, w);
        g.set_vae_tiling(VaeTiling::default());
        got.unwrap()
    };
    let one = run(TileMode::On, 48, 8);
    assert_eq!(one.pixels, whole.pixels);
    let off = run(TileMode::Off, 16, 8);
    assert_eq!(off.pixels, whole.pixels);
    let mut report = Vec::new();
    for (tile, overlap) in [(40, 16), (32, 16), (16, 8)] {
        let t = run(TileMode::On, tile, overlap);
        assert_eq!((t.width, t.height), (whole.width, whole.height));
        let (max, mean) = crate::single_file::diff(&t.pixels, &whole.pixels);
        assert!(max > 0, "tile {tile}: tiles should have decoded separately");
        report.push(format!(
            "tile {tile} overlap {overlap}: mean {mean:.2} max {max}"
        ));
    }
    eprintln!("tiled vs untiled VAE decode (0-255): {}", report.join("; "));
}
