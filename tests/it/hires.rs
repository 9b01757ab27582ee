//! The hires fix against a two-pass diffusers reference, the latent modes against torch's
//! `F.interpolate`, and the ONNX upscaler (tiled) against torch's untiled output; all written by
//! `scripts/hires_reference.py` (`tests/fixtures/upscaler/`, `<fixture>/reference/hires.json`).

use crate::reference_spec::{planned, Spec};
use crate::util::{generator, read_rgb, root, runtime, try_image};
use serde::Deserialize;
use std::path::PathBuf;
use stipple::image::resample::{interpolate, LatentMode};
use stipple::image::upscale::ModelUpscaler;
use stipple::job::{HiresFix, Job, RgbImage};

pub fn upscalers() -> PathBuf {
    root().join("tests/fixtures/upscaler")
}

#[derive(Deserialize)]
struct Case {
    file: String,
    upscaler: String,
    sampler: String,
    hires_steps: u32,
    denoise: f64,
    scale: f64,
    model: Option<String>,
    /// The inpainting UNet's cases: the reference with the zero picture encoded by the fixture's
    /// ONNX encoder in onnxruntime (see `scripts/hires_reference.py`).
    file_onnx_zero: Option<String>,
    /// SDXL's cases: the size/crop conditioning diffusers was given for each pass.
    time_ids: Option<PassTimeIds>,
}

#[derive(Deserialize)]
struct PassTimeIds {
    first: Vec<f32>,
    second: Vec<f32>,
}

fn job_for(spec: &Spec<Case>, case: &Case) -> Job {
    let model = case
        .model
        .as_ref()
        .map(|m| stipple::hires::pin_model(&upscalers().join(m)).unwrap());
    let mut fix = HiresFix::new(
        &case.upscaler,
        model,
        (spec.width, spec.height),
        Some(case.scale),
        (None, None),
    )
    .unwrap();
    fix.steps = case.hires_steps;
    fix.denoise = case.denoise;
    Job {
        hires: Some(Box::new(fix)),
        ..spec.job(&spec.prompt, &spec.negative, &case.sampler)
    }
}

/// (mean, largest) per-channel difference.
fn diff(a: &[u8], b: &[u8]) -> (f64, u8) {
    let (max, mean) = crate::single_file::diff(a, b);
    (mean, max)
}

/// Runs every case of the hires references at `spec_path` on `g`: (report, cases). Each case is
/// asserted within `tol`/255 mean abs of its diffusers picture, and within 1/255 of its
/// `file_onnx_zero` picture where it has one.
fn check_cases(
    g: &mut stipple::pipeline::Generator,
    spec_path: &std::path::Path,
    tol: f64,
) -> (String, usize) {
    let spec: Spec<Case> = Spec::read(spec_path);
    let dir = spec_path.parent().unwrap();
    let mut report = Vec::new();
    for case in &spec.images {
        let job = job_for(&spec, case);
        let got = try_image(g, &job).unwrap();
        let (w, h, want) = read_rgb(&dir.join(&case.file));
        assert_eq!(
            (w, h),
            (
                job.hires.as_ref().unwrap().width,
                job.hires.as_ref().unwrap().height
            )
        );
        if let Some(ids) = &case.time_ids {
            let fix = job.hires.as_ref().unwrap();
            let time_ids = stipple::pipeline::generator::time_ids;
            assert_eq!(time_ids(spec.width, spec.height, 1), ids.first);
            assert_eq!(time_ids(fix.width, fix.height, 1), ids.second);
        }
        let (mad, max) = diff(&got, &want);
        report.push(format!("{}: mean {mad:.4} max {max}", case.file));
        if let Some(file) = &case.file_onnx_zero {
            let (_, _, onnx) = read_rgb(&dir.join(file));
            let (o_mad, o_max) = diff(&got, &onnx);
            report.push(format!("{file}: mean {o_mad:.4} max {o_max}"));
            assert!(o_mad <= 1.0, "{file}: mean abs difference {o_mad}/255");
        }
        assert!(mad <= tol, "{}: mean abs difference {mad}/255", case.file);
    }
    (report.join(", "), spec.images.len())
}

/// Every upscaler kind (three latent modes, Lanczos, an ONNX model) and several samplers, hires
/// steps and denoise values: within 1/255 mean abs of the two-pass diffusers reference.
#[test]
fn hires_fix_matches_a_two_pass_diffusers_reference() {
    let mut g = generator();
    let (report, n) = check_cases(&mut g, &crate::util::reference("hires.json"), 1.0);
    eprintln!("hires fix vs diffusers (0-255): {report}");
    assert_eq!(n, 5);
}

/// The plain 4-channel SDXL model, a latent mode (Euler a, hires steps 0, denoise 0.6, 2×) and Lanczos
/// (DPM++ 2M, 6 hires steps, denoise 0.5, 1.5×), against StableDiffusionXLPipeline then
/// StableDiffusionXLImg2ImgPipeline given A1111's size conditioning explicitly: each pass's own size as
/// original and target size, crop (0, 0), which the reference records and stipple's `time_ids` must
/// equal. Within 1/255 mean abs, as the SD 1.x test (measured 0.0003 latent, 0.0026 Lanczos, max 1).
/// The choice shows: given the first pass's size as the hires pass's original size instead, diffusers'
/// Lanczos picture moves 6.9/255 mean (the latent one only 0.08/255), so that case would fail.
#[test]
fn hires_fix_on_sdxl_matches_a_two_pass_diffusers_reference() {
    let mut g = crate::sdxl::sdxl_generator();
    let spec = crate::sdxl::tiny_sdxl().join("reference/hires.json");
    let (report, n) = check_cases(&mut g, &spec, 1.0);
    eprintln!("hires fix on SDXL vs diffusers (0-255): {report}");
    assert_eq!(n, 2);
}

/// On a 9-channel inpainting UNet the second pass repaints the upscaled picture under an all-ones
/// mask with a zero picture's latents (A1111's conditioning with no mask), as diffusers' inpaint
/// pipeline given an all-white mask, for a latent mode, Lanczos and an ONNX upscaler (three
/// samplers, hires steps 0 and 4). Within 1/255 mean abs of diffusers with the zero picture
/// encoded by the same ONNX encoder (measured 0.0004 to 0.005/255); within 1.5/255 of all-torch diffusers
/// (measured 0.0004 latent, 1.2 Lanczos, 1.1 ONNX upscaler: torch and onnxruntime encode the
/// constant picture up to 2e-3 apart on the tiny random VAE, and its tiny UNet amplifies that).
#[test]
fn hires_fix_on_an_inpainting_unet_matches_diffusers_inpaint_pipeline() {
    let fixture = root().join("tests/fixtures/tiny-sd15-inpaint");
    let mut g = crate::single_file::load(&fixture, stipple::runtime::SessionOptions::default());
    let (report, n) = check_cases(&mut g, &fixture.join("reference/hires.json"), 1.5);
    eprintln!("hires fix on the inpainting UNet vs diffusers (0-255): {report}");
    assert_eq!(n, 3);
}

/// The 9-channel fixture of another family (`scripts/sdxl_inpaint_fixtures.py`) put together with its
/// base tiny model as its inpaint tests open it, against its `reference/hires.json` (the cases of the
/// SD 1.x test, written by `scripts/hires_reference.py`): (report, cases).
fn check_nine_channel(n: &crate::nine_channel::Nine, tol: f64) -> (String, usize) {
    let dir = tempfile::tempdir().unwrap();
    let folder = crate::nine_channel::folder(n, dir.path());
    let mut g = crate::single_file::load(&folder, stipple::runtime::SessionOptions::default());
    assert!(stipple::pipeline::img2img::inpaint_unet(&g.model));
    let spec = root().join(format!(
        "tests/fixtures/{}-inpaint/reference/hires.json",
        n.name
    ));
    check_cases(&mut g, &spec, tol)
}

/// The SD 1.x test's cases on the SD 2.x 9-channel UNet (epsilon, StableDiffusionInpaintPipeline):
/// within 1/255 mean abs of diffusers with the zero picture encoded by the same ONNX encoder
/// (measured 0.0003 latent, 0.0035 Lanczos, 0.0011 ONNX upscaler); within 3.5/255 of all-torch
/// diffusers (measured 0.0003 latent, 2.86 Lanczos, 2.66 ONNX upscaler: torch and onnxruntime encode
/// the constant picture up to 7e-3 apart on tiny-sd2's random VAE, more than SD 1.x's 2e-3).
#[test]
fn hires_fix_on_an_sd2_inpainting_unet_matches_diffusers_inpaint_pipeline() {
    let (report, n) = check_nine_channel(&crate::sd2_inpaint::N, 3.5);
    eprintln!("hires fix on the SD2 inpainting UNet vs diffusers (0-255): {report}");
    assert_eq!(n, 3);
}

/// The same on the SDXL 9-channel UNet (StableDiffusionXLInpaintPipeline, both text encoders, the
/// size/crop conditioning of the hires size): within 1/255 of diffusers with the ONNX-encoded zero
/// picture (measured 0.0002 latent, 0.0015 Lanczos, 0.0008 ONNX upscaler); within 1/255 of all-torch
/// diffusers (measured 0.0002, 0.69, 0.57; the constant picture's moments 2e-3 apart).
#[test]
fn hires_fix_on_an_sdxl_inpainting_unet_matches_diffusers_inpaint_pipeline() {
    let (report, n) = check_nine_channel(&crate::sdxl_inpaint::N, 1.0);
    eprintln!("hires fix on the SDXL inpainting UNet vs diffusers (0-255): {report}");
    assert_eq!(n, 3);
}

#[derive(Deserialize)]
struct InterpCase {
    mode: String,
    size: [usize; 2],
    out: Vec<f32>,
}

#[derive(Deserialize)]
struct Interp {
    shape: [usize; 4],
    input: Vec<f32>,
    cases: Vec<InterpCase>,
}

/// Each of A1111's latent modes, up and down, as torch's `F.interpolate(size, mode, antialias)`.
#[test]
fn latent_modes_match_torch_interpolate() {
    let text = std::fs::read_to_string(upscalers().join("interpolate.json")).unwrap();
    let spec: Interp = serde_json::from_str(&text).unwrap();
    let [_, c, h, w] = spec.shape;
    let mut seen = std::collections::HashSet::new();
    for case in &spec.cases {
        let mode = LatentMode::from_name(&case.mode).unwrap();
        seen.insert(case.mode.clone());
        let got = interpolate(&spec.input, c, (h, w), (case.size[0], case.size[1]), mode);
        let err = got
            .iter()
            .zip(&case.out)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert_eq!(got.len(), case.out.len());
        assert!(err < 1e-5, "{} {:?}: max error {err}", case.mode, case.size);
    }
    assert_eq!(seen.len(), LatentMode::ALL.len());
}

fn init_picture() -> RgbImage {
    let (width, height, pixels) = read_rgb(&root().join("tests/fixtures/img2img/init.png"));
    RgbImage {
        width,
        height,
        pixels,
    }
}

fn open(name: &str) -> Result<ModelUpscaler, String> {
    let opts = stipple::runtime::SessionOptions::default();
    ModelUpscaler::open(runtime(), &opts, &upscalers().join(name)).map_err(|e| e.to_string())
}

/// The tiny 2× model in tiles of 24 with an overlap of 8 (nine tiles on 64×64) against torch's
/// untiled output, and against stipple's own untiled run (the seam error).
#[test]
fn tiled_upscaler_matches_torchs_untiled_output() {
    let mut up = open("tiny-2x.onnx").unwrap();
    assert_eq!(up.scale(), 2);
    let img = init_picture();
    let tiled = up.upscale(&img, 24, 8).unwrap();
    let whole = up.upscale(&img, 64, 8).unwrap();
    let (w, h, torch) = read_rgb(&upscalers().join("init.2x.png"));
    assert_eq!((tiled.width, tiled.height), (w, h));
    let (mad, max) = diff(&tiled.pixels, &torch);
    let (seam_mad, seam_max) = diff(&tiled.pixels, &whole.pixels);
    let (whole_mad, _) = diff(&whole.pixels, &torch);
    eprintln!(
        "tiled vs torch untiled: mean {mad:.4} max {max}; untiled vs torch: mean {whole_mad:.4}; \
         tiled vs untiled (seams): mean {seam_mad:.4} max {seam_max}"
    );
    assert!(mad <= 1.0 && whole_mad <= 1.0, "{mad} {whole_mad}");
    // The overlap is wider than the model's reach (two 3×3 convolutions): no seam beyond rounding.
    assert!(seam_max <= 1, "seam error {seam_max}/255");
    // Too small an overlap for the model's reach shows at the seams, and is still bounded.
    let thin = up.upscale(&img, 24, 1).unwrap();
    let (thin_mad, thin_max) = diff(&thin.pixels, &whole.pixels);
    eprintln!("overlap 1: seams mean {thin_mad:.4} max {thin_max}");
    assert!(thin_max > seam_max, "a thin overlap should show seams");
}

/// A graph that is not an image upscaler, a file that is not ONNX, and a missing one: each a clear
/// error naming the file.
#[test]
fn wrong_upscaler_files_are_refused() {
    let err = open("two-inputs.onnx").err().unwrap();
    assert!(
        err.contains("two-inputs.onnx") && err.contains("2 inputs"),
        "{err}"
    );
    assert!(err.contains("[1, 3, H, W]"), "{err}");
    let err = open("init.2x.png").err().unwrap();
    assert!(err.contains("not an ONNX model"), "{err}");
    let err = open("nope.onnx").err().unwrap();
    assert!(err.contains("no such file"), "{err}");
}

/// `generate` with the hires flags as a user runs it: the PNG is the hires size, its infotext
/// has A1111's hires fields, and its `stipple` chunk holds the hires fix and replays to the same
/// pixels.
#[test]
fn generate_with_hires_records_and_replays_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let args = [
        "generate",
        "--prompt",
        "a red fox",
        "--steps",
        "4",
        "--seed",
        "3",
        "--hires-scale",
        "1.5",
        "--hires-upscaler",
        "Latent (bicubic)",
        "--hires-steps",
        "3",
        "--hires-denoise",
        "0.6",
        "--out",
        out,
    ];
    let (ok, stdout, stderr) = crate::cli::run(&args);
    assert!(ok, "{stderr}");
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let path = PathBuf::from(line["path"].as_str().unwrap());
    let (w, h, pixels) = read_rgb(&path);
    assert_eq!((w, h), (96, 96));
    let chunks = stipple::image::read_text_chunks(&path).unwrap();
    let info = stipple::image::parse_infotext(&chunks["parameters"]).unwrap();
    assert_eq!(info.get("Size"), Some("64x64"));
    assert_eq!(info.get("Denoising strength"), Some("0.6"));
    assert_eq!(info.get("Hires upscale"), Some("1.5"));
    assert_eq!(info.get("Hires steps"), Some("3"));
    assert_eq!(info.get("Hires upscaler"), Some("Latent (bicubic)"));
    let job: Job = serde_json::from_str(&chunks["stipple"]).unwrap();
    let fix = job
        .hires
        .clone()
        .expect("the hires fix in the stipple chunk");
    assert_eq!((fix.width, fix.height, fix.steps), (96, 96, 3));
    assert_eq!(try_image(&mut generator(), &job).unwrap(), pixels);
}

/// Bad hires settings: one clear error, a usage exit, nothing written.
#[test]
fn bad_hires_settings_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let two = upscalers().join("two-inputs.onnx");
    let cases: [(&[&str], &str); 6] = [
        (&["--hires-upscaler", "ESRGAN"], "Latent (nearest-exact)"),
        (&["--hires-scale", "0"], "above 0"),
        (&["--hires-width", "100"], "multiples of 8"),
        (
            &["--hires-denoise", "0.1", "--hires-steps", "4"],
            "runs no step",
        ),
        (
            &["--upscaler", "tests/fixtures/upscaler/nope.onnx"],
            "cannot read the upscaler",
        ),
        (&["--upscaler", two.to_str().unwrap()], "2 inputs"),
    ];
    for (extra, needle) in cases {
        crate::util::assert_refused(&out, extra, needle);
    }
}

/// A batch line's `hires` object is part of the job and its hash: another scale or another model
/// file's contents make another hash; an unknown key is an invalid line.
#[test]
fn batch_hires_field_is_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("up.onnx");
    std::fs::copy(upscalers().join("tiny-2x.onnx"), &model).unwrap();
    let out = dir.path().join("out");
    let plan = |hires: &str| {
        let template = format!(r#"{{"prompt": "a fox", "steps": 4, "seed": 1, "hires": {hires}}}"#);
        planned(&template, &out)
    };
    let (ok, two, stderr) = plan(r#"{"scale": 2}"#);
    assert!(ok, "{stderr}");
    let two = two.expect("a planned job");
    assert_eq!(two["job"]["hires"]["width"], 128);
    assert_eq!(two["job"]["hires"]["upscaler"], "Latent");
    let (_, other, _) = plan(r#"{"scale": 1.5}"#);
    assert_ne!(other.unwrap()["hash"], two["hash"]);
    let with_model = format!(
        r#"{{"model": {}}}"#,
        serde_json::to_string(model.to_str().unwrap()).unwrap()
    );
    let (ok, a, stderr) = plan(&with_model);
    assert!(ok, "{stderr}");
    let a = a.unwrap();
    assert_eq!(a["job"]["hires"]["upscaler"], "up");
    std::fs::write(&model, b"changed").unwrap();
    let (_, b, _) = plan(&with_model);
    assert_ne!(b.unwrap()["hash"], a["hash"]);
    let (ok, _, stderr) = plan(r#"{"scael": 2}"#);
    assert!(!ok);
    assert!(stderr.contains("scael"), "{stderr}");
    assert!(!out.exists(), "a dry run wrote files");
}

/// `stipple upscale` as a user runs it: the PNG is torch's untiled output within 1/255; a graph
/// that is not an upscaler and a tiling that cannot work are refused, nothing written.
#[test]
fn upscale_command_writes_the_models_picture() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("big.png");
    let model = upscalers().join("tiny-2x.onnx");
    let run = |model: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "upscale",
            "tests/fixtures/img2img/init.png",
            "--upscaler",
            model.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        crate::cli::run(&args)
    };
    let (ok, stdout, stderr) = run(&model, &["--tile", "24", "--tile-overlap", "8"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("128x128"), "{stdout}");
    let (w, h, got) = read_rgb(&out);
    let (_, _, torch) = read_rgb(&upscalers().join("init.2x.png"));
    assert_eq!((w, h), (128, 128));
    let (mad, _) = diff(&got, &torch);
    assert!(mad <= 1.0, "{mad}");
    std::fs::remove_file(&out).unwrap();
    let (ok, _, stderr) = run(&upscalers().join("two-inputs.onnx"), &[]);
    assert!(!ok && stderr.contains("2 inputs"), "{stderr}");
    let (ok, _, stderr) = run(&model, &["--tile", "8", "--tile-overlap", "4"]);
    assert!(!ok && stderr.contains("twice the overlap"), "{stderr}");
    assert!(!out.exists());
}
