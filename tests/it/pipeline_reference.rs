//! The pipeline's pure-Rust numerics against references computed by torch, transformers and
//! diffusers (`scripts/reference_{rng,tokenizer,schedulers}.py` write `tests/fixtures/reference/`).

use serde_json::Value;
use std::path::PathBuf;
use stipple::family::Family;
use stipple::job::{Sampler, Schedule};
use stipple::pipeline::rng::TorchRng;
use stipple::pipeline::schedulers::sigma_schedules::ays_table;
use stipple::pipeline::schedulers::{build_with, SchedulerConfig};
use stipple::pipeline::tokenizer::{ClipTokenizer, CONTEXT_LEN};

fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference")
}

fn load(name: &str) -> Value {
    let path = reference_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Every call of every sequence on one generator, as torch drew them (1e-6 abs).
#[test]
fn torch_rng_matches_torch_randn() {
    let reference = load("rng.json");
    let mut worst = 0f64;
    for case in reference["cases"].as_array().unwrap() {
        let seed = case["seed"].as_u64().unwrap();
        let mut rng = TorchRng::new(seed);
        for (k, call) in case["calls"].as_array().unwrap().iter().enumerate() {
            let n = call["numel"].as_u64().unwrap() as usize;
            let got = rng.randn(n);
            assert_eq!(got.len(), n);
            let want = f64s(&call["values"]);
            let idx: Vec<usize> = match &call["indices"] {
                Value::Null => (0..n).collect(),
                v => u32s(v).into_iter().map(|i| i as usize).collect(),
            };
            for (&i, &w) in idx.iter().zip(&want) {
                let err = (f64::from(got[i]) - w).abs();
                worst = worst.max(err);
                assert!(
                    err <= 1e-6,
                    "seed {seed} call {k} (n={n}) [{i}]: {} vs {w}",
                    got[i]
                );
            }
            let sum: f64 = got.iter().map(|&x| f64::from(x)).sum();
            let want_sum = call["sum"].as_f64().unwrap();
            assert!(
                (sum - want_sum).abs() <= 1e-6 * n as f64,
                "seed {seed} call {k}: sum"
            );
        }
    }
    eprintln!("torch rng: max abs error {worst:e}");
}

fn mini_tokenizer() -> ClipTokenizer {
    ClipTokenizer::from_dir(&reference_dir().join("clip_tokenizer_mini")).unwrap()
}

/// Ids (plain and padded to 77) as `transformers.CLIPTokenizer` gives them, exactly.
#[test]
fn clip_tokenizer_matches_transformers() {
    let reference = load("tokenizer.json");
    let pad = reference["meta"]["pad_id"].as_u64().unwrap() as u32;
    check_tokenizer(&mini_tokenizer(), &reference, pad);
}

/// The same prompts against a full SD1.x tokenizer folder: the one named by `STIPPLE_CLIP_TOKENIZER`
/// (e.g. the output of `scripts/clip_vocab.py`), else the bundled tiny model's (which is the full one).
/// Without either it is skipped, except under `CI=true`, where it fails.
#[test]
fn clip_tokenizer_matches_transformers_with_full_vocab() {
    let dir = std::env::var_os("STIPPLE_CLIP_TOKENIZER")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::util::tiny_model().join("tokenizer"));
    if !dir.join("vocab.json").is_file() {
        crate::util::environment_missing(&format!(
            "no full CLIP tokenizer at {} (set STIPPLE_CLIP_TOKENIZER)",
            dir.display()
        ));
        return;
    }
    let tok = ClipTokenizer::from_dir(&dir).unwrap();
    assert_eq!(
        tok.encode_padded("a photo of a cat", 49407)[..7],
        [49406, 320, 1125, 539, 320, 2368, 49407]
    );
    check_tokenizer(&tok, &load("tokenizer.json"), 49407);
}

fn check_tokenizer(tok: &ClipTokenizer, reference: &Value, pad: u32) {
    for case in reference["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        assert_eq!(tok.encode(prompt), u32s(&case["ids"]), "prompt {prompt:?}");
        let padded = tok.encode_padded(prompt, pad);
        assert_eq!(padded.len(), CONTEXT_LEN);
        assert_eq!(padded, u32s(&case["padded"]), "padded prompt {prompt:?}");
    }
}

#[test]
fn clip_tokenizer_reports_a_broken_folder() {
    let dir = tempfile::tempdir().unwrap();
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("vocab.json"), "{err}");
    std::fs::write(dir.path().join("vocab.json"), "{not json").unwrap();
    std::fs::write(dir.path().join("merges.txt"), "#version: 0.2\n").unwrap();
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("vocab.json") && err.contains("JSON"), "{err}");
}

/// Relative error of `got` against `want`, scaled by the larger of |want| and the largest |value|
/// of the reference vector it belongs to (so values near zero are judged against the vector).
fn rel_err(got: f64, want: f64, scale: f64) -> f64 {
    (got - want).abs() / want.abs().max(scale).max(1e-30)
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// The closed-form stand-in for the UNet that scripts/reference_schedulers.py uses.
fn fake_model(x_in: &[f32], t: f64) -> Vec<f32> {
    x_in.iter()
        .enumerate()
        .map(|(k, &x)| (0.1 * f64::from(x) + (t / 100.0 + 0.01 * k as f64).cos()) as f32)
        .collect()
}

/// Timesteps, sigmas, input scaling and whole sampling runs (with torch-generator noise for
/// Euler a) against diffusers' schedulers made from SD1.5's config, within 1e-5 relative.
#[test]
fn schedulers_match_diffusers() {
    let (worst_schedule, worst_run) = check_scheduler_runs("schedulers.json", 1e-12);
    eprintln!(
        "schedulers: max rel error, schedules {worst_schedule:e}, sampling runs {worst_run:e}"
    );
}

/// The samplers added for issue 22 (Heun, LMS, DPM++ 2M SDE with torch-generator noise, UniPC,
/// LCM) and every σ sampler under every schedule type (`scripts/reference_samplers.py`: diffusers'
/// own flags for Karras, exponential and beta; SGM uniform, simple, Align Your Steps and uniform
/// computed by the script and run through diffusers' Karras path), on the same terms as the first five, except
/// that fractional timesteps (Euler-family classes under a schedule type) agree to 1e-6 relative:
/// diffusers interpolates them between numpy's float32 logs of the training σ, which are not the
/// correctly rounded ones (197 of SD's 1000 differ in the last bit), so they move by ~1e-7.
#[test]
fn samplers_and_schedule_types_match_diffusers() {
    let (worst_schedule, worst_run) = check_scheduler_runs("samplers.json", 1e-6);
    eprintln!(
        "samplers x schedule types: max rel error, schedules {worst_schedule:e}, sampling runs {worst_run:e}"
    );
}

/// DPM2, DPM2 a, DPM++ 2S a, DPM++ SDE, DPM++ 3M SDE, DEIS, DDPM and TCD × every schedule type
/// they take, against `scripts/reference_samplers_more.py` (diffusers' classes; k-diffusion's
/// `sample_dpmpp_2s_ancestral` re-implemented there; DPM++ SDE with the script's seeded Brownian
/// noise), within 1e-4 relative: DPM2 a's σ_down² = σ_next² − σ_up² cancels to three digits at
/// the last steps, so torch's float32 `sqrt` (on this CPU one ulp off the correctly rounded one
/// that Rust and numpy give) moves its midpoint σ by ~5e-5. Midpoint timesteps agree to 1e-5
/// relative (1e-4 absolute below 10, where diffusers clips some to 0): diffusers derives DPM++
/// SDE's from float64 σ and KDPM2's in float32, stipple from the float32 σ in float64.
#[test]
fn more_samplers_match_their_references() {
    let (worst_schedule, worst_run) = check_runs("samplers_more.json", 1e-5, 10.0, 1e-4);
    eprintln!(
        "more samplers: max rel error, schedules {worst_schedule:e}, sampling runs {worst_run:e}"
    );
}

/// Zero terminal SNR (`rescale_betas_zero_snr`, v-prediction) for every sampler whose diffusers
/// class takes it (Euler, Euler a, DDIM, DPM++ 2M / 2M Karras / 2M SDE / 3M SDE, UniPC, DDPM, LCM,
/// TCD): trailing spacing at 4, 8 and 20 steps, the class's own spacing, and Euler and DPM++ 2M
/// under the schedule types, against `scripts/reference_zero_snr.py --schedulers`. σ, initial
/// noise factor and input divisors within 1e-5 relative, sampling runs within 1e-4, fractional
/// timesteps within 1e-5 (1e-4 absolute below 10). Not bit for bit: the rescaling takes √ᾱ, and
/// torch's float32 `sqrt` on the CPU that made the references is one ulp off the correctly
/// rounded root (Rust's, numpy's) for 182 of SD's 1000 ᾱ; √ᾱ − √ᾱ_T cancels near the end of the
/// schedule, so training σ move by up to 7e-6 relative, and σ_max = √((1 − 2⁻²⁴)/2⁻²⁴) is 4096 in
/// torch, one ulp below in stipple. The first Euler-family step from σ_max cancels two latents
/// of size ~4096·|z|, so that ulp of σ_max moves its result by one float32 ulp at 4096 (2.4e-4),
/// up to 6.5e-5 of the run's values.
#[test]
fn zero_snr_schedulers_match_diffusers() {
    let (worst_schedule, worst_run) = check_runs("zero_snr.json", 1e-5, 10.0, 1e-4);
    assert!(worst_schedule <= 1e-5, "schedules: {worst_schedule:e}");
    let reference = load("zero_snr.json");
    let meta = &reference["meta"];
    let mut worst_ulps = 0u32;
    for case in reference["cases"].as_array().unwrap() {
        let Some(want) = case["sigmas"].as_array() else {
            continue;
        };
        let mut cfg_json = meta["base_config"].clone();
        for (k, v) in case["overrides"].as_object().unwrap() {
            cfg_json[k] = v.clone();
        }
        let cfg = SchedulerConfig::from_json_str(&cfg_json.to_string()).unwrap();
        assert!(cfg.rescale_betas_zero_snr);
        let sampler: Sampler = case["sampler"].as_str().unwrap().parse().unwrap();
        let schedule: Schedule = case["schedule"].as_str().unwrap().parse().unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let sch = build_with(sampler, schedule, Family::Sd1, &cfg, steps).unwrap();
        for (g, w) in sch.sigmas().unwrap().iter().zip(want) {
            let (g, w) = (*g as f32, w.as_f64().unwrap() as f32);
            let ulps = (g.to_bits() as i64 - w.to_bits() as i64).unsigned_abs() as u32;
            worst_ulps = worst_ulps.max(ulps);
        }
    }
    eprintln!(
        "zero SNR: max rel error, schedules {worst_schedule:e}, sampling runs {worst_run:e}; \
         σ within {worst_ulps} float32 ulps"
    );
}

/// The Align Your Steps tables are the published ones: the script takes their first ten values
/// from diffusers' `AysSchedules`.
#[test]
fn align_your_steps_tables_are_the_published_ones() {
    let reference = load("samplers.json");
    for (family, key) in [(Family::Sd1, "sd1"), (Family::Sdxl, "sdxl")] {
        let want = f64s(&reference["meta"]["ays"][key]);
        assert_eq!(ays_table(family).as_slice(), want.as_slice(), "{key}");
    }
}

/// Runs every case of a reference file written by `scripts/reference_{schedulers,samplers}.py`
/// and returns the worst relative errors (schedules, sampling runs), failing above 1e-5 (timesteps
/// above `timestep_tol`).
fn check_scheduler_runs(file: &str, timestep_tol: f64) -> (f64, f64) {
    check_runs(file, timestep_tol, 0.0, 1e-5)
}

/// [`check_scheduler_runs`] with timesteps compared relative to at least `floor` (timesteps near
/// 0 that one side clips to 0).
fn check_runs(file: &str, timestep_tol: f64, floor: f64, tol: f64) -> (f64, f64) {
    let reference = load(file);
    let meta = &reference["meta"];
    let numel: usize = meta["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .product();
    let picks: Vec<usize> = u32s(&meta["step_sample_indices"])
        .into_iter()
        .map(|i| i as usize)
        .collect();
    let stride = meta["final_stride"].as_u64().unwrap() as usize;
    let (mut worst_schedule, mut worst_run) = (0f64, 0f64);
    for case in reference["cases"].as_array().unwrap() {
        let mut cfg_json = meta["base_config"].clone();
        for (k, v) in case["overrides"].as_object().unwrap() {
            cfg_json[k] = v.clone();
        }
        let cfg = SchedulerConfig::from_json_str(&cfg_json.to_string()).unwrap();
        let sampler: Sampler = case["sampler"].as_str().unwrap().parse().unwrap();
        let schedule: Schedule = case["schedule"]
            .as_str()
            .unwrap_or("automatic")
            .parse()
            .unwrap();
        let family = match case["family"].as_str() {
            Some("sdxl") => Family::Sdxl,
            _ => Family::Sd1,
        };
        let steps = case["steps"].as_u64().unwrap() as usize;
        let label = format!(
            "{} {schedule} {family:?} {steps} steps {}",
            sampler, case["overrides"]
        );
        let mut sch = build_with(sampler, schedule, family, &cfg, steps).unwrap();

        // Exact up to serde_json's last-bit float parsing.
        let want = f64s(&case["timesteps"]);
        assert_eq!(sch.timesteps().len(), want.len(), "{label}: timestep count");
        for (&g, &w) in sch.timesteps().iter().zip(&want) {
            assert!(
                (g - w).abs() <= timestep_tol * w.abs().max(floor),
                "{label}: timesteps {:?} vs {want:?}",
                sch.timesteps()
            );
        }
        match (&case["sigmas"], sch.sigmas()) {
            (Value::Null, None) => {}
            (want, Some(got)) => {
                let want = f64s(want);
                assert_eq!(got.len(), want.len(), "{label}: sigma count");
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    let e = rel_err(g, w, 0.0);
                    worst_schedule = worst_schedule.max(e);
                    assert!(e <= tol, "{label}: sigma[{i}] {g} vs {w}");
                }
            }
            (want, got) => panic!("{label}: sigmas {want:?} vs {got:?}"),
        }
        let init = case["init_noise_sigma"].as_f64().unwrap();
        let e = rel_err(f64::from(sch.init_noise_sigma()), init, 0.0);
        worst_schedule = worst_schedule.max(e);
        assert!(
            e <= tol,
            "{label}: init_noise_sigma {} vs {init}",
            sch.init_noise_sigma()
        );
        for (i, &d) in f64s(&case["input_divisors"]).iter().enumerate() {
            let e = rel_err(f64::from(sch.input_divisor(i)), d, 0.0);
            worst_schedule = worst_schedule.max(e);
            assert!(
                e <= tol,
                "{label}: input divisor {i}: {} vs {d}",
                sch.input_divisor(i)
            );
        }

        let mut rng = TorchRng::new(case["seed"].as_u64().unwrap());
        let init_sigma = sch.init_noise_sigma();
        let mut latents: Vec<f32> = rng
            .randn(numel)
            .into_iter()
            .map(|x| x * init_sigma)
            .collect();
        let timesteps = sch.timesteps().to_vec();
        let samples = case["step_samples"].as_array().unwrap();
        for (i, &t) in timesteps.iter().enumerate() {
            let x_in = sch.scale_model_input(&latents, i);
            let out = fake_model(&x_in, t);
            latents = sch.step(&out, i, &latents, &mut |n| rng.randn(n));
            let want = f64s(&samples[i]);
            let scale = max_abs(&want);
            for (&k, &w) in picks.iter().zip(&want) {
                let e = rel_err(f64::from(latents[k]), w, scale);
                worst_run = worst_run.max(e);
                assert!(e <= tol, "{label}: step {i} [{k}]: {} vs {w}", latents[k]);
            }
        }
        let want = f64s(&case["final"]);
        let scale = max_abs(&want);
        for (j, &w) in want.iter().enumerate() {
            let e = rel_err(f64::from(latents[j * stride]), w, scale);
            worst_run = worst_run.max(e);
            assert!(
                e <= tol,
                "{label}: final [{}]: {} vs {w}",
                j * stride,
                latents[j * stride]
            );
        }
    }
    (worst_schedule, worst_run)
}
