//! Live mode against the independent fuse/refuse paths on the tiny model (CPU, fp32): constant
//! strengths, schedules, the text-encoder schedule's encode count, and a strength dialled mid-job.

use crate::util::*;
use std::path::PathBuf;
use stipple::engine::Stop;
use stipple::job::{Event, Job, Sampler};
use stipple::live::LoraMethod;
use stipple::pipeline::Generator;
use stipple::prompt::Component;

fn lora_dir() -> PathBuf {
    root().join("tests/fixtures/lora")
}

fn job(prompt: &str, steps: u32) -> Job {
    Job {
        prompt: prompt.into(),
        negative: String::new(),
        sampler: Sampler::Euler,
        schedule: Default::default(),
        sde_noise: Default::default(),
        zero_snr: false,
        sigmas: Default::default(),
        steps,
        cfg: 7.0,
        width: 64,
        height: 64,
        seed: 5,
        batch: 1,
        init: None,
        hires: None,
    }
}

/// The image of `prompt` with `method`; `on_step(i)` runs at every step's stop check.
fn image_with(
    g: &mut Generator,
    method: LoraMethod,
    prompt: &str,
    steps: u32,
    on_step: &dyn Fn(u32),
) -> Vec<u8> {
    g.set_lora_dirs(vec![lora_dir()]);
    g.set_lora_method(method);
    let calls = std::cell::Cell::new(0u32);
    let stop = || {
        on_step(calls.get());
        calls.set(calls.get() + 1);
        Stop::No
    };
    let mut out = None;
    let r = g.generate(
        &job(prompt, steps),
        &stop,
        &mut |e| {
            if let Event::Image { image, .. } = e {
                out = Some(image.pixels)
            }
        },
        1,
    );
    g.set_lora_method(LoraMethod::default());
    g.dials().clear();
    r.unwrap_or_else(|e| panic!("{prompt} ({method:?}): {e}"));
    out.unwrap()
}

fn image(g: &mut Generator, method: LoraMethod, prompt: &str, steps: u32) -> Vec<u8> {
    image_with(g, method, prompt, steps, &|_| {})
}

/// Mean absolute difference in 0..1 units.
fn mad(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
        .sum::<f64>()
        / a.len() as f64
        / 255.0
}

fn assert_close(what: &str, live: &[u8], reference: &[u8], base: &[u8]) {
    let d = mad(live, reference);
    let effect = mad(reference, base);
    eprintln!("{what}: live vs reference {d:.6}, adapter effect {effect:.6}");
    assert!(d <= 1.0 / 255.0, "{what}: mean abs diff {d}");
    assert!(
        effect > d,
        "{what}: the adapter must change the image more than live differs"
    );
}

#[test]
fn live_at_constant_strength_equals_fuse() {
    let mut g = generator();
    let base = image(&mut g, LoraMethod::Fuse, "a red fox", 4);
    for prompt in [
        "a red fox <lora:lyco_locon:0.8>",
        "a red fox <lora:peft_diffusers:1>",
        "a red fox <lora:lyco_locon_tucker:1>",
        "a red fox <lora:lyco_locon:0.8> <lora:peft_diffusers:0.6:in=0.3>",
    ] {
        let fused = image(&mut g, LoraMethod::Fuse, prompt, 4);
        let live = image(&mut g, LoraMethod::Live, prompt, 4);
        assert_close(prompt, &live, &fused, &base);
        assert!(g.live_factors().is_some_and(|f| !f.layers.is_empty()));
    }
}

#[test]
fn live_schedules_equal_the_refuse_reference() {
    let mut g = generator();
    let base = image(&mut g, LoraMethod::Fuse, "a fox", 6);
    for prompt in [
        "a fox <lora:lyco_locon:unet=0@0,1@1>",
        "a fox <lora:peft_diffusers:te=0.1@1,0.6@6>",
        "a fox <lora:peft_diffusers:te=0.1@1,0.6@6> <lora:lyco_locon:unet=1@0,0.2@1>",
    ] {
        let refuse = image(&mut g, LoraMethod::Refuse, prompt, 6);
        // Fuse is the default: a UNet schedule runs live there.
        let live = image(&mut g, LoraMethod::Fuse, prompt, 6);
        assert_close(prompt, &live, &refuse, &base);
    }
}

#[test]
fn a_text_encoder_schedule_encodes_once_per_distinct_value() {
    let mut g = generator();
    // The README's example: 0.1 at step 1 rising to 0.6 at step 6, then held: over 8 steps the
    // values are 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6, 0.6, six distinct; each encodes the prompt
    // and the (empty) negative prompt.
    for method in [LoraMethod::Fuse, LoraMethod::Refuse] {
        let before = g.encodes();
        image(
            &mut g,
            method,
            "a fox <lora:peft_diffusers:te=0.1@1,0.6@6>",
            8,
        );
        assert_eq!(g.encodes() - before, 2 * 6, "{method:?}");
    }
}

#[test]
fn set_strength_mid_job_changes_the_next_step() {
    let mut g = generator();
    let prompt = "a fox <lora:lyco_locon:1>";
    // Dial the UNet strength to 0.2 at the stop check of step 3 (0-based 2): step 4 on uses it.
    let dials = g.dials();
    let dial = |i: u32| {
        if i == 2 {
            dials.set("lyco_locon", Component::Unet, 0.2);
        }
    };
    let live = image_with(&mut g, LoraMethod::Live, prompt, 6, &dial);
    let refuse = image_with(&mut g, LoraMethod::Refuse, prompt, 6, &dial);
    let undialled = image(&mut g, LoraMethod::Refuse, prompt, 6);
    assert_close("dialled", &live, &refuse, &undialled);
}
