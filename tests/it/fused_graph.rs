//! ONNX Runtime's SD-fused CUDA graph (`unet/model.cuda.onnx`) of both tiny models: its weights,
//! assembled from the diffusers parameters by the recorded recipes, must be byte for byte what ORT's
//! optimizer wrote (the sha256 of each in reference/unet_cuda_initializers.json, saved by
//! scripts/ort_fused.py), and adapters must reach packed QKV/KV and NHWC weights. The graph itself
//! needs CUDA; CI checks the CPU refusal.

use crate::util::*;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use stipple::model::layout::{ComponentKind, GraphKind};
use stipple::model::{Model, Transform};
use stipple::patch::assemble_graph;
use stipple::runtime::session::GraphChoice;
use stipple::runtime::Device;

#[derive(serde::Deserialize)]
struct RefInit {
    sha256: String,
    dtype: String,
    shape: Vec<usize>,
}

/// The optimizer's initializers of `model`'s fused graph: name → sha256, dtype, shape.
fn optimizer_weights(model: &Path) -> HashMap<String, RefInit> {
    let path = model.join("reference/unet_cuda_initializers.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn models() -> [PathBuf; 2] {
    [tiny_model(), crate::sdxl::tiny_sdxl()]
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
    for dir in models() {
        let model = Model::open(&dir).unwrap();
        let unet = model.component(ComponentKind::Unet).unwrap();
        let (_, wm) = unet
            .graph_of(GraphKind::Cuda)
            .expect("the tiny model has a fused graph");
        let (buf, stats) = assemble_graph(unet, GraphKind::Cuda, &HashMap::new()).unwrap();
        let refs = optimizer_weights(&dir);
        let mut seen = HashMap::new();
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
                dir.display()
            );
            *seen.entry(e.transform).or_insert(0) += 1;
        }
        assert_eq!(stats.initializers, wm.initializers.len());
        assert_eq!(refs.len(), wm.initializers.len());
        // Each tiny UNet has every kind of repacked weight the full-size ones have.
        for t in [
            Transform::Identity,
            Transform::Transpose,
            Transform::Nhwc,
            Transform::PackHeads,
        ] {
            assert!(
                seen.get(&t).copied().unwrap_or(0) > 0,
                "no {t:?} weight in {}",
                dir.display()
            );
        }
    }
}

/// Column of the packed `[in, heads*k*dim]` weight that holds row `r` of part `p`.
fn packed_col(r: usize, p: usize, k: usize, heads: usize, rows: usize) -> usize {
    let dim = rows / heads;
    (r / dim * k + p) * dim + r % dim
}

#[test]
fn adapters_reach_packed_attention_and_nhwc_conv_weights() {
    adapter_reaches_fused_weights(&tiny_model(), "tests/fixtures/lora/lyco_locon.safetensors");
    adapter_reaches_fused_weights(
        &crate::sdxl::tiny_sdxl(),
        "tests/fixtures/lora-sdxl/xl_kohya_locon.safetensors",
    );
}

fn adapter_reaches_fused_weights(dir: &Path, lora: &str) {
    let model = Model::open(dir).unwrap();
    let unet = model.component(ComponentKind::Unet).unwrap();
    let (_, wm) = unet.graph_of(GraphKind::Cuda).unwrap();
    // The unpatched fused buffer is ORT's own (the test above); the patched one must differ from it
    // by exactly the deltas, moved where the recipe puts their elements.
    let (base_buf, _) = assemble_graph(unet, GraphKind::Cuda, &HashMap::new()).unwrap();
    let loras = active_loras(&[root().join(lora).display().to_string()]);
    let deltas = fused_deltas(&model, &loras);
    let d = &deltas[&ComponentKind::Unet];
    let (buf, stats) = assemble_graph(unet, GraphKind::Cuda, d).unwrap();
    let mut patched = HashMap::new();
    for e in &wm.initializers {
        let base = values(&base_buf[e.offset..e.offset + e.length], &e.dtype);
        let got = values(&buf[e.offset..e.offset + e.length], &e.dtype);
        // Expected: the base value plus the delta element that lands there, rounded once.
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
            "{lora} patches no {t:?} weight, so the test proves nothing about it"
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
    // A fused graph not yet checked on a GPU runs only when asked for.
    let mut opt_in = Model::open(&tiny_model()).unwrap();
    let unet = opt_in.components.get_mut(&ComponentKind::Unet).unwrap();
    unet.cuda_opt_in = true;
    assert_eq!(
        GraphChoice::Auto.resolve(cuda, unet).unwrap(),
        GraphKind::Plain
    );
    assert_eq!(
        GraphChoice::Cuda.resolve(cuda, unet).unwrap(),
        GraphKind::Cuda
    );
    assert!("fused".parse::<GraphChoice>().is_ok());
    assert!("nhwc"
        .parse::<GraphChoice>()
        .unwrap_err()
        .contains("auto, plain or cuda"));
}

#[test]
fn templates_carry_fused_unets_and_only_checked_ones_run_by_default() {
    use stipple::model::template::Template;
    // Every one has passed the GPU check since its time projections went back to fp32.
    for (name, opt_in) in [
        ("sd15-fp16", false),
        ("sdxl-fp16", false),
        ("sd2-fp16", false),
        ("sd15-inpaint-fp16", false),
    ] {
        let t = Template::named(name).unwrap();
        let wm = t
            .graph_weightmap(ComponentKind::Unet, GraphKind::Cuda)
            .unwrap();
        assert!(wm.is_some(), "{name}: no fused UNet");
        assert_eq!(t.fused_unet_opt_in(), opt_in, "{name}");
    }
}

/// `generate` with `args` (a CUDA-only graph asked for) on the CPU fails with one clear error.
pub fn refused_off_cuda(args: &[&str]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_stipple"))
        .current_dir(root())
        .args(["generate", "--prompt", "a fox", "--steps", "1"])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only on a CUDA device"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A copy of the tiny model whose weight map `map` (relative to the model) has the first entry
/// with `transform` changed by `edit` is refused on open, naming that initializer and `graph`.
pub fn wrong_recipe_is_refused(
    map: &str,
    transform: &str,
    graph: &str,
    edit: impl Fn(&mut serde_json::Value),
) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    copy_dir(&tiny_model(), &dir);
    let path = dir.join(map);
    let mut wm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let entry = wm["initializers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["transform"] == transform)
        .unwrap();
    let name = entry["name"].as_str().unwrap().to_string();
    edit(entry);
    std::fs::write(&path, serde_json::to_string(&wm).unwrap()).unwrap();
    let err = Model::open(&dir).err().expect("refused").to_string();
    assert!(err.contains(&name), "{err}");
    assert!(err.contains(graph), "{err}");
}

#[test]
fn asking_for_the_fused_graph_on_cpu_is_one_clear_error() {
    refused_off_cuda(&["--graph", "cuda"]);
}

#[test]
fn a_wrong_recipe_in_the_fused_weight_map_is_refused_on_open() {
    wrong_recipe_is_refused(
        "unet/weightmap.cuda.json",
        "pack_heads",
        "model.cuda.onnx",
        |e| {
            e["parts"].as_array_mut().unwrap().pop();
        },
    );
}
