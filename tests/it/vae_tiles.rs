//! The exact tiled VAE decode against the untiled decode of the same latents, on the tiny SD1.5
//! and SDXL models: within 1/255 on average (float rounding only: GroupNorm statistics summed in
//! another order), at several tile sizes, sizes that are not a multiple of the tile, odd sizes;
//! the tiled encode against the untiled encode the same way. The mid-block attention runs in
//! query chunks of at most a tile's pixels, so these sizes split it too, with a last chunk that is
//! shorter; the tests at the end count the chunks.

use crate::util::{generator, root, runtime, tiny_model};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use stipple::model::layout::{GraphKind, OpenOptions};
use stipple::model::{ComponentKind, Model};
use stipple::patch::assemble_graph;
use stipple::pipeline::vae_tiles::{TileMode, TiledDecoder, TiledEncoder, VaeTiling};
use stipple::pipeline::Generator;
use stipple::runtime::SessionOptions;

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

/// Largest single difference allowed (0-255): a value within float noise of a rounding boundary
/// may round the other way.
const MAX_LEVELS: u8 = 2;

/// Decodes `h` × `w` latents whole and in tiles of each of `tiles`; asserts each tiled picture is
/// within 1/255 on average and [`MAX_LEVELS`] at any pixel, and reports the differences.
fn tiled_against_whole(g: &mut Generator, what: &str, h: usize, w: usize, tiles: &[usize]) {
    let z = latents(h, w);
    let whole = g.decode(&z, h, w).unwrap();
    let mut report = Vec::new();
    for &tile in tiles {
        g.set_vae_tiling(VaeTiling {
            mode: TileMode::On,
            tile,
        });
        let t = g.decode_image(&z, h, w);
        g.set_vae_tiling(VaeTiling::default());
        let t = t.unwrap();
        assert_eq!((t.width, t.height), (whole.width, whole.height));
        let (max, mean) = crate::single_file::diff(&t.pixels, &whole.pixels);
        report.push(format!("tile {tile}: mean {mean:.4} max {max}"));
        assert!(
            mean <= 1.0 && max <= MAX_LEVELS,
            "{what} {h}x{w} latents, tile {tile}: mean {mean:.4}/255, max {max}/255"
        );
    }
    eprintln!(
        "{what}: tiled vs untiled VAE decode of {h}x{w} latents (0-255): {}",
        report.join("; ")
    );
}

/// 48×48 latents (a 96×96 image) in tiles of 8 to 40 latent pixels (20 and 40: not divisors of
/// 48); `off`, and a tile as large as the latents, decode whole.
#[test]
fn tiled_vae_decode_matches_the_untiled_one() {
    let mut g = generator();
    let (h, w) = (48, 48);
    let z = latents(h, w);
    let whole = g.decode(&z, h, w).unwrap();
    for (mode, tile) in [(TileMode::On, 48), (TileMode::Off, 16)] {
        g.set_vae_tiling(VaeTiling { mode, tile });
        let got = g.decode_image(&z, h, w).unwrap();
        g.set_vae_tiling(VaeTiling::default());
        assert_eq!(got.pixels, whole.pixels, "{mode:?} {tile}");
    }
    tiled_against_whole(&mut g, "tiny SD1.5", h, w, &[8, 16, 20, 40]);
}

/// Odd latent sizes, neither a multiple of the tile: the last tiles are narrower.
#[test]
fn tiled_vae_decode_of_odd_sizes() {
    let mut g = generator();
    tiled_against_whole(&mut g, "tiny SD1.5", 37, 29, &[16, 7]);
}

/// The tiny SDXL VAE (its own weights and scaling factor) the same way.
#[test]
fn tiled_sdxl_vae_decode_matches_the_untiled_one() {
    let mut g = crate::sdxl::sdxl_generator();
    tiled_against_whole(&mut g, "tiny SDXL", 40, 33, &[16, 24]);
}

/// A smooth picture `[3, h, w]` in [-1, 1] with some noise.
fn picture(h: usize, w: usize) -> Vec<f32> {
    let mut s = 987654321u64;
    let mut out = Vec::with_capacity(3 * h * w);
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let noise = ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
                let v = (y as f32 / 9.0 + c as f32).sin() * (x as f32 / 6.0).cos();
                out.push((0.8 * v + 0.3 * noise).clamp(-1.0, 1.0));
            }
        }
    }
    out
}

/// Largest difference allowed between the tiled and the untiled encoder moments (mean and
/// log-variance; the latents are the mean times 0.18215, or 0.13025 on SDXL).
const MOMENTS_TOL: f32 = 1e-3;

/// Encodes an `h` × `w` picture whole and in tiles of each of `tiles` latent pixels.
fn encode_tiled_against_whole(g: &mut Generator, what: &str, h: usize, w: usize, tiles: &[usize]) {
    let x = picture(h, w);
    let whole = g.encode_image(&x, h, w).unwrap();
    let mut report = Vec::new();
    for &tile in tiles {
        g.set_vae_tiling(VaeTiling {
            mode: TileMode::On,
            tile,
        });
        let t = g.encode_image(&x, h, w);
        g.set_vae_tiling(VaeTiling::default());
        let t = t.unwrap();
        assert_eq!(t.len(), whole.len());
        let max = t
            .iter()
            .zip(&whole)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let mean = t
            .iter()
            .zip(&whole)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / t.len() as f32;
        report.push(format!("tile {tile}: mean {mean:.2e} max {max:.2e}"));
        assert!(max <= MOMENTS_TOL, "{what} {h}x{w}, tile {tile}: max {max}");
    }
    eprintln!(
        "{what}: tiled vs untiled VAE encode of a {h}x{w} picture (moments): {}",
        report.join("; ")
    );
}

/// The tiny VAE halves the picture: 96×80 pixels are 48×40 latents, in tiles of 8, 16 and 20;
/// 74×58 pixels are 37×29 latents (odd).
#[test]
fn tiled_vae_encode_matches_the_untiled_one() {
    let mut g = generator();
    encode_tiled_against_whole(&mut g, "tiny SD1.5", 96, 80, &[8, 16, 20]);
    encode_tiled_against_whole(&mut g, "tiny SD1.5", 74, 58, &[16]);
}

#[test]
fn tiled_sdxl_vae_encode_matches_the_untiled_one() {
    let mut g = crate::sdxl::sdxl_generator();
    encode_tiled_against_whole(&mut g, "tiny SDXL", 80, 66, &[16]);
}

/// The plain fp32 graph of `kind` in the model folder `dir`, its external file's name and its
/// assembled weights, as the generator builds its tiled VAE from.
fn plain_graph(dir: &Path, kind: ComponentKind) -> (Vec<u8>, String, Arc<[u8]>) {
    let model = Model::open_with(dir, OpenOptions::default()).unwrap();
    let c = model.component(kind).unwrap();
    let (buf, _) =
        assemble_graph(c, GraphKind::Plain, &HashMap::<String, Vec<f32>>::new()).unwrap();
    (
        c.graph.bytes.clone(),
        c.weightmap.external_file.clone(),
        buf,
    )
}

/// The tiled decoder with its attention in query chunks of `tile`² rows against the untiled
/// decode; asserts the number of chunks (the last one shorter) and the same bounds as above.
fn chunked_decode(g: &mut Generator, dir: &Path, scale: f32, h: usize, w: usize, tile: usize) {
    let (graph, file, weights) = plain_graph(dir, ComponentKind::VaeDecoder);
    let mut dec = TiledDecoder::build(
        runtime(),
        &SessionOptions::default(),
        &graph,
        &file,
        weights,
        scale,
    )
    .unwrap();
    let z = latents(h, w);
    let whole = g.decode(&z, h, w).unwrap();
    let got = dec.decode(&z, h, w, tile).unwrap();
    let rows = tile * tile;
    assert_ne!((h * w) % rows, 0, "the last chunk should be shorter");
    assert_eq!(dec.attention_chunks(), (h * w).div_ceil(rows));
    let (max, mean) = crate::single_file::diff(&got.pixels, &whole.pixels);
    eprintln!(
        "{}: attention in {} chunks of {rows} query rows ({h}x{w} latents, tile {tile}), tiled vs \
         untiled (0-255): mean {mean:.4} max {max}",
        dir.display(),
        dec.attention_chunks()
    );
    assert!(
        mean <= 1.0 && max <= MAX_LEVELS,
        "mean {mean:.4}/255, max {max}/255"
    );
}

/// 37×29 latents (1073 query pixels) in chunks of 49 (tile 7: 21 chunks and one of 44) and of 256
/// (tile 16: 4 and one of 49), on the tiny SD1.5 decoder; 40×33 in chunks of 576 (tile 24) on
/// the tiny SDXL one.
#[test]
fn the_decoders_attention_runs_in_query_chunks() {
    let mut g = generator();
    chunked_decode(&mut g, &tiny_model(), 0.18215, 37, 29, 7);
    chunked_decode(&mut g, &tiny_model(), 0.18215, 37, 29, 16);
    drop(g);
    let mut g = crate::sdxl::sdxl_generator();
    let dir = root().join("tests/fixtures/tiny-sdxl");
    chunked_decode(&mut g, &dir, 0.13025, 40, 33, 24);
}

/// The encoder's attention the same way: a 74×58 picture is 37×29 latents, chunks of 100 (tile
/// 10: 10 chunks and one of 73); moments within [`MOMENTS_TOL`] of the untiled encode.
#[test]
fn the_encoders_attention_runs_in_query_chunks() {
    let mut g = generator();
    let (graph, file, weights) = plain_graph(&tiny_model(), ComponentKind::VaeEncoder);
    let mut enc = TiledEncoder::build(
        runtime(),
        &SessionOptions::default(),
        &graph,
        &file,
        weights,
    )
    .unwrap();
    let (h, w) = (74, 58);
    let x = picture(h, w);
    let whole = g.encode_image(&x, h, w).unwrap();
    let got = enc.encode(&x, h, w, 37, 10).unwrap();
    assert_eq!(enc.attention_chunks(), 11);
    let max = got
        .iter()
        .zip(&whole)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("tiny SD1.5 encoder, attention in 11 chunks: moments max difference {max:.2e}");
    assert!(max <= MOMENTS_TOL, "max {max}");
}
