//! Every sampler × every schedule type it takes × 4 and 8 steps on the tiny SD1.5 and SDXL models,
//! 32×32, against diffusers' pipeline images (or the k-diffusion / ComfyUI algorithm a script
//! re-implements where diffusers has none): `scripts/reference_samplers.py --images` writes
//! `reference/samplers.json` and `scripts/reference_samplers_more.py --images`
//! `reference/samplers_more.json` with their `grid.*.png`. Also the SDE samplers with A1111's
//! Brownian noise, and the stochastic samplers' reproducibility.

use crate::sdxl::{sdxl_generator, tiny_sdxl};
use crate::util::{generator, read_rgb, tiny_model};
use std::path::Path;
use stipple::job::{Event, Job, Sampler, Schedule};
use stipple::pipeline::schedulers::check_schedule;
use stipple::pipeline::{Generator, Stop};

#[derive(serde::Deserialize)]
struct ImageCase {
    file: String,
    sampler: String,
    schedule: String,
    steps: u32,
    /// The case's own CFG scale (Euler CFG++), else the spec's.
    #[serde(default)]
    cfg: Option<f32>,
    /// The SDE samplers' noise; absent in the diffusers references, which draw it per step.
    #[serde(default)]
    sde_noise: Option<String>,
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

pub(crate) fn image(g: &mut Generator, job: &Job) -> stipple::job::RgbImage {
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

/// Every image of `<model>/reference/<file>` (at least `min` of them) within mean abs 1/255 of
/// diffusers'.
fn check_images(model: &Path, g: &mut Generator, file: &str, min: usize) {
    check_images_in(&model.join("reference"), g, file, min, &|_| true);
}

/// [`check_images`] with the references in `reference`, each case's job changed by `adjust`
/// first (a case it returns false for is left out). Returns the largest mean abs difference.
pub(crate) fn check_images_in(
    reference: &Path,
    g: &mut Generator,
    file: &str,
    min: usize,
    adjust: &dyn Fn(&mut Job) -> bool,
) -> f32 {
    let text = std::fs::read_to_string(reference.join(file)).unwrap();
    let spec: Images = serde_json::from_str(&text).unwrap();
    let mut report = Vec::new();
    for case in &spec.images {
        let mut job = Job {
            prompt: spec.prompt.clone(),
            negative: spec.negative.clone(),
            sampler: case.sampler.parse::<Sampler>().unwrap(),
            schedule: case.schedule.parse::<Schedule>().unwrap(),
            sde_noise: case.sde_noise.as_deref().unwrap_or("step").parse().unwrap(),
            zero_snr: false,
            sigmas: Default::default(),
            steps: case.steps,
            cfg: case.cfg.unwrap_or(spec.cfg),
            width: spec.width,
            height: spec.height,
            seed: spec.seed,
            batch: 1,
            init: None,
            hires: None,
        };
        if !adjust(&mut job) {
            continue;
        }
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
        reference.display(),
        text.join(", ")
    );
    for (file, mad) in &report {
        assert!(*mad <= 1.0, "{file}: mean abs difference {mad}/255");
    }
    assert!(report.len() >= min, "{} cases", report.len());
    report.iter().fold(0.0, |m, (_, d)| m.max(*d))
}

/// Euler, Euler a, Heun, LMS, DDIM, DPM++ 2M, DPM++ 2M Karras, DPM++ 2M SDE, UniPC and LCM, each
/// with every schedule type it takes, against diffusers' pipeline (the SDE sampler with diffusers'
/// per-step noise, `--sde-noise step`).
#[test]
fn sd15_samplers_and_schedule_types_match_diffusers() {
    check_images(&tiny_model(), &mut generator(), "samplers.json", 120);
}

#[test]
fn sdxl_samplers_and_schedule_types_match_diffusers() {
    check_images(&tiny_sdxl(), &mut sdxl_generator(), "samplers.json", 120);
}

/// DPM2, DPM2 a, DPM++ 2S a, DPM++ SDE, DPM++ 3M SDE, DEIS, DDPM, TCD and Euler CFG++, each with
/// every schedule type it takes, against `scripts/reference_samplers_more.py --images` (diffusers'
/// pipeline with the classes, or the k-diffusion / ComfyUI algorithm re-implemented there; DPM++
/// SDE with the same seeded Brownian noise as stipple's `--sde-noise step`).
#[test]
fn sd15_more_samplers_match_their_references() {
    check_images(&tiny_model(), &mut generator(), "samplers_more.json", 116);
}

#[test]
fn sdxl_more_samplers_match_their_references() {
    check_images(
        &tiny_sdxl(),
        &mut sdxl_generator(),
        "samplers_more.json",
        116,
    );
}

/// The two image grids together hold every sampler × every schedule type it accepts
/// (`check_schedule`) × 4 and 8 steps, for both tiny models.
#[test]
fn image_references_cover_every_sampler_and_schedule_type() {
    for model in [tiny_model(), tiny_sdxl()] {
        let mut have = std::collections::HashSet::new();
        for file in ["samplers.json", "samplers_more.json"] {
            let text = std::fs::read_to_string(model.join("reference").join(file)).unwrap();
            let spec: Images = serde_json::from_str(&text).unwrap();
            for case in spec.images {
                let sampler = case.sampler.parse::<Sampler>().unwrap();
                let schedule = case.schedule.parse::<Schedule>().unwrap();
                have.insert((sampler, schedule, case.steps));
            }
        }
        for sampler in Sampler::ALL {
            for schedule in Schedule::ALL {
                let accepted = check_schedule(sampler, schedule).is_ok();
                for steps in [4, 8] {
                    assert_eq!(
                        have.contains(&(sampler, schedule, steps)),
                        accepted,
                        "{}: {sampler} {schedule} {steps} steps",
                        model.display()
                    );
                }
            }
        }
    }
}

/// DPM++ SDE, DPM++ 2M SDE and DPM++ 3M SDE with A1111's noise (the default `--sde-noise
/// brownian`) against `scripts/reference_samplers_more.py --brownian`: diffusers' schedulers with
/// torchsde's Brownian tree seeded by the image seed, queried as k-diffusion queries it.
#[test]
fn sd15_sde_samplers_with_brownian_noise_match_torchsde() {
    check_images(&tiny_model(), &mut generator(), "samplers_brownian.json", 5);
}

#[test]
fn sdxl_sde_samplers_with_brownian_noise_match_torchsde() {
    check_images(
        &tiny_sdxl(),
        &mut sdxl_generator(),
        "samplers_brownian.json",
        1,
    );
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
        assert_reproducible(&mut g, sampler, schedule, 64);
    }
}

/// The same for the stochastic samplers of the second part (DPM++ SDE's Brownian noise
/// included), on 32×32 images.
#[test]
fn more_stochastic_samplers_are_reproducible_from_the_seed() {
    let mut g = generator();
    for (sampler, schedule) in [
        (Sampler::Dpm2A, Schedule::Automatic),
        (Sampler::DpmPp2sA, Schedule::Karras),
        (Sampler::DpmPpSde, Schedule::Karras),
        (Sampler::DpmPp3mSde, Schedule::Exponential),
        (Sampler::Ddpm, Schedule::Automatic),
        (Sampler::Tcd, Schedule::Automatic),
    ] {
        assert_reproducible(&mut g, sampler, schedule, 32);
    }
}

/// Runs one 4-step job twice and once with another seed.
fn assert_reproducible(g: &mut Generator, sampler: Sampler, schedule: Schedule, size: u32) {
    let mut job = crate::util::small_job("a red fox", 7);
    job.sampler = sampler;
    job.schedule = schedule;
    job.steps = 4;
    (job.width, job.height) = (size, size);
    let a = image(g, &job);
    let b = image(g, &job);
    assert_eq!(a.pixels, b.pixels, "{sampler}");
    job.seed = 8;
    let c = image(g, &job);
    assert_ne!(a.pixels, c.pixels, "{sampler}: another seed");
}
