//! Architecture templates embedded in the binary: per architecture the graphs (every weight
//! external), weight maps over diffusers names, configs, `model_index.json` and scheduler config;
//! plus the CLIP vocabulary. A checkpoint supplies only the weights.
//!
//! [`Template::all`] lists them; [`Template::file`] reads one file (gzip-compressed ones inflated).

use super::layout::{ComponentKind, ModelIndex};
use super::weightmap::WeightMap;
use std::io::Read;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/templates.rs"));
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template {template}: {file} is missing (the build embedded an incomplete template)")]
    Missing { template: String, file: String },
    #[error("template {template}: {file}: {message}")]
    Bad {
        template: String,
        file: String,
        message: String,
    },
}

/// One embedded architecture template.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    pub name: &'static str,
    files: &'static [(&'static str, &'static [u8])],
}

impl Template {
    /// Every embedded template, in name order (full-size ones first, the tiny test ones last).
    pub fn all() -> Vec<Template> {
        embedded::EMBEDDED
            .iter()
            .map(|(name, files)| Template { name, files })
            .collect()
    }

    /// The template called `name`.
    pub fn named(name: &str) -> Option<Template> {
        Template::all().into_iter().find(|t| t.name == name)
    }

    /// Whether the template has `rel` (plain or gzip-compressed).
    pub fn has(&self, rel: &str) -> bool {
        self.raw(rel).is_some() || self.raw(&format!("{rel}.gz")).is_some()
    }

    fn raw(&self, rel: &str) -> Option<&'static [u8]> {
        self.files.iter().find(|(p, _)| *p == rel).map(|(_, b)| *b)
    }

    /// The bytes of `rel`, inflated when the template stores it as `rel.gz`.
    pub fn file(&self, rel: &str) -> Result<Vec<u8>, TemplateError> {
        if let Some(b) = self.raw(rel) {
            return Ok(b.to_vec());
        }
        let gz = format!("{rel}.gz");
        let b = self.raw(&gz).ok_or_else(|| TemplateError::Missing {
            template: self.name.to_string(),
            file: rel.to_string(),
        })?;
        gunzip(b).map_err(|e| self.bad(&gz, e.to_string()))
    }

    fn bad(&self, file: &str, message: String) -> TemplateError {
        TemplateError::Bad {
            template: self.name.to_string(),
            file: file.to_string(),
            message,
        }
    }

    fn json<T: serde::de::DeserializeOwned>(&self, rel: &str) -> Result<T, TemplateError> {
        let bytes = self.file(rel)?;
        serde_json::from_slice(&bytes).map_err(|e| self.bad(rel, e.to_string()))
    }

    pub fn index(&self) -> Result<ModelIndex, TemplateError> {
        self.json("model_index.json")
    }

    /// A component's weight map (`cuda`: the fused CUDA graph's, when the template has one).
    pub fn weightmap(
        &self,
        kind: ComponentKind,
        cuda: bool,
    ) -> Result<Option<WeightMap>, TemplateError> {
        let rel = format!(
            "{kind}/{}",
            if cuda {
                "weightmap.cuda.json"
            } else {
                "weightmap.json"
            }
        );
        if cuda && !self.has(&rel) {
            return Ok(None);
        }
        self.json(&rel).map(Some)
    }

    pub fn config(&self, kind: ComponentKind) -> Result<serde_json::Value, TemplateError> {
        self.json(&format!("{kind}/config.json"))
    }

    pub fn scheduler_config(&self) -> Result<String, TemplateError> {
        let rel = "scheduler/scheduler_config.json";
        String::from_utf8(self.file(rel)?).map_err(|e| self.bad(rel, e.to_string()))
    }
}

/// The CLIP BPE vocabulary every SD text encoder uses: (`vocab.json`, `merges.txt`) contents.
pub fn clip_vocab() -> Result<(String, String), TemplateError> {
    let read = |(name, bytes): (&str, &[u8])| -> Result<String, TemplateError> {
        let bad = |message: String| TemplateError::Bad {
            template: "clip".into(),
            file: name.to_string(),
            message,
        };
        let raw = if name.ends_with(".gz") {
            gunzip(bytes).map_err(|e| bad(e.to_string()))?
        } else {
            bytes.to_vec()
        };
        String::from_utf8(raw).map_err(|e| bad(e.to_string()))
    };
    let [vocab, merges] = embedded::CLIP_VOCAB;
    Ok((read(vocab)?, read(merges)?))
}

fn gunzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_templates_are_embedded_without_weights() {
        let t = Template::named("tiny-sd15").expect("the tiny SD1 template is embedded");
        assert!(t.has("unet/model.onnx"));
        assert!(!t.has("unet/weights.safetensors"));
        assert!(!t.has("tokenizer/vocab.json"));
        let index = t.index().unwrap();
        assert!(index.components.contains(&ComponentKind::Unet));
        assert!(t.weightmap(ComponentKind::Unet, false).unwrap().is_some());
        let (vocab, merges) = clip_vocab().unwrap();
        assert!(vocab.contains("\"<|endoftext|>\": 49407"));
        assert!(merges.lines().count() > 48_000);
    }
}
