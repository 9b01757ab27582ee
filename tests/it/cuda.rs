//! The CUDA settings as far as a machine without a GPU can check them: the `[cuda]` section and the
//! `--cuda-*` flags change nothing on the CPU, bad values are one clear error, `bench --json` has
//! its device-memory fields (null on the CPU), and the UNet's fixed buffers (what a CUDA graph runs
//! through) give the same images as the plain path.

use crate::util::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use stipple::pipeline::Generator;
use stipple::runtime::{CudaOptions, SessionOptions};

fn stipple(config_home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stipple"));
    c.current_dir(root());
    // Hermetic: the user's own config file must not decide these tests.
    c.env("STIPPLE_CONFIG_HOME", config_home);
    c.env_remove("STIPPLE_CUDA__CUDA_GRAPH");
    c
}

fn run(config_home: &Path, args: &[&str]) -> (bool, String, String) {
    let out = stipple(config_home).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

/// A config folder whose `config.toml` is `text`.
fn config_home(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), text).unwrap();
    dir
}

const EVERY_CUDA_KEY: &str = "[cuda]\nconv_algo_search = \"exhaustive\"\nmemory_limit_gb = 1.5\n\
                              cuda_graph = true\ntf32 = false\n";

/// `stipple generate` on the CPU; returns the image's pixels.
fn generate(config_home: &Path, extra: &[&str]) -> Vec<u8> {
    let out = tempfile::tempdir().unwrap();
    let mut args = vec![
        "generate",
        "--prompt",
        "a red fox",
        "--seed",
        "3",
        "--steps",
        "2",
        "--no-preview",
        "--out",
        out.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = run(config_home, &args);
    assert!(ok, "{args:?}: {stderr}");
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    read_rgb(Path::new(line["path"].as_str().unwrap())).2
}

#[test]
fn cpu_runs_ignore_the_cuda_section_and_flags() {
    let plain = config_home("");
    let base = generate(plain.path(), &[]);
    let cuda = config_home(EVERY_CUDA_KEY);
    assert_eq!(
        generate(cuda.path(), &[]),
        base,
        "[cuda] changes nothing on the CPU"
    );
    let (ok, _, stderr) = run(
        plain.path(),
        &[
            "generate",
            "--prompt",
            "x",
            "--steps",
            "1",
            "--no-preview",
            "--out",
            tempfile::tempdir().unwrap().path().to_str().unwrap(),
            "--cuda-graph",
            "--cuda-conv-search",
            "default",
            "--cuda-mem-limit-gb",
            "2",
        ],
    );
    assert!(ok, "{stderr}");
    assert!(stderr.contains("CUDA devices only"), "{stderr}");
}

#[test]
fn bad_cuda_settings_are_one_clear_error() {
    let cases: [(&str, &[&str], &str); 4] = [
        (
            "[cuda]\nconv_algo_search = \"fast\"\n",
            &[],
            "cuda.conv_algo_search",
        ),
        (
            "[cuda]\nmemory_limit_gb = -1\n",
            &[],
            "cuda.memory_limit_gb",
        ),
        ("", &["--cuda-mem-limit-gb", "-3"], "--cuda-mem-limit-gb"),
        ("", &["--cuda-conv-search", "fast"], "heuristic"),
    ];
    for (config, flags, needle) in cases {
        let home = config_home(config);
        let mut args = vec!["generate", "--prompt", "x", "--steps", "1"];
        args.extend_from_slice(flags);
        let (ok, _, stderr) = run(home.path(), &args);
        assert!(!ok, "{config:?} {flags:?} should fail");
        assert!(stderr.contains(needle), "{config:?} {flags:?}: {stderr}");
        assert_eq!(
            stderr.lines().filter(|l| l.starts_with("error")).count(),
            1,
            "{stderr}"
        );
    }
    // The same checks hold for bench and batch, which read the section too.
    let home = config_home("[cuda]\nconv_algo_search = \"fast\"\n");
    for args in [
        &["bench", "--repeats", "1"][..],
        &["batch", "--dry-run"][..],
    ] {
        let (ok, _, stderr) = run(home.path(), args);
        assert!(!ok && stderr.contains("cuda.conv_algo_search"), "{stderr}");
    }
}

#[test]
fn bench_json_reports_device_memory_as_null_on_the_cpu() {
    let home = config_home(EVERY_CUDA_KEY);
    let (ok, stdout, stderr) = run(home.path(), &["bench", "--repeats", "1", "--json"]);
    assert!(ok, "{stderr}");
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(r["device"], "cpu");
    for key in [
        "peak_device_mb",
        "device_baseline_mb",
        "device_memory_error",
    ] {
        assert!(r[key].is_null(), "{key}: {r}");
        assert!(
            r.as_object().unwrap().contains_key(key),
            "{key} missing: {r}"
        );
    }
    let peak = r["peak_rss_mb"].as_f64().unwrap();
    assert!(peak > 0.0, "{r}");
    for key in ["loaded_rss_mb", "end_rss_mb"] {
        let now = r[key].as_f64().unwrap();
        assert!(
            now > 0.0 && now <= peak,
            "{key} is a reading under the peak: {r}"
        );
    }
    assert!(r["unet_step_ms"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(
        r["static_shapes"], false,
        "cuda_graph forces nothing on the CPU"
    );
    let (ok, text, stderr) = run(home.path(), &["bench", "--repeats", "1"]);
    assert!(ok, "{stderr}");
    assert!(text.contains("peak host memory"), "{text}");
    assert!(text.contains("host memory after load"), "{text}");
    assert!(!text.contains("device memory"), "{text}");
}

fn lora_dir() -> PathBuf {
    root().join("tests/fixtures/lora")
}

fn load(static_shapes: bool, bound: bool) -> Generator {
    let opts = SessionOptions {
        static_shapes,
        // Everything on: the CPU session ignores it.
        cuda: CudaOptions {
            cuda_graph: true,
            tf32: false,
            memory_limit_gb: 1.0,
            ..CudaOptions::default()
        },
        ..SessionOptions::default()
    };
    tiny_generator(opts, vec![lora_dir()], bound)
}

#[test]
fn fixed_unet_buffers_give_the_same_images() {
    let base = image(&mut generator(), "a red fox");
    let mut bound = load(false, true);
    assert_eq!(
        image(&mut bound, "a red fox"),
        base,
        "bound, dynamic shapes"
    );
    // Static shapes; an adapter swaps the UNet session, so the buffers are made again for it.
    let mut plain = load(true, false);
    let mut bound = load(true, true);
    // A prompt past 75 tokens has a longer context: new shapes, new session, new buffers.
    let long = "a red fox in the snow at night, ".repeat(12);
    for prompt in [
        "a red fox",
        "a red fox <lora:lyco_locon:1>",
        long.as_str(),
        "a red fox",
    ] {
        assert_eq!(
            image(&mut bound, prompt),
            image(&mut plain, prompt),
            "{prompt}"
        );
    }
}

fn image(g: &mut stipple::pipeline::Generator, prompt: &str) -> Vec<u8> {
    try_image(g, &small_job(prompt, 5)).unwrap_or_else(|e| panic!("{prompt}: {e}"))
}
