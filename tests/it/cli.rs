//! The `stipple` binary as a user runs it: a PNG with both chunks, and one clear error per bad input.

use crate::util::*;
use std::process::Command;
use stipple::image::{parse_infotext, read_text_chunks};
use stipple::job::Job;

fn stipple() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stipple"));
    c.current_dir(root());
    c
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = stipple().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn generate_writes_a_png_whose_chunks_read_back_as_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let (ok, stdout, stderr) = run(&[
        "generate",
        "--prompt",
        "a red fox",
        "--negative",
        "blurry",
        "--seed",
        "1",
        "--steps",
        "4",
        "--sampler",
        "dpmpp-2m-karras",
        "--out",
        out,
        "--batch",
        "2",
    ]);
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["seed"], 1);
    assert_eq!(lines[1]["seed"], 2);
    let path = lines[1]["path"].as_str().unwrap();
    let chunks = read_text_chunks(std::path::Path::new(path)).unwrap();
    let info = parse_infotext(&chunks["parameters"]).unwrap();
    assert_eq!(info.prompt, "a red fox");
    assert_eq!(info.negative, "blurry");
    assert_eq!(info.get("Steps"), Some("4"));
    assert_eq!(info.get("Sampler"), Some("DPM++ 2M Karras"));
    assert_eq!(info.get("Seed"), Some("2"));
    assert_eq!(info.get("CFG scale"), Some("7"));
    assert_eq!(info.get("Size"), Some("64x64"));
    let job: Job = serde_json::from_str(&chunks["stipple"]).unwrap();
    assert_eq!(job.seed, 2);
    assert_eq!(job.prompt, "a red fox");
    assert_eq!(job.steps, 4);
    // Same seed, same image: the second run lands in a new file with identical pixels.
    let (ok, stdout2, stderr) = run(&[
        "generate",
        "--prompt",
        "a red fox",
        "--negative",
        "blurry",
        "--seed",
        "2",
        "--steps",
        "4",
        "--sampler",
        "dpmpp-2m-karras",
        "--out",
        out,
    ]);
    assert!(ok, "{stderr}");
    let again: serde_json::Value = serde_json::from_str(stdout2.trim()).unwrap();
    assert_ne!(again["path"], lines[1]["path"]);
    assert_eq!(
        read_rgb(std::path::Path::new(path)).2,
        read_rgb(std::path::Path::new(again["path"].as_str().unwrap())).2
    );
}

#[test]
fn a_random_seed_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = run(&[
        "generate",
        "--prompt",
        "x",
        "--steps",
        "1",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let seed = line["seed"].as_u64().unwrap();
    assert!(stderr.contains(&format!("seed {seed}")), "{stderr}");
}

fn assert_clear_error(args: &[&str], needle: &str) {
    let (ok, _, stderr) = run(args);
    assert!(!ok, "{args:?} should fail");
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert_eq!(
        stderr
            .trim()
            .lines()
            .filter(|l| l.starts_with("error"))
            .count(),
        1,
        "{stderr}"
    );
}

#[test]
fn bad_input_gives_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    assert_clear_error(
        &["generate", "--prompt", "x", "--model", "/nonexistent/model"],
        "does not exist",
    );
    assert_clear_error(
        &["generate", "--prompt", "x", "--width", "65"],
        "multiples of 8",
    );
    assert_clear_error(
        &["generate", "--prompt", "x", "--sampler", "heun"],
        "unknown sampler \"heun\"",
    );
    assert_clear_error(
        &["generate", "--prompt", "x", "--device", "tpu"],
        "unknown device",
    );

    // A model folder with a component missing.
    let broken = tmp.path().join("no-unet");
    copy_dir(&tiny_model(), &broken);
    std::fs::remove_dir_all(broken.join("unet")).unwrap();
    assert_clear_error(
        &[
            "generate",
            "--prompt",
            "x",
            "--model",
            broken.to_str().unwrap(),
        ],
        "unet",
    );

    // A corrupt (truncated) weights file.
    let corrupt = tmp.path().join("corrupt");
    copy_dir(&tiny_model(), &corrupt);
    let w = corrupt.join("unet/weights.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    assert_clear_error(
        &[
            "generate",
            "--prompt",
            "x",
            "--model",
            corrupt.to_str().unwrap(),
        ],
        "not a valid safetensors file",
    );
}

#[test]
fn doctor_reports_runtime_providers_and_model() {
    let (ok, stdout, stderr) = run(&["doctor"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("ONNX Runtime  1."), "{stdout}");
    assert!(
        stdout.contains("CPUExecutionProvider     available"),
        "{stdout}"
    );
    assert!(stdout.contains("unet"), "{stdout}");
    assert!(stdout.contains("weight map consistent"), "{stdout}");
    let (ok, stdout, _) = run(&["--ort-lib", "/nonexistent/libonnxruntime.so.1", "doctor"]);
    assert!(!ok);
    assert!(stdout.contains("NOT LOADED"), "{stdout}");
}
