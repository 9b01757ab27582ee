//! Times the exact tiled VAE decode ([`stipple::pipeline::vae_tiles`]) and measures its peak
//! memory on a decoder graph with random weights (no model needed: a template's full-size graph
//! will do), or the untiled decode, or compares the two.
//!
//! `cargo run --release --example vae_tile_bench -- GRAPH.onnx[.gz] H W [tiled|tiled-whole|untiled|compare|encode] [TILE]`
//! (H and W in latent pixels; TILE default 64). One mode per process, so the peak resident
//! memory (VmHWM) printed is that mode's; `tiled-whole` is `tiled` with the mid-block attention
//! run whole, as before it ran in query chunks; `compare` prints the difference in 0-255 levels;
//! `encode` takes an encoder graph and compares its tiled and untiled moments.

use std::io::Read;
use std::sync::Arc;
use std::time::Instant;
use stipple::model::Graph;
use stipple::pipeline::vae::to_rgb;
use stipple::pipeline::vae_tiles::{TiledDecoder, TiledEncoder};
use stipple::runtime::tensor_io::{run, Input};
use stipple::runtime::{build_session, Runtime, SessionOptions};

/// A small deterministic generator (xorshift), uniform in [-1, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // RUST_LOG=stipple=debug: the host memory and RSS after each step of the tiled run.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage =
        "usage: vae_tile_bench GRAPH.onnx[.gz] H W [tiled|tiled-whole|untiled|compare|encode] [TILE]";
    let path = args.first().ok_or(usage)?;
    let h: usize = args.get(1).ok_or(usage)?.parse()?;
    let w: usize = args.get(2).ok_or(usage)?.parse()?;
    let mode = args.get(3).map(String::as_str).unwrap_or("tiled");
    let tile: usize = args.get(4).map(|t| t.parse()).transpose()?.unwrap_or(64);
    let mut bytes = std::fs::read(path)?;
    if path.ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice()).read_to_end(&mut out)?;
        bytes = out;
    }
    let graph = Graph::from_bytes(path.as_ref(), bytes)?;
    let weights = random_weights(&graph);
    let file = graph
        .externals
        .first()
        .map(|e| e.location.clone())
        .ok_or("the graph has no external weights")?;
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let latents: Vec<f32> = (0..4 * h * w).map(|_| 0.18215 * 1.7 * rng.next()).collect();
    let rt = Runtime::get(None, false)?;
    let opts = SessionOptions::default();
    println!(
        "{path}: {h}x{w} latents, {mode}, tile {tile}, {} MB of weights, {} threads",
        weights.len() >> 20,
        rayon::current_num_threads()
    );

    if mode == "encode" {
        return encode_compare(rt, &opts, &graph, &file, weights, h, w, tile);
    }
    let mut tiled = None;
    if mode != "untiled" {
        let t = Instant::now();
        let mut dec = TiledDecoder::build(
            rt,
            &opts,
            &graph.bytes,
            &file,
            Arc::clone(&weights),
            0.18215,
        )?;
        dec.set_attention_chunking(mode != "tiled-whole");
        let (segments, whole) = dec.segment_counts();
        println!(
            "tiled: {segments} segments ({whole} run whole), built in {:.2} s",
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let img = dec.decode(&latents, h, w, tile)?;
        println!(
            "tiled decode: {:.2} s, peak RSS {:.0} MB, attention in {} query chunks (0: whole)",
            t.elapsed().as_secs_f64(),
            stipple::bench::peak_rss_mb().unwrap_or(0.0),
            dec.attention_chunks()
        );
        tiled = Some(img);
    }
    if !mode.starts_with("tiled") {
        let t = Instant::now();
        let mut s = build_session(
            rt,
            "VAE decoder",
            &graph.bytes,
            &file,
            weights,
            &opts,
            &[],
            &[],
        )?;
        let built = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let z: Vec<f32> = latents.iter().map(|x| x / 0.18215).collect();
        let out = run(
            &mut s,
            vec![Input::F32("latent_sample", vec![1, 4, h, w], &z)],
            &["sample"],
        )?;
        let (shape, data) = out.into_iter().next().ok_or("no output")?;
        let img = to_rgb(&data, shape[3], shape[2]);
        println!(
            "untiled decode: {:.2} s (built in {built:.2} s), peak RSS {:.0} MB",
            t.elapsed().as_secs_f64(),
            stipple::bench::peak_rss_mb().unwrap_or(0.0)
        );
        if let Some(t) = &tiled {
            let n = img.pixels.len().max(1) as f64;
            let (mut max, mut sum) = (0u8, 0u64);
            for (a, b) in t.pixels.iter().zip(&img.pixels) {
                max = max.max(a.abs_diff(*b));
                sum += u64::from(a.abs_diff(*b));
            }
            let spread = img.pixels.iter().map(|&p| f64::from(p)).sum::<f64>() / n;
            println!(
                "tiled vs untiled (0-255): mean {:.4}, max {max} (picture mean level {spread:.1})",
                sum as f64 / n
            );
        }
    }
    Ok(())
}

/// `encode` mode, GRAPH an encoder: a random `8h × 8w` picture encoded tiled and untiled; prints
/// the largest difference of the moments.
#[allow(clippy::too_many_arguments)]
fn encode_compare(
    rt: &Runtime,
    opts: &SessionOptions,
    graph: &Graph,
    file: &str,
    weights: Arc<[u8]>,
    h: usize,
    w: usize,
    tile: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let (ih, iw) = (8 * h, 8 * w);
    let mut rng = Rng(0x51ed270b27a1f2c3);
    let picture: Vec<f32> = (0..3 * ih * iw).map(|_| 0.9 * rng.next()).collect();
    let mut enc = TiledEncoder::build(rt, opts, &graph.bytes, file, Arc::clone(&weights))?;
    let t = Instant::now();
    let tiled = enc.encode(&picture, ih, iw, h, tile)?;
    println!(
        "tiled encode: {:.2} s, attention in {} query chunks (0: whole)",
        t.elapsed().as_secs_f64(),
        enc.attention_chunks()
    );
    let mut s = build_session(
        rt,
        "VAE encoder",
        &graph.bytes,
        file,
        weights,
        opts,
        &[],
        &[],
    )?;
    let t = Instant::now();
    let out = run(
        &mut s,
        vec![Input::F32("sample", vec![1, 3, ih, iw], &picture)],
        &["latent_parameters"],
    )?;
    println!("untiled encode: {:.2} s", t.elapsed().as_secs_f64());
    let whole = &out.first().ok_or("no output")?.1;
    let max = tiled
        .iter()
        .zip(whole)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = whole.iter().map(|x| x.abs()).fold(0f32, f32::max);
    println!(
        "tiled vs untiled moments: max abs difference {max:.3e} (largest moment {scale:.3}), {} values",
        whole.len()
    );
    Ok(())
}

/// Weights for every external initializer: convolution and linear weights uniform with variance
/// 1/fan-in (activations keep their scale), norm scales 1, biases and norm shifts 0.
fn random_weights(graph: &Graph) -> Arc<[u8]> {
    let len = graph
        .externals
        .iter()
        .map(|e| e.offset + e.length)
        .max()
        .unwrap_or(0);
    let mut buf = vec![0u8; len];
    let mut rng = Rng(0x2545f4914f6cdd1d);
    for e in &graph.externals {
        let n = e.length / 4;
        let norm = e.name.contains("norm");
        let fan_in: usize = e.dims.iter().skip(1).product::<usize>().max(1);
        let a = (3.0 / fan_in as f32).sqrt();
        for i in 0..n {
            let v = match (e.dims.len(), norm, e.name.ends_with("weight")) {
                (1, true, true) => 1.0,
                (1, _, _) => 0.0,
                _ => a * rng.next(),
            };
            buf[e.offset + 4 * i..e.offset + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    buf.into()
}
