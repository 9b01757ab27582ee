//! The `stipple` binary as a user runs it: a PNG with both chunks, and one clear error per bad input.

use crate::util::*;
use std::process::Command;
use stipple::image::{parse_infotext, read_text_chunks};
use stipple::job::Job;

pub fn stipple() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stipple"));
    c.current_dir(root());
    c
}

pub fn run(args: &[&str]) -> (bool, String, String) {
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
        &["generate", "--prompt", "x", "--sampler", "hune"],
        "unknown sampler \"hune\"",
    );
    assert_clear_error(
        &["generate", "--prompt", "x", "--device", "tpu"],
        "unknown device",
    );

    // A model folder with a component missing.
    // Its name does not say which: the error must.
    let broken = tmp.path().join("broken");
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
    // The bundled model's fused text encoder and VAE decoder, with their operators.
    assert!(
        stdout.contains("fused fp16 graph: 5 Attention, 5 QuickGelu, 10 SkipLayerNormalization"),
        "{stdout}"
    );
    assert!(stdout.contains("fused fp16 graph: 8 GroupNorm"), "{stdout}");
    let (ok, stdout, _) = run(&["--ort-lib", "/nonexistent/libonnxruntime.so.1", "doctor"]);
    assert!(!ok);
    assert!(stdout.contains("NOT LOADED"), "{stdout}");
}

/// Runs the binary with `env` added and `STIPPLE_CONFIG_HOME` at `config` (an empty folder: no
/// user file), and the user's own stipple variables taken away. Returns (exit code, stdout, stderr).
fn run_in(config: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut c = stipple();
    for (k, _) in std::env::vars() {
        if k.starts_with("STIPPLE_") {
            c.env_remove(k);
        }
    }
    c.env("STIPPLE_CONFIG_HOME", config);
    c.envs(env.iter().copied());
    let out = c.args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The infotext of the one image a `generate` run printed.
fn infotext_of(stdout: &str) -> stipple::image::Infotext {
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let chunks = read_text_chunks(std::path::Path::new(line["path"].as_str().unwrap())).unwrap();
    parse_infotext(&chunks["parameters"]).unwrap()
}

#[test]
fn generate_honours_config_toml_and_stipple_variables() {
    let cfg = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let loras = root().join("tests/fixtures/lora");
    std::fs::write(
        cfg.path().join("config.toml"),
        format!(
            "lora_folders = [{:?}]\n[generation]\nsteps = 3\ncfg = 5.5\nsampler = \"DDIM\"\nlora_method = \"live\"\n",
            loras.display().to_string()
        ),
    )
    .unwrap();
    let args = [
        "generate",
        "--prompt",
        "a fox <lora:lyco_locon:0.5>",
        "--seed",
        "3",
        "--no-preview",
        "--out",
        out.path().to_str().unwrap(),
    ];
    // The file alone: its steps, CFG and sampler, its LoRA folder, its LoRA method.
    let (code, stdout, stderr) = run_in(cfg.path(), &[("STIPPLE_LOG", "debug")], &args);
    assert_eq!(code, 0, "{stderr}");
    let info = infotext_of(&stdout);
    assert_eq!(info.get("Steps"), Some("3"));
    assert_eq!(info.get("CFG scale"), Some("5.5"));
    assert_eq!(info.get("Sampler"), Some("DDIM"));
    assert!(info
        .get("Lora hashes")
        .is_some_and(|h| h.contains("lyco_locon")));
    assert!(stderr.contains("lora_method: Live"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "no colours into a pipe: {stderr}");
    // The environment over the file, a flag over both.
    let env = [
        ("STIPPLE_GENERATION__STEPS", "2"),
        ("STIPPLE_GENERATION__CFG", "4"),
    ];
    let (code, stdout, stderr) = run_in(cfg.path(), &env, &args);
    assert_eq!(code, 0, "{stderr}");
    let info = infotext_of(&stdout);
    assert_eq!(info.get("Steps"), Some("2"));
    assert_eq!(info.get("CFG scale"), Some("4"));
    let mut with_flag = args.to_vec();
    with_flag.extend(["--steps", "1"]);
    let (code, stdout, stderr) = run_in(cfg.path(), &env, &with_flag);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(infotext_of(&stdout).get("Steps"), Some("1"));
}

/// `models_root` in config.toml is what `--models-root` gives when the flag is absent; the flag
/// wins when both are given; a configured root that is not an install is an error naming the key.
#[test]
fn models_root_comes_from_the_config_and_the_flag_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("config");
    let webui = tmp.path().join("webui");
    let comfy = tmp.path().join("comfy");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::create_dir_all(webui.join("models/Stable-diffusion")).unwrap();
    std::fs::create_dir_all(comfy.join("models/checkpoints")).unwrap();
    std::fs::copy(
        root().join("tests/fixtures/single-file/tiny-sd15.safetensors"),
        webui.join("models/Stable-diffusion/tiny.safetensors"),
    )
    .unwrap();
    let write_config = |root: &std::path::Path| {
        std::fs::write(
            cfg.join("config.toml"),
            format!("models_root = {:?}\n", root.display().to_string()),
        )
        .unwrap()
    };
    write_config(&webui);
    let args = [
        "generate",
        "--model",
        "tiny",
        "--prompt",
        "a fox",
        "--steps",
        "1",
        "--no-preview",
        "--out",
        out.to_str().unwrap(),
    ];
    // The config alone: `tiny` is the install's checkpoint.
    let (code, stdout, stderr) = run_in(&cfg, &[], &args);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(infotext_of(&stdout).get("Model"), Some("tiny"));
    // The flag over the config: `tiny` is looked up in the flag's install only, where it is not.
    let mut with_flag = args.to_vec();
    with_flag.extend(["--models-root", comfy.to_str().unwrap()]);
    let (code, _, stderr) = run_in(&cfg, &[], &with_flag);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("no checkpoint called \"tiny\"")
            && stderr.contains(comfy.to_str().unwrap())
            && !stderr.contains(webui.to_str().unwrap()),
        "{stderr}"
    );
    // A configured folder that is not an install names the key.
    write_config(&tmp.path().join("nowhere"));
    let (code, _, stderr) = run_in(&cfg, &[], &args);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("configuration key `models_root`") && stderr.contains("nowhere"),
        "{stderr}"
    );
}

#[test]
fn flags_before_the_subcommand_apply_to_it_or_are_refused() {
    let cfg = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let loras = root().join("tests/fixtures/lora");
    let (code, stdout, stderr) = run_in(
        cfg.path(),
        &[],
        &[
            "--lora-dir",
            loras.to_str().unwrap(),
            "--out",
            out.path().to_str().unwrap(),
            "generate",
            "--prompt",
            "a fox <lora:lyco_locon>",
            "--steps",
            "1",
            "--no-preview",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(line["path"]
        .as_str()
        .unwrap()
        .starts_with(out.path().to_str().unwrap()));
    let (code, _, stderr) = run_in(
        cfg.path(),
        &[],
        &["--lora-dir", "x", "lora", "inspect", "x.safetensors"],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("after this subcommand"), "{stderr}");
}

#[test]
fn exit_codes_tell_done_failed_and_usage_apart() {
    let cfg = tempfile::tempdir().unwrap();
    let quick = ["--ort-lib", "/nonexistent/libonnxruntime.so"];
    let code = |args: &[&str]| {
        let mut all = quick.to_vec();
        all.extend(args);
        run_in(cfg.path(), &[], &all)
    };
    // Usage: clap's own errors, a bad flag value, a bad prompt.
    assert_eq!(code(&["generate"]).0, 2, "missing --prompt");
    assert_eq!(code(&["generate", "--prompt", "x", "--steps", "0"]).0, 2);
    assert_eq!(
        code(&["generate", "--prompt", "x", "--sampler", "hune"]).0,
        2
    );
    assert_eq!(code(&["generate", "--prompt", "x", "--device", "tpu"]).0, 2);
    assert_eq!(code(&["generate", "--prompt", "<lora:>"]).0, 2);
    // Failed: a missing model, a missing file, an ONNX Runtime that does not load.
    let (c, _, e) = code(&["generate", "--prompt", "x", "--model", "/nonexistent/m"]);
    assert_eq!(c, 1, "{e}");
    assert_eq!(code(&["lora", "inspect", "/nonexistent.safetensors"]).0, 1);
    let (c, _, e) = code(&["generate", "--prompt", "x"]);
    assert_eq!(c, 1, "{e}");
    assert!(
        e.contains("ONNX Runtime") || e.contains("onnxruntime"),
        "{e}"
    );
    // A config mistake is a usage error, named.
    std::fs::write(cfg.path().join("config.toml"), "[generation]\nstesp = 4\n").unwrap();
    let (c, _, e) = code(&["generate", "--prompt", "x"]);
    assert_eq!(c, 2, "{e}");
    assert!(e.contains("did you mean `generation.steps`?"), "{e}");
}

/// One `error:` line at the start, none further on (no `error: ... error: ...`).
fn one_error(stderr: &str) {
    assert_eq!(stderr.matches("error").count(), 1, "{stderr}");
    assert!(stderr.lines().any(|l| l.starts_with("error: ")), "{stderr}");
}

#[test]
fn errors_say_the_right_thing() {
    let cfg = tempfile::tempdir().unwrap();
    let loras = root().join("tests/fixtures/lora");
    let loras = loras.to_str().unwrap();
    // An ONNX Runtime that cannot load: whatever is reported instead was found before loading.
    let before_load = |args: &[&str]| {
        let mut all = vec!["--ort-lib", "/nonexistent/libonnxruntime.so", "generate"];
        all.extend(args);
        run_in(cfg.path(), &[], &all)
    };
    let (c, _, e) = before_load(&["--prompt", "x", "--width", "100"]);
    assert_eq!(c, 2);
    assert!(e.contains("--width 100") && !e.contains("x8"), "{e}");
    one_error(&e);
    // The OS error once.
    let (_, _, e) = run_in(
        cfg.path(),
        &[],
        &["lora", "inspect", "/nonexistent.safetensors"],
    );
    assert_eq!(e.matches("os error 2").count(), 1, "{e}");
    // An SD 1.x adapter on an SDXL model, refused before the model loads.
    let sdxl = root().join("tests/fixtures/tiny-sdxl");
    let (c, _, e) = before_load(&[
        "--prompt",
        "x <lora:wrong_family_sd1>",
        "--lora-dir",
        loras,
        "--model",
        sdxl.to_str().unwrap(),
    ]);
    assert_eq!(c, 1);
    assert!(e.contains("wrong base model") && e.contains("SDXL"), "{e}");
    assert!(!e.contains("ONNX Runtime"), "{e}");
    // An SDXL `lbw=` vector (12 weights) on an SD 1.x model, before loading, one prefix.
    let (c, _, e) = before_load(&[
        "--prompt",
        "x <lora:lyco_locon:lbw=1,1,1,1,1,1,1,1,1,1,1,1>",
        "--lora-dir",
        loras,
    ]);
    assert_eq!(c, 2, "{e}");
    assert!(e.contains("lbw") || e.contains("block"), "{e}");
    assert!(!e.contains("generation failed"), "{e}");
    one_error(&e);
    // A LoRA folder that does not exist.
    let (c, _, e) = before_load(&[
        "--prompt",
        "x <lora:ok>",
        "--lora-dir",
        "/nonexistent/loras",
    ]);
    assert_eq!(c, 1);
    assert!(
        e.contains("/nonexistent/loras") && e.contains("does not exist"),
        "{e}"
    );
    // An unclosed bracket warns, as the workstation does, and the run goes on.
    let out = tempfile::tempdir().unwrap();
    let (c, _, e) = run_in(
        cfg.path(),
        &[],
        &[
            "generate",
            "--prompt",
            "a (fox",
            "--steps",
            "1",
            "--no-preview",
            "--out",
            out.path().to_str().unwrap(),
        ],
    );
    assert_eq!(c, 0, "{e}");
    assert!(e.contains("warning: `(` is never closed"), "{e}");
}

#[test]
fn batch_dry_run_reports_an_invalid_line_as_invalid() {
    let cfg = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    std::fs::write(
        &jobs,
        "{\"prompt\": \"a\"}\n{\"prompt\": \"b\"}\n{\"prompt\": \"c\", \"stesp\": 4}\n{\"prompt\": \"d <lora:x:lbw=1,1,1,1,1,1,1,1,1,1,1,1>\"}\n{\"prompt\": \"e\"}\n",
    )
    .unwrap();
    let (c, _, e) = run_in(
        cfg.path(),
        &[],
        &[
            "batch",
            jobs.to_str().unwrap(),
            "--dry-run",
            "--out",
            dir.path().join("out").to_str().unwrap(),
        ],
    );
    assert_eq!(c, 1, "{e}");
    assert!(e.contains("jobs.jsonl:3: unknown field `stesp`"), "{e}");
    assert!(e.contains("did you mean `steps`?"), "{e}");
    assert!(e.contains("sweep"), "the fields listed include sweep: {e}");
    // An SDXL `lbw=` layout on the SD 1.x model: found by the plan, before any load.
    assert!(e.contains("jobs.jsonl:4:") && e.contains("lbw"), "{e}");
    assert!(e.contains("2 job lines are invalid"), "{e}");
    assert!(!e.contains("jobs failed"), "{e}");
}

/// `stipple bench --throughput N` on the tiny model: the three lines it promises, each with a
/// figure above 0 and N images made (3 images at `--unet-batch 2`: a full group and a partial
/// one), the same in `--json`; N = 0 is one clear usage error.
#[test]
fn bench_throughput_reports_images_per_second_for_n_images_alone_and_grouped() {
    let cfg = tempfile::tempdir().unwrap();
    let args = [
        "bench",
        "--throughput",
        "3",
        "--steps",
        "2",
        "--unet-batch",
        "2",
    ];
    let (code, text, stderr) = run_in(cfg.path(), &[], &args);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        text.contains("throughput of") && text.contains("2 steps, 3 images"),
        "{text}"
    );
    for label in [
        "one image per UNet call",
        "up to  2 images per UNet call",
        "the same, decode not pipelined",
    ] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no line {label:?}: {text}"));
        let rate: f64 = line[line.find(label).unwrap() + label.len()..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        assert!(rate > 0.0, "{line}");
        assert!(line.ends_with("3 images)"), "{line}");
    }
    let mut json = args.to_vec();
    json.push("--json");
    let (code, stdout, stderr) = run_in(cfg.path(), &[], &json);
    assert_eq!(code, 0, "{stderr}");
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        (&r["images"], &r["steps"], &r["unet_batch"]),
        (&3.into(), &2.into(), &2.into()),
        "{r}"
    );
    assert_eq!(r["made"], serde_json::json!([3, 3, 3]), "{r}");
    for key in [
        "one_at_a_time_images_per_s",
        "grouped_images_per_s",
        "grouped_decode_inline_images_per_s",
        "speedup",
    ] {
        assert!(r[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {r}");
    }
    let (code, stdout, stderr) = run_in(cfg.path(), &[], &["bench", "--throughput", "0"]);
    assert_eq!(code, 2, "a usage error: {stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("--throughput 0: give at least 1 image"),
        "{stderr}"
    );
}
