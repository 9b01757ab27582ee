//! The text encoders in fp16 (`--te-precision`, issue 19) on the CPU provider: the fp16 graphs'
//! conditioning (SD1.5, SD2, SDXL's two encoders and pooled output) against the fp32 graphs and the
//! transformers references, images against diffusers', textual-inversion embeddings, clip skip 2,
//! a LoRA's text-encoder part (baked and resident), a checkpoint filling the fp16 graph, the fp32
//! fallback of an overflow, and which graph the automatic choice takes per device (fp32 everywhere
//! as shipped).

use crate::sdxl::tiny_sdxl;
use crate::util::*;
use std::path::{Path, PathBuf};
use stipple::job::{Job, Sampler};
use stipple::model::layout::{ComponentKind, GraphKind};
use stipple::model::{Checkpoint, Model};
use stipple::pipeline::sessions::te_graph;
use stipple::pipeline::{EngineSpec, Generator};
use stipple::runtime::session::TePrecision;
use stipple::runtime::{Device, SessionOptions};

/// fp16 against fp32 (and against transformers' fp32) conditioning: the hidden states reach ~7 in
/// magnitude on the tiny models, where one fp16 step is 2^-8 ≈ 0.004; two or three steps at most,
/// a fraction of one on average (measured on CPU: 0.0049 and 0.0008 at worst, SDXL).
const MAX_ABS: f32 = 1.0e-2;
const MEAN_ABS: f32 = 1.5e-3;

fn tiny_sd2() -> PathBuf {
    root().join("tests/fixtures/tiny-sd2")
}

fn opts(te: TePrecision) -> SessionOptions {
    SessionOptions {
        te_precision: te,
        ..SessionOptions::default()
    }
}

pub(crate) fn load_with(
    model: &Path,
    session: SessionOptions,
    embeddings: Option<PathBuf>,
) -> Generator {
    let spec = EngineSpec::new(model)
        .with_session(session)
        .with_embedding_dirs(embeddings.into_iter().collect());
    Generator::load(spec, runtime()).unwrap_or_else(|e| panic!("{}: {e}", model.display()))
}

fn load(model: &Path, te: TePrecision) -> Generator {
    load_with(model, opts(te), None)
}

/// (max abs, mean abs) difference.
pub(crate) fn diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().chain(b).all(|x| x.is_finite()));
    let d: Vec<f32> = a.iter().zip(b).map(|(x, y)| (x - y).abs()).collect();
    let max = d.iter().copied().fold(0f32, f32::max);
    (max, d.iter().sum::<f32>() / d.len() as f32)
}

pub(crate) fn assert_close(what: &str, a: &[f32], b: &[f32]) -> (f32, f32) {
    let (max, mean) = diff(a, b);
    assert!(
        max <= MAX_ABS && mean <= MEAN_ABS,
        "{what}: max abs {max}, mean abs {mean} (tolerance {MAX_ABS}, {MEAN_ABS})"
    );
    (max, mean)
}

#[derive(serde::Deserialize)]
struct TokenCase {
    prompt: String,
}

/// Each family's fp16 conditioning (and SDXL's pooled embedding) against its fp32 one and the
/// transformers reference of the same prompt (`embedding.i`, `pooled.i`).
#[test]
fn fp16_text_encoders_match_fp32_and_transformers_within_fp16_rounding() {
    for model in [tiny_model(), tiny_sd2(), tiny_sdxl()] {
        let mut half = load(&model, TePrecision::Fp16);
        let mut full = load(&model, TePrecision::Fp32);
        assert_eq!(half.te_precision(), "fp16");
        assert_eq!(full.te_precision(), "fp32");
        conditioning_matches_fp32_and_transformers(&model, &mut half, &mut full, "fp16");
    }
}

/// `g`'s conditioning of the first three reference prompts of `model` (and SDXL's pooled
/// embedding) against `full`'s (fp32 graphs) and transformers' (`embedding.i`, `pooled.i`), within
/// the fp16 tolerance; `g` must differ from fp32 (its fp16 graph ran).
pub(crate) fn conditioning_matches_fp32_and_transformers(
    model: &Path,
    g: &mut Generator,
    full: &mut Generator,
    what: &str,
) {
    let reference = model.join("reference");
    let cases: Vec<TokenCase> =
        serde_json::from_str(&std::fs::read_to_string(reference.join("tokens.json")).unwrap())
            .unwrap();
    let refs = Checkpoint::open(&reference.join("tensors.safetensors")).unwrap();
    for (i, c) in cases.iter().take(3).enumerate() {
        let (z16, p16) = g.encode_text_pooled(&c.prompt).unwrap();
        let (z32, p32) = full.encode_text_pooled(&c.prompt).unwrap();
        assert_ne!(z16, z32, "the {what} graph ran");
        let (_, want) = ref_tensor(&refs, &format!("embedding.{i}"));
        let case = format!("{} {:?}", model.display(), c.prompt);
        let vs32 = assert_close(&format!("{case} {what} vs fp32"), &z16, &z32);
        let vsref = assert_close(&format!("{case} {what} vs transformers"), &z16, &want);
        eprintln!("{case}: conditioning {what} vs fp32 {vs32:?}, vs transformers {vsref:?}");
        if let (Some(p16), Some(p32)) = (p16, p32) {
            let (_, want) = ref_tensor(&refs, &format!("pooled.{i}"));
            let a = assert_close(&format!("{case} pooled {what} vs fp32"), &p16, &p32);
            let b = assert_close(
                &format!("{case} pooled {what} vs transformers"),
                &p16,
                &want,
            );
            eprintln!("{case}: pooled {what} vs fp32 {a:?}, vs transformers {b:?}");
        }
    }
}

#[derive(serde::Deserialize)]
struct Case {
    file: String,
    sampler: String,
    steps: u32,
    #[serde(default)]
    negative: Option<String>,
}

#[derive(serde::Deserialize)]
struct Images {
    prompt: String,
    #[serde(default)]
    negative: String,
    seed: u64,
    cfg: f32,
    width: u32,
    height: u32,
    images: Vec<Case>,
}

fn mean_abs_u8(a: &[u8], b: &[u8]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f32 - *y as f32).abs())
        .sum::<f32>()
        / a.len() as f32
}

/// The first `n` reference images of `model` (reference/images.json, diffusers') made by `g`:
/// each within 1/255 on average.
pub(crate) fn images_match_diffusers(model: &Path, g: &mut Generator, n: usize, what: &str) {
    let reference = model.join("reference");
    let text = std::fs::read_to_string(reference.join("images.json")).unwrap();
    let spec: Images = serde_json::from_str(&text).unwrap();
    for case in spec.images.iter().take(n) {
        let job = Job {
            prompt: spec.prompt.clone(),
            negative: case.negative.clone().unwrap_or(spec.negative.clone()),
            sampler: case.sampler.parse::<Sampler>().unwrap(),
            steps: case.steps,
            cfg: spec.cfg,
            width: spec.width,
            height: spec.height,
            seed: spec.seed,
            ..small_job("", 0)
        };
        let got = try_image(g, &job).expect("an image");
        let (_, _, want) = read_rgb(&reference.join(&case.file));
        let d = mean_abs_u8(&got, &want);
        eprintln!(
            "{} {}: {what}, mean abs {d}/255 from diffusers",
            model.display(),
            case.file
        );
        assert!(d <= 1.0, "{}: {d}/255 from diffusers", case.file);
    }
}

/// Images made with the fp16 text encoders against diffusers' (fp32) reference images: within
/// 1/255 on average, as the fp32 path.
#[test]
fn fp16_text_encoder_images_match_diffusers_within_one_level() {
    for model in [tiny_model(), tiny_sd2(), tiny_sdxl()] {
        let mut half = load(&model, TePrecision::Fp16);
        images_match_diffusers(&model, &mut half, 2, "fp16 text encoders");
        assert_eq!(
            half.te_precision(),
            "fp16",
            "no overflow on ordinary prompts"
        );
    }
}

#[derive(serde::Deserialize)]
struct EmbeddingCase {
    slug: String,
    prompt: String,
    negative: String,
    encoded: String,
    embeds: String,
    #[serde(default)]
    pooled: Option<String>,
}

#[derive(serde::Deserialize)]
struct EmbeddingRefs {
    cases: Vec<EmbeddingCase>,
}

/// Textual-inversion vectors reach the fp16 graph (fed in fp32, cast inside): every reference case
/// of diffusers' `load_textual_inversion` within the fp16 tolerance, SD1.5 and SDXL.
#[test]
fn embeddings_reach_the_fp16_text_encoder() {
    let dir = root().join("tests/fixtures/embeddings");
    for (model, family) in [(tiny_model(), "sd15"), (tiny_sdxl(), "sdxl")] {
        let mut g = load_with(&model, opts(TePrecision::Fp16), Some(dir.clone()));
        assert_eq!(g.te_precision(), "fp16");
        let reference = dir.join("reference");
        let refs: EmbeddingRefs = serde_json::from_str(
            &std::fs::read_to_string(reference.join(format!("{family}.json"))).unwrap(),
        )
        .unwrap();
        let tensors = Checkpoint::open(&reference.join(format!("{family}.safetensors"))).unwrap();
        for c in &refs.cases {
            let text = if c.encoded == "negative" {
                &c.negative
            } else {
                &c.prompt
            };
            let prompt = stipple::prompt::parse(text).unwrap();
            let got = g.encode_prompt_pooled(&prompt.fragments).unwrap();
            assert!(!got.embeddings.is_empty(), "{family} {}", c.slug);
            let want = tensors.tensor(&c.embeds).unwrap().to_f32();
            let what = format!("{family} {} (embedding)", c.slug);
            let d = assert_close(&what, &got.chunks[0], &want);
            eprintln!("{what}: fp16 vs diffusers {d:?}");
            if let Some(p) = &c.pooled {
                let want = tensors.tensor(p).unwrap().to_f32();
                assert_close(
                    &format!("{what} pooled"),
                    got.pooled.as_deref().unwrap(),
                    &want,
                );
            }
        }
    }
}

pub(crate) fn conditioning(g: &mut Generator, text: &str) -> Vec<f32> {
    let prompt = stipple::prompt::parse(text).unwrap();
    g.encode_prompt_pooled(&prompt.fragments)
        .unwrap()
        .chunks
        .remove(0)
}

/// `g` (the tiny SD1.5 checkpoint with `--clip-skip 2`) against diffusers' `clip_skip=1` prompt
/// embeddings of "a red fox in the snow", within the fp16 tolerance; returns those embeddings.
pub(crate) fn assert_clip_skip_two(g: &mut Generator, what: &str) -> Vec<f32> {
    let refs = Checkpoint::open(
        &root().join("tests/fixtures/single-file/reference/clip_skip.safetensors"),
    )
    .unwrap();
    let want = refs.tensor("prompt_embeds").unwrap().to_f32();
    let got = conditioning(g, "a red fox in the snow");
    let d = assert_close(&format!("clip skip 2, {what} vs diffusers"), &got, &want);
    eprintln!("clip skip 2: {what} vs diffusers {d:?}");
    want
}

/// `--clip-skip 2` reads the fp16 graph's penultimate output: diffusers' `clip_skip=1` prompt
/// embeddings within the fp16 tolerance, and not the full-depth conditioning.
#[test]
fn clip_skip_two_works_with_the_fp16_text_encoder() {
    let file = root().join("tests/fixtures/single-file/tiny-sd15.safetensors");
    let skip = |te| {
        load_with(
            &file,
            SessionOptions {
                clip_skip: Some(2),
                ..opts(te)
            },
            None,
        )
    };
    let mut half = skip(TePrecision::Fp16);
    assert_eq!(half.te_precision(), "fp16");
    let want = assert_clip_skip_two(&mut half, "fp16");
    let full_depth = conditioning(&mut load(&file, TePrecision::Fp16), "a red fox in the snow");
    assert!(
        diff(&full_depth, &want).0 > 0.1,
        "clip skip changed nothing"
    );
}

/// A single-file checkpoint opened with the fp16 text encoder fills the fp16 graph's weights from
/// its own tensors: the conditioning equals the folder model's fp16 conditioning, bit for bit.
#[test]
fn a_checkpoint_fills_the_fp16_text_encoder_as_the_folder_does() {
    let file = root().join("tests/fixtures/single-file/tiny-sd15.safetensors");
    let mut from_file = load(&file, TePrecision::Fp16);
    let mut folder = load(&tiny_model(), TePrecision::Fp16);
    assert_eq!(from_file.te_precision(), "fp16");
    for text in ["a red fox in the snow", "a (cat:1.3) BREAK on a sofa"] {
        assert_eq!(
            conditioning(&mut from_file, text),
            conditioning(&mut folder, text),
            "{text:?}"
        );
    }
    // SDXL's two encoders and pooled output too.
    let file = root().join("tests/fixtures/single-file/tiny-sdxl.safetensors");
    let mut from_file = load(&file, TePrecision::Fp16);
    let mut folder = load(&tiny_sdxl(), TePrecision::Fp16);
    assert_eq!(
        from_file.encode_text_pooled("a red fox").unwrap(),
        folder.encode_text_pooled("a red fox").unwrap()
    );
}

/// (without the adapter, at strength 1, at 0.5): conditioning of "a red fox".
pub(crate) type LoraConditionings = (Vec<f32>, Vec<f32>, Vec<f32>);

/// The conditioning of "a red fox" on the tiny SD1.5 model with `session`: without an adapter, with
/// `peft_diffusers`' text-encoder part at strength 1 and then 0.5 (its UNet part off); and the
/// text encoders' graph at the end ([`Generator::te_graph`]).
pub(crate) fn lora_conditionings(session: SessionOptions) -> (LoraConditionings, &'static str) {
    let at = |te: f32| {
        small_job(
            &format!("a red fox <lora:peft_diffusers:te={te}:unet=0>"),
            1,
        )
    };
    let mut g = load_with(&tiny_model(), session, None);
    g.set_lora_dirs(vec![root().join("tests/fixtures/lora")]);
    let base = g.encode_text("a red fox").unwrap();
    g.prepare(&at(1.0)).unwrap();
    let one = g.encode_text("a red fox").unwrap();
    g.prepare(&at(0.5)).unwrap();
    let half = g.encode_text("a red fox").unwrap();
    ((base, one, half), g.te_graph())
}

/// A LoRA's text-encoder part reaches the fp16 graph (its weight map keeps the fp32 one's names),
/// with baked weights, resident ones patched on the host, and the device patch (its strength
/// change a re-run of the kept program).
#[test]
fn a_lora_patches_the_fp16_text_encoder_baked_resident_and_on_the_device() {
    // (base, LoRA at te=1, LoRA at te=0.5) conditioning of "a red fox".
    let with_lora = |session| lora_conditionings(session).0;
    let full = with_lora(opts(TePrecision::Fp32));
    let half = with_lora(opts(TePrecision::Fp16));
    assert!(
        diff(&full.1, &full.0).0 > 0.05,
        "the LoRA changes the text encoder"
    );
    assert!(diff(&full.2, &full.1).0 > 0.01, "and its strength does");
    assert_close("base, fp16 vs fp32", &half.0, &full.0);
    assert_close("LoRA 1, fp16 vs fp32", &half.1, &full.1);
    assert_close("LoRA 0.5, fp16 vs fp32", &half.2, &full.2);
    for (name, device) in [("resident", false), ("device patch", true)] {
        let session = SessionOptions {
            resident: Some(true),
            patch_on_device: Some(device),
            ..opts(TePrecision::Fp16)
        };
        let got = with_lora(session);
        for (a, b) in [(&got.0, &half.0), (&got.1, &half.1), (&got.2, &half.2)] {
            let d = diff(a, b);
            eprintln!("LoRA: fp16 {name} vs fp16 baked {d:?}");
            assert!(d.0 <= 1e-3, "{name} and baked fp16 weights: {d:?}");
        }
    }
}

/// A folder holding `stipplehuge`, an embedding for the tiny SD1.5 model whose values (1e5) fp16
/// cannot hold.
pub(crate) fn huge_embedding() -> tempfile::TempDir {
    use stipple::safetensors_out::{write, Dtype, OutTensor};
    let tmp = tempfile::tempdir().unwrap();
    write(
        &tmp.path().join("stipplehuge.safetensors"),
        &[OutTensor {
            name: "emb_params".into(),
            dtype: Dtype::F32,
            shape: vec![1, 32],
            bytes: Dtype::F32.encode(&[1.0e5f32; 32]),
        }],
        &Default::default(),
    )
    .unwrap();
    tmp
}

/// An embedding whose values overflow fp16 makes the fp16 encoder's output non-finite: it is
/// encoded again in fp32 (the same conditioning as an fp32 engine's), and fp32 is kept.
#[test]
fn an_overflowing_fp16_text_encoder_is_redone_in_fp32_and_fp32_is_kept() {
    let tmp = huge_embedding();
    let dir = Some(tmp.path().to_path_buf());
    let mut full = load_with(&tiny_model(), opts(TePrecision::Fp32), dir.clone());
    let mut half = load_with(&tiny_model(), opts(TePrecision::Fp16), dir);
    let ordinary = "a red fox";
    let huge = "a stipplehuge fox";
    let half_ordinary = conditioning(&mut half, ordinary);
    assert_eq!(half.te_precision(), "fp16");
    assert_ne!(half_ordinary, conditioning(&mut full, ordinary), "fp16 ran");
    let want = conditioning(&mut full, huge);
    assert!(
        want.iter().all(|x| x.is_finite()),
        "fp32 takes the huge vectors"
    );
    assert_eq!(conditioning(&mut half, huge), want, "redone in fp32");
    assert_eq!(half.te_precision(), "fp32", "and fp32 kept");
    assert_eq!(
        conditioning(&mut half, "a blue fox"),
        conditioning(&mut full, "a blue fox")
    );
    // A rebuild of every session keeps fp32.
    half.rebuild(&Default::default()).unwrap();
    assert_eq!(half.te_precision(), "fp32");
}

fn component(model: &Model, kind: ComponentKind) -> &stipple::model::layout::Component {
    model.component(kind).expect("component")
}

/// What `--te-precision auto` ships as for SDXL: the fused fp16 encoders on CUDA (GPU-checked), fp32
/// on DirectML and the CPU (`pipeline::sessions::te_graph`, the choice the sessions are built
/// with). This fails when the default changes, and must be changed with it.
#[test]
fn auto_precision_takes_fp16_text_encoders_on_cuda_and_fp32_elsewhere() {
    let sdxl = Model::open(&tiny_sdxl()).unwrap();
    for kind in [ComponentKind::TextEncoder, ComponentKind::TextEncoder2] {
        let pick = |te_precision: TePrecision, device: Device| {
            let opts = SessionOptions {
                te_precision,
                device,
                ..SessionOptions::default()
            };
            te_graph(&sdxl, &opts, kind).map_err(|e| e.to_string())
        };
        assert_eq!(
            pick(TePrecision::Auto, Device::Cuda(0)),
            Ok(GraphKind::Fused),
            "{kind} on CUDA"
        );
        for device in [Device::DirectMl(0), Device::Cpu] {
            assert_eq!(
                pick(TePrecision::Auto, device),
                Ok(GraphKind::Plain),
                "{kind} on {device}"
            );
        }
        // The fp16 graph is there (auto's fp32 off CUDA is the default's choice, not a missing
        // graph) and is taken when asked for, on any device; fp32 when asked for, on a GPU too.
        assert_eq!(pick(TePrecision::Fp16, Device::Cpu), Ok(GraphKind::Cuda));
        // On CUDA the fused fp16 graph (tests/it/fused_te.rs has the rest of that choice).
        assert_eq!(
            pick(TePrecision::Fp16, Device::Cuda(0)),
            Ok(GraphKind::Fused)
        );
        assert_eq!(
            pick(TePrecision::Fp32, Device::Cuda(0)),
            Ok(GraphKind::Plain)
        );
        // Where auto goes once the encoders are declared fp16-safe (what the default's switch
        // feeds [`TePrecision::resolve`]): fp16 on a GPU, fp32 on the CPU.
        let c = component(&sdxl, kind);
        assert_eq!(
            TePrecision::Auto.resolve(Device::Cuda(0), c, true),
            Ok(GraphKind::Cuda)
        );
        assert_eq!(
            TePrecision::Auto.resolve(Device::Cpu, c, true),
            Ok(GraphKind::Plain)
        );
    }
    // Loaded on the CPU, the default is fp32.
    assert_eq!(
        load(&tiny_model(), TePrecision::Auto).te_precision(),
        "fp32"
    );
}

#[test]
fn asking_for_fp16_where_the_folder_has_no_fp16_text_encoder_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&tiny_model(), &dir);
    std::fs::remove_file(dir.join("text_encoder/model.cuda.onnx")).unwrap();
    std::fs::remove_file(dir.join("text_encoder/weightmap.cuda.json")).unwrap();
    let err = match Generator::load(
        EngineSpec::new(&dir).with_session(opts(TePrecision::Fp16)),
        runtime(),
    ) {
        Ok(_) => panic!("loaded without an fp16 text-encoder graph"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("no fp16 graph"), "{err}");
    assert!(err.contains("te_fp16.py"), "{err}");
    assert!(err.contains("--te-precision fp32"), "{err}");
    let mut g = load(&dir, TePrecision::Auto);
    assert_eq!(g.te_precision(), "fp32");
    assert!(g.encode_text("a red fox").is_ok());
}
