//! Images sampled together through the UNet (a job's batch, or a group of jobs) are the images
//! made one at a time: SD1.5 and SDXL, every kind of sampler state, fused and live adapters, fixed
//! shapes with a padded last batch; a job that fails on its own fails alone.

use crate::sdxl::tiny_sdxl;
use crate::util::{root, runtime, tiny_generator, tiny_model};
use stipple::engine::Stop;
use stipple::job::{Event, Job, Sampler};
use stipple::live::LoraMethod;
use stipple::pipeline::generator::GroupJob;
use stipple::pipeline::{Ended, EngineSpec, Generator};
use stipple::runtime::SessionOptions;

/// (job id, index, seed, pixels) of every image, in the order they came.
type Made = Vec<(u64, u32, u64, Vec<u8>)>;

pub(crate) fn job(prompt: &str, sampler: Sampler, seed: u64, batch: u32) -> Job {
    Job {
        prompt: prompt.into(),
        negative: String::new(),
        sampler,
        steps: 3,
        cfg: 7.0,
        width: 64,
        height: 64,
        seed,
        batch,
        schedule: Default::default(),
        sde_noise: Default::default(),
        zero_snr: false,
        sigmas: Default::default(),
        init: None,
        hires: None,
    }
}

/// Runs `jobs` as one group (ids 1, 2, ...) with at most `unet_batch` images per UNet call.
fn run_group(
    g: &mut Generator,
    jobs: &[Job],
    unet_batch: usize,
) -> (Made, Vec<Result<Ended, String>>) {
    run_group_with(g, jobs, unet_batch, &|| Stop::No)
}

/// [`run_group`] polling `stop` at every step.
fn run_group_with(
    g: &mut Generator,
    jobs: &[Job],
    unet_batch: usize,
    stop: &dyn Fn() -> Stop,
) -> (Made, Vec<Result<Ended, String>>) {
    g.set_unet_batch(unet_batch);
    let group: Vec<GroupJob<'_>> = jobs
        .iter()
        .enumerate()
        .map(|(i, job)| GroupJob {
            id: i as u64 + 1,
            job,
        })
        .collect();
    let mut made = Vec::new();
    let ends = g.generate_group(&group, stop, &mut |e| {
        if let Event::Image {
            id,
            index,
            seed,
            image,
            ..
        } = e
        {
            made.push((id, index, seed, image.pixels));
        }
    });
    (made, ends)
}

/// Every image of `job`, made one UNet call per image.
fn alone(g: &mut Generator, job: &Job) -> Vec<Vec<u8>> {
    let (made, ends) = run_group(g, std::slice::from_ref(job), 1);
    assert_eq!(ends, vec![Ok(Ended::Done)], "{}", job.prompt);
    made.into_iter().map(|m| m.3).collect()
}

/// How many bytes of two same-size images differ.
fn differing(a: &[u8], b: &[u8]) -> usize {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

/// The tiny SD1.5 model with the adapter fixtures as its LoRA folder.
pub(crate) fn sd15() -> Generator {
    tiny_generator(
        SessionOptions::default(),
        vec![root().join("tests/fixtures/lora")],
        false,
    )
}

/// A job's batch of `n` through one UNet call equals its images made one by one, byte for byte
/// (ONNX Runtime's CPU kernels compute each batch row the same way).
fn batch_equals_alone(g: &mut Generator, prompt: &str, sampler: Sampler, n: u32) {
    let j = job(prompt, sampler, 40, n);
    let one_by_one = alone(g, &j);
    let (together, ends) = run_group(g, std::slice::from_ref(&j), n as usize);
    assert_eq!(ends, vec![Ok(Ended::Done)]);
    assert_eq!(together.len(), n as usize);
    for (k, (id, index, seed, pixels)) in together.iter().enumerate() {
        assert_eq!((*id, *index, *seed), (1, k as u32, 40 + k as u64));
        assert_eq!(
            differing(pixels, &one_by_one[k]),
            0,
            "{prompt} {sampler:?}: image {k} differs when batched"
        );
    }
    // Different seeds make different images: the comparison above could fail.
    assert_ne!(one_by_one[0], one_by_one[1]);
}

#[test]
fn a_batch_through_one_unet_call_equals_its_images_made_alone_sd15() {
    let mut g = sd15();
    // Ancestral (per-step noise per image), multistep (per-image history), plain.
    for sampler in [Sampler::EulerA, Sampler::DpmPp2m, Sampler::Ddim] {
        batch_equals_alone(&mut g, "a red fox", sampler, 3);
    }
    batch_equals_alone(
        &mut g,
        "a red fox <lora:lyco_locon:0.8>",
        Sampler::EulerA,
        2,
    );
}

#[test]
fn a_batch_with_live_adapters_equals_its_images_made_alone() {
    let mut g = sd15();
    g.set_lora_method(LoraMethod::Live);
    batch_equals_alone(&mut g, "a fox <lora:lyco_locon:0.8>", Sampler::EulerA, 2);
    // A schedule: the strengths change per step while both images share each call.
    g.set_lora_method(LoraMethod::Fuse);
    batch_equals_alone(
        &mut g,
        "a fox <lora:peft_diffusers:te=0.1@1,0.6@3> <lora:lyco_locon:unet=1@0,0.2@1>",
        Sampler::Euler,
        2,
    );
}

#[test]
fn a_batch_through_one_unet_call_equals_its_images_made_alone_sdxl() {
    let spec = EngineSpec {
        lora_dirs: vec![root().join("tests/fixtures/lora-sdxl")],
        ..EngineSpec::new(tiny_sdxl())
    };
    let mut g = Generator::load(spec, runtime()).expect("tiny SDXL loads");
    batch_equals_alone(&mut g, "a red fox", Sampler::EulerA, 2);
    batch_equals_alone(
        &mut g,
        "a red fox <lora:xl_kohya_locon:1>",
        Sampler::DpmPp2m,
        2,
    );
}

#[test]
fn fixed_shapes_pad_the_last_unet_batch_and_change_no_image() {
    let opts = SessionOptions {
        static_shapes: true,
        ..SessionOptions::default()
    };
    let mut g = tiny_generator(opts, Vec::new(), false);
    let j = job("a red fox", Sampler::EulerA, 7, 3);
    let one_by_one = alone(&mut g, &j);
    // Two calls of two images: the second holds image 2 and a padding row.
    let (together, ends) = run_group(&mut g, std::slice::from_ref(&j), 2);
    assert_eq!(ends, vec![Ok(Ended::Done)]);
    let got: Vec<Vec<u8>> = together.into_iter().map(|m| m.3).collect();
    assert_eq!(got, one_by_one);
}

#[test]
fn jobs_with_different_prompts_share_unet_calls_and_stay_themselves() {
    let mut g = sd15();
    let mut a = job("a red fox", Sampler::EulerA, 1, 2);
    a.cfg = 5.0;
    let mut b = job(
        "a blue bird in a long prompt, (detailed:1.2)",
        Sampler::EulerA,
        9,
        1,
    );
    b.negative = "blurry".into();
    // Different steps: cannot share a call with the others, runs on its own.
    let mut c = job("a green frog", Sampler::EulerA, 3, 1);
    c.steps = 2;
    let d = job("a cat", Sampler::EulerA, 5, 2);
    let jobs = [a, b, c, d];
    let want: Vec<Vec<Vec<u8>>> = jobs.iter().map(|j| alone(&mut g, j)).collect();
    let (made, ends) = run_group(&mut g, &jobs, 4);
    assert!(ends.iter().all(|e| *e == Ok(Ended::Done)), "{ends:?}");
    // Order: the first batch (a, b, d's first image), then d's second, then c alone.
    let order: Vec<(u64, u32)> = made.iter().map(|m| (m.0, m.1)).collect();
    assert_eq!(order, vec![(1, 0), (1, 1), (2, 0), (4, 0), (4, 1), (3, 0)]);
    for (id, index, _, pixels) in &made {
        let w = &want[*id as usize - 1][*index as usize];
        assert_eq!(differing(pixels, w), 0, "job {id} image {index}");
    }
}

#[test]
fn a_job_whose_adapter_fails_fails_alone_in_its_group() {
    let mut g = sd15();
    let jobs = [
        job("a red fox", Sampler::Euler, 1, 1),
        job("a red fox <lora:bad_truncated:1>", Sampler::Euler, 2, 1),
        job("a cat", Sampler::Euler, 3, 1),
    ];
    let (made, ends) = run_group(&mut g, &jobs, 4);
    assert!(ends[0].is_ok() && ends[2].is_ok(), "{ends:?}");
    let err = ends[1].clone().unwrap_err();
    assert!(err.contains("bad_truncated"), "{err}");
    let ids: Vec<u64> = made.iter().map(|m| m.0).collect();
    assert_eq!(ids, vec![1, 3]);
}

#[test]
fn an_interrupt_cancels_every_job_of_the_group() {
    let mut g =
        Generator::load(EngineSpec::new(tiny_model()), runtime()).expect("tiny model loads");
    let jobs = [
        job("a", Sampler::Euler, 1, 1),
        job("b", Sampler::Euler, 2, 1),
    ];
    let (made, ends) = run_group_with(&mut g, &jobs, 4, &|| Stop::Interrupt);
    assert!(made.is_empty());
    assert_eq!(ends, vec![Ok(Ended::Cancelled), Ok(Ended::Cancelled)]);
}

#[test]
fn a_skip_drops_the_images_of_the_unet_call_under_way_and_the_next_call_goes_on() {
    let mut g = sd15();
    let j = job("a fox", Sampler::Euler, 3, 3);
    // The second stop check (step 2 of the first call) asks to skip.
    let calls = std::cell::Cell::new(0);
    let skip_second = || {
        calls.set(calls.get() + 1);
        [Stop::No, Stop::SkipImage][usize::from(calls.get() == 2)]
    };
    let (made, ends) = run_group_with(&mut g, std::slice::from_ref(&j), 2, &skip_second);
    assert_eq!(ends, vec![Ok(Ended::Done)]);
    // Images 0 and 1 shared the skipped call; image 2 had a call of its own.
    let seeds: Vec<u64> = made.iter().map(|m| m.2).collect();
    assert_eq!(seeds, vec![5]);
}
