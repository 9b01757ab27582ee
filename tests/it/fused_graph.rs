//! ONNX Runtime's SD-fused CUDA graph (`unet/model.cuda.onnx`): its weights, assembled from the
//! diffusers parameters by the recorded recipes, must equal what ORT's optimizer wrote
//! (reference/unet_cuda_initializers.safetensors, saved by scripts/ort_fused.py), and adapters must
//! reach packed QKV/KV and NHWC weights. The graph itself needs CUDA; CI checks the CPU refusal.

use crate::util::*;
use std::collections::HashMap;
use std::sync::Arc;
use stipple::lora::Adapter;
use stipple::model::layout::{ComponentKind, GraphKind};
use stipple::model::{Checkpoint, Model, Transform};
use stipple::patch::assemble_graph;
use stipple::pipeline::adapters::{self, ActiveLora};
use stipple::runtime::session::GraphChoice;
use stipple::runtime::Device;

fn optimizer_weights() -> Checkpoint {
    Checkpoint::open(&reference("unet_cuda_initializers.safetensors")).expect("reference weights")
}

fn values(bytes: &[u8], dtype: &str) -> Vec<f32> {
    match dtype {
        "float16" => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        "float32" => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        other => panic!("unexpected dtype {other}"),
    }
}

#[test]
fn fused_graph_weights_equal_what_the_optimizer_wrote() {
    let model = Model::open(&tiny_model()).unwrap();
    let unet = model.component(ComponentKind::Unet).unwrap();
    let (_, wm) = unet
        .graph_of(GraphKind::Cuda)
        .expect("the tiny model has a fused graph");
    let (buf, stats) = assemble_graph(unet, GraphKind::Cuda, &HashMap::new()).unwrap();
    let refs = optimizer_weights();
    let mut seen = HashMap::new();
    for e in &wm.initializers {
        let want = refs
            .tensor(&e.name)
            .unwrap_or_else(|| panic!("{} is not in the optimizer's output", e.name));
        assert_eq!(want.shape, e.shape.as_slice(), "{}", e.name);
        assert!(
            buf[e.offset..e.offset + e.length] == *want.data,
            "{} ({:?}) differs from ORT's optimizer",
            e.name,
            e.transform
        );
        *seen.entry(e.transform).or_insert(0) += 1;
    }
    assert_eq!(stats.initializers, wm.initializers.len());
    assert_eq!(refs.shapes().len(), wm.initializers.len());
    // The tiny UNet has every kind of repacked weight the SD1.5 one has.
    for t in [
        Transform::Identity,
        Transform::Transpose,
        Transform::Nhwc,
        Transform::PackHeads,
    ] {
        assert!(seen.get(&t).copied().unwrap_or(0) > 0, "no {t:?} weight");
    }
}

/// Column of the packed `[in, heads*k*dim]` weight that holds row `r` of part `p`.
fn packed_col(r: usize, p: usize, k: usize, heads: usize, rows: usize) -> usize {
    let dim = rows / heads;
    (r / dim * k + p) * dim + r % dim
}

#[test]
fn adapters_reach_packed_attention_and_nhwc_conv_weights() {
    let model = Model::open(&tiny_model()).unwrap();
    let unet = model.component(ComponentKind::Unet).unwrap();
    let (_, wm) = unet.graph_of(GraphKind::Cuda).unwrap();
    let path = root().join("tests/fixtures/lora/lyco_locon.safetensors");
    let (_, mut tag) = stipple::bake::parse_lora_arg(&path.display().to_string()).unwrap();
    let adapter = Adapter::open(&path).unwrap();
    tag.name = adapter.name();
    let loras = vec![ActiveLora {
        tag,
        path,
        adapter: Arc::new(adapter),
    }];
    let key = adapters::strengths_at(&loras, 0, 1);
    let deltas = adapters::compute(&model, &loras, &key).unwrap().0;
    let d = &deltas[&ComponentKind::Unet];
    let (buf, stats) = assemble_graph(unet, GraphKind::Cuda, d).unwrap();
    let refs = optimizer_weights();
    let mut patched = HashMap::new();
    for e in &wm.initializers {
        let base = values(refs.tensor(&e.name).unwrap().data, &e.dtype);
        let got = values(&buf[e.offset..e.offset + e.length], &e.dtype);
        // Expected: ORT's own base value plus the delta element that lands there, rounded once.
        let mut want: Vec<f32> = base.clone();
        let mut touched = false;
        for (p, src) in e.sources().iter().enumerate() {
            let Some(delta) = d.get(*src) else { continue };
            touched = true;
            let shape = unet.weights.tensor(src).unwrap().shape.to_vec();
            for (i, dv) in delta.iter().enumerate() {
                let at = match e.transform {
                    Transform::Identity => i,
                    Transform::Transpose => (i % shape[1]) * shape[0] + i / shape[1],
                    Transform::Nhwc => {
                        let (ci, kh, kw) = (shape[1], shape[2], shape[3]);
                        let (o, rest) = (i / (ci * kh * kw), i % (ci * kh * kw));
                        let (c, y, x) = (rest / (kh * kw), rest % (kh * kw) / kw, rest % kw);
                        ((o * kh + y) * kw + x) * ci + c
                    }
                    Transform::PackHeads => {
                        let (rows, cin) = (shape[0], shape[1]);
                        let k = e.parts.len();
                        let col = packed_col(i / cin, p, k, e.heads, rows);
                        (i % cin) * rows * k + col
                    }
                };
                want[at] = base[at] + dv;
            }
        }
        if touched {
            *patched.entry(e.transform).or_insert(0) += 1;
        }
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let w = if e.dtype == "float16" {
                half::f16::from_f32(*w).to_f32()
            } else {
                *w
            };
            assert_eq!(*g, w, "{} element {i} ({:?})", e.name, e.transform);
        }
    }
    assert!(stats.patched > 0);
    for t in [Transform::Nhwc, Transform::PackHeads, Transform::Transpose] {
        assert!(
            patched.get(&t).copied().unwrap_or(0) > 0,
            "the LoCon fixture patches no {t:?} weight, so the test proves nothing about it"
        );
    }
}

#[test]
fn the_fused_graph_is_chosen_only_where_it_can_run() {
    let model = Model::open(&tiny_model()).unwrap();
    let unet = model.component(ComponentKind::Unet).unwrap();
    let vae = model.component(ComponentKind::VaeDecoder).unwrap();
    let cuda = Device::Cuda(0);
    assert_eq!(
        GraphChoice::Auto.resolve(cuda, unet).unwrap(),
        GraphKind::Cuda
    );
    assert_eq!(
        GraphChoice::Auto.resolve(Device::Cpu, unet).unwrap(),
        GraphKind::Plain
    );
    assert_eq!(
        GraphChoice::Plain.resolve(cuda, unet).unwrap(),
        GraphKind::Plain
    );
    assert_eq!(
        GraphChoice::Cuda.resolve(cuda, vae).unwrap(),
        GraphKind::Plain
    );
    let err = GraphChoice::Cuda.resolve(Device::Cpu, unet).unwrap_err();
    assert!(err.contains("only on a CUDA device"), "{err}");
    assert!("fused".parse::<GraphChoice>().is_ok());
    assert!("nhwc"
        .parse::<GraphChoice>()
        .unwrap_err()
        .contains("auto, plain or cuda"));
}

#[test]
fn asking_for_the_fused_graph_on_cpu_is_one_clear_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stipple"))
        .current_dir(root())
        .args([
            "generate", "--graph", "cuda", "--prompt", "a fox", "--steps", "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only on a CUDA device"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_wrong_recipe_in_the_fused_weight_map_is_refused_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&tiny_model(), &dir);
    let path = dir.join("unet/weightmap.cuda.json");
    let mut wm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let entry = wm["initializers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["transform"] == "pack_heads")
        .unwrap();
    let name = entry["name"].as_str().unwrap().to_string();
    entry["parts"].as_array_mut().unwrap().pop();
    std::fs::write(&path, serde_json::to_string(&wm).unwrap()).unwrap();
    let err = Model::open(&dir).err().expect("refused").to_string();
    assert!(err.contains(&name), "{err}");
    assert!(err.contains("model.cuda.onnx"), "{err}");
}
