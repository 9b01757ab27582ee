//! Image-to-image and inpainting against diffusers (`scripts/img2img_reference.py` writes
//! `<fixture>/reference/img2img.json` and its images from `tests/fixtures/img2img/`), and the
//! pictures stipple refuses or converts.

use crate::sdxl::sdxl_generator;
use crate::util::{generator, read_rgb, root, try_image};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use stipple::image::init::{read_picture, InitError};
use stipple::job::{InitImage, Job, Sampler};
use stipple::pipeline::Generator;

pub fn pictures() -> PathBuf {
    root().join("tests/fixtures/img2img")
}

#[derive(Deserialize)]
struct Case {
    file: String,
    sampler: String,
    denoise: f64,
    mask: Option<String>,
    /// σ of the mask blur (diffusers was given the mask blurred by PIL's GaussianBlur).
    #[serde(default)]
    mask_blur: u32,
}

#[derive(Deserialize)]
struct Spec {
    prompt: String,
    negative: String,
    seed: u64,
    cfg: f32,
    steps: u32,
    width: u32,
    height: u32,
    init: String,
    images: Vec<Case>,
}

/// The job diffusers' reference image `case` was made with.
fn job_for(spec: &Spec, case: &Case) -> Job {
    let mask = case.mask.as_ref().map(|m| pictures().join(m));
    let mut init =
        stipple::image::init::pin(&pictures().join(&spec.init), case.denoise, mask.as_deref())
            .expect("the test pictures read");
    init.mask_blur = case.mask_blur;
    Job {
        prompt: spec.prompt.clone(),
        negative: spec.negative.clone(),
        sampler: case.sampler.parse::<Sampler>().unwrap(),
        steps: spec.steps,
        cfg: spec.cfg,
        width: spec.width,
        height: spec.height,
        seed: spec.seed,
        batch: 1,
        schedule: Default::default(),
        sde_noise: Default::default(),
        zero_snr: false,
        sigmas: Default::default(),
        init: Some(init),
        hires: None,
    }
}

pub fn mean_abs(a: &[u8], b: &[u8]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (f32::from(*x) - f32::from(*y)).abs())
        .sum::<f32>()
        / a.len() as f32
}

/// Every reference image of `fixture` within 1/255 mean abs; returns how many there were.
pub(crate) fn check_fixture(fixture: &Path, g: &mut Generator, inpaint: bool) -> usize {
    let text = std::fs::read_to_string(fixture.join("reference/img2img.json")).unwrap();
    let spec: Spec = serde_json::from_str(&text).unwrap();
    let mut report = Vec::new();
    let mut count = 0;
    for case in spec.images.iter().filter(|c| c.mask.is_some() == inpaint) {
        let got = try_image(g, &job_for(&spec, case)).unwrap();
        let (_, _, want) = read_rgb(&fixture.join("reference").join(&case.file));
        let mad = mean_abs(&got, &want);
        report.push(format!("{}: {mad:.4}", case.file));
        assert!(mad <= 1.0, "{}: mean abs difference {mad}/255", case.file);
        count += 1;
    }
    eprintln!(
        "mean abs difference per image (0-255): {}",
        report.join(", ")
    );
    count
}

#[test]
fn img2img_matches_diffusers_sd15() {
    let n = check_fixture(&crate::util::tiny_model(), &mut generator(), false);
    assert_eq!(n, 9);
}

#[test]
fn img2img_matches_diffusers_sdxl() {
    let n = check_fixture(&crate::sdxl::tiny_sdxl(), &mut sdxl_generator(), false);
    assert_eq!(n, 4);
}

/// With the mask unblurred, and blurred by 4 and 8 (diffusers given `mask_processor.blur`'s mask).
#[test]
fn inpainting_matches_diffusers_sd15() {
    let n = check_fixture(&crate::util::tiny_model(), &mut generator(), true);
    assert_eq!(n, 6);
}

/// StableDiffusionXLInpaintPipeline on the tiny SDXL's 4-channel UNet (latent blending): euler and
/// euler-a at denoise 0.75 and 1.
#[test]
fn inpainting_matches_diffusers_sdxl() {
    let n = check_fixture(&crate::sdxl::tiny_sdxl(), &mut sdxl_generator(), true);
    assert_eq!(n, 4);
}

/// The init image's transparent pixels are the mask when no mask is given: init_rgba.png is init.png
/// with mask.png's inverse as alpha, so it gives the same image as init.png with mask.png.
#[test]
fn alpha_of_the_init_image_is_the_mask() {
    let text = std::fs::read_to_string(crate::util::reference("img2img.json")).unwrap();
    let spec: Spec = serde_json::from_str(&text).unwrap();
    let case = spec.images.iter().find(|c| c.mask.is_some()).unwrap();
    let mut g = generator();
    let with_mask = try_image(&mut g, &job_for(&spec, case)).unwrap();
    let mut job = job_for(&spec, case);
    job.init = Some(
        stipple::image::init::pin(&pictures().join("init_rgba.png"), case.denoise, None).unwrap(),
    );
    let with_alpha = try_image(&mut g, &job).unwrap();
    assert_eq!(with_mask, with_alpha);
    // And the mask matters: plain img2img of the same picture differs.
    job.init =
        Some(stipple::image::init::pin(&pictures().join("init.png"), case.denoise, None).unwrap());
    assert_ne!(try_image(&mut g, &job).unwrap(), with_alpha);
}

/// A picture that changed after the job was made is refused, not silently used.
#[test]
fn a_changed_picture_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.png");
    std::fs::copy(pictures().join("init.png"), &path).unwrap();
    let mut job = crate::util::small_job("a fox", 1);
    job.init = Some(stipple::image::init::pin(&path, 0.5, None).unwrap());
    std::fs::copy(pictures().join("mask.png"), &path).unwrap();
    let err = try_image(&mut generator(), &job).unwrap_err();
    assert!(err.contains("changed since the job was made"), "{err}");
}

/// A PNG whose header says 30000×30000 (with a few bytes of data): refused from the header.
pub fn huge_png(path: &Path) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), 30000, 30000);
    enc.set_color(png::ColorType::Rgb);
    let mut w = enc.write_header().unwrap();
    w.write_chunk(
        png::chunk::IDAT,
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    )
    .unwrap();
}

#[test]
fn a_huge_header_is_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.png");
    huge_png(&path);
    let t = std::time::Instant::now();
    match read_picture(&path) {
        Err(InitError::TooLarge { width, height, .. }) => {
            assert_eq!((width, height), (30000, 30000))
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a 30000x30000 picture was read"),
    }
    assert!(t.elapsed().as_secs_f32() < 1.0);
}

/// A 2×1 PNG: colour type, depth, data, palette, the RGB stipple reads.
type PngCase = (
    png::ColorType,
    png::BitDepth,
    &'static [u8],
    Option<Vec<u8>>,
    [u8; 6],
);

/// 16-bit, palette, grey and RGBA PNGs (2×1 each) are read and converted to 8-bit RGB.
#[test]
fn png_kinds_are_converted() {
    use png::{BitDepth, ColorType};
    let dir = tempfile::tempdir().unwrap();
    let cases: [PngCase; 4] = [
        // 16-bit RGB: (0xFFFF, 0x8080, 0) and (0, 0, 0x0101).
        (
            ColorType::Rgb,
            BitDepth::Sixteen,
            &[0xff, 0xff, 0x80, 0x80, 0, 0, 0, 0, 0, 0, 1, 1],
            None,
            [255, 128, 0, 0, 0, 1],
        ),
        // Palette: indices 1, 0 into [(10, 20, 30), (200, 100, 50)].
        (
            ColorType::Indexed,
            BitDepth::Eight,
            &[1, 0],
            Some(vec![10, 20, 30, 200, 100, 50]),
            [200, 100, 50, 10, 20, 30],
        ),
        (
            ColorType::Grayscale,
            BitDepth::Eight,
            &[7, 9],
            None,
            [7, 7, 7, 9, 9, 9],
        ),
        (
            ColorType::Rgba,
            BitDepth::Eight,
            &[1, 2, 3, 0, 4, 5, 6, 255],
            None,
            [1, 2, 3, 4, 5, 6],
        ),
    ];
    for (k, (color, depth, data, palette, want)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("{k}.png"));
        let file = std::fs::File::create(&path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), 2, 1);
        enc.set_color(color);
        enc.set_depth(depth);
        if let Some(p) = palette {
            enc.set_palette(p);
        }
        enc.write_header().unwrap().write_image_data(data).unwrap();
        let pic = read_picture(&path).unwrap();
        assert_eq!(pic.rgb.pixels, want, "{color:?} {depth:?}");
        let alpha = (color == ColorType::Rgba).then(|| vec![0, 255]);
        assert_eq!(pic.alpha, alpha, "{color:?}");
    }
}

#[test]
fn unreadable_pictures_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.png");
    let err = read_picture(&missing).unwrap_err().to_string();
    assert!(
        err.contains("cannot read") && err.contains("nope.png"),
        "{err}"
    );
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not a picture").unwrap();
    let err = read_picture(&text).unwrap_err().to_string();
    assert!(err.contains("not a PNG, JPEG or WebP"), "{err}");
    let truncated = dir.path().join("cut.png");
    let bytes = std::fs::read(pictures().join("init.png")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = read_picture(&truncated).unwrap_err().to_string();
    assert!(err.contains("cut.png") && err.contains("decode"), "{err}");
}

/// CMYK JPEGs are converted (the JPEG decoder turns CMYK into RGB), WebP is read.
#[test]
fn cmyk_jpeg_and_webp_are_read() {
    let red = read_picture(&pictures().join("cmyk.jpg")).unwrap();
    assert_eq!((red.rgb.width, red.rgb.height), (8, 8));
    let px = &red.rgb.pixels[..3];
    assert!(px[0] > 240 && px[1] < 15 && px[2] < 15, "{px:?}");
    let webp = read_picture(&pictures().join("small.webp")).unwrap();
    assert_eq!((webp.rgb.width, webp.rgb.height), (16, 16));
    // Lossless: the first pixel as PIL wrote it.
    assert_eq!(&webp.rgb.pixels[..6], &[6, 6, 154, 22, 6, 205]);
}

/// `generate --init-image` as a user runs it: the PNG's infotext has A1111's `Denoising strength`,
/// and its `stipple` chunk names the picture by path and sha256 and replays to the same pixels.
#[test]
fn generate_from_an_image_records_and_replays_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let args = [
        "generate",
        "--init-image",
        "tests/fixtures/img2img/init.png",
        "--prompt",
        "a red fox",
        "--steps",
        "4",
        "--seed",
        "3",
        "--denoise",
        "0.5",
        "--resize-mode",
        "crop",
        "--out",
        out,
    ];
    let (ok, stdout, stderr) = crate::cli::run(&args);
    assert!(ok, "{stderr}");
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let path = PathBuf::from(line["path"].as_str().unwrap());
    let chunks = stipple::image::read_text_chunks(&path).unwrap();
    let info = stipple::image::parse_infotext(&chunks["parameters"]).unwrap();
    assert_eq!(info.get("Denoising strength"), Some("0.5"));
    assert_eq!(info.get("Mask blur"), None);
    let job: Job = serde_json::from_str(&chunks["stipple"]).unwrap();
    let init = job
        .init
        .clone()
        .expect("the init image in the stipple chunk");
    assert_eq!(
        init.image.path,
        PathBuf::from("tests/fixtures/img2img/init.png")
    );
    let bytes = std::fs::read(pictures().join("init.png")).unwrap();
    use sha2::Digest;
    assert_eq!(
        init.image.sha256,
        stipple::image::init::hex(&sha2::Sha256::digest(&bytes))
    );
    assert_eq!(init.resize_mode, stipple::init_image::ResizeMode::Crop);
    // The recorded job makes the same picture in the library (paths relative to the repository).
    let mut replay = job;
    replay.init = Some(InitImage {
        image: stipple::init_image::FileRef {
            path: root().join(&init.image.path),
            ..init.image.clone()
        },
        ..init
    });
    assert_eq!(
        try_image(&mut generator(), &replay).unwrap(),
        read_rgb(&path).2
    );
}

/// Each bad image input: one clear error, exit status non-zero, nothing written.
#[test]
fn bad_image_inputs_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge.png");
    huge_png(&huge);
    let notes = dir.path().join("notes.jpg");
    std::fs::write(&notes, "hello").unwrap();
    let out = dir.path().join("out");
    let init = "tests/fixtures/img2img/init.png";
    let huge = huge.to_str().unwrap();
    let notes = notes.to_str().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (
            &["--init-image", "tests/fixtures/img2img/nope.png"],
            "cannot read",
        ),
        (&["--init-image", huge], "30000x30000 is larger"),
        (&["--init-image", notes], "not a PNG, JPEG or WebP"),
        (
            &["--init-image", init, "--denoise", "1.5"],
            "between 0 and 1",
        ),
        (&["--init-image", init, "--denoise", "0.1"], "runs no step"),
        (&["--init-image", init, "--mask", huge], "larger"),
        (&["--denoise", "0.5"], "need --init-image"),
    ];
    for (extra, needle) in cases {
        crate::util::assert_refused(&out, extra, needle);
    }
}

/// A batch job line with `init_image`: planned with the picture pinned by sha256, so the job hash
/// changes when the picture's contents change (same path); a bad `denoise` is an invalid line.
#[test]
fn batch_jobs_from_an_image_are_hashed_by_its_contents() {
    let dir = tempfile::tempdir().unwrap();
    let pic = dir.path().join("p.png");
    std::fs::copy(pictures().join("init.png"), &pic).unwrap();
    let out = dir.path().join("out");
    let plan = |denoise: &str| {
        let template = format!(
            r#"{{"prompt": "a fox", "steps": 4, "seed": 1, "init_image": {}, "denoise": {denoise}}}"#,
            serde_json::to_string(pic.to_str().unwrap()).unwrap()
        );
        crate::reference_spec::planned(&template, &out)
    };
    let (ok, first, stderr) = plan("0.5");
    assert!(ok, "{stderr}");
    let planned = first.expect("a planned job");
    assert_eq!(planned["job"]["init"]["denoise"], 0.5);
    let sha = planned["job"]["init"]["image"]["sha256"].as_str().unwrap();
    assert_eq!(sha.len(), 64);
    std::fs::copy(pictures().join("mask.png"), &pic).unwrap();
    let (ok, second, stderr) = plan("0.5");
    assert!(ok, "{stderr}");
    let again = second.unwrap();
    assert_ne!(again["hash"], planned["hash"]);
    assert_ne!(again["job"]["init"]["image"]["sha256"], sha);
    let (ok, _, text) = plan("2");
    assert!(!ok);
    assert!(text.contains("between 0 and 1"), "{text}");
    assert!(!out.exists(), "a dry run wrote files");
}
