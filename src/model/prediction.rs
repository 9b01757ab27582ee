//! What a model's UNet predicts (noise or v), settled in this order: `--prediction`, the file's
//! own word (metadata, a `v_pred` key), else for an SD 2.x checkpoint A1111's one-step UNet test,
//! run at load by the pipeline ([`crate::pipeline::prediction_test`]), or epsilon for an SD 2.x
//! inpainting UNet ([`SD2_INPAINT`], A1111's rule); the answer is written into
//! the scheduler config (`prediction_type`) every sampler reads.
//!
//! [`from_file`] reads the file's word; `Model::set_prediction` (in `layout.rs`) sets a model's
//! prediction with its evidence.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Prediction {
    /// The noise (SD 1.x, SDXL, SD 2.x 512-base)
    Epsilon,
    /// v, the velocity (SD 2.x 768-v, some SDXL finetunes)
    V,
}

impl Prediction {
    /// diffusers' `prediction_type` value.
    pub fn scheduler_value(self) -> &'static str {
        match self {
            Prediction::Epsilon => "epsilon",
            Prediction::V => "v_prediction",
        }
    }
}

/// A1111's one-step test (`modules/sd_models_config.py`): the UNet is run on latents of 0.5 at
/// timestep 999 with a two-token context of 0.5; a model whose output minus the input averages
/// below -1 predicts v. `mean` is that average.
pub fn from_test_mean(mean: f32) -> Prediction {
    if mean < -1.0 {
        Prediction::V
    } else {
        Prediction::Epsilon
    }
}

/// What a checkpoint says it predicts, with the key that says it: SAI's model spec
/// (`modelspec.prediction_type`, or an architecture ending in `-v`), kohya's training metadata
/// (`ss_v_parameterization`), or a `v_pred` tensor (the marker A1111 and ComfyUI read).
pub fn from_file(
    meta: Option<&HashMap<String, String>>,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Option<(Prediction, String)> {
    if shapes.contains_key("v_pred") {
        return Some((Prediction::V, "the file's `v_pred` key".into()));
    }
    let meta = meta?;
    let said = |key: &str| meta.get(key).map(|v| v.trim().to_ascii_lowercase());
    if let Some(v) = said("modelspec.prediction_type") {
        let p = match v.as_str() {
            "v" | "v_prediction" | "v-prediction" => Some(Prediction::V),
            "epsilon" | "eps" => Some(Prediction::Epsilon),
            _ => None,
        };
        if let Some(p) = p {
            return Some((p, format!("metadata modelspec.prediction_type = {v}")));
        }
    }
    if let Some(v) = said("ss_v_parameterization") {
        let p = if v == "true" {
            Prediction::V
        } else {
            Prediction::Epsilon
        };
        return Some((p, format!("metadata ss_v_parameterization = {v}")));
    }
    if let Some(v) = said("modelspec.architecture") {
        if v.starts_with("stable-diffusion-v2") {
            let p = if v.contains("-v") && v.ends_with("-v") {
                Prediction::V
            } else {
                Prediction::Epsilon
            };
            return Some((p, format!("metadata modelspec.architecture = {v}")));
        }
    }
    None
}

/// `scheduler_config` (JSON) with its `prediction_type` set to `p`.
pub fn rewrite_config(scheduler_config: &str, p: Prediction) -> Result<String, serde_json::Error> {
    let mut cfg: serde_json::Value = serde_json::from_str(scheduler_config)?;
    if let Some(obj) = cfg.as_object_mut() {
        obj.insert(
            "prediction_type".into(),
            serde_json::Value::from(p.scheduler_value()),
        );
    }
    Ok(cfg.to_string())
}

/// The evidence line of a prediction.
pub fn evidence_line(p: Prediction, why: &str) -> String {
    let name = match p {
        Prediction::Epsilon => "epsilon",
        Prediction::V => "v",
    };
    format!("{EVIDENCE_PREFIX}{name} ({why})")
}

/// Why an SD 2.x inpainting UNet that does not say is epsilon: A1111 reads every such file with
/// `v2-inpainting-inference.yaml` (no one-step test), as stable-diffusion-2-inpainting predicts.
pub const SD2_INPAINT: &str = "an SD 2.x inpainting UNet that does not say: A1111's \
     v2-inpainting-inference.yaml, as stable-diffusion-2-inpainting; --prediction v overrides";

/// How a model's evidence line about its prediction starts.
pub const EVIDENCE_PREFIX: &str = "prediction: ";

/// The prediction the scheduler config says (epsilon when it does not say).
pub fn of_config(scheduler_config: &str) -> Prediction {
    let v: serde_json::Value = serde_json::from_str(scheduler_config).unwrap_or_default();
    match v.get("prediction_type").and_then(|p| p.as_str()) {
        Some("v_prediction") => Prediction::V,
        _ => Prediction::Epsilon,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_file_says_what_it_predicts() {
        let none = BTreeMap::new();
        let m = meta(&[("modelspec.prediction_type", "v")]);
        assert_eq!(from_file(Some(&m), &none).unwrap().0, Prediction::V);
        let m = meta(&[("modelspec.prediction_type", "epsilon")]);
        assert_eq!(from_file(Some(&m), &none).unwrap().0, Prediction::Epsilon);
        let m = meta(&[("ss_v_parameterization", "True")]);
        assert_eq!(from_file(Some(&m), &none).unwrap().0, Prediction::V);
        let m = meta(&[("modelspec.architecture", "stable-diffusion-v2-768-v")]);
        assert_eq!(from_file(Some(&m), &none).unwrap().0, Prediction::V);
        let m = meta(&[("modelspec.architecture", "stable-diffusion-v2-512")]);
        assert_eq!(from_file(Some(&m), &none).unwrap().0, Prediction::Epsilon);
        let m = meta(&[("format", "pt")]);
        assert!(from_file(Some(&m), &none).is_none());
        assert!(from_file(None, &none).is_none());
        let marked: BTreeMap<String, Vec<usize>> = [("v_pred".to_string(), vec![])].into();
        assert_eq!(from_file(None, &marked).unwrap().0, Prediction::V);
    }

    #[test]
    fn the_one_step_test_threshold_is_minus_one() {
        assert_eq!(from_test_mean(-1.5), Prediction::V);
        assert_eq!(from_test_mean(-0.5), Prediction::Epsilon);
        assert_eq!(from_test_mean(0.7), Prediction::Epsilon);
    }

    #[test]
    fn scheduler_config_prediction() {
        assert_eq!(
            of_config(r#"{"prediction_type": "v_prediction"}"#),
            Prediction::V
        );
        assert_eq!(of_config("{}"), Prediction::Epsilon);
    }
}
