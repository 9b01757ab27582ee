//! PEFT/diffusers files keep alpha outside the tensors, in the `lora_adapter_metadata` JSON
//! (`unet.r`, `unet.lora_alpha`, `unet.alpha_pattern`, `unet.use_rslora`, same for `text_encoder[_2].`).
//!
//! Without it the scale is 1, as in diffusers (`peft_utils.get_peft_kwargs`).

use serde_json::Value;

use super::TargetComponent;

/// The per-component alpha settings of a PEFT adapter file.
#[derive(Debug, Default)]
pub struct PeftAlpha {
    root: serde_json::Map<String, Value>,
}

fn prefix(c: TargetComponent) -> &'static str {
    match c {
        TargetComponent::Unet => "unet",
        TargetComponent::TextEncoder => "text_encoder",
        TargetComponent::TextEncoder2 => "text_encoder_2",
    }
}

impl PeftAlpha {
    pub fn from_metadata(md: &std::collections::BTreeMap<String, String>) -> Option<PeftAlpha> {
        let text = md.get("lora_adapter_metadata")?;
        match serde_json::from_str(text) {
            Ok(Value::Object(root)) => Some(PeftAlpha { root }),
            _ => None,
        }
    }

    /// The `alpha` to store for a module of rank `rank` so that `alpha/rank` is PEFT's scaling
    /// (`lora_alpha/r`, or `lora_alpha/√r` with rsLoRA); `alpha_pattern` entries match name suffixes.
    pub fn alpha(&self, c: TargetComponent, module: &str, rank: usize) -> Option<f32> {
        let p = prefix(c);
        let get = |k: &str| self.root.get(&format!("{p}.{k}"));
        let mut alpha = get("lora_alpha")?.as_f64()?;
        if let Some(Value::Object(pats)) = get("alpha_pattern") {
            for (pat, v) in pats {
                let re = regex::Regex::new(&format!(r"^(.*\.)?(?:{pat})$"));
                if let (Ok(re), Some(a)) = (re, v.as_f64()) {
                    if re.is_match(module) {
                        alpha = a;
                        break;
                    }
                }
            }
        }
        let rs = get("use_rslora").and_then(Value::as_bool).unwrap_or(false);
        let r = rank as f64;
        Some(if rs { alpha * r.sqrt() } else { alpha } as f32)
    }
}
