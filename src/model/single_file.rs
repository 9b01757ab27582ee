//! Single-file checkpoints (A1111/Civitai `.safetensors` in LDM naming): what architecture a file
//! is, from its keys and shapes, with the evidence; and the model it makes with an embedded template.
//!
//! [`open`] is what [`super::Model::open`] calls for a file; [`detect`] alone is the architecture
//! check (refiner, SD3, Flux, a LoRA or a VAE given as a model are refused, naming the key).

use super::assemble::{self, Part};
use super::checkpoint::Checkpoint;
use super::layout::{
    check_needed, ComponentKind, Model, ModelError, ModelSource, OpenOptions, TokenizerFiles,
};
use super::ldm::{Naming, UnetLayout};
use super::prediction::{self, Prediction};
use super::template::Template;
use crate::family::Family;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const UNET: &str = "model.diffusion_model.";
const VAE: &str = "first_stage_model.";

/// What a checkpoint file is: its family and where each component's weights are.
#[derive(Debug, Clone)]
pub struct Architecture {
    pub family: Family,
    /// One line of evidence for the family (the keys and widths it was told by).
    pub evidence: String,
    pub parts: Vec<(ComponentKind, Naming)>,
    /// A 9-channel inpainting UNet (latents, mask, masked-picture latents).
    pub inpaint: bool,
}

/// Tells a checkpoint's architecture from its tensor names and shapes; `Err` is the refusal, with
/// the key that shows what the file is.
pub fn detect(shapes: &BTreeMap<String, Vec<usize>>, ema: bool) -> Result<Architecture, String> {
    let first = |p: &str| shapes.keys().find(|k| k.starts_with(p)).cloned();
    let containing = |p: &str| shapes.keys().find(|k| k.contains(p)).cloned();
    let adapter_marks = [
        "lora_down",
        "lora_up",
        "lora_A.",
        "lora_B.",
        "hada_w1",
        "lokr_w1",
        "oft_blocks",
        "oft_diag",
    ];
    if let Some(k) = adapter_marks.iter().find_map(|m| containing(m)) {
        return Err(format!(
            "this is a LoRA-family adapter, not a model (key `{k}`): put it in a LoRA folder and \
             use it in a prompt as <lora:NAME>"
        ));
    }
    if let Some(k) = containing("joint_blocks.") {
        return Err(format!(
            "this is an SD3-family (MMDiT) checkpoint (key `{k}`); stipple runs SD 1.x and SDXL"
        ));
    }
    if let Some(k) =
        containing("double_blocks.").or_else(|| containing("single_transformer_blocks."))
    {
        return Err(format!(
            "this is a Flux-family checkpoint (key `{k}`); stipple runs SD 1.x and SDXL"
        ));
    }
    let Some(unet_key) = first(UNET) else {
        if let Some(k) = first("cond_stage_model.").or_else(|| first("conditioner.")) {
            return Err(format!(
                "the file has no UNet (no `{UNET}*` keys; it has `{k}`)"
            ));
        }
        let vae = first(VAE)
            .or_else(|| first("encoder.down."))
            .or_else(|| first("decoder.up."))
            .or_else(|| first("decoder.up_blocks."));
        if let Some(k) = vae {
            return Err(format!(
                "this is a VAE, not a model (key `{k}`, no `{UNET}*` keys)"
            ));
        }
        return Err(match shapes.keys().next() {
            Some(k) => format!(
                "not a Stable Diffusion checkpoint: none of its {} tensors is `{UNET}*` (first: `{k}`)",
                shapes.len()
            ),
            None => "the file holds no tensors".to_string(),
        });
    };
    let width = shapes
        .iter()
        .find(|(k, _)| k.starts_with(UNET) && k.ends_with("attn2.to_k.weight"))
        .and_then(|(_, s)| s.get(1).copied());
    let width_note = width
        .map(|w| format!("cross-attention width {w}"))
        .unwrap_or_else(|| "no cross-attention".into());
    let in_key = format!("{UNET}input_blocks.0.0.weight");
    let in_channels = shapes.get(&in_key).and_then(|s| s.get(1)).copied();
    let inpaint = in_channels == Some(9);
    match in_channels {
        None | Some(4) | Some(9) => {}
        Some(ch) => {
            return Err(format!(
                "this is a UNet with {ch} input channels (`{in_key}`; 8 is instruct-pix2pix); \
                 stipple runs 4-channel text-to-image and 9-channel inpainting UNets"
            ))
        }
    }
    let unet_naming = if ema {
        if first("model_ema.").is_none() {
            return Err(
                "--ema asks for EMA weights, but the file has no `model_ema.*` keys".into(),
            );
        }
        Naming::UnetEma {
            layout: UnetLayout::default(),
        }
    } else {
        Naming::unet(UNET, [])
    };
    let vae = Naming::vae(VAE, []);
    let unet_and_vae = [
        (ComponentKind::Unet, unet_naming),
        (ComponentKind::VaeDecoder, vae.clone()),
        (ComponentKind::VaeEncoder, vae),
    ];
    let clip_l = |prefix: &str| Naming::ClipL {
        prefix: prefix.to_string(),
    };
    let (family, mut evidence, encoders) = if first("conditioner.embedders.1.model.").is_some() {
        (
            Family::Sdxl,
            format!("SDXL (`conditioner.embedders.1.model.*`: OpenCLIP-G; {width_note})"),
            vec![
                (
                    ComponentKind::TextEncoder,
                    clip_l("conditioner.embedders.0.transformer."),
                ),
                (
                    ComponentKind::TextEncoder2,
                    Naming::OpenClip {
                        prefix: "conditioner.embedders.1.model.".into(),
                    },
                ),
            ],
        )
    } else if let Some(k) = first("conditioner.embedders.0.model.") {
        return Err(format!(
            "this is an SDXL refiner (only an OpenCLIP-G text encoder, `{k}`; {width_note}); \
             stipple runs SDXL base models and their finetunes"
        ));
    } else if first("cond_stage_model.model.").is_some() {
        (
            Family::Sd2,
            format!("SD 2.x (`cond_stage_model.model.*`: OpenCLIP-H; {width_note})"),
            vec![(
                ComponentKind::TextEncoder,
                Naming::OpenClip {
                    prefix: "cond_stage_model.model.".into(),
                },
            )],
        )
    } else if first("cond_stage_model.transformer.").is_some() {
        (
            Family::Sd1,
            format!("SD 1.x (`cond_stage_model.transformer.*`: CLIP-L; {width_note})"),
            vec![(
                ComponentKind::TextEncoder,
                clip_l("cond_stage_model.transformer."),
            )],
        )
    } else {
        return Err(format!(
            "the file has a UNet (`{unet_key}`) but no text encoder stipple knows \
             (`cond_stage_model.transformer.*` or `conditioner.embedders.*`)"
        ));
    };
    if inpaint {
        evidence.push_str(&format!("; inpainting UNet (`{in_key}`: 9 input channels)"));
    }
    let mut parts = encoders;
    parts.extend(unet_and_vae);
    if first(VAE).is_none() {
        return Err(format!(
            "the file has no VAE (no `{VAE}*` keys); {evidence}"
        ));
    }
    Ok(Architecture {
        family,
        evidence,
        parts,
        inpaint,
    })
}

/// Templates of `family`, the preferred precision first; for a 9-channel (`inpaint`) SD 2.x or
/// SDXL UNet then the same templates widened to one ([`Template::inpainting`]: SD1 has its own).
pub(super) fn candidates(
    family: Family,
    prefer_fp16: bool,
    inpaint: bool,
) -> Result<Vec<Template>, ModelError> {
    let mut out = Vec::new();
    for t in Template::all() {
        let index = t.index()?;
        if index.family == family {
            let rank = u8::from((index.dtype == "fp16") != prefer_fp16);
            out.push((rank, t));
        }
    }
    out.sort_by_key(|(rank, _)| *rank);
    let mut out: Vec<Template> = out.into_iter().map(|(_, t)| t).collect();
    if inpaint && family != Family::Sd1 {
        let widened: Vec<Template> = out.iter().filter_map(|t| t.inpainting()).collect();
        out.extend(widened);
    }
    Ok(out)
}

/// Opens a `.safetensors` single-file checkpoint (pickled `.ckpt`/`.pt`/`.bin` files are refused).
pub fn open(path: &Path, opts: &OpenOptions) -> Result<Model, ModelError> {
    let refuse = |message: String| ModelError::Refused {
        path: path.to_path_buf(),
        message,
    };
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "safetensors" => {}
        "ckpt" | "pt" | "pth" | "bin" | "pkl" => {
            return Err(refuse(format!(
                "a .{ext} file is a Python pickle, and loading one can run code; stipple reads \
                 .safetensors checkpoints only (most models are published in both forms)"
            )))
        }
        _ => {
            return Err(refuse(
                "not a model: give a .safetensors checkpoint or a model folder".into(),
            ))
        }
    }
    let file = Checkpoint::open_any(path)?;
    let shapes: BTreeMap<String, Vec<usize>> = file.file_shapes().into_iter().collect();
    let arch = detect(&shapes, opts.ema).map_err(refuse)?;
    // A weight stored in a type stipple does not read (F8, say) is named here rather than as one
    // of many misfits; integer buffers (position ids, EMA counters) are not weights.
    for key in shapes.keys() {
        if let Some(dtype) = file.file_dtype(key) {
            use safetensors::Dtype;
            let weight_like = !matches!(
                dtype,
                Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::I64 | Dtype::I32 | Dtype::F64
            );
            if weight_like {
                return Err(refuse(format!(
                    "tensor `{key}` is stored as {dtype:?}; stipple reads F32, F16 and BF16 weights"
                )));
            }
        }
    }
    let parts: HashMap<ComponentKind, Part> = arch
        .parts
        .into_iter()
        .map(|(kind, naming)| {
            (
                kind,
                Part {
                    file: &file,
                    naming,
                },
            )
        })
        .collect();
    let fitted = assemble::choose(
        candidates(arch.family, opts.prefer_fp16, arch.inpaint)?,
        &parts,
        path,
        &arch.evidence,
    )?;
    let template = fitted.template;
    let index = template.index()?;
    let components = assemble::build(fitted, &parts, path)?;
    check_needed(&index, &components, path)?;
    let tokenizers = arch
        .family
        .facts()
        .encoders
        .iter()
        .map(|e| TokenizerFiles::Bundled { pad: e.pad_token })
        .collect();
    tracing::info!(
        "{}: {} through template {}{}",
        path.display(),
        arch.evidence,
        template.name,
        if template.widened() {
            " (UNet conv_in widened to 9 channels)"
        } else {
            ""
        }
    );
    let said = prediction::from_file(file.metadata(), &shapes);
    let mut model = Model {
        dir: path.to_path_buf(),
        index,
        components,
        tokenizers,
        scheduler_config: template.scheduler_config()?,
        source: ModelSource::SingleFile {
            template: template.name,
        },
        vae: None,
        evidence: vec![arch.evidence],
        prediction_pending: false,
    };
    match said {
        Some((p, why)) => model.set_prediction(p, &why)?,
        // A1111 reads an SD 2.x inpainting file as v2-inpainting-inference.yaml (epsilon) without
        // the one-step test, as stable-diffusion-2-inpainting is.
        None if arch.family == Family::Sd2 && arch.inpaint && opts.prediction.is_none() => {
            model.set_prediction(Prediction::Epsilon, prediction::SD2_INPAINT)?;
        }
        // An SD 2.x file that does not say is tested at load (unless --prediction says).
        None if arch.family == Family::Sd2 && opts.prediction.is_none() => {
            model.prediction_pending = true;
        }
        None => {}
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(keys: &[(&str, &[usize])]) -> BTreeMap<String, Vec<usize>> {
        keys.iter()
            .map(|(k, s)| (k.to_string(), s.to_vec()))
            .collect()
    }

    #[test]
    fn refusals_name_the_key_that_shows_what_the_file_is() {
        let lora = shapes(&[(
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
            &[4, 320],
        )]);
        assert!(detect(&lora, false).unwrap_err().contains("LoRA"));
        let sd3 = shapes(&[(
            "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight",
            &[4, 4],
        )]);
        assert!(detect(&sd3, false).unwrap_err().contains("SD3"));
        let flux = shapes(&[("double_blocks.0.img_attn.qkv.weight", &[4, 4])]);
        assert!(detect(&flux, false).unwrap_err().contains("Flux"));
        let vae = shapes(&[("encoder.down.0.block.0.conv1.weight", &[4, 4, 3, 3])]);
        assert!(detect(&vae, false).unwrap_err().contains("VAE"));
        let refiner = shapes(&[
            (
                "model.diffusion_model.input_blocks.0.0.weight",
                &[384, 4, 3, 3],
            ),
            ("conditioner.embedders.0.model.ln_final.weight", &[1280]),
            ("first_stage_model.decoder.conv_in.weight", &[512, 4, 3, 3]),
        ]);
        assert!(detect(&refiner, false).unwrap_err().contains("refiner"));
        let pix2pix = shapes(&[
            (
                "model.diffusion_model.input_blocks.0.0.weight",
                &[320, 8, 3, 3],
            ),
            (
                "cond_stage_model.transformer.text_model.final_layer_norm.weight",
                &[768],
            ),
            ("first_stage_model.decoder.conv_in.weight", &[512, 4, 3, 3]),
        ]);
        assert!(detect(&pix2pix, false)
            .unwrap_err()
            .contains("8 input channels"));
    }

    /// An SD 2.x UNet with 9 input channels (stable-diffusion-2-inpainting) is an SD 2.x
    /// inpainting model, said in the evidence; its templates are SD2's own, then the same widened.
    /// Without its VAE it is still refused, naming what it is.
    #[test]
    fn sd2_inpainting_is_told_and_gets_widened_templates() {
        let mut sd2 = shapes(&[
            (
                "model.diffusion_model.input_blocks.0.0.weight",
                &[320, 9, 3, 3],
            ),
            (
                "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                &[320, 1024],
            ),
            ("cond_stage_model.model.ln_final.weight", &[1024]),
            ("first_stage_model.decoder.conv_in.weight", &[512, 4, 3, 3]),
        ]);
        let a = detect(&sd2, false).unwrap();
        assert_eq!(a.family, Family::Sd2);
        assert!(a.inpaint);
        assert!(
            a.evidence.starts_with("SD 2.x") && a.evidence.contains("OpenCLIP-H"),
            "{}",
            a.evidence
        );
        assert!(
            a.evidence.contains("inpainting UNet") && a.evidence.contains("9 input channels"),
            "{}",
            a.evidence
        );
        let all = candidates(Family::Sd2, true, true).unwrap();
        let names: Vec<&str> = all.iter().filter(|t| t.widened()).map(|t| t.name).collect();
        for want in ["sd2-fp16", "sd2-fp32", "tiny-sd2"] {
            assert!(names.contains(&want), "{names:?}");
        }
        let first = all.iter().position(|t| t.widened()).unwrap();
        assert!(all[first..].iter().all(|t| t.widened()));
        assert!(all[..first].iter().all(|t| !t.widened()));
        assert!(candidates(Family::Sd2, true, false)
            .unwrap()
            .iter()
            .all(|t| !t.widened()));
        sd2.remove("first_stage_model.decoder.conv_in.weight");
        let e = detect(&sd2, false).unwrap_err();
        assert!(e.contains("no VAE") && e.contains("inpainting UNet"), "{e}");
    }

    #[test]
    fn sd2_and_sd1_inpainting_are_told_with_their_evidence() {
        let sd2 = shapes(&[
            (
                "model.diffusion_model.input_blocks.0.0.weight",
                &[320, 4, 3, 3],
            ),
            (
                "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                &[320, 1024],
            ),
            ("cond_stage_model.model.ln_final.weight", &[1024]),
            ("first_stage_model.decoder.conv_in.weight", &[512, 4, 3, 3]),
        ]);
        let a = detect(&sd2, false).unwrap();
        assert_eq!(a.family, Family::Sd2);
        assert!(a.evidence.contains("OpenCLIP-H"), "{}", a.evidence);
        assert!(a.evidence.contains("1024"), "{}", a.evidence);
        let inpaint = shapes(&[
            (
                "model.diffusion_model.input_blocks.0.0.weight",
                &[320, 9, 3, 3],
            ),
            (
                "cond_stage_model.transformer.text_model.final_layer_norm.weight",
                &[768],
            ),
            ("first_stage_model.decoder.conv_in.weight", &[512, 4, 3, 3]),
        ]);
        let a = detect(&inpaint, false).unwrap();
        assert_eq!(a.family, Family::Sd1);
        assert!(a.evidence.contains("inpainting UNet"), "{}", a.evidence);
        assert!(a.evidence.contains("9 input channels"), "{}", a.evidence);
    }

    #[test]
    fn sd1_and_sdxl_are_told_by_their_text_encoders() {
        let sd1 = shapes(&[
            (
                "model.diffusion_model.input_blocks.0.0.weight",
                &[320, 4, 3, 3],
            ),
            (
                "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                &[320, 768],
            ),
            (
                "cond_stage_model.transformer.text_model.final_layer_norm.weight",
                &[768],
            ),
            ("first_stage_model.decoder.conv_in.weight", &[512, 4, 3, 3]),
        ]);
        let a = detect(&sd1, false).unwrap();
        assert_eq!(a.family, Family::Sd1);
        assert!(a.evidence.contains("768"), "{}", a.evidence);
        let xl = shapes(&[
            (
                "model.diffusion_model.input_blocks.0.0.weight",
                &[320, 4, 3, 3],
            ),
            (
                "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
                &[768],
            ),
            ("conditioner.embedders.1.model.ln_final.weight", &[1280]),
            ("first_stage_model.decoder.conv_in.weight", &[512, 4, 3, 3]),
        ]);
        assert_eq!(detect(&xl, false).unwrap().family, Family::Sdxl);
        assert!(detect(&xl, true).unwrap_err().contains("model_ema"));
    }

    /// An SDXL UNet with 9 input channels is an SDXL inpainting model, said in the evidence; its
    /// templates are SDXL's own, then the same widened to 9 channels (SD1 keeps its own templates).
    #[test]
    fn sdxl_inpainting_is_told_and_gets_widened_templates() {
        let xl = shapes(&[
            (
                "model.diffusion_model.input_blocks.0.0.weight",
                &[320, 9, 3, 3],
            ),
            (
                "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
                &[768],
            ),
            ("conditioner.embedders.1.model.ln_final.weight", &[1280]),
            ("first_stage_model.decoder.conv_in.weight", &[512, 4, 3, 3]),
        ]);
        let a = detect(&xl, false).unwrap();
        assert_eq!(a.family, Family::Sdxl);
        assert!(a.inpaint);
        assert!(a.evidence.starts_with("SDXL"), "{}", a.evidence);
        assert!(
            a.evidence.contains("inpainting UNet") && a.evidence.contains("9 input channels"),
            "{}",
            a.evidence
        );
        let widened = |family, inpaint| -> Vec<&'static str> {
            candidates(family, false, inpaint)
                .unwrap()
                .into_iter()
                .filter(|t| t.widened())
                .map(|t| t.name)
                .collect()
        };
        let names = widened(Family::Sdxl, true);
        assert!(names.contains(&"tiny-sdxl"), "{names:?}");
        assert!(widened(Family::Sdxl, false).is_empty());
        assert!(widened(Family::Sd1, true).is_empty());
        // The widened ones come after every plain one.
        let all = candidates(Family::Sdxl, false, true).unwrap();
        let first = all.iter().position(|t| t.widened()).unwrap();
        assert!(all[first..].iter().all(|t| t.widened()));
        let mut four = xl.clone();
        four.insert(
            "model.diffusion_model.input_blocks.0.0.weight".into(),
            vec![320, 4, 3, 3],
        );
        assert!(!detect(&four, false).unwrap().inpaint);
    }
}
