//! The tiny SDXL model against diffusers/transformers references written by
//! `scripts/export_model.py --tiny-sdxl`: token ids per tokenizer, each encoder's penultimate hidden
//! state, the concatenated conditioning and pooled embedding, the UNet with added conditioning, images.

use crate::util::*;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use stipple::engine::Stop;
use stipple::job::{Event, Job, Sampler};
use stipple::model::Checkpoint;
use stipple::pipeline::generator::Added;
use stipple::pipeline::{EngineSpec, Generator};

pub fn tiny_sdxl() -> PathBuf {
    root().join("tests/fixtures/tiny-sdxl")
}

fn sdxl_reference(name: &str) -> PathBuf {
    tiny_sdxl().join("reference").join(name)
}

/// One SDXL generator for the whole test binary.
pub fn sdxl_generator() -> std::sync::MutexGuard<'static, Generator> {
    static G: OnceLock<Mutex<Generator>> = OnceLock::new();
    G.get_or_init(|| {
        Mutex::new(
            Generator::load(EngineSpec::new(tiny_sdxl()), runtime())
                .expect("tiny SDXL model loads"),
        )
    })
    .lock()
    .unwrap_or_else(|p| p.into_inner())
}

fn refs() -> Checkpoint {
    Checkpoint::open(&sdxl_reference("tensors.safetensors")).expect("reference tensors")
}

fn max_abs(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
}

#[derive(serde::Deserialize)]
struct TokenCase {
    prompt: String,
    ids: Vec<u32>,
    padded: Vec<u32>,
    padded_2: Vec<u32>,
}

fn token_cases() -> Vec<TokenCase> {
    serde_json::from_str(&std::fs::read_to_string(sdxl_reference("tokens.json")).unwrap()).unwrap()
}

#[test]
fn sdxl_token_ids_per_encoder_equal_transformers() {
    let g = sdxl_generator();
    let toks = g.tokenizers();
    assert_eq!(toks.len(), 2);
    let facts = g.model.index.family.facts();
    let (pad1, pad2) = (facts.encoders[0].pad_id, facts.encoders[1].pad_id);
    assert_eq!(
        (pad1, pad2),
        (49407, 0),
        "tokenizer/ pads EOS, tokenizer_2/ pads \"!\""
    );
    for c in &token_cases() {
        assert_eq!(toks[0].encode(&c.prompt), c.ids, "{:?}", c.prompt);
        assert_eq!(
            toks[0].encode_padded(&c.prompt, pad1),
            c.padded,
            "{:?}",
            c.prompt
        );
        assert_eq!(
            toks[1].encode_padded(&c.prompt, pad2),
            c.padded_2,
            "{:?}",
            c.prompt
        );
    }
}

#[test]
fn sdxl_conditioning_and_pooled_match_diffusers() {
    let cases = token_cases();
    let refs = refs();
    let mut g = sdxl_generator();
    let mut worst = 0f32;
    for (i, c) in cases.iter().take(3).enumerate() {
        let (got, pooled) = g.encode_text_pooled(&c.prompt).unwrap();
        let (shape, want) = ref_tensor(&refs, &format!("embedding.{i}"));
        assert_eq!(shape, vec![77, 64]);
        let err = max_abs(&got, &want);
        assert!(
            err <= 1e-4,
            "{:?}: concatenated conditioning max abs error {err}",
            c.prompt
        );
        // Each encoder's penultimate hidden state sits in its own columns.
        for (enc, cols) in [("te1", 0..32), ("te2", 32..64)] {
            let (_, want) = ref_tensor(&refs, &format!("{enc}.penultimate.{i}"));
            let part: Vec<f32> = got
                .chunks_exact(64)
                .flat_map(|row| row[cols.clone()].to_vec())
                .collect();
            let e = max_abs(&part, &want);
            assert!(e <= 1e-4, "{:?}: {enc} max abs error {e}", c.prompt);
        }
        let (_, want) = ref_tensor(&refs, &format!("pooled.{i}"));
        let pooled = pooled.expect("SDXL has a pooled embedding");
        let e = max_abs(&pooled, &want);
        assert!(e <= 1e-4, "{:?}: pooled max abs error {e}", c.prompt);
        worst = worst.max(err).max(e);
    }
    eprintln!("SDXL conditioning + pooled: max abs error {worst:e}");
}

#[test]
fn sdxl_plain_prompt_is_one_chunk_with_the_first_chunks_pooled() {
    use stipple::prompt::parse;
    let mut g = sdxl_generator();
    let plain = g
        .encode_prompt_pooled(&parse("a red fox").unwrap().fragments)
        .unwrap();
    let (text, pooled) = g.encode_text_pooled("a red fox").unwrap();
    assert_eq!(plain.chunks, vec![text]);
    assert_eq!(plain.pooled, pooled);
    // A second chunk keeps the first chunk's pooled embedding (A1111, diffusers).
    let broken = g
        .encode_prompt_pooled(&parse("a red fox BREAK snow").unwrap().fragments)
        .unwrap();
    assert_eq!(broken.chunks.len(), 2);
    assert_eq!(broken.pooled, pooled);
    let weighted = g
        .encode_prompt_pooled(&parse("a (red:1.5) fox").unwrap().fragments)
        .unwrap();
    assert_ne!(weighted.chunks, plain.chunks);
    assert_eq!(
        weighted.pooled, pooled,
        "emphasis does not touch the pooled output"
    );
}

#[test]
fn sdxl_unet_with_added_conditioning_matches_diffusers() {
    let refs = refs();
    let (shape, sample) = ref_tensor(&refs, "unet.sample");
    let (_, t) = ref_tensor(&refs, "unet.timestep");
    let (_, ehs) = ref_tensor(&refs, "unet.encoder_hidden_states");
    let (_, text_embeds) = ref_tensor(&refs, "unet.text_embeds");
    let (_, time_ids) = ref_tensor(&refs, "unet.time_ids");
    let (_, want) = ref_tensor(&refs, "unet.out");
    let got = sdxl_generator()
        .unet_added(
            &sample,
            [shape[0], shape[1], shape[2], shape[3]],
            t[0],
            &ehs,
            Some(Added {
                text_embeds: &text_embeds,
                time_ids: &time_ids,
            }),
        )
        .unwrap();
    let err = max_rel_err(&got, &want);
    eprintln!("SDXL UNet: max relative error {err:e}");
    assert!(err <= 1e-4, "relative error {err}");
}

#[test]
fn sdxl_model_facts_come_from_the_index_and_the_family_table() {
    let g = sdxl_generator();
    assert_eq!(g.model.index.family, stipple::family::Family::Sdxl);
    assert_eq!(g.model.vae_scaling(), 0.13025);
    assert_eq!(g.model.default_size(), (64, 64));
    assert!(g.model.zeros_for_empty_negative());
    // Two text encoders, the UNet and both VAE halves.
    assert_eq!(g.model.components.len(), 5);
}

#[derive(serde::Deserialize)]
struct ImageCase {
    file: String,
    sampler: String,
    steps: u32,
    negative: String,
}

#[derive(serde::Deserialize)]
struct Images {
    prompt: String,
    seed: u64,
    cfg: f32,
    width: u32,
    height: u32,
    images: Vec<ImageCase>,
}

#[test]
fn sdxl_every_scheduler_image_matches_diffusers() {
    let text = std::fs::read_to_string(sdxl_reference("images.json")).unwrap();
    let spec: Images = serde_json::from_str(&text).unwrap();
    assert_eq!(spec.images.len(), 11);
    assert!(spec.images.iter().any(|c| c.negative.is_empty()));
    let mut g = sdxl_generator();
    let mut report = Vec::new();
    for case in &spec.images {
        let job = Job {
            prompt: spec.prompt.clone(),
            negative: case.negative.clone(),
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
        let (w, h, want) = read_rgb(&sdxl_reference(&case.file));
        assert_eq!((image.width, image.height), (w, h));
        let mad = image
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
        "SDXL mean abs difference per image (0-255): {}",
        text.join(", ")
    );
    for (file, mad) in &report {
        assert!(*mad <= 1.0, "{file}: mean abs difference {mad}/255");
    }
}

#[test]
fn sdxl_bench_runs_with_the_added_conditioning() {
    let r = stipple::bench::run(EngineSpec::new(tiny_sdxl()), runtime(), None, 1, None)
        .expect("bench on SDXL");
    assert_eq!((r.width, r.height), (64, 64));
    assert!(r.unet_step_ms > 0.0 && r.image_s > 0.0);
}
