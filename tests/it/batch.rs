//! `stipple batch` as a user runs it on the tiny model: bad lines, reruns, shards, sweeps, several
//! engines, and what SIGKILL and Ctrl-C leave behind.

use crate::util::*;
use serde_json::Value;
use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use stipple::image::read_text_chunks;
use stipple::job::Job;

fn stipple() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stipple"));
    c.current_dir(root());
    c
}

struct Run {
    ok: bool,
    lines: Vec<Value>,
    stderr: String,
}

impl Run {
    fn with(&self, status: &str) -> Vec<&Value> {
        self.lines
            .iter()
            .filter(|l| l["status"] == status)
            .collect()
    }
}

fn batch(args: &[&str]) -> Run {
    let out = stipple().arg("batch").args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    Run {
        ok: out.status.success(),
        lines: stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect(),
        stderr,
    }
}

fn job_line(prompt: &str, seed: u64) -> String {
    format!(r#"{{"prompt": "{prompt}", "steps": 2, "seed": {seed}}}"#)
}

fn write_jobs(dir: &Path, lines: &[String]) -> PathBuf {
    let p = dir.join("jobs.jsonl");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

fn manifest(out: &Path, name: &str) -> Vec<Value> {
    std::fs::read_to_string(out.join(name))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("torn manifest line {l:?}: {e}"))
        })
        .collect()
}

/// Every PNG under `out` (outside stipple's hidden staging folder).
fn pngs(out: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut dirs = vec![out.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().starts_with(".stipple") {
                continue;
            }
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "png") {
                found.insert(p);
            }
        }
    }
    found
}

/// A listed image is whole: it decodes at the job's size and its chunk holds the job.
fn assert_complete(out: &Path, record: &Value) {
    let job: Job = serde_json::from_value(record["job"].clone()).unwrap();
    for img in record["images"].as_array().unwrap() {
        let path = out.join(img["path"].as_str().unwrap());
        let (w, h, px) = read_rgb(&path);
        assert_eq!(
            (w, h, px.len()),
            (job.width, job.height, (w * h * 3) as usize)
        );
        let stored: Job =
            serde_json::from_str(&read_text_chunks(&path).unwrap()["stipple"]).unwrap();
        assert_eq!(stored.seed, img["seed"].as_u64().unwrap());
        assert_eq!(stored.prompt, job.prompt);
    }
}

#[test]
fn a_bad_line_is_reported_the_others_run_and_a_rerun_skips_them() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lines: Vec<String> = (1..=12)
        .map(|i| job_line(&format!("a fox {i}"), i))
        .collect();
    lines[5] = r#"{"prompt": "a fox 6", "stesp": 2, "seed": 6}"#.into();
    let jobs = write_jobs(tmp.path(), &lines);
    let out = tmp.path().join("out");
    let args = [jobs.to_str().unwrap(), "--out", out.to_str().unwrap()];

    let first = batch(&args);
    assert!(!first.ok, "a bad line must make the exit status non-zero");
    assert_eq!(first.with("done").len(), 11, "{}", first.stderr);
    let invalid = first.with("invalid");
    assert_eq!(invalid.len(), 1);
    assert_eq!(invalid[0]["line"], 6);
    assert!(invalid[0]["error"]
        .as_str()
        .unwrap()
        .contains("unknown field `stesp`"));
    assert!(
        first.stderr.contains("jobs.jsonl:6: unknown field `stesp`"),
        "{}",
        first.stderr
    );
    assert!(
        first.stderr.contains("1 job line is invalid"),
        "{}",
        first.stderr
    );
    let listed = manifest(&out, "results.jsonl");
    assert_eq!(listed.len(), 11);
    let lines_done: BTreeSet<u64> = listed.iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(lines_done, (1..=12).filter(|&l| l != 6).collect());
    for r in &listed {
        assert_complete(&out, r);
    }
    let images = pngs(&out);
    assert_eq!(images.len(), 11);

    let again = batch(&args);
    assert!(!again.ok);
    assert_eq!(again.with("done").len(), 0, "finished jobs ran again");
    assert_eq!(again.with("skipped").len(), 11);
    assert_eq!(again.with("invalid").len(), 1);
    assert_eq!(pngs(&out), images, "a rerun wrote files");
    assert_eq!(manifest(&out, "results.jsonl").len(), 11);

    // Fixing the line runs just that job, and the batch succeeds.
    lines[5] = job_line("a fox 6", 6);
    write_jobs(tmp.path(), &lines);
    let fixed = batch(&args);
    assert!(fixed.ok, "{}", fixed.stderr);
    assert_eq!(fixed.with("done").len(), 1);
    assert_eq!(fixed.with("done")[0]["line"], 6);
    assert_eq!(fixed.with("skipped").len(), 11);
}

#[test]
fn three_shards_make_exactly_the_whole_set() {
    let tmp = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (1..=12).map(|i| job_line("a lighthouse", i)).collect();
    let jobs = write_jobs(tmp.path(), &lines);
    let jobs = jobs.to_str().unwrap();
    let plan = batch(&[
        jobs,
        "--dry-run",
        "--out",
        tmp.path().join("none").to_str().unwrap(),
    ]);
    assert!(plan.ok, "{}", plan.stderr);
    let all: HashSet<String> = plan
        .with("planned")
        .iter()
        .map(|l| l["hash"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(all.len(), 12);
    assert!(!tmp.path().join("none").exists(), "a dry run wrote files");

    let mut union = HashSet::new();
    for k in 1..=3 {
        // Separate folders, so that skipping cannot hide an overlap.
        let out = tmp.path().join(format!("shard{k}"));
        let shard = format!("{k}/3");
        let r = batch(&[jobs, "--shard", &shard, "--out", out.to_str().unwrap()]);
        assert!(r.ok, "{}", r.stderr);
        let listed = manifest(&out, &format!("results.shard-{k}-of-3.jsonl"));
        assert_eq!(listed.len(), 4, "shard {shard}");
        assert_eq!(r.with("done").len(), 4);
        for rec in &listed {
            assert_complete(&out, rec);
            let h = rec["hash"].as_str().unwrap().to_string();
            assert!(
                union.insert(h),
                "shard {shard} repeats a job of an earlier shard"
            );
        }
    }
    assert_eq!(union, all);
}

#[test]
fn a_sweep_expands_to_the_cross_product_and_dry_run_shows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let loras = tmp.path().join("loras");
    std::fs::create_dir_all(&loras).unwrap();
    std::fs::write(
        loras.join("ink.safetensors"),
        b"not read by a dry run beyond a hash",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let args = [
        "--template",
        r#"{"prompt": "a fox <lora:ink:{s}>", "steps": 2, "out": "ink-{s}/{seed}"}"#,
        "--sweep",
        "seed=1..4",
        "--sweep",
        "s=0,0.5,1",
        "--lora-dir",
        loras.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dry-run",
    ];
    let r = batch(&args);
    assert!(r.ok, "{}", r.stderr);
    let planned = r.with("planned");
    assert_eq!(planned.len(), 12);
    let mut got = BTreeSet::new();
    for l in &planned {
        let seed = l["job"]["seed"].as_u64().unwrap();
        let s = l["vars"]["s"].to_string();
        assert_eq!(l["job"]["prompt"], format!("a fox <lora:ink:{s}>"));
        let path = l["images"][0]["path"].as_str().unwrap();
        let hash = l["hash"].as_str().unwrap();
        assert_eq!(
            PathBuf::from(path),
            out.join(format!("ink-{s}/{seed}-{}.png", &hash[..12]))
        );
        got.insert((seed, s));
    }
    let want: BTreeSet<(u64, String)> = (1..=4)
        .flat_map(|seed| ["0", "0.5", "1"].map(|s| (seed, s.to_string())))
        .collect();
    assert_eq!(got, want);
    assert!(!out.exists(), "a dry run wrote files");
    let hashes = |r: &Run| -> BTreeSet<String> {
        r.with("planned")
            .iter()
            .map(|l| l["hash"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(hashes(&r).len(), 12);
    // The adapter file is part of a job's identity: changing it makes new jobs.
    std::fs::write(loras.join("ink.safetensors"), b"retrained").unwrap();
    assert!(hashes(&batch(&args)).is_disjoint(&hashes(&r)));
    // A misspelt variable is an error, not a silently ignored axis.
    let typo = batch(&[
        "--template",
        r#"{"prompt": "a fox"}"#,
        "--sweep",
        "strength=0,1",
        "--dry-run",
    ]);
    assert!(!typo.ok);
    assert!(
        typo.stderr
            .contains("sweep variable `strength` is not used"),
        "{}",
        typo.stderr
    );
}

/// A two-step "a fox" job swept over seeds 1..=`n` on `devices`, into `out`.
fn sweep_seeds(n: u32, devices: &str, out: &Path) -> Run {
    let seeds = format!("seed=1..{n}");
    batch(&[
        "--template",
        r#"{"prompt": "a fox", "steps": 2}"#,
        "--sweep",
        &seeds,
        "--device",
        devices,
        "--threads",
        "1",
        "--out",
        out.to_str().unwrap(),
    ])
}

#[test]
fn a_sweep_runs_on_two_engines_and_names_images_by_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let r = sweep_seeds(6, "cpu,cpu", &out);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stderr.matches("loaded on cpu").count(), 2, "{}", r.stderr);
    let seeds: BTreeSet<u64> = manifest(&out, "results.jsonl")
        .iter()
        .map(|rec| rec["images"][0]["seed"].as_u64().unwrap())
        .collect();
    assert_eq!(seeds, (1..=6).collect());
    assert_eq!(pngs(&out).len(), 6);
}

/// A device that cannot load the model (here cuda:0 on a machine whose ONNX Runtime has no CUDA
/// provider) leaves its jobs to the other engine: every job is done, none failed.
#[test]
fn a_device_that_cannot_load_the_model_leaves_its_jobs_to_the_other_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let r = sweep_seeds(10, "cpu,cuda:0", &out);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.with("done").len(), 10, "{}", r.stderr);
    assert!(r.with("failed").is_empty(), "{}", r.stderr);
    // Where a CUDA build is installed, cuda:0 may load instead; either is fine for the set.
    let refused = r.stderr.contains("on cuda:0") && r.stderr.contains("wait for another device");
    assert!(
        refused || r.stderr.contains("loaded on cuda:0"),
        "{}",
        r.stderr
    );
    assert_eq!(manifest(&out, "results.jsonl").len(), 10);
    assert_eq!(pngs(&out).len(), 10);
}

/// Starts a 12-job batch and returns it once its first result line has appeared.
fn start_and_wait_for_a_result(jobs: &Path, out: &Path) -> (std::process::Child, Vec<String>) {
    let mut child = stipple()
        .args([
            "batch",
            jobs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap() > 0 {
        seen.push(line.clone());
        if line.contains("\"done\"") {
            break;
        }
        line.clear();
    }
    assert!(!seen.is_empty(), "the batch printed nothing");
    (child, seen)
}

#[test]
fn sigkill_mid_batch_leaves_every_listed_result_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (1..=12)
        .map(|i| format!(r#"{{"prompt": "a storm {i}", "steps": 8, "seed": {i}}}"#))
        .collect();
    let jobs = write_jobs(tmp.path(), &lines);
    let out = tmp.path().join("out");
    let (mut child, _) = start_and_wait_for_a_result(&jobs, &out);
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();

    let listed = manifest(&out, "results.jsonl");
    assert!(
        !listed.is_empty() && listed.len() < 12,
        "{} listed",
        listed.len()
    );
    for r in &listed {
        assert_complete(&out, r);
    }
    // Whatever else is under a final name is whole too (a job killed between its image and its line).
    for p in pngs(&out) {
        let (w, h, px) = read_rgb(&p);
        assert_eq!(px.len(), (w * h * 3) as usize, "{}", p.display());
    }
    // The rerun finishes the rest and skips what was listed.
    let rest = batch(&[jobs.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(rest.ok, "{}", rest.stderr);
    assert_eq!(rest.with("skipped").len(), listed.len());
    assert_eq!(rest.with("done").len(), 12 - listed.len());
    let all = manifest(&out, "results.jsonl");
    let hashes: HashSet<&str> = all.iter().map(|r| r["hash"].as_str().unwrap()).collect();
    assert_eq!((all.len(), hashes.len()), (12, 12));
    assert_eq!(pngs(&out).len(), 12);
    assert!(
        !out.join(".stipple-staging").exists(),
        "staging left behind"
    );
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_after_the_current_step_and_leaves_no_partial_files() {
    let tmp = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (1..=12)
        .map(|i| format!(r#"{{"prompt": "a calm sea {i}", "steps": 8, "seed": {i}}}"#))
        .collect();
    let jobs = write_jobs(tmp.path(), &lines);
    let out = tmp.path().join("out");
    let (mut child, _) = start_and_wait_for_a_result(&jobs, &out);
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "an interrupted batch is not a success"
    );
    let listed = manifest(&out, "results.jsonl");
    assert!(listed.len() < 12);
    for r in &listed {
        assert_complete(&out, r);
    }
    let listed_files: BTreeSet<PathBuf> = listed
        .iter()
        .flat_map(|r| r["images"].as_array().unwrap().clone())
        .map(|i| out.join(i["path"].as_str().unwrap()))
        .collect();
    assert_eq!(pngs(&out), listed_files, "files outside the manifest");
    assert!(
        !out.join(".stipple-staging").exists(),
        "staging left behind"
    );
}

#[test]
fn an_unusable_output_folder_or_shard_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let jobs = write_jobs(tmp.path(), &[job_line("x", 1)]);
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let r = batch(&[jobs.to_str().unwrap(), "--out", file.to_str().unwrap()]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("cannot write to the output folder") && r.stderr.contains("a-file"),
        "{}",
        r.stderr
    );
    let r = batch(&[jobs.to_str().unwrap(), "--shard", "0/3"]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("shard \"0/3\": I counts from 1"),
        "{}",
        r.stderr
    );
    let r = batch(&[tmp.path().join("missing.jsonl").to_str().unwrap()]);
    assert!(!r.ok);
    assert!(r.stderr.contains("cannot read the job file") && r.stderr.contains("missing.jsonl"));
}

/// The pixels of every listed image, by (line, index).
fn listed_pixels(out: &Path) -> std::collections::BTreeMap<(u64, u64), Vec<u8>> {
    manifest(out, "results.jsonl")
        .iter()
        .flat_map(|r| {
            let line = r["line"].as_u64().unwrap();
            r["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |i| {
                    let path = out.join(i["path"].as_str().unwrap());
                    ((line, i["index"].as_u64().unwrap()), read_rgb(&path).2)
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn grouped_jobs_make_the_images_of_ungrouped_ones_and_a_broken_adapter_fails_only_its_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let lines = vec![
        job_line("a fox", 1),
        r#"{"prompt": "a cat", "steps": 2, "seed": 2, "batch": 2, "cfg": 5}"#.to_string(),
        job_line("a fox <lora:bad_truncated:1>", 3),
        r#"{"prompt": "a dog", "negative": "blurry", "steps": 2, "seed": 4}"#.to_string(),
        r#"{"prompt": "a cow", "steps": 3, "seed": 5}"#.to_string(),
        job_line("a hen", 6),
    ];
    let jobs = write_jobs(tmp.path(), &lines);
    let lora = root().join("tests/fixtures/lora");
    let run = |out: &Path, per_call: &str| {
        batch(&[
            jobs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--lora-dir",
            lora.to_str().unwrap(),
            "--unet-batch",
            per_call,
        ])
    };
    let (alone, grouped) = (tmp.path().join("alone"), tmp.path().join("grouped"));
    let one = run(&alone, "1");
    let four = run(&grouped, "4");
    for r in [&one, &four] {
        assert!(!r.ok, "a failed job makes the exit status non-zero");
        let failed = r.with("failed");
        assert_eq!(failed.len(), 1, "{}", r.stderr);
        assert_eq!(failed[0]["line"], 3);
        assert!(failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("bad_truncated"));
        assert_eq!(r.with("done").len(), 5, "{}", r.stderr);
    }
    // Grouped: lines 1, 2 (two images) and 4 share calls (line 6 would overflow 4 images); then
    // line 3 alone (another adapter), line 5 (other steps), line 6. Results come in that order.
    let done: Vec<u64> = four
        .with("done")
        .iter()
        .map(|l| l["line"].as_u64().unwrap())
        .collect();
    assert_eq!(done, [1, 2, 4, 5, 6]);
    let listed = manifest(&grouped, "results.jsonl");
    assert_eq!(listed.len(), 5, "one manifest line per job");
    for r in &listed {
        assert_complete(&grouped, r);
    }
    let (a, g) = (listed_pixels(&alone), listed_pixels(&grouped));
    assert_eq!(a.len(), 6);
    assert_eq!(a, g, "grouping changed an image");
    // A rerun skips every finished job, grouped or not.
    let again = run(&grouped, "4");
    assert_eq!(again.with("skipped").len(), 5);
    assert_eq!(again.with("done").len(), 0);
}

#[test]
fn a_job_line_takes_a_schedule_type_and_refuses_one_its_sampler_contradicts() {
    let tmp = tempfile::tempdir().unwrap();
    let jobs = write_jobs(
        tmp.path(),
        &[
            r#"{"prompt": "a fox", "seed": 1, "sampler": "DPM++ 2M SDE", "schedule": "karras"}"#.into(),
            r#"{"prompt": "a fox", "seed": 2, "sampler": "DPM++ 2M SDE Karras", "schedule": "beta"}"#.into(),
            r#"{"prompt": "a fox", "seed": 3, "schedule": "karas"}"#.into(),
            r#"{"prompt": "a fox", "seed": 4, "sampler": "ddim", "schedule": "ays"}"#.into(),
            r#"{"prompt": "a fox", "seed": 5}"#.into(),
        ],
    );
    let r = batch(&[jobs.to_str().unwrap(), "--dry-run"]);
    let planned = r.with("planned");
    assert_eq!(planned.len(), 2, "{}", r.stderr);
    assert_eq!(planned[0]["job"]["schedule"], "Karras", "{:?}", planned[0]);
    // Automatic is left out of the job, so jobs written before schedule types keep their hashes.
    assert!(
        planned[1]["job"].get("schedule").is_none(),
        "{:?}",
        planned[1]
    );
    let invalid: Vec<String> = r
        .with("invalid")
        .iter()
        .map(|l| l["error"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(invalid.len(), 3, "{invalid:?}");
    assert!(invalid[0].contains("give one"), "{}", invalid[0]);
    assert!(invalid[1].contains("karas"), "{}", invalid[1]);
    assert!(invalid[2].to_lowercase().contains("ddim"), "{}", invalid[2]);
}
