//! The architectures beyond SD 1.x and SDXL base: SD 2.x (OpenCLIP-H, epsilon or v-prediction)
//! and SD1 9-channel inpainting UNets, from stipple folders and single-file checkpoints. The files
//! are written by `scripts/arch_fixtures.py` and checked there by diffusers' own converters; the
//! references are diffusers' pipelines on the tiny models.

use crate::single_file::{image, job, load};
use crate::util::*;
use std::path::{Path, PathBuf};
use stipple::job::Sampler;
use stipple::model::prediction::{self, Prediction};
use stipple::model::{Model, ModelSource, OpenOptions};
use stipple::runtime::SessionOptions;

fn arch_file(name: &str) -> PathBuf {
    root().join("tests/fixtures/single-file-arch").join(name)
}

fn tiny_sd2() -> PathBuf {
    root().join("tests/fixtures/tiny-sd2")
}

/// (largest, mean) per-channel difference against a PNG.
fn diff_png(got: &[u8], png: &Path) -> (u8, f64) {
    let (_, _, want) = read_rgb(png);
    assert_eq!(got.len(), want.len(), "{}", png.display());
    let max = got
        .iter()
        .zip(&want)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0);
    let sum: u64 = got
        .iter()
        .zip(&want)
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    (max, sum as f64 / got.len().max(1) as f64)
}

/// A tensor's name and a change to its raw bytes.
type TensorEdit<'a> = (&'a str, &'a dyn Fn(&mut [u8]));

/// A copy of a safetensors file with its header's `__metadata__` replaced by `meta` and `edit`
/// applied to the data of tensor `tensor` (raw bytes), written into `dir`.
fn rewrite(
    src: &Path,
    dir: &Path,
    name: &str,
    meta: &[(&str, &str)],
    tensor: Option<TensorEdit>,
) -> PathBuf {
    let bytes = std::fs::read(src).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut data = bytes[8 + n..].to_vec();
    let m: serde_json::Map<String, serde_json::Value> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    header.insert("__metadata__".into(), serde_json::Value::Object(m));
    if let Some((key, edit)) = tensor {
        let offs = &header[key]["data_offsets"];
        let (a, b) = (
            offs[0].as_u64().unwrap() as usize,
            offs[1].as_u64().unwrap() as usize,
        );
        edit(&mut data[a..b]);
    }
    let mut text = serde_json::to_vec(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(data);
    let path = dir.join(name);
    std::fs::write(&path, out).unwrap();
    path
}

/// The tiny SD 2.x file (OpenCLIP layout, no metadata) is the folder model bit for bit, and both
/// are diffusers' v-prediction pipeline within 1/255.
#[test]
fn sd2_single_file_equals_the_folder_model_and_diffusers() {
    let mut file = load(
        &arch_file("tiny-sd2.safetensors"),
        SessionOptions::default(),
    );
    assert!(matches!(
        file.model.source,
        ModelSource::SingleFile {
            template: "tiny-sd2"
        }
    ));
    assert_eq!(
        prediction::of_config(&file.model.scheduler_config),
        Prediction::V,
        "{:?}",
        file.model.evidence
    );
    let mut folder = load(&tiny_sd2(), SessionOptions::default());
    for (s, slug) in [
        (Sampler::Euler, "euler"),
        (Sampler::Ddim, "ddim"),
        (Sampler::DpmPp2m, "dpmpp-2m"),
        (Sampler::EulerA, "euler-a"),
    ] {
        let j = job(s, 4);
        let a = image(&mut file, &j);
        assert_eq!(a, image(&mut folder, &j), "{s:?}");
        let png = tiny_sd2().join(format!("reference/image.{slug}.4.png"));
        let (max, mean) = diff_png(&a, &png);
        assert!(
            max <= 1 && mean < 0.01,
            "{s:?} vs diffusers: max {max}, mean {mean}"
        );
    }
}

/// Epsilon or v: the file's metadata, else the one-step test, and `--prediction` over both.
/// tiny-sd2's UNet is made to answer the test with v (its conv_out bias, see the fixture script);
/// raising that bias by 3 makes the same file answer epsilon.
#[test]
fn sd2_prediction_comes_from_metadata_the_one_step_test_or_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let src = arch_file("tiny-sd2.safetensors");
    let open = |path: &Path, p: Option<Prediction>| {
        let mut m = Model::open_with(
            path,
            OpenOptions {
                prediction: p,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        stipple::pipeline::prediction_test::settle(&mut m, runtime()).unwrap();
        let p = prediction::of_config(&m.scheduler_config);
        let line = m
            .evidence
            .iter()
            .find(|l| l.starts_with("prediction: "))
            .cloned()
            .unwrap_or_default();
        (p, line, m.evidence)
    };
    let (p, line, evidence) = open(&src, None);
    assert_eq!(p, Prediction::V, "{line}");
    assert!(line.contains("one-step"), "{line}");
    assert!(evidence[0].contains("SD 2.x"), "{evidence:?}");
    assert!(
        evidence[0].contains("cond_stage_model.model."),
        "{evidence:?}"
    );

    let said_eps = rewrite(
        &src,
        tmp.path(),
        "eps-meta.safetensors",
        &[("modelspec.prediction_type", "epsilon")],
        None,
    );
    let (p, line, _) = open(&said_eps, None);
    assert_eq!(p, Prediction::Epsilon, "{line}");
    assert!(line.contains("modelspec.prediction_type"), "{line}");

    let raise = |b: &mut [u8]| {
        for c in b.chunks_exact_mut(2) {
            let v = half::f16::from_le_bytes([c[0], c[1]]).to_f32() + 3.0;
            c.copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    };
    let tested_eps = rewrite(
        &src,
        tmp.path(),
        "eps-weights.safetensors",
        &[("format", "pt")],
        Some(("model.diffusion_model.out.2.bias", &raise)),
    );
    let (p, line, _) = open(&tested_eps, None);
    assert_eq!(p, Prediction::Epsilon, "{line}");
    assert!(line.contains("one-step"), "{line}");

    let (p, line, _) = open(&src, Some(Prediction::Epsilon));
    assert_eq!(p, Prediction::Epsilon, "{line}");
    assert!(line.contains("--prediction"), "{line}");
    let (p, _, _) = open(&said_eps, Some(Prediction::V));
    assert_eq!(p, Prediction::V);
}

/// `doctor` names the family and the prediction with their evidence; `generate --prediction`
/// changes the picture of a v-prediction file.
#[test]
fn doctor_and_generate_show_the_sd2_variant() {
    let file = arch_file("tiny-sd2.safetensors");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_stipple"))
        .current_dir(root())
        .args(["doctor", "--model"])
        .arg(&file)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("SD2.x"), "{out}");
    assert!(out.contains("OpenCLIP-H"), "{out}");
    assert!(out.contains("prediction: v (no metadata says"), "{out}");

    let mut v = load(&file, SessionOptions::default());
    let mut eps = load(
        &file,
        SessionOptions {
            prediction: Some(Prediction::Epsilon),
            ..Default::default()
        },
    );
    let j = job(Sampler::Euler, 4);
    assert_ne!(image(&mut v, &j), image(&mut eps, &j));
}

/// Loading a model runs the one-step test beside the session builds (on a GPU always, on the CPU
/// for a small UNet such as the tiny one's), and its answer reaches the scheduler: a file whose
/// test says epsilon (the template's own config says v) gives `--prediction epsilon`'s picture.
#[test]
fn the_prediction_test_beside_the_session_builds_reaches_the_scheduler() {
    let tmp = tempfile::tempdir().unwrap();
    let raise = |b: &mut [u8]| {
        for c in b.chunks_exact_mut(2) {
            let v = half::f16::from_le_bytes([c[0], c[1]]).to_f32() + 3.0;
            c.copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    };
    let file = rewrite(
        &arch_file("tiny-sd2.safetensors"),
        tmp.path(),
        "eps-weights.safetensors",
        &[("format", "pt")],
        Some(("model.diffusion_model.out.2.bias", &raise)),
    );
    let opened = Model::open(&file).unwrap();
    assert!(opened.prediction_pending);
    assert!(stipple::pipeline::prediction_test::beside_sessions(
        &opened,
        stipple::runtime::Device::Cpu
    ));
    let with = |prediction| {
        load(
            &file,
            SessionOptions {
                prediction,
                ..Default::default()
            },
        )
    };
    let mut tested = with(None);
    let (mut eps, mut v) = (with(Some(Prediction::Epsilon)), with(Some(Prediction::V)));
    let j = job(Sampler::Euler, 4);
    let picture = image(&mut tested, &j);
    assert_eq!(picture, image(&mut eps, &j));
    assert_ne!(picture, image(&mut v, &j));
}

fn tiny_inpaint() -> PathBuf {
    root().join("tests/fixtures/tiny-sd15-inpaint")
}

/// A 9-channel inpainting UNet takes the mask and the masked picture's latents beside the
/// latents (no blending), as diffusers' inpaint pipeline gives them: within 1/255 of its images
/// at two denoise values and two samplers, and with no mask (all of it repainted, A1111's
/// reading) against diffusers given an all-white mask.
#[test]
fn inpainting_unet_matches_diffusers() {
    let fixture = tiny_inpaint();
    let mut g = load(&fixture, SessionOptions::default());
    assert_eq!(crate::img2img::check_fixture(&fixture, &mut g, true), 4);
    assert_eq!(crate::img2img::check_fixture(&fixture, &mut g, false), 1);
}

/// The inpainting single file is the folder model bit for bit, for text-to-image (a zero picture
/// under an all-white mask) and inpainting; doctor shows the 9 input channels as evidence.
#[test]
fn inpainting_single_file_equals_the_folder_model() {
    let path = arch_file("tiny-sd15-inpaint.safetensors");
    let mut file = load(&path, SessionOptions::default());
    assert!(matches!(
        file.model.source,
        ModelSource::SingleFile {
            template: "tiny-sd15-inpaint"
        }
    ));
    assert!(
        file.model.evidence[0].contains("inpainting UNet"),
        "{:?}",
        file.model.evidence
    );
    let mut folder = load(&tiny_inpaint(), SessionOptions::default());
    let t2i = job(Sampler::EulerA, 4);
    assert_eq!(image(&mut file, &t2i), image(&mut folder, &t2i));
    let mut inpaint = job(Sampler::Ddim, 4);
    let pics = crate::img2img::pictures();
    inpaint.init = Some(
        stipple::image::init::pin(&pics.join("init.png"), 0.75, Some(&pics.join("mask.png")))
            .unwrap(),
    );
    let a = image(&mut file, &inpaint);
    assert_eq!(a, image(&mut folder, &inpaint));
    assert_ne!(a, image(&mut file, &t2i));

    let o = std::process::Command::new(env!("CARGO_BIN_EXE_stipple"))
        .current_dir(root())
        .args(["doctor", "--model"])
        .arg(&path)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("inpainting UNet"), "{out}");
    assert!(out.contains("9 input channels"), "{out}");
}
