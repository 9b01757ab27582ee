//! Zero terminal SNR (Lin et al. 2023; diffusers' `rescale_betas_zero_snr`, A1111's "Zero
//! Terminal SNR") on the tiny SD2 model (v-prediction), 32×32, 4 and 8 steps, against
//! `scripts/reference_zero_snr.py --images` (diffusers' pipeline with the class made from tiny
//! SD2's scheduler config plus `rescale_betas_zero_snr` and `trailing` spacing): once from a
//! model whose scheduler config says so, once from the job's switch (`--zero-snr` with
//! `--schedule sgm-uniform`, stipple's trailing spacing). Also the refusals and the infotext.

use crate::samplers::{check_images_in, image};
use crate::util::*;
use std::path::{Path, PathBuf};
use stipple::job::{Sampler, Schedule};
use stipple::pipeline::{EngineSpec, Generator};

fn tiny_sd2() -> PathBuf {
    root().join("tests/fixtures/tiny-sd2")
}

fn references() -> PathBuf {
    tiny_sd2().join("reference")
}

fn load(dir: &Path) -> Generator {
    Generator::load(EngineSpec::new(dir.to_path_buf()), runtime()).expect("tiny SD2 loads")
}

/// A copy of tiny SD2 whose scheduler config asks for zero terminal SNR and trailing spacing,
/// as a zero-SNR model's diffusers folder does.
fn zero_snr_model(tmp: &Path) -> PathBuf {
    let dir = tmp.join("tiny-sd2-zsnr");
    copy_dir(&tiny_sd2(), &dir);
    let path = dir.join("scheduler/scheduler_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["rescale_betas_zero_snr"] = true.into();
    cfg["timestep_spacing"] = "trailing".into();
    // The fixture lists its spacing as the writer's default, which a reader drops.
    cfg["_use_default_values"] = serde_json::json!(["trained_betas"]);
    std::fs::write(&path, cfg.to_string()).unwrap();
    dir
}

/// Euler, Euler a, DDIM, DPM++ 2M, DPM++ 2M SDE (per-step noise) and UniPC from the model's
/// scheduler config, within mean abs 1/255 of diffusers' images; the infotext names it.
#[test]
fn zero_snr_from_the_model_config_matches_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut g = load(&zero_snr_model(tmp.path()));
    let worst = check_images_in(&references(), &mut g, "zero_snr.json", 12, &|_| true);
    eprintln!("zero SNR from the scheduler config: worst mean abs {worst:.4}/255");
    let mut job = small_job("a red fox", 1);
    (job.width, job.height, job.steps) = (32, 32, 4);
    let (_, infotext) = try_image_and_infotext(&mut g, &job).unwrap();
    assert!(
        infotext.contains("Noise Schedule: Zero Terminal SNR"),
        "{infotext}"
    );
}

/// The same images from the unchanged model with the job's switch and SGM uniform (trailing)
/// for the samplers that take a schedule type; without the switch the pictures differ.
#[test]
fn zero_snr_switch_matches_diffusers() {
    let mut g = load(&tiny_sd2());
    let worst = check_images_in(&references(), &mut g, "zero_snr.json", 10, &|job| {
        job.zero_snr = true;
        job.schedule = Schedule::SgmUniform;
        job.sampler.takes_schedule()
    });
    eprintln!("zero SNR from the job: worst mean abs {worst:.4}/255");
    let mut job = small_job("a red fox in the snow", 42);
    (job.width, job.height, job.steps) = (32, 32, 4);
    job.schedule = Schedule::SgmUniform;
    let plain = image(&mut g, &job);
    job.zero_snr = true;
    let zsnr = image(&mut g, &job);
    assert_ne!(plain.pixels, zsnr.pixels, "zero SNR changes the picture");
    let (_, infotext) = try_image_and_infotext(&mut g, &job).unwrap();
    assert!(
        infotext.contains("Noise Schedule: Zero Terminal SNR"),
        "{infotext}"
    );
    job.zero_snr = false;
    let (_, infotext) = try_image_and_infotext(&mut g, &job).unwrap();
    assert!(!infotext.contains("Noise Schedule"), "{infotext}");
}

/// An epsilon model (tiny SD1.5) is refused, as are samplers whose diffusers class has no
/// `rescale_betas_zero_snr`; nothing is sampled.
#[test]
fn zero_snr_is_refused_for_epsilon_models_and_samplers_without_it() {
    let mut job = small_job("a red fox", 1);
    job.zero_snr = true;
    let err = try_image(&mut generator(), &job).unwrap_err();
    assert!(
        err.contains("v-prediction") && err.contains("epsilon"),
        "{err}"
    );
    let mut g = load(&tiny_sd2());
    for sampler in [
        Sampler::Heun,
        Sampler::Lms,
        Sampler::DpmPpSde,
        Sampler::EulerCfgPp,
    ] {
        job.sampler = sampler;
        let err = try_image(&mut g, &job).unwrap_err();
        assert!(
            err.contains(sampler.name()) && err.contains("zero terminal SNR"),
            "{err}"
        );
        assert!(stipple::pipeline::validate_job(&job).is_err(), "{sampler}");
    }
    job.sampler = Sampler::Euler;
    assert!(try_image(&mut g, &job).is_ok());
}

/// `generate --zero-snr` reaches the job: the bundled tiny model predicts epsilon, so it is refused.
#[test]
fn zero_snr_flag_on_an_epsilon_model_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    assert_refused(&tmp.path().join("out"), &["--zero-snr"], "v-prediction");
    assert_refused(
        &tmp.path().join("out"),
        &["--zero-snr", "--sampler", "heun"],
        "Heun",
    );
}

/// A batch job's `zero_snr` is read into the job, and refused with a sampler that has no
/// zero-SNR form.
#[test]
fn zero_snr_batch_field() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let plan = |sampler: &str| {
        crate::reference_spec::planned(
            &format!(
                r#"{{"prompt": "a fox", "steps": 4, "seed": 1, "zero_snr": true, "sampler": "{sampler}"}}"#
            ),
            &out,
        )
    };
    let (_, planned, report) = plan("heun");
    assert!(planned.is_none() && report.contains("Heun"), "{report}");
    let (ok, planned, report) = plan("euler");
    assert!(ok, "{report}");
    assert_eq!(planned.expect("a planned job")["job"]["zero_snr"], true);
}

/// The workstation: `generation.zero_snr` starts the Settings field "noise schedule", which
/// reaches the submitted job and toggles with Right.
#[test]
fn zero_snr_setting_reaches_the_workstations_job() {
    let mut app = crate::tui_support::busy_app();
    assert!(!app.build_job().unwrap().zero_snr);
    crate::tui_img2img::set_field(&mut app, "noise schedule", 1, 1);
    assert!(app.build_job().unwrap().zero_snr);
    crate::tui_img2img::set_field(&mut app, "noise schedule", 1, 1);
    assert!(!app.build_job().unwrap().zero_snr);
    let mut config = stipple::config::Config::default().with_model_size((512, 512));
    config.generation.zero_snr = true;
    let app = stipple::tui::app::App::new(
        &config,
        stipple::tui::theme::Theme::load("dark", None).unwrap(),
        stipple::tui::keymap::Keymap::default(),
        None,
        42,
    );
    assert!(app.settings.zero_snr);
}

/// `--zero-snr=false` turns the config's `generation.zero_snr` off for one run (the bundled tiny
/// model predicts epsilon: with it on, the run is refused); `doctor` names a model's own zero SNR.
#[test]
fn zero_snr_flag_turns_the_config_off_and_doctor_names_the_model_s() {
    let tmp = tempfile::tempdir().unwrap();
    let gen = |extra: &[&str], out: &str| {
        let out = tmp.path().join(out);
        let mut args = vec![
            "generate", "--prompt", "x", "--steps", "2", "--width", "32", "--height", "32", "--out",
        ];
        args.push(out.to_str().unwrap());
        args.extend_from_slice(extra);
        crate::cli::stipple()
            .env("STIPPLE_GENERATION__ZERO_SNR", "true")
            .args(&args)
            .output()
            .unwrap()
    };
    let on = gen(&[], "on");
    let stderr = String::from_utf8_lossy(&on.stderr);
    assert!(
        !on.status.success() && stderr.contains("v-prediction"),
        "{stderr}"
    );
    let off = gen(&["--zero-snr=false"], "off");
    assert!(
        off.status.success(),
        "{}",
        String::from_utf8_lossy(&off.stderr)
    );
    let model = zero_snr_model(tmp.path());
    let (ok, stdout, stderr) = crate::cli::run(&["doctor", "--model", model.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("zero terminal SNR: on"), "{stdout}");
    let (_, plain, _) = crate::cli::run(&["doctor", "--model", tiny_sd2().to_str().unwrap()]);
    assert!(!plain.contains("zero terminal SNR"), "{plain}");
}
