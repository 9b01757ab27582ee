//! The samplers and schedule types of issue 22 on the tiny SD1.5 and SDXL models against diffusers'
//! pipeline images (`scripts/reference_samplers.py --images` writes `reference/samplers.json` and
//! the images), and the SDE samplers' reproducibility.

use crate::sdxl::{sdxl_generator, tiny_sdxl};
use crate::util::{generator, read_rgb, tiny_model};
use std::path::Path;
use stipple::job::{Event, Job, Sampler, Schedule};
use stipple::pipeline::{Generator, Stop};

#[derive(serde::Deserialize)]
struct ImageCase {
    file: String,
    sampler: String,
    schedule: String,
    steps: u32,
}

#[derive(serde::Deserialize)]
struct Images {
    prompt: String,
    negative: String,
    seed: u64,
    cfg: f32,
    width: u32,
    height: u32,
    images: Vec<ImageCase>,
}

fn image(g: &mut Generator, job: &Job) -> stipple::job::RgbImage {
    let mut image = None;
    g.generate(
        job,
        &|| Stop::No,
        &mut |e| {
            if let Event::Image { image: i, .. } = e {
                image = Some(i)
            }
        },
        1,
    )
    .unwrap();
    image.expect("an image")
}

/// Every image of `<model>/reference/samplers.json` within mean abs 1/255 of diffusers'.
fn check_images(model: &Path, g: &mut Generator) {
    let reference = model.join("reference");
    let text = std::fs::read_to_string(reference.join("samplers.json")).unwrap();
    let spec: Images = serde_json::from_str(&text).unwrap();
    assert!(spec.images.len() >= 20, "{} cases", spec.images.len());
    let mut report = Vec::new();
    for case in &spec.images {
        let job = Job {
            prompt: spec.prompt.clone(),
            negative: spec.negative.clone(),
            sampler: case.sampler.parse::<Sampler>().unwrap(),
            schedule: case.schedule.parse::<Schedule>().unwrap(),
            steps: case.steps,
            cfg: spec.cfg,
            width: spec.width,
            height: spec.height,
            seed: spec.seed,
            batch: 1,
            init: None,
            hires: None,
        };
        let got = image(g, &job);
        let (w, h, want) = read_rgb(&reference.join(&case.file));
        assert_eq!((got.width, got.height), (w, h));
        let mad = got
            .pixels
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f32 - *b as f32).abs())
            .sum::<f32>()
            / want.len() as f32;
        report.push((case.file.clone(), mad));
    }
    let text: Vec<String> = report.iter().map(|(f, m)| format!("{f}: {m:.4}")).collect();
    eprintln!(
        "{}: mean abs difference per image (0-255): {}",
        model.display(),
        text.join(", ")
    );
    for (file, mad) in &report {
        assert!(*mad <= 1.0, "{file}: mean abs difference {mad}/255");
    }
}

#[test]
fn sd15_samplers_and_schedule_types_match_diffusers() {
    check_images(&tiny_model(), &mut generator());
}

#[test]
fn sdxl_samplers_and_schedule_types_match_diffusers() {
    check_images(&tiny_sdxl(), &mut sdxl_generator());
}

/// The SDE and ancestral-noise samplers draw from the seed's torch generator only: the same job
/// gives the same pixels, another seed other pixels.
#[test]
fn sde_samplers_are_reproducible_from_the_seed() {
    let mut g = generator();
    for (sampler, schedule) in [
        (Sampler::DpmPp2mSde, Schedule::Karras),
        (Sampler::Lcm, Schedule::Automatic),
    ] {
        let mut job = crate::util::small_job("a red fox", 7);
        job.sampler = sampler;
        job.schedule = schedule;
        job.steps = 4;
        let a = image(&mut g, &job);
        let b = image(&mut g, &job);
        assert_eq!(a.pixels, b.pixels, "{sampler}");
        job.seed = 8;
        let c = image(&mut g, &job);
        assert_ne!(a.pixels, c.pixels, "{sampler}: another seed");
    }
}
