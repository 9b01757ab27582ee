//! Inpainting beyond the whole picture: "only masked" against diffusers' `padding_mask_crop`
//! (`scripts/img2img_reference.py` writes `<fixture>/reference/only_masked.json`), masked content
//! modes, outpainting, and the bad inputs of each.

use crate::img2img::{mean_abs, pictures};
use crate::util::{generator, read_rgb, root, try_image, try_image_and_infotext};
use serde::Deserialize;
use std::path::Path;
use stipple::init_image::{InpaintArea, MaskedContent};
use stipple::job::{Job, Sampler};
use stipple::pipeline::Generator;

#[derive(Deserialize)]
struct Case {
    file: String,
    sampler: String,
    denoise: f64,
    padding: u32,
    width: u32,
    height: u32,
    mask: String,
}

#[derive(Deserialize)]
struct Spec {
    prompt: String,
    negative: String,
    seed: u64,
    cfg: f32,
    steps: u32,
    init: String,
    images: Vec<Case>,
}

/// A mask file's grey values.
fn grey(path: &Path) -> Vec<u8> {
    image::open(path).unwrap().to_luma8().into_raw()
}

/// The mask blur is PIL's GaussianBlur (what A1111 and diffusers' `mask_processor.blur` use):
/// mask.png blurred by stipple equals mask_blur4.png and mask_blur8.png, which PIL wrote, byte for
/// byte. `image::imageops::blur` (a true Gaussian, stipple's blur before) is measured for the record.
#[test]
fn mask_blur_matches_pil() {
    let mask = grey(&pictures().join("mask.png"));
    for blur in [4u32, 8] {
        let want = grey(&pictures().join(format!("mask_blur{blur}.png")));
        let got = stipple::image::blur::gaussian_blur(&mask, 64, 64, blur as f32);
        let gaussian = image::imageops::blur(
            &image::GrayImage::from_raw(64, 64, mask.clone()).unwrap(),
            blur as f32,
        )
        .into_raw();
        let max = |a: &[u8]| {
            a.iter()
                .zip(&want)
                .map(|(x, y)| x.abs_diff(*y))
                .max()
                .unwrap()
        };
        let binary_flips = |a: &[u8]| {
            a.iter()
                .zip(&want)
                .filter(|(x, y)| (**x >= 128) != (**y >= 128))
                .count()
        };
        eprintln!(
            "mask blur {blur}: stipple vs PIL mean {:.4} max {}; image::imageops::blur vs PIL mean \
             {:.4} max {}, {} of 4096 pixels on the other side of 0.5",
            mean_abs(&got, &want),
            max(&got),
            mean_abs(&gaussian, &want),
            max(&gaussian),
            binary_flips(&gaussian)
        );
        assert_eq!(max(&got), 0, "blur {blur}: stipple's blur is not PIL's");
    }
}

/// A job inpainting init.png under `mask` (a file of tests/fixtures/img2img).
fn inpaint_job(sampler: Sampler, denoise: f64, mask: &str, (w, h): (u32, u32)) -> Job {
    let pics = pictures();
    let init = stipple::image::init::pin(&pics.join("init.png"), denoise, Some(&pics.join(mask)))
        .expect("the test pictures read");
    Job {
        prompt: "a red fox in the snow".into(),
        negative: "blurry".into(),
        sampler,
        schedule: Default::default(),
        sde_noise: Default::default(),
        zero_snr: false,
        sigmas: Default::default(),
        steps: 8,
        cfg: 7.0,
        width: w,
        height: h,
        seed: 42,
        batch: 1,
        init: Some(init),
        hires: None,
    }
}

/// Every "only masked" reference of `fixture`: within 1/255 mean abs over the image and inside the
/// mask, and bit for bit the picture wherever the mask is black. Returns how many there were.
pub(crate) fn check_only_masked(fixture: &Path, g: &mut Generator) -> usize {
    let text = std::fs::read_to_string(fixture.join("reference/only_masked.json")).unwrap();
    let spec: Spec = serde_json::from_str(&text).unwrap();
    let (_, _, picture) = read_rgb(&pictures().join(&spec.init));
    let mut report = Vec::new();
    for case in &spec.images {
        let mask = grey(&pictures().join(&case.mask));
        let mut job = inpaint_job(
            case.sampler.parse().unwrap(),
            case.denoise,
            &case.mask,
            (case.width, case.height),
        );
        assert_eq!(
            (spec.seed, spec.steps, spec.cfg),
            (job.seed, job.steps, job.cfg)
        );
        assert_eq!((&spec.prompt, &spec.negative), (&job.prompt, &job.negative));
        if let Some(init) = job.init.as_mut() {
            init.inpaint_area = InpaintArea::Masked;
            init.inpaint_padding = case.padding;
        }
        let got = try_image(g, &job).unwrap();
        let (_, _, want) = read_rgb(&fixture.join("reference").join(&case.file));
        // The output is the picture's size (64×64), also for the 64×32 job.
        assert_eq!(got.len(), picture.len(), "{}", case.file);
        let mad = mean_abs(&got, &want);
        let (mut inside_got, mut inside_want) = (Vec::new(), Vec::new());
        for (i, m) in mask.iter().enumerate() {
            let px = i * 3..i * 3 + 3;
            if *m == 0 {
                assert_eq!(got[px.clone()], picture[px], "{}: pixel {i}", case.file);
            } else {
                inside_got.extend_from_slice(&got[px.clone()]);
                inside_want.extend_from_slice(&want[px]);
            }
        }
        let inside = mean_abs(&inside_got, &inside_want);
        report.push(format!("{}: {mad:.4} (inside {inside:.4})", case.file));
        assert!(mad <= 1.0, "{}: mean abs {mad}/255", case.file);
        assert!(inside <= 1.0, "{}: inside the mask {inside}/255", case.file);
        // And something was redrawn.
        assert_ne!(inside_got, {
            let mut p = Vec::new();
            for (i, m) in mask.iter().enumerate() {
                if *m != 0 {
                    p.extend_from_slice(&picture[i * 3..i * 3 + 3]);
                }
            }
            p
        });
    }
    eprintln!("only masked, mean abs (0-255): {}", report.join(", "));
    spec.images.len()
}

#[test]
fn only_masked_matches_diffusers_sd15() {
    assert_eq!(
        check_only_masked(&crate::util::tiny_model(), &mut generator()),
        3
    );
}

#[test]
fn only_masked_on_an_inpainting_unet_matches_diffusers() {
    let fixture = root().join("tests/fixtures/tiny-sd15-inpaint");
    let mut g = crate::single_file::load(&fixture, Default::default());
    assert_eq!(check_only_masked(&fixture, &mut g), 1);
}

/// The masked content modes start the masked part differently: each gives another image, and the
/// difference to "original" lies mostly inside the mask (the kept part is blended back from the
/// picture after every step).
#[test]
fn masked_content_modes_change_the_masked_part() {
    let mut g = generator();
    let mask = grey(&pictures().join("mask.png"));
    let run = |g: &mut Generator, content: MaskedContent| {
        let mut job = inpaint_job(Sampler::Ddim, 0.75, "mask.png", (64, 64));
        if let Some(init) = job.init.as_mut() {
            init.masked_content = content;
        }
        try_image_and_infotext(g, &job).unwrap()
    };
    let (original, info) = run(&mut g, MaskedContent::Original);
    assert!(!info.contains("Masked content"), "{info}");
    let mut seen = vec![original.clone()];
    for content in [
        MaskedContent::Fill,
        MaskedContent::LatentNoise,
        MaskedContent::LatentNothing,
    ] {
        let (img, info) = run(&mut g, content);
        assert!(
            info.contains(&format!("Masked content: {}", content.label())),
            "{info}"
        );
        assert!(
            !seen.contains(&img),
            "{content:?} gave an image seen before"
        );
        let (mut inside, mut outside) = ((0f64, 0usize), (0f64, 0usize));
        for (i, m) in mask.iter().enumerate() {
            let d: f64 = (0..3)
                .map(|c| f64::from(img[i * 3 + c].abs_diff(original[i * 3 + c])))
                .sum();
            let acc = if *m >= 128 { &mut inside } else { &mut outside };
            acc.0 += d;
            acc.1 += 3;
        }
        let (inside, outside) = (inside.0 / inside.1 as f64, outside.0 / outside.1 as f64);
        eprintln!("{content:?}: mean change inside the mask {inside:.2}, outside {outside:.2}");
        assert!(inside > 2.0 * outside, "{content:?}: {inside} vs {outside}");
        seen.push(img);
    }
}

/// Outpainting 32 pixels on the left, redrawing only the masked part: the output is the grown
/// canvas, the picture bit for bit on the right and something new painted on the left.
#[test]
fn outpainting_grows_the_canvas_and_keeps_the_picture() {
    let mut g = generator();
    let pics = pictures();
    let mut job = inpaint_job(Sampler::EulerA, 1.0, "mask.png", (64, 64));
    let (_, _, picture) = read_rgb(&pics.join("init.png"));
    if let Some(init) = job.init.as_mut() {
        init.mask = None;
        init.outpaint = "32,0,0,0".parse().unwrap();
        init.inpaint_area = InpaintArea::Masked;
        init.inpaint_padding = 8;
        init.masked_content = MaskedContent::Fill;
    }
    let (img, info) = try_image_and_infotext(&mut g, &job).unwrap();
    // Quoted: the value has commas.
    assert!(info.contains("Outpaint: \"32,0,0,0\""), "{info}");
    let fields = stipple::image::parse_infotext(&info).unwrap();
    assert_eq!(fields.get("Outpaint"), Some("32,0,0,0"));
    assert_eq!(fields.get("Masked content"), Some("fill"));
    assert_eq!(img.len(), 96 * 64 * 3);
    for y in 0..64 {
        let row = &img[(y * 96 + 32) * 3..(y * 96 + 96) * 3];
        assert_eq!(row, &picture[y * 64 * 3..(y + 1) * 64 * 3], "row {y}");
    }
    // The new border is not the stretched edge column it started from.
    let stretched: Vec<u8> = (0..64)
        .flat_map(|y| picture[y * 64 * 3..y * 64 * 3 + 3].repeat(32))
        .collect();
    let border: Vec<u8> = (0..64)
        .flat_map(|y| img[y * 96 * 3..(y * 96 + 32) * 3].to_vec())
        .collect();
    assert!(mean_abs(&border, &stretched) > 5.0);
}

/// Bad inputs of the new flags: one clear error, non-zero exit, nothing written.
#[test]
fn bad_inpaint_inputs_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let black = dir.path().join("black.png");
    image::GrayImage::new(64, 64).save(&black).unwrap();
    let out = dir.path().join("out");
    let init = "tests/fixtures/img2img/init.png";
    let small = "tests/fixtures/img2img/small.webp";
    let black = black.to_str().unwrap();
    let masked = ["--init-image", init, "--inpaint-area", "masked"];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        let mut v: Vec<&str> = masked.to_vec();
        v.extend_from_slice(extra);
        v
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            with(&["--mask", small]),
            "mask tests/fixtures/img2img/small.webp is 16x16",
        ),
        (
            vec![
                "--init-image",
                init,
                "--mask",
                black,
                "--inpaint-area",
                "masked",
            ],
            "the mask is empty",
        ),
        (with(&[]), "needs a mask"),
        (
            with(&[
                "--mask",
                "tests/fixtures/img2img/mask.png",
                "--inpaint-padding",
                "-4",
            ]),
            "must be 0 to 4096",
        ),
        (
            vec!["--init-image", init, "--inpaint-padding", "8"],
            "is for the masked inpaint area",
        ),
        (
            vec!["--init-image", init, "--outpaint", "8,8"],
            "four pixel counts",
        ),
        (
            vec!["--init-image", init, "--masked-content", "blur"],
            "use original, fill",
        ),
        (vec!["--inpaint-area", "masked"], "need --init-image"),
    ];
    for (extra, needle) in cases {
        crate::util::assert_refused(&out, &extra, needle);
    }
}

/// A batch line with "only masked": planned with the area and padding in the job (and its hash);
/// a negative padding is an invalid line.
#[test]
fn batch_lines_carry_the_inpaint_settings() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let plan = |extra: &str| {
        let template = format!(
            r#"{{"prompt": "a fox", "steps": 4, "seed": 1, "init_image": "tests/fixtures/img2img/init.png", "mask": "tests/fixtures/img2img/mask_small.png", {extra}}}"#
        );
        crate::util::dry_run(&template, &out)
    };
    let (ok, lines, stderr) = plan(
        r#""inpaint_area": "masked", "inpaint_padding": 12, "masked_content": "latent-noise", "outpaint": "0,8,0,0""#,
    );
    assert!(ok, "{stderr}");
    let planned = lines
        .iter()
        .find(|l| l["status"] == "planned")
        .expect("a planned job");
    let init = &planned["job"]["init"];
    assert_eq!(init["inpaint_area"], "masked");
    assert_eq!(init["inpaint_padding"], 12);
    assert_eq!(init["masked_content"], "latent-noise");
    assert_eq!(init["outpaint"]["right"], 8);
    let (ok, bad, stderr) = plan(r#""inpaint_area": "masked", "inpaint_padding": -1"#);
    assert!(!ok);
    let text = format!("{bad:?} {stderr}");
    assert!(text.contains("must be 0 to 4096"), "{text}");
    assert!(!out.exists(), "a dry run wrote files");
}

/// `generate` with "only masked" records A1111's fields and the settings in the `stipple` chunk,
/// and the recorded job makes the same picture again (at the picture's size).
#[test]
fn only_masked_records_and_replays_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let args = [
        "generate",
        "--init-image",
        "tests/fixtures/img2img/init.png",
        "--mask",
        "tests/fixtures/img2img/mask_small.png",
        "--inpaint-area",
        "masked",
        "--inpaint-padding",
        "6",
        "--masked-content",
        "latent-nothing",
        "--prompt",
        "a red fox",
        "--steps",
        "4",
        "--seed",
        "3",
        "--width",
        "64",
        "--height",
        "32",
        "--out",
        out,
    ];
    let (ok, stdout, stderr) = crate::cli::run(&args);
    assert!(ok, "{stderr}");
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let path = std::path::PathBuf::from(line["path"].as_str().unwrap());
    let chunks = stipple::image::read_text_chunks(&path).unwrap();
    let info = stipple::image::parse_infotext(&chunks["parameters"]).unwrap();
    assert_eq!(info.get("Inpaint area"), Some("Only masked"));
    assert_eq!(info.get("Masked area padding"), Some("6"));
    assert_eq!(info.get("Masked content"), Some("latent nothing"));
    let mut job: Job = serde_json::from_str(&chunks["stipple"]).unwrap();
    let (w, h, pixels) = read_rgb(&path);
    assert_eq!((w, h), (64, 64), "the picture's size, not the job's 64x32");
    let init = job.init.as_mut().unwrap();
    assert_eq!(
        (init.inpaint_area, init.inpaint_padding, init.masked_content),
        (InpaintArea::Masked, 6, MaskedContent::LatentNothing)
    );
    for f in [&mut init.image, init.mask.as_mut().unwrap()] {
        f.path = root().join(&f.path);
    }
    assert_eq!(try_image(&mut generator(), &job).unwrap(), pixels);
}
