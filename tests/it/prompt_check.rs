//! `stipple prompt check` as a user runs it: each construct of the prompt language in the text view
//! and in the `--json` report (schema version 1), and errors with their places.

use crate::util::root;
use serde_json::Value;
use std::process::Command;

/// Runs `stipple prompt check ARGS` with no `STIPPLE_*` variables and an empty config folder.
fn check(args: &[&str]) -> (i32, String, String) {
    let config = tempfile::tempdir().unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_stipple"));
    c.current_dir(root());
    for (k, _) in std::env::vars() {
        if k.starts_with("STIPPLE_") {
            c.env_remove(k);
        }
    }
    c.env("STIPPLE_CONFIG_HOME", config.path());
    let out = c.arg("prompt").arg("check").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, _) = check(&all);
    (code, serde_json::from_str(&out).unwrap())
}

/// `(token text, weight)` of every token of every chunk of the first part's first segment.
fn tokens(v: &Value) -> Vec<(String, f64)> {
    v["parts"][0]["segments"][0]["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["tokens"].as_array().unwrap().clone())
        .map(|t| {
            (
                t["text"].as_str().unwrap().to_string(),
                t["weight"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn weights_and_breaks() {
    let text = "a (red:1.5) [cat] BREAK night";
    let (code, out, _) = check(&[text]);
    assert_eq!(code, 0);
    assert!(
        out.contains("chunk 1 (3 tokens): a red×1.5 cat×0.9"),
        "{out}"
    );
    assert!(out.contains("chunk 2 (1 tokens): night"), "{out}");

    let (code, v) = json(&[text]);
    assert_eq!(code, 0);
    assert_eq!(v["version"], 1);
    assert_eq!(v["valid"], true);
    let t = tokens(&v);
    assert_eq!(t[0], ("a</w>".to_string(), 1.0));
    assert_eq!(t[1].0, "red</w>");
    assert!((t[1].1 - 1.5).abs() < 1e-6);
    assert!((t[2].1 - 1.0 / 1.1).abs() < 1e-6);
    assert_eq!(t[3].0, "night</w>");
    let chunks = v["parts"][0]["segments"][0]["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 2);
    let frags = v["parts"][0]["segments"][0]["fragments"]
        .as_array()
        .unwrap();
    assert!(frags.iter().any(|f| f["break"] == true), "{frags:?}");
}

#[test]
fn lora_tag_resolves_to_its_file_with_a_schedule_per_step() {
    let text = "a fox <lora:kohya_ldm:te=0.1@1,0.6@6:out=0>";
    let args = [text, "--lora-dir", "tests/fixtures/lora", "--steps", "6"];
    let (code, out, _) = check(&args);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("lora kohya_ldm: "), "{out}");
    assert!(out.contains("kohya_ldm.safetensors"), "{out}");
    assert!(
        out.contains("te   0.1@1,0.6@6  per step: 0.100 0.200 0.300 0.400 0.500 0.600"),
        "{out}"
    );
    assert!(out.contains("out  0\n"), "{out}");

    let (code, v) = json(&args);
    assert_eq!(code, 0);
    let l = &v["loras"][0];
    assert_eq!(l["name"], "kohya_ldm");
    assert_eq!(l["span"], serde_json::json!([6, text.len()]));
    assert!(l["file"]
        .as_str()
        .unwrap()
        .ends_with("kohya_ldm.safetensors"));
    let te = &l["strengths"][0];
    assert_eq!(te["component"], "te");
    assert_eq!(te["written"], "0.1@1,0.6@6");
    let steps: Vec<f64> = te["per_step"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(steps.len(), 6);
    assert!((steps[2] - 0.3).abs() < 1e-6, "{steps:?}");
    assert_eq!(l["strengths"][4]["component"], "out");
    assert_eq!(l["strengths"][4]["per_step"][5], 0.0);
}

#[test]
fn errors_come_with_their_span_and_hint_and_exit_1() {
    let text = "a watercolor fox <lora:ink:tee=0.5>";
    let (code, out, err) = check(&[text]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    assert!(err.contains("error: unknown key `tee`"), "{err}");
    assert!(err.contains("did you mean `te`?"), "{err}");
    assert!(err.contains("^^^"), "{err}");

    let (code, v) = json(&[text]);
    assert_eq!(code, 1);
    assert_eq!(v["valid"], false);
    let e = &v["errors"][0];
    let start = text.find("tee").unwrap();
    assert_eq!(e["span"], serde_json::json!([start, start + 3]));
    assert_eq!(e["hint"], "did you mean `te`?");
}

#[test]
fn a_name_that_resolves_to_no_file_is_an_error_at_the_name() {
    let text = "a <lora:no_such_adapter>";
    let (code, v) = json(&[text, "--lora-dir", "tests/fixtures/lora"]);
    assert_eq!(code, 1);
    assert_eq!(v["loras"][0]["file"], Value::Null);
    assert_eq!(v["errors"][0]["span"], serde_json::json!([8, 23]));
    let (code, _, err) = check(&[text]);
    assert_eq!(code, 1);
    assert!(err.contains("pass --lora-dir DIR"), "{err}");
}

#[test]
fn warnings_do_not_fail_the_check() {
    let (code, out, err) = check(&["a (cat"]);
    assert_eq!(code, 0);
    assert!(out.contains("valid (20 steps)"), "{out}");
    assert!(err.contains("warning: `(` is never closed"), "{err}");
    let (_, v) = json(&["a (cat"]);
    assert_eq!(v["warnings"][0]["span"], serde_json::json!([2, 3]));
}

#[test]
fn bad_steps_are_a_usage_error() {
    let (code, _, err) = check(&["a", "--steps", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--steps 0"), "{err}");
}

#[test]
fn prompt_editing_shows_its_switch_points_per_part() {
    let text = "a [cat:dog:0.5] in [snow|rain] :1.2 AND a (sunset:1.1)";
    let (code, out, _) = check(&[text, "--steps", "4"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("part 1 (AND), weight 1.2:"), "{out}");
    assert!(out.contains("steps 2-2: \"a cat in rain\""), "{out}");
    assert!(out.contains("steps 3-3: \"a dog in snow\""), "{out}");
    assert!(out.contains("chunk 1 (2 tokens): a sunset×1.1"), "{out}");

    let (code, v) = json(&[text, "--steps", "4"]);
    assert_eq!(code, 0);
    let parts = v["parts"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["weight"], 1.2);
    let segs = parts[0]["segments"].as_array().unwrap();
    let ends: Vec<(u64, u64, &str)> = segs
        .iter()
        .map(|s| {
            (
                s["from_step"].as_u64().unwrap(),
                s["until_step"].as_u64().unwrap(),
                s["text"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ends,
        [
            (1, 1, "a cat in snow"),
            (2, 2, "a cat in rain"),
            (3, 3, "a dog in snow"),
            (4, 4, "a dog in rain")
        ]
    );
    // An edit alone switches once: [from:to:when] with a step number.
    let (_, v) = json(&["[red:blue:3] fox", "--steps", "10"]);
    let segs = v["parts"][0]["segments"].as_array().unwrap();
    assert_eq!(segs.len(), 2);
    assert_eq!(segs[0]["until_step"], 3);
    assert_eq!(segs[0]["text"], "red fox");
    assert_eq!(segs[1]["text"], "blue fox");
    assert_eq!(tokens(&v)[0].0, "red</w>");
}

#[test]
fn malformed_editing_is_an_error_with_its_span() {
    let text = "a [cat:dog:2] | b";
    let (code, _, err) = check(&[text]);
    assert_eq!(code, 1);
    assert!(err.contains("outside `[a|b]`"), "{err}");
    let (code, v) = json(&[text]);
    assert_eq!(code, 1);
    assert_eq!(v["errors"][0]["span"], serde_json::json!([14, 15]));
    // An emphasis error inside an edit's branch is found though step 1 does not show it.
    let text = "[a:(b:1.2.3):5]";
    let (code, v) = json(&[text]);
    assert_eq!(code, 1);
    assert_eq!(v["errors"][0]["span"], serde_json::json!([6, 11]));
}

#[test]
fn generate_runs_editing_alternation_and_and() {
    let out_dir = std::env::temp_dir().join(format!("stipple-editing-{}", std::process::id()));
    for prompt in ["a [cat:dog:0.5]", "a [cat|dog]", "a cat AND a dog :0.5"] {
        let out = Command::new(env!("CARGO_BIN_EXE_stipple"))
            .current_dir(root())
            .args([
                "generate", "--steps", "2", "--width", "64", "--height", "64",
            ])
            .args(["--negative", "[ugly:blurry:1] AND bad", "--prompt", prompt])
            .arg("--out")
            .arg(&out_dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{prompt}: {err}");
    }
    let pngs = std::fs::read_dir(&out_dir).unwrap().count();
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(pngs >= 3, "{pngs} files written");
}

#[test]
fn the_engine_accepts_editing_and_still_checks_it() {
    let job = crate::util::small_job("a [cat|dog] AND a cat", 1);
    assert!(stipple::pipeline::validate_job(&job).is_ok());
    let mut job = crate::util::small_job("a cat", 1);
    job.negative = "[blurry:(sharp:1.2.3):0.5]".into();
    let e = stipple::pipeline::validate_job(&job)
        .unwrap_err()
        .to_string();
    assert!(e.contains("negative prompt: "), "{e}");
}
