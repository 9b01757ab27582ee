//! The device patch (`--patch-on device`): the patch program, run on the CPU provider, writes the
//! weights the host fuse writes for every adapter fixture of both tiny models, on the plain graph
//! (identity) and the SD-fused CUDA graph (transpose, NHWC, packed heads, f16); images through it
//! equal images through the host patch, a swap back restores the base bit for bit, and a failed
//! program leaves the weights as they were. Strength schedules and dials re-run the kept program
//! per step (tiny SD1.5 and SDXL) and give the host patch's `refuse` images. An adapter set that
//! does not fit the device's free memory (a test hook's figure) is refused with the numbers.

use crate::resident::{image, max_diff};
use crate::sdxl::tiny_sdxl;
use crate::util::*;
use std::path::{Path, PathBuf};
use stipple::engine::Stop;
use stipple::job::{Event, Job};
use stipple::live::LoraMethod;
use stipple::model::layout::GraphKind;
use stipple::model::{ComponentKind, Model};
use stipple::patch::program::Delta;
use stipple::patch::DeltaSource;
use stipple::pipeline::adapters::{self, PlannedView};
use stipple::pipeline::device_patch::{self, program_weights};
use stipple::pipeline::generator::PatchCounts;
use stipple::pipeline::resident::{self, Net};
use stipple::pipeline::{Dials, EngineSpec, Generator};
use stipple::prompt::Component;
use stipple::runtime::SessionOptions;

#[derive(serde::Deserialize)]
struct Entry {
    name: String,
    mus: Vec<String>,
}

fn manifest(dir: &Path) -> Vec<Entry> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

/// The values of a weight of element size `esize` (f32, or f16 for the fused graph).
/// The names of every initializer in `c`'s weight map (the weights a resident net may hold).
fn initializer_names(c: &stipple::model::layout::Component) -> Vec<String> {
    c.weightmap
        .initializers
        .iter()
        .map(|e| e.name.clone())
        .collect()
}

fn values(b: &[u8], esize: usize) -> Vec<f32> {
    match esize {
        2 => b
            .chunks_exact(2)
            .map(|x| half::f16::from_le_bytes([x[0], x[1]]).to_f32())
            .collect(),
        _ => b
            .chunks_exact(4)
            .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]))
            .collect(),
    }
}

/// How far `got` is from `want`: 0 when the bits are the same, else the largest difference in
/// units in the last place of the weight's type at its largest magnitude (a rounding of a sum that
/// cancels is an ulp of the terms, not of the small result).
fn distance(got: &[u8], want: &[u8], esize: usize) -> f64 {
    assert_eq!(got.len(), want.len());
    if got == want {
        return 0.0;
    }
    let (g, w) = (values(got, esize), values(want, esize));
    let top = w.iter().fold(0.0f32, |m, x| m.max(x.abs())) as f64;
    let mantissa = if esize == 2 { 10 } else { 23 };
    let ulp = 2f64.powi(top.log2().floor() as i32 - mantissa);
    let worst = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (*a as f64 - *b as f64).abs())
        .fold(0.0, f64::max);
    // Bits that differ with equal values (±0) still count as a difference.
    (worst / ulp).max(f64::MIN_POSITIVE)
}

/// What one adapter at one strength gave: weights compared, those through factors, and the
/// largest distance of each kind.
#[derive(Default, Debug)]
struct Tally {
    weights: usize,
    factored: usize,
    dense: f64,
    /// The largest distance of factored weights in f32 and in f16.
    factored_f32: f64,
    factored_f16: f64,
}

/// Compares the program's weights with the host fuse's for `adapter` at `mu` on every component
/// and graph of `model`.
fn compare(model: &Model, adapter: &Path, mu: &str, kinds: &[ComponentKind]) -> Tally {
    let arg = format!("{}:{mu}", adapter.display());
    let loras = active_loras(&[arg]);
    let key = adapters::strengths_at(&loras, 0, 1);
    let mut tally = Tally::default();
    adapters::with_plan(model, &loras, &key, |plan| {
        for &kind in kinds {
            let c = model.component(kind).expect("component");
            let view = PlannedView {
                plan: &plan,
                component: adapters::lora_component(kind).unwrap(),
            };
            // The f16 Gemm path (STIPPLE_PATCH_F16=1) only changes the f16 graph's sites.
            for (which, f16_gemm) in [
                (GraphKind::Plain, false),
                (GraphKind::Cuda, false),
                (GraphKind::Cuda, true),
            ] {
                let Some((graph, map)) = c.graph_of(which) else {
                    continue;
                };
                let got = program_weights(runtime(), c, which, &view, f16_gemm)
                    .unwrap_or_else(|e| panic!("{}: {kind} {which:?}: {e}", adapter.display()));
                let entries: Vec<_> = map
                    .initializers
                    .iter()
                    .filter(|e| e.sources().iter().any(|s| view.may_change(s)))
                    .collect();
                assert_eq!(got.len(), entries.len());
                let want = stipple::patch::fill_each(c, which, &entries, &view).unwrap();
                for ((name, bytes), (e, w)) in got.iter().zip(entries.iter().zip(&want)) {
                    assert_eq!(name, &e.name);
                    let esize = stipple::model::layout::elem_of(graph, &e.name)
                        .and_then(|t| t.size())
                        .unwrap();
                    let d = distance(bytes, w.elems.bytes(), esize);
                    let factored = e.sources().iter().any(|s| {
                        view.terms(s)
                            .unwrap()
                            .iter()
                            .any(|t| matches!(t.delta, Delta::Factors { .. }))
                    });
                    tally.weights += 1;
                    if factored {
                        tally.factored += 1;
                        let m = if esize == 2 {
                            &mut tally.factored_f16
                        } else {
                            &mut tally.factored_f32
                        };
                        *m = m.max(d);
                    } else {
                        tally.dense = tally.dense.max(d);
                    }
                }
            }
        }
    })
    .unwrap();
    tally
}

fn check_all(model_dir: &Path, lora_dir: &Path, kinds: &[ComponentKind]) {
    let model = Model::open(model_dir).unwrap();
    let mut factored = 0;
    let mut checked = 0;
    for e in manifest(lora_dir) {
        for mu in &e.mus {
            let path = lora_dir.join(format!("{}.safetensors", e.name));
            let t = compare(&model, &path, mu, kinds);
            println!("{} at {mu}: {t:?}", e.name);
            assert!(t.weights > 0, "{} reaches no weight", e.name);
            // Dense ΔW is scaled, summed and added as the host fuse does: the same bits.
            assert_eq!(t.dense, 0.0, "{} at {mu}: {t:?}", e.name);
            // Low-rank terms are multiplied out in another order (s·up first, ONNX Runtime's
            // MatMul) while the host rounds ΔW three times (product, α/r, s): the f32 sums differ
            // by at most two f32 steps at the weight's scale, which after the rounding to f16 of
            // the fused graph is at most one f16 step.
            assert!(t.factored_f32 <= 2.0, "{} at {mu}: {t:?}", e.name);
            assert!(t.factored_f16 <= 1.0, "{} at {mu}: {t:?}", e.name);
            factored += t.factored;
            checked += t.weights;
        }
    }
    assert!(
        factored > 0 && factored < checked,
        "{factored} of {checked}"
    );
}

#[test]
fn the_patch_program_writes_the_host_fuse_weights_on_tiny_sd15() {
    check_all(
        &tiny_model(),
        &root().join("tests/fixtures/lora"),
        &[ComponentKind::TextEncoder, ComponentKind::Unet],
    );
}

#[test]
fn the_patch_program_writes_the_host_fuse_weights_on_tiny_sdxl() {
    check_all(
        &tiny_sdxl(),
        &root().join("tests/fixtures/lora-sdxl"),
        &[
            ComponentKind::TextEncoder,
            ComponentKind::TextEncoder2,
            ComponentKind::Unet,
        ],
    );
}

pub(crate) fn lora_dir() -> PathBuf {
    root().join("tests/fixtures/lora")
}

/// The tiny model with resident weights, patched on the device or on the host.
fn load(on_device: bool) -> Generator {
    let opts = SessionOptions {
        resident: Some(true),
        patch_on_device: Some(on_device),
        ..SessionOptions::default()
    };
    tiny_generator(opts, vec![lora_dir()], false)
}

const BASE: &str = "a red fox";
/// Dense ΔW only (the same bits as the host patch).
const DENSE: &str = "a red fox <lora:lyco_loha:0.8> <lora:lyco_oft:0.5>";
const MIXED: &str = "a red fox <lora:lyco_locon:1> <lora:peft_diffusers:0.7> <lora:lyco_lokr:0.6>";
const TE: &str = "a red fox <lora:lyco_te:1>";

#[test]
fn swaps_through_the_patch_program_give_the_host_patch_images_and_return_to_the_base() {
    let mut device = load(true);
    let mut host = load(false);
    let base = image(&mut device, BASE);
    assert_eq!(base, image(&mut host, BASE));
    for prompt in [DENSE, MIXED, TE, DENSE, BASE] {
        let (d, h) = (image(&mut device, prompt), image(&mut host, prompt));
        let stats = device.last_fuse().expect("an adapter change was timed");
        assert_eq!(stats.session_s, 0.0, "{prompt}: no model session was built");
        if prompt == DENSE || prompt == BASE {
            assert_eq!(d, h, "{prompt}: the same weights, bit for bit");
        } else {
            // Low-rank sums round in another order (a step of f32): never a step of 8 bits more.
            assert!(max_diff(&d, &h) <= 1, "{prompt}: {}", max_diff(&d, &h));
        }
        if prompt != BASE {
            assert_ne!(d, base, "{prompt} changes the image");
        }
    }
    assert_eq!(
        image(&mut device, BASE),
        base,
        "back to the base, bit for bit"
    );
}

#[test]
fn a_failed_patch_program_leaves_the_weights_as_they_were_and_a_strength_change_reruns_it() {
    let model = Model::open(&tiny_model()).unwrap();
    let c = model.component(ComponentKind::Unet).unwrap();
    let opts = SessionOptions {
        resident: Some(true),
        patch_on_device: Some(true),
        ..SessionOptions::default()
    };
    let none: std::collections::HashMap<String, Vec<f32>> = Default::default();
    let mut net =
        resident::build(runtime(), "unet", c, GraphKind::Plain, &none, &opts, &[]).unwrap();
    let stage = |net: &Net, file: &str, mu: &str, broken: bool| {
        let loras = active_loras(&[format!("{}:{mu}", lora_dir().join(file).display())]);
        let key = adapters::strengths_at(&loras, 0, 1);
        adapters::with_plan(&model, &loras, &key, |plan| {
            let view = PlannedView {
                plan: &plan,
                component: stipple::lora::TargetComponent::Unet,
            };
            let mut s =
                device_patch::stage(runtime(), &opts, net.layout().unwrap(), c, &view).unwrap();
            if broken {
                s.break_for_test();
            }
            s
        })
        .unwrap()
    };
    let names = initializer_names(c);
    let weights = |net: &Net| -> Vec<Vec<u8>> {
        // Weights folded into the session at build are not resident: left out.
        names.iter().filter_map(|n| net.host_weight(n)).collect()
    };
    let pristine = weights(&net);
    assert!(pristine.len() > 100, "{} resident weights", pristine.len());
    net.commit_device(stage(&net, "lyco_locon.safetensors", "1", false))
        .unwrap();
    let with_a = weights(&net);
    assert_ne!(with_a, pristine);
    // Another adapter set, whose program fails: nothing changes.
    let err = net
        .commit_device(stage(&net, "lyco_loha.safetensors", "1", true))
        .expect_err("a broken program fails");
    assert!(err.to_string().contains("patch program"), "{err}");
    assert_eq!(weights(&net), with_a);
    // The same change, unbroken, then back to the base: every weight as loaded, bit for bit.
    net.commit_device(stage(&net, "lyco_loha.safetensors", "1", false))
        .unwrap();
    let with_b = weights(&net);
    assert!(with_b != with_a && with_b != pristine);
    // A strength change re-runs the same program: the weights a new program at that strength
    // writes, bit for bit.
    net.commit_device(stage(&net, "lyco_locon.safetensors", "1", false))
        .unwrap();
    let halved: Vec<f32> = net
        .patch_strengths()
        .unwrap()
        .iter()
        .map(|s| s * 0.5)
        .collect();
    assert!(!halved.is_empty());
    net.rerun_patch(&halved).unwrap();
    let rerun = weights(&net);
    net.commit_device(stage(&net, "lyco_locon.safetensors", "0.5", false))
        .unwrap();
    assert_eq!(net.patch_strengths().unwrap(), halved.as_slice());
    assert_eq!(rerun, weights(&net));
    assert_ne!(rerun, with_a);
    assert!(net.rerun_patch(&[1.0]).is_err(), "a wrong count is refused");
    assert_eq!(weights(&net), rerun, "and changes nothing");
    let back = {
        let view: std::collections::HashMap<String, Vec<f32>> = Default::default();
        device_patch::stage(runtime(), &opts, net.layout().unwrap(), c, &view).unwrap()
    };
    net.commit_device(back).unwrap();
    assert_eq!(weights(&net), pristine);
}

/// The image of `prompt` (seed 5, 64², Euler) over `steps` steps with `method`; `on_step(i)` runs at
/// step `i`'s stop check, after that step's adapter change and before its UNet run (a dial set
/// there counts from the next step).
pub(crate) fn job_image(
    g: &mut Generator,
    method: LoraMethod,
    prompt: &str,
    steps: u32,
    on_step: &dyn Fn(u32),
) -> Vec<u8> {
    g.set_lora_method(method);
    let calls = std::cell::Cell::new(0u32);
    let stop = || {
        on_step(calls.get());
        calls.set(calls.get() + 1);
        Stop::No
    };
    let job = Job {
        steps,
        ..small_job(prompt, 5)
    };
    let mut out = None;
    let r = g.generate(
        &job,
        &stop,
        &mut |e| {
            if let Event::Image { image, .. } = e {
                out.get_or_insert(image.pixels);
            }
        },
        1,
    );
    g.set_lora_method(LoraMethod::default());
    g.dials().clear();
    r.unwrap_or_else(|e| panic!("{prompt} ({method:?}): {e}"));
    out.expect("an image")
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

/// Every UNet weight `g` holds in host memory (resident on the CPU), by name.
fn unet_weights(g: &Generator) -> Vec<(String, Vec<u8>)> {
    let c = g.model.component(ComponentKind::Unet).expect("a UNet");
    c.weightmap
        .initializers
        .iter()
        .filter_map(|e| g.unet_host_weight(&e.name).map(|b| (e.name.clone(), b)))
        .collect()
}

/// Sets `name`'s UNet strength to `value` at step `at`'s stop check of `dials`' generator.
pub(crate) fn dialler(dials: Dials, dial: Option<(u32, &str, f32)>) -> impl Fn(u32) + '_ {
    move |i| {
        if let Some((at, name, value)) = dial {
            if i == at {
                dials.set(name, Component::Unet, value);
            }
        }
    }
}

/// `prompt` through the device patch with the default method (fuse) and through the host patch with
/// `refuse` (the reference: weights re-fused on the host at every step whose strengths differ), with
/// the same `dial`; (device image, host image, programs staged, programs re-run) for the job.
fn device_vs_refuse(
    device: &mut Generator,
    host: &mut Generator,
    prompt: &str,
    steps: u32,
    dial: Option<(u32, &str, f32)>,
) -> (Vec<u8>, Vec<u8>, u64, u64) {
    let before = device.patch_counts();
    let on_step = dialler(device.dials(), dial);
    let d = job_image(device, LoraMethod::Fuse, prompt, steps, &on_step);
    let after = device.patch_counts();
    let on_step = dialler(host.dials(), dial);
    let h = job_image(host, LoraMethod::Refuse, prompt, steps, &on_step);
    assert_eq!(
        host.patch_counts(),
        PatchCounts::default(),
        "no program on the host"
    );
    (
        d,
        h,
        after.staged - before.staged,
        after.reruns - before.reruns,
    )
}

/// Checks `prompt`'s device image against host refuse: the same bits for dense ΔW, else at most
/// 1/255 mean and less than the adapter's own effect on the image (against `base`).
fn assert_matches(prompt: &str, d: &[u8], h: &[u8], base: &[u8], dense: bool) {
    let (diff, effect) = (mad(d, h), mad(h, base));
    println!(
        "{prompt}: device re-run vs host refuse mean {:.4}/255 (max {}/255), adapter effect {:.4}/255",
        diff * 255.0,
        max_diff(d, h),
        effect * 255.0
    );
    assert!(effect > 0.0, "{prompt} changes the image");
    if dense {
        assert_eq!(d, h, "{prompt}: dense ΔW, the same bits");
    } else {
        assert!(diff <= 1.0 / 255.0, "{prompt}: mean abs diff {diff}");
        assert!(effect > diff, "{prompt}: {diff} vs effect {effect}");
    }
}

#[test]
fn schedules_through_the_device_patch_rerun_its_program_and_equal_host_refuse() {
    let (mut device, mut host) = (load(true), load(false));
    let pristine = unet_weights(&device);
    assert!(pristine.len() > 100, "{} resident weights", pristine.len());
    let steps = 4;
    let base = job_image(&mut host, LoraMethod::Refuse, "a fox", steps, &|_| {});
    assert_eq!(
        job_image(&mut device, LoraMethod::Refuse, "a fox", steps, &|_| {}),
        base
    );
    // Fractions of the run over 4 steps: a new strength at every step.
    for (prompt, dense) in [
        ("a fox <lora:lyco_locon:unet=0.2@0,1@1>", false),
        ("a fox <lora:lyco_loha:unet=1@0,0.3@1>", true),
        ("a fox <lora:lyco_lokr:unet=0.2@0,1.2@1>", true),
        ("a fox <lora:peft_diffusers:te=0.1@1,0.6@4>", false),
        (
            "a fox <lora:lyco_loha:unet=1@0,0.3@1> <lora:lyco_locon:0.6:unet=0@0,1@1>",
            false,
        ),
    ] {
        let (d, h, staged, reruns) = device_vs_refuse(&mut device, &mut host, prompt, steps, None);
        assert_matches(prompt, &d, &h, &base, dense);
        // The first step stages the adapter set's program; every later step only re-runs it.
        assert_eq!((staged, reruns), (1, steps as u64 - 1), "{prompt}");
        let last = device.last_fuse().expect("a change was timed");
        assert!(last.rerun && last.session_s == 0.0, "{prompt}: {last:?}");
        assert!(
            device.live_factors().is_none(),
            "{prompt}: nothing ran live"
        );
    }
    // The adapters removed: the base image and every resident weight as loaded, bit for bit.
    assert_eq!(
        job_image(&mut device, LoraMethod::Fuse, "a fox", steps, &|_| {}),
        base
    );
    assert!(
        unet_weights(&device) == pristine,
        "back to the base weights"
    );
}

#[test]
fn a_dora_schedule_stages_a_program_per_step_and_equals_host_refuse() {
    let (mut device, mut host) = (load(true), load(false));
    let steps = 4;
    let base = job_image(&mut host, LoraMethod::Refuse, "a fox", steps, &|_| {});
    // DoRA's ΔW is not linear in its strength: each new strength is a new program.
    let prompt = "a fox <lora:lyco_dora_in:unet=0.2@0,1@1>";
    let (d, h, staged, reruns) = device_vs_refuse(&mut device, &mut host, prompt, steps, None);
    assert_matches(prompt, &d, &h, &base, true);
    assert_eq!((staged, reruns), (steps as u64, 0), "{prompt}");
    assert!(!device.last_fuse().unwrap().rerun);
    // A DoRA at a constant strength beside a scheduled LoCon: the program re-runs, the DoRA term
    // added as it is.
    let prompt = "a fox <lora:lyco_dora_in:0.7> <lora:lyco_locon:unet=0.2@0,1@1>";
    let (d, h, staged, reruns) = device_vs_refuse(&mut device, &mut host, prompt, steps, None);
    assert_matches(prompt, &d, &h, &base, false);
    assert_eq!((staged, reruns), (1, steps as u64 - 1), "{prompt}");
}

#[test]
fn a_strength_dialled_mid_job_reruns_the_program_and_equals_host_refuse() {
    let (mut device, mut host) = (load(true), load(false));
    let steps = 6;
    let prompt = "a fox <lora:lyco_loha:1>";
    // Dialled at step 2's check (0-based 1): steps 3 on run at 4.
    let dial = Some((1, "lyco_loha", 4.0));
    let undialled = job_image(&mut host, LoraMethod::Refuse, prompt, steps, &|_| {});
    let (d, h, staged, reruns) = device_vs_refuse(&mut device, &mut host, prompt, steps, dial);
    assert_matches("dialled lyco_loha", &d, &h, &undialled, true);
    assert_eq!(
        (staged, reruns),
        (1, 1),
        "one program, one re-run for the dial"
    );
    // Asked for, live stays live on the device patch: no program runs for the dial.
    let before = device.patch_counts();
    let on_step = dialler(device.dials(), dial);
    let live = job_image(&mut device, LoraMethod::Live, prompt, steps, &on_step);
    assert_eq!(device.patch_counts(), before);
    assert!(device.live_factors().is_some_and(|f| !f.layers.is_empty()));
    println!(
        "live (SVD of the LoHa) vs host refuse, dialled: mean {:.4}/255",
        mad(&live, &h) * 255.0
    );
}

/// The tiny SDXL model with resident weights, patched on the device or on the host.
fn load_sdxl(on_device: bool) -> Generator {
    let opts = SessionOptions {
        resident: Some(true),
        patch_on_device: Some(on_device),
        ..SessionOptions::default()
    };
    let spec = EngineSpec::new(tiny_sdxl())
        .with_session(opts)
        .with_lora_dirs(vec![root().join("tests/fixtures/lora-sdxl")]);
    Generator::load(spec, runtime()).expect("tiny SDXL loads")
}

#[test]
fn sdxl_schedules_through_the_device_patch_rerun_its_program_and_equal_host_refuse() {
    let (mut device, mut host) = (load_sdxl(true), load_sdxl(false));
    let pristine = unet_weights(&device);
    assert!(!pristine.is_empty());
    let steps = 4;
    let base = job_image(&mut host, LoraMethod::Refuse, "a fox", steps, &|_| {});
    for (prompt, dense) in [
        ("a fox <lora:xl_kohya_locon:unet=0.2@0,1@1>", false),
        ("a fox <lora:xl_loha:unet=1@0,0.3@1>", true),
        // The UNet follows `te`: every program re-runs, but only the first text encoder's writes.
        ("a fox <lora:xl_te1_locon:te=0.2@0,1@1>", false),
    ] {
        let (d, h, staged, reruns) = device_vs_refuse(&mut device, &mut host, prompt, steps, None);
        assert_matches(prompt, &d, &h, &base, dense);
        assert_eq!((staged, reruns), (1, steps as u64 - 1), "{prompt}");
    }
    let dial = Some((1, "xl_loha", 0.4));
    let prompt = "a fox <lora:xl_loha:1>";
    let (d, h, staged, reruns) = device_vs_refuse(&mut device, &mut host, prompt, steps, dial);
    assert_matches("dialled xl_loha", &d, &h, &base, true);
    assert_eq!((staged, reruns), (1, 1));
    assert_eq!(
        job_image(&mut device, LoraMethod::Fuse, "a fox", steps, &|_| {}),
        base
    );
    assert!(
        unet_weights(&device) == pristine,
        "back to the base weights"
    );
}

/// `files` (in `dir`) at `mus` as the UNet's deltas; `f` gets their view.
fn unet_view<R>(
    model: &Model,
    dir: &Path,
    files: &[&str],
    mus: &[&str],
    f: impl FnOnce(&PlannedView) -> R,
) -> R {
    let args: Vec<String> = files
        .iter()
        .zip(mus)
        .map(|(f, mu)| format!("{}:{mu}", dir.join(f).display()))
        .collect();
    let loras = active_loras(&args);
    let key = adapters::strengths_at(&loras, 0, 1);
    adapters::with_plan(model, &loras, &key, |plan| {
        f(&PlannedView {
            plan: &plan,
            component: stipple::lora::TargetComponent::Unet,
        })
    })
    .unwrap()
}

/// Commits `files` at `mus[0]` through the device patch on the UNet of `model_dir` (plain graph,
/// CPU), then re-runs the program at each later entry of `mus`. The re-run program writes exactly
/// the weights whose sum has a term scaled by its strength (from the plan), none without a term;
/// after the commit and every re-run each resident weight is the host patch's at those strengths
/// (a second net patched on the host); removing the adapters gives the base back bit for bit.
/// `held`: some weight has terms, all of which hold their strength (written at the commit only).
fn reruns_write_only_what_scales(
    model_dir: &Path,
    dir: &Path,
    files: &[&str],
    mus: &[&[&str]],
    held: bool,
) {
    let model = Model::open(model_dir).unwrap();
    let c = model.component(ComponentKind::Unet).unwrap();
    let opts = |on_device: bool| SessionOptions {
        resident: Some(true),
        patch_on_device: Some(on_device),
        ..SessionOptions::default()
    };
    let none: std::collections::HashMap<String, Vec<f32>> = Default::default();
    let build = |on_device: bool| {
        resident::build(
            runtime(),
            "unet",
            c,
            GraphKind::Plain,
            &none,
            &opts(on_device),
            &[],
        )
        .unwrap()
    };
    let (mut device, mut host) = (build(true), build(false));
    let (graph, _) = c.graph_of(GraphKind::Plain).unwrap();
    let names = initializer_names(c);
    let weights = |net: &Net| -> Vec<(String, Vec<u8>)> {
        names
            .iter()
            .filter_map(|n| net.host_weight(n).map(|b| (n.clone(), b)))
            .collect()
    };
    let pristine = weights(&device);
    assert!(pristine.len() > 100, "{} resident weights", pristine.len());
    let same_as_host = |device: &Net, host: &Net, what: &str| {
        let (d, h) = (weights(device), weights(host));
        assert_eq!(d.len(), h.len());
        let mut worst = 0.0f64;
        for ((name, got), (_, want)) in d.iter().zip(&h) {
            let esize = stipple::model::layout::elem_of(graph, name)
                .and_then(|t| t.size())
                .unwrap();
            let dist = distance(got, want, esize);
            // Two f32 steps (one f16 step) at the weight's scale, as the program's checks above.
            let limit = if esize == 2 { 1.0 } else { 2.0 };
            assert!(
                dist <= limit,
                "{what}: {name} is {dist} steps off the host's"
            );
            worst = worst.max(dist);
        }
        assert_ne!(d, pristine, "{what}: the adapters change the weights");
        println!("{what}: every weight within {worst} steps of the host patch");
    };
    let (staged, patched) = unet_view(&model, dir, files, mus[0], |view| {
        let layout = device.layout().unwrap();
        let staged = device_patch::stage(runtime(), &opts(true), layout, c, view).unwrap();
        let commit = staged.commit_entries();
        let rerun: std::collections::HashSet<usize> =
            staged.rerun_entries().iter().copied().collect();
        let terms = |i: usize| -> Vec<stipple::patch::SourceTerm> {
            let e = layout.weight(i).unwrap();
            e.sources()
                .iter()
                .flat_map(|s| view.terms(s).unwrap())
                .collect()
        };
        let mut scaled = 0;
        let mut no_terms = 0;
        let mut fixed_terms = 0;
        for &i in &commit {
            let t = terms(i);
            let name = &layout.weight(i).unwrap().name;
            if t.iter().any(|t| t.linear) {
                scaled += 1;
                assert!(rerun.contains(&i), "{name} scales but is not re-run");
            } else {
                assert!(!rerun.contains(&i), "{name} does not scale but is re-run");
                if t.is_empty() {
                    no_terms += 1;
                    println!("  without terms: {name}");
                } else {
                    fixed_terms += 1;
                }
            }
        }
        assert_eq!(rerun.len(), scaled);
        assert_eq!(commit.len(), scaled + no_terms + fixed_terms);
        assert!(
            scaled > 0 && no_terms > 0,
            "{scaled} scaled, {no_terms} without terms"
        );
        assert_eq!(
            fixed_terms > 0,
            held,
            "{fixed_terms} weights with terms that hold"
        );
        println!(
            "{files:?}: the commit writes {}, a re-run {scaled} ({no_terms} without terms and \
             {fixed_terms} with only terms that hold their strength are left out)",
            commit.len()
        );
        (staged, scaled + fixed_terms)
    });
    let counts = (staged.commit_entries().len(), staged.rerun_entries().len());
    device.commit_device(staged).unwrap();
    assert_eq!(device.patch_writes(), Some(counts));
    let to_host = |host: &mut Net, mus: &[&str]| {
        unet_view(&model, dir, files, mus, |view| {
            let staged = host.layout().unwrap().stage(c, view).unwrap();
            host.commit(staged).unwrap();
        })
    };
    to_host(&mut host, mus[0]);
    same_as_host(&device, &host, &format!("commit at {:?}", mus[0]));
    for m in &mus[1..] {
        let strengths = unet_view(&model, dir, files, m, |view| {
            device_patch::stage(runtime(), &opts(true), device.layout().unwrap(), c, view)
                .unwrap()
                .strengths()
                .to_vec()
        });
        assert_ne!(device.patch_strengths().unwrap(), strengths.as_slice());
        device.rerun_patch(&strengths).unwrap();
        assert_eq!(device.patch_writes(), Some(counts));
        to_host(&mut host, m);
        same_as_host(&device, &host, &format!("re-run at {m:?}"));
    }
    let back = device_patch::stage(runtime(), &opts(true), device.layout().unwrap(), c, &none);
    let back = back.unwrap();
    // Nothing scales: every weight the adapters changed goes back to its base at the commit.
    assert!(back.rerun_entries().is_empty());
    assert_eq!(back.commit_entries().len(), patched);
    device.commit_device(back).unwrap();
    assert!(
        weights(&device) == pristine,
        "back to the base, bit for bit"
    );
}

#[test]
fn a_rerun_writes_only_the_weights_that_scale_on_tiny_sd15() {
    // LoCon (convolutions included) and LoHa factors.
    reruns_write_only_what_scales(
        &tiny_model(),
        &lora_dir(),
        &["lyco_locon.safetensors", "lyco_loha.safetensors"],
        &[&["1", "1"], &["0.5", "1.5"], &["0.2", "0.3"], &["1.2", "2"]],
        false,
    );
    // PEFT factors and a DoRA at a constant strength: its convolution, which PEFT does not
    // reach, holds its strength, so only the commit writes it.
    reruns_write_only_what_scales(
        &tiny_model(),
        &lora_dir(),
        &["peft_diffusers.safetensors", "lyco_dora_in.safetensors"],
        &[&["1", "0.7"], &["0.5", "0.7"], &["1.5", "0.7"]],
        true,
    );
}

#[test]
fn a_rerun_writes_only_the_weights_that_scale_on_tiny_sdxl() {
    reruns_write_only_what_scales(
        &tiny_sdxl(),
        &root().join("tests/fixtures/lora-sdxl"),
        &["xl_kohya_locon.safetensors", "xl_loha.safetensors"],
        &[
            &["1", "1"],
            &["0.3", "2"],
            &["0.25", "0.5"],
            &["1.7", "0.9"],
        ],
        false,
    );
}

/// A size as the device-memory refusal prints it (`12.5 KiB`, `3.0 MiB`), in bytes.
fn printed_bytes(s: &str) -> f64 {
    let (n, unit) = s.trim().split_once(' ').unwrap_or((s, ""));
    let n: f64 = n.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"));
    match unit {
        "KiB" => n * 1024.0,
        "MiB" => n * 1024.0 * 1024.0,
        _ => panic!("{s:?}: unit"),
    }
}

#[test]
fn an_adapter_set_that_does_not_fit_the_device_is_refused_with_the_numbers_and_changes_nothing() {
    // STIPPLE_DEVICE_FREE_BYTES (device_patch's test hook) stands in for NVML's free figure, on
    // the CPU too; "@1" spares the first patch program checked, the one of the adapter kept
    // (lyco_locon reaches the UNet only: one program; a text encoder's program that writes
    // nothing is not checked), and refuses every later one. One process
    // (`stipple batch`, one image per UNet call, in file order): the base, A, B (refused), A again.
    // The second A has another strength text (0.80) so that it is not a duplicate of the first;
    // it is the same strength, so the same picture.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let lines = [
        "a red fox",
        "a red fox <lora:lyco_locon:0.8>",
        "a red fox <lora:lyco_loha:1>",
        "a red fox <lora:lyco_locon:0.80>",
    ]
    .map(|p| format!(r#"{{"prompt": "{p}", "steps": 2, "seed": 7, "width": 64, "height": 64}}"#));
    let jobs = dir.path().join("jobs.jsonl");
    std::fs::write(&jobs, lines.join("\n") + "\n").unwrap();
    let free = 256 * 1024;
    let o = crate::cli::stipple()
        .env("STIPPLE_DEVICE_FREE_BYTES", format!("{free}@1"))
        .arg("batch")
        .arg(&jobs)
        .arg("--out")
        .arg(&out)
        .args(["--unet-batch", "1", "--resident-weights", "true"])
        .args(["--patch-on", "device", "--lora-dir"])
        .arg(lora_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "a job failed: {stderr}");
    let results: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let by_line = |n: u64| {
        results
            .iter()
            .find(|r| r["line"] == n)
            .unwrap_or_else(|| panic!("line {n}: {results:?}"))
    };
    let picture = |n: u64| {
        let r = by_line(n);
        assert_eq!(r["status"], "done", "line {n}: {r}");
        read_rgb(std::path::Path::new(
            r["images"][0]["path"].as_str().unwrap(),
        ))
        .2
    };
    let refused = by_line(3);
    assert_eq!(refused["status"], "failed", "{refused}");
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains("unet: the adapter set needs about")
            && error.contains("256.0 KiB is free")
            && error.contains("nothing was changed"),
        "{error}"
    );
    let need = error
        .split_once("needs about ")
        .and_then(|(_, rest)| rest.split_once(" on the device"))
        .map(|(n, _)| printed_bytes(n))
        .unwrap_or_else(|| panic!("{error}"));
    assert!(
        need > free as f64,
        "{need} bytes needed, {free} free: {error}"
    );
    // A stayed in place: the next job of A makes A's picture, which is not the base's.
    let (base, a, a_again) = (picture(1), picture(2), picture(4));
    assert_ne!(a, base, "the adapter changes the picture");
    assert_eq!(a_again, a, "the refusal left A's weights as they were");
    // Nothing else was written: the three pictures and the manifest.
    let pngs = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            let p = e.as_ref().unwrap().path();
            p.extension().is_some_and(|x| x == "png")
        })
        .count();
    assert_eq!(
        pngs,
        3,
        "{:?}",
        std::fs::read_dir(&out).unwrap().collect::<Vec<_>>()
    );
}

/// One picture from `stipple batch` of `line` with `flags`, dialled through the test hook
/// `STIPPLE_TEST_DIAL` when `dial` is given.
fn batch_picture(line: &str, flags: &[&str], dial: Option<&str>) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.jsonl");
    std::fs::write(&jobs, format!("{line}\n")).unwrap();
    let out = dir.path().join("out");
    let mut cmd = crate::cli::stipple();
    cmd.env_remove("STIPPLE_TEST_DIAL");
    if let Some(d) = dial {
        cmd.env("STIPPLE_TEST_DIAL", d);
    }
    let o = cmd
        .arg("batch")
        .arg(&jobs)
        .arg("--out")
        .arg(&out)
        .args(["--unet-batch", "1", "--lora-dir"])
        .arg(lora_dir())
        .args(flags)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{flags:?}: {stdout} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    read_rgb(Path::new(r["images"][0]["path"].as_str().unwrap())).2
}

#[test]
fn a_mid_job_dial_through_batchs_test_hook_reruns_the_program_and_equals_host_refuse() {
    // The GPU check's mid-job dial: `STIPPLE_TEST_DIAL=CHECK:NAME:STRENGTH` turns NAME's UNet dial
    // at that stop check, as the workstation does. Through the device patch it equals the host
    // patch's refuse with the same dial bit for bit (lyco_loha: dense ΔW), and both differ from
    // the undialled picture, so the hook reached the job.
    let line = r#"{"prompt": "a fox <lora:lyco_loha:1>", "steps": 6, "seed": 5, "width": 64, "height": 64}"#;
    let dial = Some("1:lyco_loha:4");
    let resident = ["--resident-weights", "true"];
    let device = [&resident[..], &["--patch-on", "device"]].concat();
    let host = [
        &resident[..],
        &["--patch-on", "host", "--lora-method", "refuse"],
    ]
    .concat();
    let dialled_device = batch_picture(line, &device, dial);
    let dialled_host = batch_picture(line, &host, dial);
    let undialled = batch_picture(line, &host, None);
    assert_ne!(dialled_host, undialled, "the dial changes the picture");
    assert_eq!(
        dialled_device, dialled_host,
        "device re-run vs host refuse, dialled"
    );
}
