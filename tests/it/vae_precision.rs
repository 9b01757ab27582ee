//! The VAE in fp16 (`--vae-precision`, issue 19) on the tiny SD1.5 and SDXL models: images made with
//! the fp16 decoder against diffusers' reference images (the fp32 path's tolerance), the fp16 and
//! fp32 decodes of the same latents compared, an overflow redone in fp32 once, and which graph the
//! automatic choice takes per device and family.

use crate::sdxl::tiny_sdxl;
use crate::util::{read_rgb, runtime, tiny_model, try_image};
use std::path::{Path, PathBuf};
use stipple::job::{Job, Sampler};
use stipple::model::layout::{ComponentKind, GraphKind};
use stipple::model::Model;
use stipple::pipeline::{EngineSpec, Generator};
use stipple::runtime::session::VaePrecision;
use stipple::runtime::{Device, SessionOptions};

fn load(model: &Path, precision: VaePrecision) -> Generator {
    let spec = EngineSpec {
        session: SessionOptions {
            vae_precision: precision,
            ..SessionOptions::default()
        },
        ..EngineSpec::new(model)
    };
    Generator::load(spec, runtime()).expect("tiny model loads")
}

fn mean_abs(a: &[u8], b: &[u8]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f32 - *y as f32).abs())
        .sum::<f32>()
        / a.len() as f32
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

/// The first `n` reference images of `model` made with the fp16 decoder, each within 1/255 of
/// diffusers' (fp32) image; returns the mean abs differences (fp16 vs diffusers, fp16 vs fp32).
fn against_references(model: &Path, n: usize) -> Vec<(String, f32, f32)> {
    let reference = model.join("reference");
    let text = std::fs::read_to_string(reference.join("images.json")).unwrap();
    let spec: Images = serde_json::from_str(&text).unwrap();
    let mut half = load(model, VaePrecision::Fp16);
    let mut full = load(model, VaePrecision::Fp32);
    assert_eq!(half.vae_precision(), "fp16");
    assert_eq!(full.vae_precision(), "fp32");
    // Both decoders make the picture's bytes in their graphs (the references below check them).
    assert_eq!((half.vae_bytes(), full.vae_bytes()), ("graph", "graph"));
    let mut out = Vec::new();
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
            ..crate::util::small_job("", 0)
        };
        let image = |g: &mut Generator| try_image(g, &job).expect("an image");
        let (a, b) = (image(&mut half), image(&mut full));
        let (_, _, want) = read_rgb(&reference.join(&case.file));
        out.push((case.file.clone(), mean_abs(&a, &want), mean_abs(&a, &b)));
    }
    assert_eq!(
        half.vae_precision(),
        "fp16",
        "no overflow on ordinary images"
    );
    out
}

#[test]
fn fp16_vae_images_match_diffusers_within_the_fp32_tolerance() {
    for model in [tiny_model(), tiny_sdxl()] {
        let report = against_references(&model, 4);
        eprintln!(
            "{}: fp16 VAE, mean abs /255 (vs diffusers, vs stipple fp32): {report:?}",
            model.display()
        );
        for (file, vs_ref, vs_fp32) in report {
            assert!(vs_ref <= 1.0, "{file}: {vs_ref}/255 from diffusers");
            // fp16 rounding of the decoder alone: a fraction of one level.
            assert!(vs_fp32 <= 0.5, "{file}: {vs_fp32}/255 from the fp32 decode");
        }
    }
}

#[test]
fn an_overflowing_fp16_decode_is_redone_in_fp32_and_fp32_is_kept() {
    let (h, w) = (8, 8);
    // Beyond fp16's range once divided by the scaling factor: the fp16 graph's input cast makes
    // infinities, and the picture comes out non-finite.
    let huge = vec![2.0e4f32; 4 * h * w];
    let ordinary: Vec<f32> = (0..4 * h * w)
        .map(|i| ((i % 7) as f32 - 3.0) * 0.2)
        .collect();
    let mut full = load(&tiny_model(), VaePrecision::Fp32);
    let want_huge = full.decode(&huge, h, w).unwrap().pixels;
    let want_ordinary = full.decode(&ordinary, h, w).unwrap().pixels;

    let mut half = load(&tiny_model(), VaePrecision::Fp16);
    let before = half.decode(&ordinary, h, w).unwrap().pixels;
    assert_eq!(half.vae_precision(), "fp16");
    assert_ne!(before, want_ordinary, "the fp16 decode is not the fp32 one");
    let got = half.decode(&huge, h, w).unwrap().pixels;
    assert_eq!(
        half.vae_precision(),
        "fp32",
        "the overflow switched to fp32"
    );
    assert_eq!(
        got, want_huge,
        "the overflowing image decoded again in fp32"
    );
    assert_eq!(
        half.vae_bytes(),
        "graph",
        "the fp32 fallback has the tail too"
    );
    assert_eq!(half.decode(&ordinary, h, w).unwrap().pixels, want_ordinary);
    // A rebuild of every session (as an adapter reset may do) keeps fp32.
    half.rebuild(&Default::default()).unwrap();
    assert_eq!(half.vae_precision(), "fp32");
}

fn component(model: &Model, kind: ComponentKind) -> &stipple::model::layout::Component {
    model.component(kind).expect("component")
}

#[test]
fn auto_precision_takes_fp16_on_a_gpu_where_the_family_vae_is_safe() {
    let sd15 = Model::open(&tiny_model()).unwrap();
    let sdxl = Model::open(&tiny_sdxl()).unwrap();
    assert!(sd15.vae_fp16_safe());
    assert!(!sdxl.vae_fp16_safe(), "SDXL's own VAE overflows in fp16");
    let gpu = Device::Cuda(0);
    for kind in [ComponentKind::VaeDecoder, ComponentKind::VaeEncoder] {
        let pick =
            |m: &Model, p: VaePrecision, d| p.resolve(d, component(m, kind), m.vae_fp16_safe());
        assert_eq!(pick(&sd15, VaePrecision::Auto, gpu), Ok(GraphKind::Cuda));
        assert_eq!(
            pick(&sd15, VaePrecision::Auto, Device::DirectMl(0)),
            Ok(GraphKind::Cuda)
        );
        assert_eq!(
            pick(&sd15, VaePrecision::Auto, Device::Cpu),
            Ok(GraphKind::Plain)
        );
        assert_eq!(pick(&sdxl, VaePrecision::Auto, gpu), Ok(GraphKind::Plain));
        assert_eq!(pick(&sdxl, VaePrecision::Fp16, gpu), Ok(GraphKind::Cuda));
        assert_eq!(pick(&sd15, VaePrecision::Fp32, gpu), Ok(GraphKind::Plain));
    }
    // A separate VAE named as the fp16-fix retrain makes SDXL's safe.
    let mut fixed = Model::open(&tiny_sdxl()).unwrap();
    fixed.vae = Some(PathBuf::from("/models/VAE/sdxl_vae_fp16_fix.safetensors"));
    assert!(fixed.vae_fp16_safe());
    fixed.vae = Some(PathBuf::from("/models/VAE/sdxl_vae.safetensors"));
    assert!(!fixed.vae_fp16_safe());
}

#[test]
fn asking_for_fp16_where_the_folder_has_no_fp16_graph_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    crate::util::copy_dir(&tiny_model(), &dir);
    for c in ["vae_decoder", "vae_encoder"] {
        std::fs::remove_file(dir.join(c).join("model.cuda.onnx")).unwrap();
        std::fs::remove_file(dir.join(c).join("weightmap.cuda.json")).unwrap();
    }
    let spec = EngineSpec {
        session: SessionOptions {
            vae_precision: VaePrecision::Fp16,
            ..SessionOptions::default()
        },
        ..EngineSpec::new(&dir)
    };
    let err = match Generator::load(spec, runtime()) {
        Ok(_) => panic!("loaded without an fp16 VAE graph"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("no fp16 graph"), "{err}");
    assert!(err.contains("vae_fp16.py"), "{err}");
    // Automatic precision opens the same folder (fp32).
    let mut g = load(&dir, VaePrecision::Auto);
    assert_eq!(g.vae_precision(), "fp32");
    assert!(g.decode(&[0.1; 4 * 8 * 8], 8, 8).is_ok());
}
