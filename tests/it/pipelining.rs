//! The VAE decode of one UNet call's images on a worker thread, beside the next call's sampling,
//! changes nothing a front end sees but the timing: the same images and infotexts byte for byte,
//! each job's events in the same order, an interrupt still delivers the images finished before it,
//! and a decode failure fails only the job it belongs to.

use crate::batching::{job, sd15};
use crate::sdxl::tiny_sdxl;
use crate::util::{copy_dir, runtime, tiny_model};
use stipple::engine::Stop;
use stipple::job::{Event, Job, Sampler};
use stipple::pipeline::generator::GroupJob;
use stipple::pipeline::{Ended, EngineSpec, Generator};

/// What a front end saw of a run: the image events (job id, index, seed, pixels, infotext) and,
/// apart, every other event in order (kind, job id, image, step).
#[derive(Debug, PartialEq)]
struct Seen {
    images: Vec<(u64, u32, u64, Vec<u8>, String)>,
    progress: Vec<(&'static str, u64, u32, u32)>,
    ends: Vec<Result<Ended, String>>,
}

/// Runs `jobs` as one group (ids 1, 2, ...), at most `unet_batch` images per UNet call, decoding
/// beside the UNet when `pipelined`.
fn watch(
    g: &mut Generator,
    jobs: &[Job],
    unet_batch: usize,
    pipelined: bool,
    stop: &dyn Fn() -> Stop,
) -> Seen {
    g.set_unet_batch(unet_batch);
    g.set_pipelined(pipelined);
    let group: Vec<GroupJob<'_>> = jobs
        .iter()
        .zip(1..)
        .map(|(job, id)| GroupJob { id, job })
        .collect();
    let (mut images, mut progress) = (Vec::new(), Vec::new());
    let ends = g.generate_group(&group, stop, &mut |e| match e {
        Event::Image {
            image,
            infotext,
            seed,
            index,
            id,
        } => images.push((id, index, seed, image.pixels, infotext)),
        Event::Started { id, images, steps } => progress.push(("started", id, images, steps)),
        Event::Step(p) => progress.push(("step", p.id, p.image, p.step)),
        _ => {}
    });
    g.set_pipelined(true);
    Seen {
        images,
        progress,
        ends,
    }
}

/// Pipelined and not, `jobs` give the same events; returns the images (job id, index).
fn same_either_way(g: &mut Generator, jobs: &[Job], unet_batch: usize) -> Vec<(u64, u32)> {
    let inline = watch(g, jobs, unet_batch, false, &|| Stop::No);
    let pipelined = watch(g, jobs, unet_batch, true, &|| Stop::No);
    assert!(
        inline.ends.iter().all(|e| *e == Ok(Ended::Done)),
        "{:?}",
        inline.ends
    );
    assert_eq!(pipelined, inline, "pipelined and inline decodes differ");
    // Different seeds make different pictures: the comparison above could fail.
    assert_ne!(inline.images[0].3, inline.images[1].3);
    inline.images.iter().map(|i| (i.0, i.1)).collect()
}

#[test]
fn pipelined_decodes_give_the_same_images_and_events_sd15() {
    let mut g = sd15();
    // Three UNet calls of one image: two decodes overlap the next call.
    let order = same_either_way(&mut g, &[job("a red fox", Sampler::EulerA, 40, 3)], 1);
    assert_eq!(order, vec![(1, 0), (1, 1), (1, 2)]);
}

#[test]
fn pipelined_decodes_give_the_same_images_and_events_sdxl() {
    let mut g = Generator::load(EngineSpec::new(tiny_sdxl()), runtime()).expect("tiny SDXL loads");
    let order = same_either_way(&mut g, &[job("a red fox", Sampler::DpmPp2m, 8, 3)], 1);
    assert_eq!(order, vec![(1, 0), (1, 1), (1, 2)]);
}

#[test]
fn pipelined_decodes_keep_a_groups_images_in_job_order() {
    let mut g = sd15();
    let mut c = job("a green frog", Sampler::EulerA, 3, 1);
    // Other steps: a UNet batch of its own after the others.
    c.steps = 2;
    let jobs = [
        job("a red fox", Sampler::EulerA, 1, 2),
        job("a blue bird, (detailed:1.2)", Sampler::EulerA, 9, 1),
        c,
        job("a cat", Sampler::EulerA, 5, 2),
    ];
    let order = same_either_way(&mut g, &jobs, 2);
    assert_eq!(order, vec![(1, 0), (1, 1), (2, 0), (4, 0), (4, 1), (3, 0)]);
}

#[test]
fn an_interrupt_still_delivers_the_images_decoded_beside_it() {
    let mut g = sd15();
    let j = job("a fox", Sampler::Euler, 3, 3);
    // Interrupted at the first step of the second UNet call (3 steps a call): the first call's
    // image is finished, its decode under way on the worker.
    let interrupt_at_fourth = || {
        let calls = std::cell::Cell::new(0);
        move || {
            calls.set(calls.get() + 1);
            [Stop::No, Stop::Interrupt][usize::from(calls.get() >= 4)]
        }
    };
    let inline = watch(
        &mut g,
        std::slice::from_ref(&j),
        1,
        false,
        &interrupt_at_fourth(),
    );
    let pipelined = watch(
        &mut g,
        std::slice::from_ref(&j),
        1,
        true,
        &interrupt_at_fourth(),
    );
    assert_eq!(inline.ends, vec![Ok(Ended::Cancelled)]);
    let seeds: Vec<u64> = inline.images.iter().map(|i| i.2).collect();
    assert_eq!(seeds, vec![3]);
    assert_eq!(pipelined, inline);
}

#[test]
fn a_decode_failure_fails_only_its_job() {
    let mut g = sd15();
    let jobs = [
        job("a red fox", Sampler::Euler, 1, 2),
        job("a cat", Sampler::Euler, 20, 2),
        job("a frog", Sampler::Euler, 30, 1),
    ];
    let whole = watch(&mut g, &jobs, 2, true, &|| Stop::No);
    for pipelined in [true, false] {
        // The second job's first image (seed 20) fails to decode.
        g.fail_decode_of(Some(20));
        let seen = watch(&mut g, &jobs, 2, pipelined, &|| Stop::No);
        g.fail_decode_of(None);
        assert_eq!(seen.ends[0], Ok(Ended::Done), "pipelined {pipelined}");
        assert_eq!(seen.ends[2], Ok(Ended::Done), "pipelined {pipelined}");
        let err = seen.ends[1].clone().unwrap_err();
        assert!(
            err.contains("VAE decoder") && err.contains("seed 20"),
            "{err}"
        );
        // The other jobs' images are those of the run without the failure; none of the second's.
        let want: Vec<_> = whole.images.iter().filter(|i| i.0 != 2).collect();
        let got: Vec<_> = seen.images.iter().collect();
        assert_eq!(got, want, "pipelined {pipelined}");
    }
    // A lone job's decode failure is the run's error.
    g.fail_decode_of(Some(21));
    let lone = g.generate(&jobs[1], &|| Stop::No, &mut |_| {}, 7);
    g.fail_decode_of(None);
    let err = lone.expect_err("the decode failed").to_string();
    assert!(err.contains("seed 21"), "{err}");
}

/// Renames every `op` in `component`'s graph of `model` to `to` (same length, so the file stays a
/// valid ONNX protobuf that opens): ONNX Runtime then refuses the graph when it builds the session.
fn break_op(model: &std::path::Path, component: &str, op: &str, to: &str) {
    let path = model.join(component).join("model.onnx");
    let bytes = std::fs::read(&path).expect("the graph reads");
    let (op, to) = (op.as_bytes(), to.as_bytes());
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(op) {
            out.extend_from_slice(to);
            i += op.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    assert_ne!(
        out,
        bytes,
        "{component} has no {:?}",
        std::str::from_utf8(op)
    );
    std::fs::write(&path, out).expect("the graph writes");
}

#[test]
fn sessions_built_side_by_side_name_the_component_that_failed() {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let model = tmp.path().join("broken");
    copy_dir(&tiny_model(), &model);
    let load = || match Generator::load(EngineSpec::new(model.clone()), runtime()) {
        Ok(_) => panic!("a model with a broken graph loaded"),
        Err(e) => e.to_string(),
    };
    break_op(&model, "vae_decoder", "Conv", "Cxnv");
    let err = load();
    assert!(
        err.contains("vae_decoder session") && err.contains("Cxnv"),
        "{err}"
    );
    // Two broken: the first in the family's order (text encoders, UNet, VAE) is the one reported,
    // whichever build fails first.
    break_op(&model, "text_encoder", "MatMul", "MaxMul");
    let err = load();
    assert!(
        err.contains("text_encoder session") && err.contains("MaxMul"),
        "{err}"
    );
}
