//! Adapters end to end on the tiny model: prompt tags reach the sessions, strength 0 and removal
//! return exactly to the base, `stipple bake` writes what LyCORIS/peft compute, refusals touch nothing.

use crate::util::*;
use std::path::{Path, PathBuf};
use stipple::engine::Stop;
use stipple::model::Checkpoint;

fn lora_dir() -> PathBuf {
    root().join("tests/fixtures/lora")
}

#[test]
fn strength_zero_and_removal_give_the_base_image_bit_for_bit() {
    let mut g = generator();
    g.set_lora_dirs(vec![lora_dir()]);
    let base = image(&mut g, "a red fox");
    let a = image(&mut g, "a red fox <lora:lyco_locon:1>");
    assert_ne!(a, base, "an adapter changes the image");
    let ab = image(
        &mut g,
        "a red fox <lora:lyco_locon:1> <lora:peft_diffusers:0.7>",
    );
    assert_ne!(ab, a);
    let zero = image(&mut g, "a red fox <lora:lyco_locon:0>");
    assert_eq!(zero, base, "strength 0 is the base");
    let none = image(&mut g, "a red fox");
    assert_eq!(none, base, "after A, A+B and A at 0, the base again");
    // te=0 leaves the text encoder alone: changing only the UNet part differs from both.
    let unet_only = image(&mut g, "a red fox <lora:peft_diffusers:te=0:unet=1>");
    let both = image(&mut g, "a red fox <lora:peft_diffusers:1>");
    assert_ne!(unet_only, both);
    assert_ne!(unet_only, base);
}

#[test]
fn a_schedule_changes_strength_during_sampling() {
    let mut g = generator();
    g.set_lora_dirs(vec![lora_dir()]);
    let constant_lo = image(&mut g, "a fox <lora:lyco_locon:0.2>");
    let constant_hi = image(&mut g, "a fox <lora:lyco_locon:1>");
    let ramp = image(&mut g, "a fox <lora:lyco_locon:te=0.2@0,1@1>");
    assert_ne!(ramp, constant_lo);
    assert_ne!(ramp, constant_hi);
    // A schedule that is constant in value is the constant strength, exactly.
    let flat = image(&mut g, "a fox <lora:lyco_locon:te=1@0,1@1>");
    assert_eq!(flat, constant_hi);
}

#[test]
fn refused_adapters_leave_the_model_as_it_was() {
    let mut g = generator();
    g.set_lora_dirs(vec![lora_dir()]);
    let before = image(&mut g, "a red fox <lora:lyco_locon:1>");
    for (prompt, needle) in [
        ("a red fox <lora:wrong_family_sd1:1>", "wrong base model"),
        ("a red fox <lora:mismatch_shape:1>", "shape"),
        (
            "a red fox <lora:bad_truncated:1>",
            "outside the data section",
        ),
        ("a red fox <lora:bad_pickle:1>", "pickle"),
        ("a red fox <lora:no_such_lora:1>", "no LoRA named"),
    ] {
        let err = g
            .generate(&small_job(prompt, 11), &|| Stop::No, &mut |_| {}, 2)
            .err()
            .unwrap_or_else(|| panic!("{prompt} should be refused"))
            .to_string();
        assert!(err.contains(needle), "{prompt}: {err}");
    }
    assert_eq!(image(&mut g, "a red fox <lora:lyco_locon:1>"), before);
}

/// One f16 ulp at the magnitude of `x`.
fn f16_ulp(x: f32) -> f32 {
    let h = half::f16::from_f32(x.abs());
    let next = half::f16::from_bits(h.to_bits() + 1);
    next.to_f32() - h.to_f32()
}

fn check_baked(baked: &Path, refs: &str, mu: &str) {
    let base_u = Checkpoint::open(&tiny_model().join("unet/weights.safetensors")).unwrap();
    let base_t = Checkpoint::open(&tiny_model().join("text_encoder/weights.safetensors")).unwrap();
    let got_u = Checkpoint::open(&baked.join("unet/weights.safetensors")).unwrap();
    let got_t = Checkpoint::open(&baked.join("text_encoder/weights.safetensors")).unwrap();
    let refs = Checkpoint::open(&lora_dir().join(refs)).unwrap();
    let mut checked = 0;
    for (key, _) in refs.shapes() {
        let mut parts = key.splitn(3, '/');
        let (m, comp, param) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        if m != mu {
            continue;
        }
        let (base, got) = if comp == "unet" {
            (&base_u, &got_u)
        } else {
            (&base_t, &got_t)
        };
        let b = base.tensor(param).unwrap().to_f32();
        let d = refs.tensor(&key).unwrap().to_f32();
        let g = got.tensor(param).unwrap().to_f32();
        for i in 0..b.len() {
            let want = b[i] + d[i];
            // The baked file stores f16 like the base: one rounding of base + ΔW.
            assert!(
                (g[i] - want).abs() <= f16_ulp(want),
                "{key}[{i}]: got {}, want {want}",
                g[i]
            );
        }
        checked += 1;
    }
    assert!(checked > 0, "no reference at strength {mu}");
}

#[test]
fn bake_writes_what_lycoris_and_peft_compute() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_stipple"))
            .current_dir(root())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let locon = lora_dir().join("lyco_locon.safetensors");
    let half_out = tmp.path().join("locon-half");
    run(&[
        "bake",
        "--lora",
        &format!("{}:0.5", locon.display()),
        "--out",
        half_out.to_str().unwrap(),
    ]);
    check_baked(&half_out, "lyco_locon.ref.safetensors", "0.5");
    let peft = lora_dir().join("peft_diffusers.safetensors");
    let peft_out = tmp.path().join("peft");
    run(&[
        "bake",
        "--lora",
        peft.to_str().unwrap(),
        "--out",
        peft_out.to_str().unwrap(),
    ]);
    check_baked(&peft_out, "peft_diffusers.ref.safetensors", "1.0");
    // The baked folder is a model: it opens and generates.
    let m = stipple::model::Model::open(&peft_out).unwrap();
    // Text encoder, UNet and both VAE halves.
    assert_eq!(m.components.len(), 4);
    // Never written over.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_stipple"))
        .args([
            "bake",
            "--lora",
            peft.to_str().unwrap(),
            "--out",
            peft_out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

fn image(g: &mut stipple::pipeline::Generator, prompt: &str) -> Vec<u8> {
    try_image(g, &small_job(prompt, 11)).unwrap_or_else(|e| panic!("{prompt}: {e}"))
}
