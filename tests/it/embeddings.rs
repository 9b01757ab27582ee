//! Textual-inversion embeddings against diffusers' `load_textual_inversion` (written by
//! `scripts/embedding_fixtures.py`): token ids, prompt embeddings (and SDXL's pooled embedding) and
//! one image per family; emphasis against A1111's rule applied to diffusers' plain embeddings; the
//! infotext's `TI hashes`; ComfyUI's `embedding:name`; and the files stipple must refuse.

use crate::util::*;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use stipple::job::{Job, Sampler};
use stipple::model::Checkpoint;
use stipple::pipeline::{EngineSpec, Generator};

fn fixtures(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

fn reference(name: &str) -> PathBuf {
    fixtures("embeddings/reference").join(name)
}

fn with_embeddings(model: &str, dir: &str) -> Generator {
    let spec = EngineSpec::new(fixtures(model)).with_embedding_dirs(vec![fixtures(dir)]);
    Generator::load(spec, runtime()).expect("tiny model loads")
}

#[derive(serde::Deserialize)]
struct Case {
    slug: String,
    prompt: String,
    negative: String,
    encoded: String,
    ids: Vec<u32>,
    #[serde(default)]
    ids_2: Vec<u32>,
    embeds: String,
    #[serde(default)]
    pooled: Option<String>,
}

#[derive(serde::Deserialize)]
struct RefImage {
    file: String,
    prompt: String,
    negative: String,
    steps: u32,
    seed: u64,
    cfg: f32,
    width: u32,
    height: u32,
}

#[derive(serde::Deserialize)]
struct Refs {
    cases: Vec<Case>,
    image: RefImage,
}

fn refs(family: &str) -> (Refs, Checkpoint) {
    let json = std::fs::read_to_string(reference(&format!("{family}.json"))).unwrap();
    let tensors = Checkpoint::open(&reference(&format!("{family}.safetensors"))).unwrap();
    (serde_json::from_str(&json).unwrap(), tensors)
}

/// The error encoding `text` gives (empty when it encodes).
fn encode_err(g: &mut Generator, text: &str) -> String {
    let p = stipple::prompt::parse(text).unwrap();
    g.encode_prompt_pooled(&p.fragments)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

fn max_abs(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
}

/// Token ids, then the prompt embeddings (and pooled), of every reference case.
fn check_cases(g: &mut Generator, family: &str) {
    let (refs, tensors) = refs(family);
    for c in &refs.cases {
        let text = if c.encoded == "negative" {
            &c.negative
        } else {
            &c.prompt
        };
        let prompt = stipple::prompt::parse(text).unwrap();
        let ids = g.prompt_ids(&prompt.fragments).unwrap();
        assert_eq!(ids[0], vec![c.ids.clone()], "{family} {}: ids", c.slug);
        if !c.ids_2.is_empty() {
            assert_eq!(ids[1], vec![c.ids_2.clone()], "{family} {}: ids 2", c.slug);
        }
        let got = g.encode_prompt_pooled(&prompt.fragments).unwrap();
        let want = tensors.tensor(&c.embeds).unwrap().to_f32();
        let err = max_abs(&got.chunks[0], &want);
        assert!(
            err < 1e-4,
            "{family} {}: embeddings differ by {err}",
            c.slug
        );
        if let Some(p) = &c.pooled {
            let want = tensors.tensor(p).unwrap().to_f32();
            let err = max_abs(got.pooled.as_deref().unwrap(), &want);
            assert!(err < 1e-4, "{family} {}: pooled differs by {err}", c.slug);
        }
        assert!(!got.embeddings.is_empty(), "{family} {}", c.slug);
    }
}

#[test]
fn sd15_embeddings_match_diffusers_ids_and_conditioning() {
    let mut g = with_embeddings("tiny-sd15", "embeddings");
    check_cases(&mut g, "sd15");
    // Without the folder the same words are plain text: ids below the vocabulary.
    let plain = stipple::prompt::parse("a photo of stippleneg").unwrap();
    let ids = generator().prompt_ids(&plain.fragments).unwrap();
    assert!(ids[0][0].iter().all(|&i| i < 49408), "{ids:?}");
}

#[test]
fn sdxl_embeddings_match_diffusers_ids_conditioning_and_pooled() {
    let mut g = with_embeddings("tiny-sdxl", "embeddings");
    check_cases(&mut g, "sdxl");
}

/// The image of each family's reference with its embeddings, and the infotext's `TI hashes`.
fn image_matches(model: &str, family: &str) {
    let (refs, _) = refs(family);
    let r = refs.image;
    let mut g = with_embeddings(model, "embeddings");
    let job = Job {
        prompt: r.prompt.clone(),
        negative: r.negative.clone(),
        sampler: Sampler::Euler,
        schedule: Default::default(),
        sde_noise: Default::default(),
        zero_snr: false,
        sigmas: Default::default(),
        steps: r.steps,
        cfg: r.cfg,
        width: r.width,
        height: r.height,
        seed: r.seed,
        batch: 1,
        init: None,
        hires: None,
    };
    let (ours, info) = try_image_and_infotext(&mut g, &job).unwrap();
    let want = image::open(reference(&r.file))
        .unwrap()
        .to_rgb8()
        .into_raw();
    assert_eq!(ours.len(), want.len());
    let sum: u64 = ours
        .iter()
        .zip(&want)
        .map(|(a, b)| u64::from(a.abs_diff(*b)))
        .sum();
    let mean = sum as f64 / want.len() as f64;
    let max = ours.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max();
    eprintln!("{family} image vs diffusers: mean abs {mean:.4}/255, max {max:?}/255");
    assert!(mean <= 1.0, "{family}: mean abs difference {mean}/255");
    // The hashes are the files' sha256 prefixes, computed here.
    let parsed = stipple::image::parse_infotext(&info).unwrap();
    let ti = parsed.get("TI hashes").unwrap_or_default().to_string();
    for name in ["stippleneg", "stipplestyle", "stipplexl"] {
        if !format!("{} {}", r.prompt, r.negative).contains(name) {
            continue;
        }
        let bytes =
            std::fs::read(fixtures("embeddings").join(format!("{name}.safetensors"))).unwrap();
        let hash: String = Sha256::digest(&bytes)
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(ti.contains(&format!("{name}: {hash}")), "{info}");
    }
}

#[test]
fn sd15_image_with_embeddings_matches_diffusers() {
    image_matches("tiny-sd15", "sd15");
}

#[test]
fn sdxl_image_with_embeddings_matches_diffusers() {
    image_matches("tiny-sdxl", "sdxl");
}

/// ComfyUI's `embedding:name` (extension and case as in a file name) is the same embedding.
#[test]
fn comfyui_names_give_the_same_conditioning_and_unknown_ones_are_errors() {
    let mut g = with_embeddings("tiny-sd15", "embeddings");
    let a1111 = stipple::prompt::parse("a photo of stippleneg").unwrap();
    let comfy = stipple::prompt::parse("a photo of embedding:StippleNeg.safetensors").unwrap();
    let a = g.encode_prompt_pooled(&a1111.fragments).unwrap();
    let b = g.encode_prompt_pooled(&comfy.fragments).unwrap();
    assert_eq!(a.chunks, b.chunks);
    let err = encode_err(&mut g, "a photo of embedding:stipplenog");
    assert!(
        err.contains("no embedding called `stipplenog`") && err.contains("stippleneg"),
        "{err}"
    );
}

/// Each hostile or foreign file: one clear error naming it, never a panic.
#[test]
fn wrong_family_pickles_and_broken_files_are_refused() {
    let mut sd15 = with_embeddings("tiny-sd15", "embeddings-bad");
    for (word, want) in [
        (
            "sd2style",
            "SD 2.x embedding (1024 wide), but the model is SD1.x",
        ),
        ("oldstyle", "pickle-based file (.pt)"),
        ("truncated", "not a safetensors file"),
        ("lorafile", "not a textual-inversion embedding"),
        ("nanvec", "NaN or infinite"),
        ("hugeheader", "not a safetensors file"),
    ] {
        let err = encode_err(&mut sd15, &format!("a {word} fox"));
        assert!(err.contains(want), "{word}: {err}");
        assert!(err.contains(word), "{word}: {err}");
    }
    // An SD 1.x embedding on SDXL, and an SDXL one on SD 1.x, name both sides.
    let mut xl = with_embeddings("tiny-sdxl", "embeddings");
    let err = encode_err(&mut xl, "a stippleneg fox");
    assert!(
        err.contains("stippleneg")
            && err.contains("one-encoder embedding (32 wide)")
            && err.contains("the model is SDXL (text encoder widths 32 + 32)"),
        "{err}"
    );
    let mut sd = with_embeddings("tiny-sd15", "embeddings");
    let err = encode_err(&mut sd, "a stipplexl fox");
    assert!(
        err.contains("an SDXL embedding") && err.contains("the model is SD1.x"),
        "{err}"
    );
}

/// `--embeddings` and an A1111 install's `embeddings/` folder through the CLI; the infotext says
/// which embeddings were used.
#[test]
fn the_cli_finds_embeddings_in_a_folder_and_a_models_root() {
    let tmp = tempfile::tempdir().unwrap();
    let webui = tmp.path().join("webui");
    std::fs::create_dir_all(webui.join("models")).unwrap();
    std::fs::create_dir_all(webui.join("embeddings/negatives")).unwrap();
    std::fs::copy(
        fixtures("embeddings/stippleneg.safetensors"),
        webui.join("embeddings/negatives/stippleneg.safetensors"),
    )
    .unwrap();
    for extra in [
        vec!["--models-root".to_string(), webui.display().to_string()],
        vec![
            "--embeddings".to_string(),
            "tests/fixtures/embeddings".into(),
        ],
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_stipple"))
            .current_dir(root())
            .args(["generate", "--steps", "1", "--prompt", "a fox"])
            .args(["--negative", "(stippleneg:1.2), blurry", "--out"])
            .arg(tmp.path().join("out"))
            .args(&extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        let info = stipple::image::parse_infotext(line["infotext"].as_str().unwrap()).unwrap();
        assert!(
            info.get("TI hashes")
                .is_some_and(|h| h.starts_with("stippleneg: ")),
            "{stdout}"
        );
    }
}
