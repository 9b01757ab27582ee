//! Times `lora merge` on two synthetic rank-32 SD1.5 LoRAs over every UNet and text-encoder layer.
//!
//! Run: `cargo run --release --example lora_merge_bench` (threads: RAYON_NUM_THREADS, default all cores).

use std::time::Instant;
use stipple::lora::bench::{run_merge, sd15_merge_workload};
use stipple::lora::merge::{MergeOptions, Mode};
use stipple::lora::svd::{Options, RankRule};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let t = Instant::now();
    let w = sd15_merge_workload(32);
    println!(
        "workload: {} layers, built in {:.2} s, {} threads",
        w.params.len(),
        t.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
    let svd = |rank| MergeOptions {
        mode: Mode::Svd,
        svd: Options {
            rule: RankRule {
                rank: Some(rank),
                conv_rank: None,
                dynamic: None,
            },
            clamp: None,
            randomized: false,
        },
    };
    let exact = MergeOptions {
        mode: Mode::Exact,
        svd: Options::default(),
    };
    for (label, opts) in [("exact (rank 64)", exact), ("svd to rank 32", svd(32))] {
        for _ in 0..2 {
            let (t, cpu) = (Instant::now(), cpu_seconds());
            let m = run_merge(&w, &opts)?;
            let secs = t.elapsed().as_secs_f64();
            let cpu = cpu_seconds() - cpu;
            let max = m.layers.iter().map(|l| l.error).fold(0.0, f64::max);
            println!(
                "{label}: {} layers in {secs:.2} s wall, {cpu:.2} s CPU, max relative error {max:.3}",
                m.layers.len()
            );
        }
    }
    Ok(())
}

/// User + system CPU time of this process (Linux `/proc/self/stat`, 100 ticks/s): on a shared
/// machine the wall time depends on the neighbours, the CPU time much less.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime); after the command name, field 3 is at index 0.
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
