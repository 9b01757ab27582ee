//! The tiny SD1.x model against diffusers/transformers/torch references written by
//! scripts/export_model.py: token ids, embeddings, latents, UNet output and final images.

use crate::util::*;
use stipple::engine::Stop;
use stipple::job::{Event, Job, Sampler};
use stipple::pipeline::rng::TorchRng;

#[derive(serde::Deserialize)]
struct TokenCase {
    prompt: String,
    ids: Vec<u32>,
    padded: Vec<u32>,
}

#[test]
fn token_ids_equal_transformers() {
    let text = std::fs::read_to_string(reference("tokens.json")).unwrap();
    let cases: Vec<TokenCase> = serde_json::from_str(&text).unwrap();
    let g = generator();
    for c in &cases {
        assert_eq!(
            g.tokenizer().encode(&c.prompt),
            c.ids,
            "prompt {:?}",
            c.prompt
        );
        assert_eq!(
            g.tokenizer().encode_padded(&c.prompt, 49407),
            c.padded,
            "prompt {:?}",
            c.prompt
        );
    }
    assert!(
        cases.iter().any(|c| c.ids.len() > 75),
        "a long prompt is covered"
    );
}

#[test]
fn text_embeddings_match_transformers() {
    let text = std::fs::read_to_string(reference("tokens.json")).unwrap();
    let cases: Vec<TokenCase> = serde_json::from_str(&text).unwrap();
    let refs = ref_tensors();
    let mut g = generator();
    for (i, c) in cases.iter().take(3).enumerate() {
        let got = g.encode_text(&c.prompt).unwrap();
        let (shape, want) = ref_tensor(&refs, &format!("embedding.{i}"));
        assert_eq!(shape, vec![77, 32]);
        let err = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-4, "prompt {:?}: max abs error {err}", c.prompt);
    }
}

#[test]
fn latents_equal_torch_randn() {
    let refs = ref_tensors();
    let mut checked = 0;
    for (name, _) in refs.shapes() {
        let Some(rest) = name.strip_prefix("latents.") else {
            continue;
        };
        let (seed, _) = rest.split_once('.').unwrap();
        let (shape, want) = ref_tensor(&refs, &name);
        let got = TorchRng::new(seed.parse().unwrap()).randn(shape.iter().product());
        let err = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-6, "{name}: max abs error {err}");
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} latent cases");
}

#[test]
fn unet_output_matches_diffusers() {
    let refs = ref_tensors();
    let (shape, sample) = ref_tensor(&refs, "unet.sample");
    let (_, t) = ref_tensor(&refs, "unet.timestep");
    let (_, ehs) = ref_tensor(&refs, "unet.encoder_hidden_states");
    let (_, want) = ref_tensor(&refs, "unet.out");
    let got = generator()
        .unet(
            &sample,
            [shape[0], shape[1], shape[2], shape[3]],
            t[0],
            &ehs,
        )
        .unwrap();
    let err = max_rel_err(&got, &want);
    assert!(err <= 1e-4, "relative error {err}");
}

#[derive(serde::Deserialize)]
struct ImageCase {
    file: String,
    sampler: String,
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

#[test]
fn every_scheduler_image_matches_diffusers() {
    let text = std::fs::read_to_string(reference("images.json")).unwrap();
    let spec: Images = serde_json::from_str(&text).unwrap();
    assert_eq!(spec.images.len(), 10);
    let mut g = generator();
    let mut report = Vec::new();
    for case in &spec.images {
        let job = Job {
            prompt: spec.prompt.clone(),
            negative: spec.negative.clone(),
            sampler: case.sampler.parse::<Sampler>().unwrap(),
            schedule: Default::default(),
            sde_noise: Default::default(),
            zero_snr: false,
            sigmas: Default::default(),
            steps: case.steps,
            cfg: spec.cfg,
            width: spec.width,
            height: spec.height,
            seed: spec.seed,
            batch: 1,
            init: None,
            hires: None,
        };
        let mut image = None;
        g.generate(
            &job,
            &|| Stop::No,
            &mut |e| {
                if let Event::Image { image: i, .. } = e {
                    image = Some(i)
                }
            },
            1,
        )
        .unwrap();
        let image = image.expect("an image");
        let (w, h, want) = read_rgb(&reference(&case.file));
        assert_eq!((image.width, image.height), (w, h));
        let mad = image
            .pixels
            .iter()
            .zip(&want)
            .map(|(a, b)| (*a as f32 - *b as f32).abs())
            .sum::<f32>()
            / want.len() as f32;
        report.push(format!("{} {}: {mad:.4}", case.sampler, case.steps));
        assert!(
            mad <= 1.0,
            "{} at {} steps: mean abs difference {mad}/255",
            case.sampler,
            case.steps
        );
    }
    eprintln!(
        "mean abs difference per image (0-255): {}",
        report.join(", ")
    );
}

#[test]
fn skip_and_interrupt_are_honoured_between_steps() {
    let mut g = generator();
    let job = Job {
        prompt: "a fox".into(),
        negative: String::new(),
        sampler: Sampler::Euler,
        schedule: Default::default(),
        sde_noise: Default::default(),
        zero_snr: false,
        sigmas: Default::default(),
        steps: 3,
        cfg: 7.0,
        width: 64,
        height: 64,
        seed: 3,
        batch: 2,
        init: None,
        hires: None,
    };
    // One image per UNet call: a skip drops the images of the call under way (batching.rs).
    g.set_unet_batch(1);
    // Skip the first image: only the second arrives.
    let calls = std::cell::Cell::new(0);
    let mut seeds = Vec::new();
    let outcome = g
        .generate(
            &job,
            &|| {
                calls.set(calls.get() + 1);
                if calls.get() == 2 {
                    Stop::SkipImage
                } else {
                    Stop::No
                }
            },
            &mut |e| {
                if let Event::Image { seed, .. } = e {
                    seeds.push(seed)
                }
            },
            1,
        )
        .unwrap();
    assert!(matches!(outcome, stipple::pipeline::Ended::Done));
    assert_eq!(seeds, vec![4]);
    let outcome = g
        .generate(&job, &|| Stop::Interrupt, &mut |_| {}, 2)
        .unwrap();
    assert!(matches!(outcome, stipple::pipeline::Ended::Cancelled));
}

#[test]
fn long_prompts_use_several_chunks_and_emphasis_changes_the_conditioning() {
    use stipple::prompt::parse;
    let mut g = generator();
    let long = ["a majestic red fox standing in a snowy forest at dawn"; 10].join(", ");
    let chunks = g.encode_prompt(&parse(&long).unwrap().fragments).unwrap();
    assert_eq!(
        chunks.len(),
        2,
        "{} tokens",
        g.tokenizer().encode(&long).len()
    );
    // A plain short prompt is exactly diffusers' single chunk.
    let plain = g
        .encode_prompt(&parse("a red fox").unwrap().fragments)
        .unwrap();
    assert_eq!(plain, vec![g.encode_text("a red fox").unwrap()]);
    // BREAK splits, emphasis changes the values.
    let broken = g
        .encode_prompt(&parse("a red fox BREAK snow").unwrap().fragments)
        .unwrap();
    assert_eq!(broken.len(), 2);
    let weighted = g
        .encode_prompt(&parse("a (red:1.5) fox").unwrap().fragments)
        .unwrap();
    assert_ne!(weighted, plain);
}

/// Events of one engine job until its last one, each with when it arrived; `on_step` sees every
/// step as it comes (to interrupt from here, another thread than the engine's).
fn job_events(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    mut on_step: impl FnMut(u32),
) -> Vec<(std::time::Instant, Event)> {
    let mut seen = Vec::new();
    while let Some(e) = rx.blocking_recv() {
        if let Event::Step(p) = &e {
            on_step(p.step);
        }
        let last = matches!(
            e,
            Event::Finished { .. } | Event::Cancelled { .. } | Event::Failed { .. }
        );
        seen.push((std::time::Instant::now(), e));
        if last {
            break;
        }
    }
    seen
}

fn image_bytes(events: &[(std::time::Instant, Event)]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Image { image, .. } => Some(image.pixels.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_interrupt_stops_the_running_step_and_the_engine_goes_on() {
    use stipple::engine::Engine;
    use stipple::pipeline::{EngineSpec, Generator};
    let load = || Generator::load(EngineSpec::new(tiny_model()), runtime()).expect("tiny model");
    // Big enough that one step of the tiny UNet takes a while on a CPU.
    let big = Job {
        prompt: "a fox".into(),
        negative: String::new(),
        sampler: Sampler::Euler,
        schedule: Default::default(),
        sde_noise: Default::default(),
        zero_snr: false,
        sigmas: Default::default(),
        steps: 2,
        cfg: 7.0,
        width: 256,
        height: 256,
        seed: 3,
        batch: 1,
        init: None,
        hires: None,
    };
    let small = Job {
        width: 64,
        height: 64,
        seed: 11,
        ..big.clone()
    };
    let (engine, mut rx) = Engine::spawn(load());

    // Uninterrupted: how long the second step takes.
    engine.submit(big.clone());
    let full = job_events(&mut rx, |_| {});
    let at_step = |events: &[(std::time::Instant, Event)], n: u32| {
        events
            .iter()
            .find(|(_, e)| matches!(e, Event::Step(p) if p.step == n))
            .map(|(t, _)| *t)
            .expect("the step was reported")
    };
    let step = at_step(&full, 2) - at_step(&full, 1);

    // Interrupted a quarter into the second step: without a mid-step stop the job would end only
    // after the rest of that step.
    engine.submit(big);
    let mut sent = None;
    let cut = job_events(&mut rx, |n| {
        if n == 1 {
            std::thread::sleep(step / 4);
            sent = Some(std::time::Instant::now());
            engine.interrupt();
        }
    });
    let (end, last) = cut.last().expect("the job ended");
    assert!(matches!(last, Event::Cancelled { .. }), "{last:?}");
    assert!(image_bytes(&cut).is_empty());
    let sent = sent.expect("interrupted after the first step");
    let took = *end - sent;
    eprintln!("one step {step:?}, cancel took {took:?}");
    assert!(
        took < step / 2,
        "the cancel took {took:?}, one step takes {step:?}"
    );

    // The same engine then makes the image a fresh engine makes.
    engine.submit(small.clone());
    let after = image_bytes(&job_events(&mut rx, |_| {}));
    engine.shutdown_and_wait();
    let (fresh, mut rx) = Engine::spawn(load());
    fresh.submit(small);
    let expected = image_bytes(&job_events(&mut rx, |_| {}));
    fresh.shutdown_and_wait();
    assert_eq!(after.len(), 1);
    assert_eq!(after, expected);
}
