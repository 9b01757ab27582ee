//! LoRA engine against the real tools: every fixture in tests/fixtures/lora was written by LyCORIS,
//! peft/diffusers or their converters, with the ΔW those tools apply (scripts/lora_fixtures.py).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use stipple::family::Family;
use stipple::lora::keys::KeyIndex;
use stipple::lora::{
    compute_deltas, inspect, Adapter, LoraError, ModelParams, Strengths, TargetComponent,
    TargetParam,
};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora")
}

fn comp(s: &str) -> TargetComponent {
    match s {
        "te" => TargetComponent::TextEncoder,
        _ => TargetComponent::Unet,
    }
}

fn comp_tag(c: TargetComponent) -> &'static str {
    match c {
        TargetComponent::Unet => "unet",
        _ => "te",
    }
}

struct Fixture {
    params: Vec<TargetParam>,
    base: HashMap<String, Vec<f32>>,
}

fn fixture() -> Fixture {
    let text = std::fs::read_to_string(dir().join("params.json")).expect("params.json");
    let rows: Vec<(String, String, Vec<usize>)> =
        serde_json::from_str(&text).expect("params.json parses");
    let params = rows
        .into_iter()
        .map(|(c, name, shape)| TargetParam {
            component: comp(&c),
            name,
            shape,
        })
        .collect();
    let b = Adapter::open(dir().join("base.safetensors")).expect("base.safetensors");
    let base = b
        .tensors()
        .keys()
        .map(|k| (k.clone(), b.tensor(k).expect("base tensor").data))
        .collect();
    Fixture { params, base }
}

fn run(
    fx: &Fixture,
    adapters: &[(&Adapter, Strengths)],
) -> Result<(stipple::lora::Deltas, stipple::lora::ApplyReport), LoraError> {
    let base = |c: TargetComponent, n: &str| fx.base.get(&format!("{}/{n}", comp_tag(c))).cloned();
    let model = ModelParams {
        family: Family::Sd1,
        params: fx.params.clone(),
        base: &base,
    };
    compute_deltas(adapters, &model)
}

#[derive(serde::Deserialize)]
struct Entry {
    name: String,
    mus: Vec<String>,
    #[serde(rename = "ref")]
    reference: String,
    #[serde(rename = "dyn", default)]
    dyn_rank: Option<usize>,
}

#[test]
fn lora_matches_reference_tools() {
    let fx = fixture();
    let manifest: Vec<Entry> = serde_json::from_str(
        &std::fs::read_to_string(dir().join("manifest.json")).expect("manifest"),
    )
    .expect("manifest parses");
    let mut failures = Vec::new();
    for e in &manifest {
        let adapter =
            Adapter::open(dir().join(format!("{}.safetensors", e.name))).expect("adapter opens");
        let refs = Adapter::open(dir().join(format!("{}.ref.safetensors", e.reference)))
            .expect("ref opens");
        let loose = ["oft", "dora", "doha", "dokr"]
            .iter()
            .any(|s| e.name.contains(s));
        let rel = if loose { 1e-4 } else { 1e-5 };
        for mu in &e.mus {
            let m: f32 = mu.parse().expect("mu");
            let strengths = Strengths {
                dyn_rank: e.dyn_rank,
                ..Strengths::uniform(m)
            };
            let (deltas, report) = match run(&fx, &[(&adapter, strengths)]) {
                Ok(x) => x,
                Err(err) => {
                    failures.push(format!("{} μ={mu}: {err}", e.name));
                    continue;
                }
            };
            let prefix = format!("{mu}/");
            let mut worst = 0.0f32;
            let mut seen = 0;
            for key in refs.tensors().keys().filter(|k| k.starts_with(&prefix)) {
                let (c, p) = key[prefix.len()..].split_once('/').expect("comp/param");
                let want = refs.tensor(key).expect("ref tensor").data;
                let max_ref = want.iter().fold(0.0f32, |a, b| a.max(b.abs()));
                let tol = rel * max_ref + 1e-6;
                let Some(got) = deltas.by_param.get(&(comp(c), p.to_string())) else {
                    failures.push(format!("{} μ={mu}: no delta for {c}/{p}\n{report}", e.name));
                    continue;
                };
                seen += 1;
                let err = got
                    .iter()
                    .zip(&want)
                    .fold(0.0f32, |a, (g, w)| a.max((g - w).abs()));
                worst = worst.max(err / max_ref.max(1e-30));
                if got.len() != want.len() || err > tol {
                    failures.push(format!(
                        "{} μ={mu}: {c}/{p}: max |Δ| {err:e} > {tol:e}",
                        e.name
                    ));
                }
            }
            if deltas.by_param.len() != seen {
                failures.push(format!(
                    "{} μ={mu}: {} deltas but {seen} references",
                    e.name,
                    deltas.by_param.len()
                ));
            }
            eprintln!(
                "{:<24} μ={mu:<5} {seen:>3} params, max relative error {worst:.2e}",
                e.name
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn lora_region_strengths_scale_linear_types() {
    let fx = fixture();
    let adapter = Adapter::open(dir().join("lyco_locon.safetensors")).expect("open");
    let refs = Adapter::open(dir().join("lyco_locon.ref.safetensors")).expect("ref");
    let s = Strengths {
        te: 0.0,
        unet_in: 0.25,
        unet_mid: -1.5,
        unet_out: 2.0,
        blocks: None,
        dyn_rank: None,
    };
    let (deltas, _) = run(&fx, &[(&adapter, s)]).expect("applies");
    for key in refs.tensors().keys().filter(|k| k.starts_with("1.0/")) {
        let p = &key["1.0/unet/".len()..];
        let k = if p.starts_with("mid_block") {
            -1.5
        } else if p.starts_with("up_blocks") {
            2.0
        } else {
            0.25
        };
        let want = refs.tensor(key).expect("ref").data;
        let Some(got) = deltas.by_param.get(&(TargetComponent::Unet, p.to_string())) else {
            assert_eq!(k, 0.0, "{p} missing");
            continue;
        };
        let max = want.iter().fold(0.0f32, |a, b| a.max(b.abs()));
        for (g, w) in got.iter().zip(&want) {
            assert!((g - k * w).abs() <= 1e-5 * max * 2.0 + 1e-6, "{p}");
        }
    }
}

#[test]
fn lora_two_adapters_sum() {
    let fx = fixture();
    let a = Adapter::open(dir().join("peft_diffusers.safetensors")).expect("open");
    let b = Adapter::open(dir().join("kohya_from_peft.safetensors")).expect("open");
    let refs = Adapter::open(dir().join("peft_diffusers.ref.safetensors")).expect("ref");
    let (deltas, report) = run(
        &fx,
        &[(&a, Strengths::uniform(0.5)), (&b, Strengths::uniform(1.0))],
    )
    .expect("applies");
    assert_eq!(report.adapters.len(), 2);
    for key in refs.tensors().keys() {
        let (c, p) = key["1.0/".len()..].split_once('/').expect("split");
        let want = refs.tensor(key).expect("ref").data;
        let got = &deltas.by_param[&(comp(c), p.to_string())];
        let max = want.iter().fold(0.0f32, |a, b| a.max(b.abs()));
        for (g, w) in got.iter().zip(&want) {
            assert!((g - 1.5 * w).abs() <= 2e-5 * max + 1e-6, "{p}");
        }
    }
}

/// Every UNet module under its LDM name (map checked against diffusers' single-file converter by
/// the fixture script) parses to its diffusers module, for the tiny UNet's own block layout.
#[test]
fn lora_ldm_names_follow_the_unet_layout() {
    let fx = fixture();
    let idx = KeyIndex::build(&fx.params);
    let text = std::fs::read_to_string(dir().join("ldm_names.json")).expect("ldm_names.json");
    let map: HashMap<String, String> = serde_json::from_str(&text).expect("parses");
    assert!(map.len() > 100);
    for (diffusers, ldm) in &map {
        let module = diffusers.trim_end_matches(".weight");
        let key = format!(
            "lora_unet_{}.lora_up.weight",
            ldm.trim_end_matches(".weight").replace('.', "_")
        );
        let got = idx.parse(&key).map(|(id, _)| idx.module(id).path.clone());
        assert_eq!(got.as_deref(), Some(module), "{key}");
        let generic = format!(
            "diffusion_model.{}.lora_down.weight",
            ldm.trim_end_matches(".weight")
        );
        assert_eq!(
            idx.parse(&generic)
                .map(|(id, _)| idx.module(id).path.clone())
                .as_deref(),
            Some(module)
        );
    }
}

fn err_of(name: &str) -> String {
    match Adapter::open(dir().join(name)) {
        Ok(_) => panic!("{name} opened"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn lora_refuses_bad_files() {
    let t = err_of("bad_truncated.safetensors");
    assert!(t.contains("outside the data section"), "{t}");
    let h = err_of("bad_header_past_end.safetensors");
    assert!(
        h.contains("not a safetensors file") && h.contains("runs past the end"),
        "{h}"
    );
    let o = err_of("bad_overlap.safetensors");
    assert!(o.contains("overlap"), "{o}");
    let p = err_of("bad_pickle.pt");
    eprintln!("{t}\n{h}\n{o}\n{p}");
    assert!(
        p.contains("arbitrary code") && p.contains("safetensors"),
        "{p}"
    );
}

#[test]
fn lora_refuses_wrong_family_before_any_delta() {
    let fx = fixture();
    let good = Adapter::open(dir().join("lyco_locon.safetensors")).expect("open");
    let bad = Adapter::open(dir().join("wrong_family_sd1.safetensors")).expect("open");
    let err = run(
        &fx,
        &[(&good, Strengths::default()), (&bad, Strengths::default())],
    )
    .expect_err("refused");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, LoraError::Family { .. }), "{msg}");
    assert!(
        msg.contains("SD1.x") && msg.contains("768") && msg.contains("32"),
        "{msg}"
    );
}

#[test]
fn lora_refuses_shape_mismatch_naming_both_shapes() {
    let fx = fixture();
    let bad = Adapter::open(dir().join("mismatch_shape.safetensors")).expect("open");
    let err = run(&fx, &[(&bad, Strengths::default())]).expect_err("refused");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, LoraError::Mismatch(_)), "{msg}");
    assert!(
        msg.contains("[320, 64]") && msg.contains("[64, 64]") && msg.contains("attn1.to_q.weight"),
        "{msg}"
    );
}

#[test]
fn lora_lenient_metadata_and_nan_warning() {
    let fx = fixture();
    let a = Adapter::open(dir().join("lenient_meta_nan.safetensors"))
        .expect("non-string metadata must not kill the parse");
    assert_eq!(a.metadata().get("ok").map(String::as_str), Some("yes"));
    assert_eq!(a.metadata().get("n").map(String::as_str), Some("3"));
    let (_, report) = run(&fx, &[(&a, Strengths::default())]).expect("applies");
    assert!(
        report.adapters[0]
            .warnings
            .iter()
            .any(|w| w.contains("NaN")),
        "{report}"
    );
}

#[test]
fn lora_inspect_reports_types_triggers_hashes() {
    let a = Adapter::open(dir().join("kohya_from_peft.safetensors")).expect("open");
    let i = inspect(&a);
    assert_eq!(
        i.triggers[..4],
        ["tinychar", "red hat", "tiny trigger", "smile"],
        "{i}"
    );
    assert_eq!(i.types.get("LoRA").copied(), Some(20), "{i}");
    assert_eq!(i.per_component.get("Unet").copied(), Some(14), "{i}");
    assert_eq!(i.per_component.get("TextEncoder").copied(), Some(6), "{i}");
    assert_eq!(
        (i.autov2.len(), i.autov3.len(), i.sha256.len()),
        (10, 12, 64)
    );
    assert_eq!(i.family.metadata_hint.as_deref(), Some("sd_v1"));
    let json = serde_json::to_string(&i).expect("serialises");
    assert!(json.contains("\"autov3\""));
    let loha = inspect(&Adapter::open(dir().join("lyco_loha_tucker.safetensors")).expect("open"));
    assert_eq!(
        loha.types.keys().collect::<Vec<_>>(),
        ["LoHa (Tucker)"],
        "{loha}"
    );
}

#[test]
fn lora_bench_workload_runs() {
    let w = stipple::lora::bench::sd15_unet_lora(32);
    let t = std::time::Instant::now();
    let d = stipple::lora::bench::run(&w).expect("runs");
    eprintln!(
        "SD1.5 rank-32 UNet LoRA, 192 modules: {:?} (test profile)",
        t.elapsed()
    );
    assert_eq!(d.by_param.len(), 192);
    let q = &d.by_param[&(
        TargetComponent::Unet,
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight".into(),
    )];
    assert_eq!(q.len(), 320 * 768);
}

/// The browser's verdict on every fixture adapter against the tiny SD1 and SDXL models agrees with
/// what the engine refuses (the plan step `generate` runs before any ΔW): not insertable exactly
/// when the engine refuses the family or cannot read the file.
#[test]
fn catalog_compatibility_agrees_with_what_generate_refuses() {
    use stipple::lora::catalog::LoraDirs;
    use stipple::lora::entry::{Compat, FolderSource, LoraSource};
    use stipple::lora::family::ModelWidths;
    use stipple::model::Model;
    use stipple::pipeline::adapters::target_params;
    let xl_dir = dir().with_file_name("lora-sdxl");
    let mut checked = HashMap::new();
    for model_dir in [crate::util::tiny_model(), crate::sdxl::tiny_sdxl()] {
        let model = Model::open(&model_dir).expect("tiny model opens");
        let params = target_params(&model);
        let widths = ModelWidths::of(model.index.family, &params);
        let listing = FolderSource {
            dirs: LoraDirs::new([dir(), xl_dir.clone()]),
            model: Some(widths),
        }
        .scan();
        assert!(listing.problems.is_empty(), "{:?}", listing.problems);
        assert!(
            listing.entries.len() > 40,
            "both fixture folders are listed"
        );
        let base = |_: TargetComponent, _: &str| None;
        let mp = ModelParams {
            family: model.index.family,
            params,
            base: &base,
        };
        for e in &listing.entries {
            let engine = match Adapter::open(&e.path) {
                Err(err) => Err(err.to_string()),
                Ok(a) => match stipple::lora::planned::plan(&[(&a, Strengths::default())], &mp) {
                    Err(LoraError::Family { message, .. }) => Err(message),
                    _ => Ok(()),
                },
            };
            match (&e.compat, &engine) {
                (Compat::Yes, Ok(())) => {}
                (Compat::No(why), Err(refusal)) => {
                    assert!(refusal.contains(why.as_str()) || why.contains(refusal.as_str()))
                }
                (c, r) => panic!("{}: browser says {c:?}, the engine {r:?}", e.name),
            }
            checked.insert((model.index.family, e.name.clone()), e.compat.clone());
        }
    }
    // The cases the issue names, both ways.
    let verdict = |f: Family, name: &str| checked.get(&(f, name.to_string())).cloned();
    assert_eq!(verdict(Family::Sd1, "lyco_locon"), Some(Compat::Yes));
    assert_eq!(verdict(Family::Sdxl, "xl_kohya_locon"), Some(Compat::Yes));
    for (f, name, needle) in [
        (Family::Sd1, "xl_kohya_locon", "width 64"),
        (Family::Sd1, "xl_te2_locon", "second text encoder"),
        (Family::Sdxl, "lyco_locon", "width 32"),
        (Family::Sdxl, "wrong_family_sd1", "SD1.x"),
    ] {
        match verdict(f, name) {
            Some(Compat::No(why)) => assert!(why.contains(needle), "{name}: {why}"),
            other => panic!("{name} on {f:?}: {other:?}"),
        }
    }
    assert!(
        matches!(verdict(Family::Sd1, "bad_header_past_end"), Some(Compat::No(why)) if why.contains("not a safetensors file"))
    );
}

/// The catalog walks subfolders: a LoRA two folders down is listed by the browser with its type
/// and family, and a prompt names it by its file stem or its path relative to the folder.
#[test]
fn catalog_finds_a_lora_in_a_subfolder_for_the_browser_and_the_prompt() {
    use stipple::lora::catalog::LoraDirs;
    use stipple::lora::entry::{FolderSource, LoraSource};
    let t = tempfile::tempdir().unwrap();
    let deep = t.path().join("styles/ink");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::copy(
        dir().join("lyco_locon.safetensors"),
        deep.join("inkwash.safetensors"),
    )
    .unwrap();
    let listing = FolderSource {
        dirs: LoraDirs::new([t.path()]),
        model: None,
    }
    .scan();
    assert_eq!(listing.entries.len(), 1, "{listing:?}");
    let e = &listing.entries[0];
    assert_eq!(e.name, "inkwash");
    // Type, rank and family as `lora inspect` reads them from the same file.
    let i = inspect(&Adapter::open(&e.path).expect("open"));
    let most = |m: &std::collections::BTreeMap<String, usize>| {
        m.iter().max_by_key(|(_, n)| **n).map(|(k, _)| k.clone())
    };
    assert_eq!(e.kind, most(&i.types), "{e:?}");
    let rank = i
        .ranks
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(r, _)| *r as u32);
    assert_eq!(e.rank, rank);
    assert_eq!(e.family, i.family.family, "{e:?}");
    assert_eq!(e.evidence, i.family.evidence);
    assert!(!e.evidence.is_empty());
    let dirs = vec![t.path().to_path_buf()];
    for text in [
        "a fox <lora:inkwash:1>",
        "a fox <lora:styles/ink/inkwash:0.5>",
    ] {
        stipple::pipeline::adapters::check_names(text, &dirs)
            .unwrap_or_else(|e| panic!("{text}: {e}"));
    }
}

/// A LoRA folder that does not exist is an error that names it, before any model is loaded (not
/// "no LoRA named ..."), and the browser shows it.
#[test]
fn a_missing_lora_folder_is_an_error_naming_it() {
    use stipple::lora::catalog::LoraDirs;
    use stipple::lora::entry::{FolderSource, LoraSource};
    let t = tempfile::tempdir().unwrap();
    let gone = t.path().join("no-such-loras");
    let err =
        stipple::pipeline::adapters::check_names("a fox <lora:ok:1>", std::slice::from_ref(&gone))
            .expect_err("refused")
            .to_string();
    assert!(
        err.contains(&gone.display().to_string()) && err.contains("does not exist"),
        "{err}"
    );
    assert!(!err.contains("no LoRA named"), "{err}");
    let listing = FolderSource {
        dirs: LoraDirs::new([&gone]),
        model: None,
    }
    .scan();
    assert!(listing.entries.is_empty());
    assert_eq!(listing.problems.len(), 1);
    assert!(
        listing.problems[0].contains("does not exist"),
        "{listing:?}"
    );
}
