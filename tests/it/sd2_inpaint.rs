//! SD 2.x 9-channel inpainting UNets (as stabilityai/stable-diffusion-2-inpainting): the tiny one of
//! `scripts/sdxl_inpaint_fixtures.py --family sd2` as a stipple folder, a single-file checkpoint and
//! a diffusers folder, against diffusers' `StableDiffusionInpaintPipeline`. Epsilon-prediction, as
//! the real model (tiny-sd2 is v): the fixture has its own scheduler config, and a file that does
//! not say is read as epsilon (A1111's rule). The rest of the model is tiny-sd2's (checked bit for
//! bit by the script): the tests put the folder and the file together.

use crate::img2img::{mean_abs, pictures};
use crate::single_file::{image, job, load};
use crate::util::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use stipple::init_image::MaskedContent;
use stipple::job::Sampler;
use stipple::model::ModelSource;
use stipple::runtime::SessionOptions;

fn fixture() -> PathBuf {
    root().join("tests/fixtures/sd2-inpaint")
}

/// tiny-sd2 with the fixture's 9-channel `unet/` and epsilon `scheduler/`: the stipple folder of
/// the inpainting model.
fn folder(dir: &Path) -> PathBuf {
    let out = dir.join("tiny-sd2-inpaint");
    copy_dir(&root().join("tests/fixtures/tiny-sd2"), &out);
    for c in ["unet", "scheduler"] {
        std::fs::remove_dir_all(out.join(c)).unwrap();
        copy_dir(&fixture().join(c), &out.join(c));
    }
    out
}

/// A tensor written in place of another: (dtype, shape, bytes).
type Replacement = (safetensors::Dtype, Vec<usize>, Vec<u8>);

/// single-file-arch/tiny-sd2.safetensors (no metadata) with its `model.diffusion_model.*` tensors replaced by the
/// fixture's 9-channel UNet (the script checked the key sets are the same), then `replace` applied:
/// the single-file inpainting checkpoint, written into `dir` as `name`.
fn checkpoint(dir: &Path, name: &str, replace: &HashMap<&str, Replacement>) -> PathBuf {
    let base =
        std::fs::read(root().join("tests/fixtures/single-file-arch/tiny-sd2.safetensors")).unwrap();
    let unet = std::fs::read(fixture().join("unet.ldm.safetensors")).unwrap();
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

fn inpaint_job(sampler: Sampler, denoise: f64) -> stipple::job::Job {
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

/// The folder: within 1/255 (mean abs) of diffusers' StableDiffusionInpaintPipeline at denoise
/// 0.5, 0.75 and 1 (euler), 0.75 and 1 (euler-a, ddim), with no mask (all-white), and "only masked".
#[test]
fn sd2_inpainting_unet_matches_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = load(&folder(dir.path()), SessionOptions::default());
    assert!(stipple::pipeline::img2img::inpaint_unet(&g.model));
    assert_eq!(crate::img2img::check_fixture(&fixture(), &mut g, true), 7);
    assert_eq!(crate::img2img::check_fixture(&fixture(), &mut g, false), 1);
    assert_eq!(crate::inpaint::check_only_masked(&fixture(), &mut g), 1);
}

/// The single file (no metadata) runs through the tiny SD2 template with its UNet widened to 9
/// channels, epsilon without the one-step test: the folder model bit for bit (text-to-image,
/// inpainting, a masked-content mode), with the 9 input channels and the prediction as evidence.
#[test]
fn sd2_inpainting_single_file_equals_the_folder_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint(dir.path(), "tiny-sd2-inpaint.safetensors", &HashMap::new());
    let mut file = load(&path, SessionOptions::default());
    assert!(
        matches!(
            file.model.source,
            ModelSource::SingleFile {
                template: "tiny-sd2"
            }
        ),
        "{:?}",
        file.model.source
    );
    let evidence = &file.model.evidence[0];
    assert!(evidence.starts_with("SD 2.x"), "{evidence}");
    assert!(evidence.contains("9 input channels"), "{evidence}");
    assert!(!file.model.prediction_pending);
    let said = file.model.evidence.join("\n");
    assert!(
        said.contains("prediction: epsilon") && said.contains("v2-inpainting"),
        "{said}"
    );
    assert!(file.model.scheduler_config.contains("\"epsilon\""));
    // Epsilon keeps the template's size (a v-prediction SD2 file would be read as 768-v).
    assert_ne!(file.model.index.default_width, Some(768));
    let mut folder = load(&folder(dir.path()), SessionOptions::default());
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
}

/// Headless as a user runs it: `generate --init-image --mask` and a batch line with `init_image`
/// and `mask`, on the single file, each within 1/255 of diffusers' image; doctor names the evidence.
#[test]
fn sd2_inpainting_from_the_command_line_and_in_batch() {
    let dir = tempfile::tempdir().unwrap();
    let path = checkpoint(dir.path(), "tiny-sd2-inpaint.safetensors", &HashMap::new());
    let model = path.to_str().unwrap();
    let (_, _, want) = read_rgb(&fixture().join("reference/inpaint.euler.0.75.png"));
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

/// A 9-channel SD2 file whose UNet is not the template's (conv_out of 5 channels) is refused
/// naming the parameter, and a file of the UNet alone names what it lacks; neither panics.
#[test]
fn a_misshapen_sd2_inpainting_file_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let key = "model.diffusion_model.out.2.weight";
    let shape = vec![5usize, 32, 3, 3];
    let bytes = vec![0u8; shape.iter().product::<usize>() * 2];
    let bad = checkpoint(
        dir.path(),
        "bad.safetensors",
        &HashMap::from([(key, (safetensors::Dtype::F16, shape, bytes))]),
    );
    let e = stipple::model::Model::open(&bad)
        .err()
        .expect("a misshapen UNet is refused")
        .to_string();
    assert!(e.contains("conv_out"), "{e}");
    assert!(e.contains("tiny-sd2"), "{e}");
    let e = stipple::model::Model::open(&fixture().join("unet.ldm.safetensors"))
        .err()
        .expect("a UNet alone is refused")
        .to_string();
    assert!(e.contains("no text encoder"), "{e}");
}

/// A Hugging Face folder of the same model (StableDiffusionInpaintPipeline's layout, written
/// here from the stipple folder's diffusers-named weights; the VAE's two halves in one file): it
/// runs through the widened tiny SD2 template and equals the stipple folder bit for bit; without
/// its `scheduler/` too (epsilon then by A1111's rule, not the template's v).
#[test]
fn sd2_inpainting_diffusers_folder_equals_the_stipple_folder() {
    let dir = tempfile::tempdir().unwrap();
    let src = folder(dir.path());
    let hf = dir.path().join("hf");
    for (from, to, file) in [
        ("text_encoder", "text_encoder", "model.safetensors"),
        ("unet", "unet", "diffusion_pytorch_model.safetensors"),
    ] {
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
    for d in ["tokenizer", "scheduler"] {
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
    std::fs::write(
        hf.join("model_index.json"),
        r#"{"_class_name": "StableDiffusionInpaintPipeline"}"#,
    )
    .unwrap();
    let mut g = load(&hf, SessionOptions::default());
    assert!(
        matches!(
            g.model.source,
            ModelSource::Diffusers {
                template: "tiny-sd2"
            }
        ),
        "{:?}",
        g.model.source
    );
    assert!(stipple::pipeline::img2img::inpaint_unet(&g.model));
    let mut stipple_folder = load(&src, SessionOptions::default());
    let j = inpaint_job(Sampler::EulerA, 0.75);
    let want = image(&mut stipple_folder, &j);
    assert_eq!(image(&mut g, &j), want);
    drop(g);
    std::fs::remove_dir_all(hf.join("scheduler")).unwrap();
    let mut g = load(&hf, SessionOptions::default());
    assert!(!g.model.prediction_pending);
    let said = g.model.evidence.join("\n");
    assert!(said.contains("prediction: epsilon"), "{said}");
    assert_eq!(image(&mut g, &j), want);
}

/// Every embedded SD2 template widens (the full-size sd2-fp32 and sd2-fp16 that
/// stable-diffusion-2-inpainting fits, and tiny-sd2): the widened graph decodes, each
/// external initializer agrees with its weight-map entry, conv_in is `[320, 9, 3, 3]` on the full
/// ones, and the `sample` input is 9 channels wide.
#[test]
fn every_sd2_template_widens_consistently() {
    use prost::Message;
    use stipple::model::onnx_proto::{tensor_shape_proto::dimension::Value as Dim, type_proto};
    use stipple::model::template::Template;
    use stipple::model::ComponentKind;
    let mut widened = Vec::new();
    for base in Template::all() {
        if base.index().unwrap().family != stipple::family::Family::Sd2 {
            continue;
        }
        let t = base.inpainting().expect("an SD2 template widens");
        let wm = t.weightmap(ComponentKind::Unet, false).unwrap().unwrap();
        let bytes = t.file("unet/model.onnx").unwrap();
        let g = stipple::model::graph::Graph::from_bytes(Path::new(t.name), bytes.clone()).unwrap();
        assert_eq!(g.externals.len(), wm.initializers.len(), "{}", t.name);
        for x in &g.externals {
            let e = wm.initializers.iter().find(|e| e.name == x.name).unwrap();
            assert_eq!(
                (x.offset, x.length, &x.dims, x.elem.name()),
                (e.offset, e.length, &e.shape, e.dtype.clone()),
                "{} {}",
                t.name,
                x.name
            );
        }
        let conv = wm
            .initializers
            .iter()
            .find(|e| e.source == "conv_in.weight")
            .unwrap();
        if !t.name.starts_with("tiny") {
            assert_eq!(conv.shape, vec![320, 9, 3, 3], "{}", t.name);
        }
        let model = stipple::model::onnx_proto::ModelProto::decode(bytes.as_slice()).unwrap();
        let sample = model
            .graph
            .unwrap()
            .input
            .into_iter()
            .find(|v| v.name() == "sample");
        let Some(type_proto::Value::TensorType(tt)) = sample.and_then(|s| s.r#type?.value) else {
            panic!("{}: no sample input", t.name)
        };
        assert_eq!(
            tt.shape.unwrap().dim[1].value,
            Some(Dim::DimValue(9)),
            "{}",
            t.name
        );
        widened.push(t.name);
    }
    eprintln!("widened: {widened:?}");
    for want in ["sd2-fp16", "sd2-fp32", "tiny-sd2"] {
        assert!(widened.contains(&want), "{widened:?}");
    }
}
