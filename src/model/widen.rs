//! A 9-channel inpainting UNet from a 4-channel template, edited at load time rather than embedded
//! twice: [`weightmap`] and [`graph`] give `conv_in` and the `sample` input 9 channels (latents,
//! mask, masked-picture latents); [`config`] says so. Nothing else in a UNet depends on them.
//!
//! The widened weight moves to the end of the external-data buffer, so every other initializer
//! keeps its place and the rest of the graph stays byte for byte what the template has.

use super::onnx_proto::{
    tensor_shape_proto::dimension::Value as Dim, type_proto, ModelProto, StringStringEntryProto,
};
use super::weightmap::{Transform, WeightMap};
use prost::Message;

/// Input channels of an inpainting UNet.
pub const INPAINT_CHANNELS: usize = 9;
/// Input channels of the UNet a template is widened from.
const PLAIN_CHANNELS: usize = 4;
/// The parameter that reads the UNet's input.
const CONV_IN: &str = "conv_in.weight";
/// The graph input it reads.
const SAMPLE: &str = "sample";
/// Alignment of the moved weight in the buffer (a cache line; ONNX Runtime needs none).
const ALIGN: usize = 64;

/// Where the widened `conv_in` weight lives: what [`graph`] writes into the initializer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub name: String,
    pub dims: Vec<usize>,
    pub offset: usize,
    pub length: usize,
}

/// Widens `wm`'s `conv_in` entry to [`INPAINT_CHANNELS`] input channels, placed after every other
/// initializer; the placement for [`graph`].
pub fn weightmap(wm: &mut WeightMap) -> Result<Placement, String> {
    let end = wm
        .initializers
        .iter()
        .map(|e| e.offset + e.length)
        .max()
        .unwrap_or(0);
    let e = wm
        .initializers
        .iter_mut()
        .find(|e| e.source == CONV_IN && e.parts.is_empty())
        .ok_or_else(|| format!("the UNet weight map has no `{CONV_IN}` entry"))?;
    if e.transform != Transform::Identity
        || e.shape.len() != 4
        || e.shape[1] != PLAIN_CHANNELS
        || e.length % PLAIN_CHANNELS != 0
    {
        return Err(format!(
            "`{CONV_IN}` is {:?} {:?}, not a {PLAIN_CHANNELS}-channel convolution",
            e.transform, e.shape
        ));
    }
    e.shape[1] = INPAINT_CHANNELS;
    e.length = e.length / PLAIN_CHANNELS * INPAINT_CHANNELS;
    e.offset = end.div_ceil(ALIGN) * ALIGN;
    Ok(Placement {
        name: e.name.clone(),
        dims: e.shape.clone(),
        offset: e.offset,
        length: e.length,
    })
}

/// The UNet graph `bytes` with the initializer of `p` moved and widened, and the `sample` input
/// taking [`INPAINT_CHANNELS`] channels.
pub fn graph(bytes: &[u8], p: &Placement) -> Result<Vec<u8>, String> {
    let mut model = ModelProto::decode(bytes).map_err(|e| e.to_string())?;
    let g = model.graph.as_mut().ok_or("the UNet graph has no graph")?;
    let init = g
        .initializer
        .iter_mut()
        .find(|t| t.name() == p.name)
        .ok_or_else(|| format!("the UNet graph has no initializer `{}`", p.name))?;
    init.dims = p.dims.iter().map(|&d| d as i64).collect();
    init.external_data
        .retain(|kv| !matches!(kv.key(), "offset" | "length"));
    for (key, value) in [("offset", p.offset), ("length", p.length)] {
        init.external_data.push(StringStringEntryProto {
            key: Some(key.into()),
            value: Some(value.to_string()),
        });
    }
    let sample = g
        .input
        .iter_mut()
        .find(|v| v.name() == SAMPLE)
        .ok_or_else(|| format!("the UNet graph has no `{SAMPLE}` input"))?;
    let dim = match sample.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        Some(type_proto::Value::TensorType(t)) => t.shape.as_mut().and_then(|s| s.dim.get_mut(1)),
        _ => None,
    }
    .ok_or_else(|| format!("the UNet's `{SAMPLE}` input has no channel dimension"))?;
    match dim.value {
        Some(Dim::DimValue(c)) if c == PLAIN_CHANNELS as i64 => {}
        ref other => {
            return Err(format!(
                "the UNet's `{SAMPLE}` input has {other:?} channels, not {PLAIN_CHANNELS}"
            ))
        }
    }
    dim.value = Some(Dim::DimValue(INPAINT_CHANNELS as i64));
    Ok(model.encode_to_vec())
}

/// The UNet config with `in_channels` [`INPAINT_CHANNELS`].
pub fn config(mut config: serde_json::Value) -> serde_json::Value {
    if let Some(c) = config.as_object_mut() {
        c.insert("in_channels".into(), INPAINT_CHANNELS.into());
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::graph::Graph;
    use crate::model::template::Template;
    use crate::model::ComponentKind;
    use std::path::Path;

    /// The widened tiny SDXL UNet: every external initializer agrees with its weight-map entry,
    /// conv_in takes 9 channels after every other weight, the rest is where it was; `sample` is
    /// 9 channels wide, and the graph has no fused twin (the fused graph is not widened).
    #[test]
    fn the_tiny_sdxl_unet_widens_to_nine_channels() {
        let base = Template::named("tiny-sdxl").unwrap();
        let t = base.inpainting().expect("a 4-channel UNet widens");
        assert!(t.inpainting().is_none(), "a widened UNet widens again");
        let before = base.weightmap(ComponentKind::Unet, false).unwrap().unwrap();
        let wm = t.weightmap(ComponentKind::Unet, false).unwrap().unwrap();
        assert!(t.weightmap(ComponentKind::Unet, true).unwrap().is_none());
        assert!(t
            .weightmap(ComponentKind::TextEncoder, true)
            .unwrap()
            .is_some());
        let end = before
            .initializers
            .iter()
            .map(|e| e.offset + e.length)
            .max();
        for (a, b) in before.initializers.iter().zip(&wm.initializers) {
            if a.source == CONV_IN {
                assert_eq!(b.shape, vec![a.shape[0], 9, a.shape[2], a.shape[3]]);
                assert_eq!(b.length, a.length / 4 * 9);
                assert!(Some(b.offset) >= end && b.offset % ALIGN == 0);
            } else {
                assert_eq!(a, b);
            }
        }
        let bytes = t.file("unet/model.onnx").unwrap();
        let g = Graph::from_bytes(Path::new("widened"), bytes.clone()).unwrap();
        assert_eq!(g.externals.len(), wm.initializers.len());
        for x in &g.externals {
            let e = wm.initializers.iter().find(|e| e.name == x.name).unwrap();
            assert_eq!(
                (x.offset, x.length, &x.dims),
                (e.offset, e.length, &e.shape)
            );
        }
        let model = ModelProto::decode(bytes.as_slice()).unwrap();
        let sample = model
            .graph
            .unwrap()
            .input
            .into_iter()
            .find(|v| v.name() == SAMPLE);
        let Some(type_proto::Value::TensorType(tt)) = sample.and_then(|s| s.r#type?.value) else {
            panic!("no sample input")
        };
        assert_eq!(tt.shape.unwrap().dim[1].value, Some(Dim::DimValue(9)));
        assert_eq!(t.config(ComponentKind::Unet).unwrap()["in_channels"], 9);
        assert_eq!(base.config(ComponentKind::Unet).unwrap()["in_channels"], 4);
    }

    /// A weight map whose conv_in is not a 4-channel convolution is refused, unchanged.
    #[test]
    fn a_conv_in_of_another_shape_is_refused() {
        let t = Template::named("tiny-sd15-inpaint").unwrap();
        assert!(t.inpainting().is_none());
        let mut wm = t.weightmap(ComponentKind::Unet, false).unwrap().unwrap();
        let before = wm.clone();
        let e = weightmap(&mut wm).unwrap_err();
        assert!(e.contains("not a 4-channel"), "{e}");
        assert_eq!(wm, before);
        let mut none = WeightMap {
            format: 1,
            external_file: "weights.bin".into(),
            initializers: vec![],
        };
        assert!(weightmap(&mut none)
            .unwrap_err()
            .contains("no `conv_in.weight`"));
    }
}
