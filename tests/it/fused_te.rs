//! The text encoders' fused fp16 graphs (`text_encoder*/model.fused.onnx`, scripts/te_fused.py:
//! ONNX Runtime's Attention, SkipLayerNormalization, QuickGelu/BiasGelu). Their weights, assembled
//! by stipple by the recorded recipes (the packed QKV weight among them), must be byte for byte what
//! numpy makes of the same parameters; and since ONNX Runtime has CPU kernels for these operators,
//! the graphs run here too (`--te-graph fused`): conditioning against the fp32 graphs and
//! transformers, images against diffusers, textual inversion, clip skip and a LoRA's text-encoder
//! part (baked, resident, device patch). On CUDA the automatic choice takes them with fp16 encoders.

use crate::sdxl::tiny_sdxl;
use crate::te_precision::{
    assert_clip_skip_two, assert_close, conditioning, conditioning_matches_fp32_and_transformers,
    diff, huge_embedding, images_match_diffusers, load_with as load, lora_conditionings,
};
use crate::util::*;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use stipple::model::layout::{ComponentKind, GraphKind};
use stipple::model::{Model, Transform};
use stipple::patch::assemble_graph;
use stipple::pipeline::sessions::te_graph;
use stipple::runtime::session::{GraphChoice, TePrecision};
use stipple::runtime::{Device, SessionOptions};

fn tiny_sd2() -> PathBuf {
    root().join("tests/fixtures/tiny-sd2")
}

/// fp16 text encoders on their fused graph (CPU here: asked for by `--te-graph fused`).
fn fused() -> SessionOptions {
    SessionOptions {
        te_precision: TePrecision::Fp16,
        te_graph: GraphChoice::Cuda,
        ..SessionOptions::default()
    }
}

fn fp32() -> SessionOptions {
    SessionOptions {
        te_precision: TePrecision::Fp32,
        ..SessionOptions::default()
    }
}

#[derive(serde::Deserialize)]
struct RefInit {
    sha256: String,
    dtype: String,
    shape: Vec<usize>,
}

#[test]
fn fused_text_encoder_weights_equal_numpys() {
    let fixtures = root().join("tests/fixtures");
    // (model to open, fixture whose reference hashes it must match): folders, and single-file
    // checkpoints whose graphs come from the embedded templates.
    let cases = [
        (tiny_model(), tiny_model()),
        (tiny_sd2(), tiny_sd2()),
        (tiny_sdxl(), tiny_sdxl()),
        (
            fixtures.join("single-file/tiny-sd15.safetensors"),
            tiny_model(),
        ),
        (
            fixtures.join("single-file/tiny-sdxl.safetensors"),
            tiny_sdxl(),
        ),
    ];
    for (path, fixture) in cases {
        let model = Model::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let encoders = model.index.family.facts().encoders;
        assert!(!encoders.is_empty());
        for e in encoders {
            let kind = e.component;
            let c = model.component(kind).unwrap();
            let (_, wm) = c
                .graph_of(GraphKind::Fused)
                .unwrap_or_else(|| panic!("{} {kind}: no fused graph", path.display()));
            let (buf, stats) = assemble_graph(c, GraphKind::Fused, &HashMap::new()).unwrap();
            let file = fixture.join(format!(
                "reference/{}_fused_initializers.json",
                kind.dir_name()
            ));
            let refs: HashMap<String, RefInit> =
                serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            let mut seen: HashMap<Transform, usize> = HashMap::new();
            for e in &wm.initializers {
                let want = &refs[&e.name];
                assert_eq!(
                    (&want.shape, &want.dtype),
                    (&e.shape, &e.dtype),
                    "{}",
                    e.name
                );
                let got = format!("{:x}", Sha256::digest(&buf[e.offset..e.offset + e.length]));
                assert_eq!(
                    got,
                    want.sha256,
                    "{} ({:?}) in {}",
                    e.name,
                    e.transform,
                    path.display()
                );
                *seen.entry(e.transform).or_insert(0) += 1;
            }
            assert_eq!(stats.initializers, wm.initializers.len());
            assert_eq!(refs.len(), wm.initializers.len());
            for t in [
                Transform::PackHeads,
                Transform::Transpose,
                Transform::Identity,
            ] {
                assert!(
                    seen.get(&t).copied().unwrap_or(0) > 0,
                    "{kind}: no {t:?} weight"
                );
            }
            // Every parameter of the encoder reaches the fused graph (none silently left out).
            let plain: BTreeSet<&str> = c
                .weightmap
                .initializers
                .iter()
                .map(|e| e.source.as_str())
                .collect();
            let used: BTreeSet<&str> = wm.initializers.iter().flat_map(|e| e.sources()).collect();
            assert_eq!(plain, used, "{} {kind}", path.display());
        }
    }
}

/// Each family's fused conditioning (and SDXL's pooled embedding) against its fp32 graph's and the
/// transformers reference of the same prompt: within the fp16 graphs' tolerance.
#[test]
fn fused_text_encoders_match_fp32_and_transformers() {
    for model in [tiny_model(), tiny_sd2(), tiny_sdxl()] {
        let mut f = load(&model, fused(), None);
        let mut full = load(&model, fp32(), None);
        assert_eq!((f.te_precision(), f.te_graph()), ("fp16", "fused"));
        assert_eq!(full.te_graph(), "plain");
        conditioning_matches_fp32_and_transformers(&model, &mut f, &mut full, "fused");
    }
}

/// Images made with the fused text encoders against diffusers' (fp32) reference images: within
/// 1/255 on average, as the fp32 path.
#[test]
fn fused_text_encoder_images_match_diffusers_within_one_level() {
    for model in [tiny_model(), tiny_sdxl()] {
        let mut g = load(&model, fused(), None);
        images_match_diffusers(&model, &mut g, 1, "fused text encoders");
        assert_eq!(g.te_graph(), "fused", "no overflow on an ordinary prompt");
    }
}

/// Textual-inversion vectors reach the fused graph (its token lookup gets the same rewrite):
/// equal to the plain fp16 graph's conditioning within the fp16 tolerance, SD1.5 and SDXL.
#[test]
fn embeddings_reach_the_fused_text_encoder() {
    let dir = root().join("tests/fixtures/embeddings");
    let plain16 = SessionOptions {
        te_graph: GraphChoice::Plain,
        ..fused()
    };
    let sd15 = ["a photo of stipplestyle", "stipplemulti, a red fox"];
    for (model, prompts) in [
        (tiny_model(), &sd15[..]),
        (tiny_sdxl(), &["a stipplexl cat"][..]),
    ] {
        let mut f = load(&model, fused(), Some(dir.clone()));
        let mut p = load(&model, plain16.clone(), Some(dir.clone()));
        assert_eq!(p.te_graph(), "plain");
        for text in prompts {
            let prompt = stipple::prompt::parse(text).unwrap();
            let a = f.encode_prompt_pooled(&prompt.fragments).unwrap();
            let b = p.encode_prompt_pooled(&prompt.fragments).unwrap();
            assert!(!a.embeddings.is_empty(), "{text:?}: an embedding found");
            assert_eq!(
                a.embeddings, b.embeddings,
                "{text:?}: the same vectors found"
            );
            assert_close(
                &format!("{} {text:?}", model.display()),
                &a.chunks[0],
                &b.chunks[0],
            );
        }
    }
}

/// `--clip-skip 2` reads the fused graph's penultimate output: diffusers' `clip_skip=1` prompt
/// embeddings within the fp16 tolerance.
#[test]
fn clip_skip_two_works_with_the_fused_text_encoder() {
    let file = root().join("tests/fixtures/single-file/tiny-sd15.safetensors");
    let mut g = load(
        &file,
        SessionOptions {
            clip_skip: Some(2),
            ..fused()
        },
        None,
    );
    assert_eq!(g.te_graph(), "fused");
    assert_clip_skip_two(&mut g, "fused");
}

/// A LoRA's text-encoder part reaches the fused graph, its Q/K/V through the packed weight: with
/// baked weights, resident ones patched on the host, and the device patch, at two strengths,
/// against the fp32 graph with the same LoRA.
#[test]
fn a_lora_patches_the_fused_text_encoder_baked_resident_and_on_the_device() {
    let (full, _) = lora_conditionings(fp32());
    assert!(
        diff(&full.1, &full.0).0 > 0.05,
        "the LoRA changes the text encoder"
    );
    for (name, resident, device) in [
        ("baked", Some(false), None),
        ("resident", Some(true), Some(false)),
        ("device patch", Some(true), Some(true)),
    ] {
        let (got, graph) = lora_conditionings(SessionOptions {
            resident,
            patch_on_device: device,
            ..fused()
        });
        assert_eq!(graph, "fused", "{name}");
        assert_close(&format!("{name}: base"), &got.0, &full.0);
        assert_close(&format!("{name}: LoRA 1"), &got.1, &full.1);
        assert_close(&format!("{name}: LoRA 0.5"), &got.2, &full.2);
    }
}

/// Which graph the sessions are built with: auto takes the fused graph for fp16 encoders on CUDA
/// only, `plain` keeps the plain fp16 graph, fp32 stays fp32; a model without the fused graph
/// runs its plain fp16 one under auto, and asking for the fused one is an error naming the script.
#[test]
fn the_fused_text_encoder_is_chosen_on_cuda_with_fp16_encoders() {
    let sdxl = Model::open(&tiny_sdxl()).unwrap();
    let pick = |model: &Model, kind, te_precision, choice, device| {
        let opts = SessionOptions {
            te_precision,
            te_graph: choice,
            device,
            ..SessionOptions::default()
        };
        te_graph(model, &opts, kind).map_err(|e| e.to_string())
    };
    use GraphChoice as G;
    use TePrecision as P;
    for kind in [ComponentKind::TextEncoder, ComponentKind::TextEncoder2] {
        let cuda = Device::Cuda(0);
        assert_eq!(
            pick(&sdxl, kind, P::Fp16, G::Auto, cuda),
            Ok(GraphKind::Fused)
        );
        assert_eq!(
            pick(&sdxl, kind, P::Fp16, G::Plain, cuda),
            Ok(GraphKind::Cuda)
        );
        assert_eq!(
            pick(&sdxl, kind, P::Fp32, G::Auto, cuda),
            Ok(GraphKind::Plain)
        );
        assert_eq!(
            pick(&sdxl, kind, P::Fp32, G::Cuda, cuda),
            Ok(GraphKind::Plain)
        );
        assert_eq!(
            pick(&sdxl, kind, P::Fp16, G::Auto, Device::Cpu),
            Ok(GraphKind::Cuda)
        );
        assert_eq!(
            pick(&sdxl, kind, P::Fp16, G::Cuda, Device::Cpu),
            Ok(GraphKind::Fused)
        );
    }
    // On CUDA auto is the fused fp16 graph for every family (GPU-checked, faster); not on the CPU.
    let sd15 = Model::open(&tiny_model()).unwrap();
    let te = ComponentKind::TextEncoder;
    assert_eq!(
        pick(&sd15, te, P::Auto, G::Auto, Device::Cuda(0)),
        Ok(GraphKind::Fused)
    );
    assert_eq!(
        pick(&sd15, te, P::Auto, G::Plain, Device::Cuda(0)),
        Ok(GraphKind::Cuda)
    );
    assert_eq!(
        pick(&sd15, te, P::Auto, G::Auto, Device::Cpu),
        Ok(GraphKind::Plain)
    );
    for kind in [ComponentKind::TextEncoder, ComponentKind::TextEncoder2] {
        assert_eq!(
            pick(&sdxl, kind, P::Auto, G::Auto, Device::Cuda(0)),
            Ok(GraphKind::Fused)
        );
        assert_eq!(
            pick(&sdxl, kind, P::Auto, G::Auto, Device::Cpu),
            Ok(GraphKind::Plain)
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&tiny_model(), tmp.path());
    for f in ["model.fused.onnx", "weightmap.fused.json"] {
        std::fs::remove_file(tmp.path().join("text_encoder").join(f)).unwrap();
    }
    let without = Model::open(tmp.path()).unwrap();
    let kind = ComponentKind::TextEncoder;
    assert_eq!(
        pick(&without, kind, P::Fp16, G::Auto, Device::Cuda(0)),
        Ok(GraphKind::Cuda)
    );
    let err = pick(&without, kind, P::Fp16, G::Cuda, Device::Cuda(0)).unwrap_err();
    assert!(
        err.contains("te_fused.py") && err.contains("--te-graph plain"),
        "{err}"
    );
}

/// Conditioning that comes out of the fused fp16 graph non-finite (an embedding with values fp16
/// cannot hold) is encoded again in fp32, and fp32 is kept, as with the plain fp16 graph.
#[test]
fn an_overflowing_fused_text_encoder_is_redone_in_fp32() {
    let tmp = huge_embedding();
    let dir = Some(tmp.path().to_path_buf());
    let mut f = load(&tiny_model(), fused(), dir.clone());
    let mut full = load(&tiny_model(), fp32(), dir);
    assert_eq!(f.te_graph(), "fused");
    let want = conditioning(&mut full, "a stipplehuge fox");
    assert!(want.iter().all(|x| x.is_finite()));
    assert_eq!(
        conditioning(&mut f, "a stipplehuge fox"),
        want,
        "redone in fp32"
    );
    assert_eq!((f.te_precision(), f.te_graph()), ("fp32", "plain"));
}

/// An adapter that changes only the Q and V biases of the first layer (LyCORIS full: a zero `diff`
/// and a `diff_b`) reaches the fused graph's packed bias, the one `pack_heads` entry of one
/// dimension: with baked weights, resident ones patched on the host, and the device patch's
/// program, against the fp32 graph with the same adapter.
#[test]
fn an_adapter_on_the_qkv_biases_reaches_the_packed_bias() {
    use stipple::safetensors_out::{write, Dtype, OutTensor};
    let tmp = tempfile::tempdir().unwrap();
    let mut tensors = Vec::new();
    for (p, scale) in [("q", 0.5f32), ("v", 0.8)] {
        let name = format!("lora_te_text_model_encoder_layers_0_self_attn_{p}_proj");
        let zeros = vec![0f32; 32 * 32];
        let bias: Vec<f32> = (0..32).map(|i| scale * ((i % 7) as f32 - 3.0)).collect();
        for (suffix, shape, values) in [("diff", vec![32, 32], zeros), ("diff_b", vec![32], bias)] {
            tensors.push(OutTensor {
                name: format!("{name}.{suffix}"),
                dtype: Dtype::F32,
                shape,
                bytes: Dtype::F32.encode(&values),
            });
        }
    }
    write(
        &tmp.path().join("qvbias.safetensors"),
        &tensors,
        &Default::default(),
    )
    .unwrap();
    let conditionings = |session: SessionOptions| {
        let mut g = load(&tiny_model(), session, None);
        g.set_lora_dirs(vec![tmp.path().to_path_buf()]);
        let base = g.encode_text("a red fox").unwrap();
        g.prepare(&small_job("a red fox <lora:qvbias:1>", 1))
            .unwrap();
        let with = g.encode_text("a red fox").unwrap();
        g.prepare(&small_job("a red fox", 1)).unwrap();
        (
            base,
            with,
            g.encode_text("a red fox").unwrap(),
            g.te_graph(),
        )
    };
    let full = conditionings(fp32());
    assert!(
        diff(&full.1, &full.0).0 > 0.05,
        "the biases change the conditioning"
    );
    assert_eq!(full.2, full.0, "and back");
    for (name, resident, device) in [
        ("baked", Some(false), None),
        ("resident", Some(true), Some(false)),
        ("device patch", Some(true), Some(true)),
    ] {
        let got = conditionings(SessionOptions {
            resident,
            patch_on_device: device,
            ..fused()
        });
        assert_eq!(got.3, "fused", "{name}");
        assert_close(&format!("{name}: base"), &got.0, &full.0);
        assert_close(&format!("{name}: Q/V biases"), &got.1, &full.1);
        assert_close(&format!("{name}: back"), &got.2, &full.2);
    }
}
