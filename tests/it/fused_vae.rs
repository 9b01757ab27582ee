//! The VAE decoder's fused CUDA graph (`vae_decoder/model.fused.onnx`, scripts/vae_fused.py: ONNX
//! Runtime's NhwcConv, GroupNorm and SkipGroupNorm in fp16): its weights, assembled by stipple from
//! the diffusers parameters of a folder or a checkpoint by the recorded recipes, must be byte for
//! byte what ORT's optimizer wrote (sha256 in reference/vae_decoder_fused_initializers.json), every
//! large weight must come from a recipe, and the graph is picked only on CUDA with an fp16 VAE. The
//! picture needs CUDA: scripts/gpu_check.sh (mode vae-fused) compares it with the plain graph's.

use crate::util::*;
use prost::Message;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use stipple::model::layout::{ComponentKind, GraphKind};
use stipple::model::onnx_proto::ModelProto;
use stipple::model::{Model, OpenOptions, Transform};
use stipple::patch::assemble_graph;
use stipple::runtime::session::GraphChoice;
use stipple::runtime::Device;

#[derive(serde::Deserialize)]
struct RefInit {
    sha256: String,
    dtype: String,
    shape: Vec<usize>,
}

fn optimizer_weights(fixture: &Path) -> HashMap<String, RefInit> {
    let path = fixture.join("reference/vae_decoder_fused_initializers.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// (model to open, fixture folder whose optimizer hashes it must match)
fn cases() -> Vec<(PathBuf, PathBuf)> {
    let fixtures = root().join("tests/fixtures");
    vec![
        (tiny_model(), tiny_model()),
        (fixtures.join("tiny-sdxl"), fixtures.join("tiny-sdxl")),
        (fixtures.join("tiny-sd2"), fixtures.join("tiny-sd2")),
        // A single-file checkpoint: the graph and weight map come from the embedded template.
        (
            fixtures.join("single-file/tiny-sd15.safetensors"),
            tiny_model(),
        ),
    ]
}

#[test]
fn fused_vae_weights_equal_what_the_optimizer_wrote() {
    for (path, fixture) in cases() {
        let model = Model::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let vae = model.component(ComponentKind::VaeDecoder).unwrap();
        let (_, wm) = vae
            .graph_of(GraphKind::Fused)
            .unwrap_or_else(|| panic!("{} has no fused VAE graph", path.display()));
        let (buf, stats) = assemble_graph(vae, GraphKind::Fused, &HashMap::new()).unwrap();
        let refs = optimizer_weights(&fixture);
        let mut seen: HashMap<Transform, usize> = HashMap::new();
        for e in &wm.initializers {
            let want = refs
                .get(&e.name)
                .unwrap_or_else(|| panic!("{} is not in the optimizer's output", e.name));
            assert_eq!(want.shape, e.shape, "{}", e.name);
            assert_eq!(want.dtype, e.dtype, "{}", e.name);
            let got = format!("{:x}", Sha256::digest(&buf[e.offset..e.offset + e.length]));
            assert_eq!(
                got,
                want.sha256,
                "{} ({:?}) differs from ORT's optimizer in {}",
                e.name,
                e.transform,
                path.display()
            );
            *seen.entry(e.transform).or_insert(0) += 1;
        }
        assert_eq!(stats.initializers, wm.initializers.len());
        assert_eq!(refs.len(), wm.initializers.len(), "{}", path.display());
        // Convolutions are repacked channels-last; norms and biases are taken as they are.
        for t in [Transform::Nhwc, Transform::Identity] {
            assert!(seen.get(&t).copied().unwrap_or(0) > 0, "no {t:?} weight");
        }
        // Every parameter of the decoder reaches the fused graph (none silently left out).
        let plain: std::collections::BTreeSet<&str> = vae
            .weightmap
            .initializers
            .iter()
            .map(|e| e.source.as_str())
            .collect();
        let fused: std::collections::BTreeSet<&str> =
            wm.initializers.iter().flat_map(|e| e.sources()).collect();
        assert_eq!(plain, fused, "{}", path.display());
    }
}

/// The fused graph made f32 at load ([`GraphKind::Fused32`]) reads the same parameters by the same
/// recipes as the fp16 one, in f32: every value rounds to exactly the fp16 graph's (which ORT's
/// optimizer's hashes pin above), and the graph has the fp16 one's nodes with no fp16 left.
#[test]
fn the_f32_fused_vae_reads_the_fp16_ones_weights_in_f32() {
    for (path, _) in cases() {
        let model = Model::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        f32_weights_round_to_the_fp16_ones(&model, &path.display().to_string());
    }
    // A separate VAE file (`--vae`) rebuilds the decoder: its f32 graph reads that file's weights.
    let own = Model::open(&tiny_model()).unwrap();
    let vae_file = root().join("tests/fixtures/single-file/tiny-vae.safetensors");
    let other = Model::open_with(
        &tiny_model(),
        OpenOptions {
            vae: Some(vae_file.clone()),
            ..OpenOptions::default()
        },
    )
    .unwrap();
    f32_weights_round_to_the_fp16_ones(&other, "tiny-sd15 with --vae");
    let f32_buffer = |m: &Model| {
        let vae = m.component(ComponentKind::VaeDecoder).unwrap();
        assemble_graph(vae, GraphKind::Fused32, &HashMap::new())
            .unwrap()
            .0
    };
    assert_ne!(
        f32_buffer(&own),
        f32_buffer(&other),
        "with {}, the f32 graph still reads the model's own VAE",
        vae_file.display()
    );
}

/// Checks `model`'s [`GraphKind::Fused32`] decoder against its [`GraphKind::Fused`] one.
fn f32_weights_round_to_the_fp16_ones(model: &Model, what: &str) {
    let vae = model.component(ComponentKind::VaeDecoder).unwrap();
    let (g16, wm16) = vae.graph_of(GraphKind::Fused).unwrap();
    let (g32, wm32) = vae
        .graph_of(GraphKind::Fused32)
        .unwrap_or_else(|| panic!("{what}: no f32 fused VAE graph"));
    let (b16, _) = assemble_graph(vae, GraphKind::Fused, &HashMap::new()).unwrap();
    let (b32, stats) = assemble_graph(vae, GraphKind::Fused32, &HashMap::new()).unwrap();
    assert_eq!(stats.initializers, wm16.initializers.len());
    let mut widened = 0;
    for (e16, e32) in wm16.initializers.iter().zip(&wm32.initializers) {
        assert_eq!(
            (&e16.name, &e16.sources(), e16.transform, &e16.shape),
            (&e32.name, &e32.sources(), e32.transform, &e32.shape)
        );
        assert_eq!(e32.dtype, "float32", "{}", e32.name);
        let f32s: Vec<f32> = b32[e32.offset..e32.offset + e32.length]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let old = &b16[e16.offset..e16.offset + e16.length];
        if e16.dtype == "float32" {
            assert_eq!(
                old,
                &b32[e32.offset..e32.offset + e32.length],
                "{}",
                e16.name
            );
            continue;
        }
        widened += 1;
        for (i, (v, h)) in f32s.iter().zip(old.chunks_exact(2)).enumerate() {
            let h = half::f16::from_le_bytes([h[0], h[1]]);
            assert_eq!(half::f16::from_f32(*v), h, "{}[{i}]: {v}", e16.name);
        }
    }
    assert!(widened > 30, "{what}: {widened} fp16 weights");
    let nodes = |g: &stipple::model::graph::Graph| {
        let m = ModelProto::decode(g.bytes.as_slice()).unwrap();
        m.graph
            .unwrap()
            .node
            .into_iter()
            .map(|n| n.op_type.unwrap_or_default())
            .collect::<Vec<_>>()
    };
    assert_eq!(nodes(g16), nodes(g32), "{what}");
    let m = ModelProto::decode(g32.bytes.as_slice())
        .unwrap()
        .graph
        .unwrap();
    assert!(m.initializer.iter().all(|t| t.data_type != Some(10)));
}

#[test]
fn every_large_initializer_of_the_fused_vae_comes_from_a_recipe() {
    for fixture in ["tiny-sd15", "tiny-sd15-inpaint", "tiny-sd2", "tiny-sdxl"] {
        let path = root()
            .join("tests/fixtures")
            .join(fixture)
            .join("vae_decoder/model.fused.onnx");
        let model = ModelProto::decode(std::fs::read(&path).unwrap().as_slice()).unwrap();
        let graph = model.graph.unwrap();
        let (mut external, mut embedded_floats) = (0, Vec::new());
        for init in &graph.initializer {
            // 1 = FLOAT, 10 = FLOAT16; 1 = EXTERNAL.
            let float = matches!(init.data_type, Some(1) | Some(10));
            let elements: i64 = init.dims.iter().product();
            if init.data_location == Some(1) {
                external += 1;
            } else if float && elements >= 1024 {
                embedded_floats.push(format!("{:?} {:?}", init.name, init.dims));
            }
        }
        assert!(embedded_floats.is_empty(), "{fixture}: {embedded_floats:?}");
        let fused_ops: Vec<&str> = graph
            .node
            .iter()
            .filter_map(|n| n.op_type.as_deref())
            .filter(|op| matches!(*op, "NhwcConv" | "GroupNorm" | "SkipGroupNorm"))
            .collect();
        assert!(
            fused_ops.contains(&"NhwcConv") && fused_ops.contains(&"GroupNorm"),
            "{fixture}: {fused_ops:?}"
        );
        assert!(
            !graph
                .node
                .iter()
                .any(|n| n.op_type.as_deref() == Some("Conv")),
            "{fixture}: a Conv was left unfused"
        );
        assert!(external > 0);
    }
}

#[test]
fn the_fused_vae_is_chosen_only_on_cuda_with_an_fp16_vae() {
    let model = Model::open(&tiny_model()).unwrap();
    let dec = model.component(ComponentKind::VaeDecoder).unwrap();
    let enc = model.component(ComponentKind::VaeEncoder).unwrap();
    let cuda = Device::Cuda(0);
    let fp16 = GraphKind::Cuda;
    let fp32 = GraphKind::Plain;
    let pick = |c: GraphChoice, d: Device, p: GraphKind| c.resolve_fused(d, dec, p);
    assert_eq!(pick(GraphChoice::Auto, cuda, fp16), Ok(GraphKind::Fused));
    assert_eq!(pick(GraphChoice::Cuda, cuda, fp16), Ok(GraphKind::Fused));
    assert_eq!(pick(GraphChoice::Plain, cuda, fp16), Ok(fp16));
    // fp32 (asked for, or after an fp16 overflow) runs the fused graph made f32 on CUDA, the
    // plain fp32 graph when asked for or elsewhere.
    assert_eq!(pick(GraphChoice::Auto, cuda, fp32), Ok(GraphKind::Fused32));
    assert_eq!(pick(GraphChoice::Cuda, cuda, fp32), Ok(GraphKind::Fused32));
    assert_eq!(pick(GraphChoice::Plain, cuda, fp32), Ok(fp32));
    assert_eq!(pick(GraphChoice::Auto, Device::Cpu, fp32), Ok(fp32));
    assert_eq!(pick(GraphChoice::Auto, Device::DirectMl(0), fp32), Ok(fp32));
    // Other devices run the plain graphs; the contrib operators are CUDA's.
    assert_eq!(pick(GraphChoice::Auto, Device::Cpu, fp16), Ok(fp16));
    assert_eq!(pick(GraphChoice::Auto, Device::DirectMl(0), fp16), Ok(fp16));
    let err = pick(GraphChoice::Cuda, Device::Cpu, fp16).unwrap_err();
    assert!(err.contains("only on a CUDA device"), "{err}");
    // The encoder has no fused graph: its precision's graph, whatever is asked.
    assert_eq!(
        GraphChoice::Cuda.resolve_fused(cuda, enc, fp16),
        Ok(GraphKind::Cuda)
    );
    // The fp32 fallback's twin keeps the f32 fused graph, not the fp16 one.
    let twin = dec.plain_twin();
    assert_eq!(
        GraphChoice::Auto.resolve_fused(cuda, &twin, fp32),
        Ok(GraphKind::Fused32)
    );
    assert!(twin.graph_of(GraphKind::Fused).is_none());
    // A decoder without one: auto keeps the plain fp16 graph, asking for it says how to make it.
    assert_eq!(
        GraphChoice::Auto.resolve_fused(cuda, &twin, fp16),
        Ok(GraphKind::Cuda)
    );
    let err = GraphChoice::Cuda
        .resolve_fused(cuda, &twin, fp16)
        .unwrap_err();
    assert!(err.contains("vae_fused.py"), "{err}");
}

#[test]
fn asking_for_the_fused_vae_on_cpu_is_one_clear_error() {
    crate::fused_graph::refused_off_cuda(&["--vae-graph", "fused"]);
}

#[test]
fn a_wrong_recipe_in_the_fused_vae_weight_map_is_refused_on_open() {
    crate::fused_graph::wrong_recipe_is_refused(
        "vae_decoder/weightmap.fused.json",
        "nhwc",
        "model.fused.onnx",
        |e| e["transform"] = "identity".into(),
    );
}
