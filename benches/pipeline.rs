//! `cargo bench`: the tiny bundled model on the CPU (steps per second), the same report as
//! `stipple bench`. Under `cargo test --all-targets` it does nothing.

use std::path::Path;
use stipple::runtime::{Runtime, SessionOptions};

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
    match stipple::bench::run(&model, rt, SessionOptions::default(), None, 5, None) {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}
