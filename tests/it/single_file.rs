//! Models as people have them: single-file LDM checkpoints and diffusers folders, opened through
//! the embedded templates. The fixtures are written by `scripts/single_file_fixtures.py` from the
//! tiny models and checked there by diffusers' own converters, so a stipple image from a file must
//! equal the folder model's, and diffusers' references where the weights differ.

use crate::util::*;
use std::path::{Path, PathBuf};
use stipple::job::{Job, Sampler};
use stipple::model::{Model, ModelSource, OpenOptions};
use stipple::pipeline::{EngineSpec, Generator};
use stipple::runtime::SessionOptions;

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/single-file").join(name)
}

pub(crate) fn load(path: &Path, opts: SessionOptions) -> Generator {
    Generator::load(EngineSpec::new(path).with_session(opts), runtime())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The settings of the fixtures' reference images.
pub(crate) fn job(sampler: Sampler, steps: u32) -> Job {
    Job {
        prompt: "a red fox in the snow".into(),
        negative: "blurry".into(),
        sampler,
        schedule: Default::default(),
        sde_noise: Default::default(),
        zero_snr: false,
        sigmas: Default::default(),
        steps,
        cfg: 7.0,
        width: 64,
        height: 64,
        seed: 42,
        batch: 1,
        init: None,
        hires: None,
    }
}

pub(crate) fn image(g: &mut Generator, job: &Job) -> Vec<u8> {
    try_image(g, job).unwrap_or_else(|e| panic!("{job:?}: {e}"))
}

fn png_pixels(path: &Path) -> Vec<u8> {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    img.into_raw()
}

/// (largest, mean) per-channel difference.
pub fn diff(a: &[u8], b: &[u8]) -> (u8, f64) {
    assert_eq!(a.len(), b.len());
    let max = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0);
    let sum: u64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    (max, sum as f64 / a.len().max(1) as f64)
}

#[test]
fn sd15_single_file_equals_the_folder_model_for_every_sampler() {
    let mut file = load(&fixture("tiny-sd15.safetensors"), SessionOptions::default());
    assert!(matches!(
        file.model.source,
        ModelSource::SingleFile {
            template: "tiny-sd15"
        }
    ));
    let mut folder = generator();
    for s in Sampler::ALL {
        let j = job(s, 4);
        assert_eq!(image(&mut file, &j), image(&mut folder, &j), "{s:?}");
    }
    // diffusers' own image of these weights (the fixture's reference) within rounding.
    let reference = png_pixels(&reference("image.euler.4.png"));
    let (max, mean) = diff(&image(&mut file, &job(Sampler::Euler, 4)), &reference);
    assert!(
        max <= 1 && mean < 0.01,
        "vs diffusers: max {max}, mean {mean}"
    );
}

#[test]
fn old_clip_layout_in_f32_equals_the_folder_model() {
    let mut file = load(
        &fixture("tiny-sd15-oldclip-f32.safetensors"),
        SessionOptions::default(),
    );
    let j = job(Sampler::DpmPp2m, 4);
    assert_eq!(image(&mut file, &j), image(&mut generator(), &j));
}

#[test]
fn sdxl_single_file_equals_the_folder_model_for_every_sampler() {
    let mut file = load(&fixture("tiny-sdxl.safetensors"), SessionOptions::default());
    let mut folder = load(&crate::sdxl::tiny_sdxl(), SessionOptions::default());
    for s in Sampler::ALL {
        let j = job(s, 4);
        assert_eq!(image(&mut file, &j), image(&mut folder, &j), "{s:?}");
    }
}

/// BF16 weights (and their EMA copy, with `ema`) against diffusers' images of the same values.
#[test]
fn bf16_and_ema_weights_match_diffusers() {
    for (ema, reference) in [
        (false, "tiny-sd15-bf16-ema.euler.4.png"),
        (true, "tiny-sd15-bf16-ema.ema.euler.4.png"),
    ] {
        let mut g = load(
            &fixture("tiny-sd15-bf16-ema.safetensors"),
            SessionOptions {
                ema,
                ..SessionOptions::default()
            },
        );
        let ours = image(&mut g, &job(Sampler::Euler, 4));
        let (max, mean) = diff(&ours, &png_pixels(&fixture("reference").join(reference)));
        assert!(max <= 1 && mean < 0.01, "ema {ema}: max {max}, mean {mean}");
    }
}

/// A Hugging Face folder (fp16 variant, `tokenizer.json` only, text encoder without
/// `text_model.`): with the fixture folder's scheduler config it is the same model; with its own
/// (PNDM's, "leading" spacing written out) the scheduler follows it, as diffusers does.
#[test]
fn diffusers_folder_is_the_same_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hf");
    copy_dir(&fixture("tiny-sd15-diffusers"), &dir);
    assert!(!dir.join("tokenizer/vocab.json").exists());
    let own = image(
        &mut load(&dir, SessionOptions::default()),
        &job(Sampler::Euler, 4),
    );
    std::fs::copy(
        tiny_model().join("scheduler/scheduler_config.json"),
        dir.join("scheduler/scheduler_config.json"),
    )
    .unwrap();
    // diffusers' own image of the folder, with its own scheduler config.
    let reference = png_pixels(&fixture("reference/tiny-sd15-diffusers.euler.4.png"));
    let (max, mean) = diff(&own, &reference);
    assert!(
        max <= 1 && mean < 0.01,
        "vs diffusers: max {max}, mean {mean}"
    );
    let mut g = load(&dir, SessionOptions::default());
    assert!(matches!(g.model.source, ModelSource::Diffusers { .. }));
    let j = job(Sampler::Euler, 4);
    let same = image(&mut g, &j);
    assert_eq!(same, image(&mut generator(), &j));
    assert_ne!(own, same, "the folder's own scheduler config was not used");
}

/// Adapters reach a single file's weights under their diffusers names, in both weight modes.
#[test]
fn adapters_on_a_single_file_equal_the_folder_model() {
    let prompt = "a red fox <lora:lyco_locon:0.8> <lora:lyco_te:0.6>";
    let mut j = small_job(prompt, 7);
    j.steps = 2;
    let mut folder = generator();
    folder.set_lora_dirs(vec![root().join("tests/fixtures/lora")]);
    let want = image(&mut folder, &j);
    for resident in [false, true] {
        let mut g = load(
            &fixture("tiny-sd15.safetensors"),
            SessionOptions {
                resident: Some(resident),
                ..SessionOptions::default()
            },
        );
        g.set_lora_dirs(vec![root().join("tests/fixtures/lora")]);
        let got = image(&mut g, &j);
        let (max, _) = diff(&got, &want);
        assert!(max <= 1, "resident {resident}: max {max}");
        if !resident {
            assert_eq!(got, want);
        }
    }
}

/// Every parameter of the tiny architectures is read by exactly one initializer of the plain
/// graph of its template, and the template reaches nothing else.
#[test]
fn tiny_templates_reach_every_parameter_once() {
    use stipple::model::template::Template;
    for (name, dir) in [
        ("tiny-sd15", tiny_model()),
        ("tiny-sdxl", crate::sdxl::tiny_sdxl()),
    ] {
        let t = Template::named(name).unwrap();
        for kind in t.index().unwrap().components {
            let wm = t.weightmap(kind, false).unwrap().unwrap();
            let mut reached: Vec<String> = wm
                .initializers
                .iter()
                .flat_map(|e| e.sources().into_iter().map(str::to_string))
                .collect();
            reached.sort();
            let n = reached.len();
            reached.dedup();
            assert_eq!(n, reached.len(), "{name} {kind}: a parameter read twice");
            let weights = stipple::model::Checkpoint::open(
                &dir.join(kind.dir_name()).join("weights.safetensors"),
            )
            .unwrap();
            let mut params: Vec<String> = weights.shapes().into_keys().collect();
            params.sort();
            assert_eq!(reached, params, "{name} {kind}");
        }
    }
}

/// Each bad input: one clear error naming what the file is, exit status 1, nothing written.
#[test]
fn files_that_are_not_models_are_refused_with_the_evidence() {
    let out = tempfile::tempdir().unwrap();
    let cases: [(PathBuf, &str); 10] = [
        (fixture("bad/refiner.safetensors"), "SDXL refiner"),
        (fixture("bad/sd3.safetensors"), "joint_blocks"),
        (fixture("bad/flux.safetensors"), "Flux"),
        (
            fixture("bad/truncated.safetensors"),
            "not a valid safetensors file",
        ),
        (
            fixture("bad/header_past_end.safetensors"),
            "invalid header length",
        ),
        (fixture("bad/f8.safetensors"), "F8_E4M3"),
        (fixture("bad/model.ckpt"), "pickle"),
        (fixture("bad/no_unet.safetensors"), "no UNet"),
        (fixture("tiny-vae.safetensors"), "this is a VAE"),
        (
            root().join("tests/fixtures/lora/lyco_locon.safetensors"),
            "LoRA-family adapter",
        ),
    ];
    for (path, needle) in cases {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_stipple"))
            .current_dir(root())
            .args(["generate", "--prompt", "x", "--steps", "1", "--model"])
            .arg(&path)
            .arg("--out")
            .arg(out.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{}: {stderr}", path.display());
        assert!(stderr.contains(needle), "{}: {stderr}", path.display());
        assert!(!stderr.contains("panicked"), "{stderr}");
        let errors = stderr.lines().filter(|l| l.starts_with("error")).count();
        assert_eq!(errors, 1, "{stderr}");
    }
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    // A diffusers folder missing a component, through the command line as well: exit 1, one
    // error naming the component, nothing written.
    let tmp = tempfile::tempdir().unwrap();
    for (i, component) in ["unet", "text_encoder", "vae"].into_iter().enumerate() {
        // A folder name that does not name the component: the message must.
        let dir = tmp.path().join(format!("hf{i}"));
        copy_dir(&fixture("tiny-sd15-diffusers"), &dir);
        std::fs::remove_dir_all(dir.join(component)).unwrap();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_stipple"))
            .current_dir(root())
            .args(["generate", "--prompt", "x", "--steps", "1", "--model"])
            .arg(&dir)
            .arg("--out")
            .arg(out.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{component}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(
            errors[0].contains(&format!("/{component}/")),
            "{component}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        let err = Model::open_with(&dir, OpenOptions::default())
            .err()
            .unwrap_or_else(|| panic!("a folder without {component} is refused"))
            .to_string();
        assert!(err.contains(component), "{err}");
    }
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

/// `--vae`: a standalone VAE in LDM naming without a prefix replaces the model's own, for a
/// stipple folder and a single file alike, and matches diffusers with that VAE swapped in; a VAE
/// of another shape is refused and a LoRA given as a VAE too.
#[test]
fn a_separate_vae_replaces_the_models_own() {
    let vae = fixture("tiny-vae.safetensors");
    let reference = png_pixels(&fixture("reference/tiny-sd15+vae.euler.4.png"));
    let with_vae = || SessionOptions {
        vae: Some(vae.clone()),
        ..SessionOptions::default()
    };
    let j = job(Sampler::Euler, 4);
    let mut images = Vec::new();
    for model in [tiny_model(), fixture("tiny-sd15.safetensors")] {
        let mut g = load(&model, with_vae());
        assert_eq!(g.model.vae.as_deref(), Some(vae.as_path()));
        let ours = image(&mut g, &j);
        let (max, mean) = diff(&ours, &reference);
        assert!(
            max <= 1 && mean < 0.01,
            "{}: max {max}, mean {mean}",
            model.display()
        );
        images.push(ours);
    }
    assert_eq!(images[0], images[1]);
    assert_ne!(
        images[0],
        image(&mut generator(), &j),
        "the VAE made no difference"
    );

    let refused = |vae: PathBuf, model: PathBuf| {
        Model::open_with(
            &model,
            OpenOptions {
                vae: Some(vae),
                ..OpenOptions::default()
            },
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
    };
    let err = refused(
        root().join("tests/fixtures/lora/lyco_locon.safetensors"),
        tiny_model(),
    );
    assert!(err.contains("not a VAE"), "{err}");
    // A whole checkpoint given as a VAE.
    let err = refused(fixture("tiny-sd15.safetensors"), tiny_model());
    assert!(err.contains("whole checkpoint"), "{err}");
}

/// `--clip-skip 2`: SD 1.x conditioned on the penultimate CLIP layer through the final layer norm,
/// as diffusers' `clip_skip=1` encodes the prompt, and said in the infotext as A1111 does. (diffusers
/// leaves the negative prompt at full depth where A1111 skips both, so its image is not the
/// reference here: the prompt embeddings are.)
#[test]
fn clip_skip_two_matches_diffusers() {
    let mut g = load(
        &fixture("tiny-sd15.safetensors"),
        SessionOptions {
            clip_skip: Some(2),
            ..SessionOptions::default()
        },
    );
    let refs =
        stipple::model::Checkpoint::open(&fixture("reference/clip_skip.safetensors")).unwrap();
    let want = refs.tensor("prompt_embeds").unwrap().to_f32();
    let prompt = stipple::prompt::parse("a red fox in the snow").unwrap();
    let got = g
        .encode_prompt_pooled(&prompt.fragments)
        .unwrap()
        .chunks
        .remove(0);
    assert_eq!(got.len(), want.len());
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-4, "prompt embeddings differ by {err}");
    let full = generator()
        .encode_prompt_pooled(&prompt.fragments)
        .unwrap()
        .chunks
        .remove(0);
    assert!(full.iter().zip(&want).any(|(a, b)| (a - b).abs() > 1e-3));

    let j = job(Sampler::Euler, 4);
    let mut info = String::new();
    let mut pixels = None;
    g.generate(
        &j,
        &|| stipple::engine::Stop::No,
        &mut |e| {
            if let stipple::job::Event::Image {
                image, infotext, ..
            } = e
            {
                pixels.get_or_insert(image.pixels);
                info = infotext;
            }
        },
        1,
    )
    .unwrap();
    let ours = pixels.unwrap();
    assert_ne!(
        ours,
        image(&mut generator(), &j),
        "clip skip changed nothing"
    );
    assert!(info.contains("Clip skip: 2"), "{info}");
    assert!(info.contains("Model hash: "), "{info}");
    let err = Generator::load(
        EngineSpec::new(tiny_model()).with_session(SessionOptions {
            clip_skip: Some(3),
            ..SessionOptions::default()
        }),
        runtime(),
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("clip skip is 1 or 2"), "{err}");
}

/// `--models-root`: an A1111-style install; the model, the VAE and a LoRA are found by name.
#[test]
fn a_models_root_finds_checkpoints_vaes_and_loras_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let webui = tmp.path().join("webui");
    for (from, to) in [
        (
            fixture("tiny-sd15.safetensors"),
            "models/Stable-diffusion/tiny.safetensors",
        ),
        (
            fixture("tiny-vae.safetensors"),
            "models/VAE/ink-vae.safetensors",
        ),
        (
            root_lora("lyco_locon.safetensors"),
            "models/Lora/styles/locon.safetensors",
        ),
    ] {
        let to = webui.join(to);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
    let out = tmp.path().join("out");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_stipple"))
        .current_dir(root())
        .args([
            "generate",
            "--steps",
            "1",
            "--prompt",
            "a fox <lora:locon:0.5>",
        ])
        .args(["--model", "tiny", "--vae", "ink-vae", "--models-root"])
        .arg(&webui)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.contains("VAE: ink-vae") && stdout.contains("Model: tiny"),
        "{stdout}"
    );
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_stipple"))
        .current_dir(root())
        .args([
            "generate",
            "--prompt",
            "x",
            "--model",
            "missing",
            "--models-root",
        ])
        .arg(&webui)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no checkpoint called \"missing\""),
        "{stderr}"
    );
}

fn root_lora(name: &str) -> PathBuf {
    root().join("tests/fixtures/lora").join(name)
}

/// `Lora hashes` as A1111 writes them: the first 12 hex digits of the sha256 of the file's data
/// (after the safetensors header), quoted, one per tag name.
#[test]
fn infotext_names_the_loras_by_their_a1111_hash() {
    use sha2::{Digest, Sha256};
    let path = root_lora("lyco_locon.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let want: String = Sha256::digest(&bytes[8 + n..])
        .iter()
        .map(|b| format!("{b:02x}"))
        .take(6)
        .collect();
    let mut g = generator();
    g.set_lora_dirs(vec![root().join("tests/fixtures/lora")]);
    let mut j = small_job("a fox <lora:lyco_locon:0.5> <lora:lyco_locon:te=0.2>", 3);
    j.steps = 1;
    let info = infotext_of(&mut g, &j);
    assert!(
        info.contains(&format!("Lora hashes: \"lyco_locon: {want}\"")),
        "{info}"
    );
    let parsed = stipple::image::parse_infotext(&info).unwrap();
    assert_eq!(
        parsed.get("Lora hashes"),
        Some(format!("lyco_locon: {want}").as_str())
    );
}

/// Writes `to` from the safetensors file `from`: the tensors `keep` gives a name (the new name),
/// each with its data rewritten where `change` returns new data; returns how many were rewritten.
fn rewrite_safetensors(
    from: &Path,
    to: &Path,
    keep: impl Fn(&str) -> Option<String>,
    change: impl Fn(&str, &[usize], &[u8]) -> Option<Vec<u8>>,
) -> usize {
    use safetensors::tensor::{SafeTensors, TensorView};
    let bytes = std::fs::read(from).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut changed = 0;
    let mut out: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        let Some(new_name) = keep(&name) else {
            continue;
        };
        let data = match change(&name, view.shape(), view.data()) {
            Some(d) => {
                changed += 1;
                d
            }
            None => view.data().to_vec(),
        };
        out.push((new_name, view.dtype(), view.shape().to_vec(), data));
    }
    assert!(!out.is_empty(), "{}: nothing kept", from.display());
    let views: Vec<(String, TensorView)> = out
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(to, safetensors::serialize(views, None).unwrap()).unwrap();
    changed
}

/// `tiny-vae.safetensors`' change to tiny-sd15's VAE (`scripts/single_file_fixtures.py`'s
/// `perturbed_vae`): every 4-D decoder weight of the diffusers module × VAE_SCALE, rounded to f16.
fn perturbed(name: &str, shape: &[usize], data: &[u8]) -> Option<Vec<u8>> {
    const VAE_SCALE: f32 = 1.05;
    if !(name.starts_with("decoder.") && name.ends_with(".weight") && shape.len() == 4) {
        return None;
    }
    Some(
        data.chunks_exact(2)
            .flat_map(|b| {
                let w = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                half::f16::from_f32(w * VAE_SCALE).to_le_bytes()
            })
            .collect(),
    )
}

/// `--vae` in the two namings the first test does not use: diffusers' (the VAE file diffusers'
/// `save_pretrained` wrote for tiny-sd15-diffusers/) and LDM's with the `first_stage_model.`
/// prefix (the VAE keys of the fixture's single file). Each holding the model's own VAE gives the
/// folder model's picture bit for bit; each holding `tiny-vae.safetensors`' weights (changed as the
/// fixture script changes them, or prefixed) gives that file's picture bit for bit, and diffusers'
/// picture with it.
#[test]
fn a_vae_in_diffusers_naming_or_with_the_ldm_prefix_is_read_too() {
    let tmp = tempfile::tempdir().unwrap();
    let diffusers_vae = fixture("tiny-sd15-diffusers/vae/diffusion_pytorch_model.fp16.safetensors");
    let own_diffusers = tmp.path().join("own-diffusers.safetensors");
    let own_prefixed = tmp.path().join("own-prefixed.safetensors");
    let ink_diffusers = tmp.path().join("ink-diffusers.safetensors");
    let ink_prefixed = tmp.path().join("ink-prefixed.safetensors");
    std::fs::copy(&diffusers_vae, &own_diffusers).unwrap();
    let all = |n: &str| Some(n.to_string());
    let none = |_: &str, _: &[usize], _: &[u8]| None;
    rewrite_safetensors(
        &fixture("tiny-sd15.safetensors"),
        &own_prefixed,
        |n| n.starts_with("first_stage_model.").then(|| n.to_string()),
        none,
    );
    let scaled = rewrite_safetensors(&diffusers_vae, &ink_diffusers, all, perturbed);
    assert!(scaled > 10, "{scaled} decoder convolutions scaled");
    rewrite_safetensors(
        &fixture("tiny-vae.safetensors"),
        &ink_prefixed,
        |n| Some(format!("first_stage_model.{n}")),
        none,
    );
    let j = job(Sampler::Euler, 4);
    let with_vae = |vae: &Path| {
        let mut g = load(
            &tiny_model(),
            SessionOptions {
                vae: Some(vae.to_path_buf()),
                ..SessionOptions::default()
            },
        );
        assert_eq!(g.model.vae.as_deref(), Some(vae));
        image(&mut g, &j)
    };
    let own = image(&mut generator(), &j);
    let ink = with_vae(&fixture("tiny-vae.safetensors"));
    assert_ne!(ink, own, "the VAE made no difference");
    let reference = png_pixels(&fixture("reference/tiny-sd15+vae.euler.4.png"));
    for (file, want) in [
        (&own_diffusers, &own),
        (&own_prefixed, &own),
        (&ink_diffusers, &ink),
        (&ink_prefixed, &ink),
    ] {
        let got = with_vae(file);
        assert!(got == *want, "{}: another picture", file.display());
        if want == &ink {
            let (max, mean) = diff(&got, &reference);
            assert!(
                max <= 1 && mean < 0.01,
                "{}: vs diffusers max {max}, mean {mean}",
                file.display()
            );
        }
    }
}

/// The infotext names a separate VAE as A1111 does: `VAE` is the file's stem and `VAE hash` the
/// first 10 hex digits of the whole file's sha256 (A1111's `sd_vae` hash), beside `Model hash`
/// (the same of the checkpoint); both computed here from the files.
#[test]
fn infotext_names_the_vae_and_its_a1111_hash() {
    use sha2::{Digest, Sha256};
    let short = |p: &Path| -> String {
        Sha256::digest(std::fs::read(p).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()[..10]
            .to_string()
    };
    let tmp = tempfile::tempdir().unwrap();
    let vae = tmp.path().join("ink-vae.ft-mse.safetensors");
    std::fs::copy(fixture("tiny-vae.safetensors"), &vae).unwrap();
    let model = fixture("tiny-sd15.safetensors");
    let mut g = load(
        &model,
        SessionOptions {
            vae: Some(vae.clone()),
            ..SessionOptions::default()
        },
    );
    let info = infotext_of(&mut g, &job(Sampler::Euler, 2));
    let parsed = stipple::image::parse_infotext(&info).unwrap();
    assert_eq!(
        parsed.get("VAE"),
        Some("ink-vae.ft-mse.safetensors"),
        "{info}"
    );
    assert_eq!(parsed.get("VAE hash"), Some(short(&vae).as_str()), "{info}");
    assert_eq!(parsed.get("Model"), Some("tiny-sd15"), "{info}");
    assert_eq!(
        parsed.get("Model hash"),
        Some(short(&model).as_str()),
        "{info}"
    );
    // Without --vae neither field is written.
    let info = infotext_of(
        &mut load(&model, SessionOptions::default()),
        &job(Sampler::Euler, 2),
    );
    assert!(!info.contains("VAE"), "{info}");
}

/// The infotext of the (last) image `g` makes for `j`.
fn infotext_of(g: &mut Generator, j: &Job) -> String {
    let mut info = String::new();
    g.generate(
        j,
        &|| stipple::engine::Stop::No,
        &mut |e| {
            if let stipple::job::Event::Image { infotext, .. } = e {
                info = infotext;
            }
        },
        1,
    )
    .unwrap();
    info
}
