//! SD 2.x 9-channel inpainting UNets (as stabilityai/stable-diffusion-2-inpainting): the tiny one of
//! `scripts/sdxl_inpaint_fixtures.py --family sd2` as a stipple folder, a single-file checkpoint and
//! a diffusers folder, against diffusers' `StableDiffusionInpaintPipeline`. Epsilon-prediction, as
//! the real model (tiny-sd2 is v): the fixture has its own scheduler config, and a file that does
//! not say is read as epsilon (A1111's rule). The rest of the model is tiny-sd2's (checked bit for
//! bit by the script): the tests put the folder and the file together.

use crate::nine_channel::{self as nine, Nine};
use std::path::Path;
use stipple::runtime::SessionOptions;

pub const N: Nine = Nine {
    name: "sd2",
    base: "tiny-sd2",
    checkpoint: "single-file-arch/tiny-sd2.safetensors",
    own: &["unet", "scheduler"],
    evidence: "SD 2.x",
    encoders: &["text_encoder"],
    tokenizers: &["tokenizer"],
    model_index: r#"{"_class_name": "StableDiffusionInpaintPipeline"}"#,
};

/// The folder: within 1/255 (mean abs) of diffusers' inpaint pipeline at denoise 0.5, 0.75 and 1
/// (euler), 0.75 and 1 (euler-a, ddim), with no mask (all-white), and "only masked".
#[test]
fn sd2_inpainting_unet_matches_diffusers() {
    nine::unet_matches_diffusers(&N);
}

/// The single file runs through the tiny template with its UNet widened to 9 channels: the folder
/// model bit for bit (text-to-image, inpainting, a masked-content mode), with the 9 input channels as
/// evidence.
#[test]
fn sd2_inpainting_single_file_equals_the_folder_model() {
    let _file = nine::single_file_equals_the_folder_model(&N);
    // No metadata: epsilon by A1111's rule, without the one-step test, at the template's size (a
    // v-prediction SD2 file would be read as 768-v).
    let file = _file;
    assert!(!file.model.prediction_pending);
    let said = file.model.evidence.join("\n");
    assert!(
        said.contains("prediction: epsilon") && said.contains("v2-inpainting"),
        "{said}"
    );
    assert!(file.model.scheduler_config.contains("\"epsilon\""));
    assert_ne!(file.model.index.default_width, Some(768));
}

/// Headless as a user runs it: `generate --init-image --mask` and a batch line with `init_image`
/// and `mask`, on the single file, each within 1/255 of diffusers' image; doctor names the evidence.
#[test]
fn sd2_inpainting_from_the_command_line_and_in_batch() {
    nine::from_the_command_line_and_in_batch(&N);
}

/// A 9-channel file whose UNet is not the template's (conv_out of 5 channels) is refused naming the
/// parameter, and a file of the UNet alone names what it lacks; neither panics.
#[test]
fn a_misshapen_sd2_inpainting_file_is_refused_clearly() {
    nine::a_misshapen_file_is_refused_clearly(&N);
}

/// A Hugging Face folder of the same model (written here from the stipple folder's diffusers-named
/// weights; the VAE's two halves in one file) runs through the widened tiny template and equals the
/// stipple folder bit for bit.
#[test]
fn sd2_inpainting_diffusers_folder_equals_the_stipple_folder() {
    let (_hf, _dir, _want) = nine::diffusers_folder_equals_the_stipple_folder(&N);
    // Without its `scheduler/` too: epsilon then by A1111's rule, not the template's v.
    let (hf, _dir, want) = (_hf, _dir, _want);
    std::fs::remove_dir_all(hf.join("scheduler")).unwrap();
    let mut g = crate::single_file::load(&hf, SessionOptions::default());
    assert!(!g.model.prediction_pending);
    let said = g.model.evidence.join("\n");
    assert!(said.contains("prediction: epsilon"), "{said}");
    let j = nine::inpaint_job(stipple::job::Sampler::EulerA, 0.75);
    assert_eq!(crate::single_file::image(&mut g, &j), want);
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
