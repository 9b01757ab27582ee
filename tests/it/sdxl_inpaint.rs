//! SDXL 9-channel inpainting UNets (as diffusers/stable-diffusion-xl-1.0-inpainting-0.1): the tiny one
//! of `scripts/sdxl_inpaint_fixtures.py` as a stipple folder and as a single-file checkpoint, against
//! diffusers' `StableDiffusionXLInpaintPipeline`. The fixture keeps only the UNet (the rest is
//! tiny-sdxl's, checked bit for bit by the script): the tests put the folder and the file together.

use crate::nine_channel::{self as nine, Nine};
use std::path::Path;

pub const N: Nine = Nine {
    name: "sdxl",
    base: "tiny-sdxl",
    checkpoint: "single-file/tiny-sdxl.safetensors",
    own: &["unet"],
    evidence: "SDXL",
    encoders: &["text_encoder", "text_encoder_2"],
    tokenizers: &["tokenizer", "tokenizer_2"],
    model_index: r#"{"_class_name": "StableDiffusionXLInpaintPipeline", "force_zeros_for_empty_prompt": true}"#,
};

/// The folder: within 1/255 (mean abs) of diffusers' inpaint pipeline at denoise 0.5, 0.75 and 1
/// (euler), 0.75 and 1 (euler-a, ddim), with no mask (all-white), and "only masked".
#[test]
fn sdxl_inpainting_unet_matches_diffusers() {
    nine::unet_matches_diffusers(&N);
}

/// The single file runs through the tiny template with its UNet widened to 9 channels: the folder
/// model bit for bit (text-to-image, inpainting, a masked-content mode), with the 9 input channels as
/// evidence.
#[test]
fn sdxl_inpainting_single_file_equals_the_folder_model() {
    let _file = nine::single_file_equals_the_folder_model(&N);
}

/// Headless as a user runs it: `generate --init-image --mask` and a batch line with `init_image`
/// and `mask`, on the single file, each within 1/255 of diffusers' image; doctor names the evidence.
#[test]
fn sdxl_inpainting_from_the_command_line_and_in_batch() {
    nine::from_the_command_line_and_in_batch(&N);
}

/// A 9-channel file whose UNet is not the template's (conv_out of 5 channels) is refused naming the
/// parameter, and a file of the UNet alone names what it lacks; neither panics.
#[test]
fn a_misshapen_sdxl_inpainting_file_is_refused_clearly() {
    nine::a_misshapen_file_is_refused_clearly(&N);
}

/// A Hugging Face folder of the same model (written here from the stipple folder's diffusers-named
/// weights; the VAE's two halves in one file) runs through the widened tiny template and equals the
/// stipple folder bit for bit.
#[test]
fn sdxl_inpainting_diffusers_folder_equals_the_stipple_folder() {
    let (_hf, _dir, _want) = nine::diffusers_folder_equals_the_stipple_folder(&N);
}

/// Every embedded SDXL template widens (the full-size sdxl-fp32 and sdxl-fp16 that real files such
/// as stable-diffusion-xl-1.0-inpainting-0.1 fit, and tiny-sdxl): the widened graph decodes, each
/// external initializer agrees with its weight-map entry, conv_in is `[320, 9, 3, 3]` on the full
/// ones, and the `sample` input is 9 channels wide.
#[test]
fn every_sdxl_template_widens_consistently() {
    use prost::Message;
    use stipple::model::onnx_proto::{tensor_shape_proto::dimension::Value as Dim, type_proto};
    use stipple::model::template::Template;
    use stipple::model::ComponentKind;
    let mut widened = Vec::new();
    for base in Template::all() {
        if base.index().unwrap().family != stipple::family::Family::Sdxl {
            continue;
        }
        let t = base.inpainting().expect("an SDXL template widens");
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
    assert!(widened.contains(&"tiny-sdxl"), "{widened:?}");
}
