//! stipple's σ schedules against A1111's own (`scripts/a1111_sigmas.py` writes
//! `tests/fixtures/reference/a1111_sigmas.json`: stable-diffusion-webui 1.10's schedule types
//! through k-diffusion 0.1.1.post1's `CompVisDenoiser`, for SD1.5's and SDXL's training schedule).
//!
//! Where stipple's schedule is A1111's, they agree within 1e-5 relative. Where stipple follows
//! diffusers and A1111 does not, the test asserts the difference is still there (so the README's
//! list of differences stays true): see [`expected`]. With A1111's σ (`--sigmas a1111`) every case
//! agrees, A1111's `Automatic` of each sampler and its dropped next-to-last σ included.

use crate::sdxl::tiny_sdxl;
use stipple::family::Family;
use stipple::job::{Sampler, Schedule, SigmaStyle};
use stipple::pipeline::schedulers::{build_styled, build_with, SchedulerConfig};

#[derive(serde::Deserialize)]
struct Case {
    family: String,
    schedule: String,
    steps: usize,
    sigmas: Vec<f64>,
    #[serde(default)]
    sampler: Option<String>,
    /// A1111's "Zero Terminal SNR" noise schedule.
    #[serde(default)]
    zsnr: bool,
}

#[derive(serde::Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

/// Whether stipple's `schedule` for `sampler` is A1111's (`Ok`), or why not.
fn expected(
    sampler: Sampler,
    schedule: Schedule,
    family: Family,
    steps: usize,
) -> Result<(), &'static str> {
    // The samplers of diffusers' Euler family take the σ range of their spaced timesteps;
    // DPM-Solver (and A1111) the whole training range.
    let euler_family = !matches!(
        sampler,
        Sampler::DpmPp2m | Sampler::DpmPp2mSde | Sampler::DpmPp3mSde
    );
    // With one step the dropped σ is σ_min, which a one-step schedule never had.
    if sampler == Sampler::DpmPp3mSde && steps > 1 {
        return Err("A1111 drops DPM++ 3M SDE's next-to-last σ");
    }
    match schedule {
        Schedule::Uniform | Schedule::Simple => Ok(()),
        Schedule::Karras | Schedule::Exponential | Schedule::Beta if euler_family => {
            if family == Family::Sdxl {
                Err("SDXL's config has leading spacing: diffusers' Euler family bounds σ by its spaced timesteps")
            } else if steps == 1 {
                Err("one step: diffusers' Euler family spaces its single timestep at 0")
            } else {
                Ok(())
            }
        }
        Schedule::Karras | Schedule::Exponential | Schedule::Beta => Ok(()),
        Schedule::SgmUniform if steps == 1 => Ok(()),
        Schedule::SgmUniform => Err("diffusers' trailing spacing rounds the timesteps to integers"),
        Schedule::AlignYourSteps => {
            Err("A1111 resamples the table to n points, ComfyUI to n + 1 (last dropped)")
        }
        Schedule::Automatic => Err("automatic is diffusers' default of the class"),
    }
}

fn config(family: Family) -> SchedulerConfig {
    match family {
        // SD1.5's own config (PNDM's), whose spacing the other classes do not take: linspace.
        Family::Sd1 | Family::Sd2 => SchedulerConfig::default(),
        // SDXL's: EulerDiscreteScheduler with leading spacing, as the tiny fixture ships it.
        Family::Sdxl => {
            SchedulerConfig::from_file(&tiny_sdxl().join("scheduler/scheduler_config.json"))
                .unwrap()
        }
    }
}

fn max_rel(got: &[f64], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            if *w == 0.0 {
                g.abs()
            } else {
                ((g - w) / w).abs()
            }
        })
        .fold(0.0, f64::max)
}

#[test]
fn sigma_schedules_match_a1111_where_stipple_has_them() {
    let path = crate::util::root().join("tests/fixtures/reference/a1111_sigmas.json");
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (mut same, mut differ) = (0, 0);
    for case in reference.cases.iter().filter(|c| !c.zsnr) {
        let family = if case.family == "sdxl" {
            Family::Sdxl
        } else {
            Family::Sd1
        };
        // A1111's schedule types stipple lacks (Polyexponential, KL Optimal, Normal, DDIM) are skipped;
        // a sampler case is A1111's "Automatic" (or Karras) of that sampler.
        let Ok(a1111) = case.schedule.parse::<Schedule>() else {
            continue;
        };
        let samplers: Vec<Sampler> = match &case.sampler {
            None => vec![Sampler::Euler, Sampler::DpmPp2m],
            Some(name) => vec![name.parse().unwrap()],
        };
        for sampler in samplers {
            // Two UNet calls a step interleave midpoints into the plan's σ; their base schedule is Euler's.
            if [
                Sampler::Heun,
                Sampler::Dpm2,
                Sampler::Dpm2A,
                Sampler::DpmPp2sA,
                Sampler::DpmPpSde,
            ]
            .contains(&sampler)
            {
                continue;
            }
            // A1111's "Automatic" of the sampler as stipple's schedule type (the JSON's meta.samplers).
            let schedule = match (a1111, sampler) {
                (Schedule::Automatic, Sampler::DpmPp2m) => Schedule::Karras,
                (Schedule::Automatic, Sampler::DpmPp2mSde | Sampler::DpmPp3mSde) => {
                    Schedule::Exponential
                }
                (Schedule::Automatic, _) => Schedule::Uniform,
                (s, _) => s,
            };
            let sch = build_with(sampler, schedule, family, &config(family), case.steps).unwrap();
            let got = sch.sigmas().unwrap();
            let err = max_rel(got, &case.sigmas);
            let what = format!(
                "{sampler} {schedule} {:?} {} steps: got {got:?}, A1111 {:?}",
                family, case.steps, case.sigmas
            );
            match expected(sampler, schedule, family, case.steps) {
                Ok(()) => {
                    assert!(err <= 1e-5, "{what}: relative error {err:e}");
                    same += 1;
                }
                Err(why) => {
                    assert!(
                        err > 1e-3,
                        "{what}: now A1111's ({err:e}), though expected to differ: {why}"
                    );
                    differ += 1;
                }
            }
        }
    }
    eprintln!("A1111 σ schedules: {same} cases equal within 1e-5, {differ} documented differences");
    assert!(
        same >= 150 && differ >= 50,
        "{same} equal, {differ} different"
    );
}

/// The σ a step starts from: for the samplers that call the UNet twice a step, every other entry
/// of their plan (the midpoints between them left out), then the final 0.
fn step_sigmas(sampler: Sampler, plan: &[f64]) -> Vec<f64> {
    let two_calls = [
        Sampler::Heun,
        Sampler::Dpm2,
        Sampler::Dpm2A,
        Sampler::DpmPp2sA,
        Sampler::DpmPpSde,
    ];
    if !two_calls.contains(&sampler) {
        return plan.to_vec();
    }
    // Heun's plan repeats each σ after the first for its corrector call.
    let mut out: Vec<f64> = if sampler == Sampler::Heun {
        let mut v = vec![plan[0]];
        v.extend(plan[1..plan.len() - 1].iter().step_by(2));
        v
    } else {
        plan[..plan.len() - 1].iter().step_by(2).copied().collect()
    };
    out.push(0.0);
    out
}

#[test]
fn a1111_sigma_style_gives_a1111s_sigmas_in_every_case() {
    let path = crate::util::root().join("tests/fixtures/reference/a1111_sigmas.json");
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (mut checked, mut zsnr) = (0, 0);
    for case in &reference.cases {
        let family = if case.family == "sdxl" {
            Family::Sdxl
        } else {
            Family::Sd1
        };
        let Ok(schedule) = case.schedule.parse::<Schedule>() else {
            continue;
        };
        let samplers: Vec<Sampler> = match &case.sampler {
            None => vec![Sampler::Euler, Sampler::DpmPp2m, Sampler::Lms],
            Some(name) => vec![name.parse().unwrap()],
        };
        for sampler in samplers {
            let cfg = if case.zsnr {
                // Zero terminal SNR needs a v model; the σ do not depend on it.
                SchedulerConfig {
                    rescale_betas_zero_snr: true,
                    prediction_type: stipple::pipeline::schedulers::PredictionType::VPrediction,
                    ..config(family)
                }
            } else {
                config(family)
            };
            let sch = build_styled(
                sampler,
                schedule,
                SigmaStyle::A1111,
                family,
                &cfg,
                case.steps,
            )
            .unwrap();
            let got = step_sigmas(sampler, sch.sigmas().unwrap());
            // A1111's list ends with its 0; stipple's plan too.
            let want = &case.sigmas;
            let err = max_rel(&got, want);
            assert!(
                err <= 1e-5,
                "{sampler} {schedule} {family:?} {} steps (zero SNR: {}) with A1111's σ: got \
                 {got:?}, A1111 {want:?} (relative error {err:e})",
                case.steps,
                case.zsnr
            );
            checked += 1;
            zsnr += usize::from(case.zsnr);
        }
    }
    eprintln!(
        "A1111 σ style: {checked} cases equal to A1111's within 1e-5 ({zsnr} with zero terminal SNR)"
    );
    assert!(
        checked >= 900 && zsnr >= 250,
        "only {checked} cases checked ({zsnr} zero SNR)"
    );
}

#[test]
fn a1111_sigmas_change_the_picture_and_are_named_in_the_infotext() {
    let mut g = crate::util::generator();
    let diffusers = stipple::job::Job {
        sampler: Sampler::DpmPp2m,
        ..crate::util::small_job("a red fox", 5)
    };
    let a1111 = stipple::job::Job {
        sigmas: SigmaStyle::A1111,
        ..diffusers.clone()
    };
    let (d, d_info) = crate::util::try_image_and_infotext(&mut g, &diffusers).unwrap();
    let (a, a_info) = crate::util::try_image_and_infotext(&mut g, &a1111).unwrap();
    // DPM++ 2M's automatic: diffusers' own σ at linspace timesteps, A1111's Karras over the
    // whole training range: another picture.
    let diff: f64 = d
        .iter()
        .zip(&a)
        .map(|(x, y)| f64::from((i16::from(*x) - i16::from(*y)).abs()))
        .sum::<f64>()
        / d.len() as f64;
    assert!(
        diff > 0.05,
        "A1111's σ gave the diffusers picture (mean abs {diff})"
    );
    assert!(a_info.contains("Sigmas: A1111"), "{a_info}");
    assert!(!d_info.contains("Sigmas:"), "{d_info}");
    // UniPC keeps diffusers' σ under either style: the same picture, nothing in the infotext.
    let unipc = |sigmas| stipple::job::Job {
        sampler: Sampler::UniPc,
        sigmas,
        ..diffusers.clone()
    };
    let (u1, _) =
        crate::util::try_image_and_infotext(&mut g, &unipc(SigmaStyle::Diffusers)).unwrap();
    let (u2, u2_info) =
        crate::util::try_image_and_infotext(&mut g, &unipc(SigmaStyle::A1111)).unwrap();
    assert_eq!(u1, u2);
    assert!(!u2_info.contains("Sigmas:"), "{u2_info}");
}

/// A batch line's `sigmas`: planned into the job (and so its hash), left out when diffusers'; a
/// style that does not exist is an invalid line naming the known ones.
#[test]
fn batch_lines_carry_the_sigma_style() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let plan = |extra: &str| {
        let template = format!(
            r#"{{"prompt": "a fox", "steps": 4, "seed": 1, "sampler": "DPM++ 2M"{extra}}}"#
        );
        crate::util::dry_run(&template, &out)
    };
    let planned = |lines: &[serde_json::Value]| {
        lines
            .iter()
            .find(|l| l["status"] == "planned")
            .cloned()
            .expect("a planned job")
    };
    let (ok, lines, stderr) = plan(r#", "sigmas": "a1111""#);
    assert!(ok, "{stderr}");
    let a1111 = planned(&lines);
    assert_eq!(a1111["job"]["sigmas"], "a1111");
    let (ok, lines, stderr) = plan("");
    assert!(ok, "{stderr}");
    let default = planned(&lines);
    assert!(default["job"].get("sigmas").is_none(), "{default}");
    assert_ne!(a1111["hash"], default["hash"]);
    let (ok, lines, stderr) = plan(r#", "sigmas": "comfy""#);
    assert!(!ok);
    let text = format!("{lines:?} {stderr}");
    assert!(text.contains("sigmas") && text.contains("a1111"), "{text}");
}

/// Zero terminal SNR with A1111's σ takes the samplers diffusers has no zero-SNR form of (A1111
/// rescales for every k-diffusion sampler): `generate` on the v-prediction tiny SD2 with Heun makes a
/// picture naming both in its infotext, a batch line with them is planned, and without A1111's σ
/// both are still refused.
#[test]
fn zero_snr_with_a1111_sigmas_takes_every_k_sampler() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let model = crate::util::root().join("tests/fixtures/tiny-sd2");
    let (ok, stdout, stderr) = crate::cli::run(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "a red fox",
        "--steps",
        "4",
        "--width",
        "32",
        "--height",
        "32",
        "--sampler",
        "heun",
        "--zero-snr",
        "--sigmas",
        "a1111",
        "--no-preview",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("Noise Schedule: Zero Terminal SNR") && stdout.contains("Sigmas: A1111"),
        "{stdout}"
    );
    let plan = |extra: &str| {
        crate::reference_spec::planned(
            &format!(
                r#"{{"prompt": "a fox", "steps": 4, "seed": 1, "zero_snr": true, "sampler": "heun"{extra}}}"#
            ),
            &out,
        )
    };
    let (ok, planned, report) = plan(r#", "sigmas": "a1111""#);
    assert!(ok && planned.is_some(), "{report}");
    let (_, planned, report) = plan("");
    assert!(
        planned.is_none() && report.contains("--sigmas a1111"),
        "{report}"
    );
}
