//! `cargo bench`: the tiny bundled model on the CPU (steps per second), the same report as
//! `stipple bench`. Under `cargo test --all-targets` it does nothing.

use std::path::Path;
use stipple::runtime::Runtime;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-sd15");
    let rt = match Runtime::get(None, false) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    match stipple::bench::run(stipple::engine::EngineSpec::new(&model), rt, None, 5, None) {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    }
    // ΔW of a rank-32 LoRA/LoCon at real SD1.5 shapes (DESIGN.md §4 target: ≤ 1 s on 2 cores).
    for (label, w) in [
        (
            "attention (192 layers)",
            stipple::lora::bench::sd15_unet_lora(32),
        ),
        ("whole UNet", stipple::lora::bench::sd15_full_unet_lora(32)),
    ] {
        let flops: f64 = w
            .params
            .iter()
            .map(|p| 2.0 * 32.0 * p.shape.iter().product::<usize>() as f64)
            .sum();
        let mut times = Vec::new();
        for _ in 0..3 {
            let t = std::time::Instant::now();
            if let Err(e) = stipple::lora::bench::run(&w) {
                eprintln!("ΔW benchmark failed: {e}");
                std::process::exit(1);
            }
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let t = times[1];
        println!(
            "ΔW rank 32, {label} ({} layers): {:.3} s median of 3, {:.1} GFLOP/s ({:.1} GFLOP)",
            w.params.len(),
            t,
            flops / t / 1e9,
            flops / 1e9
        );
    }
    // The UNet's inputs go to the session in f16 every step: SD1.5 (context 2·77·768 + latents
    // 2·4·64·64) and SDXL (2·77·2048 + 2·4·128·128) values, one value per call against the slice
    // conversion the runs use (`tensor_io::to_f16`).
    for (label, n) in [("SD1.5 512²", 150_528usize), ("SDXL 1024²", 446_464)] {
        let data: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.01).sin()).collect();
        let per_value = median_ms(|| {
            data.iter()
                .map(|&x| half::f16::from_f32(x))
                .collect::<Vec<half::f16>>()
        });
        let slice = median_ms(|| stipple::runtime::tensor_io::to_f16(&data));
        println!(
            "UNet inputs to f16, {label} ({n} values): {slice:.3} ms as a slice, {per_value:.3} ms one value at a time (median of 9)"
        );
    }
    // The VAE decoder's output to RGB bytes, every image, 512² and 1024²: `vae::to_rgb` against
    // the same formula with `f32::round` (a library call per value).
    for side in [512usize, 1024] {
        let chw: Vec<f32> = (0..3 * side * side)
            .map(|i| ((i as f32) * 0.001).sin())
            .collect();
        let fast = median_ms(|| stipple::pipeline::vae::to_rgb(&chw, side, side).pixels);
        let plane = side * side;
        let rounding = median_ms(|| {
            let mut px = vec![0u8; 3 * plane];
            for i in 0..plane {
                for c in 0..3 {
                    let x = (chw[c * plane + i] / 2.0 + 0.5).clamp(0.0, 1.0);
                    px[i * 3 + c] = (x * 255.0).round() as u8;
                }
            }
            px
        });
        println!(
            "VAE output to RGB, {side}²: {fast:.3} ms, {rounding:.3} ms with f32::round (median of 9)"
        );
    }
}

/// The median of nine runs of `f`, in milliseconds.
fn median_ms<T>(f: impl Fn() -> T) -> f64 {
    let mut times: Vec<f64> = (0..9)
        .map(|_| {
            let t = std::time::Instant::now();
            std::hint::black_box(f());
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[4]
}
