//! stipple's σ schedules against A1111's own (`scripts/a1111_sigmas.py` writes
//! `tests/fixtures/reference/a1111_sigmas.json`: stable-diffusion-webui 1.10's schedule types
//! through k-diffusion 0.1.1.post1's `CompVisDenoiser`, for SD1.5's and SDXL's training schedule).
//!
//! Where stipple's schedule is A1111's, they agree within 1e-5 relative. Where stipple follows
//! diffusers and A1111 does not, the test asserts the difference is still there (so the README's
//! list of differences stays true): see [`expected`].

use crate::sdxl::tiny_sdxl;
use stipple::family::Family;
use stipple::job::{Sampler, Schedule};
use stipple::pipeline::schedulers::{build_with, SchedulerConfig};

#[derive(serde::Deserialize)]
struct Case {
    family: String,
    schedule: String,
    steps: usize,
    sigmas: Vec<f64>,
    #[serde(default)]
    sampler: Option<String>,
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
    for case in &reference.cases {
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
