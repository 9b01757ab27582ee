//! The spare UNet (`--spare-unet`): a job whose UNet strengths change every step is patched one
//! step ahead on a second UNet session, swapped in at the next step, and gives the one-UNet
//! device patch's picture bit for bit (tiny SD1.5 through fixed UNet buffers, tiny SDXL); its
//! re-runs end up beside the steps; a strength dialled mid-job still reaches its step.

use crate::device_patch::{dialler, job_image, lora_dir};
use crate::sdxl::tiny_sdxl;
use crate::util::*;
use stipple::live::LoraMethod;
use stipple::pipeline::generator::PatchCounts;
use stipple::pipeline::{EngineSpec, Generator};
use stipple::runtime::SessionOptions;

fn opts(spare: bool) -> SessionOptions {
    SessionOptions {
        resident: Some(true),
        patch_on_device: Some(true),
        spare_unet: Some(spare),
        ..SessionOptions::default()
    }
}

/// `prompt` as a `steps`-step job on both generators: (spare image, one-UNet image, the spare
/// generator's counts over the job).
fn both(
    spare: &mut Generator,
    one: &mut Generator,
    prompt: &str,
    steps: u32,
    dial: Option<(u32, &str, f32)>,
) -> (Vec<u8>, Vec<u8>, PatchCounts) {
    let before = spare.patch_counts();
    let on_step = dialler(spare.dials(), dial);
    let s = job_image(spare, LoraMethod::Fuse, prompt, steps, &on_step);
    let after = spare.patch_counts();
    let on_step = dialler(one.dials(), dial);
    let o = job_image(one, LoraMethod::Fuse, prompt, steps, &on_step);
    let d = PatchCounts {
        staged: after.staged - before.staged,
        reruns: after.reruns - before.reruns,
        spare_swaps: after.spare_swaps - before.spare_swaps,
        prefetches: after.prefetches - before.prefetches,
        overlapped: after.overlapped - before.overlapped,
        prefetch_failures: after.prefetch_failures - before.prefetch_failures,
        ..PatchCounts::default()
    };
    (s, o, d)
}

#[test]
fn a_schedule_swaps_in_the_spare_unet_patched_ahead_and_gives_the_same_picture() {
    let steps = 6;
    // Through fixed UNet buffers (the CUDA graph's way), which swap with their session.
    let spec = |spare| EngineSpec {
        session: opts(spare),
        lora_dirs: vec![lora_dir()],
        bound_unet: true,
        ..EngineSpec::new(tiny_model())
    };
    let mut spare = Generator::load(spec(true), runtime()).expect("tiny model loads");
    let mut one = Generator::load(spec(false), runtime()).expect("tiny model loads");
    let base = job_image(&mut one, LoraMethod::Fuse, "a fox", steps, &|_| {});
    for prompt in [
        "a fox <lora:lyco_locon:unet=0.2@0,1@1>",
        "a fox <lora:lyco_loha:unet=1@0,0.3@1> <lora:lyco_locon:0.6:unet=0@0,1@1>",
    ] {
        let mut overlapped = 0;
        for run in 0..3 {
            let (s, o, n) = both(&mut spare, &mut one, prompt, steps, None);
            assert_ne!(o, base, "{prompt}: the adapter changes the picture");
            assert_eq!(s, o, "{prompt} (run {run}): the same weights at every step");
            // Every step after the first finds its strengths on the spare, patched a step ahead;
            // the first re-runs (or, the first time, stages) the UNet's own program.
            assert_eq!(
                n.spare_swaps,
                steps as u64 - 1,
                "{prompt} (run {run}): {n:?}"
            );
            assert_eq!(n.staged + n.reruns, 1, "{prompt} (run {run}): {n:?}");
            assert!(
                n.prefetches >= steps as u64 - 2,
                "{prompt} (run {run}): {n:?}"
            );
            overlapped += n.overlapped;
            let last = spare.last_fuse().expect("a change was timed");
            assert!(
                last.spare_swap && !last.rerun,
                "{prompt}: the last step swapped: {last:?}"
            );
        }
        assert!(overlapped > 0, "{prompt}: no re-run ran beside a step");
    }
    // A constant strength needs no spare: nothing is swapped, the picture is the one UNet's.
    let (s, o, n) = both(
        &mut spare,
        &mut one,
        "a fox <lora:lyco_locon:0.8>",
        steps,
        None,
    );
    assert_eq!(s, o);
    assert_eq!((n.spare_swaps, n.prefetches), (0, 0), "{n:?}");
    // A strength dialled mid-job is not known a step ahead: the step re-runs the program itself.
    let dial = Some((2, "lyco_locon", 0.3));
    let (s, o, n) = both(
        &mut spare,
        &mut one,
        "a fox <lora:lyco_locon:1>",
        steps,
        dial,
    );
    assert_eq!(s, o, "dialled");
    assert!(
        n.reruns >= 1,
        "the dialled strength re-ran the program: {n:?}"
    );
    // The spare's next re-run fails: the step after it patches the UNet itself, the spare is
    // patched again for the step after that, and the picture is still the one UNet's.
    let prompt = "a fox <lora:lyco_locon:unet=0.2@0,1@1>";
    assert!(spare.break_spare_for_test(), "the schedules built a spare");
    let (s, o, n) = both(&mut spare, &mut one, prompt, steps, None);
    assert_eq!(s, o, "after a failed re-run of the spare");
    assert_eq!(n.prefetch_failures, 1, "{n:?}");
    assert!(n.reruns >= 1, "a step patched the UNet itself: {n:?}");
    assert!(n.spare_swaps >= 1, "the spare came back: {n:?}");
    // Back to the base: the picture without adapters.
    assert_eq!(
        job_image(&mut spare, LoraMethod::Fuse, "a fox", steps, &|_| {}),
        base
    );
}

#[test]
fn an_sdxl_schedule_through_the_spare_unet_gives_the_same_picture() {
    let load = |spare| {
        let spec = EngineSpec::new(tiny_sdxl())
            .with_session(opts(spare))
            .with_lora_dirs(vec![root().join("tests/fixtures/lora-sdxl")]);
        Generator::load(spec, runtime()).expect("tiny SDXL loads")
    };
    let (mut spare, mut one) = (load(true), load(false));
    let steps = 5;
    let prompt = "a fox <lora:xl_kohya_locon:unet=0.2@0,1@1>";
    for run in 0..2 {
        let (s, o, n) = both(&mut spare, &mut one, prompt, steps, None);
        assert_eq!(s, o, "run {run}");
        assert_eq!(n.spare_swaps, steps as u64 - 1, "run {run}: {n:?}");
    }
}
