//! Architecture templates embedded in the binary: per architecture the graphs (every weight
//! external), weight maps over diffusers names, configs, `model_index.json` and scheduler config;
//! plus the CLIP vocabulary. A checkpoint supplies only the weights.
//!
//! [`Template::all`] lists them; [`Template::file`] reads one file (gzip-compressed ones inflated);
//! [`Template::inpainting`] is a template with its UNet widened to 9 channels (`widen.rs`).

use super::graph::GraphKind;
use super::index::ModelIndex;
use super::weightmap::WeightMap;
use crate::family::ComponentKind;
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
    /// The UNet's `conv_in` and `sample` take 9 channels (an inpainting UNet); no fused UNet graph.
    widened: bool,
}

/// Templates whose fused UNet runs only with `--graph cuda` ([`Template::fused_unet_opt_in`]).
const UNCHECKED_FUSED_UNETS: &[&str] = &[];

impl Template {
    /// Every embedded template, in name order (full-size ones first, the tiny test ones last).
    pub fn all() -> Vec<Template> {
        embedded::EMBEDDED
            .iter()
            .map(|(name, files)| Template {
                name,
                files,
                widened: false,
            })
            .collect()
    }

    /// The template called `name`.
    pub fn named(name: &str) -> Option<Template> {
        Template::all().into_iter().find(|t| t.name == name)
    }

    /// This template with a 9-channel inpainting UNet (the graph edited at load time: an SDXL
    /// graph is too large to embed twice); `None` when its UNet does not take 4 channels.
    pub fn inpainting(self) -> Option<Template> {
        let channels = self
            .config(ComponentKind::Unet)
            .ok()?
            .get("in_channels")?
            .as_u64();
        (!self.widened && channels == Some(4)).then_some(Template {
            widened: true,
            ..self
        })
    }

    /// Whether the UNet is this template's widened to 9 channels ([`Self::inpainting`]).
    pub fn widened(&self) -> bool {
        self.widened
    }

    /// Whether this template's fused UNet graph runs only when asked for (`--graph cuda`): one
    /// that has not passed the GPU check (`scripts/gpu_check.sh`) yet. Since 2026-12-06 none.
    ///
    /// SDXL, SD 2.x and SD 1.x inpainting were until 2026-12-06: their fused pictures strayed
    /// 0.54–0.89/255 mean from the plain graph's. The cause was ORT's fp16 conversion, which had put
    /// the sinusoidal time projections (`t · freqs`, Sin, Cos) in fp16 (`scripts/fused_time.py`
    /// keeps them fp32 now). With that fixed, every fused template passed on an H100 (random
    /// full-size checkpoints): SD 1.5 0.18–0.22/255, SD 2 0.19–0.20, SD 1.5 inpainting 0.20–0.23
    /// (20 steps), SDXL 0.119–0.122 at 1024² and 8 steps (0.111 from its fp32 picture, where the
    /// plain graph strays 0.117).
    pub fn fused_unet_opt_in(&self) -> bool {
        UNCHECKED_FUSED_UNETS.contains(&self.name)
    }

    /// Whether `rel` is the widened UNet's fused graph, which is not made.
    fn dropped(&self, rel: &str) -> bool {
        self.widened && matches!(rel, "unet/model.cuda.onnx" | "unet/weightmap.cuda.json")
    }

    /// Whether the template has `rel` (plain or gzip-compressed).
    pub fn has(&self, rel: &str) -> bool {
        !self.dropped(rel) && (self.raw(rel).is_some() || self.raw(&format!("{rel}.gz")).is_some())
    }

    fn raw(&self, rel: &str) -> Option<&'static [u8]> {
        self.files.iter().find(|(p, _)| *p == rel).map(|(_, b)| *b)
    }

    /// The bytes of `rel`, inflated when the template stores it as `rel.gz` (the widened UNet
    /// graph edited).
    pub fn file(&self, rel: &str) -> Result<Vec<u8>, TemplateError> {
        if self.dropped(rel) {
            return Err(TemplateError::Missing {
                template: self.name.to_string(),
                file: rel.to_string(),
            });
        }
        let bytes = self.stored(rel)?;
        if !(self.widened && rel == "unet/model.onnx") {
            return Ok(bytes);
        }
        let mut wm: WeightMap = self.json("unet/weightmap.json")?;
        let placement = super::widen::weightmap(&mut wm).map_err(|e| self.bad(rel, e))?;
        super::widen::graph(&bytes, &placement).map_err(|e| self.bad(rel, e))
    }

    /// The stored bytes of `rel`, inflated when the template stores it as `rel.gz`.
    fn stored(&self, rel: &str) -> Result<Vec<u8>, TemplateError> {
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
        let which = if cuda {
            GraphKind::Cuda
        } else {
            GraphKind::Plain
        };
        self.graph_weightmap(kind, which)
    }

    /// The weight map of a component's `which` graph; `None` for a second graph it does not have.
    pub fn graph_weightmap(
        &self,
        kind: ComponentKind,
        which: GraphKind,
    ) -> Result<Option<WeightMap>, TemplateError> {
        let rel = format!("{kind}/{}", graph_files(which).1);
        if which != GraphKind::Plain && !self.has(&rel) {
            return Ok(None);
        }
        let mut wm: WeightMap = self.json(&rel)?;
        if self.widened && kind == ComponentKind::Unet {
            super::widen::weightmap(&mut wm).map_err(|e| self.bad(&rel, e))?;
        }
        Ok(Some(wm))
    }

    pub fn config(&self, kind: ComponentKind) -> Result<serde_json::Value, TemplateError> {
        let config = self.json(&format!("{kind}/config.json"))?;
        Ok(if self.widened && kind == ComponentKind::Unet {
            super::widen::config(config)
        } else {
            config
        })
    }

    pub fn scheduler_config(&self) -> Result<String, TemplateError> {
        let rel = "scheduler/scheduler_config.json";
        String::from_utf8(self.file(rel)?).map_err(|e| self.bad(rel, e.to_string()))
    }
}

/// The graph and weight-map file names of a component's `which` graph.
pub fn graph_files(which: GraphKind) -> (&'static str, &'static str) {
    match which {
        GraphKind::Plain => ("model.onnx", "weightmap.json"),
        GraphKind::Cuda => ("model.cuda.onnx", "weightmap.cuda.json"),
        // Fused32 is made from the fused graph's files at load.
        GraphKind::Fused | GraphKind::Fused32 => ("model.fused.onnx", "weightmap.fused.json"),
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
    use crate::model::graph::Graph;
    use std::collections::HashMap;

    /// Every embedded template: its graphs decode, every external initializer has exactly one
    /// weight-map entry of the same place, shape and type (and no entry is left over), and the plain
    /// graph reads each diffusers parameter once. What a checkpoint must then supply is exactly the
    /// weight map's sources (the tests in tests/it/single_file.rs check that on the tiny ones).
    #[test]
    fn every_template_is_consistent() {
        let all = Template::all();
        let names: Vec<&str> = all.iter().map(|t| t.name).collect();
        assert!(
            names.contains(&"tiny-sd15") && names.contains(&"tiny-sdxl"),
            "{names:?}"
        );
        for t in all {
            let index = t.index().unwrap_or_else(|e| panic!("{e}"));
            assert!(t.scheduler_config().is_ok(), "{}", t.name);
            for kind in index.components {
                for which in [GraphKind::Plain, GraphKind::Cuda, GraphKind::Fused] {
                    let cuda = which != GraphKind::Plain;
                    let Some(wm) = t.graph_weightmap(kind, which).unwrap() else {
                        assert!(cuda, "{} {kind}: no weight map", t.name);
                        continue;
                    };
                    let file = graph_files(which).0;
                    let bytes = t.file(&format!("{kind}/{file}")).unwrap();
                    let graph = Graph::from_bytes(std::path::Path::new(file), bytes)
                        .unwrap_or_else(|e| panic!("{} {kind}: {e}", t.name));
                    let entries: HashMap<&str, _> = wm
                        .initializers
                        .iter()
                        .map(|e| (e.name.as_str(), e))
                        .collect();
                    assert_eq!(entries.len(), wm.initializers.len(), "{} {kind}", t.name);
                    assert_eq!(
                        graph.externals.len(),
                        entries.len(),
                        "{} {kind} {file}",
                        t.name
                    );
                    for x in &graph.externals {
                        let e = entries.get(x.name.as_str()).unwrap_or_else(|| {
                            panic!("{} {kind}: {} has no weight-map entry", t.name, x.name)
                        });
                        assert_eq!(
                            (e.offset, e.length, &e.shape, e.dtype.as_str()),
                            (x.offset, x.length, &x.dims, x.elem.name().as_str()),
                            "{} {kind} {}",
                            t.name,
                            x.name
                        );
                    }
                    if !cuda {
                        let mut sources: Vec<&str> =
                            wm.initializers.iter().flat_map(|e| e.sources()).collect();
                        let n = sources.len();
                        sources.sort();
                        sources.dedup();
                        assert_eq!(
                            n,
                            sources.len(),
                            "{} {kind}: a parameter read twice",
                            t.name
                        );
                    }
                }
                assert!(t.config(kind).is_ok(), "{} {kind}", t.name);
            }
        }
    }

    /// The embedded full-size templates (not the tiny test ones), each with its components.
    fn full_size_templates() -> Vec<(Template, Vec<ComponentKind>)> {
        Template::all()
            .into_iter()
            .filter(|t| !t.name.starts_with("tiny-"))
            .map(|t| {
                let kinds = t.index().unwrap().components;
                (t, kinds)
            })
            .collect()
    }

    /// The full-size plain graphs carry the shape of every intermediate value
    /// (`scripts/template_shapes.py`): without them ONNX Runtime 1.31's memory planner spends
    /// seconds comparing unknown symbolic shapes (8.8 s of an SDXL UNet session's build).
    #[test]
    fn full_size_plain_graphs_carry_every_values_shape() {
        use super::super::onnx_proto::ModelProto;
        use prost::Message;
        let mut checked = 0;
        for (t, kinds) in full_size_templates() {
            for kind in kinds {
                let bytes = t.file(&format!("{kind}/model.onnx")).unwrap();
                let model = ModelProto::decode(bytes.as_slice()).unwrap();
                let g = model.graph.unwrap();
                let known: std::collections::HashSet<&str> = g
                    .value_info
                    .iter()
                    .chain(&g.output)
                    .map(|v| v.name())
                    .collect();
                let missing: Vec<&str> = g
                    .node
                    .iter()
                    .flat_map(|n| &n.output)
                    .filter(|o| !o.is_empty() && !known.contains(o.as_str()))
                    .map(String::as_str)
                    .collect();
                assert!(
                    missing.is_empty(),
                    "{} {kind}: {} values without a shape, e.g. {:?}",
                    t.name,
                    missing.len(),
                    &missing[..missing.len().min(3)]
                );
                checked += 1;
            }
        }
        assert!(checked >= 30, "{checked} graphs");
    }

    /// `fused`'s recipes against `plain`'s parameters (every plain entry an identity recipe): each
    /// recipe fits its parameters' shapes, and together they read every parameter and nothing
    /// else. Returns the parameters and how many `pack_heads` entries pack 1, 2, 3 parts.
    fn recipes_reach_every_parameter<'a>(
        what: &str,
        plain: &'a WeightMap,
        fused: &WeightMap,
    ) -> (Vec<&'a str>, [usize; 4]) {
        use super::super::layout::source_shape;
        use super::super::weightmap::Transform;
        let shapes: HashMap<&str, &Vec<usize>> = plain
            .initializers
            .iter()
            .map(|e| {
                assert_eq!(e.transform, Transform::Identity, "{what} {}", e.name);
                (e.source.as_str(), &e.shape)
            })
            .collect();
        let mut reached: Vec<&str> = Vec::new();
        let mut packed = [0usize; 4];
        for e in &fused.initializers {
            let want = source_shape(e, &e.shape)
                .unwrap_or_else(|| panic!("{what} {}: recipe does not fit {:?}", e.name, e.shape));
            for s in e.sources() {
                let have = shapes
                    .get(s)
                    .unwrap_or_else(|| panic!("{what} {}: {s} is no parameter", e.name));
                assert_eq!(**have, want, "{what} {} from {s}", e.name);
                reached.push(s);
            }
            if e.transform == Transform::PackHeads {
                packed[e.parts.len()] += 1;
            }
        }
        reached.sort_unstable();
        reached.dedup();
        let mut params: Vec<&str> = shapes.keys().copied().collect();
        params.sort_unstable();
        assert_eq!(
            reached, params,
            "{what}: the fused graph reads other parameters"
        );
        (params, packed)
    }

    /// The full-size fp16 templates ship ONNX Runtime's fused CUDA UNet (made by
    /// `scripts/export_model.py --template NAME --optimize cuda [--lean]`), so a checkpoint file
    /// read through them runs it on CUDA: its weight map reads every UNet parameter the plain graph
    /// reads and nothing else, each recipe fits the parameter's shape there, and every attention is
    /// packed (self-attention Q/K/V, cross-attention K/V), as the optimizer writes it.
    #[test]
    fn full_size_fp16_templates_carry_the_fused_unet() {
        for name in ["sd15-fp16", "sdxl-fp16"] {
            let t = Template::named(name).unwrap();
            assert!(t.has("unet/model.cuda.onnx"), "{name}: no fused UNet");
            let plain = t.weightmap(ComponentKind::Unet, false).unwrap().unwrap();
            let fused = t.weightmap(ComponentKind::Unet, true).unwrap().unwrap();
            let (params, packed) = recipes_reach_every_parameter(name, &plain, &fused);
            let count = |suffix: &str| params.iter().filter(|p| p.ends_with(suffix)).count();
            assert_eq!(packed[3], count("attn1.to_q.weight"), "{name}: packed QKV");
            assert_eq!(packed[2], count("attn2.to_k.weight"), "{name}: packed KV");
            assert!(packed[3] > 0, "{name}");
        }
    }

    /// Every full-size template ships the fused fp16 text encoders (`scripts/te_fused.py`): their
    /// recipes read every parameter of the plain graph with the right shapes, and each layer's
    /// Q/K/V weight and bias are packed (`pack_heads` of 3 parts).
    #[test]
    fn full_size_templates_carry_the_fused_text_encoders() {
        let mut checked = 0;
        for (t, kinds) in full_size_templates() {
            for kind in kinds {
                if !matches!(
                    kind,
                    ComponentKind::TextEncoder | ComponentKind::TextEncoder2
                ) {
                    continue;
                }
                let what = format!("{} {kind}", t.name);
                let plain = t.graph_weightmap(kind, GraphKind::Plain).unwrap().unwrap();
                let fused = t
                    .graph_weightmap(kind, GraphKind::Fused)
                    .unwrap()
                    .unwrap_or_else(|| panic!("{what}: no fused text encoder"));
                let (params, packed) = recipes_reach_every_parameter(&what, &plain, &fused);
                let layers = params
                    .iter()
                    .filter(|p| p.ends_with("q_proj.weight"))
                    .count();
                assert!(layers >= 12, "{what}: {layers} layers");
                assert_eq!(
                    packed[3],
                    2 * layers,
                    "{what}: packed Q/K/V weights and biases"
                );
                checked += 1;
            }
        }
        assert!(checked >= 10, "{checked} text encoders");
    }

    /// Every fused UNet computes its sinusoidal time projections (`t · freqs`, then Sin and Cos) in
    /// fp32, as diffusers and the plain graphs do (`scripts/fused_time.py`): ORT's fp16 conversion
    /// had put the product in fp16, 0.25 rad off near t = 999 and 0.5 rad for SDXL's size
    /// conditioning, which is why the fused SDXL picture strayed.
    #[test]
    fn fused_unets_compute_the_time_embedding_in_fp32() {
        use super::super::onnx_proto::{ModelProto, NodeProto};
        use prost::Message;
        const FLOAT: i32 = 1;
        let mut checked = 0;
        for t in Template::all()
            .into_iter()
            .filter(|t| t.has("unet/model.cuda.onnx"))
        {
            let bytes = t.file("unet/model.cuda.onnx").unwrap();
            let g = ModelProto::decode(bytes.as_slice()).unwrap().graph.unwrap();
            let by_output: HashMap<&str, &NodeProto> = g
                .node
                .iter()
                .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
                .collect();
            let attr = |n: &NodeProto, name: &str| {
                n.attribute
                    .iter()
                    .find(|a| a.name() == name)
                    .cloned()
                    .unwrap_or_else(|| panic!("{}: {} has no {name}", t.name, n.name()))
            };
            let trig: Vec<&NodeProto> = g
                .node
                .iter()
                .filter(|n| matches!(n.op_type(), "Sin" | "Cos"))
                .collect();
            let want = if t.name.contains("sdxl") { 4 } else { 2 };
            assert_eq!(trig.len(), want, "{}: Sin/Cos nodes", t.name);
            for n in trig {
                let mul = by_output[n.input[0].as_str()];
                assert_eq!(mul.op_type(), "Mul", "{} {}", t.name, n.name());
                let (mut cast, mut freqs) = (false, false);
                for i in &mul.input {
                    let p = by_output[i.as_str()];
                    match p.op_type() {
                        "Cast" => cast = attr(p, "to").i == Some(FLOAT as i64),
                        "Constant" => {
                            freqs = attr(p, "value").t.and_then(|t| t.data_type) == Some(FLOAT)
                        }
                        other => panic!("{} {}: a {other} feeds the product", t.name, mul.name()),
                    }
                }
                assert!(
                    cast && freqs,
                    "{} {}: the product is not fp32",
                    t.name,
                    mul.name()
                );
                checked += 1;
            }
        }
        assert!(checked >= 10, "{checked} projections");
    }

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
