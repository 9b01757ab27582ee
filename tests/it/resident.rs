//! Resident weights (`--resident-weights true`): adapter changes rewrite the weight
//! buffers in place without building a session, every adapter state equals a fresh load of the same
//! state, and a refused adapter leaves the buffers as they were.

use crate::util::*;
use std::path::PathBuf;
use stipple::pipeline::{EngineSpec, Generator};
use stipple::runtime::SessionOptions;

fn lora_dir() -> PathBuf {
    root().join("tests/fixtures/lora")
}

fn load(resident: bool, bound: bool) -> Generator {
    let opts = SessionOptions {
        resident: Some(resident),
        ..SessionOptions::default()
    };
    tiny_generator(opts, vec![lora_dir()], bound)
}

pub fn image(g: &mut Generator, prompt: &str) -> Vec<u8> {
    try_image(g, &small_job(prompt, 23)).unwrap_or_else(|e| panic!("{prompt}: {e}"))
}

/// Largest per-channel difference of two images of the same size.
pub fn max_diff(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

const BASE: &str = "a red fox";
const A: &str = "a red fox <lora:lyco_locon:1>";
const AB: &str = "a red fox <lora:lyco_locon:1> <lora:peft_diffusers:0.7>";
const B: &str = "a red fox <lora:peft_diffusers:0.7>";
const TE: &str = "a red fox <lora:lyco_te:1>";

#[test]
fn swaps_rewrite_weights_in_place_and_equal_fresh_loads() {
    let mut g = load(true, false);
    assert!(g.resident_weights());
    let base = image(&mut g, BASE);
    let mut seen = Vec::new();
    for prompt in [A, AB, B, TE, BASE] {
        let got = image(&mut g, prompt);
        let stats = g.last_fuse().expect("an adapter change was timed");
        assert_eq!(stats.session_s, 0.0, "{prompt}: no session was built");
        assert!(stats.upload_s > 0.0, "{prompt}: weights were uploaded");
        // Each state after the swaps before it equals the same state reached first after a load:
        // the swap restored what the previous adapters touched.
        let fresh = image(&mut load(true, false), prompt);
        assert_eq!(got, fresh, "{prompt}: after the swaps before it");
        seen.push(got);
    }
    assert_eq!(seen.last(), Some(&base), "back to the base, bit for bit");
    assert!(
        seen[..4].iter().all(|s| *s != base),
        "every adapter changes the image: {:?}",
        seen[..4].iter().map(|s| *s != base).collect::<Vec<_>>()
    );
    assert_ne!(seen[0], seen[1]);
    assert_ne!(seen[1], seen[2]);
}

#[test]
fn resident_and_baked_weights_give_the_same_images() {
    let mut resident = load(true, false);
    let mut baked = load(false, false);
    assert!(!baked.resident_weights());
    for prompt in [BASE, AB, TE] {
        let (r, b) = (image(&mut resident, prompt), image(&mut baked, prompt));
        // ONNX Runtime pre-packs constant weights on the CPU and not inputs: sums may round
        // differently, never by more than a step of 8 bits.
        assert!(max_diff(&r, &b) <= 1, "{prompt}: {}", max_diff(&r, &b));
    }
    // The UNet's output itself, on the same inputs.
    let sample: Vec<f32> = (0..2 * 4 * 8 * 8)
        .map(|i| ((i % 17) as f32 - 8.0) / 8.0)
        .collect();
    let context: Vec<f32> = (0..2 * 77 * 32)
        .map(|i| ((i % 13) as f32 - 6.0) / 6.0)
        .collect();
    let run = |g: &mut Generator| {
        g.unet(&sample, [2, 4, 8, 8], 500.0, &context)
            .expect("UNet runs")
    };
    let (r, b) = (run(&mut resident), run(&mut baked));
    let err = max_rel_err(&r, &b);
    assert!(err < 1e-4, "UNet output differs by {err}");
}

#[test]
fn fixed_unet_buffers_read_resident_weights() {
    // The path a CUDA graph takes: inputs and outputs in fixed buffers, weights bound beside them.
    let mut bound = load(true, true);
    let mut plain = load(true, false);
    for prompt in [BASE, A, BASE] {
        assert_eq!(
            image(&mut bound, prompt),
            image(&mut plain, prompt),
            "{prompt}"
        );
    }
}

#[test]
fn a_refused_adapter_leaves_resident_weights_as_they_were() {
    let mut g = load(true, false);
    let before = image(&mut g, A);
    for prompt in [
        "a red fox <lora:mismatch_shape:1>",
        "a red fox <lora:bad_truncated:1>",
        "a red fox <lora:wrong_family_sd1:1>",
    ] {
        let err = try_image(&mut g, &small_job(prompt, 23)).expect_err(prompt);
        assert!(!err.is_empty());
    }
    assert_eq!(image(&mut g, A), before);
}

#[test]
fn generate_with_resident_weights_writes_the_same_picture() {
    let lora = lora_dir();
    let run = |resident: &str, out: &std::path::Path| {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_stipple"))
            .current_dir(root())
            .args(["generate", "--prompt", A, "--steps", "3", "--seed", "4"])
            .args(["--width", "64", "--height", "64", "--no-preview"])
            .args(["--resident-weights", resident, "--lora-dir"])
            .arg(&lora)
            .arg("--out")
            .arg(out)
            .output()
            .expect("stipple runs");
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let png = std::fs::read_dir(out)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "png"))
            .expect("a PNG");
        read_rgb(&png).2
    };
    let dir = tempfile::tempdir().unwrap();
    let resident = run("true", &dir.path().join("r"));
    let baked = run("false", &dir.path().join("b"));
    assert!(max_diff(&resident, &baked) <= 1);
}

/// SDXL: two text encoders (the second with its projection) and a UNet, each rewritten in place.
#[test]
fn sdxl_swaps_in_place_equal_fresh_loads_and_baked_weights() {
    let load_xl = |resident: bool| {
        let opts = SessionOptions {
            resident: Some(resident),
            ..SessionOptions::default()
        };
        let mut g = Generator::load(
            EngineSpec::new(crate::sdxl::tiny_sdxl()).with_session(opts),
            runtime(),
        )
        .expect("tiny SDXL loads");
        g.set_lora_dirs(vec![root().join("tests/fixtures/lora-sdxl")]);
        g
    };
    let mut g = load_xl(true);
    let base = image(&mut g, BASE);
    let states = [
        "a red fox <lora:xl_te2_locon:1>",
        "a red fox <lora:xl_kohya_locon:0.8> <lora:xl_te1_locon:1>",
        "a red fox <lora:xl_lokr:1>",
        BASE,
    ];
    let mut seen = Vec::new();
    for prompt in states {
        let got = image(&mut g, prompt);
        let stats = g.last_fuse().expect("an adapter change was timed");
        assert_eq!(stats.session_s, 0.0, "{prompt}: no session was built");
        let fresh = image(&mut load_xl(true), prompt);
        assert_eq!(got, fresh, "{prompt}: after the swaps before it");
        seen.push(got);
    }
    assert_eq!(seen.last(), Some(&base), "back to the base, bit for bit");
    for (prompt, s) in states.iter().zip(&seen).take(3) {
        assert_ne!(*s, base, "{prompt} changes the image");
    }
    let baked = image(&mut load_xl(false), states[1]);
    assert!(
        max_diff(&seen[1], &baked) <= 1,
        "resident vs baked: {}",
        max_diff(&seen[1], &baked)
    );
}

/// Static shapes let ONNX Runtime fold the text encoder's position-embedding lookup into a
/// constant when the session is built, read from the external-data file and not from the resident
/// buffer: that weight is baked into the session, and the picture is the one without static shapes
/// (once 20/255 apart on this model, 33/255 on a full SD1.5 on the GPU).
#[test]
fn static_shapes_with_resident_weights_give_the_same_images() {
    let fixed = |resident: bool| {
        let opts = SessionOptions {
            resident: Some(resident),
            static_shapes: true,
            ..SessionOptions::default()
        };
        tiny_generator(opts, vec![lora_dir()], false)
    };
    let mut free = load(true, false);
    let mut resident = fixed(true);
    let mut baked = fixed(false);
    assert!(resident.resident_weights());
    for prompt in [BASE, TE, AB, BASE] {
        let want = image(&mut free, prompt);
        assert_eq!(image(&mut resident, prompt), want, "{prompt}: resident");
        let b = image(&mut baked, prompt);
        assert!(
            max_diff(&b, &want) <= 1,
            "{prompt}: baked {}",
            max_diff(&b, &want)
        );
    }
}
