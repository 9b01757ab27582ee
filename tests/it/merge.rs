//! `lora merge` and `lora extract` against independent references: the engine's own ΔW of the sources
//! (itself checked against LyCORIS/peft), kohya's svd_merge algorithm re-implemented in torch
//! (scripts/lora_merge_reference.py), and a LoRA baked into an f32 model and extracted back.

use crate::util::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use stipple::lora::merge::{merge, MergeOptions, Mode};
use stipple::lora::svd::{Dynamic, Options, RankRule};
use stipple::lora::write::kohya_stem;
use stipple::lora::{Adapter, ModelParams, Strengths};
use stipple::model::Model;
use stipple::pipeline::adapters;
use stipple::pipeline::ComponentDeltas;

fn lora_dir() -> PathBuf {
    root().join("tests/fixtures/lora")
}

fn fixture(name: &str) -> String {
    lora_dir().join(name).display().to_string()
}

fn stipple(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_stipple"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Per parameter: (max |a − b| / max |b|, ‖a − b‖_F / ‖b‖_F). Both sides must change the same params.
fn compare(got: &ComponentDeltas, want: &ComponentDeltas) -> HashMap<String, (f32, f64)> {
    let mut out = HashMap::new();
    let names = |d: &ComponentDeltas| {
        let mut v: Vec<String> = d
            .iter()
            .flat_map(|(k, m)| m.keys().map(move |n| format!("{k}/{n}")))
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(got), names(want), "the same parameters change");
    for (kind, params) in want {
        for (name, w) in params {
            let g = &got[kind][name];
            let (mut r2, mut n2) = (0f64, 0f64);
            for (a, b) in g.iter().zip(w) {
                r2 += f64::from(a - b).powi(2);
                n2 += f64::from(*b).powi(2);
            }
            out.insert(
                format!("{kind}/{name}"),
                (max_rel_err(g, w), (r2 / n2.max(1e-30)).sqrt()),
            );
        }
    }
    out
}

#[test]
fn exact_merge_bakes_like_the_sources_applied_together() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("merged.safetensors");
    let inputs = vec![
        format!("{}:0.7", fixture("lyco_locon.safetensors")),
        format!("{}:0.5", fixture("lyco_locon_tucker.safetensors")),
        format!("{}:unet=-0.6:te=0.3", fixture("peft_diffusers.safetensors")),
        fixture("lyco_te.safetensors"),
        format!("{}:0.4:mid=0:out=1.5", fixture("kohya_ldm.safetensors")),
    ];
    let mut args = vec!["lora", "merge"];
    args.extend(inputs.iter().map(String::as_str));
    args.extend(["--out", out.to_str().unwrap()]);
    let text = ok(&stipple(&args));
    assert!(text.contains("wrote"), "{text}");

    let model = Model::open(&tiny_model()).unwrap();
    let want = fused_deltas(&model, &active_loras(&inputs));
    let got = fused_deltas(&model, &active_loras(&[out.display().to_string()]));
    let errs = compare(&got, &want);
    let worst = errs.values().fold(0f32, |m, e| m.max(e.0));
    println!(
        "exact merge: {} params, max relative |Δ| {worst:.2e}",
        errs.len()
    );
    assert!(worst <= 1e-5, "{errs:?}");

    // kohya metadata, the record of sources, and no silent overwrite.
    let merged = Adapter::open(&out).unwrap();
    let md = merged.metadata();
    assert_eq!(md["ss_network_module"], "networks.lora");
    assert_eq!(md["ss_network_dim"], "Dynamic");
    assert_eq!(md["ss_base_model_version"], "sd_v1");
    assert_eq!(md["modelspec.architecture"], "stable-diffusion-v1/lora");
    assert_eq!(md["modelspec.title"], "merged");
    assert_eq!(md["stipple.method"], "merge-exact");
    let sources: serde_json::Value = serde_json::from_str(&md["stipple.sources"]).unwrap();
    assert_eq!(sources[2]["name"], "peft_diffusers");
    assert_eq!(sources[2]["te"], 0.3);
    assert_eq!(sources[2]["in"], -0.6);
    let errs: serde_json::Value =
        serde_json::from_str(&md["stipple.reconstruction_error"]).unwrap();
    assert_eq!(errs["max"], 0.0);
    // Every module is kohya-named with alpha = rank.
    for (key, info) in merged.tensors() {
        assert!(
            key.starts_with("lora_unet_") || key.starts_with("lora_te_"),
            "{key}"
        );
        if let Some(stem) = key.strip_suffix(".lora_down.weight") {
            let alpha = merged.tensor(&format!("{stem}.alpha")).unwrap().data[0];
            assert_eq!(alpha as usize, info.shape[0], "{key}");
        }
    }
    let again = stipple(&args);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn a_prompt_merge_honours_component_and_block_strengths_and_refuses_schedules() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("from-prompt.safetensors");
    let prompt = "a fox <lora:lyco_locon:0.7:in=0.2> <lora:peft_diffusers:unet=0.4:te=0> \
                  <lora:kohya_ldm:1:lbw=1,0,0.5,1,1,0,1,1,1,1,1,1,0.5,1,1,1,1>";
    let dir = lora_dir();
    ok(&stipple(&[
        "lora",
        "merge",
        "--prompt",
        prompt,
        "--lora-dir",
        dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    let model = Model::open(&tiny_model()).unwrap();
    let parsed = stipple::prompt::parse(prompt).unwrap();
    let loras = adapters::AdapterCache::new(vec![dir.clone()])
        .resolve(&parsed, prompt)
        .unwrap();
    let want = fused_deltas(&model, &loras);
    let got = fused_deltas(&model, &active_loras(&[out.display().to_string()]));
    let errs = compare(&got, &want);
    let worst = errs.values().fold(0f32, |m, e| m.max(e.0));
    assert!(worst <= 1e-5, "{errs:?}");
    // te=0 leaves peft_diffusers' text-encoder modules out, and no other input has any.
    assert!(!got.contains_key(&stipple::model::ComponentKind::TextEncoder));

    let bad = stipple(&[
        "lora",
        "merge",
        "--prompt",
        "a fox <lora:lyco_locon:te=0@0,1@1>",
        "--lora-dir",
        dir.to_str().unwrap(),
        "--out",
        tmp.path().join("x.safetensors").to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("per-step schedule"), "{err}");
    assert!(!tmp.path().join("x.safetensors").exists());
}

fn svd_opts(rank: Option<usize>, dynamic: Option<Dynamic>, clamp: Option<f64>) -> MergeOptions {
    MergeOptions {
        mode: Mode::Svd,
        svd: Options {
            rule: RankRule {
                rank,
                conv_rank: None,
                dynamic,
            },
            clamp,
            randomized: false,
        },
    }
}

#[test]
fn svd_merge_reports_the_error_it_makes_and_is_lossless_at_full_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = vec![
        format!("{}:0.7", fixture("lyco_locon.safetensors")),
        format!("{}:0.5", fixture("lyco_loha.safetensors")),
        format!("{}:-0.6", fixture("peft_diffusers.safetensors")),
        format!("{}:0.8", fixture("lyco_lokr.safetensors")),
    ];
    let model = Model::open(&tiny_model()).unwrap();
    let want = fused_deltas(&model, &active_loras(&inputs));
    for (rank, label) in [(Some(2), "rank 2"), (Some(100_000), "full rank")] {
        for clamp in [None, Some(0.99)] {
            let out = tmp
                .path()
                .join(format!("svd-{label}-{clamp:?}.safetensors"));
            let outcome = stipple::export::merge(&stipple::export::MergeRequest {
                model_dir: &tiny_model(),
                files: &inputs,
                prompt: None,
                lora_dirs: vec![],
                out: &out,
                options: svd_opts(rank, None, clamp),
                dtype: stipple::safetensors_out::Dtype::F32,
                overwrite: false,
            })
            .unwrap();
            let got = fused_deltas(&model, &active_loras(&[out.display().to_string()]));
            let measured = compare(&got, &want);
            let mut worst_gap = 0f64;
            for l in &outcome.layers {
                let kind = match l.component {
                    stipple::lora::TargetComponent::Unet => "unet",
                    _ => "text_encoder",
                };
                let (_, m) = measured[&format!("{kind}/{}.weight", l.path)];
                worst_gap = worst_gap.max((m - l.error).abs());
                if rank == Some(100_000) && clamp.is_none() {
                    assert!(l.error < 1e-6 && m < 1e-5, "{}: {} {m}", l.path, l.error);
                }
            }
            println!(
                "svd {label} clamp {clamp:?}: {} layers, mean error {:.3e}, max {:.3e}, |reported − measured| ≤ {worst_gap:.2e}",
                outcome.layers.len(),
                outcome.summary.mean,
                outcome.summary.max
            );
            assert!(
                worst_gap < 1e-5,
                "{label}: reported vs measured {worst_gap}"
            );
            if rank == Some(2) && clamp.is_none() {
                assert!(outcome.summary.max > 0.05, "rank 2 loses something");
            }
        }
    }
    // The same LoRA twice: stacked factors are rank-deficient, and rank 4 still holds all of it.
    let twice = vec![
        format!("{}:0.5", fixture("lyco_locon.safetensors")),
        format!("{}:0.5", fixture("lyco_locon.safetensors")),
    ];
    for l in merge_fixtures(&twice, &svd_opts(Some(4), None, None)) {
        assert!(
            l.error < 1e-6 && l.rank == 4,
            "{} {} {}",
            l.path,
            l.rank,
            l.error
        );
    }
    // sv_fro keeps at least that fraction of the Frobenius norm: error ≤ √(1 − p²).
    let merged = merge_fixtures(&inputs, &svd_opts(None, Some(Dynamic::SvFro(0.9)), None));
    for l in &merged {
        assert!(
            l.error <= (1.0f64 - 0.81).sqrt() + 1e-9,
            "{} {}",
            l.path,
            l.error
        );
    }
}

fn merge_fixtures(inputs: &[String], opts: &MergeOptions) -> Vec<stipple::lora::write::LoraLayer> {
    let model = Model::open(&tiny_model()).unwrap();
    let loras = active_loras(inputs);
    let key = adapters::strengths_at(&loras, 0, 1);
    let base = adapters::base_weights(&model);
    let params = ModelParams {
        family: model.index.family,
        params: adapters::target_params(&model),
        base: &base,
    };
    let pairs: Vec<(&Adapter, Strengths)> = loras
        .iter()
        .enumerate()
        .map(|(i, l)| (l.adapter.as_ref(), adapters::strengths_of(l, &key, i)))
        .collect();
    merge(&pairs, &params, opts).unwrap().layers
}

#[test]
fn svd_merge_matches_kohya_svd_merge_lora() {
    let refs = Adapter::open(lora_dir().join("kohya_merge.ref.safetensors")).unwrap();
    let inputs: Vec<(String, f32)> = serde_json::from_str(&refs.metadata()["inputs"]).unwrap();
    let configs: serde_json::Value = serde_json::from_str(&refs.metadata()["configs"]).unwrap();
    let args: Vec<String> = inputs
        .iter()
        .map(|(f, r)| format!("{}:{r}", fixture(f)))
        .collect();
    let family = stipple::family::Family::Sd1;
    for (cfg, c) in configs.as_object().unwrap() {
        let dynamic = match c["method"].as_str() {
            Some("sv_ratio") => Some(Dynamic::SvRatio(c["param"].as_f64().unwrap())),
            Some("sv_fro") => Some(Dynamic::SvFro(c["param"].as_f64().unwrap())),
            Some("sv_cumulative") => Some(Dynamic::SvCumulative(c["param"].as_f64().unwrap())),
            _ => None,
        };
        let rank = c["rank"].as_u64().map(|r| r as usize);
        let layers = merge_fixtures(&args, &svd_opts(rank, dynamic, c["clamp"].as_f64()));
        let prefix = format!("{cfg}/");
        let n_ref = refs
            .tensors()
            .keys()
            .filter(|k| k.starts_with(&prefix) && k.ends_with(".rank"))
            .count();
        assert_eq!(layers.len(), n_ref, "{cfg}: layer count");
        let mut worst = 0f32;
        for l in &layers {
            let stem = kohya_stem(l.component, &l.path, family);
            let want_rank = refs.tensor(&format!("{prefix}{stem}.rank")).unwrap().data[0];
            assert_eq!(
                l.chosen_rank, want_rank as usize,
                "{cfg} {stem}: rank choice"
            );
            let want = refs.tensor(&format!("{prefix}{stem}")).unwrap().data;
            let (o, c) = (l.shape[0], want.len() / l.shape[0]);
            let got = stipple::lora::tensor::matmul(&l.up, o, l.rank, &l.down, c);
            worst = worst.max(max_rel_err(&got, &want));
        }
        println!(
            "kohya {cfg}: {} layers, same ranks, max relative |Δ| {worst:.2e}",
            layers.len()
        );
        assert!(worst <= 1e-4, "{cfg}: {worst}");
    }
}

/// The tiny model with its UNet and text-encoder weights stored as F32 (baking then adds no f16 rounding).
fn f32_model(dest: &Path) {
    copy_dir(&tiny_model(), dest);
    for comp in ["unet", "text_encoder"] {
        let path = dest.join(comp).join("weights.safetensors");
        let ck = stipple::model::Checkpoint::open(&path).unwrap();
        let mut names: Vec<String> = ck.shapes().into_keys().collect();
        names.sort();
        let tensors: Vec<_> = names
            .iter()
            .map(|n| {
                let t = ck.tensor(n).unwrap();
                stipple::safetensors_out::OutTensor {
                    name: n.clone(),
                    dtype: stipple::safetensors_out::Dtype::F32,
                    shape: t.shape.to_vec(),
                    bytes: stipple::safetensors_out::Dtype::F32.encode(&t.to_f32()),
                }
            })
            .collect();
        drop(ck);
        stipple::safetensors_out::write_atomic(&path, &tensors, &Default::default()).unwrap();
    }
}

#[test]
fn extract_recovers_a_baked_lora() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base-f32");
    f32_model(&base);
    let sources = vec![
        format!("{}:0.8", fixture("lyco_locon.safetensors")),
        fixture("lyco_te.safetensors"),
    ];
    let loras: Vec<_> = sources
        .iter()
        .map(|s| stipple::bake::parse_lora_arg(s).unwrap())
        .collect();
    let tuned = tmp.path().join("tuned");
    stipple::bake::bake(&base, &loras, &tuned).unwrap();
    let out = tmp.path().join("extracted.safetensors");
    let text = ok(&stipple(&[
        "lora",
        "extract",
        "--base",
        base.to_str().unwrap(),
        "--tuned",
        tuned.to_str().unwrap(),
        "--rank",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]));
    println!("{text}");
    let model = Model::open(&base).unwrap();
    let want = fused_deltas(&model, &active_loras(&sources));
    let got = fused_deltas(&model, &active_loras(&[out.display().to_string()]));
    let errs = compare(&got, &want);
    let worst = errs.values().fold(0f32, |m, e| m.max(e.0));
    println!(
        "extract: {} layers, max relative |Δ| {worst:.2e}",
        errs.len()
    );
    assert!(worst <= 1e-4, "{errs:?}");
    let md = Adapter::open(&out).unwrap().metadata().clone();
    assert_eq!(md["ss_network_dim"], "4");
    assert_eq!(md["stipple.method"], "extract");
}
