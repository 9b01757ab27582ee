//! The tests of a 9-channel inpainting UNet that every family shares (SDXL in sdxl_inpaint.rs,
//! SD 2.x in sd2_inpaint.rs): the tiny fixture of `scripts/sdxl_inpaint_fixtures.py` put together with
//! its base tiny model as a stipple folder, a single-file checkpoint and a diffusers folder, against
//! diffusers' inpaint pipeline references.

use crate::img2img::{mean_abs, pictures};
use crate::single_file::{image, job, load};
use crate::util::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use stipple::init_image::MaskedContent;
use stipple::job::Sampler;
use stipple::model::ModelSource;
use stipple::runtime::SessionOptions;

/// One family's inpainting fixture and what its base tiny model is made of.
pub struct Nine {
    /// `tests/fixtures/{name}-inpaint`.
    pub name: &'static str,
    /// The base tiny model's folder under tests/fixtures, and the template a file of it runs through.
    pub base: &'static str,
    /// The base tiny model's single file, under tests/fixtures.
    pub checkpoint: &'static str,
    /// Components the fixture brings in place of the base's.
    pub own: &'static [&'static str],
    /// How the single file's evidence starts.
    pub evidence: &'static str,
    pub encoders: &'static [&'static str],
    pub tokenizers: &'static [&'static str],
    /// A diffusers folder's model_index.json.
    pub model_index: &'static str,
}

fn fixture(n: &Nine) -> PathBuf {
    root().join(format!("tests/fixtures/{}-inpaint", n.name))
}

/// The base tiny model with the fixture's own components (its 9-channel `unet/`, and what else it
/// has): the stipple folder of the inpainting model.
pub fn folder(n: &Nine, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{}-inpaint", n.base));
    copy_dir(&root().join("tests/fixtures").join(n.base), &out);
    for c in n.own {
        std::fs::remove_dir_all(out.join(c)).unwrap();
        copy_dir(&fixture(n).join(c), &out.join(c));
    }
    out
}

/// A tensor written in place of another: (dtype, shape, bytes).
pub type Replacement = (safetensors::Dtype, Vec<usize>, Vec<u8>);

/// The base tiny model's single file with its `model.diffusion_model.*` tensors replaced by the
/// fixture's 9-channel UNet (the script checked the key sets are the same), then `replace` applied:
/// the single-file inpainting checkpoint, written into `dir` as `name`.
pub fn checkpoint(
    n: &Nine,
    dir: &Path,
    name: &str,
    replace: &HashMap<&str, Replacement>,
) -> PathBuf {
    let base = std::fs::read(root().join("tests/fixtures").join(n.checkpoint)).unwrap();
    let unet = std::fs::read(fixture(n).join("unet.ldm.safetensors")).unwrap();
    let base = safetensors::SafeTensors::deserialize(&base).unwrap();
    let unet = safetensors::SafeTensors::deserialize(&unet).unwrap();
    let mut tensors: Vec<(String, safetensors::tensor::TensorView)> = base
        .tensors()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("model.diffusion_model."))
        .chain(unet.tensors())
        .collect();
    assert_eq!(tensors.len(), base.len(), "the UNet key sets differ");
    for (k, v) in tensors.iter_mut() {
        if let Some((dtype, shape, data)) = replace.get(k.as_str()) {
            *v = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap();
        }
    }
    let bytes = safetensors::serialize(tensors, None).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

pub fn inpaint_job(sampler: Sampler, denoise: f64) -> stipple::job::Job {
    let pics = pictures();
    let mut j = job(sampler, 8);
    j.init = Some(
        stipple::image::init::pin(
            &pics.join("init.png"),
            denoise,
            Some(&pics.join("mask.png")),
        )
        .unwrap(),
    );
    j
}

/// The folder: within 1/255 (mean abs) of diffusers' StableDiffusionXLInpaintPipeline at denoise
/// 0.5, 0.75 and 1 (euler), 0.75 and 1 (euler-a, ddim), with no mask (all-white), and "only masked".
pub fn unet_matches_diffusers(n: &Nine) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = load(&folder(n, dir.path()), SessionOptions::default());
    assert!(stipple::pipeline::img2img::inpaint_unet(&g.model));
    assert_eq!(crate::img2img::check_fixture(&fixture(n), &mut g, true), 7);
    assert_eq!(crate::img2img::check_fixture(&fixture(n), &mut g, false), 1);
    assert_eq!(crate::inpaint::check_only_masked(&fixture(n), &mut g), 1);
}

/// The single file runs through the tiny SDXL template with its UNet widened to 9 channels: the
/// folder model bit for bit (text-to-image, inpainting, a masked-content mode), with the 9 input
/// channels as evidence.
pub fn single_file_equals_the_folder_model(n: &Nine) -> stipple::pipeline::Generator {
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint(
        n,
        dir.path(),
        &format!("{}-inpaint.safetensors", n.base),
        &HashMap::new(),
    );
    let mut file = load(&path, SessionOptions::default());
    assert!(
        matches!(
            file.model.source,
            ModelSource::SingleFile { template } if template == n.base
        ),
        "{:?}",
        file.model.source
    );
    let evidence = &file.model.evidence[0];
    assert!(evidence.starts_with(n.evidence), "{evidence}");
    assert!(evidence.contains("9 input channels"), "{evidence}");
    let mut folder = load(&folder(n, dir.path()), SessionOptions::default());
    let t2i = job(Sampler::EulerA, 4);
    let a = image(&mut file, &t2i);
    assert_eq!(a, image(&mut folder, &t2i));
    let inpaint = inpaint_job(Sampler::Euler, 0.75);
    let b = image(&mut file, &inpaint);
    assert_eq!(b, image(&mut folder, &inpaint));
    assert_ne!(a, b);
    let mut fill = inpaint_job(Sampler::Ddim, 1.0);
    if let Some(init) = fill.init.as_mut() {
        init.masked_content = MaskedContent::Fill;
    }
    let (c, info) = try_image_and_infotext(&mut file, &fill).unwrap();
    assert!(info.contains("Masked content: fill"), "{info}");
    assert!(info.contains("Denoising strength: 1"), "{info}");
    assert_eq!(c, try_image_and_infotext(&mut folder, &fill).unwrap().0);
    assert_ne!(c, b);
    file
}

/// Headless as a user runs it: `generate --init-image --mask` and a batch line with `init_image`
/// and `mask`, on the single file, each within 1/255 of diffusers' image; doctor names the evidence.
pub fn from_the_command_line_and_in_batch(n: &Nine) {
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint(
        n,
        dir.path(),
        &format!("{}-inpaint.safetensors", n.base),
        &HashMap::new(),
    );
    let model = path.to_str().unwrap();
    let (_, _, want) = read_rgb(&fixture(n).join("reference/inpaint.euler.0.75.png"));
    let out = dir.path().join("generate");
    let (ok, stdout, stderr) = crate::cli::run(&[
        "generate",
        "--model",
        model,
        "--init-image",
        "tests/fixtures/img2img/init.png",
        "--mask",
        "tests/fixtures/img2img/mask.png",
        "--denoise",
        "0.75",
        "--prompt",
        "a red fox in the snow",
        "--negative",
        "blurry",
        "--sampler",
        "euler",
        "--steps",
        "8",
        "--cfg",
        "7",
        "--seed",
        "42",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let png = PathBuf::from(line["path"].as_str().unwrap());
    let (w, h, got) = read_rgb(&png);
    assert_eq!((w, h), (64, 64));
    let mad = mean_abs(&got, &want);
    eprintln!("generate: mean abs {mad:.4}/255 against inpaint.euler.0.75.png");
    assert!(mad <= 1.0, "generate: {mad}/255");
    let info = stipple::image::read_text_chunks(&png).unwrap()["parameters"].clone();
    assert!(info.contains("Denoising strength: 0.75"), "{info}");

    let jobs = dir.path().join("jobs.jsonl");
    std::fs::write(
        &jobs,
        r#"{"prompt": "a red fox in the snow", "negative": "blurry", "sampler": "euler", "steps": 8, "cfg": 7, "seed": 42, "init_image": "tests/fixtures/img2img/init.png", "mask": "tests/fixtures/img2img/mask.png", "denoise": 0.75}"#
            .to_string()
            + "\n",
    )
    .unwrap();
    let out = dir.path().join("batch");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_stipple"))
        .current_dir(root())
        .args(["batch", jobs.to_str().unwrap(), "--model", model, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let record: serde_json::Value = String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["images"].is_array())
        .unwrap_or_else(|| panic!("no result line: {stderr}"));
    let png = out.join(record["images"][0]["path"].as_str().unwrap());
    let (_, _, got) = read_rgb(&png);
    let mad = mean_abs(&got, &want);
    eprintln!("batch: mean abs {mad:.4}/255 against inpaint.euler.0.75.png");
    assert!(mad <= 1.0, "batch: {mad}/255");

    let o = std::process::Command::new(env!("CARGO_BIN_EXE_stipple"))
        .current_dir(root())
        .args(["doctor", "--model", model])
        .output()
        .unwrap();
    let doctor = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{doctor}");
    assert!(doctor.contains("9 input channels"), "{doctor}");
}

/// A 9-channel SDXL file whose UNet is not the template's (conv_out of 5 channels) is refused
/// naming the parameter, and a file of the UNet alone names what it lacks; neither panics.
pub fn a_misshapen_file_is_refused_clearly(n: &Nine) {
    let dir = tempfile::tempdir().unwrap();
    let key = "model.diffusion_model.out.2.weight";
    let shape = vec![5usize, 32, 3, 3];
    let bytes = vec![0u8; shape.iter().product::<usize>() * 2];
    let bad = checkpoint(
        n,
        dir.path(),
        "bad.safetensors",
        &HashMap::from([(key, (safetensors::Dtype::F16, shape, bytes))]),
    );
    let e = stipple::model::Model::open(&bad)
        .err()
        .expect("a misshapen UNet is refused")
        .to_string();
    assert!(e.contains("conv_out"), "{e}");
    assert!(e.contains(n.base), "{e}");
    let e = stipple::model::Model::open(&fixture(n).join("unet.ldm.safetensors"))
        .err()
        .expect("a UNet alone is refused")
        .to_string();
    assert!(e.contains("no text encoder"), "{e}");
}

/// A Hugging Face folder of the same model (StableDiffusionXLInpaintPipeline's layout, written
/// here from the stipple folder's diffusers-named weights; the VAE's two halves in one file): it
/// runs through the widened tiny SDXL template and equals the stipple folder bit for bit.
pub fn diffusers_folder_equals_the_stipple_folder(
    n: &Nine,
) -> (PathBuf, tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let src = folder(n, dir.path());
    let hf = dir.path().join("hf");
    let components = n
        .encoders
        .iter()
        .map(|e| (*e, "model.safetensors"))
        .chain([("unet", "diffusion_pytorch_model.safetensors")]);
    for (from, file) in components {
        let to = from;
        std::fs::create_dir_all(hf.join(to)).unwrap();
        std::fs::copy(
            src.join(from).join("weights.safetensors"),
            hf.join(to).join(file),
        )
        .unwrap();
        std::fs::copy(
            src.join(from).join("config.json"),
            hf.join(to).join("config.json"),
        )
        .unwrap();
    }
    for d in n.tokenizers.iter().chain(&["scheduler"]) {
        copy_dir(&src.join(d), &hf.join(d));
    }
    let halves: Vec<Vec<u8>> = ["vae_decoder", "vae_encoder"]
        .iter()
        .map(|c| std::fs::read(src.join(c).join("weights.safetensors")).unwrap())
        .collect();
    let halves: Vec<safetensors::SafeTensors> = halves
        .iter()
        .map(|b| safetensors::SafeTensors::deserialize(b).unwrap())
        .collect();
    let vae: Vec<_> = halves.iter().flat_map(|h| h.tensors()).collect();
    std::fs::create_dir_all(hf.join("vae")).unwrap();
    std::fs::write(
        hf.join("vae/diffusion_pytorch_model.safetensors"),
        safetensors::serialize(vae, None).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        src.join("vae_decoder/config.json"),
        hf.join("vae/config.json"),
    )
    .unwrap();
    std::fs::write(hf.join("model_index.json"), n.model_index).unwrap();
    let mut g = load(&hf, SessionOptions::default());
    assert!(
        matches!(
            g.model.source,
            ModelSource::Diffusers { template } if template == n.base
        ),
        "{:?}",
        g.model.source
    );
    assert!(stipple::pipeline::img2img::inpaint_unet(&g.model));
    let mut stipple_folder = load(&src, SessionOptions::default());
    let j = inpaint_job(Sampler::EulerA, 0.75);
    let want = image(&mut stipple_folder, &j);
    assert_eq!(image(&mut g, &j), want);
    (hf, dir, want)
}
