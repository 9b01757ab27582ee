//! Adapters on the tiny SDXL model: files made by LyCORIS, peft/diffusers and kohya-style SDXL names
//! (scripts/lora_fixtures.py --sdxl) compute and bake to the tools' ΔW on both text encoders and the
//! UNet; SD1.x adapters on SDXL and SDXL adapters on SD1.x are refused before any weight is touched.

use crate::sdxl::{sdxl_generator, tiny_sdxl};
use crate::util::*;
use std::path::{Path, PathBuf};
use stipple::lora::{compute_deltas, Adapter, LoraError, ModelParams, Strengths, TargetComponent};
use stipple::model::{Checkpoint, Model};
use stipple::pipeline::adapters::target_params;

fn xl_dir() -> PathBuf {
    root().join("tests/fixtures/lora-sdxl")
}

fn sd1_dir() -> PathBuf {
    root().join("tests/fixtures/lora")
}

fn comp(tag: &str) -> TargetComponent {
    match tag {
        "te" => TargetComponent::TextEncoder,
        "te2" => TargetComponent::TextEncoder2,
        _ => TargetComponent::Unet,
    }
}

fn dir_of(c: TargetComponent) -> &'static str {
    match c {
        TargetComponent::TextEncoder => "text_encoder",
        TargetComponent::TextEncoder2 => "text_encoder_2",
        TargetComponent::Unet => "unet",
    }
}

/// ΔW of `adapter` at `mu` against the model in `dir`, through the engine's public API.
fn deltas(model: &Model, adapter: &Adapter, mu: f32) -> Result<stipple::lora::Deltas, LoraError> {
    let base = |c: TargetComponent, name: &str| {
        let kind = match c {
            TargetComponent::TextEncoder => stipple::model::ComponentKind::TextEncoder,
            TargetComponent::TextEncoder2 => stipple::model::ComponentKind::TextEncoder2,
            TargetComponent::Unet => stipple::model::ComponentKind::Unet,
        };
        model
            .component(kind)?
            .weights
            .tensor(name)
            .map(|t| t.to_f32())
    };
    let params = ModelParams {
        family: model.index.family,
        params: target_params(model),
        base: &base,
    };
    compute_deltas(&[(adapter, Strengths::uniform(mu))], &params).map(|(d, _)| d)
}

#[derive(serde::Deserialize)]
struct Entry {
    name: String,
    mus: Vec<String>,
    #[serde(rename = "ref")]
    reference: String,
}

fn manifest() -> Vec<Entry> {
    serde_json::from_str(&std::fs::read_to_string(xl_dir().join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn sdxl_adapters_compute_what_lycoris_and_peft_apply() {
    let model = Model::open(&tiny_sdxl()).unwrap();
    let mut failures = Vec::new();
    let mut components = std::collections::BTreeSet::new();
    for e in &manifest() {
        let adapter = Adapter::open(xl_dir().join(format!("{}.safetensors", e.name))).unwrap();
        let refs =
            Checkpoint::open(&xl_dir().join(format!("{}.ref.safetensors", e.reference))).unwrap();
        for mu in &e.mus {
            let d = deltas(&model, &adapter, mu.parse().unwrap())
                .unwrap_or_else(|err| panic!("{}: {err}", e.name));
            let mut worst = 0f32;
            let mut seen = 0;
            for (key, _) in refs.shapes() {
                let Some(rest) = key.strip_prefix(&format!("{mu}/")) else {
                    continue;
                };
                let (c, p) = rest.split_once('/').unwrap();
                let want = refs.tensor(&key).unwrap().to_f32();
                let max = want.iter().fold(0f32, |a, b| a.max(b.abs()));
                let Some(got) = d.by_param.get(&(comp(c), p.to_string())) else {
                    failures.push(format!("{} μ={mu}: no delta for {c}/{p}", e.name));
                    continue;
                };
                let err = got
                    .iter()
                    .zip(&want)
                    .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
                worst = worst.max(err / max.max(1e-30));
                if err > 1e-5 * max + 1e-6 {
                    failures.push(format!("{} μ={mu}: {c}/{p}: max |Δ| {err:e}", e.name));
                }
                components.insert(c.to_string());
                seen += 1;
            }
            if seen == 0 || d.by_param.len() != seen {
                failures.push(format!(
                    "{} μ={mu}: {} deltas, {seen} references",
                    e.name,
                    d.by_param.len()
                ));
            }
            eprintln!(
                "{:<20} μ={mu:<4} {seen:>3} params, max relative error {worst:.2e}",
                e.name
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let all: Vec<&str> = components.iter().map(String::as_str).collect();
    assert_eq!(all, ["te", "te2", "unet"], "every component is covered");
}

/// One f16 ulp at the magnitude of `x`.
fn f16_ulp(x: f32) -> f32 {
    let h = half::f16::from_f32(x.abs());
    half::f16::from_bits(h.to_bits() + 1).to_f32() - h.to_f32()
}

fn stipple(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_stipple"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap()
}

fn check_baked(baked: &Path, refs: &str, mu: &str) -> usize {
    let refs = Checkpoint::open(&xl_dir().join(refs)).unwrap();
    let mut checked = 0;
    for (key, _) in refs.shapes() {
        let mut parts = key.splitn(3, '/');
        let (m, c, param) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        if m != mu {
            continue;
        }
        let file = |root: &Path| root.join(dir_of(comp(c))).join("weights.safetensors");
        let b = Checkpoint::open(&file(&tiny_sdxl())).unwrap();
        let g = Checkpoint::open(&file(baked)).unwrap();
        let b = b.tensor(param).unwrap().to_f32();
        let g = g.tensor(param).unwrap().to_f32();
        let d = refs.tensor(&key).unwrap().to_f32();
        for i in 0..b.len() {
            let want = b[i] + d[i];
            assert!(
                (g[i] - want).abs() <= f16_ulp(want),
                "{key}[{i}]: got {}, want {want}",
                g[i]
            );
        }
        checked += 1;
    }
    checked
}

#[test]
fn sdxl_bake_writes_the_reference_weights_and_the_result_generates() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_sdxl();
    let peft = xl_dir().join("xl_peft_diffusers.safetensors");
    let out = tmp.path().join("peft");
    let o = stipple(&[
        "bake",
        "--model",
        model.to_str().unwrap(),
        "--lora",
        peft.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(check_baked(&out, "xl_peft_diffusers.ref.safetensors", "1.0") > 10);
    let kohya = xl_dir().join("xl_kohya_locon.safetensors");
    let half_out = tmp.path().join("kohya-half");
    let o = stipple(&[
        "bake",
        "--model",
        model.to_str().unwrap(),
        "--lora",
        &format!("{}:0.5", kohya.display()),
        "--out",
        half_out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(check_baked(&half_out, "xl_kohya_locon.ref.safetensors", "0.5") > 5);
    // The baked folder is an SDXL model that `stipple generate` runs unchanged.
    let images = tmp.path().join("images");
    let o = stipple(&[
        "generate",
        "--model",
        out.to_str().unwrap(),
        "--prompt",
        "a red fox",
        "--steps",
        "2",
        "--seed",
        "3",
        "--out",
        images.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    let (w, h, _) = read_rgb(Path::new(line["path"].as_str().unwrap()));
    assert_eq!((w, h), (64, 64), "the model's default size");
}

#[test]
fn sdxl_lora_inspect_names_the_family_and_both_text_encoders() {
    let file = xl_dir().join("xl_kohya_from_peft.safetensors");
    let o = stipple(&["lora", "inspect", "--json", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["family"]["family"], "SDXL", "{}", v["family"]);
    assert_eq!(v["family"]["has_te2"], true);
    let per = &v["per_component"];
    assert!(per["TextEncoder2"].as_u64().unwrap_or(0) > 0, "{per}");
    assert!(per["TextEncoder"].as_u64().unwrap_or(0) > 0, "{per}");
}

#[test]
fn sd1_adapters_on_sdxl_and_sdxl_adapters_on_sd1_are_refused_with_evidence() {
    let xl = Model::open(&tiny_sdxl()).unwrap();
    let sd1 = Model::open(&tiny_model()).unwrap();
    let cases = [
        (&xl, sd1_dir().join("lyco_locon.safetensors"), "width 32"),
        (&xl, sd1_dir().join("wrong_family_sd1.safetensors"), "SD1.x"),
        (
            &sd1,
            xl_dir().join("xl_kohya_locon.safetensors"),
            "width 64",
        ),
        (
            &sd1,
            xl_dir().join("xl_te2_locon.safetensors"),
            "second text encoder",
        ),
        (&sd1, xl_dir().join("xl_peft_diffusers.safetensors"), "SDXL"),
    ];
    for (model, file, needle) in cases {
        let adapter = Adapter::open(&file).unwrap();
        let err = deltas(model, &adapter, 1.0).expect_err("refused");
        let msg = err.to_string();
        eprintln!("{msg}");
        assert!(matches!(err, LoraError::Family { .. }), "{msg}");
        let family = model.index.family.facts().name;
        assert!(
            msg.contains(needle) && msg.contains(&format!("loaded model is {family}")),
            "{}: {msg}",
            file.display()
        );
        assert!(msg.contains("evidence"), "{msg}");
    }
}

#[test]
fn sdxl_prompt_adapters_reach_both_text_encoders_and_refusals_touch_nothing() {
    let mut g = sdxl_generator();
    g.set_lora_dirs(vec![xl_dir(), sd1_dir()]);
    let base = image(&mut g, "a red fox").unwrap();
    // Only the second text encoder has keys: its session must be rebuilt with them.
    let te2 = image(&mut g, "a red fox <lora:xl_te2_locon:1>").unwrap();
    assert_ne!(te2, base, "a te2-only adapter changes the image");
    let te1 = image(&mut g, "a red fox <lora:xl_te1_locon:1>").unwrap();
    assert_ne!(te1, base);
    assert_ne!(te1, te2);
    let all = image(&mut g, "a red fox <lora:xl_peft_diffusers:1>").unwrap();
    let unet_only = image(&mut g, "a red fox <lora:xl_peft_diffusers:te=0:unet=1>").unwrap();
    assert_ne!(all, unet_only);
    assert_ne!(unet_only, base);
    let err = image(&mut g, "a red fox <lora:lyco_locon:1>").expect_err("SD1 adapter refused");
    assert!(err.contains("wrong base model"), "{err}");
    assert_eq!(
        image(&mut g, "a red fox <lora:xl_peft_diffusers:1>").unwrap(),
        all,
        "a refusal leaves the fused model as it was"
    );
    let zero = image(&mut g, "a red fox <lora:xl_peft_diffusers:0>").unwrap();
    assert_eq!(zero, base, "strength 0 is the base, bit for bit");
    assert_eq!(image(&mut g, "a red fox").unwrap(), base);
}

/// `lbw=` with SDXL's 12-slot layout (BASE, IN04, IN05, IN07, IN08, M00, OUT00–OUT05) through the
/// pipeline: BASE reaches only the text encoders, M00 only the middle block, OUT only the up blocks,
/// and a slot at 1 gives exactly the full-strength ΔW of its layers.
#[test]
fn sdxl_lbw_vectors_reach_the_blocks_they_name() {
    use stipple::model::ComponentKind;
    use stipple::pipeline::ComponentDeltas;
    let model = Model::open(&tiny_sdxl()).unwrap();
    let run = |file: &str, spec: &str| {
        let loras = active_loras(&[format!("{}:{spec}", xl_dir().join(file).display())]);
        fused_deltas(&model, &loras)
    };
    let names = |d: &ComponentDeltas, kind: ComponentKind| -> Vec<String> {
        let mut v: Vec<String> = d
            .get(&kind)
            .map(|m| {
                m.iter()
                    .filter(|(_, x)| x.iter().any(|v| *v != 0.0))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    // (file, lbw, UNet layers that must stay, text encoders kept). kohya_from_peft has both text
    // encoders and the middle block; kohya_locon has output blocks in LDM names. Modules outside
    // the block chain (time and add embeddings, conv_out) keep strength 1, as the extension does.
    type Keep = fn(&str) -> bool;
    fn outside(n: &str) -> bool {
        !["down_blocks.", "mid_block.", "up_blocks.", "conv_in."]
            .iter()
            .any(|p| n.starts_with(p))
    }
    let cases: [(&str, &str, Keep, bool); 4] = [
        (
            "xl_kohya_from_peft.safetensors",
            "lbw=1,0,0,0,0,0,0,0,0,0,0,0",
            outside,
            true,
        ),
        (
            "xl_kohya_from_peft.safetensors",
            "lbw=0,0,0,0,0,1,0,0,0,0,0,0",
            |n| n.starts_with("mid_block.") || outside(n),
            false,
        ),
        (
            "xl_kohya_locon.safetensors",
            "lbw=0,0,0,0,0,1,0,0,0,0,0,0",
            |n| n.starts_with("mid_block.") || outside(n),
            false,
        ),
        (
            "xl_kohya_locon.safetensors",
            "lbw=0,0,0,0,0,0,1,1,1,1,1,1",
            |n| n.starts_with("up_blocks.") || outside(n),
            false,
        ),
    ];
    for (file, spec, keep, te) in cases {
        let full = run(file, "1");
        let d = run(file, spec);
        let want: Vec<String> = names(&full, ComponentKind::Unet)
            .into_iter()
            .filter(|n| keep(n))
            .collect();
        assert_eq!(
            te,
            want.is_empty(),
            "{file} {spec}: the fixture has layers there"
        );
        assert_eq!(
            names(&d, ComponentKind::Unet),
            want,
            "{file} {spec}: UNet layers"
        );
        for kind in [ComponentKind::TextEncoder, ComponentKind::TextEncoder2] {
            let kept = names(&d, kind);
            assert_eq!(
                kept,
                if te { names(&full, kind) } else { Vec::new() },
                "{file} {spec}: {kind}"
            );
        }
        for n in &want {
            let (got, full) = (&d[&ComponentKind::Unet][n], &full[&ComponentKind::Unet][n]);
            assert_eq!(got, full, "{file} {spec}: {n} at 1 is the full ΔW");
        }
    }
}

fn image(g: &mut stipple::pipeline::Generator, prompt: &str) -> Result<Vec<u8>, String> {
    try_image(g, &small_job(prompt, 11))
}
