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
}
